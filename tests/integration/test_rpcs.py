"""Every RPC over real gRPC against an in-process server: success and failure cases."""

from __future__ import annotations

import sqlite3

import grpc
import pytest

from kvs._gen import kvs_pb2 as pb
from kvs.service import replicated
from kvs.storage.store import Entry, Fragment, Store
from tests.integration.calls import check, dump, key, kv, put, put_reply, reply, span, status_of
from tests.integration.conftest import Running

# Get -------------------------------------------------------------------------


def test_get_returns_the_newest_value_and_version(kvs: Running) -> None:
    put(kvs, "abc", "zyx")
    put(kvs, "abc", "wvu", at=2000)
    assert kvs.stub.Get(key("abc")) == reply("abc", "wvu", 2000)


def test_get_at_a_version_returns_the_greatest_at_or_below(kvs: Running) -> None:
    put(kvs, "k", "one")
    put(kvs, "k", "two", at=2000)
    assert kvs.stub.Get(key("k", 1999)) == reply("k", "one", 1000)
    assert kvs.stub.Get(key("k", 2000)) == reply("k", "two", 2000)
    assert kvs.stub.Get(key("k", 9999)) == reply("k", "two", 2000)


@pytest.mark.parametrize("blank", [0, -5])
def test_get_with_a_blank_version_returns_the_newest(kvs: Running, blank: int) -> None:
    put(kvs, "k", "v")
    assert kvs.stub.Get(key("k", blank)) == reply("k", "v", 1000)


def test_get_of_a_missing_key_is_version_zero(kvs: Running) -> None:
    assert kvs.stub.Get(key("nope")) == reply("nope", "", 0)
    assert kvs.stub.Get(key("nope", 123)) == reply("nope", "", 0)


def test_get_below_every_version_echoes_the_version_asked(kvs: Running) -> None:
    put(kvs, "k", "v")
    assert kvs.stub.Get(key("k", 999)) == reply("k", "", 999)


def test_get_with_an_empty_key_is_invalid_argument(kvs: Running) -> None:
    check(status_of(lambda: kvs.stub.Get(key(""))), grpc.StatusCode.INVALID_ARGUMENT, "key must not be empty")


# GetRange --------------------------------------------------------------------


def test_get_range_is_inclusive_and_ascending_in_byte_order(kvs: Running) -> None:
    for k in ["b", "d", "a", "c", "é", "B", "中"]:
        put(kvs, k, k * 2)
    got = [r.key for r in kvs.stub.GetRange(span("a", "é"))]
    assert got == ["a", "b", "c", "d", "é"]
    assert [r.key for r in kvs.stub.GetRange(span("B", "中"))] == ["B", "a", "b", "c", "d", "é", "中"]


def test_get_range_reads_at_the_larger_of_the_two_versions(kvs: Running) -> None:
    put(kvs, "a", "a1")
    put(kvs, "b", "b1", at=2000)
    put(kvs, "a", "a2", at=3000)
    expected = [reply("a", "a1", 1000), reply("b", "", 1500)]
    assert list(kvs.stub.GetRange(span("a", "b", 1500, None))) == expected
    assert list(kvs.stub.GetRange(span("a", "b", None, 1500))) == expected
    assert list(kvs.stub.GetRange(span("a", "b", 900, 1500))) == expected
    assert list(kvs.stub.GetRange(span("a", "b"))) == [reply("a", "a2", 3000), reply("b", "b1", 2000)]


def test_get_range_with_nothing_inside_is_an_empty_stream(kvs: Running) -> None:
    put(kvs, "m", "v")
    assert list(kvs.stub.GetRange(span("x", "z"))) == []
    assert list(kvs.stub.GetRange(span("m", "m"))) == [reply("m", "v", 1000)]


