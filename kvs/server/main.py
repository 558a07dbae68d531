"""The kvs server: flags, wiring and lifecycle.

Concurrency, in one place: the asyncio event loop thread owns the store. gRPC
calls run on it as coroutines, and so do paho's callbacks: the loop drives the
MQTT socket (kvs.mqtt). Worker threads only open TCP connections and start or
stop the private broker; nothing else touches the store.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sqlite3
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kvs._gen import replication_pb2_grpc
from kvs.admin.service import SERVICE_NAME as ADMIN_SERVICE_NAME
from kvs.admin.service import Admin
from kvs.clock import now_ms
from kvs.errors import BrokerRefused, BrokerUnreachable, ConfigError, DataDirError
from kvs.keys import load_cluster_key, read_password
from kvs.limits import MAX_REQUEST_BYTES
from kvs.metrics import NO_METRICS, Metrics
from kvs.mqtt.broker import Address, BrokerAuth, EmbeddedBroker, private_auth, private_password_path
from kvs.net.tls import ServerTls, TlsError
from kvs.replication.adapter import Replicator
from kvs.service.kvstore import SERVICE_NAME, KeyValueStore, add_to_server
from kvs.service.replicated import ReplicatedStore
from kvs.storage.datadir import DataDir, open_data_dir
from kvs.storage.durable import GroupCommit
from kvs.storage.store import Store

log = logging.getLogger(__name__)

DEFAULT_PORT = 40000
DEFAULT_BROKER = "localhost:1883"


@dataclass(frozen=True)
class Settings:
    """What the command line sets."""

    port: int
    listen: str
    node_id: str
    cluster: str
    broker: Address
    broker_is_default: bool  # no --broker, --broker-user, --broker-tls-ca: a private mosquitto may be started
    sync_interval: float
    event_loop: str  # "uvloop" or "asyncio"
    cluster_key: bytes  # 32 bytes (kvs.keys)
    broker_auth: BrokerAuth  # credentials and TLS; the private broker's own when it is used
    tls: ServerTls | None = None  # --tls-cert, --tls-key, --tls-client-ca
    metrics_port: int | None = None  # --metrics-port: serve Prometheus metrics there (kvs.metrics)
    data_dir: Path | None = None  # None: the store is in memory
    fsync: bool = False


class Server:
    """One gRPC server over one store: construct, `start()` (returns the port), `stop()`."""

    def __init__(
        self,
        store: ReplicatedStore,
        address: str,
        admin: Admin | None = None,
        tls: ServerTls | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.ready = asyncio.Event()
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # grpc-stubs predate .aio
        self._grpc = grpc.aio.server(
            interceptors=[metrics.interceptor()] if metrics else None,
            options=[
                # Below the clients' receive limit by a reply's overhead (kvs.limits).
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                # Without this, a second server on a taken port would start silently.
                ("grpc.so_reuseport", 0),
            ],
        )
        add_to_server(KeyValueStore(store, self.ready), self._grpc)
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
        self._tls = tls

    async def start(self) -> int:
        """Listens (NOT_SERVING until `serving()`) and returns the bound port."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._tls:  # TLS only: health and reflection included, on the same port
            port = self._grpc.add_secure_port(self._address, self._tls.credentials())
        else:
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


