"""The kvs server: flags, wiring and lifecycle.

Concurrency, in one place: the asyncio event loop thread owns the store. gRPC
calls run on it as coroutines, and so do paho's callbacks: the loop drives the
MQTT socket (kvs.mqtt). Worker threads only open TCP connections and start or
stop the private broker; nothing else touches the store.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kvs._gen import kvs_pb2_grpc, replication_pb2_grpc
from kvs.admin import SERVICE_NAME as ADMIN_SERVICE_NAME
from kvs.admin import Admin
from kvs.broker import Address, EmbeddedBroker
from kvs.datadir import DataDir, open_data_dir
from kvs.durable import GroupCommit
from kvs.errors import BrokerUnreachable, DataDirError
from kvs.replication import Replicator
from kvs.service import SERVICE_NAME, KeyValueStore, Publish
from kvs.store import Store, Version

log = logging.getLogger("kvs.server")

DEFAULT_PORT = 40000
DEFAULT_BROKER = "localhost:1883"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""The largest request a server accepts; a larger one gets RESOURCE_EXHAUSTED."""


def now_ms() -> Version:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Settings:
    """What the command line sets."""

    port: int
    listen: str
    node_id: str
    cluster: str
    broker: Address
    broker_is_default: bool  # no --broker: a private mosquitto may be started (kvs.broker)
    sync_interval: float
    event_loop: str  # "uvloop" or "asyncio"
    data_dir: Path | None = None  # None: the store is in memory
    fsync: bool = False


class Server:
    """One gRPC server over one store: construct, `start()` (returns the port), `stop()`."""

    def __init__(
        self,
        store: Store,
        publish: Publish,
        address: str,
        admin: Admin | None = None,
        commits: GroupCommit | None = None,
    ) -> None:
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
            KeyValueStore(store, publish, self.ready, commits), self._grpc
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        services = [
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        if admin:
            replication_pb2_grpc.add_AdminServicer_to_server(admin, self._grpc)
            services.append(ADMIN_SERVICE_NAME)
        reflection.enable_server_reflection(services, self._grpc)
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


BROKER_ERROR = "Falha ao se conectar com o broker. Verifique se o broker está sendo executado."


def open_store(settings: Settings) -> tuple[Store, DataDir | None]:
    """The store: in memory, or in --data-dir (locked for this process); raises DataDirError."""
    if settings.data_dir is None:
        return Store(now_ms), None
    data_dir = open_data_dir(settings.data_dir, settings.cluster)
    started = time.monotonic()
    try:
        store = Store(now_ms, data_dir.store_path, settings.fsync)
    except sqlite3.Error as error:
        data_dir.close()
        raise DataDirError(f"--data-dir {settings.data_dir}: cannot open its store ({error})") from None
    mode = "synchronous=FULL (--fsync)" if settings.fsync else "synchronous=NORMAL"
    log.info("store %s opened in %.2f s, %s", data_dir.store_path, time.monotonic() - started, mode)
    return store, data_dir


async def serve(settings: Settings) -> int:
    """Runs a server until SIGINT or SIGTERM; returns the exit status."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)

    try:
        store, data_dir = open_store(settings)
    except DataDirError as error:
        print(error, file=sys.stderr)
        return 1
    failed = False

    def commit_failed() -> None:
        nonlocal failed
        failed = True
        stopping.set()

    commits = GroupCommit(store, commit_failed)
    replicator = Replicator(
        store, settings.cluster, settings.node_id, settings.broker, settings.sync_interval
    )
    server = Server(
        store, replicator.publish, f"{settings.listen}:{settings.port}", Admin(store, replicator), commits
    )
    try:
        port = await server.start()
    except RuntimeError as error:
        log.error("cannot listen on %s:%s (%s): is the port in use?", settings.listen, settings.port, error)
        return 1
    log.info(
        "listening on %s:%d as %s in cluster %s", settings.listen, port, settings.node_id, settings.cluster
    )

    embedded = None
    if settings.broker_is_default and settings.broker.local:
        embedded = EmbeddedBroker(settings.broker.port)
    try:
        if embedded:
            await asyncio.to_thread(embedded.acquire)
        await replicator.start()
    except (BrokerUnreachable, OSError) as error:
        print(f"{BROKER_ERROR} ({settings.broker}: {error})", file=sys.stderr)
        await server.stop(0)
        if embedded:
            embedded.release()
        return 1

    caught_up = asyncio.ensure_future(replicator.caught_up.wait())
    await asyncio.wait(
        [caught_up, asyncio.ensure_future(stopping.wait())], return_when=asyncio.FIRST_COMPLETED
    )
    if caught_up.done():
        await server.serving()
        log.info("serving")
        await stopping.wait()

    log.info("shutting down")
    await server.stop()
    await replicator.stop()
    if embedded:
        await asyncio.to_thread(embedded.release)
    await commits.close()
    if data_dir:
        if not failed:
            store.close()
        data_dir.close()
    log.info("stopped")
    return 1 if failed else 0


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(prog="server.py", description="Runs one kvs server.")
    parser.add_argument(
        "--porta", "--port", dest="port", type=int, default=DEFAULT_PORT, help="gRPC port (40000)"
    )
    parser.add_argument("--broker", help=f"MQTT broker HOST:PORT (env KVS_BROKER, else {DEFAULT_BROKER})")
    parser.add_argument(
        "--cluster", default="kvs", help="topic prefix shared by the servers of one store (kvs)"
    )
    parser.add_argument(
        "--id", dest="node_id", help="this server's id, unique in the cluster (<hostname>:<porta>)"
    )
    parser.add_argument("--listen", default="[::]", help="address to listen on ([::]: every interface)")
    parser.add_argument("--sync-interval", type=float, default=5.0,
                        help="seconds between anti-entropy rounds (5)")  # fmt: skip
    parser.add_argument("--event-loop", choices=["uvloop", "asyncio"], default="uvloop",
                        help="uvloop (faster, docs/performance.md) or asyncio's own")  # fmt: skip
    parser.add_argument("--data-dir", type=Path, metavar="DIR",
                        help="keep the store on disk in DIR (created if missing), not in memory")  # fmt: skip
    parser.add_argument("--fsync", action="store_true",
                        help="with --data-dir: fsync each group commit (survives a power loss)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.fsync and args.data_dir is None:
        parser.error("--fsync needs --data-dir")
    if not 0 <= args.port <= 65535:
        parser.error(f"--porta must be between 0 and 65535, not {args.port}")
    node_id = args.node_id or f"{socket.gethostname()}:{args.port}"
    for name, value in (("--cluster", args.cluster), ("--id", node_id)):
        if not value or any(c in value for c in "/+#\0"):
            parser.error(f"{name} must be non-empty without '/', '+', '#' or NUL (got {value!r})")
    if args.sync_interval <= 0:
        parser.error("--sync-interval must be positive")
    text = args.broker or os.environ.get("KVS_BROKER") or DEFAULT_BROKER
    try:
        broker = Address.parse(text)
    except ValueError as error:
        parser.error(str(error))
    return Settings(
        port=args.port,
        listen=args.listen,
        node_id=node_id,
        cluster=args.cluster,
        broker=broker,
        broker_is_default=args.broker is None,
        sync_interval=args.sync_interval,
        event_loop=args.event_loop,
        data_dir=args.data_dir,
        fsync=args.fsync,
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if settings.event_loop == "uvloop":
        return uvloop.run(serve(settings))
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
