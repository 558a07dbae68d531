"""The replication decisions of one server, with no IO: membership, joining,
lost-batch detection, digest comparison, and which state to send to whom.

Like h11's `Connection`, `Sync` is fed what happened (a decoded message, the
broker connection coming or going, the clock ticking) with the current time
and this server's digest, and returns `Action`s (kvs/replication/actions.py) for the
adapter (kvs/replication/adapter.py) to carry out. It reads no clock, socket or random
number: each rule has a unit test (tests/unit/test_sync.py), and a simulated
broker that drops, duplicates, reorders and restarts checks the guarantees
over many schedules (tests/sim.py). The rules, at length in docs/replication.md:

- Only members count: the codec checked each message's tag, and kvs.replication.peers
  drops replays and forgets peers that left and went silent.
- Replays are harmless at any time, with no memory of the past: a message is taken only if
  its sender's clock (`sent_ms`, inside the tag) says it is at most `max_age` old and was
  sent after this server first subscribed (SKEW allowed between two clocks); a retained
  presence, of any age, only makes a joiner wait for that peer until it has been silent a
  sync interval. A live server publishes its presence every third of an interval, and only
  the echo of this run's latest presence counts as our own.
- A server that reads behind judges ages and silences as of where its reading has got, which
  the echo of its presence says (`_reading`), not as of the moment it reads.
- A joiner serves once every present peer has answered its request
  completely, and the broker has been up SETTLE seconds (after a restart, the
  peers need that long to publish their presences again); with bridges to other
  sites' brokers, once every bridge is up and SETTLE seconds after one came up
  (the far side's presences cross in that time).
- A skipped batch number, or a digest naming a batch never seen, makes the receiver
  ask that peer at once for its batches since (kvs/replication/sending.py) (guarantee 6).
- A bucket that differs the same way in two periodic digests in a row is
  repaired, both ways, by the peer with the smaller id.
- One transfer to a peer in flight at a time; a request meanwhile waits. A request is asked
  again, with its number, after RETRY_ROUNDS intervals in which no part of an answer came.
- The way to a peer opens again when its presence is heard, live, half an interval after its
  previous message by its clock (it reconnected), or when a live message of it comes after one of
  the broker's bridges came up since we asked it (a bridge to its site came back): a request to it
  still unanswered, which may have gone nowhere, is asked again at once (up to REASKS times per
  request; docs/sites.md).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from kvs.replication.actions import Action, Apply, Note, PeerCounts, Publish, SendKind, SendState, Serve
from kvs.replication.codec import Batch, Digest, Message, Presence, Transfer
from kvs.replication.horizon import Horizon
from kvs.replication.peers import Digests, Peer, Peers, differing
from kvs.storage.store import BUCKETS

SETTLE: Final = 3.0
"""Seconds a broker must have been up before its retained presences are trusted to be complete;
longer than the longest reconnection backoff (kvs.mqtt.loop.BACKOFF)."""
HEARTBEAT_ROUNDS: Final = 12
"""An unchanged digest still goes out once in this many sync intervals."""
RETRY_ROUNDS: Final = 2
"""A request not answered completely is asked again (the same request) after this many sync intervals
in which no part of an answer came from that peer."""
FORGET_ROUNDS: Final = 3 * HEARTBEAT_ROUNDS
"""A peer heard from not once in this many sync intervals is forgotten."""
REASKS: Final = 3
"""A request is asked again at most this many times because its peer's presence came again (a stale
copy crossing one bridge, then the real one crossing the next: a star's hub sees two; replays: no more)."""
SKEW: Final = 5.0
"""Seconds two servers' clocks may differ by, at most (docs/security.md, "Replays and clocks")."""
AGE_ROUNDS: Final = HEARTBEAT_ROUNDS
"""A message older than this many sync intervals by its sender's clock is dropped: what it said, a
newer one has said again (a lost batch is asked for, a request asked again)."""
PRESENCE_EVERY: Final = 1 / 3
"""A live server publishes its presence again every this fraction of a sync interval, so that a peer
silent for a whole interval is taken for gone."""
READ_SLACK: Final = 1 / 2
"""Fraction of a sync interval by which our reading may trail our clock before it counts as behind:
our presence comes back every third of an interval (said at a poll, every sixth)."""
EVERYTHING: Final = (0,) * BUCKETS
"""The digest of an empty store: a request with it asks for the whole state."""


