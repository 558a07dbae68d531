"""`scripts/admin.sh web`: a live web page of a cluster, served by the admin tool.

The tool is a client of the servers, as the other admin commands are: every
STATUS_EVERY seconds it asks each server it follows for its health and
Admin.Status (all at once, so digests are compared at one moment), it keeps an
Admin.Watch open on each, and when replicas disagree for DIFF_AFTER seconds it
merges their Admin.Dump streams to name the keys that differ. What changes is
pushed to every open page as Server-Sent Events; the page never polls.

One asyncio loop owns everything here (the gRPC aio channels, the state, the
HTTP server). Memory is bounded: at most MAX_SERVERS servers, LINES_KEPT batch
lines each, EVENTS_KEPT cluster events, TIMED_KEPT timed writes, a diff of
DIFF_LISTED keys, and CLIENT_QUEUE messages per page (a page further behind is
disconnected, and its EventSource reconnects to a fresh snapshot).

Replication lag is measured by timing writes the tool makes itself: a Put through
the page's form (or, with --probe SECONDS, a probe write to the key PROBE_KEY)
is timed from the moment the tool sends it to the moment each other server's
Watch reports the batch that carries its key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvs._gen import kvs_pb2, kvs_pb2_grpc
from kvs._gen import replication_pb2 as pb
from kvs._gen import replication_pb2_grpc as pb_grpc
from kvs.admin.parts import joined_stream
from kvs.admin.view import (
    ADDRESS,
    Agreement,
    Agreements,
    Diff,
    Thinner,
    cut,
    differing,
    fingerprint,
)
from kvs.client.api import explain
from kvs.net.channel import open_aio_channel
from kvs.net.tls import ClientTls

STATUS_EVERY = 0.5
"""Seconds between two rounds of Health.Check and Admin.Status."""
CALL_TIMEOUT = 2.0
MAX_SERVERS = 64
FORGET_AFTER = 120.0
"""A server found as a peer is forgotten after this many seconds unreachable and listed by no one."""
LINES_KEPT = 30
EVENTS_KEPT = 60
TIMED_KEPT = 1000
TIMED_FOR = 10.0
"""Seconds a timed write waits to be seen on the other servers."""
DIFF_AFTER = 2.0
"""Seconds replicas must have disagreed before their dumps are compared (a write in flight is not news)."""
DIFF_LISTED = 50
DIFF_MAX_KEYS = 100_000
"""Above this many keys on a server, the page does not compare dumps (admin.sh compare does)."""
CLIENT_QUEUE = 1000
KEEPALIVE = 15.0
PROBE_KEY = "kvs-web-probe"
STATIC = ("index.html", "app.js", "style.css")
RECONNECT = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
"""A server that comes back is asked again within a second (gRPC's own backoff grows to minutes)."""
TYPES = {"html": "text/html", "js": "text/javascript", "css": "text/css"}


def now_ms(t: float) -> int:
    return round(t * 1000)


@dataclass
class Tracked:
    """A server the tool follows, by the address it reaches it at."""

    address: str
    given: bool  # named on the command line: never forgotten
    channel: grpc.aio.Channel
    found_at: float
    id: str | None = None
    health: str = "not asked yet"
    error: str | None = None
    reply: pb.StatusReply | None = None
    answered_at: float | None = None
    listed_at: float | None = None
    thinner: Thinner = field(default_factory=Thinner)
    lines: deque[dict[str, object]] = field(default_factory=lambda: deque(maxlen=LINES_KEPT))
    batches: int = 0
    batch_keys: int = 0
    lag_ms: float | None = None
    lag_at: float | None = None
    joining_since: float | None = None
    caught_up_after: float | None = None
    watch: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.id or self.address

    @property
    def serving(self) -> bool:
        return self.health == "SERVING"


def broker_of(reply: pb.StatusReply) -> str | None:
    """The broker a server uses, from servers whose Status says it (older ones do not)."""
    value = getattr(reply, "broker", None)
    return str(value) if value else None


class Monitor:
    """Follows the servers and tells every subscriber (open page) what changes."""

    def __init__(
        self,
        addresses: Sequence[str],
        tls: ClientTls | None = None,
        probe: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._addresses = list(addresses)
        self._tls = tls
        self._probe = probe
        self._clock = clock
        self.servers: dict[str, Tracked] = {}
        self.unaddressed: list[str] = []  # peers whose ids are not addresses
        self.events: deque[dict[str, object]] = deque(maxlen=EVENTS_KEPT)
        self.diff: dict[str, object] | None = None
        self._agreements = Agreements()
        self._agree: dict[str, Agreement] = {}
        self._reported_disagreement = False
        self._timed: dict[str, float] = {}  # key -> when the tool sent a write of it
        self._subscribers: set[asyncio.Queue[tuple[str, str] | None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_state = ""
        self._probe_turn = 0

    # ----- life cycle

    async def start(self) -> None:
        for address in self._addresses:
            self._track(address, given=True)
        self._tasks = [
            asyncio.create_task(self._rounds()),
            asyncio.create_task(self._flushes()),
            asyncio.create_task(self._diffs()),
        ]
        if self._probe > 0:
            self._tasks.append(asyncio.create_task(self._probes()))

    async def stop(self) -> None:
        tasks = [*self._tasks, *(t.watch for t in self.servers.values() if t.watch)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for tracked in self.servers.values():
            await tracked.channel.close(None)
        for queue in self._subscribers:
            queue.put_nowait(None)

    def _track(self, address: str, given: bool = False) -> Tracked | None:
        if address in self.servers:
            return self.servers[address]
        if len(self.servers) >= MAX_SERVERS:
            return None
        tracked = Tracked(
            address, given, open_aio_channel(address, self._tls, options=RECONNECT), self._clock()
        )
        self.servers[address] = tracked
        tracked.watch = asyncio.create_task(self._watch(tracked))
        if not given:
            self.event(f"{address} found: a peer of the servers followed")
        return tracked

    async def _forget(self, tracked: Tracked) -> None:
        del self.servers[tracked.address]
        if tracked.watch:
            tracked.watch.cancel()
        await tracked.channel.close(None)

    # ----- what pages receive

    def subscribe(self) -> asyncio.Queue[tuple[str, str] | None]:
        queue: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue(CLIENT_QUEUE)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[tuple[str, str] | None]) -> None:
        self._subscribers.discard(queue)

    def publish(self, kind: str, data: object) -> None:
        text = json.dumps(data, ensure_ascii=False)
        for queue in list(self._subscribers):
            try:
                queue.put_nowait((kind, text))
            except asyncio.QueueFull:  # a page that does not read: it reconnects to a snapshot
                self._subscribers.discard(queue)
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(None)

    def event(self, text: str) -> None:
        record = {"at": now_ms(self._clock()), "text": text}
        self.events.append(record)
        self.publish("event", record)

    def hello(self) -> dict[str, object]:
        """Everything a page that just opened needs."""
        return {
            "state": self.state(),
            "lines": {t.address: list(t.lines) for t in self.servers.values()},
            "events": list(self.events),
        }

    def state(self) -> dict[str, object]:
        agreements = self._agree
        cards = []
        for t in sorted(self.servers.values(), key=lambda t: t.name):
            reply = t.reply if t.answered_at is not None else None
            card: dict[str, object] = {
                "address": t.address,
                "id": t.name,
                "given": t.given,
                "health": t.health,
                "serving": t.serving,
                "answered": reply is not None and t.error is None,
                "error": t.error,
                "batches": t.batches,
                "batch_keys": t.batch_keys,
                "lag_ms": None if t.lag_ms is None else round(t.lag_ms, 1),
                "lag_at": None if t.lag_at is None else now_ms(t.lag_at),
                "joining_since": None if t.joining_since is None else now_ms(t.joining_since),
                "caught_up_after": t.caught_up_after,
                "answered_at": None if t.answered_at is None else now_ms(t.answered_at),
            }
            if reply is not None:
                card |= {
                    "cluster": reply.cluster,
                    "keys": reply.keys,
                    "digest": fingerprint(reply.digest),
                    "caught_up": reply.caught_up,
                    "connected": reply.connected,
                    "broker": broker_of(reply),
                    "peers": list(reply.peers),
                    "last_repair_ms": reply.last_repair_ms or None,
                }
            agreement = agreements.get(t.address)
            if agreement is not None:
                card["agrees"] = {
                    "same": [self._name(a) for a in agreement.same],
                    "differs": [self._name(a) for a in agreement.differs],
                    "since": None if agreement.since is None else now_ms(agreement.since),
                }
            cards.append(card)
        since = self._agreements.disagreeing_since()
        return {
            "servers": cards,
            "unaddressed": self.unaddressed,
            "disagree_since": None if since is None else now_ms(since),
            "diff": self.diff,
            "probe": self._probe,
        }

    def _name(self, address: str) -> str:
        t = self.servers.get(address)
        return address if t is None else t.name

    def _digest(self, t: Tracked) -> str | None:
        if t.reply is None or t.error is not None:
            return None
        return fingerprint(t.reply.digest)

    def _push_state(self) -> None:
        state = self.state()
        text = json.dumps(state, ensure_ascii=False, sort_keys=True)
        if text != self._last_state:
            self._last_state = text
            self.publish("state", {**state, "now": now_ms(self._clock())})

    # ----- status rounds

    async def _rounds(self) -> None:
        while True:
            started = time.monotonic()
            servers = list(self.servers.values())
            await asyncio.gather(*(self._ask(t) for t in servers))
            await self._discover()
            digests = {t.address: self._digest(t) for t in self.servers.values()}
            self._agree = self._agreements.update(digests, self._clock())
            self._notice_disagreement()
            self._push_state()
            await asyncio.sleep(max(0.0, STATUS_EVERY - (time.monotonic() - started)))

    async def _ask(self, t: Tracked) -> None:
        try:
            health = await health_pb2_grpc.HealthStub(t.channel).Check(
                health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT
            )
            reply = await pb_grpc.AdminStub(t.channel).Status(pb.StatusRequest(), timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            why = self._why(error, t.address)
            if t.error is None:
                verb = "stopped answering" if t.answered_at is not None else "does not answer"
                self.event(f"{t.name} {verb}: {why}")
            t.health, t.error = "UNREACHABLE", why
            return
        now = self._clock()
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)
        if t.error is not None or t.answered_at is None:
            where = "" if reply.id == t.address else f" at {t.address}"
            self.event(f"{reply.id} answers{where}: {status}, {reply.keys} keys")
        elif status != t.health:
            self.event(f"{reply.id}: {t.health} → {status}")
        previous = t.reply
        if previous is not None and t.error is None:
            if previous.connected and not reply.connected:
                self.event(f"{reply.id} lost its broker connection")
            if not previous.connected and reply.connected:
                self.event(f"{reply.id} reconnected to its broker")
            if reply.last_repair_ms and reply.last_repair_ms != previous.last_repair_ms:
                self.event(f"{reply.id} repaired buckets with a peer ({reply.keys} keys now)")
        if not reply.caught_up and t.joining_since is None:
            t.joining_since, t.caught_up_after = now, None
            self.event(f"{reply.id} is catching up with its peers ({reply.keys} keys so far)")
        if reply.caught_up and t.joining_since is not None:
            t.caught_up_after = round(now - t.joining_since, 1)
            t.joining_since = None
            self.event(f"{reply.id} caught up: {reply.keys} keys (within {t.caught_up_after} s)")
        t.id, t.reply, t.health, t.error, t.answered_at = reply.id, reply, status, None, now

    async def _discover(self) -> None:
        now = self._clock()
        ids = {t.id: t for t in self.servers.values() if t.id}
        unaddressed = set()
        for t in list(self.servers.values()):
            if t.reply is None or t.error is not None:
                continue
            for peer in t.reply.peers:
                if peer in ids:
                    ids[peer].listed_at = now
                elif ADDRESS.fullmatch(peer):
                    found = self._track(peer)
                    if found is not None:
                        found.listed_at = now
                else:
                    unaddressed.add(peer)
        self.unaddressed = sorted(unaddressed)[:MAX_SERVERS]
        for t in list(self.servers.values()):
            twin = ids.get(t.id) if t.id else None
            if twin is not None and twin is not t and not t.given:  # the same server, found twice
                await self._forget(t)
                continue
            seen = max(t.answered_at or t.found_at, t.listed_at or 0.0) if t.error else now
            if not t.given and now - seen > FORGET_AFTER:
                self.event(f"{t.name} forgotten: unreachable and no peer lists it for {FORGET_AFTER:.0f} s")
                await self._forget(t)

    def _notice_disagreement(self) -> None:
        since = self._agreements.disagreeing_since()
        if since is not None and self._clock() - since >= DIFF_AFTER and not self._reported_disagreement:
            self._reported_disagreement = True
            self.event("replicas disagree: their digests have differed for over 2 s")
        if since is None:
            if self._reported_disagreement:
                self.event("all replicas that answer agree again")
            self._reported_disagreement = False
            self.diff = None

    # ----- batches applied (Admin.Watch)

    async def _watch(self, t: Tracked) -> None:
        while True:
            try:
                call = pb_grpc.AdminStub(t.channel).Watch(pb.WatchRequest())
                async for applied in call:
                    self.applied(t, applied.origin, list(applied.keys))
            except grpc.RpcError as error:
                if getattr(error, "code", lambda: None)() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    self.event(f"{t.name}: the tool fell behind its batches; watching again")
            await asyncio.sleep(1.0)

    def applied(self, t: Tracked, origin: str, keys: Sequence[str]) -> None:
        now = self._clock()
        t.batches += 1
        t.batch_keys += len(keys)
        lag_ms = None
        if self._timed:
            for key in keys:
                sent = self._timed.get(key)
                if sent is not None:
                    lag_ms = (now - sent) * 1000
                    t.lag_ms, t.lag_at = lag_ms, now
        line = t.thinner.add(origin, keys, now, lag_ms)
        if line is not None:
            self._show(t, line.record())

    def _show(self, t: Tracked, record: dict[str, object]) -> None:
        t.lines.append(record)
        self.publish("batch", {"address": t.address, "line": record})

    async def _flushes(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            now = self._clock()
            for t in list(self.servers.values()):
                line = t.thinner.flush(now)
                if line is not None:
                    self._show(t, line.record())
            for key, sent in list(self._timed.items()):
                if now - sent > TIMED_FOR:
                    del self._timed[key]

    # ----- the keys that differ (Admin.Dump)

    async def _diffs(self) -> None:
        pause = 1.0
        while True:
            await asyncio.sleep(pause)
            since = self._agreements.disagreeing_since()
            if since is None or self._clock() - since < DIFF_AFTER:
                pause = 1.0
                continue
            started = time.monotonic()
            await self.compare()
            pause = max(2.0, 5 * (time.monotonic() - started))

    async def compare(self) -> None:
        """Sets `diff` from the dumps of every server that answers."""
        answering = sorted(
            (t for t in self.servers.values() if t.reply is not None and t.error is None),
            key=lambda t: t.name,
        )
        if len(answering) < 2:
            return
        at = now_ms(self._clock())
        largest = max(t.reply.keys for t in answering if t.reply is not None)
        if largest > DIFF_MAX_KEYS:
            self.diff = {"at": at, "too_many": largest, "total": None, "keys": [], "servers": []}
            return
        calls = {t.name: pb_grpc.AdminStub(t.channel).Dump(pb.DumpRequest(), timeout=60) for t in answering}
        try:
            diff: Diff = await differing({n: joined_stream(c) for n, c in calls.items()}, DIFF_LISTED)
        except grpc.RpcError as error:
            self.diff = {"at": at, "error": self._why(error, "a server")}
            return
        finally:
            for call in calls.values():
                call.cancel()
        if self._agreements.disagreeing_since() is not None:  # they may have agreed meanwhile
            self.diff = {"at": at, **diff.record()}
        self._push_state()

    # ----- writes through the page

    async def kv(self, op: str, address: str, key: str, value: str) -> dict[str, object]:
        """A Put, Get or Delete through the server at `address` (one the tool follows)."""
        t = self.servers.get(address)
        if t is None:
            return {"ok": False, "text": f"{address} is not a server this page follows"}
        stub = kvs_pb2_grpc.KeyValueStoreStub(t.channel)
        try:
            if op == "put":
                self._time(key)
                put = await stub.Put(kvs_pb2.KeyValueRequest(key=key, val=value), timeout=10)
                text = f"put {key!r} = {cut(value)!r} on {t.name}: version {put.ver}"
                if put.old_ver:
                    text += f" (it replaced {cut(put.old_val)!r} @ {put.old_ver})"
            elif op == "get":
                got = await stub.Get(kvs_pb2.KeyRequest(key=key), timeout=10)
                text = (
                    f"{t.name} has {key!r} = {cut(got.val)!r} @ {got.ver}"
                    if got.ver
                    else f"{t.name}: no key {key!r}"
                )
            elif op == "delete":
                self._time(key)
                gone = await stub.Del(kvs_pb2.KeyRequest(key=key), timeout=10)
                text = (
                    f"deleted {key!r} on {t.name} (it held {cut(gone.val)!r} @ {gone.ver})"
                    if gone.ver
                    else f"{t.name}: no key {key!r} to delete"
                )
            else:
                return {"ok": False, "text": f"unknown operation {op!r}"}
        except grpc.RpcError as error:
            return {"ok": False, "text": self._why(error, address)}
        return {"ok": True, "text": text}

    def _why(self, error: grpc.RpcError, address: str) -> str:
        """One line for a failed call (grpc.aio's errors are not grpc.Call, but answer the same)."""
        code = getattr(error, "code", lambda: grpc.StatusCode.UNKNOWN)()
        details = getattr(error, "details", lambda: "")() or str(error)
        return explain(code, details, address, self._tls)

    def _time(self, key: str) -> None:
        if len(self._timed) >= TIMED_KEPT:
            self._timed.pop(next(iter(self._timed)))
        self._timed[key] = self._clock()

    async def _probes(self) -> None:
        while True:
            await asyncio.sleep(self._probe)
            serving = sorted((t for t in self.servers.values() if t.serving), key=lambda t: t.name)
            if serving:
                self._probe_turn += 1
                target = serving[self._probe_turn % len(serving)]
                await self.kv("put", target.address, PROBE_KEY, str(now_ms(self._clock())))


# ----- HTTP


def allowed_hosts(listen: str) -> set[str] | None:
    """The Host headers a request may carry (None: any): a page reached through another
    name (DNS rebinding) must not read the cluster or write to it."""
    if listen in ("0.0.0.0", "::", ""):
        return None
    return {"localhost", "127.0.0.1", "::1", listen.strip("[]")}  # as yarl gives it: no brackets


def make_app(monitor: Monitor, listen: str = "127.0.0.1") -> web.Application:
    files = {name: (resources.files("kvs.admin") / "static" / name).read_bytes() for name in STATIC}
    hosts = allowed_hosts(listen)

    @web.middleware
    async def only_our_names(request: web.Request, handler: Any) -> web.StreamResponse:
        if hosts is not None and (request.url.host or "") not in hosts:
            raise web.HTTPForbidden(text="this page answers only to the address it listens on")
        response: web.StreamResponse = await handler(request)
        return response

    async def page(request: web.Request) -> web.Response:
        return static(request, "index.html")

    def static(request: web.Request, name: str) -> web.Response:
        if name not in files:
            raise web.HTTPNotFound()
        kind = TYPES[name.rsplit(".", 1)[1]]
        return web.Response(body=files[name], content_type=kind, charset="utf-8",
                            headers={"Cache-Control": "no-cache"})  # fmt: skip

    async def asset(request: web.Request) -> web.Response:
        return static(request, request.match_info["name"])

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        queue = monitor.subscribe()
        try:
            hello = json.dumps({**monitor.hello(), "now": now_ms(time.time())}, ensure_ascii=False)
            await response.write(f"retry: 1000\nevent: hello\ndata: {hello}\n\n".encode())
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except TimeoutError:
                    await response.write(b": still here\n\n")
                    continue
                if item is None:
                    break
                kind, data = item
                await response.write(f"event: {kind}\ndata: {data}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            monitor.unsubscribe(queue)
        return response

    async def kv(request: web.Request) -> web.Response:
        # JSON only: a form on another site cannot send it without the browser asking first.
        if request.content_type != "application/json":
            raise web.HTTPUnsupportedMediaType(text="send JSON")
        try:
            body = await request.json()
            op, address, key = str(body["op"]), str(body["server"]), str(body["key"])
            value = str(body.get("value", ""))
        except (ValueError, KeyError, TypeError):
            raise web.HTTPBadRequest(text="expected {op, server, key, value}") from None
        return web.json_response(await monitor.kv(op, address, key, value))

    app = web.Application(middlewares=[only_our_names], client_max_size=4 * 1024 * 1024)
    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", asset)
    app.router.add_get("/events", events)
    app.router.add_post("/api/kv", kv)
    return app


async def run(addresses: Sequence[str], tls: ClientTls | None, port: int, listen: str, probe: float) -> int:
    monitor = Monitor(addresses, tls, probe)
    await monitor.start()
    runner = web.AppRunner(make_app(monitor, listen), handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, listen, port)
        await site.start()
    except OSError as error:
        print(f"admin.sh: error: cannot listen on {listen}:{port}: {error.strerror}", file=sys.stderr)
        await monitor.stop()
        await runner.cleanup()
        return 1
    host = f"[{listen}]" if ":" in listen else listen
    print(f"admin.sh: the live view of {', '.join(addresses)} is at http://{host}:{port}/", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await monitor.stop()
    await runner.cleanup()
    return 0


def serve(addresses: Sequence[str], tls: ClientTls | None, port: int, listen: str, probe: float = 0.0) -> int:
    """Serves the page until SIGINT or SIGTERM."""
    return asyncio.run(run(addresses, tls, port, listen, probe))
