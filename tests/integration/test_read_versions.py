"""Reads at every int64 version, over real gRPC (docs/contract.md, "Keys, values, versions").

A read version is only a bound: any int64 is accepted, one above every stored
version reads the newest (9223372036854775807 included), and a blank one
(absent or <= 0) is the newest. Only versions that would be stored are bounded
by year 9999. Each read is checked against a model of the store, for both
not-found forms: a missing key answers (key, "", 0), an existing key with
nothing at or below v answers (key, "", v).
"""

from __future__ import annotations

import pytest

from kvs._gen import kvs_pb2 as pb
from kvs.storage.store import LAST_VERSION, MAX_VERSION
from tests.integration.conftest import Running

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EDGES = [INT64_MIN, -1, 0, 1, 1500, LAST_VERSION, MAX_VERSION, MAX_VERSION + 1, INT64_MAX]
"""The int64 edges, the last version a key may hold, the last millisecond of year 9999 and the one
after it, and one between two versions."""
ASKED = [*EDGES, None]  # None: the version field absent

# What `stored` writes: "a" and "b" exist ("b" up to the largest version a key may hold), "c" was
# deleted (a tombstone: it does not exist), "m" was never written.
MODEL: dict[str, dict[int, str]] = {
    "a": {1000: "a1", 2000: "a2"},
    "b": {1000: "b1", LAST_VERSION: "b2"},
}
KEYS = ["a", "b", "c", "m"]


@pytest.fixture
def stored(kvs: Running) -> Running:
    for clock, k, v in [(1000, "a", "a1"), (2000, "a", "a2"), (1000, "b", "b1"), (1000, "c", "c1")]:
        kvs.clock.now = clock
        assert kvs.stub.Put(pb.KeyValueRequest(key=k, val=v)).ver == clock
    kvs.stub.Del(pb.KeyRequest(key="c"))
    kvs.clock.now = LAST_VERSION
    assert kvs.stub.Put(pb.KeyValueRequest(key="b", val="b2")).ver == LAST_VERSION
    return kvs


def request(k: str, ver: int | None) -> pb.KeyRequest:
    return pb.KeyRequest(key=k) if ver is None else pb.KeyRequest(key=k, ver=ver)


def bound(*asked: int | None) -> int | None:
    """The version a read of several requests is made at: the largest non-blank one (None: newest)."""
    return max((v for v in asked if v is not None and v > 0), default=None)


def expected(k: str, at: int | None) -> pb.KeyValueVersionReply:
    """The contract's answer for `k` read at `at`, from MODEL."""
    versions = MODEL.get(k)
    if not versions:
        return pb.KeyValueVersionReply(key=k, val="", ver=0)
    at_or_below = [v for v in versions if at is None or at <= 0 or v <= at]
    if not at_or_below:
        assert at is not None
        return pb.KeyValueVersionReply(key=k, val="", ver=at)
    ver = max(at_or_below)
    return pb.KeyValueVersionReply(key=k, val=versions[ver], ver=ver)


@pytest.mark.parametrize("at", ASKED)
def test_get_at_any_int64_version(stored: Running, at: int | None) -> None:
    for k in KEYS:
        assert stored.stub.Get(request(k, at)) == expected(k, at), (k, at)


def test_the_edges_read_as_the_contract_says(stored: Running) -> None:
    """The model's answers spelled out at the edges that matter, both not-found forms included."""
    newest_a, newest_b = ("a", "a2", 2000), ("b", "b2", LAST_VERSION)
    for at in (INT64_MIN, -1, 0, MAX_VERSION + 1, INT64_MAX):
        got = [stored.stub.Get(request(k, at)) for k in KEYS]
        assert [(r.key, r.val, r.ver) for r in got] == [newest_a, newest_b, ("c", "", 0), ("m", "", 0)]
    got = [stored.stub.Get(request(k, 1)) for k in KEYS]
    assert [(r.key, r.val, r.ver) for r in got] == [("a", "", 1), ("b", "", 1), ("c", "", 0), ("m", "", 0)]
    assert stored.stub.Get(request("b", LAST_VERSION - 1)) == pb.KeyValueVersionReply(
        key="b", val="b1", ver=1000
    )


@pytest.mark.parametrize("fr_ver", ASKED)
def test_get_range_at_every_mix_of_int64_versions(stored: Running, fr_ver: int | None) -> None:
    for to_ver in ASKED:
        at = bound(fr_ver, to_ver)
        span = pb.KeyRange(fr=request("a", fr_ver), to=request("z", to_ver))
        assert list(stored.stub.GetRange(span)) == [expected("a", at), expected("b", at)], (fr_ver, to_ver)
        nothing = pb.KeyRange(fr=request("c", fr_ver), to=request("m", to_ver))  # a tombstone, a missing key
        assert list(stored.stub.GetRange(nothing)) == []


@pytest.mark.parametrize("first", ASKED)
def test_get_all_reads_every_request_at_the_largest_version_of_the_stream(
    stored: Running, first: int | None
) -> None:
    for last in ASKED:
        stream = [
            request("a", first),
            request("m", None),
            request("c", first),
            request("b", 1),
            request("a", last),
        ]
        at = bound(first, 1, last)
        assert list(stored.stub.GetAll(iter(stream))) == [expected(r.key, at) for r in stream], (first, last)


def test_get_all_whose_largest_version_comes_last_reads_the_newest(stored: Running) -> None:
    stream = [request(k, 1) for k in KEYS] + [request("a", INT64_MAX)]
    got = list(stored.stub.GetAll(iter(stream)))
    assert [(r.key, r.val, r.ver) for r in got] == [
        ("a", "a2", 2000),
        ("b", "b2", LAST_VERSION),
        ("c", "", 0),
        ("m", "", 0),
        ("a", "a2", 2000),
    ]
    got = list(stored.stub.GetAll(iter([request(k, 1) for k in KEYS])))
    assert [(r.key, r.val, r.ver) for r in got] == [("a", "", 1), ("b", "", 1), ("c", "", 0), ("m", "", 0)]


@pytest.mark.parametrize("at", [*EDGES[:3], None])
def test_a_blank_version_in_every_read_is_the_newest(stored: Running, at: int | None) -> None:
    newest = [expected("a", None), expected("b", None)]
    assert [stored.stub.Get(request(k, at)) for k in ("a", "b")] == newest
    assert list(stored.stub.GetRange(pb.KeyRange(fr=request("a", at), to=request("b", at)))) == newest
    assert list(stored.stub.GetAll(iter([request("a", at), request("b", at)]))) == newest
