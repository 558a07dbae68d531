"""Bounded work and memory (SPEC guarantee 8), and requests that do not decode, over real gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import cast

import grpc
import pytest

from kvs._gen import kvs_pb2 as pb
from kvs._gen import kvs_pb2_grpc
from kvs._gen import replication_pb2 as rpb
from kvs._gen import replication_pb2_grpc as rpb_grpc
from kvs.admin.cli import dump_of
from kvs.admin.parts import joined_stream
from kvs.admin.service import WATCH_BACKLOG_KEYS, Admin
from kvs.limits import MAX_REPLY_BYTES, MAX_REQUEST_BYTES
from kvs.net.channel import open_channel
from kvs.server.main import Server
from kvs.service.replicated import DELETE_PAGE, PAGE_KEYS, ReplicatedStore
from kvs.storage.store import Fragment, Store
from tests.clock import Clock
from tests.integration.calls import check, dump, key, kv, reply, span, status_of
from tests.integration.conftest import Running
from tests.replica import FakeReplica

# Invalid UTF-8 ----------------------------------------------------------------
#
# Hand-made protobuf bytes: field 1 (key) and field 2 (val) are length-delimited
# strings (tags 0x0a and 0x12). b"\xff\xfe" is never UTF-8.

BAD = b"\xff\xfe"


def field(tag: int, data: bytes) -> bytes:
    return bytes([tag, len(data)]) + data


def raw_unary(kvs: Running, method: str) -> Callable[[bytes], bytes]:
    return cast(
        Callable[[bytes], bytes], kvs.channel.unary_unary(f"/project.KeyValueStore/{method}", None, None)
    )


def raw_stream(kvs: Running, method: str) -> Callable[[Iterator[bytes]], Iterator[bytes]]:
    return cast(
        Callable[[Iterator[bytes]], Iterator[bytes]],
        kvs.channel.stream_stream(f"/project.KeyValueStore/{method}", None, None),
    )


def bad_utf8(error: grpc.RpcError) -> None:
    check(error, grpc.StatusCode.INVALID_ARGUMENT, "must be UTF-8")


def test_the_hand_made_bytes_are_right_when_valid(kvs: Running) -> None:
    raw_unary(kvs, "Put")(field(0x0A, b"k") + field(0x12, b"v"))
    assert pb.KeyValueVersionReply.FromString(raw_unary(kvs, "Get")(field(0x0A, b"k"))) == reply(
        "k", "v", 1000
    )


def test_get_with_a_key_that_is_not_utf8_is_invalid_argument(kvs: Running) -> None:
    bad_utf8(status_of(lambda: raw_unary(kvs, "Get")(field(0x0A, BAD))))


def test_put_with_a_key_or_value_that_is_not_utf8_changes_nothing(kvs: Running) -> None:
    bad_utf8(status_of(lambda: raw_unary(kvs, "Put")(field(0x0A, BAD) + field(0x12, b"v"))))
    bad_utf8(status_of(lambda: raw_unary(kvs, "Put")(field(0x0A, b"k") + field(0x12, BAD))))
    assert dump(kvs) == []
    assert kvs.published == []


def test_put_all_stops_at_the_request_that_is_not_utf8(kvs: Running) -> None:
    requests = [
        field(0x0A, b"a") + field(0x12, b"1"),
        field(0x0A, b"b") + field(0x12, BAD),
        field(0x0A, b"c"),
    ]
    replies: list[bytes] = []

    def drain() -> None:
        replies.extend(raw_stream(kvs, "PutAll")(iter(requests)))

    bad_utf8(status_of(drain))
    assert [pb.PutReply.FromString(r).key for r in replies] == ["a"]
    assert [r.key for r in dump(kvs)] == ["a"]


def test_get_all_with_a_key_that_is_not_utf8_answers_nothing(kvs: Running) -> None:
    kvs.stub.Put(kv("a", "1"))
    replies: list[bytes] = []

    def drain() -> None:
        replies.extend(raw_stream(kvs, "GetAll")(iter([field(0x0A, b"a"), field(0x0A, BAD)])))

    bad_utf8(status_of(drain))
    assert replies == []


def test_del_range_with_a_key_that_is_not_utf8_deletes_nothing(kvs: Running) -> None:
    kvs.stub.Put(kv("a", "1"))
    request = field(0x0A, field(0x0A, b"a")) + field(0x12, field(0x0A, BAD))
    stream = cast(
        Callable[[bytes], Iterator[bytes]],
        kvs.channel.unary_stream("/project.KeyValueStore/DelRange", None, None),
    )
    bad_utf8(status_of(lambda: stream(request)))
    assert [r.key for r in dump(kvs)] == ["a"]


# Streams read a page at a time --------------------------------------------------


def test_get_range_and_get_all_over_several_pages(kvs: Running) -> None:
    keys = [f"k{i:05}" for i in range(PAGE_KEYS * 2 + 17)]
    list(kvs.stub.PutAll(iter(kv(k, k) for k in keys)))
    kvs.stub.Del(key(keys[PAGE_KEYS]))  # a tombstone on a page boundary is skipped
    kvs.clock.now = 2000
    kvs.stub.Put(kv(keys[3], "newer"))
    expected = [reply(k, k, 1000) for k in keys if k != keys[PAGE_KEYS]]
    got = list(kvs.stub.GetRange(span(keys[0], keys[-1], 1500)))
    assert got == expected
    asked = [key(k) for k in keys[::-1]] + [key(keys[3], 1500)]
    assert list(kvs.stub.GetAll(iter(asked))) == [
        reply(k, k, 1000) if k != keys[PAGE_KEYS] else reply(k, "", 0) for k in keys[::-1]
    ] + [reply(keys[3], keys[3], 1000)]


def test_del_range_racing_a_del_reports_each_key_deleted_exactly_once(kvs: Running) -> None:
    """The Del lands while the DelRange is part-way (flow control holds it); each deleted key is
    in the reply of exactly the call that deleted it."""
    keys = [f"k{i:05}" for i in range(DELETE_PAGE * 5)]
    big = "v" * 2000  # DELETE_PAGE replies of this size exceed a stream's flow-control window
    list(kvs.stub.PutAll(iter(kv(k, big) for k in keys)))
    victim = keys[-1]
    # Connections of their own: the DelRange's unread replies must not hold the Del back; and
    # the DelRange's window stays at 64 KiB (gRPC's BDP probing grew it past the whole 1 MB
    # range, so on a loaded machine the range was all deleted before the Del arrived).
    own = [("grpc.use_local_subchannel_pool", 1)]
    held = open_channel(f"127.0.0.1:{kvs.port}", options=[*own, ("grpc.http2.bdp_probe", 0)])
    other = open_channel(f"127.0.0.1:{kvs.port}", options=own)
    with held, other:
        replies = kvs_pb2_grpc.KeyValueStoreStub(held).DelRange(span(keys[0], keys[-1]))
        first = next(iter(replies))
        removed = pb.KeyValueVersionReply.FromString(
            other.unary_unary("/project.KeyValueStore/Del", None, None)(key(victim).SerializeToString())
        )
        rest = list(replies)
    by_del_range = [first.key] + [r.key for r in rest]
    assert removed == reply(victim, big, 1000)  # the Del came first for this key...
    assert by_del_range == keys[:-1]  # ...so the DelRange does not claim it
    assert dump(kvs) == []


def test_trim_of_a_long_history_keeps_exactly_the_newest(kvs: Running) -> None:
    versions = 3_500  # several slices of SLICE_ROWS
    list(kvs.stub.PutAll(iter(kv("k", f"v{i}") for i in range(versions))))  # one ms: 1000, 1001, ...
    kvs.stub.Put(kv("other", "x"))
    newest = 1000 + versions - 1
    assert kvs.stub.Trim(key("k")) == reply("k", f"v{versions - 1}", newest)
    assert kvs.stub.Get(key("k", newest - 1)) == reply("k", "", newest - 1)
    assert kvs.stub.Get(key("k")) == reply("k", f"v{versions - 1}", newest)
    assert kvs.published[-1] == [Fragment("k", floor=newest)]
    assert dump(kvs) == [reply("k", f"v{versions - 1}", newest), reply("other", "x", 1000)]


# Admin: Dump pages, Watch bounded ------------------------------------------------


@pytest.fixture
def admin(loop: asyncio.AbstractEventLoop) -> Iterator[tuple[Store, FakeReplica, grpc.Channel]]:
    store, watched = Store(Clock()), FakeReplica()

    async def start() -> tuple[Server, int]:
        replicated = ReplicatedStore(store, lambda fragments: None)
        server = Server(replicated, "127.0.0.1:0", Admin(store, watched))
        port = await server.start()
        await server.serving()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    channel = open_channel(f"127.0.0.1:{port}")
    yield store, watched, channel
    channel.close()
    asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)


def test_dump_over_several_pages_is_the_whole_state(
    admin: tuple[Store, FakeReplica, grpc.Channel], loop: asyncio.AbstractEventLoop
) -> None:
    store, _, channel = admin
    state = [Fragment(f"k{i:05}", i % 3 * 100, ((500, "x"),) if i % 2 else ()) for i in range(1, 1_300)]

    async def load() -> None:
        store.join(state)

    asyncio.run_coroutine_threadsafe(load(), loop).result(10)
    got = list(rpb_grpc.AdminStub(channel).Dump(rpb.DumpRequest(), timeout=30))
    assert got == [
        rpb.Fragment(
            key=f.key, floor=f.floor, versions=[v for v, _ in f.versions], values=["x"] * len(f.versions)
        )
        for f in state
        if f.floor or f.versions
    ]


def test_a_watcher_too_far_behind_is_ended_with_resource_exhausted(
    admin: tuple[Store, FakeReplica, grpc.Channel], loop: asyncio.AbstractEventLoop
) -> None:
    _, watched, channel = admin
    stream = rpb_grpc.AdminStub(channel).Watch(rpb.WatchRequest(), timeout=10)
    batch = [Fragment(f"k{i}", 1) for i in range(WATCH_BACKLOG_KEYS // 2 + 1)]

    async def flood() -> bool:
        while not watched.watchers:  # the call has not reached the servicer yet
            await asyncio.sleep(0.01)
        watched.applied("peer", batch)
        watched.applied("peer", batch)  # in one step: the watcher had no chance to send the first
        return True

    assert asyncio.run_coroutine_threadsafe(flood(), loop).result(10)
    with pytest.raises(grpc.RpcError) as raised:
        list(stream)
    check(raised.value, grpc.StatusCode.RESOURCE_EXHAUSTED, "watcher fell behind")


def test_dump_of_a_history_past_4_mib_streams_it_in_parts_that_readers_join(
    admin: tuple[Store, FakeReplica, grpc.Channel], loop: asyncio.AbstractEventLoop
) -> None:
    store, _, channel = admin
    big = MAX_REQUEST_BYTES - 100  # one value as large as a Put may bring
    history = Fragment("long", 5, tuple((v, chr(ord("a") + v) * big) for v in range(10, 13)))
    state = [Fragment("after", 0, ((1, "x"),)), history, Fragment("before", 0, ((1, "y"),))]

    async def load() -> None:
        store.join(state)

    asyncio.run_coroutine_threadsafe(load(), loop).result(10)
    parts = list(rpb_grpc.AdminStub(channel).Dump(rpb.DumpRequest(), timeout=30))
    assert all(part.ByteSize() <= MAX_REPLY_BYTES for part in parts)
    assert [p.key for p in parts].count("long") >= 3  # one message could not hold it
    whole = dump_of(channel)
    assert [(f.key, f.floor, list(f.versions)) for f in whole] == [
        ("after", 0, [1]),
        ("before", 0, [1]),
        ("long", 5, [10, 11, 12]),
    ]
    assert list(whole[2].values) == [v for _, v in history.versions]

    async def streamed() -> list[rpb.Fragment]:  # as `admin.sh web` reads Dump
        async def replies() -> AsyncIterator[rpb.Fragment]:
            for part in parts:
                yield part

        return [fragment async for fragment in joined_stream(replies())]

    assert asyncio.run(streamed()) == whole
