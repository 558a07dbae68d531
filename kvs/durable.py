"""Group commit: a write is acknowledged only once it is committed to disk.

The store runs on the event loop (kvs.server). On disk, the first write of a
turn of the loop opens a transaction (kvs.store calls `_opened`), which
schedules one COMMIT with `loop.call_soon`: that runs after every callback
already ready in this turn, so all the writes the loop accepted meanwhile
(gRPC calls, batches and transfers from peers) share one commit. A writer
awaits `durable()` after its store call and before its reply; every waiter of
the turn resumes after the COMMIT.

    turn n:   Put a -> BEGIN, call_soon(commit)   Put b   batch from a peer   (all in the transaction)
    turn n+1: COMMIT (with the digest)  -> Put a and Put b reply

In memory there is nothing to wait for: `durable()` returns at once and the
store commits each change itself, as before.

A COMMIT that fails (disk full, I/O error) leaves the store's view and the
disk apart: the waiters get `NotDurable` (the client sees UNAVAILABLE, the
write was not acknowledged) and `on_failure` stops the server.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable

from kvs.errors import NotDurable
from kvs.store import Store

log = logging.getLogger("kvs.durable")


class GroupCommit:
    """Commits the writes of each turn of the loop together; `durable()` waits for it."""

    def __init__(self, store: Store, on_failure: Callable[[], None] = lambda: None) -> None:
        self._store = store
        self._on_failure = on_failure
        self._pending: asyncio.Future[None] | None = None
        self._failed = False
        self.commits = 0
        """How many group commits ran (the Admin status and the tests read it)."""
        if store.on_disk:
            self._loop = asyncio.get_running_loop()
            store.defer_commits(self._opened)

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
        assert pending is not None
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
