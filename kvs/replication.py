"""The MQTT side of a server: publish what the store accepted, apply what arrives.

Threads: one. The event loop thread owns the store, every attribute of
`Replicator`, and the paho client, whose socket it drives (kvs.mqtt): paho's
callbacks below run on the loop, between gRPC calls.

Topics, under the cluster prefix C (docs/replication.md):

    C/batch        Batch      the mutations a server accepted, as it accepted them
    C/digest       Digest     a hash per key bucket: periodic, and urgent on (re)connection
    C/to/<id>      Transfer   state sent to one server (an answer or a repair)
    C/peers/<id>   Presence   retained while the server is up; empty once it has left

Convergence: every payload is a state fragment and the store's join is
order- and duplicate-insensitive, so applying whatever arrives is always safe.
What can go missing (a broker restart, a long disconnection, a queue overflow)
is found by comparing digests and repaired by exchanging buckets.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, ParamSpec

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from kvs.broker import Address
from kvs.codec import Batch, Body, Codec, Digest, Message, Presence, Transfer
from kvs.errors import BrokerUnreachable, CodecError
from kvs.mqtt import LoopDriver
from kvs.store import BUCKETS, Fragment, Store

log = logging.getLogger("kvs.replication")

KEEPALIVE: Final = 10
"""Seconds; the broker declares a silent server gone (its presence cleared) after 1.5 times this."""
SESSION_EXPIRY: Final = 300
"""Seconds the broker keeps queueing for a disconnected server before forgetting it."""
HEARTBEAT_ROUNDS: Final = 12
"""An unchanged digest still goes out once in this many sync intervals."""
CATCH_UP_PATIENCE: Final = 5.0
"""Seconds a joining server waits for a peer's state without progress before serving anyway."""

FLUSH_EVERY: Final = 0.002
"""Seconds between batches under load: at most 500 MQTT messages a second for writes."""
MAX_QUEUED: Final = 10_000
"""Unacknowledged publishes paho may hold; beyond it a batch is dropped and anti-entropy repairs."""

P = ParamSpec("P")


@dataclass(frozen=True)
class Topics:
    cluster: str

    @property
    def batch(self) -> str:
        return f"{self.cluster}/batch"

    @property
    def digest(self) -> str:
        return f"{self.cluster}/digest"

    @property
    def peers(self) -> str:
        return f"{self.cluster}/peers/"

    def inbox(self, node_id: str) -> str:
        return f"{self.cluster}/to/{node_id}"

    def presence(self, node_id: str) -> str:
        return f"{self.peers}{node_id}"


def _guarded(callback: Callable[P, None]) -> Callable[P, None]:
    """Nothing escapes a paho callback: a bad message must not stop the reading of the next."""

    @functools.wraps(callback)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            callback(*args, **kwargs)
        except Exception:
            log.exception("error in MQTT callback %s (ignored)", callback.__name__)

    return wrapper


