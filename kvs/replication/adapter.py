"""The MQTT side of a server: the adapter between the broker, the store and the sync core.

Every decision is the sync core's (kvs/replication/sync.py) or kvs/replication/sending.py's;
this module turns what arrives into the core's events, and the core's actions into effects:
it publishes the writes the store accepted, and runs the actions in order, in slices that
leave room for gRPC calls. It reaches the world only through what it is given (a transport,
a clock, a random source: kvs/replication/transport.py), so tests/sim.py runs it as it is.
Threads: one; the event loop owns the store, this object and its transport.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, assert_never, cast

from kvs.errors import CodecError
from kvs.metrics import NO_METRICS, DropReason, ReplicationMetrics
from kvs.replication.actions import (
    Action,
    Apply,
    Note,
    PeerCounts,
    Publish,
    SendState,
    Serve,
    SetAside,
    Settle,
    Touched,
)
from kvs.replication.codec import TRANSFER_CHUNK, Codec, Message, weighed_chunks, weight_of
from kvs.replication.droplog import DropLog
from kvs.replication.sending import Outbox
from kvs.replication.sync import PRESENCE_EVERY, Sync
from kvs.replication.topics import UPTIME, Topics, bridge_state, recipient, uptime
from kvs.replication.transport import SYSTEM_CLOCK, Clock, Opener
from kvs.service.replicated import Slices, set_aside_in_slices, settle_in_slices
from kvs.storage.store import Fragment, Store

log = logging.getLogger(__name__)

FLUSH_EVERY: Final = 0.002
"""Seconds between batches under load: at most 500 MQTT messages a second for writes..."""
FLUSH_LOADED: Final = 0.005
"""...or this while writes come at LOADED a second or more: at most 200 batches a second, each
carrying more writes (what a batch costs the sender, the broker and every peer is shared by more)."""
LOADED: Final = 2_000
"""Writes (fragments) a second from which batches wait FLUSH_LOADED; below it, FLUSH_EVERY, so that
replication lag at 1,000 writes a second stays that of the shorter wait (docs/performance.md)."""
BACKLOG: Final = 1024 * 1024
"""Characters of keys and values received and not yet joined, at most: past it, reading from the
broker waits (a transfer is joined part by part, in bounded memory whatever its size)."""
SEND_WINDOW: Final = 4 * 1024 * 1024
"""Bytes of our publishes the broker may leave unacknowledged before a transfer waits for it to
catch up: a transfer streams in bounded memory, however large the store (docs/replication.md)."""
DRAIN_POLL: Final = 0.005
"""Seconds between two looks at the broker's acknowledgements while a transfer waits."""
POLL: Final = 0.05
"""Seconds between two polls of the core while it joins (it may serve as soon as the broker settled)."""
APPLY_ROWS: Final = 100
APPLY_SECONDS: Final = 0.001
"""A slice of replication work: rows joined (or their worth), or seconds, whichever comes first."""
DECODE_AT_ONCE: Final = 128 * 1024
"""Payloads up to this many bytes are decoded as they arrive (up to some 1,000 fragments, 5 ms); a
larger one (a CHUNK batch of an older server, or up to MAX_PAYLOAD from another implementation) waits
its turn in the work queue and is decoded in slices..."""
DECODE_STEP: Final = 200
"""...of this many fragments (about 1 ms)..."""
DECODED_PER_ROW: Final = 2
"""...where making 2 costs about what joining one row does."""
COUNT_ROWS: Final = 10_000
"""Versions counted over per step of `_key_count` (about 0.2 µs each)..."""
COUNT_PER_ROW: Final = 50
"""...where counting over 50 costs about what joining one row does."""
JITTER: Final = 0.2
"""Each sync interval is drawn within this fraction of itself, against servers ticking in lockstep."""


