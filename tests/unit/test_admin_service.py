"""The Admin service in-process, over a fake replica (kvs.admin.service.Replica): no MQTT, no gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any, cast

import grpc

from kvs._gen import replication_pb2 as pb
from kvs.admin.service import DUMP_PAGE, Admin
from kvs.storage.store import Fragment, Store
from tests.clock import Clock
from tests.replica import FakeReplica

NO_CONTEXT = cast(grpc.aio.ServicerContext[Any, Any], None)  # Status and Dump do not use theirs


def test_status_reports_what_the_replica_and_the_store_hold() -> None:
    store = Store(Clock())
    store.put("a", "1")
    store.put("b", "2")
    replica = FakeReplica("n1", "blue", frozenset({"n3", "n2"}), connected=False, last_repair=1234.5678)

    async def status() -> pb.StatusReply:
        return await Admin(store, replica).Status(pb.StatusRequest(), NO_CONTEXT)

    reply = asyncio.run(status())
    assert (reply.id, reply.cluster, list(reply.peers)) == ("n1", "blue", ["n2", "n3"])
    assert (reply.keys, tuple(reply.digest)) == (2, store.digest())
    assert (reply.caught_up, reply.connected, reply.last_repair_ms) == (False, False, 1234567)
    replica.caught_up.set()
    replica.connected, replica.last_repair = True, None
    reply = asyncio.run(status())
    assert (reply.caught_up, reply.connected, reply.last_repair_ms) == (True, True, 0)


def test_dump_is_every_key_with_its_floor_and_versions_over_several_pages() -> None:
    store = Store(Clock())
    state = [
        Fragment(f"k{i:04}", 100 if i % 3 else 0, ((500, f"v{i}"), (600, "w")))
        for i in range(DUMP_PAGE * 2 + 1)
    ]
    store.join(state)
    store.join([Fragment("k0000", floor=700)])  # a tombstone stays in the dump: only a floor

    async def dump() -> list[pb.Fragment]:
        return [f async for f in Admin(store, FakeReplica()).Dump(pb.DumpRequest(), NO_CONTEXT)]

    got = asyncio.run(dump())
    assert got[0] == pb.Fragment(key="k0000", floor=700)
    assert got[1] == pb.Fragment(key="k0001", floor=100, versions=[500, 600], values=["v1", "w"])
    assert [f.key for f in got] == [f.key for f in state]


def test_watch_streams_each_applied_batch_and_unwatches_when_the_call_ends() -> None:
    replica = FakeReplica()

    async def watch() -> list[pb.Applied]:
        watching = Admin(Store(Clock()), replica).Watch(pb.WatchRequest(), NO_CONTEXT)
        stream = cast(AsyncGenerator[pb.Applied, None], watching)  # an async def with yield
        first = asyncio.ensure_future(anext(stream))
        while not replica.watchers:  # the stream has not started yet
            await asyncio.sleep(0)
        replica.applied("n2", [Fragment("a", 5), Fragment("b", versions=((6, "x"),))])
        replica.applied("n3", [Fragment("c", 7)])
        got = [await first, await anext(stream)]
        await stream.aclose()
        return got

    assert asyncio.run(watch()) == [
        pb.Applied(origin="n2", keys=["a", "b"]),
        pb.Applied(origin="n3", keys=["c"]),
    ]
    assert replica.watchers == []