def test_get_range_skips_deleted_keys(kvs: Running) -> None:
    put(kvs, "a", "1")
    put(kvs, "b", "2")
    kvs.stub.Del(key("a"))
    assert list(kvs.stub.GetRange(span("a", "b"))) == [reply("b", "2", 1000)]


def test_get_range_reversed_is_invalid_argument(kvs: Running) -> None:
    put(kvs, "a", "1")
    error = status_of(lambda: kvs.stub.GetRange(span("z", "a")))
    check(error, grpc.StatusCode.INVALID_ARGUMENT, "reversed")


def test_get_range_with_an_empty_key_is_invalid_argument(kvs: Running) -> None:
    error = status_of(lambda: kvs.stub.GetRange(pb.KeyRange(to=key("z"))))
    check(error, grpc.StatusCode.INVALID_ARGUMENT, "must not be empty")


# GetAll ----------------------------------------------------------------------


def test_get_all_answers_in_request_order_with_duplicates(kvs: Running) -> None:
    put(kvs, "a", "1")
    put(kvs, "b", "2")
    got = list(kvs.stub.GetAll(iter([key("b"), key("missing"), key("a"), key("b")])))
    assert got == [
        reply("b", "2", 1000),
        reply("missing", "", 0),
        reply("a", "1", 1000),
        reply("b", "2", 1000),
    ]


def test_get_all_reads_every_key_at_the_largest_version_of_the_stream(kvs: Running) -> None:
    put(kvs, "a", "a1")
    put(kvs, "a", "a2", at=3000)
    put(kvs, "b", "b1", at=2500)
    put(kvs, "c", "c1", at=4000)
    got = list(kvs.stub.GetAll(iter([key("a"), key("b", 2000), key("c", 2600), key("gone", 1)])))
    assert got == [reply("a", "a1", 1000), reply("b", "b1", 2500), reply("c", "", 2600), reply("gone", "", 0)]


def test_get_all_with_no_requests_returns_nothing(kvs: Running) -> None:
    assert list(kvs.stub.GetAll(iter([]))) == []


def test_get_all_with_an_empty_key_fails_before_any_reply(kvs: Running) -> None:
    put(kvs, "a", "1")
    replies: list[pb.KeyValueVersionReply] = []

    def drain() -> None:
        replies.extend(kvs.stub.GetAll(iter([key("a"), key("")])))

    check(status_of(drain), grpc.StatusCode.INVALID_ARGUMENT, "key must not be empty")
    assert replies == []


# Put -------------------------------------------------------------------------


def test_put_of_a_new_key_reports_no_old_value(kvs: Running) -> None:
    assert put(kvs, "abc", "zyx") == put_reply("abc", "", 0, 1000)


def test_put_reports_the_value_it_replaced(kvs: Running) -> None:
    put(kvs, "k", "old")
    assert put(kvs, "k", "new", at=5000) == put_reply("k", "old", 1000, 5000)


def test_puts_in_one_millisecond_get_increasing_versions(kvs: Running) -> None:
    versions = [put(kvs, "k", str(i)).ver for i in range(5)]
    assert versions == [1000, 1001, 1002, 1003, 1004]


def test_put_accepts_an_empty_value(kvs: Running) -> None:
    put(kvs, "k", "")
    assert kvs.stub.Get(key("k")) == reply("k", "", 1000)


def test_put_hands_the_mutation_to_replication(kvs: Running) -> None:
    put(kvs, "k", "v")
    assert kvs.published == [[Fragment("k", 0, ((1000, "v"),))]]


