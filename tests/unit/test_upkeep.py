"""The quota's decisions and the retention sweep (kvs.service.upkeep)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kvs.errors import QuotaExceeded
from kvs.service.replicated import RETIRED_INLINE, SLICE_ROWS, ReplicatedStore
from kvs.service.upkeep import Quota, Retention, Upkeep
from kvs.storage.store import Fragment, Store
from tests.clock import Clock


class Report:
    def __init__(self) -> None:
        self.over: list[bool] = []
        self.dropped = 0
        self.purged = 0

    def tombstones_purged(self, floors: int) -> None:
        self.purged += floors

    def over_quota(self, over: bool) -> None:
        self.over.append(over)

    def retention_dropped(self, versions: int) -> None:
        self.dropped += versions


def test_the_quota_refuses_past_it_and_says_what_to_do(caplog: pytest.LogCaptureFixture) -> None:
    report = Report()
    quota = Quota(1000, report)
    quota.admit(1000)  # at the quota: still in
    caplog.set_level(logging.INFO)
    with pytest.raises(QuotaExceeded) as refused:
        quota.admit(1001)
    assert "over its quota" in str(refused.value)
    assert "delete or trim keys" in str(refused.value)
    assert "--quota-bytes" in str(refused.value)
    quota.check(999)
    quota.admit(999)
    assert report.over == [True, False]
    assert [r.message.split(" (")[0] for r in caplog.records] == ["over the quota", "back under the quota"]


def test_once_over_writes_wait_for_the_check_that_sees_it_under() -> None:
    quota = Quota(1000)
    with pytest.raises(QuotaExceeded):
        quota.admit(2000)
    with pytest.raises(QuotaExceeded):
        quota.admit(900)  # under again, but not yet seen by a check: at most TICK later
    quota.check(900)
    quota.admit(900)
    quota.check(5000)  # replication pushed it over
    assert quota.over


def test_a_put_past_the_quota_changes_nothing_and_deletes_still_work() -> None:
    async def run() -> None:
        published: list[list[Fragment]] = []
        store = Store(Clock())
        quota = Quota(100)
        replicated = ReplicatedStore(store, lambda f: published.append(list(f)), quota=quota)
        await replicated.put("k", "v" * 100)  # 109 bytes: this one is in, and the store is over
        with pytest.raises(QuotaExceeded):
            await replicated.put("j", "v")
        assert store.get("j").ver == 0
        assert len(published) == 1
        await replicated.delete("k")
        store.join([Fragment("peer", 0, ((5, "x" * 500),))])  # replication is still applied
        assert store.get("peer").val == "x" * 500

    asyncio.run(run())


def test_a_sweep_drops_a_long_history_in_slices_and_publishes_the_floors() -> None:
    async def run() -> None:
        clock = Clock(1000)
        published: list[list[Fragment]] = []
        store = Store(clock)
        for i in range(3 * SLICE_ROWS):
            clock.now = 1000 + i
            store.put("long", str(i))
        store.put("short", "only")
        report = Report()
        upkeep = Upkeep(
            ReplicatedStore(store, lambda f: published.append(list(f))),
            clock,
            Quota(10**9),
            Retention(keep=10, age_ms=60_000),
            report,
        )
        assert await upkeep.sweep() == 3 * SLICE_ROWS - 10
        assert report.dropped == 3 * SLICE_ROWS - 10
        assert published == [[Fragment("long", floor=1000 + 3 * SLICE_ROWS - 10)]]
        clock.now = 1000 + 3 * SLICE_ROWS + 60_000  # every version of "long" but the newest is old now
        assert await upkeep.sweep() == 9
        assert store.get("long", 1000 + 3 * SLICE_ROWS - 2).ver == 1000 + 3 * SLICE_ROWS - 2  # echoed: gone
        assert store.get("short").val == "only"  # the newest always stays
        assert await upkeep.sweep() == 0
        assert len(published) == 2

    asyncio.run(run())


def test_a_sweep_counts_what_a_floor_raise_drops_with_it() -> None:
    """A key with few old versions has them dropped by its floor raise itself (the steady state under
    retention, kvs.service.replicated.RETIRED_INLINE); they count as dropped all the same."""

    async def run() -> None:
        clock = Clock(1000)
        store = Store(clock)
        for key, count in (("few", 3), ("more", RETIRED_INLINE + 3), ("one", 1)):
            for i in range(count):
                clock.now = 1000 + i
                store.put(key, str(i))
        report = Report()
        upkeep = Upkeep(
            ReplicatedStore(store, lambda f: None), clock, Quota(10**9), Retention(None, 1000), report
        )
        clock.now = 10_000
        assert await upkeep.sweep() == 2 + RETIRED_INLINE + 2
        assert report.dropped == 2 + RETIRED_INLINE + 2
        assert store.stats().versions == 3  # the newest of each

    asyncio.run(run())
