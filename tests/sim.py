"""A deterministic simulation of a kvs cluster: the real replication adapter
(kvs.replication.adapter.Replicator, with its sync core and codec) and the real
store (kvs.storage.store) on N replicas, wired to an in-memory broker that
drops, duplicates, delays and reorders messages, restarts (losing retained
messages and sessions), and disconnects replicas. A replica may read everything
late (`Replica.lag`: a process that does not keep up; what was unread when its
connection broke is lost). Replicas crash and restart, with a disk (they keep
their store) or without (they start empty).

Time is simulated: every replica's asyncio code runs on one `SimLoop`, an
event loop whose clock jumps to the next timer instead of waiting for it, so
one schedule of a minute of cluster life runs in well under a second. Everything
random comes from one seeded `random.Random`, and nothing iterates over a set of
strings, so a failing seed replays exactly, in any process. The checks are the
guarantees of docs/replication.md: `Cluster.check_serving` (7: no early SERVING)
runs the moment a replica reports it caught up; `missing` and `converged`
(1, 3, 4, 6) at the end. The simulation reads the replicas only through public
interfaces: the store's reads, the Replicator's properties and the metrics it reports.

The broker model, and what it assumes of Mosquitto: messages from one client
to one subscriber keep their order unless `reorder` delays some; retained
messages (and `$SYS/broker/uptime`) are sent right after a subscription, before
anything published later; a client's will is published when its connection
breaks, not when the broker itself stops; presences are never dropped (a broker
drops for a subscriber whose queue is full, and a presence goes to a fresh
subscription). A session (`SimSession`, the adapter's transport) keeps what is
published while it is away and sends it once connected again, as paho does; the
broker acknowledges a write a millisecond after it takes it.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from kvs.metrics import ReplicationMetrics
from kvs.mqtt.loop import BACKOFF
from kvs.replication.adapter import Replicator
from kvs.replication.sending import WRITE_WINDOW
from kvs.replication.sync import Sync
from kvs.replication.topics import UPTIME
from kvs.replication.transport import Listener, Subscriptions
from kvs.storage.store import Fragment, Store
from tests.state import everything

CLUSTER, KEY = "sim", b"simulated cluster key"


class SimLoop(asyncio.BaseEventLoop):
    """An event loop with a simulated clock: when nothing is ready, time jumps to the next timer.

    No IO: everything that happens is a callback or a task. Callbacks due at the same time
    run in the order they were scheduled, so a run is a function of its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0

    def time(self) -> float:
        return self._now

    def _process_events(self, event_list: list[Any]) -> None:
        pass

    def _run_once(self) -> None:
        """BaseEventLoop._run_once without IO, timeouts or debug checks (the simulation's hot loop:
        a quarter of its time went there). Relies on asyncio's handles' private fields."""
        scheduled, ready = self._scheduled, self._ready  # type: ignore[attr-defined]
        if not ready and not self._stopping:  # type: ignore[attr-defined]
            while scheduled and scheduled[0]._cancelled:
                heapq.heappop(scheduled)._scheduled = False
            if not scheduled:
                raise RuntimeError("the simulation has nothing left to do")
            self._now = max(self._now, scheduled[0]._when)
        now = self._now
        while scheduled and scheduled[0]._when <= now:
            handle = heapq.heappop(scheduled)
            handle._scheduled = False
            ready.append(handle)
        for _ in range(len(ready)):
            handle = ready.popleft()
            if not handle._cancelled:
                handle._run()

    def _write_to_self(self) -> None:
        pass

    def run_until(self, until: float) -> None:
        """Runs every callback due up to `until` (simulated seconds), then stops there."""
        self.call_at(until, self.stop)
        self.run_forever()
        self._now = max(self._now, until)


class SimClock:
    """The Replicator's clock: the loop's time, and a wall clock in ms that it drives."""

    def __init__(self, loop: SimLoop) -> None:
        self._loop = loop

    def monotonic(self) -> float:
        return self._loop.time()

    def wall_ms(self) -> int:
        return 1_000_000 + int(self._loop.time() * 1000)


