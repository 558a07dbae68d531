"""An adversary for the simulated cluster (tests/sim.py) that records every message published on the
broker, wills included, and publishes any of them again at any later time, retained or not: after
its sender or its receiver restarted, after its sender left. It holds the broker's password, not
the cluster key: what it publishes is authentic, only old.

What it checks, beside the cluster's own guarantee 7 (no early SERVING, `Cluster.check_serving`),
is docs/security.md's "Replays and clocks" on each replica run, through a
`Replicator` that watches what its core decides on each message (`witnessed`): a message this run
already received, or one published before this run started (by more than the clocks' SKEW: the
core cannot tell those from a message of a clock a little behind), must not be joined into the
store (unless the store holds its state already: joining changes nothing) and must not be answered
with state. A message the run never received and that was published while it ran is another
matter: the core cannot tell a replay of it from the original arriving late (QoS 1 delivers late,
and a batch lost on the way is asked for and sent again anyway), so taking it is allowed.
The schedules also time each join (`Reports.joins`): a replay may hold a joiner back one sync
interval at most.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kvs.replication.actions import Action, Apply, SendState
from kvs.replication.adapter import Replicator
from kvs.replication.codec import Codec, Message, Presence
from kvs.replication.sync import SKEW
from tests.sim import CLUSTER, KEY, Cluster, Replica, covers, state


@dataclass
class Recorded:
    topic: str
    payload: bytes
    at: float  # when it was first published (simulated seconds)
    message: Message  # what it says (the adversary reads it; it cannot sign one)

    def presence(self, up: bool) -> bool:
        return isinstance(self.message.body, Presence) and self.message.body.up == up


@dataclass
class Adversary:
    """Records what the broker carries; publishes it again when told (or at random)."""

    cluster: Cluster
    rng: random.Random
    messages: list[Recorded] = field(default_factory=list)
    first: dict[bytes, float] = field(default_factory=dict)  # payload -> first published
    replayed: int = 0

    def __post_init__(self) -> None:
        self.cluster.broker.taps.append(self._record)
        self._reader = Codec(CLUSTER, "adversary", KEY)

    def _record(self, topic: str, payload: bytes) -> None:
        if payload not in self.first:
            self.first[payload] = self.cluster.now
            self.messages.append(Recorded(topic, payload, self.cluster.now, self._reader.decode(payload)))

    def replay(self, message: Recorded, retain: bool = False) -> None:
        if self.cluster.broker.up:
            self.replayed += 1
            self.cluster.broker.carry(None, message.topic, message.payload, retain)

    def replay_some(self, count: int) -> None:
        """`count` recorded messages picked at random, presences retained half the time."""
        for _ in range(count):
            if self.messages:
                message = self.rng.choice(self.messages)
                self.replay(message, retain="/peers/" in message.topic and self.rng.random() < 0.5)

    def replay_all(self, which: Callable[[Recorded], bool], last: bool = False) -> None:
        """Every recorded message `which` picks (or the last of them); presences retained."""
        picked = [m for m in self.messages if which(m)]
        for message in picked[-1:] if last else picked:
            self.replay(message, retain="/peers/" in message.topic)

    def every(self, start: float, stop: float, period: float, count: int) -> None:
        """Replays `count` random messages every `period` s (one timer at a time)."""

        def again(at: float) -> None:
            self.replay_some(count)
            if at + period < stop:
                self.cluster.after(period, lambda: again(at + period))

        self.cluster.after(start, lambda: again(start))


def witnessed(adversary: Adversary) -> type[Replicator]:
    """A Replicator class whose runs report, as violations of `adversary.cluster`, any old message
    (seen by this run already, or published before it started) their core joined or answered."""
    cluster = adversary.cluster

    class Witnessed(Replicator):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            self._born = cluster.now
            self._seen: set[bytes] = set()
            self._old: str = ""  # the old message being handled, if one is

        def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
            seen = payload in self._seen
            self._seen.add(payload)
            before = adversary.first.get(payload, math.inf) < self._born - SKEW
            self._old = "seen already" if seen else "published before this run" if before else ""
            try:
                super().on_message(topic, payload, retained)
            finally:
                self._old = ""

        def _run(self, actions: Sequence[Action]) -> None:
            if self._old:
                self._judge(actions)
            super()._run(actions)

        def _judge(self, actions: Sequence[Action]) -> None:
            for action in actions:
                if isinstance(action, SendState):
                    cluster.violations.append(
                        f"{self.node_id} at {cluster.now:.2f} s answered a message {self._old}"
                    )
                elif isinstance(action, Apply):
                    held = state(self._store)
                    if not all(covers(held, f) for f in action.fragments):
                        cluster.violations.append(
                            f"{self.node_id} at {cluster.now:.2f} s joined a message {self._old}"
                        )

    return Witnessed


def leave(replica: Replica) -> None:
    """The replica stops cleanly (its Presence down) and does not come back."""
    replica.alive = False
    if replica.replicator is not None:
        replica.cluster.loop.create_task(replica.replicator.stop())
