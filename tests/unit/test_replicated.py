"""The write path (kvs.service.replicated): what is published, and large operations in slices."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st

from kvs.service.replicated import (
    DELETE_PAGE,
    SLICE_ROWS,
    STEP_SECONDS,
    ReplicatedStore,
    Slices,
    join_in_slices,
)
from kvs.storage.store import Entry, Fragment, Store, Written
from tests.clock import Clock
from tests.state import everything, state_of
from tests.strategies import fragments

T = TypeVar("T")


R = TypeVar("R")


class Recorder:
    """A publish function and a `Commits` that record what they saw, in order."""

    def __init__(self) -> None:
        self.events: list[object] = []

    def publish(self, batch: Sequence[Fragment]) -> None:
        self.events.append(list(batch))

    @property
    def settled(self) -> bool:
        return False  # so that every write awaits durable(), which is recorded

    async def durable(self) -> None:
        self.events.append("durable")

    async def ahead(self, items: AsyncIterator[R], size: Callable[[R], int]) -> AsyncIterator[list[R]]:
        async for item in items:
            yield [item]


def replicated(clock: Clock | None = None) -> tuple[ReplicatedStore, Recorder]:
    recorder = Recorder()
    return ReplicatedStore(Store(clock or Clock()), recorder.publish, recorder), recorder


async def collect(items: AsyncIterator[T]) -> list[T]:
    return [item async for item in items]


def test_each_write_is_published_then_made_durable_before_it_returns() -> None:
    rs, seen = replicated()

    async def run() -> None:
        assert await rs.put("k", "v") == Written("k", "", 0, 1000)
        assert await rs.trim("k") == Entry("k", "v", 1000)
        assert await rs.delete("k") == Entry("k", "v", 1000)
        assert await rs.delete("k") == Entry("k", "", 0)  # nothing to delete: nothing published

    asyncio.run(run())
    assert seen.events == [
        [Fragment("k", versions=((1000, "v"),))],
        "durable",
        [Fragment("k", floor=1000)],
        "durable",
        [Fragment("k", floor=1001)],
        "durable",
    ]


def test_without_commits_writes_return_at_once() -> None:
    published: list[Sequence[Fragment]] = []
    rs = ReplicatedStore(Store(Clock()), published.append)
    assert asyncio.run(rs.put("k", "v")).ver == 1000
    assert published == [(Fragment("k", versions=((1000, "v"),)),)]


def test_delete_range_pages_publish_what_each_deleted() -> None:
    rs, seen = replicated()
    keys = [f"k{i:05}" for i in range(DELETE_PAGE + 7)]

    async def run() -> list[Entry]:
        for key in keys:
            await rs.put(key, "v")
        seen.events.clear()
        return await collect(rs.delete_range("k", "l"))

    deleted = asyncio.run(run())
    assert [entry.key for entry in deleted] == keys
    assert seen.events == [
        [Fragment(key, floor=1001) for key in keys[:DELETE_PAGE]],
        "durable",
        [Fragment(key, floor=1001) for key in keys[DELETE_PAGE:]],
        "durable",
    ]
    assert rs.store.key_count() == 0


def test_delete_range_leaves_out_a_key_deleted_by_someone_else_meanwhile() -> None:
    rs, _ = replicated()
    keys = [f"k{i:05}" for i in range(DELETE_PAGE * 2)]
    gone = keys[DELETE_PAGE + 3]

    async def run() -> list[Entry]:
        for key in keys:
            await rs.put(key, "v")
        replies = []
        async for entry in rs.delete_range("k", "l"):
            replies.append(entry)
            if len(replies) == 1:  # the second page is not listed yet
                assert await rs.delete(gone) == Entry(gone, "v", 1000)
        return replies

    assert [entry.key for entry in asyncio.run(run())] == [key for key in keys if key != gone]


def test_trim_of_a_long_history_keeps_exactly_the_newest_and_the_digest() -> None:
    clock = Clock()
    rs, seen = replicated(clock)
    versions = 5_000

    async def run() -> Entry:
        for _ in range(versions):
            await rs.put("k", "v")  # same millisecond: versions 1000, 1001, ...
        await rs.put("other", "x")
        seen.events.clear()
        return await rs.trim("k")

    newest = 1000 + versions - 1
    assert asyncio.run(run()) == Entry("k", "v", newest)
    assert seen.events == [[Fragment("k", floor=newest)], "durable"]
    assert everything(rs.store) == [
        Fragment("k", newest, ((newest, "v"),)),
        Fragment("other", 0, ((1000, "x"),)),
    ]
    # The digest equals that of a store that was given this state in one step.
    assert state_of(everything(rs.store))[1] == rs.store.digest()


def test_reads_between_the_slices_of_a_trim_see_before_or_after() -> None:
    rs, _ = replicated()

    async def reader(stop: asyncio.Event, seen: list[Entry]) -> None:
        while not stop.is_set():
            seen.append(rs.get("k", 1500))
            await asyncio.sleep(0)

    async def run() -> list[Entry]:
        for _ in range(3_000):
            await rs.put("k", "v")
        stop, seen = asyncio.Event(), list[Entry]()
        task = asyncio.ensure_future(reader(stop, seen))
        await asyncio.sleep(0)
        await rs.trim("k")
        stop.set()
        await task
        return seen

    seen = asyncio.run(run())
    assert len(seen) >= 2  # the trim let the reader in between its slices
    assert set(seen) <= {Entry("k", "v", 1500), Entry("k", "", 1500)}
    assert seen[-1] == Entry("k", "", 1500)


@settings(deadline=None)  # one event loop per example: slow on a busy machine
@given(st.lists(fragments), st.integers(min_value=1, max_value=4))
def test_join_in_slices_equals_one_join(batch: list[Fragment], rows: int) -> None:
    store = Store(lambda: 1)
    asyncio.run(join_in_slices(store, batch, rows))
    assert (everything(store), store.digest()) == state_of(batch)


def test_join_in_slices_of_a_floor_over_a_long_history() -> None:
    store = Store(lambda: 1)
    history = [Fragment("k", versions=tuple((ver, "v") for ver in range(1, 5_001)))]
    asyncio.run(join_in_slices(store, history, rows=100))
    asyncio.run(join_in_slices(store, [Fragment("k", floor=5_000)], rows=100))
    assert (everything(store), store.digest()) == state_of(history, [Fragment("k", floor=5_000)])


def test_slices_span_calls_and_equal_one_join() -> None:
    """Slices keeps one budget across its calls: 300 joins of one small fragment each pause about every
    SLICE_ROWS rows (a fragment of one version is 2), and the result is one join's."""
    store = Store(lambda: 1)
    slices = Slices(store, lambda: 0.0)  # a clock that stands still: only rows count
    batch = [Fragment(f"k{i:03}", 0, ((i + 1, "v"),)) for i in range(300)]

    async def run() -> None:
        for fragment in batch:
            await slices.join([fragment])

    asyncio.run(run())
    assert slices.pauses == 300 * 2 // SLICE_ROWS
    assert (everything(store), store.digest()) == state_of(batch)


def test_slices_pause_once_the_time_is_up_whatever_the_rows() -> None:
    store = Store(lambda: 1)
    now = [0.0]
    slices = Slices(store, lambda: now[0])

    async def run() -> None:
        for i in range(10):
            await slices.join([Fragment(f"k{i}", 0, ((1, "v"),))])
            now[0] += STEP_SECONDS  # each join "took" a whole step

    asyncio.run(run())
    assert slices.pauses == 9  # each join but the first found the step used up
