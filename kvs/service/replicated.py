"""The write path: a store whose every accepted mutation is published, in bounded steps.

`ReplicatedStore` wraps `Store` for the gRPC service. Each write method applies
the mutation and hands its fragments to `publish` in the same step (no await in
between), so replication sees writes in the order the store accepted them and
no caller can forget to publish. Then, if a `Commits` is given, it waits until
the write is durable (group commit, --data-dir) before it returns.

Bounded work (docs/contract.md, guarantee 8): nothing here holds the event loop for long.
Every write, and every entry a read or a DelRange yields, checks how long the
loop has gone without a pause; after `STEP_SECONDS` it pauses
(`await asyncio.sleep(0)`), so other calls are served in between. That also
covers a long PutAll or DelAll, whose messages gRPC may hand over without ever
suspending the handler. Large operations on the store run in slices of about
`SLICE_ROWS` rows, with a pause in between:

- DelRange deletes a page of keys at a time and replies with exactly the keys
  that page deleted (a key someone else deleted first is not in the reply).
- Del and Trim of a key with a long history first drop its old versions,
  oldest first, a slice at a time; the store's own delete or trim then has
  little left to do. Oldest first means a read in between gets either the
  answer from before the change or the one after it.
- `Slices` applies peers' batches and transfers the same way, with one budget
  across them (the replicator's work queue): a peer's PutAll arrives as
  thousands of small batches, which must not all be joined in one turn.
- Reads of a range come from a keyset cursor, a page at a time, so a stream
  that is not read holds one page.

Like the store, it runs on the event loop thread only (kvs.server).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Final, Protocol, TypeVar

from kvs.storage.store import Entry, Fragment, Store, Version, Written

Publish = Callable[[Sequence[Fragment]], None]
"""Takes the fragments of an accepted mutation for replication."""

SLICE_ROWS: Final = 200
"""Rows changed per step of a large operation: 2 to 4 ms of work (about 15 µs a row)."""
PAGE_KEYS: Final = 500
"""Keys read per query of a range read (about 5 µs a key)."""
DELETE_PAGE: Final = 100
"""Keys deleted per step of a DelRange (about 30 µs a key)."""
RETENTION_KEYS: Final = 200
"""Keys looked at per step of a retention sweep (about 6 µs a key)."""
RETIRED_INLINE: Final = 4
"""Versions of a key a sweep's floor raise drops with it (at most RETENTION_KEYS times this a step);
a key with more under its new floor is dropped first, a slice at a time."""
STEP_SECONDS: Final = 0.002
"""How long a call may hold the event loop before it lets the others in."""


R = TypeVar("R")


async def _one_by_one(requests: AsyncIterator[R]) -> AsyncIterator[list[R]]:
    async for request in requests:
        yield [request]


class Admission(Protocol):
    """Decides whether a client write may go in (kvs.service.upkeep.Quota)."""

    def admit(self, size: int) -> None: ...


class Commits(Protocol):
    """Makes accepted writes durable (kvs.storage.durable.GroupCommit): `durable()` returns once every write
    so far is; `ahead()` groups a stream's requests so that one commit answers several."""

    async def durable(self) -> None: ...

    @property
    def settled(self) -> bool:
        """Every write so far is durable and none failed: `durable()` would return at once."""
        ...

    def ahead(self, items: AsyncIterator[R], size: Callable[[R], int]) -> AsyncIterator[list[R]]: ...


async def _pause() -> None:
    """Lets the event loop serve other calls between two slices."""
    await asyncio.sleep(0)


class _Pacer:
    """Pauses the calling task once STEP_SECONDS have gone by since the last pause.

    One per ReplicatedStore, shared by its callers: whichever runs when the
    time is up lets the others in. A pause that was not needed costs one turn
    of the loop.
    """

    def __init__(self) -> None:
        self._since = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self._since >= STEP_SECONDS

    async def pause(self) -> None:
        await _pause()
        self._since = time.monotonic()

    async def step(self) -> None:
        if self.due():
            await self.pause()


