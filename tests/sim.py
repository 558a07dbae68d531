"""A deterministic simulation of a kvs cluster: the real sync core (kvs.replication.sync) and
the real store (kvs.storage.store) on N replicas, wired to an in-memory broker that
drops, duplicates, delays and reorders messages, restarts (losing retained
messages and sessions), and disconnects replicas. Replicas crash and restart,
with a disk (they keep their store) or without (they start empty).

Time is simulated: one schedule of a minute of cluster life runs in
milliseconds. Everything random comes from one seeded `random.Random`, so a
failing seed replays exactly. The checks are the guarantees of
docs/replication.md: `Cluster.check_serving` (7: no early SERVING) runs at every
Serve; `acknowledged_everywhere` (1, 3, 4, 6) at the end.

The broker model, and what it assumes of Mosquitto: messages from one client
to one subscriber keep their order unless `reorder` delays some; retained
messages are sent right after a subscription, before anything published
later; a client's will is published when its connection breaks, not when the
broker itself stops; presences are never dropped (a broker drops for a
subscriber whose queue is full, and a presence goes to a fresh subscription).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from kvs.mqtt.loop import BACKOFF
from kvs.replication.actions import Action, Apply, Note, Publish, SendState, Serve
from kvs.replication.codec import Batch, Body, Message, Presence, Transfer
from kvs.replication.sync import Sync
from kvs.storage.store import Fragment, Store

KEPT = 150
"""Batches a replica keeps to send again (few, so that asking for older ones falls back to buckets)."""


@dataclass
class Faults:
    drop: float = 0.0  # chance that a delivery (not a presence) is lost
    duplicate: float = 0.0
    reorder: float = 0.0  # chance that a delivery is delayed by up to 50 ms
    write_window_full: float = 0.0  # chance that a replica skips publishing one batch


@dataclass(frozen=True)
class Ack:
    """A write a client saw acknowledged."""

    replica: Replica
    incarnation: int
    at: float
    fragment: Fragment


@dataclass(order=True)
class _Event:
    at: float
    seq: int
    run: Callable[[], None] = field(compare=False)


class Replica:
    def __init__(self, cluster: Cluster, name: str, interval: float, sync_class: type[Sync]) -> None:
        self.cluster, self.name = cluster, name
        self.interval, self.sync_class = interval, sync_class
        self.store = Store(cluster.clock_ms)
        self.alive = False
        self.partitioned = False
        self.reachable_since = 0.0  # when its last partition ended
        self.cut_off = False  # its connection broke (not the broker) and it has not reconnected yet
        self.started_at = 0.0
        self.snapshots: dict[str, list[Fragment]] = {}  # peers' state when this one started
        self.sync = sync_class(name)
        self.lost_at = 0.0  # when it last started without a disk
        self._incarnation = 0

    def start(self, disk: bool = False) -> None:
        """Starts (or restarts) the replica; with a disk it keeps its store."""
        if not disk:
            self.store = Store(self.cluster.clock_ms)
            self.lost_at = self.cluster.now
        self._incarnation += 1
        self.epoch = int(self.cluster.now * 1000) + self._incarnation
        self.counter = itertools.count(1)
        self.transfers = itertools.count(1)
        self.kept: list[tuple[int, Fragment]] = []  # recent batches, to send again
        self.sync = self.sync_class(self.name, self.interval, epoch=self.epoch)
        self.alive, self.started_at = True, self.cluster.now
        # Peers that are up, or reconnecting after a broker restart (not cut off: their will said they left).
        self.snapshots = {
            r.name: list(r.store.export())
            for r in self.cluster.replicas.values()
            if r.alive and r is not self and not r.cut_off
        }
        self.cluster.broker.connect(self)
        incarnation = self._incarnation
        self.cluster.every(self.interval, lambda: self._tick(incarnation), jitter=0.2)
        self.cluster.every(0.1, lambda: self._poll(incarnation))

    def crash(self) -> None:
        self.alive = False
        self.cluster.broker.disconnect(self, will=True)

    def message(self, body: Body) -> Message:
        return Message(self.name, body, self.epoch, next(self.counter))

    def run(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Publish):
                self.cluster.broker.publish(
                    self, _topic(action.route, self.name), self.message(action.body), retain=action.retain
                )
            elif isinstance(action, Apply):
                self.store.join(action.fragments)
            elif isinstance(action, SendState):
                self._send_state(action)
            elif isinstance(action, Serve):
                self.cluster.check_serving(self)
            else:
                assert isinstance(action, Note)

    def write(self, key: str) -> None:
        """A client's Put, or a Del one time in five."""
        if self.cluster.random.random() < 0.2:
            _, fragment = self.store.delete(key)
        else:
            _, fragment = self.store.put(key, f"{self.name}@{self.cluster.now:.3f}")
        if fragment is None:
            return
        self.cluster.acknowledged.append(Ack(self, self._incarnation, self.cluster.now, fragment))
        seq = self.sync.next_batch_seq()
        self.kept = [*self.kept[-KEPT + 1 :], (seq, fragment)]
        if self.cluster.random.random() >= self.cluster.faults.write_window_full:
            self.cluster.broker.publish(self, "batch", self.message(Batch((fragment,), seq)))

    def deliver(self, topic: str, message: Message, retained: bool) -> None:
        if not self.alive:
            return
        now, ours = self.cluster.now, self.store.digest()
        if message.origin == self.name:
            if not retained and message.body == Presence(up=True):
                self.run(self.sync.own_presence(now, ours))
            return
        self.run(self.sync.message(message, now, ours))

    def connected(self) -> None:
        self.run(self.sync.connected_to_broker(self.cluster.now))
        self.run(self.sync.broker_uptime(self.cluster.now - self.cluster.broker.started, self.cluster.now))

    def subscribed(self) -> None:
        self.run(self.sync.subscribed(self.cluster.now))

    def _send_state(self, action: SendState) -> None:
        if action.since and self.kept and self.kept[0][0] <= action.since:  # what kvs.replication does
            fragments = [fragment for seq, fragment in self.kept if seq >= action.since]
        elif action.buckets != frozenset():
            fragments = list(self.store.export(action.buckets))
        else:
            fragments = []
        transfer_id = next(self.transfers)
        parts = [fragments[i : i + 3] for i in range(0, len(fragments), 3)] or [[]]
        for number, part in enumerate(parts):
            last = number == len(parts) - 1
            body = Transfer(
                tuple(part),
                last,
                action.send_back if last else frozenset(),
                transfer_id,
                number,
                len(parts) if last else 0,
                action.answers if last else 0,
            )
            self.cluster.broker.publish(self, f"to/{action.peer}", self.message(body))
        self.run(self.sync.sent(action.peer, self.cluster.now, self.store.digest()))

    def _tick(self, incarnation: int) -> bool:
        if self._incarnation == incarnation and self.alive:
            self.run(self.sync.tick(self.cluster.now, self.store.digest()))
        return self._incarnation == incarnation

    def _poll(self, incarnation: int) -> bool:
        if self._incarnation == incarnation and self.alive and not self.sync.serving:
            self.run(self.sync.poll(self.cluster.now))
        return self._incarnation == incarnation