@dataclass
class Sync:
    """The replication state machine of server `node_id` (see the module's rules)."""

    node_id: str
    interval: float = 5.0
    epoch: int = (
        0  # this run's (kvs.replication.codec): request numbers start there, so no earlier run's answer fits
    )
    fresh: bool = False  # this server started the broker and nobody else uses it: nobody to wait for
    settle: float = SETTLE
    peers: Peers = field(default_factory=Peers)
    serving: bool = False
    connected: bool = False
    batch_seq: int = 0
    last_repair: float | None = None
    _echoed: bool = False  # our presence came back since the last connection
    _presence_at: float = 0.0
    _presence_ms: int = 0  # our clock when we last (re)subscribed: an echo of ours is not older
    _subscribed_ms: int | None = None  # our clock when we first subscribed: nothing sent before counts
    _restored_at: float = -1.0  # when we last said our presence again over someone else's
    _deaf_at: float = 0.0  # the last time we were not reading what came (busy, or disconnected)
    _read_at: float | None = None  # when (our clock) the newest echo of our presence read was said
    _awaiting: set[str] | None = None  # while joining: peers whose answer we wait for
    _broker_since: float | None = None  # when the broker started, as far as we know
    _bridges: dict[str, bool] = field(default_factory=dict)  # the broker's bridges: up or down
    _bridged_since: float | None = None  # when one of them last came up while we watched
    _requests: Iterator[int] = field(init=False)
    _published: Digests | None = None
    _quiet: int = 0
    _counts: tuple[int, int] = (0, 0)  # the PeerCounts last reported
    horizon: Horizon = field(default_factory=Horizon)  # --tombstone-ttl (kvs/replication/horizon.py)
    _doubted: set[str] = field(default_factory=set)  # in doubt: peers asked, whose answer we wait for

    def __post_init__(self) -> None:
        self._requests = itertools.count(self.epoch + 1)
        self.peers.epoch = self.epoch

    def next_batch_seq(self) -> int:
        self.batch_seq += 1
        return self.batch_seq

    @property
    def max_age(self) -> float:
        """Seconds after which a message is too old to be taken (by its sender's clock)."""
        return max(AGE_ROUNDS * self.interval, 2 * SKEW)

    def connected_to_broker(self, now: float, wall_ms: int = 0) -> list[Action]:
        self.connected, self._echoed = True, False
        for peer in self.peers.values():
            peer.heard = max(peer.heard, now)  # nobody could reach us meanwhile: silence starts now
        self._broker_since = now  # until the broker says how old it is (a restarted one lost everything)
        self._deaf_at, self._read_at = now, None  # a new connection: nothing waits unread
        return self.horizon.touch(wall_ms)  # out of touch past the horizon: in doubt

    def disconnected(self, now: float) -> list[Action]:
        self.connected = False
        self._deaf_at = now
        return []

    def broker_uptime(self, seconds: float, now: float) -> list[Action]:
        """The broker's `$SYS/broker/uptime`: retained presences are complete SETTLE s after its start."""
        self._broker_since = now - seconds
        return []

    def bridge(self, name: str, up: bool, retained: bool, now: float) -> list[Action]:
        """A bridge of the broker to another site's (Mosquitto's notification; `retained`: its state
        when we subscribed). Presences from the far side arrive once it is up: a joiner waits for all
        the bridges to be up, and SETTLE s after one came up (docs/sites.md)."""
        was = self._bridges.get(name)
        self._bridges[name] = up
        if up and not retained:
            self._bridged_since = now
        if was == up or self.serving:
            return []
        return [Note(f"the broker's bridge {name} is {'up' if up else 'down'}")]

    def subscribed(self, now: float, now_ms: int | None = None) -> list[Action]:
        """Subscribed (`now_ms`: the wall clock; None in the unit tests: `epoch` plus `now`)."""
        self._presence_ms = self._wall(now, now_ms)
        if self._subscribed_ms is None:
            self._subscribed_ms = self._presence_ms
        return self._say_present(now)

    def _say_present(self, now: float) -> list[Action]:
        self._presence_at = now
        return [Publish("presence", Presence(), retain=True)]

    def presence_overwritten(self, now: float) -> list[Action]:
        """Something else than our latest presence replaced it: say it again (at most once a second)."""
        if not self.connected or now - self._restored_at < 1.0:
            return []
        self._restored_at = now
        return self._say_present(now)

    def own_presence(self, now: float, ours: Digests) -> list[Action]:
        """Our presence came back: every retained presence arrived before it, so we know who is up."""
        if self._echoed:
            return []
        self._echoed = True
        present = self.peers.present()
        if self.serving and self.horizon.doubt:  # back past the horizon: everybody's whole state
            self._doubted = set(present)
            self.horizon.asked += len(present)
            for name in present:
                self.peers[name].reask()  # whatever was asked, the whole state supersedes it
            asks = [a for name in present for a in self._ask(name, now, EVERYTHING)]
            return asks + self._check_doubt(now)
        if self.serving:  # after a reconnection: ask each peer again for every batch we may lack
            return [a for name in present for a in self._ask(name, now, ours, self.peers[name].reask())]
        self._awaiting = (self._awaiting or set()) | set(present)  # a reconnection while joining adds
        request = next(self._requests)  # joining: everybody's whole state
        for name in present:
            self.peers[name].asking(request, now, since=0)
        if self.horizon.doubt:
            ours, self._doubted = EVERYTHING, set(present)
            self.horizon.asked += len(present)
        note = Note(f"joining: waiting for the state of {present}" if present else "joining")
        publish = Publish("digest", Digest(ours, request, self.batch_seq))
        return [note, publish, *self._check_doubt(now), *self._check_serving(now)]

    def message(
        self, message: Message, now: float, ours: Digests, retained: bool = False, now_ms: int | None = None
    ) -> list[Action]:
        """A message, already authenticated by the codec and checked against its topic
        (kvs.replication.topics); `retained`: the broker's retained copy, sent on subscribing;
        `now_ms`: the wall clock (None in the unit tests: `epoch` plus `now`; the tombstone horizon's)."""
        wall = self._wall(now, now_ms)
        if message.origin == self.node_id:  # only our presence comes back to us (MQTT no-local)
            return self._own(message, now, ours, retained, wall)
        if why := self._stale(message, wall, wall - round((now - self._reading(now)) * 1000), retained):
            return self._counted([Note(f"dropped a message from {message.origin}: {why}", drop="replayed")])
        heard = min(now, now - (wall - message.sent_ms) / 1000 + SKEW)  # no later than it was sent
        return self._counted(self._message(message, now, heard, ours, retained, wall_ms=wall))

    def _wall(self, now: float, now_ms: int | None) -> int:
        return self.epoch + round(now * 1000) if now_ms is None else now_ms

    def _reading(self, now: float) -> float:
        """Where our reading of the broker has got to, on our clock: `now`, unless what we read trails
        it (we do not keep up, or hold back what we cannot join yet); then when the newest echo of our
        presence that we read was said, plus READ_SLACK of an interval. Our presence, said every third
        of an interval, queues behind everything the broker sent us before it: ages and silences are
        judged as of the moment the broker sent what we read, not as of the moment we read it."""
        return now if self._read_at is None else min(now, self._read_at + READ_SLACK * self.interval)

    def _stale(self, message: Message, wall: int, reading_ms: int, retained: bool) -> str:
        """Why the message is too old (or too new) to be taken, if it is; `reading_ms`: our reading
        position (`_reading`) on our wall clock `wall`."""
        skew = round(SKEW * 1000)
        if message.sent_ms > wall + skew:
            return f"sent {message.sent_ms - wall} ms ahead of our clock"
        if retained and isinstance(message.body, Presence):
            return ""  # any age: a joiner waits for it a sync interval at most
        if message.sent_ms < reading_ms - self.max_age * 1000:
            return f"sent {(reading_ms - message.sent_ms) / 1000:.0f} s before what we read with it"
        if self._subscribed_ms is None or message.sent_ms < self._subscribed_ms - skew:
            return "sent before this server subscribed"
        return ""

    def _own(self, message: Message, now: float, ours: Digests, retained: bool, wall: int) -> list[Action]:
        """Our presence: the echo of our latest, or a copy of an earlier one that someone published."""
        if retained:
            return []  # the broker's copy on subscribing: ours follows
        latest = message.epoch == self.epoch and message.sent_ms >= self._presence_ms
        if latest and message.body == Presence(up=True):
            said = min(now, now - (wall - message.sent_ms) / 1000)  # one clock: no skew
            self._read_at = said if self._read_at is None else max(self._read_at, said)
            return self.own_presence(now, ours)
        return self.presence_overwritten(now)

    def _message(
        self, message: Message, now: float, heard: float, ours: Digests, retained: bool, *, wall_ms: int = 0
    ) -> list[Action]:
        origin, body = message.origin, message.body
        if isinstance(body, Presence) and not body.up:
            return self._left(message, now)
        known = self.peers.get(origin)
        said = known.said_ms if known is not None and known.epoch == message.epoch else None
        peer = self.peers.admit(message, now, heard, self.interval, live=not retained)
        if peer is None:
            if retained:
                return []  # a retained copy of a presence already seen: comes on every subscription
            return [Note(f"dropped a replayed message from {origin}", drop="replayed")]
        if (
            not retained
            and said is not None
            and isinstance(body, Presence)
            and message.sent_ms - said > self.interval / 2 * 1000
        ):
            return self._heard_again(origin, now, ours)  # live after a gap no presence of it fills
        actions = self._taken(message, now, ours, wall_ms)
        return actions if retained else actions + self._crossed(origin, now, ours)

    def _taken(self, message: Message, now: float, ours: Digests, wall_ms: int) -> list[Action]:
        origin, body = message.origin, message.body
        if isinstance(body, Batch):
            late = self.horizon.late(wall_ms)
            apply = Apply(origin, body.fragments, True, message.sent_ms, message.size, late)
            return [apply, *self._batch_seen(origin, body.seq, now, ours)]
        if isinstance(body, Digest):
            comparable = self.horizon.comparable(message.sent_ms, wall_ms)
            return self._digest(origin, body, now, ours, comparable)
        if isinstance(body, Transfer):
            return self._transfer(origin, body, now, ours, self.horizon.late(wall_ms, message.sent_ms, False))
        return self._present(origin, now, ours)

    def _crossed(self, origin: str, now: float, ours: Digests) -> list[Action]:
        """A live message of `origin` since a bridge came up that was down when we asked it: the way is
        open now (a bridge says it is up a moment before it subscribes, so what we asked when it said so
        may still have gone nowhere), and the request is asked again."""
        peer, bridged = self.peers[origin], self._bridged_since
        if bridged is None or not peer.asked or peer.asked_at >= bridged:
            return []
        if not (again := self._ask_again(origin, now, ours)):
            return []
        return [Note(f"a bridge came up since {origin} was asked: asking it again"), *again]

    def _present(self, origin: str, now: float, ours: Digests) -> list[Action]:
        peer = self.peers[origin]
        if peer.present:
            return []
        peer.present = True
        actions: list[Action] = [Note(f"peer {origin} seen")]
        if self._awaiting is not None and not self.serving and self._echoed:
            self._awaiting.add(origin)  # up, but its presence came after ours: wait for it too
            actions += self._ask(origin, now, EVERYTHING if self.horizon.doubt else ours)
        elif self.horizon.doubt and self._echoed:  # in doubt: its whole state too
            actions += self._ask(origin, now, EVERYTHING)
        if self.horizon.doubt and self._echoed:
            self._doubted.add(origin)
            self.horizon.asked += 1
        return actions

    def _heard_again(self, origin: str, now: float, ours: Digests) -> list[Action]:
        """A known peer's presence, live: a request to it still unanswered is asked again (REASKS at most)."""
        if not (actions := self._ask_again(origin, now, ours)):
            return self._present(origin, now, ours)
        return [Note(f"peer {origin} heard again: asking it again"), *actions]

    def _ask_again(self, origin: str, now: float, ours: Digests) -> list[Action]:
        """The way to `origin` has just opened: a request to it still unanswered, which may have gone
        nowhere, is asked again (REASKS times at most)."""
        peer = self.peers[origin]
        if (
            not peer.present
            or not peer.asked
            or peer.reasked >= REASKS
            or not self._echoed
            or not self.connected
        ):
            return []
        reasked = peer.reasked
        since = peer.reask()
        doubt = self.horizon.doubt  # in doubt: the whole state again (kvs/replication/horizon.py)
        actions = self._ask(origin, now, EVERYTHING, 0) if doubt else self._ask(origin, now, ours, since)
        peer.reasked = reasked + 1
        return actions

    def _left(self, message: Message, now: float) -> list[Action]:
        if not self.peers.left(message.origin, message.epoch):  # no longer waited for: not asked
            return []
        self._doubted.discard(message.origin)
        return [Note(f"peer {message.origin} left"), *self._check_serving(now), *self._check_doubt(now)]

    def _batch_seen(
        self, origin: str, seq: int, now: float, ours: Digests, received: bool = True
    ) -> list[Action]:
        """Asks `origin` for what it sent since, when a batch number was skipped."""
        if not (skipped := self.peers[origin].batches_up_to(seq, received)):
            return []
        note = Note(f"batch {skipped} of {origin} was lost: asking for it")
        return [note, *self._ask(origin, now, ours, skipped)]

    def _digest(
        self, origin: str, digest: Digest, now: float, ours: Digests, comparable: bool = True
    ) -> list[Action]:
        peer = self.peers[origin]
        actions = self._batch_seen(origin, digest.batch_seq, now, ours, received=False)
        if digest.request:
            return actions + self._answer(origin, digest, ours)
        if not comparable:  # tombstones are being forgotten (kvs/replication/horizon.py)
            return actions
        stuck = peer.stuck(digest.buckets, ours)
        if not stuck or self.node_id > origin or peer.sending or peer.asked:
            return actions  # nothing to repair, the peer with the smaller id repairs, or we wait for it
        peer.sending, self.last_repair = True, now
        note = Note(f"repairing {len(stuck)} bucket(s) with {origin}")
        return [*actions, note, SendState(origin, stuck, send_back=stuck, kind="repair")]

    def _transfer(
        self, origin: str, transfer: Transfer, now: float, ours: Digests, late: int = 0
    ) -> list[Action]:
        peer = self.peers[origin]
        actions: list[Action] = [Apply(origin, transfer.fragments, late=late)]
        peer.answering = now  # a request waits while the answer to it, or to one before it, comes
        complete = peer.part_received(transfer)
        if complete is None:
            return actions
        if complete and transfer.answers and transfer.answers == peer.asked and origin in self._doubted:
            self._doubted.discard(origin)
            self.horizon.answered()
        if transfer.answers and transfer.answers == peer.asked:
            peer.asked = 0
            if not complete or peer.again is not None:  # a part was lost, or a batch since the request
                since, peer.again = (peer.again or 0) if complete else 0, None
                actions += self._ask(origin, now, ours, since=since)
        if complete and transfer.send_back and not peer.sending:
            peer.sending, self.last_repair = True, now
            actions.append(SendState(origin, transfer.send_back, kind="repair_reply"))
        return actions + self._check_doubt(now) + self._check_serving(now)

    def sent(self, peer_name: str, now: float, ours: Digests) -> list[Action]:
        """The adapter finished sending a transfer to `peer_name`."""
        if (peer := self.peers.get(peer_name)) is None:
            return []
        peer.sending, pending, peer.pending = False, peer.pending, None
        return self._answer(peer_name, pending, ours) if pending else []

    def _answer(self, origin: str, request: Digest, ours: Digests) -> list[Action]:
        """Sends what `request` asks for, once any transfer to that peer in flight is done."""
        peer = self.peers[origin]
        if peer.sending:
            peer.pending = request
            return []
        peer.sending = True
        kind: SendKind = "lost" if request.since else "answer"
        buckets = differing(ours, request.buckets)
        return [SendState(origin, buckets, answers=request.request, since=request.since, kind=kind)]

    def tick(self, now: float, ours: Digests, wall_ms: int = 0) -> list[Action]:
        """Called every sync interval (with jitter); `wall_ms`: the wall clock (the tombstone horizon's)."""
        return self._counted(self._tick(now, ours, wall_ms))

    def _tick(self, now: float, ours: Digests, wall_ms: int = 0) -> list[Action]:
        actions = self._check_serving(now)
        if not self.connected:
            return actions
        doubted = self.horizon.doubt
        actions += self.horizon.touch(wall_ms)  # a frozen process finds its last touch old here
        if self.horizon.doubt and not doubted and self._echoed:
            self._echoed = False
            actions += self.own_presence(now, ours)  # ask everybody for everything now
        actions += self._check_doubt(now)
        # Longer than a message may be old: a forgotten peer's messages are all too old to be taken.
        reading = self._reading(now)
        silent = self.peers.forget_silent(
            reading, max(FORGET_ROUNDS * self.interval, self.max_age + 2 * SKEW)
        )
        actions += [Note(f"peer {name} forgotten: silent too long") for name in silent]
        if not self._echoed and now - self._presence_at > RETRY_ROUNDS * self.interval:
            actions += self.subscribed(now)  # our presence was lost: say it again
        for name, peer in self.peers.items():
            if peer.present and self._silent(peer, now):
                peer.present = False
                actions.append(Note(f"peer {name} taken for gone: silent for a sync interval"))
            if peer.asked and reading - max(peer.asked_at, peer.answering) > RETRY_ROUNDS * self.interval:
                if self._silent(peer, now):
                    peer.asked = 0
                else:  # the same request again: the answer to either copy counts (a slow peer's is late)
                    peer.asked_at = now
                    actions.append(Publish(name, Digest(ours, peer.asked, self.batch_seq, peer.asked_since)))
        differ = any(p.differs(ours) for p in self.peers.values())
        self._quiet += 1
        # Idle and converged: one digest a heartbeat. A joiner's state is partial: it says nothing.
        if self.serving and (ours != self._published or differ or self._quiet >= HEARTBEAT_ROUNDS):
            self._published, self._quiet = ours, 0
            actions.append(Publish("digest", Digest(ours, 0, self.batch_seq)))
        return actions

    def _counted(self, actions: list[Action]) -> list[Action]:
        """`actions`, and the peers' counts if they changed."""
        peers = self.peers.values()
        counts = (sum(p.present for p in peers), sum(p.differed() for p in peers))
        if counts == self._counts:
            return actions
        self._counts = counts
        return [*actions, PeerCounts(*counts)]

    def poll(self, now: float, busy: bool = False) -> list[Action]:
        """Call often (every sixth of an interval at least): while joining, serving may begin as soon
        as the broker has settled; our presence is said again every PRESENCE_EVERY of an interval.
        `busy`: what arrived is not all read yet (the adapter holds it back), so silence says nothing."""
        if busy:
            self._deaf_at = now
        actions: list[Action] = []
        if self.connected and now - self._presence_at >= PRESENCE_EVERY * self.interval:
            actions += self._say_present(now)
        return actions + self._check_doubt(now) + self._check_serving(now)

    def _silent(self, peer: Peer, now: float) -> bool:
        """Whether `peer` said nothing for a sync interval since we asked it and could hear it."""
        heard = max(peer.heard, peer.asked_at, self._deaf_at)
        return self.connected and self._reading(now) - heard > self.interval

    def _check_doubt(self, now: float) -> list[Action]:
        """In doubt (kvs/replication/horizon.py): settles once the broker has settled and every peer
        asked has answered completely, left, or been silent for a sync interval."""
        if not self.horizon.doubt or not self._echoed or not self.connected or not self._settled(now):
            return []
        doubted = [self.peers[p] for p in sorted(self._doubted) if p in self.peers]
        if any(peer.asked and not self._silent(peer, now) for peer in doubted):
            return []
        self._doubted.clear()
        return self.horizon.settle()

    def _ask(self, origin: str, now: float, ours: Digests, since: int = 0) -> list[Action]:
        """Asks one peer for its batches `since` (0: the buckets that differ), unless a request to it
        is outstanding: then once that is answered."""
        peer = self.peers[origin]
        if peer.asked or not self.connected:
            if peer.asked:
                peer.again = since if peer.again is None else min(peer.again, since)
            return []
        peer.asking(next(self._requests), now, since)
        return [Publish(origin, Digest(ours, peer.asked, self.batch_seq, since))]

    def _check_serving(self, now: float) -> list[Action]:
        if self.serving or self._awaiting is None or not self._echoed:
            return []
        settled = self._settled(now)
        asked = [p for p in sorted(self._awaiting) if (peer := self.peers.get(p)) and peer.asked]
        silent = [p for p in asked if self._silent(self.peers[p], now)]
        if not settled or len(silent) < len(asked):
            return []
        self.serving = True
        gone = [Note(f"no longer waiting for {p}: silent for a sync interval") for p in silent]
        return [*gone, Serve()]

    def _settled(self, now: float) -> bool:
        """The broker has been up SETTLE s (and its bridges): its retained presences are complete."""
        since = self._broker_since
        if since is not None and self._bridged_since is not None:
            since = max(since, self._bridged_since)
        settled = self.fresh or (since is not None and now >= since + self.settle)
        return settled and all(self._bridges.values())  # cut off from another site: out of reach
