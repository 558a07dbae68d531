"""The tombstone horizon (--tombstone-ttl) in the simulation of tests/sim.py: schedules with
deletions, forgotten tombstones and absences longer than the horizon, and the two promises of
docs/contract.md ("Growth over time"):

- A deleted key never comes back. Checked all along (`Horizon.watch`, `came_back`): a serving
  replica that once held a key's floor never holds a version under it again, even after it forgot
  the floor; and at the end, no replica holds a version under the floor of an acknowledged Del.
- Within the horizon nothing acknowledged is lost (`Horizon.lost`): every acknowledged write is on
  every live replica, or was deleted by a later acknowledged Del, or is a floor older than the horizon
  (forgotten); writes a replica accepted while cut off or stopped longer than the horizon may go.

Every replica forgets tombstones as kvs.service.upkeep does (a grid step at a time, by its own clock:
`skew_ms` sets it apart from the others), and the real core applies the away rule
(kvs/replication/horizon.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvs.service.upkeep import Retention
from kvs.storage.store import Fragment, Store
from tests.sim import Ack, Cluster, Replica, SimClock, state

CHECK_EVERY = 0.25
"""Simulated seconds between two looks at every serving replica."""
UNREPLICATED = 3.0
"""Seconds before an absence during which a write may not have reached any peer yet (lost messages)."""


class Skewed:
    """A replica's clock, `ms` ahead of the cluster's."""

    def __init__(self, clock: SimClock, ms: int) -> None:
        self._clock, self._ms = clock, ms

    def monotonic(self) -> float:
        return self._clock.monotonic()

    def wall_ms(self) -> int:
        return self._clock.wall_ms() + self._ms


@dataclass
class Horizon:
    """Tombstone expiry and the checks over one `Cluster`; `start()` before running it."""

    cluster: Cluster
    ttl_ms: int
    skew_ms: dict[str, int] = field(default_factory=dict)  # a replica's clock ahead of the others
    early: float = 1.0  # below 1: a broken purger, forgetting tombstones that much earlier
    excused: list[tuple[str, float, float]] = field(default_factory=list)  # (replica, from, to): may be lost
    seen: dict[str, dict[str, int]] = field(default_factory=dict)  # the highest floor each replica held
    under: list[tuple[str, str, int, int, float]] = field(default_factory=list)  # found by `watch`
    repairs: int = 0
    purged: int = 0

    def start(self) -> None:
        self.cluster.horizon_ms = self.ttl_ms
        self.cluster.check_serving = self.check_serving  # type: ignore[method-assign]
        for replica in self.cluster.replicas.values():
            replica.reports.repair_started = self._repaired  # type: ignore[method-assign]
            if skew := self.skew_ms.get(replica.name, 0):  # versions, purges and the core: its clock
                replica.clock = Skewed(self.cluster.clock, skew)
                replica.store = Store(replica.clock.wall_ms)
        self.cluster.after(CHECK_EVERY, self._tick)

    def check_serving(self, replica: Replica) -> None:
        """Guarantee 7 (`Cluster.check_serving`), less what the horizon lets go: floors older than it,
        and versions of a peer's snapshot that no peer holds now (deleted, under a forgotten floor)."""
        horizon = self.cluster.clock_ms() - self.ttl_ms
        held = {
            (f.key, ver)
            for r in self.cluster.replicas.values()
            if r.alive
            for f in state(r.store).values()
            for ver, _ in f.versions
        }
        saved = replica.snapshots
        replica.snapshots = {
            peer: {
                key: Fragment(
                    key,
                    f.floor if f.floor >= horizon else 0,
                    tuple(v for v in f.versions if v[0] >= horizon or (key, v[0]) in held),
                )
                for key, f in snapshot.items()
            }
            for peer, snapshot in saved.items()
        }
        Cluster.check_serving(self.cluster, replica)
        replica.snapshots = saved

    def _repaired(self, buckets: int) -> None:
        self.repairs += 1

    def away(self, replica: Replica, start: float, end: float) -> None:
        """`replica` is out of touch from `start` to `end`: past the horizon, what it accepted meanwhile
        may be dropped, and so may what it accepted just before and had not got to a peer yet (with
        lost messages, a batch may take a few sync intervals to arrive)."""
        if (end - start) * 1000 > self.ttl_ms:
            self.excused.append((replica.name, start - UNREPLICATED, end))

    def forget_memory(self, replica: Replica) -> None:
        """`replica` restarts empty, or from a copy: what it held before says nothing now."""
        self.seen.pop(replica.name, None)

    def _tick(self) -> None:
        retention = Retention(tombstone_ms=int(self.ttl_ms * self.early))
        for replica in self.cluster.replicas.values():
            if replica.alive:
                cut = retention.tombstone_cut(replica.clock.wall_ms())
                after: str | None = ""
                while after is not None:
                    after, count = replica.store.purge_page(cut, after, 500)
                    self.purged += count
        self.watch()
        self.cluster.after(CHECK_EVERY, self._tick)

    def watch(self) -> None:
        """Notes every version a serving replica holds under a floor it held before (it may have
        forgotten it since); `came_back` says which of those break the promise."""
        for replica in self.cluster.replicas.values():
            if not replica.serving:
                continue
            seen = self.seen.setdefault(replica.name, {})
            for fragment in state(replica.store).values():
                floor = seen.get(fragment.key, 0)
                if fragment.versions and fragment.versions[0][0] < floor:
                    ver = fragment.versions[0][0]
                    self.under.append((replica.name, fragment.key, ver, floor, self.cluster.now))
                seen[fragment.key] = max(floor, fragment.floor)

    def came_back(self) -> list[str]:
        """The versions `watch` found under a floor once held, but for floors of Dels that may be lost
        (`away`, and a replica that lost its memory before the Del went anywhere)."""
        excused = {(a.fragment.key, a.fragment.floor) for a in self.cluster.acknowledged if self._excused(a)}
        return [
            f"{name} holds {key}@{ver} at {at:.2f} s, under the floor {floor} it held: the key came back"
            for name, key, ver, floor, at in self.under
            if (key, floor) not in excused
        ]

    def _excused(self, ack: Ack) -> bool:
        return ack.replica.lost_at > ack.at or any(
            name == ack.replica.name and start <= ack.at <= end for name, start, end in self.excused
        )

    def reappeared(self) -> list[str]:
        """Versions on a live replica under the floor of an acknowledged Del (not one that may be lost)."""
        deletes = [a for a in self.cluster.acknowledged if not a.fragment.versions and not self._excused(a)]
        found = []
        for replica in self.cluster.replicas.values():
            if not replica.alive:
                continue
            held = state(replica.store)
            for ack in deletes:
                mine = held.get(ack.fragment.key)
                if mine and mine.versions and mine.versions[0][0] < ack.fragment.floor:
                    found.append(f"{replica.name} holds {mine.key}@{mine.versions[0][0]}, deleted by {ack}")
        return found

    def lost(self) -> list[str]:
        """Acknowledged writes missing from a live replica, beyond what the horizon lets go."""
        now_ms = self.cluster.clock_ms()
        floors: dict[str, list[int]] = {}
        for ack in self.cluster.acknowledged:  # any Del, even one that may be lost, may delete
            if not ack.fragment.versions:
                floors.setdefault(ack.fragment.key, []).append(ack.fragment.floor)
        missing = []
        for replica in self.cluster.replicas.values():
            if not replica.alive:
                continue
            held = state(replica.store)
            for ack in self.cluster.acknowledged:
                if self._excused(ack) or _kept(held, ack.fragment, floors, now_ms - self.ttl_ms):
                    continue
                missing.append(f"{replica.name} lacks {ack.fragment} (acknowledged by {ack.replica.name})")
        return missing


def _kept(held: dict[str, Fragment], fragment: Fragment, floors: dict[str, list[int]], horizon: int) -> bool:
    mine = held.get(fragment.key)
    floor = mine.floor if mine else 0
    if not fragment.versions:  # a Del: its floor is held, or old enough to be forgotten
        return floor >= fragment.floor or fragment.floor < horizon
    versions = dict(mine.versions) if mine else {}
    deleted = max(floors.get(fragment.key, [0]))  # a Del acknowledged later took it
    return all(
        ver < floor or ver < deleted or (ver in versions and versions[ver] >= val)
        for ver, val in fragment.versions
    )
