"""The MQTT side of a server: the adapter between paho, the store and the sync core.

Every decision (who is a peer, when to ask for state, what to repair, when to
serve) is kvs/sync.py's; this module only carries them out: it publishes the
writes the store accepted, decodes what arrives and feeds it to the core, and
runs the core's actions in order, in slices that leave room for gRPC calls.

Threads: one. The event loop thread owns the store, this object and the paho
client, whose socket it drives (kvs.mqtt): paho's callbacks run on the loop.

Topics, under the cluster prefix C (docs/replication.md):

    C/batch        Batch      the mutations a server accepted, as it accepted them
    C/digest       Digest     a hash per key bucket: periodic, or a request after (re)connecting
    C/to/<id>      Transfer   state sent to one server; or a Digest request to that server
    C/peers/<id>   Presence   retained: up while the server runs, down once it has left
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from typing import Final, ParamSpec

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from kvs.actions import Action, Apply, Publish, SendState, Serve
from kvs.broker import Address, BrokerAuth, configure
from kvs.codec import Batch, Codec, Digest, Message, Presence, Transfer
from kvs.errors import BrokerRefused, BrokerUnreachable, CodecError
from kvs.mqtt import LoopDriver
from kvs.replicated import PAGE_KEYS, join_in_slices
from kvs.store import Fragment, Store, bucket_of
from kvs.sync import Sync

log = logging.getLogger("kvs.replication")

KEEPALIVE: Final = 10
"""Seconds; the broker declares a silent server gone (publishes its will) after 1.5 times this."""
SESSION_EXPIRY: Final = 300
"""Seconds the broker keeps queueing for a disconnected server before forgetting it."""
FLUSH_EVERY: Final = 0.002
"""Seconds between batches under load: at most 500 MQTT messages a second for writes."""
WRITE_WINDOW: Final = 2_000
"""Write batches paho may hold unacknowledged; beyond it a batch is dropped, its number skipped,
and the peers ask for the difference. Control messages are never held back (guarantee 6)."""
LOG_EVERY: Final = 10.0
"""Seconds between two log lines about dropped messages of one reason."""
UPTIME: Final = "$SYS/broker/uptime"

P = ParamSpec("P")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _guarded(callback: Callable[P, None]) -> Callable[P, None]:
    """Nothing escapes a paho callback: a bad message must not stop the reading of the next."""

    @functools.wraps(callback)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            callback(*args, **kwargs)
        except Exception:
            log.exception("error in MQTT callback %s (ignored)", callback.__name__)

    return wrapper


class DropLog:
    """One log line per reason per LOG_EVERY seconds, with the count of what was dropped meanwhile."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._last: dict[str, float] = {}

    def drop(self, reason: str, detail: str) -> None:
        now = time.monotonic()
        self._counts[reason] += 1
        if now - self._last.get(reason, -LOG_EVERY) >= LOG_EVERY:
            count, self._counts[reason] = self._counts[reason], 0
            log.warning("dropped %d message(s) in %.0f s (%s); latest: %s", count, LOG_EVERY, reason, detail)
            self._last[reason] = now


