"""The kvs server: flags, wiring and lifecycle.

Concurrency, in one place: the asyncio event loop thread owns the store. gRPC
calls run on it as coroutines; nothing else touches the store.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kvs._gen import kvs_pb2_grpc
from kvs.service import SERVICE_NAME, KeyValueStore, Publish
from kvs.store import Store, Version

log = logging.getLogger("kvs.server")

DEFAULT_PORT = 40000
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""The largest request a server accepts; a larger one gets RESOURCE_EXHAUSTED."""


def now_ms() -> Version:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Settings:
    """What the command line sets."""

    port: int = DEFAULT_PORT
    listen: str = "[::]"
    node_id: str = ""


class Server:
    """One gRPC server over one store: construct, `start()` (returns the port), `stop()`."""

    def __init__(self, store: Store, publish: Publish, address: str) -> None:
        self.ready = asyncio.Event()
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # grpc-stubs predate .aio
        self._grpc = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                # Without this, a second server on a taken port would start silently.
                ("grpc.so_reuseport", 0),
            ]
        )
        kvs_pb2_grpc.add_KeyValueStoreServicer_to_server(
            KeyValueStore(store, publish, self.ready), self._grpc
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        reflection.enable_server_reflection(
            [
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self._grpc,
        )
        self._address = address

    async def start(self) -> int:
        """Listens (NOT_SERVING until `serving()`) and returns the bound port."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        port = self._grpc.add_insecure_port(self._address)
        await self._grpc.start()
        return port

    async def serving(self) -> None:
        """Lets calls through and reports SERVING."""
        self.ready.set()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float = 2.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self._grpc.stop(grace)

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)


async def serve(settings: Settings) -> int:
    """Runs a server until SIGINT or SIGTERM; returns the exit status."""
    store = Store(now_ms)
    server = Server(store, lambda fragments: None, f"{settings.listen}:{settings.port}")
    try:
        port = await server.start()
    except RuntimeError as error:
        log.error("cannot listen on %s:%s (%s): is the port in use?", settings.listen, settings.port, error)
        return 1
    log.info("listening on %s:%d as %s", settings.listen, port, settings.node_id)
    await server.serving()
    log.info("serving alone (no replication)")

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("shutting down")
    await server.stop()
    log.info("stopped")
    return 0


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(prog="server.py", description="Runs one kvs server.")
    parser.add_argument(
        "--porta", "--port", dest="port", type=int, default=DEFAULT_PORT, help="gRPC port (40000)"
    )
    parser.add_argument("--listen", default="[::]", help="address to listen on ([::]: every interface)")
    parser.add_argument("--id", dest="node_id", help="this server's id (<hostname>:<porta>)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--porta must be between 0 and 65535, not {args.port}")
    node_id = args.node_id or f"{socket.gethostname()}:{args.port}"
    return Settings(port=args.port, listen=args.listen, node_id=node_id)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
