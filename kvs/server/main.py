"""The kvs server: wiring and lifecycle (its flags and settings are kvs.server.settings).

Concurrency, in one place: the asyncio event loop thread owns the store. gRPC
calls run on it as coroutines, and so do paho's callbacks: the loop drives the
MQTT socket (kvs.mqtt). Worker threads only open TCP connections and start or
stop the private broker; nothing else touches the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import signal
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kvs._gen import replication_pb2_grpc
from kvs.admin.service import SERVICE_NAME as ADMIN_SERVICE_NAME
from kvs.admin.service import Admin
from kvs.clock import now_ms
from kvs.errors import BrokerRefused, BrokerUnreachable, ConfigError, DataDirError
from kvs.limits import MAX_REQUEST_BYTES
from kvs.metrics import NO_METRICS, Metrics
from kvs.mqtt.broker import Address, BrokerAuth, EmbeddedBroker, private_password_path
from kvs.mqtt.session import opener
from kvs.net.tls import ServerTls
from kvs.replication.adapter import Replicator
from kvs.replication.horizon import Horizon
from kvs.replication.sync import Sync
from kvs.server.settings import Settings, parse_args
from kvs.service.kvstore import SERVICE_NAME, KeyValueStore, add_to_server
from kvs.service.replicated import ReplicatedStore
from kvs.service.upkeep import Quota, Retention, Upkeep
from kvs.storage.datadir import STORE_FILE, DataDir, open_data_dir
from kvs.storage.durable import GroupCommit
from kvs.storage.store import Store
from kvs.units import format_size

log = logging.getLogger(__name__)


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


def broker_error(settings: Settings, error: Exception, private: bool = False) -> str:
    """The one line said when the first connection fails (`private`: to the private broker)."""
    if not isinstance(error, BrokerRefused):
        return f"{BROKER_ERROR} ({error})"
    if settings.broker_is_default and not private and settings.broker.local:
        hint = "it takes credentials: name it with --broker and --broker-user"
    elif settings.broker_is_default:
        # Another user's private broker, or ours started with a password since replaced.
        hint = (
            f"it is not this user's private broker, or {private_password_path(settings.broker.port)} changed"
        )
    else:
        hint = "check --broker-user and its password"
    return f"the broker refused this server ({error}): {hint}"


MEMORY_SHARE: Final = 16
"""The default quota in memory: this share of the machine's memory. A stored version of a small
value takes up to about 5 times its keys and values in memory (issue 18 measured 620 bytes for
128), so at the quota the server holds about a third of the memory: room for the broker, a peer
or two on the same machine, and the process itself, before the kernel's OOM killer."""
DISK_SHARE: Final = 4
"""The default quota with --data-dir: this share of the space free for the store's file (what it holds
already counted as free). The file takes 1.2 to 2 times its keys and values, and the WAL and the
pages kept for reuse take more: kvs alone then fills at most about half the disk."""


def default_quota(data_dir: Path | None) -> tuple[int, str]:
    """The quota when --quota-bytes is not given, and how it was chosen (for the log)."""
    if data_dir is None:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return memory // MEMORY_SHARE, f"1/{MEMORY_SHARE} of this machine's {format_size(memory)} of memory"
    usage = shutil.disk_usage(data_dir)
    held = sum(f.stat().st_size for f in data_dir.glob(f"{STORE_FILE}*") if f.is_file())
    free = usage.free + held
    return free // DISK_SHARE, f"1/{DISK_SHARE} of the {format_size(free)} free for --data-dir"


