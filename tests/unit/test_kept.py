"""The batches a server keeps to send again (kvs.replication.sending.Kept): their payloads, out of
the garbage collector's way, bounded in bytes, and given back as they went in."""

from __future__ import annotations

import gc

from kvs.replication.codec import Codec
from kvs.replication.sending import Kept
from kvs.storage.store import Fragment

codec = Codec("kvs", "s1", b"k" * 32, epoch=77, clock=lambda: 1234)


def batches(count: int) -> list[list[Fragment]]:
    return [
        [Fragment(f"k{seq:05}-{i}", 0, ((1_000 + seq, "v" * 100),)) for i in range(10)]
        for seq in range(count)
    ]


def test_kept_batches_come_back_as_they_went_in() -> None:
    kept, sent = Kept(), batches(50)
    for seq, batch in enumerate(sent, 1):
        kept.add(seq, codec.batch(batch, seq))
    assert list(kept.since(41) or []) == [fragment for batch in sent[40:] for fragment in batch]
    assert list(kept.since(1) or []) == [fragment for batch in sent for fragment in batch]


def test_kept_batches_are_bounded_in_bytes_oldest_first() -> None:
    kept = Kept(limit=2000)
    sent = {seq: [Fragment(f"k{seq}", 0, ((seq, "v" * 100),))] for seq in range(1, 20)}
    for seq, fragments in sent.items():
        kept.add(seq, codec.batch(fragments, seq))
    assert kept.since(1) is None  # the oldest went: over 2,000 bytes of payloads and overheads
    assert list(kept.since(15) or []) == [f for seq in range(15, 20) for f in sent[seq]]


def test_kept_batches_are_not_walked_by_the_garbage_collector() -> None:
    """A full collection walks every object the collector tracks: 131,000 kept fragments made each one
    20 to 60 ms long (issue 17). Kept holds bytes, which the collector does not track."""
    kept = Kept()
    sent = [codec.batch(batch, seq) for seq, batch in enumerate(batches(1_000), 1)]  # 10,000 fragments
    for _ in range(3):
        gc.collect()
    before = len(gc.get_objects())
    for seq, payload in enumerate(sent, 1):
        kept.add(seq, payload)
    del sent
    gc.collect()
    assert len(gc.get_objects()) - before < 100
    assert len(list(kept.since(1) or [])) == 10_000