@dataclass
class Faults:
    drop: float = 0.0  # chance that a delivery (not a retained message) is lost
    duplicate: float = 0.0
    reorder: float = 0.0  # chance that a delivery is delayed by up to 50 ms
    write_window_full: float = 0.0  # chance that the broker has a window of writes unacknowledged


@dataclass(frozen=True)
class Ack:
    """A write a client saw acknowledged."""

    replica: Replica
    incarnation: int
    at: float
    fragment: Fragment


class Reports(ReplicationMetrics):
    """What a replica's Replicator reports (its metrics): the moment it caught up, batches counted."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.applied = self.sent = self.skipped = 0
        self.joins: list[float] = []  # seconds from each start to SERVING (simulated)

    def caught_up(self, seconds: float) -> None:
        self.joins.append(self.replica.cluster.now - self.replica.started_at)
        self.replica.cluster.check_serving(self.replica)

    def batch_applied(self, nbytes: int) -> None:
        self.applied += 1

    def batch_sent(self, nbytes: int) -> None:
        self.sent += 1

    def batch_skipped(self) -> None:
        self.skipped += 1


class SimSession:
    """The Replicator's transport (kvs.replication.transport.Transport), over the simulated broker."""

    def __init__(
        self, replica: Replica, will: tuple[str, bytes], subscriptions: Subscriptions, listener: Listener
    ) -> None:
        self.replica, self.name, self.will = replica, replica.name, will
        self.broker = "the simulated broker"
        self.filters = [(topic, no_local) for topic, _, no_local in subscriptions]
        self.listener = listener
        self.dead = False  # its process crashed, or it stopped
        self.held = False
        self._broker = replica.broker
        self._queue: list[tuple[str, bytes, bool]] = []  # published while away
        self._unacked: dict[int, bool] = {}  # writes the broker has not acknowledged (by token)
        self._tokens = itertools.count()
        self._held: list[tuple[str, bytes, bool]] = []
        self._connection = 0  # counts its connections: what was unread on a broken one is lost
        self._connack: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def connected(self) -> bool:
        return self._broker.clients.get(self.name) is self

    @property
    def unacknowledged_bytes(self) -> int:
        return 0  # the simulated broker takes everything at once

    @property
    def writes_in_flight(self) -> int:
        if self._broker.cluster.random.random() < self._broker.cluster.faults.write_window_full:
            return WRITE_WINDOW  # the broker is slow to acknowledge
        return len(self._unacked)

    async def connect(self) -> None:
        self._broker.connect(self)
        await self._connack

    def publish(self, topic: str, payload: bytes, retain: bool = False, write: bool = False) -> None:
        if self.dead:
            return
        token = next(self._tokens)
        if write:
            self._unacked[token] = True
        if self.connected:
            self._send(topic, payload, retain, token if write else None)
        else:
            self._queue.append((topic, payload, retain))

    def _send(self, topic: str, payload: bytes, retain: bool, token: int | None) -> None:
        self._broker.publish(self, topic, payload, retain)
        if token is not None:
            self._broker.cluster.after(0.001, partial(self._unacked.pop, token, None))

    def hold(self, held: bool) -> None:
        self.held = held
        while not self.held and self._held and not self.dead:
            self.listener.on_message(*self._held.pop(0))

    async def stop(self, goodbye: tuple[str, bytes]) -> None:
        if self.dead:
            return
        self.publish(*goodbye, retain=True)
        self.dead = True
        self._broker.disconnect(self, will=False)

    def crash(self) -> None:
        if not self.dead:
            self.dead = True
            self._broker.disconnect(self, will=True)
        if not self._connack.done():
            self._connack.cancel()  # a replicator still connecting ends there

    # The broker's side ---------------------------------------------------------------

    def connected_now(self) -> None:
        self._connection += 1
        if not self._connack.done():
            self._connack.set_result(None)
        self.listener.on_connected()
        for topic, payload, retain in self._queue:  # what paho kept while away
            self._send(topic, payload, retain, None)
        self._queue.clear()
        for token in list(self._unacked):
            self._broker.cluster.after(0.001, partial(self._unacked.pop, token, None))

    def deliver(self, topic: str, payload: bytes, retained: bool) -> None:
        if self.dead or not self.connected:
            return
        if self.replica.lag:  # read that much later, in the order it came (a slow reader)
            connection = self._connection
            self._broker.cluster.after(
                self.replica.lag, lambda: self._read(connection, topic, payload, retained)
            )
            return
        self._read(self._connection, topic, payload, retained)

    def _read(self, connection: int, topic: str, payload: bytes, retained: bool) -> None:
        if self.dead or not self.connected or connection != self._connection:
            return
        if self.held:
            self._held.append((topic, payload, retained))
        else:
            self.listener.on_message(topic, payload, retained)


