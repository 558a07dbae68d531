"""Prometheus metrics: per-RPC counts and latency, the store's size, replication.

Off unless the server is started with `--metrics-port PORT`; then
prometheus_client's own HTTP server answers `GET /metrics` on that port
(docs/operations.md lists every metric and the alerts worth having).

Threads: the counters and histograms are updated on the event loop (the gRPC
interceptor below, and the replication adapter through `ReplicationMetrics`);
prometheus_client guards them with its own locks. The HTTP server runs in a
thread of its own, so the store's gauges, which must be read on the loop that
owns the store (kvs/server/main.py), are computed there: the scrape hands the read
to the loop and waits for it.

Every server has its own `CollectorRegistry`, never the process-wide default,
so that tests can run several servers in one process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Final, Literal, TypeAlias, get_args

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kvs.storage.store import Stats

log = logging.getLogger(__name__)

RPC_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10.0)
"""Seconds: a kvs call takes a fraction of a millisecond, so the default buckets (from 5 ms) say nothing."""
LAG_BUCKETS: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5, 10.0, 60.0)
"""Seconds: lag is about a millisecond when all is well, and seconds to minutes while repairing."""
SCRAPE_PATIENCE: Final = 5.0
"""Seconds a scrape waits for the event loop to read the store's gauges before leaving them out."""

DropReason: TypeAlias = Literal[
    "malformed",  # not a kvs payload: undecodable, a field out of range, or too large
    "foreign",  # another cluster's, or a format this server cannot read
    "misrouted",  # the wrong kind for its topic, another server's presence, or our own id from elsewhere
    "unauthenticated",  # no valid tag made with the cluster key (docs/security.md)
    "replayed",  # validly tagged but seen before, of an earlier run, or too old or new by its clock
]
"""Why a received replication message was dropped: a fixed set, so that a hostile sender cannot
mint label values."""
DROP_REASONS: Final[tuple[DropReason, ...]] = get_args(DropReason)


class ReplicationMetrics:
    """What the replication adapter reports, one call per event. This base records nothing (it is
    `NO_METRICS`, for when metrics are off); `Metrics` counts."""

    def batch_sent(self, nbytes: int) -> None:
        """One of our Batch messages published, of `nbytes` payload bytes."""

    def batch_skipped(self) -> None:
        """One of our batches not published: the write window was full (kvs.replication.sending)."""

    def batch_applied(self, nbytes: int) -> None:
        """A peer's Batch message, of `nbytes` payload bytes, joined into the store (replays never are)."""

    def dropped(self, reason: DropReason) -> None:
        """A message received and dropped."""

    def repair_started(self, buckets: int) -> None:
        """This server started a repair: it sends a peer its state of `buckets` buckets that differed
        the same way in two periodic digests."""

    def lost_batches_answered(self, resent: bool) -> None:
        """This server answers a peer that lost some of its batches: with its kept batches (`resent`),
        or, no longer kept, with its state of the buckets that differ."""

    def peers(self, up: int, differing: int) -> None:
        """The peers known to be up, and those whose latest periodic digest differed from ours when it
        came, changed to these counts."""

    def caught_up(self, seconds: float) -> None:
        """Seconds from the replicator's start until it held its peers' state (once per start)."""

    def lag(self, seconds: float) -> None:
        """Now minus the send time carried in a batch, once it is applied (negative, from clock skew: 0)."""

    def broker(self, address: str, connected: bool) -> None:
        """The broker in use, and whether this server is connected to it (subscriptions accepted)."""


NO_METRICS: Final = ReplicationMetrics()


