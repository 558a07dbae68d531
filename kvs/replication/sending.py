"""What a server sends: which of its batches it publishes, and what it sends a peer that asks
(its recent batches again, or pages of its state). No IO but the store's reads.

A batch is published unless the write window is full (the broker has not
acknowledged WRITE_WINDOW of them, or AWAY_WINDOW while it is away): then it is
kept but not published, and its number is skipped; the peers notice the gap and
ask. A peer that noticed a batch number skipped asks for the batches since; a
server keeps its recent batches (`Kept`, bounded) so that it can send exactly
those. When they are gone, or the peer asks for buckets, the state of those
buckets is read a page at a time (fresh queries: writes go on between two pages).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Final

from kvs.replication.actions import SendState
from kvs.replication.codec import batch_fragments
from kvs.storage.store import Fragment, Store, Version, bucket_of, resume_at

WRITE_WINDOW: Final = 1_000
"""Our batches the broker may leave unacknowledged; past it a batch is not published (its number
is skipped, and the peers ask for it again)."""
AWAY_WINDOW: Final = 100
"""The same while the broker is away (the MQTT client holds them until it is back)."""

KEPT: Final = 16 * 1024 * 1024
"""Bytes of memory a server's recent batches may take, kept to send again to a peer that lost some:
as the payloads it published (about 1.1 times their keys and values), not as Python objects (2 to 3
times), each counted with BATCH_OVERHEAD."""
BATCH_OVERHEAD: Final = 128
"""Bytes a kept batch takes beyond its payload: the bytes object's header, its entry, its number."""
PAGE: Final = 256 * 1024
"""Characters of keys and values read per page of a transfer (a long history comes in pieces)."""


class Kept:
    """Our recent batches by number, as their payloads, up to `limit` bytes of memory.

    Held as the bytes published, not as `Fragment`s: half the memory, and nothing the garbage
    collector tracks (it walked every kept `Fragment` in each full collection: with 131,000 of them,
    pauses of 20 to 60 ms every server took now and then under writes, issue 17)."""

    def __init__(self, limit: int = KEPT) -> None:
        self._limit = limit
        self._batches: deque[tuple[int, bytes]] = deque()  # (seq, payload)
        self._weight = 0

    def add(self, seq: int, payload: bytes) -> None:
        self._batches.append((seq, payload))
        self._weight += len(payload) + BATCH_OVERHEAD
        while self._weight > self._limit:
            self._weight -= len(self._batches.popleft()[1]) + BATCH_OVERHEAD

    def since(self, seq: int, late: int = 0) -> Iterator[Fragment] | None:
        """Our batches from number `seq` on, if we still keep them all (else None), decoded one at a
        time as they are read, without their versions older than `late`: history, which may hold
        versions deleted since by a floor that is forgotten now (kvs/replication/horizon.py); our
        state, sent when asked, holds what is current."""
        if not seq or not self._batches or self._batches[0][0] > seq:
            return None
        payloads = [payload for number, payload in self._batches if number >= seq]  # as of now
        fragments = (fragment for payload in payloads for fragment in batch_fragments(payload))
        if not late:
            return fragments
        return (f for f in map(partial(_newer, late=late), fragments) if f.floor or f.versions)


def _newer(fragment: Fragment, late: int) -> Fragment:
    if all(ver >= late for ver, _ in fragment.versions):
        return fragment
    return Fragment(fragment.key, fragment.floor, tuple(v for v in fragment.versions if v[0] >= late))


def state_pages(store: Store, buckets: frozenset[int] | None) -> Iterator[Fragment]:
    """The state of `buckets` (None: all), a page of about PAGE characters at a time."""
    for page in state_by_page(store, buckets):
        yield from page


def state_by_page(store: Store, buckets: frozenset[int] | None) -> Iterator[list[Fragment]]:
    """The same, page by page: each page read is one step, even when none of its keys is in `buckets`
    (a sender pauses in between: a repair of one bucket reads every page of the store)."""
    after: tuple[str, Version] = ("", -1)
    while buckets != frozenset() and (page := store.export_after(*after, PAGE)):
        yield [f for f in page if buckets is None or bucket_of(f.key) in buckets]
        after = resume_at(page[-1])


class Outbox:
    """Our batches: numbered (by the sync core's `next_seq`), kept, and published unless the write
    window is full."""

    def __init__(self, next_seq: Callable[[], int], kept: Kept | None = None) -> None:
        self._next_seq = next_seq
        self._kept = kept or Kept()

    def batch(self, in_flight: int, connected: bool) -> tuple[int, bool]:
        """Numbers a batch, given the writes the broker has not acknowledged and whether it is
        connected; returns its number and whether to publish it (keep it either way: `keep`)."""
        return self._next_seq(), in_flight < (WRITE_WINDOW if connected else AWAY_WINDOW)

    def keep(self, seq: int, payload: bytes) -> None:
        """Keeps batch `seq`'s payload, to send its fragments again to a peer that asks."""
        self._kept.add(seq, payload)

    def state(
        self, send: SendState, store: Store, late: int = 0
    ) -> tuple[Iterable[Iterable[Fragment]], bool]:
        """What to send for `send`, in pages, and whether that is our kept batches again (else pages of
        our state); `late`: the horizon, under which kept batches' versions are not sent again
        (`Kept.since`)."""
        kept = self._kept.since(send.since, late)
        return ([kept], True) if kept is not None else (state_by_page(store, send.buckets), False)
