"""The tombstone horizon (--tombstone-ttl) in the sync core: what a server that was out of touch
longer than the horizon may push back, and which late versions it takes. Pure, like
kvs/replication/sync.py, which owns one `Horizon`: times are passed in (wall clock, ms).

Peers forget a deleted key's floor once it is older than the horizon (kvs.service.upkeep). From
then on, only two things could bring the key back, and both are stopped here:

- A server that was out of touch with the cluster for longer than the horizon (cut off from the
  broker, stopped, frozen, or restarted from an old copy of its --data-dir) may hold versions of
  keys deleted and forgotten meanwhile: any of its versions older than the horizon is in doubt.
  When it notices (at its next connection, or a tick that finds its last touch that old), it sets
  them aside (`SetAside`: not served, hashed, sent or resent) and asks every peer for its whole
  state. Once every peer it asked has answered completely (or left, or stayed silent for a sync
  interval, if one of them answered), what they hold is back in its store and the rest is dropped
  (`Settle`), said in one log line with how many. A server that finds no peer at all once the
  broker has settled (the first of a cluster restarted after a long stop) keeps them: nobody can
  have deleted anything it has not seen. One whose peers all left before answering waits for the
  next peer that comes.
- A late message: a batch carries writes as they are accepted, so a version in it older than the
  horizon was delayed that long (a server cut off published it to its queue): it is dropped, floor
  or no floor here (the floor it would need may be forgotten, and the late batch may carry an older
  one of its own). The same holds for a transfer sent longer ago than the horizon, and a server sends
  the batches it keeps for resending without their versions older than the horizon
  (kvs.replication.sending.Kept): they are history, not state.

Within the horizon nothing changes: every floor is still held somewhere, and the join decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from kvs.replication.actions import Action, Note, SetAside, Settle, Touched
from kvs.storage.store import purge_grid

SKEW_MS: Final = 10_000
"""What the horizon allows for clocks that differ between servers (at most half the horizon): a
server back from an absence sets aside versions this much younger than the horizon too, since a peer
whose clock runs ahead forgets tombstones that much earlier."""
PURGE_MS: Final = 5_000
"""How long after a step of the purge grid (kvs.storage.store.tombstone_cut) a server may still be
forgetting that step's tombstones (a second between looks, and the sweep); at most half a step."""


@dataclass
class Horizon:
    ttl_ms: int = 0
    """--tombstone-ttl in ms; 0: off (tombstones are kept for ever, nothing is in doubt)."""
    touched_ms: int = 0
    """When this server was last in touch with its cluster (0: never, or a store that does not say)."""
    doubt: bool = False
    """Versions are set aside until the peers have answered."""
    pending: bool = False
    """The store holds versions set aside by an earlier run that did not finish (a crash)."""
    asked: int = 0
    """Peers asked for their whole state while in doubt."""
    answers: int = 0
    """Complete answers received while in doubt."""

    def late(self, wall_ms: int, sent_ms: int = 0, batch: bool = True) -> int:
        """The `Apply.late` cut for a message received at `wall_ms`: the horizon, for a batch or for
        anything sent longer ago than the horizon; else 0."""
        if not self.ttl_ms or not wall_ms or not (batch or wall_ms - sent_ms > self.ttl_ms):
            return 0
        return wall_ms - self.ttl_ms

    def touch(self, wall_ms: int) -> list[Action]:
        """In touch with the cluster now (connected, or a tick while connected): records it, or finds
        that the last touch is older than the horizon and puts the server in doubt."""
        if not self.ttl_ms or not wall_ms or self.doubt:
            return []
        away = wall_ms - self.touched_ms
        if (self.touched_ms and away > self.ttl_ms) or self.pending:
            self.doubt, self.pending, self.asked, self.answers = True, False, 0, 0
            cut = wall_ms - self.ttl_ms + min(SKEW_MS, self.ttl_ms // 2)
            note = Note(
                f"out of touch with the cluster for {away / 1000:.1f} s, longer than --tombstone-ttl"
                f" ({self.ttl_ms / 1000:.1f} s): versions older than the horizon are set aside until"
                " the peers have answered"
            )
            return [note, SetAside(cut)]
        self.touched_ms = wall_ms
        return [Touched(wall_ms)]

    def comparable(self, sent_ms: int, wall_ms: int) -> bool:
        """Whether a periodic digest sent at `sent_ms` (its sender's clock) may be compared with ours at
        `wall_ms`: both forget tombstones a step of the purge grid at a time, each by its own clock, so
        not when either moment is within PURGE_MS of a step, nor in another step than the other. Servers
        whose clocks differ by seconds then never take a purge in progress for a lost message."""
        if not self.ttl_ms or not sent_ms or not wall_ms:
            return True
        grid = purge_grid(self.ttl_ms)
        slack = min(PURGE_MS, grid // 2)
        theirs, ours = sent_ms - self.ttl_ms, wall_ms - self.ttl_ms
        return theirs // grid == ours // grid and min(theirs % grid, ours % grid) >= slack

    def answered(self) -> None:
        """A peer asked while in doubt answered completely."""
        self.answers += 1

    def settle(self) -> list[Action]:
        """Every peer asked has answered or left: end the doubt, unless they all left without an
        answer (then wait for the next peer that comes). No peer at all: keep what was set aside."""
        if not self.doubt or (self.asked and not self.answers):
            return []
        self.doubt, self.touched_ms = False, 0  # the next touch records the time
        return [Settle(restore=self.answers == 0)]