class Replica:
    def __init__(self, cluster: Cluster, name: str, interval: float) -> None:
        self.cluster, self.name, self.interval = cluster, name, interval
        self.broker = cluster.broker  # the one it connects to (tests/sim_sites.py: its site's)
        self.clock: Any = cluster.clock  # its own (tests/sim_horizon.py sets one that runs ahead)
        self.store = Store(cluster.clock_ms)
        self.alive = False
        self.partitioned = False
        self.reachable_since = 0.0  # when its last partition ended
        self.cut_off = False  # its connection broke (not the broker) and it has not reconnected yet
        self.lag = 0.0  # seconds after the broker sends a message that this replica reads it (a slow one)
        self.started_at = 0.0
        self.snapshots: dict[str, dict[str, Fragment]] = {}  # peers' state when this one started
        self.lost_at = 0.0  # when it last started without a disk
        self.incarnation = 0
        self.replicator: Replicator | None = None
        self.session: SimSession | None = None
        self.reports = Reports(self)

    @property
    def serving(self) -> bool:
        return self.alive and self.replicator is not None and self.replicator.caught_up.is_set()

    def start(self, disk: bool = False) -> None:
        """Starts (or restarts) the replica; with a disk it keeps its store."""
        if not disk:
            self.store = Store(self.clock.wall_ms)
            self.lost_at = self.cluster.now
        self.incarnation += 1
        self.alive, self.started_at = True, self.cluster.now
        self.replicator = None
        # Peers that are up, or reconnecting after a broker restart (not cut off: their will said they left).
        self.snapshots = {
            r.name: state(r.store)
            for r in self.cluster.replicas.values()
            if r.alive and r is not self and not r.cut_off
        }
        self.cluster.loop.create_task(self._run(self.incarnation))

    async def _run(self, incarnation: int) -> None:
        cluster = self.cluster
        if incarnation != self.incarnation or not self.alive:
            return  # crashed before it began
        core = cluster.sync_class(self.name, self.interval, epoch=self.clock.wall_ms())
        core.horizon.ttl_ms = cluster.horizon_ms  # --tombstone-ttl (tests/sim_horizon.py)
        rng = random.Random(cluster.random.random())
        self.replicator = cluster.replicator_class(
            self.store, core, CLUSTER, KEY, self._open, clock=self.clock, rng=rng, metrics=self.reports
        )
        await self.replicator.start()

    def _open(
        self, client_id: str, will: tuple[str, bytes], subscriptions: Subscriptions, listener: Listener
    ) -> SimSession:
        self.session = SimSession(self, will, subscriptions, listener)
        return self.session

    def crash(self) -> None:
        """The process dies: its connection breaks (the broker publishes its will), its tasks end."""
        self.alive = False
        if self.session is not None:
            self.session.crash()
        if self.replicator is not None:
            self.cluster.loop.create_task(self.replicator.stop())  # on a dead session: stops its tasks

    def partition(self, on: bool) -> None:
        """Cuts the replica off from the broker (its connection breaks: the will), or ends that."""
        self.partitioned, self.reachable_since = on, self.cluster.now
        if on and self.session is not None:
            self.broker.disconnect(self.session, will=True)

    def write(self, key: str) -> None:
        """A client's Put, or a Del one time in five: what kvs.service.replicated does, unpaced."""
        assert self.replicator is not None
        if self.cluster.random.random() < 0.2:
            _, fragment = self.store.delete(key)
        else:
            _, fragment = self.store.put(key, f"{self.name}@{self.cluster.now:.3f}")
        if fragment is None:
            return
        self.cluster.acknowledged.append(Ack(self, self.incarnation, self.cluster.now, fragment))
        self.replicator.publish((fragment,))


