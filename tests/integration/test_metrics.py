"""The gRPC interceptor's counts, on two in-process servers with metrics, each with its own registry."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest

from kvs._gen import kvs_pb2 as pb
from kvs._gen import kvs_pb2_grpc
from kvs.metrics import Metrics
from kvs.net.channel import open_channel
from kvs.server.main import Server
from kvs.service.replicated import ReplicatedStore
from kvs.storage.store import Store
from tests.clock import Clock
from tests.scrape import Samples, scrape

KVS = "/project.KeyValueStore/"


class Measured:
    """An in-process server with metrics, serving /metrics on a port of its own."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

        async def start() -> tuple[Server, Metrics, int, int]:
            metrics = Metrics(store.stats)
            server = Server(ReplicatedStore(store, lambda fragments: None), "127.0.0.1:0", metrics=metrics)
            port = await server.start()
            await server.serving()
            return server, metrics, port, metrics.serve(0, "127.0.0.1")

        store = Store(Clock())
        self.server, self.metrics, port, self.metrics_port = asyncio.run_coroutine_threadsafe(
            start(), loop
        ).result(10)
        self.channel = open_channel(f"127.0.0.1:{port}")
        self.stub = kvs_pb2_grpc.KeyValueStoreStub(self.channel)

    def run(self, coroutine: object) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)  # type: ignore[arg-type]

    def scrape(self) -> Samples:
        return scrape(self.metrics_port)

    def stop(self) -> None:
        self.channel.close()
        self.run(self.server.stop(0))
        self.metrics.stop()


@pytest.fixture
def two(loop: asyncio.AbstractEventLoop) -> Iterator[tuple[Measured, Measured]]:
    first, second = Measured(loop), Measured(loop)
    yield first, second
    first.stop()
    second.stop()


def calls(samples: Samples, method: str, code: str) -> float:
    return samples.get(("kvs_grpc_requests_total", (("code", code), ("method", KVS + method))), 0.0)


def test_streams_count_once_per_call_with_the_status_they_end_with(two: tuple[Measured, Measured]) -> None:
    first, second = two
    replies = list(first.stub.PutAll(iter([pb.KeyValueRequest(key=k, val="v") for k in "abc"])))
    assert len(replies) == 3
    with pytest.raises(grpc.RpcError) as refused:
        list(first.stub.DelAll(iter([pb.KeyRequest(key="a"), pb.KeyRequest(key="")])))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        len(list(first.stub.GetRange(pb.KeyRange(fr=pb.KeyRequest(key="a"), to=pb.KeyRequest(key="z"))))) == 2
    )
    second.stub.Put(pb.KeyValueRequest(key="x", val="y"))

    ours, theirs = first.scrape(), second.scrape()
    assert calls(ours, "PutAll", "OK") == 1
    assert calls(ours, "DelAll", "INVALID_ARGUMENT") == 1
    assert calls(ours, "GetRange", "OK") == 1
    assert calls(ours, "Put", "OK") == 0
    assert ours["kvs_grpc_request_duration_seconds_count", (("method", KVS + "PutAll"),)] == 1
    assert ours["kvs_store_keys", ()] == 2  # DelAll removed "a" before it met the empty key
    assert ours["kvs_store_tombstones", ()] == 1
    assert calls(theirs, "Put", "OK") == 1
    assert calls(theirs, "PutAll", "OK") == 0
    assert theirs["kvs_store_keys", ()] == 1


def test_an_unknown_method_is_not_counted(two: tuple[Measured, Measured]) -> None:
    first, _ = two
    unknown = first.channel.unary_unary("/project.KeyValueStore/Nope", None, None)
    with pytest.raises(grpc.RpcError) as refused:
        unknown(b"", timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert not any("Nope" in dict(labels).get("method", "") for _, labels in first.scrape())