def _topic(route: str, sender: str) -> str:
    if route in ("batch", "digest"):
        return route
    return f"peers/{sender}" if route == "presence" else f"to/{route}"


class Broker:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.up = True
        self.started = 0.0
        self.clients: set[str] = set()
        self.retained: dict[str, Message] = {}

    def connect(self, replica: Replica) -> None:
        if not self.up or replica.partitioned or not replica.alive:
            self._retry(replica, 0)
            return
        self.clients.add(replica.name)
        replica.cut_off = False
        replica.connected()
        self.cluster.after(0.001, lambda: self._subscribed(replica))

    def _subscribed(self, replica: Replica) -> None:
        if replica.name not in self.clients:
            return
        replica.subscribed()
        for message in list(self.retained.values()):
            self._send(replica, "peers/", message, delay=0.0005, retained=True, lossy=False)

    def disconnect(self, replica: Replica, will: bool) -> None:
        if replica.name not in self.clients:
            return
        self.clients.discard(replica.name)
        replica.run(replica.sync.disconnected(self.cluster.now))
        if will:
            replica.cut_off = True
            self.publish(
                replica, f"peers/{replica.name}", replica.message(Presence(up=False)), retain=True, force=True
            )
        if replica.alive:
            self._retry(replica, 0)

    def _retry(self, replica: Replica, attempt: int) -> None:
        def again() -> None:
            if replica.alive and replica.name not in self.clients:
                if self.up and not replica.partitioned:
                    self.connect(replica)
                else:
                    self._retry(replica, attempt + 1)

        self.cluster.after(BACKOFF[min(attempt, len(BACKOFF) - 1)], again)

    def restart(self, down_for: float) -> None:
        """The broker stops (every client disconnected, no wills) and starts again, empty."""
        self.up = False
        for name in list(self.clients):
            self.disconnect(self.cluster.replicas[name], will=False)
        self.retained.clear()

        def start() -> None:
            self.up, self.started = True, self.cluster.now

        self.cluster.after(down_for, start)

    def publish(
        self, sender: Replica, topic: str, message: Message, retain: bool = False, force: bool = False
    ) -> None:
        if not force and sender.name not in self.clients:
            return  # a real client queues it; the peers repair what it held (lost with a crash anyway)
        if retain:
            self.retained[topic] = message
        for name in list(self.clients):
            receiver = self.cluster.replicas[name]
            if topic.startswith("to/") and topic != f"to/{name}":
                continue
            if name == sender.name and topic in ("batch", "digest"):
                continue  # MQTT 5 no-local
            self._send(receiver, topic, message, delay=0.001, retained=False, lossy=not retain)

    def _send(
        self, receiver: Replica, topic: str, message: Message, *, delay: float, retained: bool, lossy: bool
    ) -> None:
        rng, faults = self.cluster.random, self.cluster.faults
        if lossy and rng.random() < faults.drop:
            return
        copies = 2 if rng.random() < faults.duplicate else 1
        for _ in range(copies):
            late = rng.uniform(0, 0.05) if lossy and rng.random() < faults.reorder else 0.0

            def arrive() -> None:
                if receiver.name in self.clients:
                    receiver.deliver(topic, message, retained)

            self.cluster.after(delay + late, arrive)


