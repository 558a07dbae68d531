"""The guarantees of docs/replication.md over many simulated schedules (tests/sim.py).

Each test runs seeded schedules of faults through the real adapter, core and
store; a failure names its seed, and `Cluster(seed)` replays it exactly. The
last tests break the core, and the adapter, on purpose and check that the
simulation notices: a simulation that cannot fail proves nothing.
"""

from __future__ import annotations

import pytest

from kvs.replication.actions import Action
from kvs.replication.adapter import Replicator
from kvs.replication.sync import Sync
from tests.sim import Cluster, Faults

SEEDS = range(40)


def lossy_life(
    seed: int, sync_class: type[Sync] = Sync, replicator_class: type[Replicator] = Replicator
) -> Cluster:
    """Three replicas through lost, duplicated and reordered messages, a broker restart, a crash
    (with or without a disk) and a partition; then the faults stop."""
    cluster = Cluster(seed, sync_class=sync_class, replicator_class=replicator_class)
    rng = cluster.random
    cluster.faults = Faults(drop=0.1, duplicate=0.1, reorder=0.2, write_window_full=0.05)
    for i, replica in enumerate(cluster.replicas.values()):
        cluster.after(0.3 * i, replica.start)
    cluster.writes(1.0, 25.0, every=0.05)
    cluster.after(rng.uniform(3, 20), lambda: cluster.broker.restart(rng.uniform(0.5, 8)))
    victim = cluster.replicas[rng.choice(["r1", "r2", "r3"])]
    crash_at, disk = rng.uniform(3, 20), rng.random() < 0.5
    cluster.after(crash_at, victim.crash)
    cluster.after(crash_at + rng.uniform(0.5, 6), lambda: victim.start(disk=disk))
    cut = cluster.replicas[rng.choice(["r1", "r2", "r3"])]
    cut_at = rng.uniform(3, 20)
    cluster.after(cut_at, lambda: cut.partition(True))
    cluster.after(cut_at + rng.uniform(1, 10), lambda: cut.partition(False))
    cluster.after(30.0, lambda: setattr(cluster, "faults", Faults()))
    cluster.run_until(70.0)
    cluster.close()
    return cluster


@pytest.mark.parametrize("seed", SEEDS)
def test_replicas_converge_and_keep_every_acknowledged_write_whatever_the_faults(seed: int) -> None:
    cluster = lossy_life(seed)
    assert cluster.violations == [], f"seed {seed}"
    assert cluster.converged(), f"seed {seed}: digests differ 40 s after the faults stopped"
    assert cluster.missing() == [], f"seed {seed}"
    assert all(r.serving for r in cluster.replicas.values())


def joiner_after_broker_restart(seed: int, sync_class: type[Sync] = Sync) -> Cluster:
    """Two replicas with data; the broker restarts empty; a third starts while they reconnect."""
    cluster = Cluster(seed, sync_class=sync_class)
    rng = cluster.random
    r1, r2, r3 = cluster.replicas.values()
    r1.start()
    cluster.after(0.2, r2.start)
    cluster.writes(1.0, 8.0, every=0.02, keys=40)
    cluster.after(9.0, lambda: cluster.broker.restart(rng.uniform(0.2, 6)))
    cluster.after(rng.uniform(9.1, 16), r3.start)
    cluster.run_until(40.0)
    cluster.close()
    return cluster


@pytest.mark.parametrize("seed", SEEDS)
def test_a_joiner_right_after_a_broker_restart_serves_only_with_its_peers_state(seed: int) -> None:
    cluster = joiner_after_broker_restart(seed)
    assert cluster.violations == [], f"seed {seed}"
    assert cluster.replicas["r3"].serving, f"seed {seed}: r3 never served"
    assert cluster.converged()