def open_store(settings: Settings) -> tuple[Store, DataDir | None]:
    """The store: in memory, or in --data-dir (locked for this process); raises DataDirError."""
    if settings.data_dir is None:
        return Store(now_ms, keep_versions=settings.keep_versions), None
    data_dir = open_data_dir(settings.data_dir, settings.cluster)
    started = time.monotonic()
    try:
        store = Store(now_ms, data_dir.store_path, settings.fsync, settings.keep_versions)
    except sqlite3.Error as error:
        data_dir.close()
        raise DataDirError(f"--data-dir {settings.data_dir}: cannot open its store ({error})") from None
    mode = "synchronous=FULL (--fsync)" if settings.fsync else "synchronous=NORMAL"
    log.info("store %s opened in %.2f s, %s", data_dir.store_path, time.monotonic() - started, mode)
    if lost := data_dir.lost_commits(store.commits):
        log.warning(
            "the write-ahead log of %s was cut: it lost the last %d commit(s) (the store holds commit %d"
            " of %d); the writes of those commits come back from the peers that hold them, through the join",
            data_dir.store_path, lost, store.commits, data_dir.recorded_commits,
        )  # fmt: skip
    store.on_commit(data_dir.record_commit)
    data_dir.record_commit(store.commits)
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
            brokers, auth, embedded = await _choose_broker(settings, started)
        except OSError as error:
            print(f"{BROKER_ERROR} ({settings.broker}: {error})", file=sys.stderr)
            return 1
        metrics = Metrics(store.stats) if settings.metrics_port is not None else None
        fresh = bool(embedded and embedded.fresh)
        quota = _quota(settings, metrics)
        replicator = Replicator(
            store,
            Sync(
                settings.node_id,
                settings.sync_interval,
                epoch=now_ms(),
                fresh=fresh,
                horizon=Horizon(settings.tombstone_ttl_ms or 0),
            ),
            settings.cluster,
            settings.cluster_key,
            opener(brokers, auth),
            metrics=metrics or NO_METRICS,
        )
        address = f"{settings.listen}:{settings.port}"
        replicated = ReplicatedStore(store, replicator.publish, commits, quota)
        server = Server(replicated, address, Admin(store, replicator, quota), settings.tls, metrics)
        try:
            port = await server.start()
        except RuntimeError as error:
            log.error("cannot listen on %s (%s): is the port in use?", address, error)
            return 1
        security = "" if not settings.tls else " over mutual TLS" if settings.tls.client_ca else " over TLS"
        where = f"{settings.listen}:{port}{security}"
        log.info("listening on %s as %s in cluster %s", where, settings.node_id, settings.cluster)
        if metrics and not _serve_metrics(metrics, settings, started):
            await server.stop(0)
            return 1
        try:
            await replicator.start()
        except (BrokerUnreachable, OSError) as error:
            print(broker_error(settings, error, embedded is not None), file=sys.stderr)
            await server.stop(0)
            return 1
        started.push_async_callback(replicator.stop)  # after the server: no write goes unpublished
        await started.enter_async_context(_upkeep(settings, replicated, quota, metrics))
        started.push_async_callback(server.stop)
        caught_up = asyncio.ensure_future(replicator.caught_up.wait())
        await asyncio.wait(
            [caught_up, asyncio.ensure_future(stopping.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        if caught_up.done():
            await _serving(server)
            await stopping.wait()
        log.info("shutting down")
    log.info("stopped")
    return 1 if failed.is_set() else 0


async def _serving(server: Server) -> None:
    await server.serving()
    # What the start made (modules, gRPC, the first state) lives as long as the process: out of the
    # garbage collector's full collections, which then walk only what came since (docs/performance.md).
    gc.freeze()
    log.info("serving")


def _quota(settings: Settings, metrics: Metrics | None) -> Quota:
    if settings.quota_bytes is not None:
        limit, why = settings.quota_bytes, "--quota-bytes"
    else:
        limit, why = default_quota(settings.data_dir)
    log.info("quota: %s of keys and values (%s)", format_size(limit), why)
    if metrics is not None:
        metrics.quota(limit)
    return Quota(limit, metrics)


def _upkeep(settings: Settings, store: ReplicatedStore, quota: Quota, metrics: Metrics | None) -> Upkeep:
    retention = Retention(settings.keep_versions, settings.retention_ms, settings.tombstone_ttl_ms)
    log.info("retention: %s", retention)
    return Upkeep(store, now_ms, quota, retention, metrics)


def _set(*events: asyncio.Event) -> None:
    for event in events:
        event.set()


async def _choose_broker(
    settings: Settings, started: contextlib.AsyncExitStack
) -> tuple[Sequence[Address], BrokerAuth, EmbeddedBroker | None]:
    """The brokers to connect to (in order), with what credentials, and the private one if it is that.

    With a named broker, the flags'. With the default address (kvs.mqtt.broker): the
    private mosquitto (started if needed, released on exit) with its password, or a
    trusted listener on the TCP port without credentials: the private password goes
    to the private broker alone."""
    if not (settings.broker_is_default and settings.broker.local):
        return settings.brokers or (settings.broker,), settings.broker_auth, None
    embedded = EmbeddedBroker(settings.broker.port, settings.broker_auth.password or "")
    address = await asyncio.to_thread(embedded.acquire)
    if address.socket is None:
        return (address,), BrokerAuth(), None
    started.push_async_callback(asyncio.to_thread, embedded.release)
    return (address,), settings.broker_auth, embedded


def _serve_metrics(metrics: Metrics, settings: Settings, started: contextlib.AsyncExitStack) -> bool:
    """Serves /metrics on --metrics-port until `started` closes; False (and a log line) if it cannot."""
    assert settings.metrics_port is not None
    try:
        port = metrics.serve(settings.metrics_port, settings.listen.strip("[]"))
    except OSError as error:
        log.error("cannot serve metrics on port %s (%s): is the port in use?", settings.metrics_port, error)
        return False
    log.info("metrics on http://%s:%d/metrics", settings.listen, port)
    started.callback(metrics.stop)
    return True


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
