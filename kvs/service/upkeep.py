"""Growth over time: the space quota, retention, and giving freed pages back (docs/operations.md).

`Quota` decides whether client writes are admitted: past `--quota-bytes` of
`Store.size` (keys and values, replicated ones included), Put and PutAll are
refused with QuotaExceeded (RESOURCE_EXHAUSTED); every other call, and
replication, goes on. Going over is noticed by the write that finds it (or by
the next tick, when replication pushed the store over); coming back under by
the next tick, so writes resume within a second of the store being under the
quota, by themselves, and the log says each change once.

`Upkeep` runs on the event loop (the store's thread, kvs/server/main.py):
every TICK seconds it checks the quota and, with --data-dir, gives free pages
back to the file system; every RETENTION_EVERY seconds, with --keep-versions
or --retention, it sweeps every key (`ReplicatedStore.retire`, in slices) and
raises the floors retention asks for. Those floor raises are fragments like
any other, published, so replicas agree through the join; each floor is one of
the key's own versions, so replicas holding the same versions compute the same
floor (docs/replication.md, "Retention").
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Final, Protocol

from kvs.errors import QuotaExceeded
from kvs.service.replicated import ReplicatedStore, purge_in_slices
from kvs.storage.store import Clock, tombstone_cut
from kvs.units import format_duration, format_size

log = logging.getLogger(__name__)

TICK: Final = 1.0
"""Seconds between quota checks (writes resume at most this long after the store is back under)."""
RETENTION_EVERY: Final = 5.0
"""Seconds from the start of one retention sweep to the start of the next (or its end, if later)."""
VACUUM_PAGES: Final = 128
"""Free pages (4 KiB each) given back to the file system per step: 2 to 4 ms."""
VACUUM_FROM: Final = 1024
"""Free pages a file keeps for reuse before any is given back (4 MiB)."""


class QuotaReport(Protocol):
    """What the quota tells the metrics (kvs.metrics.Metrics)."""

    def over_quota(self, over: bool) -> None: ...


class Quota:
    """Admits client writes while the store is within `limit` bytes (`Store.size`)."""

    def __init__(self, limit: int, report: QuotaReport | None = None) -> None:
        self.limit = limit
        self.over = False
        self._report = report

    def admit(self, size: int) -> None:
        """Raises QuotaExceeded if a client write must be refused now."""
        if not self.over:
            if size <= self.limit:
                return
            self._change(True, size)
        raise QuotaExceeded(
            f"the store is over its quota: it holds {format_size(size)} of keys and values and"
            f" --quota-bytes is {format_size(self.limit)}. Put and PutAll are refused until it is"
            " back under (reads, Del, DelRange, DelAll and Trim work): delete or trim keys, or restart"
            " the servers with --keep-versions, --retention or a larger --quota-bytes"
        )

    def check(self, size: int) -> None:
        """Notices the store coming back under the quota (or going over through replication)."""
        if self.over != (size > self.limit):
            self._change(not self.over, size)

    def _change(self, over: bool, size: int) -> None:
        self.over = over
        where = f"{format_size(size)} of keys and values, --quota-bytes {format_size(self.limit)}"
        if over:
            log.warning("over the quota (%s): Put and PutAll refused until it is back under", where)
        else:
            log.info("back under the quota (%s): Put and PutAll accepted again", where)
        if self._report is not None:
            self._report.over_quota(over)


@dataclass(frozen=True)
class Retention:
    """What each key keeps: at most `keep` versions; none older than `age_ms` but its newest; and the
    floor of a deleted key until it is `tombstone_ms` old."""

    keep: int | None = None
    age_ms: int | None = None
    tombstone_ms: int | None = None

    def __bool__(self) -> bool:
        return self.keep is not None or self.age_ms is not None

    def __str__(self) -> str:
        parts = [f"--keep-versions {self.keep}"] if self.keep else []
        parts += [f"--retention {format_duration(self.age_ms)}"] if self.age_ms else []
        parts += [f"--tombstone-ttl {format_duration(self.tombstone_ms)}"] if self.tombstone_ms else []
        return ", ".join(parts) or "off"

    def tombstone_cut(self, now_ms: int) -> int:
        """The floors of deleted keys below this are forgotten now (0: never): `tombstone_cut`."""
        return tombstone_cut(now_ms, self.tombstone_ms) if self.tombstone_ms else 0


class RetentionReport(Protocol):
    def retention_dropped(self, versions: int) -> None: ...
    def tombstones_purged(self, floors: int) -> None: ...


class Upkeep:
    """The quota's ticks, retention sweeps and freed pages, on the event loop."""

    def __init__(
        self,
        store: ReplicatedStore,
        clock: Clock,
        quota: Quota,
        retention: Retention = Retention(),
        report: RetentionReport | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self.quota = quota
        self.retention = retention
        self._report = report
        self._task: asyncio.Task[None] | None = None
        self.sweeps = 0
        """Retention sweeps completed (tests wait for them)."""
        self._purged_to = 0  # the tombstone cut of the last purge

    def start(self) -> None:
        self.quota.check(self._store.store.size)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def __aenter__(self) -> Upkeep:
        self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        next_sweep = time.monotonic()
        while True:
            try:
                self.quota.check(self._store.store.size)
                await self._purge()
                await self._give_back()
                if self.retention and time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + RETENTION_EVERY
                    await self.sweep()
                    self.quota.check(self._store.store.size)
            except asyncio.CancelledError:
                raise
            except Exception:  # the next tick tries again; the server goes on
                log.exception("upkeep failed (tried again in %s s)", TICK)
            await asyncio.sleep(TICK)

    async def sweep(self) -> int:
        """One retention sweep over every key; returns the versions it dropped."""
        age = self.retention.age_ms
        dropped = await self._store.retire(
            self.retention.keep, (lambda: self._clock() - age) if age is not None else None
        )
        self.sweeps += 1
        if dropped and self._report is not None:
            self._report.retention_dropped(dropped)
        return dropped

    async def _purge(self) -> None:
        """--tombstone-ttl: once the cut moves to the next grid step, forgets the tombstones below it."""
        cut = self.retention.tombstone_cut(self._clock())
        if cut > self._purged_to:
            self._purged_to = cut
            purged = await purge_in_slices(self._store.store, cut)
            if purged and self._report is not None:
                self._report.tombstones_purged(purged)

    async def _give_back(self) -> None:
        """With --data-dir: free pages beyond VACUUM_FROM go back to the file system, a step at a time."""
        store = self._store.store
        gave = False
        while store.free_pages() > VACUUM_FROM and store.give_back(VACUUM_PAGES):
            gave = True
            await asyncio.sleep(0)
        if gave:
            store.checkpoint()  # the file shrinks when the WAL is copied back into it
