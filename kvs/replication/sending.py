"""What a server sends a peer that asks: its recent batches again, or pages of its state. Pure.

A peer that noticed a batch number skipped asks for the batches since; a server
keeps its recent batches (`Kept`, bounded) so that it can send exactly those.
When they are gone, or the peer asks for buckets, the state of those buckets
is read a page at a time (fresh queries: writes go on between two pages).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Final

from kvs.replication.codec import weight_of
from kvs.storage.store import Fragment, Store, bucket_of

KEPT: Final = 16 * 1024 * 1024
"""Characters of its recent batches a server keeps, to send again to a peer that lost some."""
PAGE_KEYS: Final = 500
"""Keys read per page of a transfer."""


class Kept:
    """Our recent batches by number, up to `limit` characters of keys and values."""

    def __init__(self, limit: int = KEPT) -> None:
        self._limit = limit
        self._batches: deque[tuple[int, list[Fragment], int]] = deque()  # (seq, fragments, weight)
        self._weight = 0

    def add(self, seq: int, fragments: list[Fragment]) -> None:
        weight = sum(weight_of(fragment) for fragment in fragments)
        self._batches.append((seq, fragments, weight))
        self._weight += weight
        while self._weight > self._limit:
            self._weight -= self._batches.popleft()[2]

    def since(self, seq: int) -> list[Fragment] | None:
        """Our batches from number `seq` on, if we still keep them all (else None)."""
        if not seq or not self._batches or self._batches[0][0] > seq:
            return None
        return [fragment for number, batch, _ in self._batches if number >= seq for fragment in batch]


def state_pages(store: Store, buckets: frozenset[int] | None) -> Iterator[Fragment]:
    """The state of `buckets` (None: all), a page of keys at a time."""
    after = ""
    while buckets != frozenset() and (page := store.export_page(after, PAGE_KEYS)):
        yield from (f for f in page if buckets is None or bucket_of(f.key) in buckets)
        after = page[-1].key
