"""An in-process kvs server on port 0, its event loop on a thread of its own."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from kvs._gen import kvs_pb2_grpc
from kvs.net.channel import open_channel
from kvs.server.main import Server
from kvs.service.replicated import ReplicatedStore
from kvs.storage.durable import GroupCommit
from kvs.storage.store import Fragment, Store
from tests.clock import Clock


@dataclass
class Running:
    """A started server, a client stub for it, and what it handed to replication."""

    port: int
    stub: kvs_pb2_grpc.KeyValueStoreStub
    channel: grpc.Channel
    clock: Clock
    server: Server
    loop: asyncio.AbstractEventLoop
    published: list[list[Fragment]] = field(default_factory=list)

    def run(self, coroutine: object) -> object:
        """Runs a coroutine on the server's loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)  # type: ignore[arg-type]


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="server-loop", daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def start_server(loop: asyncio.AbstractEventLoop, serving: bool = True, path: Path | None = None) -> Running:
    """A server on port 0, its store in memory or in the file `path` (with group commit)."""
    clock = Clock()
    published: list[list[Fragment]] = []

    def publish(fragments: Sequence[Fragment]) -> None:
        published.append(list(fragments))

    async def start() -> tuple[Server, int]:
        store = Store(clock, path)
        server = Server(ReplicatedStore(store, publish, GroupCommit(store)), "127.0.0.1:0")
        port = await server.start()
        if serving:
            await server.serving()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    channel = open_channel(f"127.0.0.1:{port}")
    stub = kvs_pb2_grpc.KeyValueStoreStub(channel)
    return Running(port, stub, channel, clock, server, loop, published)


@pytest.fixture(params=["memory", "disk"])
def kvs(loop: asyncio.AbstractEventLoop, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Running]:
    """Every RPC test runs against a store in memory and one on disk (--data-dir)."""
    running = start_server(loop, path=tmp_path / "kvs.sqlite" if request.param == "disk" else None)
    yield running
    running.channel.close()
    running.run(running.server.stop(0))