class Replicator:
    """Keeps one server's store in step with its peers through the broker, as `core` decides."""

    def __init__(
        self,
        store: Store,
        core: Sync,
        cluster: str,
        key: bytes,
        session: Opener,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        metrics: ReplicationMetrics = NO_METRICS,
    ) -> None:
        """`core` is this server's (its id, interval and epoch: its start in ms by `clock`); `session`
        opens the transport to the broker (kvs.mqtt.session.opener)."""
        self.node_id, self.cluster = core.node_id, cluster
        self.caught_up = asyncio.Event()
        """Set once this server holds its peers' state (kvs.replication.sync's joining rule)."""
        self._store, self._sync, self._clock = store, core, clock
        # The store says when it was last in touch, and whether an earlier run left versions aside.
        core.horizon.touched_ms = core.horizon.touched_ms or store.touched
        core.horizon.pending = bool(core.horizon.ttl_ms) and store.in_doubt() > 0
        self._random = rng or random.Random()
        self._codec = Codec(cluster, core.node_id, key, epoch=core.epoch, clock=clock.wall_ms)
        self._topics = Topics(cluster, core.node_id)
        self._presence = self._topics.route("presence")
        self._batch_topic = self._topics.route("batch")
        self._loop = asyncio.get_running_loop()
        goodbye = (self._presence, self._codec.presence(up=False))
        self._session = session(f"kvs-{cluster}-{core.node_id}", goodbye, self._topics.subscriptions(), self)
        self._outbox: list[Fragment] = []
        self._flush_at: float | None = None  # when the next batch goes out (loop time)
        self._last_flush = 0.0
        self._flush_wait = FLUSH_EVERY  # FLUSH_LOADED while the writes come fast (see _flush)
        self._batches = Outbox(core.next_batch_seq)
        self._work: deque[Action | _Decode] = deque()  # the core's actions, done in order by _work_forever
        self._decoding = 0  # large payloads waiting in self._work to be decoded
        # One budget for all of them (see _work_forever); half a client call's: a replica that falls behind
        # always has work, and a Get it answers waits for a slice in each of the turns it takes.
        self._slices = Slices(store, clock.monotonic, APPLY_ROWS, APPLY_SECONDS)
        self._backlog = 0  # characters of the fragments in self._work
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = clock.monotonic()
        self._metrics, self._drops = metrics, DropLog(clock.monotonic)
        self._watchers: list[Callable[[str, Sequence[Fragment]], None]] = []

    @property
    def peers(self) -> frozenset[str]:  # those known to be up
        return frozenset(self._sync.peers.present())

    @property
    def connected(self) -> bool:
        return self._session.connected

    @property
    def broker(self) -> str:
        """The broker in use (of those --broker lists), as HOST:PORT."""
        return str(self._session.broker)

    @property
    def last_repair(self) -> float | None:
        """When (seconds since the Unix epoch) this server last took part in a repair, if ever."""
        at = self._sync.last_repair
        return None if at is None else self._clock.wall_ms() / 1000 - (self._clock.monotonic() - at)

    def watch(self, watcher: Callable[[str, Sequence[Fragment]], None]) -> Callable[[], None]:
        """Calls `watcher(origin, fragments)` after each batch from a peer is applied; returns an unwatch."""
        self._watchers.append(watcher)
        return lambda: self._watchers.remove(watcher)

    async def start(self) -> None:
        """Connects to the broker (or raises BrokerUnreachable); catching up goes on in the background."""
        await self._session.connect()
        self._tasks = [asyncio.create_task(job()) for job in (self._tick_forever, self._work_forever)]

    def publish(self, fragments: Sequence[Fragment]) -> None:
        """Queues mutations the store accepted for the next batch: at once after a quiet spell, and
        at most one batch per FLUSH_EVERY under load, or per FLUSH_LOADED from LOADED writes a second
        on (fewer, larger messages: docs/performance.md)."""
        self._outbox.extend(fragments)
        if self._flush_at is not None:
            return
        self._flush_at = max(self._loop.time(), self._last_flush + self._flush_wait)
        self._loop.call_at(self._flush_at, self._flush)

    async def stop(self) -> None:  # sends what is queued, says goodbye (a Presence down), disconnects
        for task in self._tasks:
            task.cancel()
        self._flush()
        await self._session.stop((self._presence, self._codec.presence(up=False)))

    def _flush(self) -> None:
        now = self._loop.time()
        since, self._flush_at, self._last_flush = now - self._last_flush, None, now
        fragments, self._outbox = self._outbox, []
        # The rate of the writes since the last batch sets the wait before the next one.
        self._flush_wait = FLUSH_LOADED if len(fragments) >= LOADED * since else FLUSH_EVERY
        session = self._session
        for chunk, _ in weighed_chunks(fragments):
            seq, publish = self._batches.batch(session.writes_in_flight, session.connected)
            payload = self._codec.batch(chunk, seq)
            self._batches.keep(seq, payload)
            if not publish:
                self._metrics.batch_skipped()
                self._drops.drop("write window full", f"batch {seq} not published: the peers will ask for it")
                continue
            session.publish(self._batch_topic, payload, write=True)
            self._metrics.batch_sent(len(payload))

    def _run(self, actions: Sequence[Action]) -> None:
        self._work.extend(actions)
        self._backlog += sum(_weight(a) for a in actions)
        self._hold()
        self._wake.set()

    def _hold(self) -> None:
        # Bounded memory for what arrives; and while a large payload is decoded, what follows it waits
        # in the socket, so that the core still takes the messages in the order they came.
        self._session.hold(self._backlog > BACKLOG or self._decoding > 0)

    async def _work_forever(self) -> None:
        # In slices that span actions (kvs.service.replicated.Slices): a peer's PutAll arrives as
        # thousands of small batches, each well within a slice, which must not all be joined in one
        # turn of the loop.
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
                    self._backlog -= _weight(action)
                    self._hold()
                else:
                    self._slices.spend(1)
                await self._slices.step()

    async def _do(self, action: Action | _Decode) -> None:
        match action:
            case _Decode():
                await self._decode(action)
            case Publish(route=route, body=body, retain=retain):
                payload = self._codec.encode(body, recipient(route))
                self._session.publish(self._topics.route(route), payload, retain=retain)
            case Apply(origin=origin, fragments=fragments):
                await self._slices.join(fragments, late=action.late)
                if action.batch:
                    self._metrics.batch_applied(action.size)
                    self._metrics.lag(self._clock.wall_ms() / 1000 - action.sent_ms / 1000)
                    for watcher in list(self._watchers):
                        watcher(origin, fragments)
            case SendState():
                await self._send_state(action)
            case Serve():
                took = self._clock.monotonic() - self._started
                log.info("caught up: %d keys, %.2f s after start", await self._key_count(), took)
                self._metrics.caught_up(took)
                self.caught_up.set()
            case PeerCounts(up=up, differing=differing):
                self._metrics.peers(up, differing)
            case SetAside() | Settle() | Touched():
                await self._horizon(action)
            case Note(text=text, drop=""):
                log.info("%s", text)
            case Note(text=text, drop=reason):
                self._metrics.dropped(cast(DropReason, reason))
                self._drops.drop(reason, text)
            case _:
                assert_never(action)

    async def _horizon(self, action: SetAside | Settle | Touched) -> None:
        """The tombstone horizon's actions (kvs/replication/horizon.py)."""
        match action:
            case SetAside(cut=cut):
                self._batches = Outbox(self._sync.next_batch_seq)  # kept batches may hold them
                moved = await set_aside_in_slices(self._store, cut)
                log.info(
                    "%d version(s) older than the horizon set aside until the peers have answered", moved
                )
            case Settle(restore=True):
                await settle_in_slices(self._store, restore=True)
                log.info("no peer answered: the versions set aside are kept (nobody can have deleted them)")
            case Settle():
                lost = await settle_in_slices(self._store, restore=False)
                log.warning(
                    "back past --tombstone-ttl: dropped %d version(s) older than the horizon that no peer"
                    " holds (keys deleted meanwhile, or writes made out of touch); the rest came back",
                    lost,
                )
            case Touched(ms=ms):
                self._store.touch(ms)

    async def _send_state(self, action: SendState) -> None:
        """A transfer, read a page at a time (fresh queries: writes go on in between), encoded a
        fragment at a time and sent in messages of TRANSFER_CHUNK, in the slices of `_work_forever`."""
        late = self._sync.horizon.late(self._clock.wall_ms())  # old versions in our history: not again
        pages, resent = self._batches.state(action, self._store, late)
        if action.kind == "repair":
            self._metrics.repair_started(len(action.send_back))
        elif action.kind == "lost":
            self._metrics.lost_batches_answered(resent)
        topic = self._topics.route(action.peer)
        writer = self._codec.transfer_writer(action.peer, TRANSFER_CHUNK)
        try:
            for page in pages:
                for fragment in page:
                    for payload in writer.add(fragment):
                        if not await self._send(topic, payload, action.peer):
                            return
                    self._slices.spend(1 + len(fragment.versions))
                    await self._slices.step()
                await self._slices.step()
            for payload in writer.finish(action.send_back, action.answers):
                if not await self._send(topic, payload, action.peer):
                    return
        finally:  # the core lets one transfer to a peer be in flight: say it ended, however
            self._sent(action.peer)

    async def _send(self, topic: str, payload: bytes, peer: str) -> bool:
        """Publishes a part of a transfer; False if the transfer is given up (the broker went away)."""
        self._session.publish(topic, payload)
        # Backpressure: paho keeps each publish until the broker acknowledges it.
        while self._session.unacknowledged_bytes > SEND_WINDOW:
            if not self._session.connected:  # the peer asks again once we are back
                log.info("transfer to %s given up: the broker went away", peer)
                return False
            await asyncio.sleep(DRAIN_POLL)
        return True

    async def _key_count(self) -> int:
        """`Store.key_count` in slices (a million keys took a 0.5 s turn of the loop)."""
        total, after = 0, ""
        while True:
            counted, next_after = self._store.count_keys(after, COUNT_ROWS)
            total += counted
            if next_after is None:
                return total
            after = next_after
            self._slices.spend(COUNT_ROWS // COUNT_PER_ROW)
            await self._slices.step()

    def _sent(self, peer: str) -> None:
        self._run(self._sync.sent(peer, self._clock.monotonic(), self._store.digest()))

    async def _tick_forever(self) -> None:
        interval = self._sync.interval
        next_tick = self._clock.monotonic() + interval * self._jitter()
        while True:
            # Poll often while joining; tick every interval, with jitter against lockstep.
            now = self._clock.monotonic()
            # Serving: a poll every sixth of an interval, for the presence said every third.
            idle = min(max(0.0, next_tick - now), interval * PRESENCE_EVERY / 2)
            await asyncio.sleep(POLL if not self._sync.serving else idle)
            now = self._clock.monotonic()
            self._run(self._sync.poll(now, busy=self._backlog > 0))
            if now >= next_tick:
                next_tick = now + interval * self._jitter()
                self._run(self._sync.tick(now, self._store.digest(), self._clock.wall_ms()))
                self._drops.flush()

    def _jitter(self) -> float:
        return self._random.uniform(1 - JITTER, 1 + JITTER)

    # The transport's events (kvs.replication.transport.Listener), on the event loop ----------

    def on_connected(self) -> None:
        self._run(self._sync.connected_to_broker(self._clock.monotonic(), self._clock.wall_ms()))

    def on_lost(self) -> None:
        self._metrics.broker(str(self._session.broker), False)
        self._run(self._sync.disconnected(self._clock.monotonic()))

    def on_subscribed(self) -> None:
        self._metrics.broker(str(self._session.broker), True)
        # The retained presences follow the SUBACK: all arrive before our own comes back.
        self._run(self._sync.subscribed(self._clock.monotonic(), self._clock.wall_ms()))

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        now = self._clock.monotonic()
        if topic == UPTIME:
            if (seconds := uptime(payload)) is not None:
                self._run(self._sync.broker_uptime(seconds, now))
            return
        if topic.startswith("$SYS/"):
            if (bridge := bridge_state(topic, payload)) is not None:
                self._run(self._sync.bridge(*bridge, retained, now))
            return
        if len(payload) > DECODE_AT_ONCE:  # decoded in slices, in its turn (`_decode`)
            self._decoding += 1
            self._hold()
            self._work.append(_Decode(topic, payload, retained))
            self._wake.set()
            return
        try:
            message = self._codec.decode(payload)
        except CodecError as error:
            self._undecoded(topic, error, now)
            return
        self._received(topic, message, retained, now)

    async def _decode(self, work: _Decode) -> None:
        """A large payload's fragments made DECODE_STEP at a time, in the slices of `_work_forever`."""
        try:
            for message in self._codec.decode_in_steps(work.payload, DECODE_STEP):
                if message is None:
                    self._slices.spend(DECODE_STEP // DECODED_PER_ROW)
                    await self._slices.step()
                else:
                    self._received(work.topic, message, work.retained, self._clock.monotonic())
        except CodecError as error:
            self._undecoded(work.topic, error, self._clock.monotonic())
        finally:
            self._decoding -= 1
            self._hold()

    def _received(self, topic: str, message: Message, retained: bool, now: float) -> None:
        try:
            self._topics.check(topic, message)
        except CodecError as error:
            self._undecoded(topic, error, now)
            return
        self._run(self._sync.message(message, now, self._store.digest(), retained, self._clock.wall_ms()))

    def _undecoded(self, topic: str, error: CodecError, now: float) -> None:
        self._metrics.dropped(cast(DropReason, error.reason))
        self._drops.drop(error.reason, f"on {topic}: {error}")
        if topic == self._presence:  # something not ours took our retained presence's place
            self._run(self._sync.presence_overwritten(now))


@dataclass(frozen=True, slots=True)
class _Decode:
    """A large payload, to decode in its turn (`Replicator._decode`)."""

    topic: str
    payload: bytes
    retained: bool


def _weight(action: Action) -> int:
    """The characters of keys and values an action holds (received fragments waiting to be joined)."""
    return sum(weight_of(fragment) for fragment in action.fragments) if isinstance(action, Apply) else 0