class Metrics(ReplicationMetrics):
    """One server's metrics: its registry, the gRPC interceptor, the replication reports, the endpoint."""

    def __init__(self, stats: Callable[[], Stats] | None = None) -> None:
        """`stats` reads the store's gauges; it is called on the event loop running at construction."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = Counter(
            "kvs_grpc_requests",
            "gRPC calls finished, by method and status code",
            ["method", "code"],
            registry=r,
        )
        self._duration = Histogram(
            "kvs_grpc_request_duration_seconds",
            "Time from a call's start to its status, by method (streams: the whole stream)",
            ["method"],
            buckets=RPC_BUCKETS,
            registry=r,
        )
        self._batches_sent = Counter(
            "kvs_replication_batches_sent", "Batch messages this server published", registry=r
        )
        self._bytes_sent = Counter(
            "kvs_replication_bytes_sent",
            "Payload bytes of the Batch messages this server published",
            registry=r,
        )
        self._batches_skipped = Counter(
            "kvs_replication_batches_skipped",
            "Batches of this server not published because the write window was full (its peers ask for them)",
            registry=r,
        )
        self._batches_applied = Counter(
            "kvs_replication_batches_applied",
            "Batch messages from peers joined into the store (replays and dropped messages excluded)",
            registry=r,
        )
        self._bytes_applied = Counter(
            "kvs_replication_bytes_applied", "Payload bytes of the Batch messages applied", registry=r
        )
        self._dropped = Counter(
            "kvs_replication_messages_dropped",
            "Replication messages received and dropped, by reason",
            ["reason"],
            registry=r,
        )
        self._repairs = Counter(
            "kvs_replication_repairs_started",
            "Repairs this server started (buckets that differed from a peer's the same way in two digests)",
            registry=r,
        )
        self._buckets = Counter(
            "kvs_replication_buckets_repaired",
            "Buckets whose state this server sent in the repairs it started",
            registry=r,
        )
        self._lost = Counter(
            "kvs_replication_lost_batches_answered",
            "Requests for lost batches this server answered, by what it sent: its kept batches, or its state",
            ["sent"],
            registry=r,
        )
        self._peers = Gauge(
            "kvs_replication_peers_up",
            "Peers this server knows to be up (present), as of the last arrival or departure",
            registry=r,
        )
        self._differing = Gauge(
            "kvs_replication_peers_differing",
            "Peers whose latest periodic digest differed from this server's state when it arrived",
            registry=r,
        )
        self._catch_up = Gauge(
            "kvs_replication_catch_up_seconds",
            "Seconds from start until this server held its peers' state",
            registry=r,
        )
        self._lag = Histogram(
            "kvs_replication_lag_seconds",
            "From a peer's publishing of a batch to its apply here (clocks of two servers)",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self._connected = Gauge(
            "kvs_replication_broker_connected",
            "1 while connected to the broker with every subscription accepted, else 0",
            registry=r,
        )
        self._broker = Gauge(
            "kvs_replication_broker",
            "1 for the broker in use (--broker may list several), by address",
            ["address"],
            registry=r,
        )
        self._broker_address: str | None = None
        self._quota = Gauge(
            "kvs_store_quota_bytes", "The quota (--quota-bytes) of kvs_store_bytes", registry=r
        )
        self._over_quota = Gauge(
            "kvs_store_over_quota", "1 while Put and PutAll are refused for the quota, else 0", registry=r
        )
        self._retired = Counter(
            "kvs_retention_versions_dropped",
            "Versions dropped by --keep-versions and --retention sweeps",
            registry=r,
        )
        self._purged = Counter(
            "kvs_tombstones_purged",
            "Floors of deleted keys forgotten once older than --tombstone-ttl",
            registry=r,
        )
        for reason in DROP_REASONS:
            self._dropped.labels(reason)  # every reason shows, at 0, from the first scrape
        for sent in ("batches", "state"):
            self._lost.labels(sent)
        if stats is not None:
            r.register(StoreCollector(stats, asyncio.get_running_loop()))
        self._calls: dict[tuple[str, grpc.StatusCode], Any] = {}  # label children, looked up once
        self._timers: dict[str, Any] = {}
        self._http: Any = None

    # The endpoint ---------------------------------------------------------------

    def serve(self, port: int, address: str = "::") -> int:
        """Serves `/metrics` over HTTP on `address:port` (`::`: every interface); returns the bound port."""
        self._http, _ = start_http_server(port, address, registry=self.registry)
        bound: int = self._http.server_port
        return bound

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    # Growth (kvs.service.upkeep) ------------------------------------------------------

    def quota(self, limit: int) -> None:
        self._quota.set(limit)

    def over_quota(self, over: bool) -> None:
        self._over_quota.set(1 if over else 0)

    def retention_dropped(self, versions: int) -> None:
        self._retired.inc(versions)

    def tombstones_purged(self, floors: int) -> None:
        self._purged.inc(floors)

    # gRPC -----------------------------------------------------------------------

    def interceptor(self) -> grpc.aio.ServerInterceptor[Any, Any]:
        """Counts and times every call of every service, to pass to `grpc.aio.server(interceptors=...)`."""
        return _Interceptor(self)

    def finished(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        child = self._calls.get((method, code))
        if child is None:
            child = self._calls[method, code] = self._requests.labels(method, code.name)
        child.inc()
        timer = self._timers.get(method)
        if timer is None:
            timer = self._timers[method] = self._duration.labels(method)
        timer.observe(seconds)

    # Replication (ReplicationMetrics) ----------------------------------------------

    def batch_sent(self, nbytes: int) -> None:
        self._batches_sent.inc()
        self._bytes_sent.inc(nbytes)

    def batch_skipped(self) -> None:
        self._batches_skipped.inc()

    def batch_applied(self, nbytes: int) -> None:
        self._batches_applied.inc()
        self._bytes_applied.inc(nbytes)

    def dropped(self, reason: DropReason) -> None:
        self._dropped.labels(reason).inc()

    def repair_started(self, buckets: int) -> None:
        self._repairs.inc()
        self._buckets.inc(buckets)

    def lost_batches_answered(self, resent: bool) -> None:
        self._lost.labels("batches" if resent else "state").inc()

    def peers(self, up: int, differing: int) -> None:
        self._peers.set(up)
        self._differing.set(differing)

    def caught_up(self, seconds: float) -> None:
        self._catch_up.set(seconds)

    def lag(self, seconds: float) -> None:
        self._lag.observe(max(0.0, seconds))

    def broker(self, address: str, connected: bool) -> None:
        self._connected.set(int(connected))
        if address != self._broker_address:
            if self._broker_address is not None:
                self._broker.remove(self._broker_address)
            self._broker.labels(address).set(1)
            self._broker_address = address


class StoreCollector(Collector):
    """The store's keys, versions and tombstones, read on the store's event loop at each scrape."""

    def __init__(self, stats: Callable[[], Stats], loop: asyncio.AbstractEventLoop) -> None:
        self._stats = stats
        self._loop = loop

    def describe(self) -> Iterator[Metric]:
        return iter(self._families(Stats(0, 0, 0)))

    def collect(self) -> Iterator[Metric]:
        future: concurrent.futures.Future[Stats] = concurrent.futures.Future()

        def read() -> None:
            try:
                future.set_result(self._stats())
            except Exception as error:  # pragma: no cover: a store read that fails is a bug
                future.set_exception(error)

        try:
            self._loop.call_soon_threadsafe(read)
            stats = future.result(SCRAPE_PATIENCE)
        except (RuntimeError, concurrent.futures.TimeoutError) as error:  # loop closed, or busy too long
            log.warning("metrics: store gauges left out of this scrape (%s)", error or "the loop is busy")
            return iter(())
        return iter(self._families(stats))

    @staticmethod
    def _families(stats: Stats) -> list[Metric]:
        return [
            GaugeMetricFamily("kvs_store_keys", "Keys that exist (tombstones excluded)", stats.keys),
            GaugeMetricFamily("kvs_store_versions", "Versions stored, over every key", stats.versions),
            GaugeMetricFamily("kvs_store_tombstones", "Deleted keys whose floor is kept", stats.tombstones),
            GaugeMetricFamily(
                "kvs_store_bytes",
                "The store's size as the quota counts it: keys and values, plus 8 bytes a version or floor",
                stats.bytes,
            ),
        ]


# The interceptor ------------------------------------------------------------------

Behavior: TypeAlias = Callable[..., Any]


class _Interceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # generic only in the stubs
    """Wraps each method's behaviour once (the wrapped handlers are cached per method)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method: str = handler_call_details.method
        wrapped = self._handlers.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None:
            # An unknown method (UNIMPLEMENTED) is not counted: a client could mint any label value.
            return handler
        wrapped = self._handlers[method] = _wrap(handler, method, self._metrics)
        return wrapped