class ReplicatedStore:
    """`Store`'s reads, and its writes published and done in bounded steps."""

    def __init__(
        self, store: Store, publish: Publish, commits: Commits | None = None, quota: Admission | None = None
    ) -> None:
        self.store = store
        self._publish = publish
        self._commits = commits
        self._quota = quota
        self._pacer = _Pacer()

    # Reads -------------------------------------------------------------------

    def get(self, key: str, at: Version | None = None) -> Entry:
        return self.store.get(key, at)

    async def get_range(self, fr: str, to: str, at: Version | None = None) -> AsyncIterator[Entry]:
        """`Store.get_range`, read a page at a time (a page may see writes the previous did not)."""
        after = ""
        while page := self.store.range_page(fr, to, at, after, PAGE_KEYS):
            for entry in page:
                await self._pacer.step()
                yield entry
            after = page[-1].key

    async def get_many(self, keys: Sequence[str], at: Version | None = None) -> AsyncIterator[Entry]:
        """`get` of each key in order."""
        for key in keys:
            await self._pacer.step()
            yield self.store.get(key, at)

    async def pace(self) -> None:
        """Lets other calls in if the loop has gone STEP_SECONDS without a pause (for loops that
        read many requests)."""
        await self._pacer.step()

    # Writes ------------------------------------------------------------------

    async def put(self, key: str, val: str, wait: bool = True) -> Written:
        """Store `val` under a new version; `wait` False: the caller awaits `durable()` itself.

        Refused (QuotaExceeded) while the store is over its quota (kvs.service.upkeep)."""
        if self._quota is not None:
            self._quota.admit(self.store.size)
        written, fragment = self.store.put(key, val)
        self._publish((fragment,))
        # The hot path of Put and PutAll: no coroutine is made unless it is needed.
        if wait and self._commits is not None and not self._commits.settled:
            await self._commits.durable()
        if self._pacer.due():
            await self._pacer.pause()
        return written

    async def delete(self, key: str, wait: bool = True) -> Entry:
        """Remove every version; returns the newest removed, or (key, "", 0). `wait`: as for `put`."""
        await self._shed(key)
        removed, fragment = self.store.delete(key)
        if fragment:
            self._publish((fragment,))
            if wait:
                await self._durable()
        await self._pacer.step()
        return removed

    async def delete_range(self, fr: str, to: str) -> AsyncIterator[Entry]:
        """Delete every existing key with fr <= key <= to, a page at a time; yields what was deleted.

        Each page is published and made durable before its entries are yielded.
        """
        after = ""
        while keys := self.store.keys(fr, to, after, DELETE_PAGE):
            after = keys[-1]
            done = self.store.delete_keys(keys)
            if done:
                self._publish([fragment for _, fragment in done])
                await self._durable()
            for removed, _ in done:
                await self._pacer.step()
                yield removed
            await _pause()

    async def trim(self, key: str) -> Entry:
        """Remove every version but the newest; returns the newest, or (key, "", 0)."""
        await self._shed(key)
        kept, fragment = self.store.trim(key)
        if fragment:
            self._publish((fragment,))
            await self._durable()
        await self._pacer.step()
        return kept

    async def retire(self, keep: int | None, cut: Callable[[], Version] | None) -> int:
        """Raises the floors retention asks for (`Store.retention_page`), over every key, a page at a
        time, and publishes them; returns how many versions went. `cut()`: the version before which
        versions may go (read for each page: the clock moves during a long sweep).

        A key's old versions are dropped oldest first, a slice at a time, before its floor rises:
        a backlog of a million versions costs no reader more than a slice's wait. A key with at
        most RETIRED_INLINE of them (the steady state: each Put retires about one) has them dropped
        by the floor raise itself, which halves the sweep's cost per version.
        """
        after, dropped = "", 0
        while bounds := self.store.retention_page(after, RETENTION_KEYS, keep, cut() if cut else None):
            after = bounds[-1].key
            wanted = [bound for bound in bounds if bound.floor]
            for key, floor in wanted:
                if not self.store.holds_more(key, floor, RETIRED_INLINE):
                    continue  # the floor raise drops them: one statement, not three and a commit
                while (count := self.store.drop_below(key, floor, SLICE_ROWS)) == SLICE_ROWS:
                    dropped += count
                    await _pause()
                dropped += count
            before = self.store.floor_drops
            if fragments := self.store.raise_floors(wanted):
                self._publish(fragments)
            dropped += self.store.floor_drops - before
            await _pause()
        return dropped

    @property
    def settled(self) -> bool:
        """Every write so far is durable (always, in memory): `durable()` would return at once."""
        return self._commits is None or self._commits.settled

    async def durable(self) -> None:
        """Returns once every write so far is durable (kvs.storage.durable; at once in memory)."""
        await self._durable()

    def ahead(self, requests: AsyncIterator[R], size: Callable[[R], int]) -> AsyncIterator[list[R]]:
        """A stream's requests in groups of those already received, so that one commit answers a
        group (kvs.storage.durable); one by one in memory."""
        return self._commits.ahead(requests, size) if self._commits is not None else _one_by_one(requests)

    # Internals ---------------------------------------------------------------

    async def _durable(self) -> None:
        if self._commits is not None:
            await self._commits.durable()

    async def _shed(self, key: str) -> None:
        """Drop every version of `key` but the newest, a slice at a time (see the module doc)."""
        newest = self.store.get(key)
        while newest.ver and self.store.drop_below(key, newest.ver, SLICE_ROWS) == SLICE_ROWS:
            await _pause()


