"""The web view's pure parts (kvs/admin/view.py): thinning batch lines, the keys that differ, agreement."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence

from kvs._gen import replication_pb2 as pb
from kvs.admin.view import SAMPLE_KEYS, Agreements, Diff, Line, Thinner, differing, state_of


def test_slow_batches_are_one_line_each() -> None:
    thinner = Thinner(rate=4, window=1.0)
    lines = [thinner.add("s1", [f"k{i}"], now=100 + i * 0.5) for i in range(10)]
    assert all(isinstance(line, Line) for line in lines)
    assert [line.sample for line in lines if line] == [[f"k{i}"] for i in range(10)]
    assert all(line.folded == 0 and line.origins == {"s1": 1} for line in lines if line)
    assert thinner.flush(200.0) is None


def test_fast_batches_fold_into_one_line_a_window_that_counts_every_batch_and_key() -> None:
    thinner = Thinner(rate=4, window=1.0)
    shown: list[Line] = []
    applied = 0
    for i in range(1000):  # 1,000 batches of 3 keys in one second, from two origins
        now = 100 + i / 1000
        line = thinner.add("s1" if i % 4 else "s2", [f"a{i}", f"b{i}", f"c{i}"], now)
        applied += 1
        if line is not None:
            shown.append(line)
        flushed = thinner.flush(now)
        if flushed is not None:
            shown.append(flushed)
    last = thinner.flush(101.5)
    assert last is not None
    shown.append(last)
    singles = [line for line in shown if not line.folded]
    folds = [line for line in shown if line.folded]
    assert len(singles) == 4  # the bucket's tokens, then everything folds
    assert len(shown) <= 4 + 2
    assert sum(line.batches for line in shown) == applied  # nothing dropped without a count
    assert sum(line.keys for line in shown) == 3 * applied
    assert sum(sum(line.origins.values()) for line in shown) == applied
    assert folds[0].origins["s2"] > 0
    assert folds[0].origins["s1"] > 0
    assert all(len(line.sample) <= SAMPLE_KEYS for line in shown)
    assert thinner.pending == 0


def test_a_fold_is_shown_only_once_it_is_a_window_old_and_then_single_lines_resume() -> None:
    thinner = Thinner(rate=1, window=1.0)
    assert thinner.add("s1", ["a"], 10.0) is not None
    assert thinner.add("s1", ["b"], 10.1) is None
    assert thinner.add("s1", ["c"], 10.2) is None
    assert thinner.pending == 2
    assert thinner.flush(10.5) is None
    fold = thinner.flush(11.2)
    assert fold is not None
    assert (fold.batches, fold.folded, fold.sample) == (2, 2, ["b", "c"])
    assert fold.record()["folded"] == 2
    # Quiet again: after a second, a batch is its own line once more.
    assert thinner.add("s1", ["d"], 13.0) is not None


def test_a_timed_write_keeps_its_lag_even_when_folded() -> None:
    thinner = Thinner(rate=1, window=1.0)
    thinner.add("s1", ["x"], 1.0)
    assert thinner.add("s1", ["probe"], 1.01, lag_ms=12.5) is None
    fold = thinner.flush(3.0)
    assert fold is not None
    assert fold.lag_ms == 12.5


def test_many_origins_and_long_keys_stay_small_on_a_line() -> None:
    thinner = Thinner(rate=0.001, window=1.0)
    thinner.add("first", ["k"], 0.0)
    for i in range(100):
        thinner.add(f"origin{i}", ["x" * 10_000], 0.5)
    fold = thinner.flush(2.0)
    assert fold is not None
    assert len(fold.origins) <= 9
    assert fold.origins["…"] == 100 - 8
    assert all(len(key) <= 80 for key in fold.sample)


def fragment(key: str, floor: int = 0, versions: Sequence[tuple[int, str]] = ()) -> pb.Fragment:
    return pb.Fragment(
        key=key, floor=floor, versions=[v for v, _ in versions], values=[x for _, x in versions]
    )


async def stream(fragments: Sequence[pb.Fragment]) -> AsyncIterator[pb.Fragment]:
    for f in fragments:
        yield f


def diff_of(dumps: dict[str, list[pb.Fragment]], limit: int = 50) -> Diff:
    return asyncio.run(differing({name: stream(d) for name, d in dumps.items()}, limit))


def test_identical_dumps_have_no_differing_key() -> None:
    dump = [fragment("a", versions=[(1, "x")]), fragment("b", floor=5)]
    diff = diff_of({"s1": dump, "s2": list(dump), "s3": list(dump)})
    assert (diff.total, diff.keys) == (0, [])


def test_the_differing_keys_say_each_servers_state() -> None:
    s1 = [fragment("a", versions=[(1, "x")]), fragment("b", versions=[(2, "old")]), fragment("d", floor=9)]
    s2 = [fragment("a", versions=[(1, "x")]), fragment("b", versions=[(2, "old"), (7, "new")])]
    s3 = [fragment("a", versions=[(1, "x")]), fragment("c", versions=[(3, "only here")])]
    diff = diff_of({"s1": s1, "s2": s2, "s3": s3})
    assert diff.servers == ["s1", "s2", "s3"]
    assert diff.total == 3
    assert diff.keys == [
        {"key": "b", "states": {"s1": "'old' @ 2", "s2": "'new' @ 7", "s3": "absent"}},
        {"key": "c", "states": {"s1": "absent", "s2": "absent", "s3": "'only here' @ 3"}},
        {"key": "d", "states": {"s1": "deleted (floor 9)", "s2": "absent", "s3": "absent"}},
    ]


def test_same_newest_value_with_another_history_is_said_so() -> None:
    s1 = [fragment("k", versions=[(1, "a"), (5, "b")])]
    s2 = [fragment("k", versions=[(5, "b")])]
    diff = diff_of({"s1": s1, "s2": s2})
    assert diff.keys == [
        {"key": "k", "states": {"s1": "'b' @ 5 (other history)", "s2": "'b' @ 5 (other history)"}}
    ]


def test_the_listed_keys_are_capped_and_all_counted() -> None:
    s1 = [fragment(f"k{i:04}", versions=[(1, "v")]) for i in range(500)]
    diff = diff_of({"s1": s1, "s2": []}, limit=10)
    assert diff.total == 500
    assert [k["key"] for k in diff.keys] == [f"k{i:04}" for i in range(10)]


def test_state_of_a_deleted_key_with_versions_below_its_floor() -> None:
    assert state_of(fragment("k", floor=10, versions=[(3, "gone")])) == "deleted (floor 10)"
    assert state_of(fragment("k", floor=10, versions=[(3, "gone"), (12, "back")])) == "'back' @ 12"
    assert state_of(None) == "absent"


def test_agreement_says_who_differs_and_since_when() -> None:
    agreements = Agreements()
    first = agreements.update({"a": "d1", "b": "d1", "c": "d1"}, 10.0)
    assert first["a"].differs == []
    assert first["a"].same == ["b", "c"]
    assert first["a"].since is None
    assert agreements.disagreeing_since() is None
    second = agreements.update({"a": "d1", "b": "d1", "c": "d2"}, 11.0)
    assert second["c"].differs == ["a", "b"]
    assert second["c"].since == 11.0
    assert second["a"].differs == ["c"]
    assert second["a"].since == 11.0
    third = agreements.update({"a": "d1", "b": "d1", "c": "d3"}, 12.0)
    assert third["c"].since == 11.0  # still differing: since the first time
    assert agreements.disagreeing_since() == 11.0
    # A server that does not answer is compared with no one.
    fourth = agreements.update({"a": "d1", "b": "d1", "c": None}, 13.0)
    assert "c" not in fourth
    assert agreements.disagreeing_since() is None
    assert agreements.update({"a": "d1", "b": "d1", "c": "d1"}, 14.0)["c"].since is None


def test_the_web_view_loads_no_replication_storage_or_mqtt_code() -> None:
    code = (
        "import sys, kvs.admin.web; "
        "print([m for m in sys.modules "
        "if m.startswith(('kvs.replication', 'kvs.storage', 'kvs.mqtt', 'paho'))])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