def _wrap(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, metrics: Metrics
) -> grpc.RpcMethodHandler[Any, Any]:
    kind, make = (
        ("unary_unary", grpc.unary_unary_rpc_method_handler),
        ("unary_stream", grpc.unary_stream_rpc_method_handler),
        ("stream_unary", grpc.stream_unary_rpc_method_handler),
        ("stream_stream", grpc.stream_stream_rpc_method_handler),
    )[2 * bool(handler.request_streaming) + bool(handler.response_streaming)]
    behavior: Behavior = getattr(handler, kind)
    timing = _timed_stream if inspect.isasyncgenfunction(behavior) else _timed_call
    timed = timing(behavior, method, metrics)
    return make(timed, handler.request_deserializer, handler.response_serializer)


def _timed_call(behavior: Behavior, method: str, metrics: Metrics) -> Behavior:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            return await behavior(request, context)
        except BaseException as raised:
            error = raised
            raise
        finally:
            metrics.finished(method, _code(context, error), time.perf_counter() - start)

    return call


def _timed_stream(behavior: Behavior, method: str, metrics: Metrics) -> Behavior:
    async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        start = time.perf_counter()
        error: BaseException | None = None
        try:
            async for reply in behavior(request, context):
                yield reply
        except BaseException as raised:
            error = raised
            raise
        finally:
            metrics.finished(method, _code(context, error), time.perf_counter() - start)

    return stream


def _code(context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None) -> grpc.StatusCode:
    """The status the call ends with: the one set on the context (abort sets it), else from `error`."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # some grpcio versions keep the raw value
        return _BY_VALUE.get(code, grpc.StatusCode.UNKNOWN)
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


_BY_VALUE: Final = {code.value[0]: code for code in grpc.StatusCode}