class Replicator:
    """Keeps one server's store in step with its peers through the broker."""

    def __init__(
        self,
        store: Store,
        cluster: str,
        node_id: str,
        broker: Address,
        key: bytes,
        *,
        sync_interval: float = 5.0,
        fresh: bool = False,
        auth: BrokerAuth | None = None,
    ) -> None:
        self.node_id, self.cluster, self.broker = node_id, cluster, broker
        self._auth = auth or BrokerAuth()
        self.caught_up = asyncio.Event()
        """Set once this server holds its peers' state (kvs.sync's joining rule)."""
        self._store = store
        self._codec = Codec(cluster, node_id, key, epoch=now_ms(), clock=now_ms)
        self._sync = Sync(node_id, sync_interval, fresh=fresh)
        self._loop = asyncio.get_running_loop()
        self._client = self._make_client()
        self._driver = LoopDriver(self._client)
        self._connack: asyncio.Future[ReasonCode | None] = self._loop.create_future()  # None: hung up
        self._outbox: list[Fragment] = []
        self._flush_at: float | None = None
        self._last_flush = 0.0
        self._writes: set[int] = set()  # mids of write batches paho holds unacknowledged
        self._work: deque[Action] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = time.monotonic()
        self._drops = DropLog()
        self._watchers: list[Callable[[str, Sequence[Fragment]], None]] = []

    @property
    def peers(self) -> frozenset[str]:
        """The peers known to be up."""
        return frozenset(name for name, peer in self._sync.peers.items() if peer.present)

    @property
    def connected(self) -> bool:
        return self._client.is_connected()

    @property
    def last_repair(self) -> float | None:
        """time.monotonic() of the last repair this server started, if any."""
        return self._sync.last_repair

    def watch(self, watcher: Callable[[str, Sequence[Fragment]], None]) -> Callable[[], None]:
        """Calls `watcher(origin, fragments)` after each batch from a peer is applied; returns an unwatch."""
        self._watchers.append(watcher)
        return lambda: self._watchers.remove(watcher)

    # Lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Connects to the broker, or raises BrokerUnreachable; catching up goes on in the background."""
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY
        try:
            await self._driver.connect(self.broker.host, self.broker.port, KEEPALIVE, properties)
            reason = await asyncio.wait_for(asyncio.shield(self._connack), 10)
        except TimeoutError:  # before OSError, its base class
            reason = None
        except OSError as error:
            raise BrokerUnreachable(f"{self.broker}: {error.strerror or error}") from None
        if reason is None or reason.is_failure:
            await self._driver.stop()
            if reason is not None:
                raise BrokerRefused(f"{self.broker}: {reason}")
            raise BrokerUnreachable(f"{self.broker}: no answer to CONNECT")
        self._tasks = [asyncio.create_task(job()) for job in (self._tick_forever, self._work_forever)]

    def publish(self, fragments: Sequence[Fragment]) -> None:
        """Queues accepted mutations for the next batch: at once after a quiet spell, and at most one
        batch per FLUSH_EVERY under load (fewer, larger messages: docs/performance.md)."""
        self._outbox.extend(fragments)
        if self._flush_at is not None:
            return
        self._flush_at = max(self._loop.time(), self._last_flush + FLUSH_EVERY)
        self._loop.call_at(self._flush_at, self._flush)

    async def stop(self) -> None:
        """Sends what is queued, says goodbye (a retained Presence down), disconnects."""
        for task in self._tasks:
            task.cancel()
        self._flush()
        goodbye = self._client.publish(self._topic("presence"), self._codec.presence(up=False), 1, True)
        for _ in range(200):  # up to 2 s for the broker to acknowledge everything
            if not self._client.is_connected() or goodbye.is_published():
                break
            await asyncio.sleep(0.01)
        await self._driver.stop()

    # Publishing ----------------------------------------------------------------------

    def _topic(self, route: str) -> str:
        if route in ("batch", "digest"):
            return f"{self.cluster}/{route}"
        if route == "presence":
            return f"{self.cluster}/peers/{self.node_id}"
        return f"{self.cluster}/to/{route}"

    def _flush(self) -> None:
        self._flush_at = None
        self._last_flush = self._loop.time()
        fragments, self._outbox = self._outbox, []
        for payload in self._codec.batches(fragments, self._sync.next_batch_seq):
            if len(self._writes) >= WRITE_WINDOW:
                self._drops.drop("write window full", "peers will ask for the difference")
                continue  # its number is skipped: the peers notice and ask (kvs.sync)
            self._writes.add(self._client.publish(self._topic("batch"), payload, qos=1).mid)

    def _publish(self, action: Publish) -> None:
        body = action.body
        if isinstance(body, Digest):
            payload = self._codec.digest(body.buckets, body.request, body.batch_seq)
        elif isinstance(body, Presence):
            payload = self._codec.presence(body.up)
        else:
            raise TypeError(f"the core does not publish {type(body).__name__}")
        self._client.publish(self._topic(action.route), payload, qos=1, retain=action.retain)

    # The core's actions, in order, in slices -------------------------------------------

    def _run(self, actions: Sequence[Action]) -> None:
        self._work.extend(actions)
        self._wake.set()

    async def _work_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._work:
                await self._do(self._work.popleft())

    async def _do(self, action: Action) -> None:
        if isinstance(action, Publish):
            self._publish(action)
        elif isinstance(action, Apply):
            await join_in_slices(self._store, action.fragments)
            if action.batch:
                for watcher in self._watchers:
                    watcher(action.origin, action.fragments)
        elif isinstance(action, SendState):
            await self._send_state(action)
        elif isinstance(action, Serve):
            log.info(
                "caught up: %d keys, %.2f s after start",
                self._store.key_count(),
                time.monotonic() - self._started,
            )
            self.caught_up.set()
        elif action.drop:
            self._drops.drop(action.drop, action.text)
        else:
            log.info("%s", action.text)

    async def _send_state(self, action: SendState) -> None:
        """A transfer, read a page at a time (fresh queries: writes go on in between)."""
        topic = self._topic(action.peer)
        for payload in self._codec.transfer(self._pages(action.buckets), action.send_back, action.answers):
            self._client.publish(topic, payload, qos=1)
            await asyncio.sleep(0)
        self._run(self._sync.sent(action.peer, time.monotonic(), self._store.digest()))

    def _pages(self, buckets: frozenset[int] | None) -> Iterator[Fragment]:
        after = ""
        while buckets != frozenset() and (page := self._store.export_page(after, PAGE_KEYS)):
            yield from (f for f in page if buckets is None or bucket_of(f.key) in buckets)
            after = page[-1].key

    # Time -------------------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        interval = self._sync.interval
        next_tick = time.monotonic() + interval * random.uniform(0.8, 1.2)
        while True:
            # Poll often while joining (serving may begin once the broker has settled);
            # tick every interval, with jitter so that servers do not publish in lockstep.
            await asyncio.sleep(0.05 if not self._sync.serving else max(0.0, next_tick - time.monotonic()))
            now = time.monotonic()
            self._run(self._sync.poll(now))
            if now >= next_tick:
                next_tick = now + interval * random.uniform(0.8, 1.2)
                self._run(self._sync.tick(now, self._store.digest()))

    # paho's callbacks (on the event loop, see kvs.mqtt) -----------------------------------

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"kvs-{self.cluster}-{self.node_id}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        client.will_set(self._topic("presence"), self._codec.presence(up=False), qos=1, retain=True)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)  # no limit: writes are bounded by WRITE_WINDOW instead
        configure(client, self._auth)
        client.on_connect = _guarded(self._paho_connect)
        client.on_disconnect = _guarded(self._paho_disconnect)
        client.on_subscribe = _guarded(self._paho_subscribe)
        client.on_message = _guarded(self._paho_message)
        client.on_publish = _guarded(self._paho_publish)
        return client

    def _paho_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not self._connack.done():
            self._connack.set_result(reason)
            if reason.is_failure:
                return  # start() says so
        if reason.is_failure:
            log.error("the broker at %s refused the connection: %s", self.broker, reason)
            return
        log.info("broker connected (%s%s)", self.broker, ", session resumed" if flags.session_present else "")
        self._run(self._sync.connected_to_broker(time.monotonic()))
        prefix = self.cluster
        client.subscribe(
            [
                (f"{prefix}/batch", SubscribeOptions(qos=1, noLocal=True)),
                (f"{prefix}/digest", SubscribeOptions(qos=1, noLocal=True)),
                (self._topic(self.node_id), SubscribeOptions(qos=1)),
                (f"{prefix}/peers/+", SubscribeOptions(qos=1)),
                (UPTIME, SubscribeOptions(qos=0)),
            ]
        )

    def _paho_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not self._connack.done():
            self._connack.set_result(None)  # hung up before answering (a TLS port?): start() says so
        first = self._connack.result()
        self._run(self._sync.disconnected(time.monotonic()))
        if not self._driver.stopping and first is not None and not first.is_failure:
            log.warning("broker connection lost (%s); reconnecting", reason)
            self._driver.connection_lost()

    def _paho_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if any(reason.is_failure for reason in reasons[:4]):
            log.error("the broker refused a subscription: %s", reasons)
        # The broker sends the retained presences after the SUBACK, so they all
        # arrive before our own presence comes back to us.
        self._run(self._sync.subscribed(time.monotonic()))

    def _paho_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._writes.discard(mid)

    def _paho_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        topic, now = message.topic, time.monotonic()
        if topic == UPTIME:
            seconds = bytes(message.payload).split(b" ")[0]
            if seconds.isdigit():
                self._run(self._sync.broker_uptime(int(seconds), now))
            return
        try:
            decoded = self._check(topic, self._codec.decode(bytes(message.payload)))
        except CodecError as error:
            self._drops.drop(str(error).split(" (")[0], f"on {topic}: {error}")
            if topic == self._topic("presence"):
                self._run(self._sync.presence_overwritten(now))
            return
        if decoded.origin == self.node_id:
            # A retained one is from before a reconnection, or a previous run.
            if not message.retain and decoded.body == Presence(up=True):
                self._run(self._sync.own_presence(now, self._store.digest()))
            return
        self._run(self._sync.message(decoded, now, self._store.digest()))

    def _check(self, topic: str, message: Message) -> Message:
        """The message, if it is the kind its topic carries and comes from where it says."""
        prefix = self.cluster
        expected: tuple[type, ...]
        if topic == f"{prefix}/batch":
            expected = (Batch,)
        elif topic == f"{prefix}/digest":
            expected = (Digest,)
        elif topic == self._topic(self.node_id):
            expected = (Transfer, Digest)
        else:
            expected = (Presence,)
            if topic != f"{prefix}/peers/{message.origin}":
                raise CodecError(f"presence of {message.origin!r} on another server's topic")
        if not isinstance(message.body, expected):
            raise CodecError(f"a {type(message.body).__name__} on {topic}")
        if message.origin == self.node_id and not isinstance(message.body, Presence):
            raise CodecError("claims to come from this server")
        return message
