"""What the sync core remembers of each peer, and the replay window over its messages.

A peer is known by its id; each run of it by its epoch (its start time in ms).
Within an epoch every message carries a larger counter; `Peers.admit` takes a
message only if its (epoch, counter) is new: a counter above the highest seen,
or within WINDOW below it and not seen yet (QoS 1 may redeliver, and messages
on different topics may overtake each other). Another run's message starts a
new record, unless that run is one seen before (RUNS of them are kept), or is
older than the run we know while that one is still heard from (a restart with
the clock set back is taken once the earlier run fell silent). Messages too old
to be checked here (a record is forgotten, a receiver restarts) are the sync
core's to drop by their age (kvs/replication/sync.py): this module needs no
memory beyond a record's life.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from kvs.replication.codec import Digest, Message, Transfer
from kvs.storage.store import BUCKETS

WINDOW: Final = 1024
"""Counters below a peer's highest by less than this are checked one by one for replays."""
RUNS: Final = 8
"""Earlier epochs of a peer remembered in its record, so that their messages are not taken for a new run."""

Digests = tuple[int, ...]


@dataclass
class Peer:
    epoch: int
    high: int = 0  # the highest counter seen in this epoch
    seen: int = 0  # bit i: counter high - 1 - i was seen
    heard: float = 0.0  # when the last message came
    said_ms: int = 0  # when the last live message of this run taken was sent (by its clock)
    present: bool = False
    next_batch: int = 0  # the batch seq expected next (0: unknown yet)
    asked: int = 0  # our request it has not fully answered yet (0: none)
    asked_at: float = 0.0
    asked_since: int = 0  # what the outstanding request asked for (see Digest.since)
    answering: float = 0.0  # when a part of a transfer from it last came
    again: int | None = None  # ask again once answered, since this batch (0: the differing buckets)
    reasked: int = 0  # times the request outstanding was asked again as the way to the peer opened again
    incoming: tuple[int, int] = (0, 0)  # the transfer id being received, and parts received
    sending: bool = False  # a transfer to it is in flight
    pending: Digest | None = None  # a request that came while sending
    digests: tuple[Digests, Digests] | None = None  # its last periodic digest, and ours then
    runs: tuple[int, ...] = ()  # its earlier epochs seen, the last RUNS of them

    def rerun(self, epoch: int, first: int) -> Peer:
        """The record of its new run `epoch`: what we asked of it and send to it carries over (a joiner's
        request went to every server, so the new run may answer it), what it told us does not."""
        return Peer(
            epoch,
            heard=self.heard,
            present=self.present,
            next_batch=first,
            asked=self.asked,
            asked_at=self.asked_at,
            sending=self.sending,
            pending=self.pending,
            runs=(*self.runs, self.epoch)[-RUNS:],
        )

    def batches_up_to(self, seq: int, received: bool) -> int:
        """Batch `seq` arrived (or, not `received`, a digest says it was the last sent); when a
        number was skipped (a batch was lost), the first one skipped, else 0."""
        expected = self.next_batch
        if not seq:
            return 0  # it has sent none yet
        self.next_batch = max(expected, seq + 1)
        return expected if expected and (seq > expected if received else seq >= expected) else 0

    def asking(self, request: int, now: float, since: int) -> None:
        """Request `request` now asks it for its batches `since` (0: the buckets that differ)."""
        self.asked, self.asked_at, self.asked_since, self.again = request, now, since, None
        self.reasked = 0

    def reask(self) -> int:
        """After a reconnection (what was asked may be lost with it): the batch to ask again from."""
        pending = [self.asked_since] if self.asked else []
        since = min([self.next_batch, *pending, *([] if self.again is None else [self.again])])
        self.asked, self.again = 0, None
        return since

    def differs(self, ours: Digests) -> bool:
        """Whether its last periodic digest differs from `ours`."""
        return self.digests is not None and self.digests[0] != ours

    def differed(self) -> bool:
        """Whether its last periodic digest differed from ours when it came."""
        return self.digests is not None and self.digests[0] != self.digests[1]

    def part_received(self, transfer: Transfer) -> bool | None:
        """Counts a transfer's part; at its last part, whether every part came (else None)."""
        transfer_id, parts = self.incoming
        self.incoming = (transfer.id, parts + 1 if transfer_id == transfer.id else 1)
        if not transfer.last:
            return None
        complete, self.incoming = self.incoming[1] == transfer.parts, (0, 0)
        return complete

    def stuck(self, theirs: Digests, ours: Digests) -> frozenset[int]:
        """Records a periodic digest; the buckets that differed the same way in this one and the last.

        Under writes, digests differ because of messages in flight; a bucket that differs
        the same way twice in a row is one the messages missed."""
        previous, self.digests = self.digests, (theirs, ours)
        if previous is None:
            return frozenset()
        before = previous
        return frozenset(
            b for b in differing(ours, theirs) if before[0][b] == theirs[b] and before[1][b] == ours[b]
        )


