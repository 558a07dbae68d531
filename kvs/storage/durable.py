"""Group commit: a write is acknowledged only once it is committed to disk.

The store runs on the event loop (kvs.server). On disk, the first write of a
turn of the loop opens a transaction (kvs.storage.store calls `_opened`), which
schedules one COMMIT with `loop.call_soon`: that runs after every callback
already ready in this turn, so all the writes the loop accepted meanwhile
(gRPC calls, batches and transfers from peers) share one commit. A writer
awaits `durable()` after its store call and before its reply; every waiter of
the turn resumes after the COMMIT.

    turn n:   Put a -> BEGIN, call_soon(commit)   Put b   batch from a peer   (all in the transaction)
    turn n+1: COMMIT (with the digest)  -> Put a and Put b reply

In memory there is nothing to wait for: `durable()` returns at once and the
store commits each change itself, as before.

Checkpoints (copying the WAL into the database file, with an fsync of the
file) would otherwise run inside a COMMIT every thousand pages, blocking the
loop for milliseconds. Here a worker thread does them, on a connection of its
own, after CHECKPOINT_COMMITS commits or CHECKPOINT_EVERY seconds of writes;
SQLite lets a checkpoint run beside a writer. Frames committed meanwhile are
copied by a short checkpoint on the loop between transactions (about 1 ms
with its fsync), so that the next write starts the WAL from the beginning
again instead of growing it: under constant writes it stays near 12 MB.

A stream (PutAll, DelAll) would pay a commit per request, since each reply
waits for its commit and the next request is read only after that reply. On
disk, `ahead()` reads a stream's requests on a task of its own while the
handler waits, so the handler takes, each time, every request that has
arrived (up to AHEAD_ITEMS and AHEAD_BYTES): one commit answers them all.

A COMMIT that fails (disk full, I/O error) leaves the store's view and the
disk apart: the waiters get `NotDurable` (the client sees UNAVAILABLE, the
write was not acknowledged) and `on_failure` stops the server.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from typing import Final, Generic, TypeVar

from kvs.errors import NotDurable
from kvs.storage.store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")

CHECKPOINT_EVERY: Final = 1.0
"""Seconds between background checkpoints while writes go on..."""
CHECKPOINT_COMMITS: Final = 250
"""...or commits, whichever comes first: a commit writes two 4 KiB pages or more, so the
WAL holds some 2 MB or more before it is copied (SQLite alone checkpoints at 4 MB)."""
AHEAD_ITEMS: Final = 256
AHEAD_BYTES: Final = 1 << 20
"""What a stream's read-ahead holds at most: requests, and their bytes (`ahead`)."""


class GroupCommit:
    """Commits the writes of each turn of the loop together; `durable()` waits for it."""

    def __init__(self, store: Store, on_failure: Callable[[], None] = lambda: None) -> None:
        self._store = store
        self._on_failure = on_failure
        self._pending: asyncio.Future[None] | None = None
        self._failed = False
        self.commits = 0
        """How many group commits ran (tests and checkpoints read it)."""
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpointing: asyncio.Future[None] | None = None
        if store.path is not None:
            self._loop = asyncio.get_running_loop()
            self._last_checkpoint = self._loop.time()
            self._last_checkpoint_commits = 0
            self._checkpointer = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
            store.defer_commits(self._opened)

    async def close(self) -> None:
        """Commits what is pending, waits for a running checkpoint and closes its connection.

        Call it before the store closes."""
        if not self._failed:
            self._commit()
        if self._checkpointing is not None:
            await asyncio.wait([self._checkpointing])
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None

    async def ahead(self, items: AsyncIterator[T], size: Callable[[T], int]) -> AsyncIterator[list[T]]:
        """A stream's items, in groups of those already received; one by one in memory.

        The items come in order; whatever ended the stream early (a broken or
        refused request) is raised after the items received before it.
        """
        if self._checkpointer is None:
            async for item in items:
                yield [item]
            return
        ahead = _Ahead(items, size)
        try:
            while group := await ahead.take():
                yield group
            await ahead.reader  # raises what ended the stream, if anything did
        finally:
            ahead.reader.cancel()

    @property
    def settled(self) -> bool:
        """No commit is pending and none failed (always, in memory): `durable()` would return at once."""
        return self._pending is None and not self._failed

    async def durable(self) -> None:
        """Returns once every change made so far is committed (at once in memory)."""
        if self._failed:
            raise NotDurable("the store could not commit to disk; this server is stopping")
        if self._pending is not None:
            # shield: a cancelled caller must not cancel the commit the others wait for.
            await asyncio.shield(self._pending)

    def _opened(self) -> None:
        # Called by the store when a write opens a transaction: commit it after this turn.
        if self._pending is None:
            self._pending = self._loop.create_future()
            self._loop.call_soon(self._commit)

    def _commit(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return  # already done (by close)
        try:
            self._store.commit()
        except sqlite3.Error as error:
            log.critical("commit to %s failed: %s; stopping", self._store.path, error)
            self._failed = True
            pending.set_exception(NotDurable(f"commit failed: {error}"))
            pending.exception()  # retrieved here, so no waiter-less future logs it again
            self._on_failure()
            return
        self.commits += 1
        pending.set_result(None)
        due = (
            self.commits - self._last_checkpoint_commits >= CHECKPOINT_COMMITS
            or self._loop.time() - self._last_checkpoint >= CHECKPOINT_EVERY
        )
        if self._checkpointing is None and due:
            self._last_checkpoint_commits = self.commits
            self._checkpointing = self._loop.run_in_executor(None, self._checkpoint)
            self._checkpointing.add_done_callback(self._checkpointed)

    def _checkpoint(self) -> None:
        # A worker thread: the sqlite3 module releases the GIL while SQLite works.
        if self._checkpointer is not None:
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _checkpointed(self, done: asyncio.Future[None]) -> None:
        self._checkpointing = None
        if self._checkpointer is None:
            return  # closed meanwhile
        self._last_checkpoint = self._loop.time()
        try:
            done.result()
            self._store.checkpoint()  # the frames committed meanwhile: few, if any
        except sqlite3.Error as error:
            log.warning("checkpoint of %s failed (retried later): %s", self._store.path, error)


class _Ahead(Generic[T]):
    """Reads `items` into a buffer on a task of its own, holding a bounded amount."""

    def __init__(self, items: AsyncIterator[T], size: Callable[[T], int]) -> None:
        self._items = items
        self._size = size
        self._buffer: list[T] = []
        self._held = 0  # bytes in the buffer
        self._ended = False
        self._arrived = asyncio.Event()  # an item, or the end
        self._taken = asyncio.Event()  # room in the buffer again
        self.reader = asyncio.ensure_future(self._read())

    async def take(self) -> list[T]:
        """Every item received so far (waiting for one); [] once the stream has ended."""
        while not self._buffer:
            if self._ended:
                return []
            self._arrived.clear()
            await self._arrived.wait()
        group, self._buffer, self._held = self._buffer, [], 0
        self._taken.set()
        return group

    async def _read(self) -> None:
        try:
            async for item in self._items:
                self._buffer.append(item)
                self._held += self._size(item)
                self._arrived.set()
                while self._held >= AHEAD_BYTES or len(self._buffer) >= AHEAD_ITEMS:
                    self._taken.clear()
                    await self._taken.wait()
        finally:
            self._ended = True
            self._arrived.set()
