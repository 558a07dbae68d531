"""The batches a server keeps to send again (kvs.replication.sending.Kept): out of the garbage
collector's way, and given back as they were."""

from __future__ import annotations

import gc

from kvs.replication.sending import Kept
from kvs.storage.store import Fragment


def batches(count: int) -> list[list[Fragment]]:
    return [
        [Fragment(f"k{seq:05}-{i}", 0, ((1_000 + seq, "v" * 100),)) for i in range(10)]
        for seq in range(count)
    ]


def test_kept_batches_come_back_as_they_went_in() -> None:
    kept, sent = Kept(), batches(50)
    for seq, batch in enumerate(sent, 1):
        kept.add(seq, batch)
    assert kept.since(41) == [fragment for batch in sent[40:] for fragment in batch]
    assert kept.since(1) == [fragment for batch in sent for fragment in batch]


def test_kept_batches_are_not_walked_by_the_garbage_collector() -> None:
    """A full collection walks every object the collector tracks: 131,000 kept fragments made each one
    20 to 60 ms long (issue 17). Kept holds plain tuples, which the collector stops tracking."""
    kept = Kept()
    for _ in range(3):
        gc.collect()
    before = len(gc.get_objects())
    sent = batches(1_000)  # 10,000 fragments
    for seq, batch in enumerate(sent, 1):
        kept.add(seq, batch)
    del sent, batch
    for _ in range(3):  # each collection untracks one more level of nested tuples
        gc.collect()
    assert len(gc.get_objects()) - before < 100
    assert len(kept.since(1) or []) == 10_000