class Cluster:
    def __init__(
        self, seed: int, size: int = 3, interval: float = 1.0, sync_class: type[Sync] = Sync
    ) -> None:
        self.random = random.Random(seed)
        self.now = 0.0
        self.faults = Faults()
        self.broker = Broker(self)
        self.replicas = {f"r{i}": Replica(self, f"r{i}", interval, sync_class) for i in range(1, size + 1)}
        self.acknowledged: list[Ack] = []
        self.violations: list[str] = []
        self._events: list[_Event] = []
        self._seq = itertools.count()

    def clock_ms(self) -> int:
        return 1_000_000 + int(self.now * 1000)

    def after(self, delay: float, run: Callable[[], None]) -> None:
        heapq.heappush(self._events, _Event(self.now + delay, next(self._seq), run))

    def every(self, interval: float, run: Callable[[], bool], jitter: float = 0.0) -> None:
        """Calls `run` every `interval` (+- jitter) while it returns True."""

        def again() -> None:
            if run():
                self.after(interval * self.random.uniform(1 - jitter, 1 + jitter), again)

        self.after(interval * self.random.uniform(1 - jitter, 1 + jitter), again)

    def run_until(self, until: float) -> None:
        while self._events and self._events[0].at <= until:
            event = heapq.heappop(self._events)
            self.now = event.at
            event.run()
        self.now = until

    def writes(self, start: float, stop: float, every: float, keys: int = 12) -> None:
        """Clients write on every live, serving replica from `start` to `stop`."""
        for t in _frange(start, stop, every):

            def write() -> None:
                serving = [r for r in self.replicas.values() if r.alive and r.sync.serving]
                if serving:
                    self.random.choice(serving).write(f"k{self.random.randrange(keys)}")

            self.after(t - self.now, write)

    # The guarantees -------------------------------------------------------------------

    def check_serving(self, replica: Replica) -> None:
        """Guarantee 7: no SERVING with less than what its peers held when it started."""
        for peer, state in replica.snapshots.items():
            other = self.replicas[peer]
            if other.partitioned or other.reachable_since > replica.started_at or not other.alive:
                continue  # cut off from the broker meanwhile (or gone): its state could not be had
            for fragment in state:
                if not covers(replica.store, fragment):
                    self.violations.append(
                        f"{replica.name} served at {self.now:.2f} s without {fragment} of {peer}"
                    )
                    return

    def converged(self) -> bool:
        live = [r for r in self.replicas.values() if r.alive]
        return len({r.store.digest() for r in live}) == 1

    def missing(self, before: float = float("inf")) -> list[str]:
        """Acknowledged writes absent from a live replica; those acknowledged at `before` or later, and
        those whose replica has lost its memory since (while no other holds them), are not counted."""
        live = [r for r in self.replicas.values() if r.alive]
        return [
            f"{r.name} lacks {ack.fragment} (acknowledged by {ack.replica.name} at {ack.at:.2f} s)"
            for ack in self.acknowledged
            if ack.at < before and ack.replica.alive and ack.replica.lost_at <= ack.at
            for r in live
            if not covers(r.store, ack.fragment)
        ]


def covers(store: Store, fragment: Fragment) -> bool:
    """Whether `store` already holds `fragment` (joining it would change nothing)."""
    floor = store._floor(fragment.key)
    if fragment.floor > floor:
        return False
    for ver, val in fragment.versions:
        held = store.get(fragment.key, ver)
        if ver >= floor and not (held.ver == ver and held.val >= val):
            return False
    return True


def _frange(start: float, stop: float, step: float) -> list[float]:
    return [start + i * step for i in range(int((stop - start) / step))]