@functools.cache
def matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic matching, `+` for one level (enough for kvs's subscriptions)."""
    parts, levels = topic_filter.split("/"), topic.split("/")
    return len(parts) == len(levels) and all(
        p in ("+", level) for p, level in zip(parts, levels, strict=True)
    )


class Bridge(Protocol):
    """A bridge between two brokers (tests/sim_sites.py), told what happens on each of them."""

    def forward(self, broker: Broker, topic: str, payload: bytes, retain: bool, sender: object) -> None:
        """`sender` (a session, or a bridge) published this on `broker`."""

    def broker_stopped(self, broker: Broker) -> None: ...
    def broker_started(self, broker: Broker) -> None: ...


class Broker:
    def __init__(self, cluster: Cluster, name: str = "broker") -> None:
        self.cluster, self.name = cluster, name
        self.up = True
        self.started = 0.0
        self.clients: dict[str, SimSession] = {}  # by client (replica) name, in connection order
        self.retained: dict[str, bytes] = {}
        self.bridges: list[Bridge] = []
        self.taps: list[Callable[[str, bytes], None]] = []  # see every publish (tests/sim_replay.py)

    def connect(self, session: SimSession) -> None:
        replica = session.replica
        if session.dead:
            return
        if not self.up or replica.partitioned:
            self._retry(session, 0)
            return
        self.clients[session.name] = session
        replica.cut_off = False
        session.connected_now()
        self.cluster.after(0.001, lambda: self._subscribed(session))

    def _subscribed(self, session: SimSession) -> None:
        if self.clients.get(session.name) is not session:
            return
        session.listener.on_subscribed()
        for topic, payload in list(self.retained.items()):
            if any(matches(f, topic) for f, _ in session.filters):
                self._send(session, topic, payload, delay=0.0005, retained=True, lossy=False)
        uptime = f"{int(self.cluster.now - self.started)} seconds".encode()
        self._send(session, UPTIME, uptime, delay=0.0005, retained=True, lossy=False)

    def disconnect(self, session: SimSession, will: bool) -> None:
        if self.clients.get(session.name) is not session:
            return
        del self.clients[session.name]
        session.listener.on_lost()
        if will:
            session.replica.cut_off = True
            self.publish(session, *session.will, retain=True, force=True)
        if not session.dead:
            self._retry(session, 0)

    def _retry(self, session: SimSession, attempt: int) -> None:
        def again() -> None:
            if not session.dead and session.name not in self.clients:
                if self.up and not session.replica.partitioned:
                    self.connect(session)
                else:
                    self._retry(session, attempt + 1)

        self.cluster.after(BACKOFF[min(attempt, len(BACKOFF) - 1)], again)

    def restart(self, down_for: float) -> None:
        """The broker stops (every client disconnected, no wills) and starts again, empty."""
        self.up = False
        for session in list(self.clients.values()):
            self.disconnect(session, will=False)
        self.retained.clear()
        for bridge in self.bridges:
            bridge.broker_stopped(self)

        def start() -> None:
            self.up, self.started = True, self.cluster.now
            for bridge in self.bridges:
                bridge.broker_started(self)

        self.cluster.after(down_for, start)

    def publish(
        self, sender: SimSession, topic: str, payload: bytes, retain: bool, force: bool = False
    ) -> None:
        if not force and self.clients.get(sender.name) is not sender:
            return
        for tap in self.taps:
            tap(topic, payload)
        self.carry(sender, topic, payload, retain)

    def carry(self, sender: object, topic: str, payload: bytes, retain: bool) -> None:
        """Delivers what `sender` (a session, or a bridge) published here, and hands it to the bridges."""
        if retain:
            self.retained[topic] = payload
        for session in list(self.clients.values()):
            for topic_filter, no_local in session.filters:
                if matches(topic_filter, topic) and not (no_local and session is sender):
                    self._send(session, topic, payload, delay=0.001, retained=False, lossy=not retain)
                    break
        for bridge in self.bridges:
            bridge.forward(self, topic, payload, retain, sender)

    def _send(
        self, receiver: SimSession, topic: str, payload: bytes, *, delay: float, retained: bool, lossy: bool
    ) -> None:
        rng, faults = self.cluster.random, self.cluster.faults
        if lossy and rng.random() < faults.drop:
            return
        copies = 2 if lossy and rng.random() < faults.duplicate else 1
        for _ in range(copies):
            late = rng.uniform(0, 0.05) if lossy and rng.random() < faults.reorder else 0.0
            self.cluster.after(delay + late, lambda: receiver.deliver(topic, payload, retained))


class Cluster:
    def __init__(
        self,
        seed: int,
        size: int = 3,
        interval: float = 1.0,
        sync_class: type[Sync] = Sync,
        replicator_class: type[Replicator] = Replicator,
    ) -> None:
        self.random = random.Random(seed)
        self.loop = SimLoop()
        self.clock = SimClock(self.loop)
        self.faults = Faults()
        self.broker = Broker(self)
        self.sync_class, self.replicator_class = sync_class, replicator_class
        self.replicas = {f"r{i}": Replica(self, f"r{i}", interval) for i in range(1, size + 1)}
        self.acknowledged: list[Ack] = []
        self.violations: list[str] = []
        self.horizon_ms = 0  # every replica's --tombstone-ttl (0: off; tests/sim_horizon.py)

    @property
    def now(self) -> float:
        return self.loop.time()

    def clock_ms(self) -> int:
        return self.clock.wall_ms()

    def after(self, delay: float, run: Callable[[], object]) -> None:
        self.loop.call_at(self.now + delay, run)

    def run_until(self, until: float) -> None:
        self.loop.run_until(until)

    def close(self) -> None:
        """Ends every replica's tasks and the loop (the stores stay readable)."""
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.close()

    def writes(self, start: float, stop: float, every: float, keys: int = 12) -> None:
        """Clients write on every live, serving replica from `start` to `stop`, one write each `every`
        (one timer at a time: a heap of thousands of timers would slow every other one)."""
        times = iter(_frange(start, stop, every))

        def write() -> None:
            serving = [r for r in self.replicas.values() if r.serving]
            if serving:
                self.random.choice(serving).write(f"k{self.random.randrange(keys)}")
            if (t := next(times, None)) is not None:
                self.loop.call_at(t, write)

        if (first := next(times, None)) is not None:
            self.loop.call_at(first, write)

    # The guarantees -------------------------------------------------------------------

    def check_serving(self, replica: Replica) -> None:
        """Guarantee 7: no SERVING with less than what its peers held when it started."""
        ours = state(replica.store)
        for peer, held in replica.snapshots.items():
            other = self.replicas[peer]
            if other.partitioned or other.reachable_since > replica.started_at or not other.alive:
                continue  # cut off from the broker meanwhile (or gone): its state could not be had
            for fragment in held.values():
                if not covers(ours, fragment):
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
        live = [(r, state(r.store)) for r in self.replicas.values() if r.alive]
        return [
            f"{r.name} lacks {ack.fragment} (acknowledged by {ack.replica.name} at {ack.at:.2f} s)"
            for ack in self.acknowledged
            if ack.at < before and ack.replica.alive and ack.replica.lost_at <= ack.at
            for r, held in live
            if not covers(held, ack.fragment)
        ]


def state(store: Store) -> dict[str, Fragment]:
    """Everything `store` holds, by key (through its public pages)."""
    return {fragment.key: fragment for fragment in everything(store)}


def covers(held: dict[str, Fragment], fragment: Fragment) -> bool:
    """Whether a store holding `held` already holds `fragment` (joining it would change nothing)."""
    mine = held.get(fragment.key)
    floor = mine.floor if mine else 0
    if fragment.floor > floor:
        return False
    versions = dict(mine.versions) if mine else {}
    return all(ver < floor or (ver in versions and versions[ver] >= val) for ver, val in fragment.versions)


def _frange(start: float, stop: float, step: float) -> list[float]:
    return [start + i * step for i in range(int((stop - start) / step))]
