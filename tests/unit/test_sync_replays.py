"""docs/security.md's "Replays and clocks" over seeded schedules of the simulated
cluster (tests/sim.py) with an adversary that records every message and publishes any of them again
later (tests/sim_replay.py): across restarts of senders and receivers, after a sender left. No
replay may make a server serve early, change a store, be answered with state, or hold a joiner back
more than one sync interval (SKEW more in the one case docs/security.md names); two weakened cores
show that the schedules notice.
"""

from __future__ import annotations

import random

import pytest

from kvs.replication.codec import Digest
from kvs.replication.peers import Peer
from kvs.replication.sync import SKEW, Sync
from tests.sim import Cluster, Replica
from tests.sim_replay import Adversary, Recorded, leave, witnessed

SEEDS = range(30)
SLACK = 0.3
"""Seconds a join may take beyond the sync interval: messages and polls in the simulation."""


def replay_life(seed: int, sync_class: type[Sync] = Sync) -> tuple[Cluster, Adversary, float]:
    """Three replicas under writes; one crashes and starts again (with or without its disk), one leaves
    for good, two join later; all the while the adversary replays what it recorded, and at the worst
    moments: requests and transfers right after a restart, the presence of the one that left and the
    earlier run's presence of the one that restarted right before each joiner starts."""
    cluster = Cluster(seed, size=5, interval=1.0, sync_class=sync_class)
    adversary = Adversary(cluster, random.Random(seed + 1_000))
    cluster.replicator_class = witnessed(adversary)
    rng = cluster.random
    r1, r2, r3, r4, r5 = cluster.replicas.values()
    for i, replica in enumerate((r1, r2, r3)):
        cluster.after(0.2 * i, replica.start)
    cluster.writes(1.0, 30.0, every=0.05, keys=30)
    adversary.every(2.0, 40.0, period=0.37, count=3)
    # The receiver restarts: every request and transfer recorded so far, replayed as it comes back.
    crash = rng.uniform(4, 8)
    back = crash + rng.uniform(0.5, 2)
    cluster.after(crash, r2.crash)
    cluster.after(back, lambda: r2.start(disk=rng.random() < 0.5))
    kinds = lambda m: "/to/" in m.topic or isinstance(m.message.body, Digest)  # noqa: E731
    cluster.after(back + rng.uniform(0.01, 0.5), lambda: adversary.replay_all(kinds))
    # The sender leaves; its "up" presence is published again before each joiner starts.
    gone = rng.uniform(9, 12)
    cluster.after(gone, lambda: leave(r3))

    def before_joining() -> None:
        adversary.replay_all(lambda m: m.message.origin == "r3" and m.presence(up=True), last=True)
        earlier = r2_runs(adversary)
        if earlier:
            adversary.replay(earlier[rng.randrange(len(earlier))], retain=True)

    for joiner, at in ((r4, gone + rng.uniform(0.3, 8)), (r5, rng.uniform(20, 30))):
        cluster.after(at - 0.01, before_joining)
        cluster.after(at, joiner.start)
    cluster.after(rng.uniform(31, 36), lambda: adversary.replay_all(lambda m: True))  # everything
    cluster.run_until(45.0)
    cluster.close()
    return cluster, adversary, gone  # when r3 left


def r2_runs(adversary: Adversary) -> list[Recorded]:
    """r2's presences of its runs before the last."""
    ups = [m for m in adversary.messages if m.message.origin == "r2" and m.presence(up=True)]
    return [m for m in ups if ups and m.message.epoch != ups[-1].message.epoch]


def slow_joins(cluster: Cluster, left_at: float) -> list[str]:
    """Joins of the late replicas that took longer than one sync interval, or did not end. A joiner
    that subscribed within SKEW of r3 leaving may wait SKEW more: r3's messages of that time, which it
    never received, replayed one by one, show r3 alive as late as they were sent plus SKEW (a clock
    that far behind would send them now; docs/security.md, "Replays and clocks")."""
    late = [cluster.replicas[name] for name in ("r4", "r5")]

    def allowed(replica: Replica) -> float:
        return replica.interval + SLACK + (SKEW if replica.started_at - left_at < SKEW else 0.0)

    return [f"{r.name} never served" for r in late if not r.reports.joins] + [
        f"{r.name} took {took:.2f} s to serve, {r.started_at - left_at:.2f} s after r3 left"
        for r in late
        for took in r.reports.joins
        if took > allowed(r)
    ]


@pytest.mark.parametrize("seed", SEEDS)
def test_replays_at_any_time_change_nothing_and_hold_no_joiner_back(seed: int) -> None:
    cluster, adversary, left_at = replay_life(seed)
    assert adversary.replayed > 500
    assert cluster.violations == [], f"seed {seed}"
    assert slow_joins(cluster, left_at) == [], f"seed {seed}"
    assert all(cluster.replicas[name].serving for name in ("r1", "r2", "r4", "r5")), f"seed {seed}"
    assert cluster.converged(), f"seed {seed}"
    assert cluster.missing() == [], f"seed {seed}"


# The schedules have teeth: each weakened core below is caught.


class IgnoresTheSendersClock(Sync):
    """Takes any message its peers' records do not refuse, however old (no memory after a restart)."""

    def _stale(self, *args: object) -> str:
        return ""


class WaitsForSilentPeers(Sync):
    """Waits for every peer whose presence it saw until it answers, or is forgotten."""

    def _silent(self, peer: Peer, now: float) -> bool:
        return False


def test_the_replay_schedules_catch_a_core_that_ignores_the_senders_clock() -> None:
    caught = any(replay_life(s, IgnoresTheSendersClock)[0].violations for s in range(5))
    assert caught, "no schedule noticed the old messages taken"


def test_the_replay_schedules_catch_a_core_that_waits_for_peers_that_left() -> None:
    caught = any(slow_joins(*replay_life(s, WaitsForSilentPeers)[::2]) for s in range(5))
    assert caught, "no schedule noticed the joiner held back"