def long_outage_under_writes(seed: int, sync_class: type[Sync] = Sync) -> Cluster:
    """Writes at full rate everywhere; the broker is down 20 s; writes go on 15 s after it is back."""
    cluster = Cluster(seed, sync_class=sync_class)
    cluster.faults = Faults(write_window_full=0.02)
    for replica in cluster.replicas.values():
        replica.start()
    cluster.writes(1.0, 45.0, every=0.01, keys=60)
    cluster.after(10.0, lambda: cluster.broker.restart(20.0))
    cluster.run_until(40.0)  # 10 s after the broker came back, writes still going
    cluster.close()
    return cluster


def lost_after_return(cluster: Cluster) -> list[str]:
    """Writes lost on the way (to full write windows) that are still missing 1 s later."""
    return cluster.missing(before=39.0)


@pytest.mark.parametrize("seed", SEEDS[:15])
def test_lost_batches_are_repaired_within_10_s_of_the_broker_return_while_writes_go_on(seed: int) -> None:
    cluster = long_outage_under_writes(seed)
    assert cluster.missing(before=30.0) == [], f"seed {seed}: lost during the outage"
    assert lost_after_return(cluster) == [], f"seed {seed}: lost since"


def slow_readers(seed: int) -> Cluster:
    """Two replicas under writes; a third reads everything 15 s after the broker sends it, from its
    start (a process starved of CPU, or holding back what it cannot join yet: more than the 12 sync
    intervals a message may be old); a fourth joins at 10 s reading 20 s behind."""
    cluster = Cluster(seed, size=4)
    rng = cluster.random
    r1, r2, r3, r4 = cluster.replicas.values()
    r3.lag, r4.lag = 15.0, 20.0
    for i, replica in enumerate((r1, r2, r3)):
        cluster.after(0.2 * i, replica.start)
    cluster.after(rng.uniform(8, 12), r4.start)
    cluster.writes(1.0, 30.0, every=0.01, keys=200)
    cluster.run_until(80.0)
    cluster.close()
    return cluster


@pytest.mark.parametrize("seed", SEEDS[:10])
def test_replicas_that_read_far_behind_serve_and_converge_without_asking_again_and_again(seed: int) -> None:
    cluster = slow_readers(seed)
    assert cluster.violations == [], f"seed {seed}"
    assert all(r.serving for r in cluster.replicas.values()), f"seed {seed}: a slow reader never served"
    assert cluster.converged(), f"seed {seed}"
    assert cluster.missing() == [], f"seed {seed}"


# The simulation has teeth: each deliberate bug below breaks one guarantee, and it is caught:
# two in the core, one in the adapter.


class ServesWithoutSettling(Sync):
    """Trusts the retained presences at once, even from a broker that just restarted."""

    def __init__(self, node_id: str, interval: float = 1.0, epoch: int = 0) -> None:
        super().__init__(node_id, interval, epoch=epoch, settle=0.0)


class IgnoresSkippedBatches(Sync):
    """Never asks for a lost batch: only the periodic digests repair."""

    def _batch_seen(
        self, origin: str, seq: int, now: float, ours: tuple[int, ...], received: bool = True
    ) -> list[Action]:
        self.peers[origin].next_batch = seq + 1
        return []


def test_the_simulation_catches_a_joiner_that_does_not_wait_for_the_broker_to_settle() -> None:
    caught = any(joiner_after_broker_restart(s, ServesWithoutSettling).violations for s in range(20))
    assert caught, "no schedule noticed the early SERVING"


def test_the_simulation_catches_a_core_that_ignores_skipped_batch_numbers() -> None:
    caught = any(lost_after_return(long_outage_under_writes(s, IgnoresSkippedBatches)) for s in range(5))
    assert caught, "no schedule noticed the lost batches"


class NeverReportsASentTransfer(Replicator):
    """Never tells its core that a transfer ended: the core holds every later request to that peer."""

    def _sent(self, peer: str) -> None:
        pass


def test_the_simulation_catches_an_adapter_that_never_reports_a_finished_transfer() -> None:
    caught = any(lossy_life(s, replicator_class=NeverReportsASentTransfer).missing() for s in range(5))
    assert caught, "no schedule noticed the requests left unanswered"
