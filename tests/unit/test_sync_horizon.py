"""--tombstone-ttl over simulated schedules (tests/sim.py, tests/sim_horizon.py): deletions, tombstones
forgotten, replicas cut off or stopped within and past the horizon, a backup restored; then two cores
broken on purpose, which the simulation must catch."""

from __future__ import annotations

import pytest

from kvs.replication.actions import Action
from kvs.replication.horizon import Horizon as Rule
from kvs.replication.sync import Sync
from kvs.storage.store import Store
from tests.sim import Cluster, Faults, Replica
from tests.sim_horizon import Horizon
from tests.state import everything

SEEDS = range(12)
TTL_MS = 8000
"""Eight sync intervals: a floor a replica missed reaches it well within the horizon (two digest rounds
and a transfer), as in production with the default 5 s interval and a TTL of minutes or more."""


def absences(seed: int, sync_class: type[Sync] = Sync, early: float = 1.0, skew: int = 0) -> Horizon:
    """Three replicas under writes and deletes, with lossy messages: one cut off within the horizon,
    one cut off past it, one stopped past it (with or without its disk)."""
    cluster = Cluster(seed, sync_class=sync_class)
    rng = cluster.random
    horizon = Horizon(cluster, TTL_MS, skew_ms={"r2": skew}, early=early)
    horizon.start()
    cluster.faults = Faults(drop=0.05, duplicate=0.05, reorder=0.1, write_window_full=0.02)
    replicas = list(cluster.replicas.values())
    for i, replica in enumerate(replicas):
        cluster.after(0.3 * i, replica.start)
    cluster.writes(1.0, 50.0, every=0.05, keys=60)

    def cut(replica: Replica, at: float, length: float) -> None:
        horizon.away(replica, at, at + length)
        cluster.after(at, lambda: replica.partition(True))
        cluster.after(at + length, lambda: replica.partition(False))

    cut(rng.choice(replicas), rng.uniform(2, 4), rng.uniform(0.5, 6))  # within the horizon
    cut(rng.choice(replicas), rng.uniform(11, 14), rng.uniform(10, 16))  # past it
    stopped, at, length, disk = (
        rng.choice(replicas),
        rng.uniform(32, 36),
        rng.uniform(9, 14),
        rng.random() < 0.5,
    )
    horizon.away(stopped, at, at + length)
    cluster.after(at, stopped.crash)
    cluster.after(at + length, lambda: start(horizon, stopped, disk))
    cluster.after(55.0, lambda: setattr(cluster, "faults", Faults()))
    cluster.run_until(90.0)
    cluster.close()
    return horizon


def start(horizon: Horizon, replica: Replica, disk: bool) -> None:
    if not disk:
        horizon.forget_memory(replica)
    replica.start(disk=disk)


def restored_backup(seed: int, sync_class: type[Sync] = Sync) -> Horizon:
    """A replica's store is replaced by a copy taken 20 s (past the horizon) before it stopped."""
    cluster = Cluster(seed, sync_class=sync_class)
    rng = cluster.random
    horizon = Horizon(cluster, TTL_MS)
    horizon.start()
    for i, replica in enumerate(cluster.replicas.values()):
        cluster.after(0.3 * i, replica.start)
    cluster.writes(1.0, 45.0, every=0.05, keys=60)
    r3 = cluster.replicas["r3"]
    copy = Store(cluster.clock_ms)

    def back_up() -> None:
        copy.join(everything(r3.store))
        copy.touch(r3.store.touched)

    def restore() -> None:
        r3.store = copy
        r3.start(disk=True)

    cluster.after(rng.uniform(4, 6), back_up)
    stop = rng.uniform(24, 26)
    cluster.after(stop, r3.crash)
    cluster.after(stop + rng.uniform(0.5, 2), restore)
    cluster.run_until(70.0)
    cluster.close()
    return horizon


def assert_kept(horizon: Horizon, seed: int) -> None:
    cluster = horizon.cluster
    assert cluster.violations == [], f"seed {seed}"
    assert horizon.came_back() == [], f"seed {seed}"
    assert horizon.reappeared() == [], f"seed {seed}"
    assert horizon.lost() == [], f"seed {seed}"
    assert cluster.converged(), f"seed {seed}: digests differ 30 s after the faults stopped"
    assert horizon.purged > 0, f"seed {seed}: no tombstone was forgotten"


@pytest.mark.parametrize("seed", SEEDS)
def test_no_deleted_key_comes_back_and_nothing_within_the_horizon_is_lost(seed: int) -> None:
    assert_kept(absences(seed), seed)


@pytest.mark.parametrize("seed", range(6))
def test_a_restored_old_backup_brings_no_deleted_key_back(seed: int) -> None:
    assert_kept(restored_backup(seed), seed)


def test_replicas_whose_clocks_differ_by_seconds_forget_tombstones_without_repairs() -> None:
    """--tombstone-ttl 60s, r2's clock 3 s ahead of the others': no repair is started (with every
    digest compared, 6 to 8 were in these schedules, and some never converged with 4 s)."""
    for seed in range(1):
        cluster = Cluster(seed)
        horizon = Horizon(cluster, 60_000, skew_ms={"r2": 3000})
        horizon.start()
        for i, replica in enumerate(cluster.replicas.values()):
            cluster.after(0.3 * i, replica.start)
        cluster.writes(1.0, 40.0, every=0.05, keys=60)
        cluster.run_until(150.0)
        cluster.close()
        assert horizon.purged > 0, f"seed {seed}"
        assert cluster.converged(), f"seed {seed}"
        assert horizon.repairs == 0, f"seed {seed}"


class ReturnsWithoutTheAwayRule(Sync):
    """Back from an absence past the horizon, pushes back what it holds (no `SetAside`)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.horizon = NeverInDoubt()


class NeverInDoubt(Rule):
    def touch(self, wall_ms: int) -> list[Action]:
        self.touched_ms = wall_ms
        return []


class TakesLateMessages(Sync):
    """Joins a late batch's old versions like any other."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.horizon = NoLateCut()


class NoLateCut(Rule):
    def late(self, wall_ms: int, sent_ms: int = 0, batch: bool = True) -> int:
        return 0


def caught(schedule: Horizon) -> bool:
    return bool(
        schedule.cluster.violations or schedule.came_back() or schedule.reappeared() or schedule.lost()
    )


def test_the_simulation_catches_a_core_that_returns_without_the_away_rule() -> None:
    assert any(caught(absences(seed, ReturnsWithoutTheAwayRule)) for seed in range(10))
    assert any(caught(restored_backup(seed, ReturnsWithoutTheAwayRule)) for seed in range(10))


def test_the_simulation_catches_a_core_that_takes_late_messages() -> None:
    assert any(caught(absences(seed, TakesLateMessages)) for seed in range(10))


def test_the_simulation_catches_tombstones_forgotten_too_early() -> None:
    assert any(caught(absences(seed, early=0.3)) for seed in range(10))