class Slices:
    """Applies peers' fragments (`join`) and other replication work in slices that span calls: a pause
    once SLICE_ROWS rows were changed or `step_seconds` went by since the last pause, whichever
    comes first, however the work is split into calls.

    A replica applies a peer's PutAll as thousands of small batches: a budget per batch would never
    run out, and the whole queue would be joined in one turn of the loop (issue 17: a Get on the
    replica waited 1 s). `clock` gives seconds (the replicator's, simulated in tests/sim.py).
    """

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float],
        rows: int = SLICE_ROWS,
        step_seconds: float = STEP_SECONDS,
    ) -> None:
        self._store = store
        self._clock = clock
        self._rows = rows
        self._step = step_seconds
        self._budget = rows
        self._since = clock()
        self.pauses = 0
        """How many times it let the loop serve others (tests count them)."""

    def spend(self, rows: int) -> None:
        """Counts `rows` of work done outside `join` against the current slice."""
        self._budget -= rows

    def due(self) -> bool:
        """Whether the current slice is used up (rows or time)."""
        return self._budget <= 0 or self._clock() - self._since >= self._step

    async def step(self) -> None:
        """Pauses if the current slice is used up."""
        if self.due():
            await self.pause()

    async def pause(self) -> None:
        await _pause()
        self.pauses += 1
        self._budget = self._rows
        self._since = self._clock()

    async def join(self, fragments: Iterable[Fragment], late: Version = 0) -> None:
        """`store.join(fragments, late)`, in slices (see `join_in_slices`)."""
        store = self._store
        batch: list[Fragment] = []
        for fragment in fragments:
            if fragment.floor > 0:
                while (dropped := store.drop_below(fragment.key, fragment.floor, max(self._budget, 1))) > 0:
                    self._budget -= dropped
                    if self._budget > 0:
                        break  # fewer than asked: none left below the floor
                    self._join(batch, late)
                    batch = []
                    await self.pause()
            versions = fragment.versions
            floor = fragment.floor
            while True:
                take = max(self._budget, 1)
                piece, versions = versions[:take], versions[take:]
                batch.append(Fragment(fragment.key, floor, piece))
                floor = 0  # raised by the first piece already
                self._budget -= len(piece) + 1
                if self.due():
                    self._join(batch, late)
                    batch = []
                    await self.pause()
                if not versions:
                    break
        self._join(batch, late)

    def _join(self, batch: list[Fragment], late: Version) -> None:
        if batch:
            self._store.join(batch, late)


async def join_in_slices(store: Store, fragments: Iterable[Fragment], rows: int = SLICE_ROWS) -> None:
    """`store.join(fragments)` in steps of about `rows` rows, pausing in between.

    The result equals one join: the join is associative and commutative, a
    fragment's versions may be joined in pieces, and dropping the versions under
    a floor before raising it is part of what raising it does.
    """
    await Slices(store, time.monotonic, rows, step_seconds=float("inf")).join(fragments)


async def purge_in_slices(store: Store, cut: Version, rows: int = SLICE_ROWS) -> int:
    """Forgets every floor below `cut` (`Store.purge_page`), a slice at a time; returns how many."""
    after: str | None = ""
    purged = 0
    while after is not None:
        after, count = store.purge_page(cut, after, rows)
        purged += count
        await _pause()
    return purged


async def set_aside_in_slices(store: Store, cut: Version, rows: int = SLICE_ROWS) -> int:
    """Moves every version older than `cut` aside (`Store.set_aside`), a slice at a time; returns how many."""
    after: str | None = ""
    moved = 0
    while after is not None:
        after, count = store.set_aside(cut, after, rows)
        moved += count
        await _pause()
    return moved


async def settle_in_slices(store: Store, restore: bool, rows: int = SLICE_ROWS) -> int:
    """Empties the versions set aside (`Store.settle_doubt`), a slice at a time; returns how many were
    dropped that the store does not hold now (0 when `restore`d)."""
    lost = 0
    while (taken := store.settle_doubt(restore, rows))[0]:
        lost += taken[1]
        await _pause()
    return lost
