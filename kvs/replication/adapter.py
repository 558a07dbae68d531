"""The MQTT side of a server: the adapter between the broker, the store and the sync core.

Every decision is kvs/replication/sync.py's; this module publishes the writes the store
accepted, feeds what arrives to the core, and runs the core's actions in order,
in slices that leave room for gRPC calls. Threads: one; the event loop owns the
store, this object and the MQTT session (kvs/mqtt/session.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

import paho.mqtt.client as mqtt

from kvs.clock import now_ms
from kvs.errors import CodecError
from kvs.metrics import NO_METRICS, ReplicationMetrics
from kvs.mqtt.broker import Address, BrokerAuth
from kvs.mqtt.session import Session
from kvs.replication.actions import Action, Apply, Publish, SendState, Serve
from kvs.replication.codec import Batch, Codec, Presence, chunks
from kvs.replication.droplog import DropLog
from kvs.replication.sending import Kept, state_pages
from kvs.replication.sync import Sync
from kvs.replication.topics import UPTIME, Topics, recipient, uptime
from kvs.service.replicated import join_in_slices
from kvs.storage.store import Fragment, Store

log = logging.getLogger(__name__)

FLUSH_EVERY: Final = 0.002
"""Seconds between batches under load: at most 500 MQTT messages a second for writes."""
WRITE_WINDOW, AWAY_WINDOW = 1_000, 100
"""Write batches paho may hold unacknowledged (connected, or while the broker is away); past it a
batch is dropped, its number skipped, and the peers ask for it again (kvs/replication/sending.py)."""
BACKLOG: Final = 2_000
"""Fragments received and not yet joined, at most: past it, reading from the broker waits."""


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
        metrics: ReplicationMetrics = NO_METRICS,
    ) -> None:
        self.node_id, self.cluster, self.broker = node_id, cluster, broker
        self.caught_up = asyncio.Event()
        """Set once this server holds its peers' state (kvs.replication.sync's joining rule)."""
        self._store, self._codec = store, Codec(cluster, node_id, key, epoch=now_ms(), clock=now_ms)
        self._sync = Sync(node_id, sync_interval, epoch=self._codec.epoch, fresh=fresh)
        self._topics = Topics(cluster, node_id)
        self._loop = asyncio.get_running_loop()
        goodbye = (self._topics.route("presence"), self._codec.presence(up=False))
        self._session = Session(
            f"kvs-{cluster}-{node_id}",
            broker,
            auth or BrokerAuth(),
            will=goodbye,
            subscriptions=self._topics.subscriptions(),
            events=self,
        )
        self._outbox: list[Fragment] = []
        self._flush_at: float | None = None  # when the next batch goes out (loop time)
        self._last_flush = 0.0
        self._kept = Kept()
        self._work: deque[Action] = deque()  # the core's actions, done in order by _work_forever
        self._backlog = 0  # fragments in self._work
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = time.monotonic()
        self._metrics, self._drops = metrics, DropLog(metrics)
        self._watchers: list[Callable[[str, Sequence[Fragment]], None]] = []

    @property
    def peers(self) -> frozenset[str]:  # those known to be up
        return frozenset(self._sync.peers.present())

    @property
    def connected(self) -> bool:
        return self._session.connected

    @property
    def last_repair(self) -> float | None:
        """When (time.time()) this server last took part in a repair, if ever."""
        at = self._sync.last_repair
        return None if at is None else time.time() - (time.monotonic() - at)

    def watch(self, watcher: Callable[[str, Sequence[Fragment]], None]) -> Callable[[], None]:
        """Calls `watcher(origin, fragments)` after each batch from a peer is applied; returns an unwatch."""
        self._watchers.append(watcher)
        return lambda: self._watchers.remove(watcher)

    async def start(self) -> None:
        """Connects to the broker (or raises BrokerUnreachable); catching up goes on in the background."""
        await self._session.connect()
        self._tasks = [asyncio.create_task(job()) for job in (self._tick_forever, self._work_forever)]

    def publish(self, fragments: Sequence[Fragment]) -> None:
        """Queues accepted mutations for the next batch: at once after a quiet spell, and at most one
        batch per FLUSH_EVERY under load (fewer, larger messages: docs/performance.md)."""
        self._outbox.extend(fragments)
        if self._flush_at is not None:
            return
        self._flush_at = max(self._loop.time(), self._last_flush + FLUSH_EVERY)
        self._loop.call_at(self._flush_at, self._flush)

    async def stop(self) -> None:  # sends what is queued, says goodbye (a Presence down), disconnects
        for task in self._tasks:
            task.cancel()
        self._flush()
        await self._session.stop((self._topics.route("presence"), self._codec.presence(up=False)))

    def _flush(self) -> None:
        self._flush_at = None
        self._last_flush = self._loop.time()
        fragments, self._outbox = self._outbox, []
        window = WRITE_WINDOW if self._session.connected else AWAY_WINDOW
        for chunk in chunks(fragments):
            seq = self._sync.next_batch_seq()
            self._kept.add(seq, chunk)
            if self._session.writes_in_flight >= window:
                self._drops.drop("queue_full", "the write window is full: the peers will ask for them")
                continue  # its number is skipped: the peers notice and ask (kvs.replication.sync)
            payload = self._codec.batch(chunk, seq)
            self._session.publish(self._topics.route("batch"), payload, write=True)
            self._metrics.batch_sent(len(payload))

    def _run(self, actions: Sequence[Action]) -> None:
        self._work.extend(actions)
        self._backlog += sum(len(a.fragments) for a in actions if isinstance(a, Apply))
        self._session.hold(self._backlog > BACKLOG)  # bounded memory for what arrives
        self._wake.set()

    async def _work_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._work:
                action = self._work.popleft()
                try:
                    await self._do(action)
                except Exception:  # one failed action must not stop all replication
                    log.exception("a replication step failed (ignored)")
                if isinstance(action, Apply):
                    self._backlog -= len(action.fragments)
                    self._session.hold(self._backlog > BACKLOG)

    async def _do(self, action: Action) -> None:
        if isinstance(action, Publish):
            payload = self._codec.encode(action.body, recipient(action.route))
            self._session.publish(self._topics.route(action.route), payload, retain=action.retain)
        elif isinstance(action, Apply):
            await join_in_slices(self._store, action.fragments)
            if action.sent_ms:
                self._metrics.lag(max(0, now_ms() - action.sent_ms) / 1000)
            if action.batch:
                for watcher in self._watchers:
                    watcher(action.origin, action.fragments)
        elif isinstance(action, SendState):
            if action.send_back or action.since:  # a repair this server takes part in
                self._metrics.repair_started()
                self._metrics.buckets_repaired(len(action.send_back))
            await self._send_state(action)
        elif isinstance(action, Serve):
            took = time.monotonic() - self._started
            log.info("caught up: %d keys, %.2f s after start", self._store.key_count(), took)
            self._metrics.caught_up(took)
            self.caught_up.set()
        elif action.drop:
            self._drops.drop(action.drop, action.text)
        else:
            log.info("%s", action.text)

    async def _send_state(self, action: SendState) -> None:
        """A transfer, read a page at a time (fresh queries: writes go on in between)."""
        topic = self._topics.route(action.peer)
        kept = self._kept.since(action.since)
        fragments = kept if kept is not None else state_pages(self._store, action.buckets)
        try:
            for payload in self._codec.transfer(fragments, action.send_back, action.answers, to=action.peer):
                self._session.publish(topic, payload)
                await asyncio.sleep(0)
        finally:  # the core lets one transfer to a peer be in flight: say it ended, however
            self._run(self._sync.sent(action.peer, time.monotonic(), self._store.digest()))

    async def _tick_forever(self) -> None:
        interval = self._sync.interval
        next_tick = time.monotonic() + interval * random.uniform(0.8, 1.2)
        while True:
            # Poll often while joining; tick every interval, with jitter against lockstep.
            await asyncio.sleep(0.05 if not self._sync.serving else max(0.0, next_tick - time.monotonic()))
            now = time.monotonic()
            self._run(self._sync.poll(now))
            if now >= next_tick:
                next_tick = now + interval * random.uniform(0.8, 1.2)
                ours = self._store.digest()
                self._run(self._sync.tick(now, ours))
                self._drops.flush()
                self._metrics.peers_up(len(self.peers))
                self._metrics.peers_differing(sum(p.differs(ours) for p in self._sync.peers.values()))

    # The session's events (kvs.mqtt.session), on the event loop -------------------------------

    def on_connected(self) -> None:
        self._run(self._sync.connected_to_broker(time.monotonic()))

    def on_lost(self) -> None:
        self._metrics.broker(str(self._session.broker), False)
        self._run(self._sync.disconnected(time.monotonic()))

    def on_subscribed(self) -> None:
        self._metrics.broker(str(self._session.broker), True)
        # The retained presences follow the SUBACK: all arrive before our own comes back.
        self._run(self._sync.subscribed(time.monotonic()))

    def on_message(self, message: mqtt.MQTTMessage) -> None:
        topic, now = message.topic, time.monotonic()
        if topic == UPTIME:
            if (seconds := uptime(bytes(message.payload))) is not None:
                self._run(self._sync.broker_uptime(seconds, now))
            return
        try:
            decoded = self._topics.check(topic, self._codec.decode(bytes(message.payload)))
        except CodecError as error:
            self._drops.drop(error.reason, f"on {topic}: {error}")
            if topic == self._topics.route("presence"):
                self._run(self._sync.presence_overwritten(now))
            return
        if decoded.origin == self.node_id:  # only our presence's echo counts (not a retained one)
            if not message.retain and decoded.body == Presence(up=True):
                self._run(self._sync.own_presence(now, self._store.digest()))
            return
        if isinstance(decoded.body, Batch):
            self._metrics.batch_received(len(message.payload))
        self._run(self._sync.message(decoded, now, self._store.digest()))