def differing(ours: Digests, theirs: Digests) -> frozenset[int]:
    """The buckets whose hashes differ."""
    return frozenset(b for b in range(BUCKETS) if ours[b] != theirs[b])


class Peers(dict[str, Peer]):
    """The peers heard from, by id."""

    def __init__(self, epoch: int = 0) -> None:
        super().__init__()
        self.epoch = epoch  # our own run's: a peer's run that began later, we have seen from its start

    def present(self) -> list[str]:
        return sorted(name for name, peer in self.items() if peer.present)

    def admit(
        self, message: Message, now: float, heard: float, quiet: float, live: bool = True
    ) -> Peer | None:
        """The sender's record, unless the message is a replay (then None). `heard`: when the message
        shows its sender was last alive (not later than `now`); `quiet`: seconds without a word after
        which a run is taken for ended (another run of the same id, even an older epoch, may follow);
        `live`: not a retained copy (only a live message says the way to the peer is open)."""
        peer = self.get(message.origin)
        # A run that began after ours: its batches are numbered from 1, so a lost first one shows.
        first = 1 if self.epoch and message.epoch > self.epoch else 0
        if peer is None:
            peer = self[message.origin] = Peer(message.epoch, heard=heard, next_batch=first)
        elif message.epoch != peer.epoch:
            if message.epoch in peer.runs:
                return None  # a run that ended
            if message.epoch < peer.epoch and now - peer.heard <= quiet:
                return None  # an earlier run, while the later one speaks
            peer = self[message.origin] = peer.rerun(message.epoch, first)
        counter = message.counter
        if counter > peer.high:
            shift = counter - peer.high
            fits = peer.high and shift <= WINDOW  # else no counter of the window was seen
            peer.seen = ((peer.seen << shift) | (1 << (shift - 1))) & ((1 << WINDOW) - 1) if fits else 0
            peer.high = counter
        else:
            bit = peer.high - 1 - counter
            if bit >= WINDOW or counter == peer.high or peer.seen >> bit & 1:
                return None
            peer.seen |= 1 << bit
        peer.heard = max(peer.heard, heard)
        if live:
            peer.said_ms = max(peer.said_ms, message.sent_ms)
        return peer

    def left(self, name: str, epoch: int) -> bool:
        """Marks the peer's run `epoch` gone; False if that says nothing new (unknown, another run, gone
        already). What we asked of it stays asked: a "down" can be a replay (a will is signed once per
        run), so only the peer's silence ends a wait for it (kvs/replication/sync.py)."""
        peer = self.get(name)
        if peer is None or epoch != peer.epoch or not peer.present:
            return False
        peer.present, peer.digests = False, None
        return True

    def forget_silent(self, now: float, silence: float) -> list[str]:
        """Forgets the peers not heard from in `silence` seconds; returns their ids."""
        silent = [name for name, peer in self.items() if now - peer.heard > silence]
        for name in silent:
            del self[name]
        return silent
