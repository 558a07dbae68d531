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
from typing import Final

from kvs.replication.actions import SendState
from kvs.replication.codec import weight_of
from kvs.storage.store import Fragment, Store, Version, bucket_of, resume_at

WRITE_WINDOW: Final = 1_000
"""Our batches the broker may leave unacknowledged; past it a batch is not published (its number
is skipped, and the peers ask for it again)."""
AWAY_WINDOW: Final = 100
"""The same while the broker is away (the MQTT client holds them until it is back)."""

KEPT: Final = 16 * 1024 * 1024
"""Characters of its recent batches a server keeps, to send again to a peer that lost some."""
PAGE: Final = 256 * 1024
"""Characters of keys and values read per page of a transfer (a long history comes in pieces)."""


_Plain = tuple[str, int, tuple[tuple[int, str], ...]]
"""A fragment as plain tuples (key, floor, versions)."""


class Kept:
    """Our recent batches by number, up to `limit` characters of keys and values.

    Held as plain tuples, not `Fragment`s: the garbage collector stops tracking a tuple of strings,
    numbers and such tuples, while it walks every `Fragment` in each full collection. Up to 131,000
    kept fragments made each full collection 20 to 60 ms long, a pause every server takes now and
    then under writes (issue 17)."""

    def __init__(self, limit: int = KEPT) -> None:
        self._limit = limit
        self._batches: deque[tuple[int, tuple[_Plain, ...], int]] = deque()  # (seq, fragments, weight)
        self._weight = 0

    def add(self, seq: int, fragments: list[Fragment], weight: int | None = None) -> None:
        """Keeps batch `seq`; `weight`, if known, is the sum of its fragments' `weight_of`."""
        if weight is None:
            weight = sum(weight_of(fragment) for fragment in fragments)
        plain = tuple((f.key, f.floor, f.versions) for f in fragments)
        self._batches.append((seq, plain, weight))
        self._weight += weight
        while self._weight > self._limit:
            self._weight -= self._batches.popleft()[2]

    def since(self, seq: int) -> list[Fragment] | None:
        """Our batches from number `seq` on, if we still keep them all (else None)."""
        if not seq or not self._batches or self._batches[0][0] > seq:
            return None
        return [Fragment(*plain) for number, batch, _ in self._batches if number >= seq for plain in batch]


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

    def batch(
        self, fragments: list[Fragment], in_flight: int, connected: bool, weight: int | None = None
    ) -> tuple[int, bool]:
        """Numbers and keeps a batch (of `weight`, if known), given the writes the broker has not
        acknowledged and whether it is connected; returns its number and whether to publish it."""
        seq = self._next_seq()
        self._kept.add(seq, fragments, weight)
        return seq, in_flight < (WRITE_WINDOW if connected else AWAY_WINDOW)

    def state(self, send: SendState, store: Store) -> tuple[Iterable[list[Fragment]], bool]:
        """What to send for `send`, in pages, and whether that is our kept batches again (else pages of
        our state)."""
        kept = self._kept.since(send.since)
        return ([kept], True) if kept is not None else (state_by_page(store, send.buckets), False)