class Replicator:
    """Keeps one server's store in step with its peers through the broker."""

    def __init__(
        self, store: Store, cluster: str, node_id: str, broker: Address, sync_interval: float = 5.0
    ) -> None:
        self.node_id = node_id
        self.broker = broker
        self.caught_up = asyncio.Event()
        """Set once this server holds its peers' state (or found none to wait for)."""
        self._store = store
        self._codec = Codec(cluster, node_id)
        self._topics = Topics(cluster)
        self._sync_interval = sync_interval
        self._loop = asyncio.get_running_loop()
        self._client = self._make_client()
        self._driver = LoopDriver(self._client)
        self._connack: asyncio.Future[ReasonCode] = self._loop.create_future()
        self._outbox: list[Fragment] = []
        self._flush_at: float | None = None  # when the scheduled flush runs (loop time)
        self._last_flush = 0.0
        self._peers: set[str] = set()
        self._awaiting: set[str] | None = None  # peers whose state the first catch-up waits for
        self._started = time.monotonic()
        self._progress = self._started  # the last time the catch-up moved
        self._peer_digests: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}  # theirs, ours then
        self._published_digest: tuple[int, ...] | None = None
        self._quiet_rounds = 0
        self._queue_full = False
        self._ticker: asyncio.Task[None] | None = None
        self._watchers: list[Callable[[str, Sequence[Fragment]], None]] = []
        self._last_repair: float | None = None  # last_repair (issue 10, a2): carry over to the new adapter

    @property
    def cluster(self) -> str:
        return self._topics.cluster

    @property
    def peers(self) -> frozenset[str]:
        """The peers known to be up."""
        return frozenset(self._peers)

    @property
    def connected(self) -> bool:
        return self._client.is_connected()

    # last_repair (issue 10, a2): carry over to the new adapter ---------------------
    @property
    def last_repair(self) -> float | None:
        """When this server last repaired buckets with a peer (time.time()), or None."""
        return self._last_repair

    def watch(self, watcher: Callable[[str, Sequence[Fragment]], None]) -> Callable[[], None]:
        """Calls `watcher(origin, fragments)` after each batch from a peer is applied; returns an unwatch."""
        self._watchers.append(watcher)
        return lambda: self._watchers.remove(watcher)

    # Lifecycle (event loop) --------------------------------------------------------

    async def start(self) -> None:
        """Connects to the broker, or raises BrokerUnreachable; catching up goes on in the background."""
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY
        try:
            await self._driver.connect(self.broker.host, self.broker.port, KEEPALIVE, properties)
            reason = await asyncio.wait_for(asyncio.shield(self._connack), 10)
        except OSError as error:
            raise BrokerUnreachable(f"{self.broker}: {error.strerror or error}") from None
        except TimeoutError:
            reason = None
        if reason is None or reason.is_failure:
            await self._driver.stop()
            raise BrokerUnreachable(f"{self.broker}: {reason or 'no answer to CONNECT'}")
        self._ticker = asyncio.create_task(self._tick_forever())

    def publish(self, fragments: Sequence[Fragment]) -> None:
        """Queues accepted mutations for the next batch.

        A batch goes out at once after a quiet spell, and at most one per
        FLUSH_EVERY under load, carrying everything accepted meanwhile. Each
        MQTT message costs every server and the broker the same whatever it
        carries, so fewer, larger ones keep a busy cluster fast (MEASURED.md:
        batching is the lever); an idle one pays no delay.
        """
        self._outbox.extend(fragments)
        if self._flush_at is not None:
            return  # a flush is already due
        self._flush_at = max(self._loop.time(), self._last_flush + FLUSH_EVERY)
        self._loop.call_at(self._flush_at, self._flush)

    async def stop(self) -> None:
        """Sends what is queued, says goodbye (clears the presence), disconnects."""
        if self._ticker:
            self._ticker.cancel()
        self._flush()
        goodbye = self._client.publish(self._topics.presence(self.node_id), b"", qos=1, retain=True)
        for _ in range(200):  # up to 2 s for the broker to acknowledge everything
            if not self._client.is_connected() or goodbye.is_published():
                break
            await asyncio.sleep(0.01)
        await self._driver.stop()

    # Publishing (event loop) -------------------------------------------------------

    def _flush(self) -> None:
        self._flush_at = None
        self._last_flush = self._loop.time()
        fragments, self._outbox = self._outbox, []
        for payload in self._codec.batches(fragments):
            self._send(self._topics.batch, payload)

    def _send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            if not self._queue_full:
                log.warning("the MQTT publish queue is full: dropping; anti-entropy will repair the peers")
            self._queue_full = True
        else:
            self._queue_full = False
        # MQTT_ERR_NO_CONN: paho keeps the message and sends it after reconnecting.

    def _send_state(self, peer: str, buckets: Collection[int], send_back: Collection[int] = ()) -> None:
        """Our state of `buckets` to one peer, ending with a `last` message."""
        fragments: Iterable[Fragment] = ()
        if buckets:
            fragments = self._store.export(None if len(buckets) == BUCKETS else buckets)
        for payload in self._codec.transfer(fragments, send_back):
            self._send(self._topics.inbox(peer), payload)

    def _send_digest(self, urgent: bool = False) -> None:
        self._published_digest = self._store.digest()
        self._quiet_rounds = 0
        self._send(self._topics.digest, self._codec.digest(self._published_digest, urgent))

    # Anti-entropy (event loop) -----------------------------------------------------

    async def _tick_forever(self) -> None:
        while True:
            # Jitter keeps the servers of a cluster from publishing in lockstep.
            await asyncio.sleep(self._sync_interval * random.uniform(0.8, 1.2))
            self._tick()

    def _tick(self) -> None:
        if not self.caught_up.is_set() and time.monotonic() - self._progress > CATCH_UP_PATIENCE:
            log.warning("no state from %s for %.0f s: serving with what this server has",
                        sorted(self._awaiting or ()) or "the broker", CATCH_UP_PATIENCE)  # fmt: skip
            self._set_caught_up()
        if not self._client.is_connected():
            return
        ours = self._store.digest()
        peers_differ = any(theirs != ours for theirs, _ in self._peer_digests.values())
        self._quiet_rounds += 1
        # An idle, converged cluster says almost nothing: one digest per heartbeat.
        if ours != self._published_digest or peers_differ or self._quiet_rounds >= HEARTBEAT_ROUNDS:
            self._send_digest()

    def _on_digest(self, origin: str, digest: Digest) -> None:
        ours = self._store.digest()
        differing = {b for b in range(BUCKETS) if ours[b] != digest.buckets[b]}
        if digest.urgent:
            # A peer joined or reconnected: answer at once, and ask for what only it may have.
            self._peer_digests.pop(origin, None)
            self._send_state(origin, differing, send_back={b for b in differing if digest.buckets[b]})
            return
        previous = self._peer_digests.get(origin)
        self._peer_digests[origin] = (digest.buckets, ours)
        if not differing or previous is None or self.node_id > origin:
            return  # nothing to do, too early to tell, or the peer with the smaller id repairs
        # Differences on both sides change while writes are in flight; a bucket that
        # differs the same way in two rounds in a row is one the messages missed.
        theirs_before, ours_before = previous
        stuck = {b for b in differing if theirs_before[b] == digest.buckets[b] and ours_before[b] == ours[b]}
        if stuck:
            log.info("repairing %d bucket(s) with %s", len(stuck), origin)
            self._last_repair = time.time()  # last_repair (issue 10, a2)
            self._send_state(origin, stuck, send_back=stuck)

    # Catching up (event loop) ------------------------------------------------------

    def _on_connected(self, reason: ReasonCode, session_present: bool) -> None:
        if not self._connack.done():
            self._connack.set_result(reason)
        if reason.is_failure:
            log.error("the broker at %s refused the connection: %s", self.broker, reason)
            return
        log.info("broker connected (%s%s)", self.broker, ", session resumed" if session_present else "")
        self._client.subscribe(
            [
                (self._topics.batch, SubscribeOptions(qos=1, noLocal=True)),
                (self._topics.digest, SubscribeOptions(qos=1, noLocal=True)),
                (self._topics.inbox(self.node_id), SubscribeOptions(qos=1)),
                (self._topics.peers + "+", SubscribeOptions(qos=1)),
            ]
        )

    def _on_subscribed(self) -> None:
        # The broker sends the retained presences of the peers after the SUBACK,
        # so they all arrive before our own presence comes back to us.
        self._send(self._topics.presence(self.node_id), self._codec.presence(), retain=True)

    def _on_own_presence(self) -> None:
        if self._awaiting is None:
            self._awaiting = set(self._peers)  # those up when we subscribed
            log.info("joining: %s", f"waiting for the state of {sorted(self._awaiting)}" if self._awaiting
                     else "no peers are up")  # fmt: skip
        self._send_digest(urgent=True)
        self._check_caught_up()

    def _on_transfer(self, origin: str, transfer: Transfer) -> None:
        self._store.join(transfer.fragments)
        self._progress = time.monotonic()
        if transfer.last:
            if self._awaiting is not None:
                self._awaiting.discard(origin)
            if transfer.send_back:
                self._last_repair = time.time()  # last_repair (issue 10, a2)
                self._send_state(origin, transfer.send_back)
            self._check_caught_up()

    def _check_caught_up(self) -> None:
        if not self.caught_up.is_set() and self._awaiting is not None and not self._awaiting:
            self._set_caught_up()

    def _set_caught_up(self) -> None:
        log.info("caught up: %d keys, %.2f s after start", self._store.key_count(),
                 time.monotonic() - self._started)  # fmt: skip
        self.caught_up.set()

    # Arrivals (event loop) ---------------------------------------------------------

    def _on_message(self, message: Message) -> None:
        body: Body = message.body
        if isinstance(body, Batch):
            self._store.join(body.fragments)
            for watcher in self._watchers:
                watcher(message.origin, body.fragments)
        elif isinstance(body, Digest):
            self._on_digest(message.origin, body)
        elif isinstance(body, Transfer):
            self._on_transfer(message.origin, body)
        elif message.origin == self.node_id:
            self._on_own_presence()
        elif message.origin not in self._peers:
            self._peers.add(message.origin)
            log.info("peer %s seen", message.origin)

    def _on_peer_left(self, peer: str) -> None:
        if peer == self.node_id or peer not in self._peers:
            return
        self._peers.discard(peer)
        self._peer_digests.pop(peer, None)
        log.info("peer %s left", peer)
        if self._awaiting is not None:
            self._awaiting.discard(peer)
            self._check_caught_up()

    # paho's callbacks (on the event loop, see kvs.mqtt) -------------------------

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"kvs-{self._topics.cluster}-{self.node_id}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        client.will_set(self._topics.presence(self.node_id), b"", qos=1, retain=True)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(MAX_QUEUED)
        client.on_connect = _guarded(self._paho_connect)
        client.on_disconnect = _guarded(self._paho_disconnect)
        client.on_subscribe = _guarded(self._paho_subscribe)
        client.on_message = _guarded(self._paho_message)
        return client

    def _paho_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags,
                      reason: ReasonCode, properties: Properties | None) -> None:  # fmt: skip
        self._on_connected(reason, flags.session_present)

    def _paho_disconnect(self, client: mqtt.Client, userdata: object, flags: mqtt.DisconnectFlags,
                         reason: ReasonCode, properties: Properties | None) -> None:  # fmt: skip
        if not self._driver.stopping:
            log.warning("broker connection lost (%s); reconnecting", reason)
            self._driver.connection_lost()

    def _paho_subscribe(self, client: mqtt.Client, userdata: object, mid: int,
                        reasons: list[ReasonCode], properties: Properties | None) -> None:  # fmt: skip
        if any(reason.is_failure for reason in reasons):
            log.error("the broker refused a subscription: %s", reasons)
        self._on_subscribed()

    def _paho_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        topic = message.topic
        try:
            if topic.startswith(self._topics.peers) and not message.payload:
                self._on_peer_left(topic.removeprefix(self._topics.peers))
                return
            decoded = self._check(topic, self._codec.decode(bytes(message.payload)))
        except CodecError as error:
            log.warning("dropped a message on %s: %s", topic, error)
            return
        if message.retain and decoded.origin == self.node_id:
            return  # our presence from before a reconnection (or a previous run), not the echo we wait for
        self._on_message(decoded)

    def _check(self, topic: str, message: Message) -> Message:
        """The message, if it is the kind its topic carries and comes from where it says."""
        expected: type[Body]
        if topic == self._topics.batch:
            expected = Batch
        elif topic == self._topics.digest:
            expected = Digest
        elif topic == self._topics.inbox(self.node_id):
            expected = Transfer
        else:
            expected = Presence
            if topic != self._topics.presence(message.origin):
                raise CodecError(f"presence of {message.origin!r} on another server's topic")
        if not isinstance(message.body, expected):
            raise CodecError(f"a {type(message.body).__name__} where a {expected.__name__} belongs")
        if message.origin == self.node_id and expected is not Presence:
            raise CodecError("claims to come from this server")
        return message