def broker_error(settings: Settings, error: Exception) -> str:
    """The one line said when the first connection fails."""
    if not isinstance(error, BrokerRefused):
        return f"{BROKER_ERROR} ({settings.broker}: {error})"
    if settings.broker_is_default:
        # Another user's private broker, or ours started with a password since replaced.
        hint = (
            f"it is not this user's private broker, or {private_password_path(settings.broker.port)} changed"
        )
    else:
        hint = "check --broker-user and its password"
    return f"the broker refused this server ({error}): {hint}"


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
    """Runs a server until SIGINT or SIGTERM; returns the exit status.

    Whatever was started is stopped in the reverse order, on every path out.
    """
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stopping.set)
    failed = asyncio.Event()  # a commit to disk failed: stop, and leave the file as it is

    async with contextlib.AsyncExitStack() as started:
        try:
            store, data_dir = open_store(settings)
        except DataDirError as error:
            print(error, file=sys.stderr)
            return 1
        if data_dir:
            started.callback(data_dir.close)
            started.callback(lambda: None if failed.is_set() else store.close())
        commits = GroupCommit(store, lambda: _set(failed, stopping))
        started.push_async_callback(commits.close)
        try:
            embedded = await _private_broker(settings, started)
        except OSError as error:
            print(f"{BROKER_ERROR} ({settings.broker}: {error})", file=sys.stderr)
            return 1
        metrics = Metrics(store.stats) if settings.metrics_port is not None else None
        replicator = Replicator(
            store,
            settings.cluster,
            settings.node_id,
            settings.broker,
            settings.cluster_key,
            sync_interval=settings.sync_interval,
            fresh=bool(embedded and embedded.fresh),
            auth=settings.broker_auth,
            metrics=metrics or NO_METRICS,
        )
        address = f"{settings.listen}:{settings.port}"
        server = Server(
            ReplicatedStore(store, replicator.publish, commits),
            address,
            Admin(store, replicator),
            settings.tls,
            metrics,
        )
        try:
            port = await server.start()
        except RuntimeError as error:
            log.error("cannot listen on %s (%s): is the port in use?", address, error)
            return 1
        security = "" if not settings.tls else " over mutual TLS" if settings.tls.client_ca else " over TLS"
        where = f"{settings.listen}:{port}{security}"
        log.info("listening on %s as %s in cluster %s", where, settings.node_id, settings.cluster)
        if metrics and not _serve_metrics(metrics, settings):
            await server.stop(0)
            return 1
        if metrics:
            started.callback(metrics.stop)
        try:
            await replicator.start()
        except (BrokerUnreachable, OSError) as error:
            print(broker_error(settings, error), file=sys.stderr)
            await server.stop(0)
            return 1
        started.push_async_callback(replicator.stop)  # after the server: no write goes unpublished
        started.push_async_callback(server.stop)
        caught_up = asyncio.ensure_future(replicator.caught_up.wait())
        await asyncio.wait(
            [caught_up, asyncio.ensure_future(stopping.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        if caught_up.done():
            await server.serving()
            log.info("serving")
            await stopping.wait()
        log.info("shutting down")
    log.info("stopped")
    return 1 if failed.is_set() else 0


def _set(*events: asyncio.Event) -> None:
    for event in events:
        event.set()


async def _private_broker(settings: Settings, started: contextlib.AsyncExitStack) -> EmbeddedBroker | None:
    """The private mosquitto (started if none listens), when no broker was named; released on exit."""
    if not (settings.broker_is_default and settings.broker.local):
        return None
    embedded = EmbeddedBroker(settings.broker.port, settings.broker_auth.password or "")
    await asyncio.to_thread(embedded.acquire)
    started.push_async_callback(asyncio.to_thread, embedded.release)
    return embedded


def _serve_metrics(metrics: Metrics, settings: Settings) -> bool:
    """Serves /metrics on --metrics-port; False (and a log line) if it cannot."""
    assert settings.metrics_port is not None
    try:
        port = metrics.serve(settings.metrics_port, settings.listen.strip("[]"))
    except OSError as error:
        log.error("cannot serve metrics on port %s (%s): is the port in use?", settings.metrics_port, error)
        return False
    log.info("metrics on http://%s:%d/metrics", settings.listen, port)
    return True


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
    parser.add_argument(
        "--sync-interval", type=float, default=5.0, help="seconds between anti-entropy rounds (5)"
    )
    parser.add_argument(
        "--event-loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="uvloop (faster, docs/performance.md) or asyncio's own",
    )
    parser.add_argument(
        "--cluster-key-file",
        type=Path,
        metavar="PATH",
        help="the cluster key: 32 bytes, mode 0600 (~/.config/kvs/<cluster>.key, created if missing)",
    )
    parser.add_argument("--broker-user", metavar="NAME", help="MQTT user name")
    parser.add_argument(
        "--broker-password-file",
        type=Path,
        metavar="PATH",
        help="file holding the MQTT password, mode 0600 (else env KVS_BROKER_PASSWORD)",
    )
    parser.add_argument(
        "--broker-tls-ca",
        type=Path,
        metavar="PATH",
        help="connect with TLS, verifying the broker with this CA",
    )
    parser.add_argument("--tls-cert", metavar="PATH", help="serve TLS only, with this PEM certificate chain")
    parser.add_argument("--tls-key", metavar="PATH", help="the PEM private key of --tls-cert")
    parser.add_argument(
        "--tls-client-ca", metavar="PATH", help="require client certificates signed by this CA (mutual TLS)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="keep the store on disk in DIR (created if missing), not in memory",
    )
    parser.add_argument(
        "--fsync",
        action="store_true",
        help="with --data-dir: fsync each group commit (survives a power loss)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on http://LISTEN:PORT/metrics (off)",
    )
    args = parser.parse_args(argv)
    if args.fsync and args.data_dir is None:
        parser.error("--fsync needs --data-dir")
    if not 0 <= args.port <= 65535:
        parser.error(f"--porta must be between 0 and 65535, not {args.port}")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        parser.error(f"--metrics-port must be between 0 and 65535, not {args.metrics_port}")
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
    if args.broker_password_file and not args.broker_user:
        parser.error("--broker-password-file needs --broker-user")
    broker_is_default = args.broker is None and args.broker_user is None and args.broker_tls_ca is None
    tls = None
    if args.tls_cert or args.tls_key or args.tls_client_ca:
        if not (args.tls_cert and args.tls_key):
            parser.error("--tls-cert and --tls-key go together (and --tls-client-ca needs them)")
        try:
            tls = ServerTls.from_files(args.tls_cert, args.tls_key, args.tls_client_ca)
        except TlsError as error:
            parser.exit(1, f"server.py: error: {error}\n")
    return Settings(
        port=args.port,
        listen=args.listen,
        node_id=node_id,
        cluster=args.cluster,
        broker=broker,
        broker_is_default=broker_is_default,
        sync_interval=args.sync_interval,
        event_loop=args.event_loop,
        cluster_key=load_cluster_key(args.cluster_key_file, args.cluster),
        broker_auth=_broker_auth(args, broker, broker_is_default),
        tls=tls,
        metrics_port=args.metrics_port,
        data_dir=args.data_dir,
        fsync=args.fsync,
    )


def _broker_auth(args: argparse.Namespace, broker: Address, broker_is_default: bool) -> BrokerAuth:
    """The flags' credentials and TLS; with none, the private broker's own when it may be used."""
    if args.broker_tls_ca is not None:
        try:  # what paho's tls_set does later, where an error would be a traceback
            ssl.create_default_context(cafile=args.broker_tls_ca)
        except OSError as error:  # ssl.SSLError included
            raise ConfigError(f"--broker-tls-ca {args.broker_tls_ca}: {error.strerror or error}") from None
    if broker_is_default and broker.local:
        return private_auth(broker.port)
    if args.broker_user is None:
        return BrokerAuth(tls_ca=args.broker_tls_ca)
    password = os.environ.get("KVS_BROKER_PASSWORD")
    if args.broker_password_file is not None:
        password = read_password(args.broker_password_file, "broker password file")
    return BrokerAuth(args.broker_user, password, args.broker_tls_ca)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse_args(argv)
    except ConfigError as error:
        print(f"server.py: {error}", file=sys.stderr)
        return 1
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if settings.event_loop == "uvloop":
        return uvloop.run(serve(settings))
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