def test_put_with_an_empty_key_changes_nothing(kvs: Running) -> None:
    check(
        status_of(lambda: kvs.stub.Put(kv("", "v"))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "key must not be empty",
    )
    assert dump(kvs) == []
    assert kvs.published == []


def test_put_over_the_size_limit_is_resource_exhausted(kvs: Running) -> None:
    error = status_of(lambda: kvs.stub.Put(kv("big", "x" * (5 * 1024 * 1024))))
    check(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "")
    assert kvs.stub.Get(key("big")) == reply("big", "", 0)


# PutAll ----------------------------------------------------------------------


def test_put_all_answers_each_request_in_order(kvs: Running) -> None:
    put(kvs, "b", "old")
    got = list(kvs.stub.PutAll(iter([kv("a", "1"), kv("b", "2"), kv("a", "3")])))
    assert got == [
        put_reply("a", "", 0, 1000),
        put_reply("b", "old", 1000, 1001),
        put_reply("a", "1", 1000, 1001),
    ]
    assert kvs.stub.Get(key("a")) == reply("a", "3", 1001)


def test_put_all_that_fails_part_way_applied_exactly_what_it_answered(kvs: Running) -> None:
    replies: list[pb.PutReply] = []

    def drain() -> None:
        replies.extend(kvs.stub.PutAll(iter([kv("a", "1"), kv("b", "2"), kv("", "bad"), kv("c", "3")])))

    check(status_of(drain), grpc.StatusCode.INVALID_ARGUMENT, "key must not be empty")
    assert [r.key for r in replies] == ["a", "b"]
    assert [r.key for r in dump(kvs)] == ["a", "b"]


# Del -------------------------------------------------------------------------


def test_del_removes_every_version_and_replies_the_newest(kvs: Running) -> None:
    put(kvs, "k", "a")
    put(kvs, "k", "b", at=2000)
    assert kvs.stub.Del(key("k")) == reply("k", "b", 2000)
    assert kvs.stub.Get(key("k")) == reply("k", "", 0)
    assert kvs.stub.Get(key("k", 1500)) == reply("k", "", 0)
    assert kvs.published[-1] == [Fragment("k", floor=2001)]


def test_del_ignores_the_version_given(kvs: Running) -> None:
    put(kvs, "k", "a")
    put(kvs, "k", "b", at=2000)
    assert kvs.stub.Del(key("k", 1000)) == reply("k", "b", 2000)
    assert kvs.stub.Get(key("k", 1000)) == reply("k", "", 0)


def test_del_of_a_missing_key_replies_version_zero(kvs: Running) -> None:
    assert kvs.stub.Del(key("nope")) == reply("nope", "", 0)
    assert kvs.published == []


def test_put_after_del_starts_a_new_history(kvs: Running) -> None:
    put(kvs, "k", "a")
    kvs.stub.Del(key("k"))
    assert put(kvs, "k", "b") == put_reply("k", "", 0, 1001)


def test_del_with_an_empty_key_is_invalid_argument(kvs: Running) -> None:
    check(status_of(lambda: kvs.stub.Del(key(""))), grpc.StatusCode.INVALID_ARGUMENT, "key must not be empty")


# DelRange --------------------------------------------------------------------


def test_del_range_removes_existing_keys_and_replies_ascending(kvs: Running) -> None:
    for k in ["d", "a", "c", "b", "e"]:
        put(kvs, k, k.upper())
    got = list(kvs.stub.DelRange(span("b", "d")))
    assert got == [reply("b", "B", 1000), reply("c", "C", 1000), reply("d", "D", 1000)]
    assert [r.key for r in dump(kvs)] == ["a", "e"]
    assert kvs.published[-1] == [Fragment(k, floor=1001) for k in "bcd"]


def test_del_range_over_nothing_replies_nothing(kvs: Running) -> None:
    put(kvs, "a", "1")
    assert list(kvs.stub.DelRange(span("x", "z"))) == []
    assert [r.key for r in dump(kvs)] == ["a"]


def test_del_range_reversed_deletes_nothing(kvs: Running) -> None:
    put(kvs, "a", "1")
    put(kvs, "z", "2")
    check(status_of(lambda: kvs.stub.DelRange(span("z", "a"))), grpc.StatusCode.INVALID_ARGUMENT, "reversed")
    assert [r.key for r in dump(kvs)] == ["a", "z"]


# DelAll ----------------------------------------------------------------------


def test_del_all_replies_each_request_in_order(kvs: Running) -> None:
    put(kvs, "a", "1")
    put(kvs, "b", "2")
    got = list(kvs.stub.DelAll(iter([key("b"), key("missing"), key("a"), key("b")])))
    assert got == [reply("b", "2", 1000), reply("missing", "", 0), reply("a", "1", 1000), reply("b", "", 0)]
    assert dump(kvs) == []


def test_del_all_that_fails_part_way_deleted_exactly_what_it_answered(kvs: Running) -> None:
    for k in "abc":
        put(kvs, k, k)
    replies: list[pb.KeyValueVersionReply] = []

    def drain() -> None:
        replies.extend(kvs.stub.DelAll(iter([key("a"), key(""), key("b")])))

    check(status_of(drain), grpc.StatusCode.INVALID_ARGUMENT, "key must not be empty")
    assert replies == [reply("a", "a", 1000)]
    assert [r.key for r in dump(kvs)] == ["b", "c"]


# Trim ------------------------------------------------------------------------


def test_trim_keeps_only_the_newest_version(kvs: Running) -> None:
    put(kvs, "k", "a")
    put(kvs, "k", "b", at=2000)
    put(kvs, "k", "c", at=3000)
    assert kvs.stub.Trim(key("k")) == reply("k", "c", 3000)
    assert kvs.stub.Get(key("k", 2500)) == reply("k", "", 2500)
    assert kvs.stub.Get(key("k")) == reply("k", "c", 3000)
    assert kvs.published[-1] == [Fragment("k", floor=3000)]


def test_trim_of_a_missing_key_replies_version_zero(kvs: Running) -> None:
    assert kvs.stub.Trim(key("nope")) == reply("nope", "", 0)


def test_trim_with_an_empty_key_is_invalid_argument(kvs: Running) -> None:
    check(
        status_of(lambda: kvs.stub.Trim(key(""))), grpc.StatusCode.INVALID_ARGUMENT, "key must not be empty"
    )


# An error the table does not name -------------------------------------------


def test_an_unexpected_error_is_internal_in_one_log_line_and_the_server_goes_on(
    kvs: Running, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The store's file failing under it (or a bug): INTERNAL saying what, never gRPC's
    "Unexpected <class ...>" UNKNOWN and a traceback; a stream keeps the replies it sent."""
    put(kvs, "a", "1")
    put(kvs, "b", "2")
    read_page = Store.range_page

    def failing_get(store: Store, k: str, at: int | None = None) -> Entry:
        raise sqlite3.DatabaseError("database disk image is malformed")

    def failing_second_page(store: Store, *args: object) -> list[Entry]:
        if args[3]:  # after: a page after the first
            raise sqlite3.DatabaseError("database disk image is malformed")
        return read_page(store, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Store, "get", failing_get)
    monkeypatch.setattr(Store, "range_page", failing_second_page)
    monkeypatch.setattr(replicated, "PAGE_KEYS", 1)
    words = "failed in the server: DatabaseError: database disk image is malformed"
    check(status_of(lambda: kvs.stub.Get(key("a"))), grpc.StatusCode.INTERNAL, f"Get {words}")
    replies = kvs.stub.GetRange(span("a", "z"))
    assert next(iter(replies)) == reply("a", "1", 1000)
    check(status_of(lambda: replies), grpc.StatusCode.INTERNAL, f"GetRange {words}")
    lines = [r.getMessage() for r in caplog.records if r.name == "kvs.service.kvstore"]
    assert [line.split(" at ")[0] for line in lines] == [
        "Get failed: DatabaseError: database disk image is malformed",
        "GetRange failed: DatabaseError: database disk image is malformed",
    ]
    assert all(r.exc_info is None for r in caplog.records)
    monkeypatch.undo()
    assert kvs.stub.Get(key("b")) == reply("b", "2", 1000)
