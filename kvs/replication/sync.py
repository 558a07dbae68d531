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
- A joiner serves once every present peer has answered its request
  completely, and the broker has been up SETTLE seconds (after a restart, the
  peers need that long to publish their presences again); with bridges to other
  sites' brokers, once every bridge is up and SETTLE seconds after one came up
  (the far side's presences cross in that time).
- A skipped batch number, or a digest naming a batch never seen, makes the receiver
  ask that peer at once for its batches since (kvs/replication/sending.py) (guarantee 6).
- A bucket that differs the same way in two periodic digests in a row is
  repaired, both ways, by the peer with the smaller id.
- One transfer to a peer in flight at a time; a request meanwhile waits.
- A peer's presence heard again, live (it reconnected, or a bridge to its site came back and
  carried it across), opens the way to it again: a request to it still unanswered, which may
  have gone nowhere, is asked again at once (up to REASKS times per request: a retained presence
  may cross a bridge before the way to its server is open; docs/sites.md).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from kvs.replication.actions import Action, Apply, Note, PeerCounts, Publish, SendKind, SendState, Serve
from kvs.replication.codec import Batch, Digest, Message, Presence, Transfer
from kvs.replication.peers import Digests, Peers, differing

SETTLE: Final = 3.0
"""Seconds a broker must have been up before its retained presences are trusted to be complete;
longer than the longest reconnection backoff (kvs.mqtt.loop.BACKOFF)."""
HEARTBEAT_ROUNDS: Final = 12
"""An unchanged digest still goes out once in this many sync intervals."""
RETRY_ROUNDS: Final = 2
"""A request not answered completely in this many sync intervals is asked again."""
FORGET_ROUNDS: Final = 3 * HEARTBEAT_ROUNDS
"""A peer heard from not once in this many sync intervals is forgotten."""
REASKS: Final = 3
"""A request is asked again at most this many times because its peer's presence came again (a stale
copy crossing one bridge, then the real one crossing the next: a star's hub sees two; replays: no more)."""


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
    _awaiting: set[str] | None = None  # while joining: peers whose answer we wait for
    _broker_since: float | None = None  # when the broker started, as far as we know
    _bridges: dict[str, bool] = field(default_factory=dict)  # the broker's bridges: up or down
    _bridged_since: float | None = None  # when one of them last came up while we watched
    _requests: Iterator[int] = field(init=False)
    _published: Digests | None = None
    _quiet: int = 0
    _counts: tuple[int, int] = (0, 0)  # the PeerCounts last reported

    def __post_init__(self) -> None:
        self._requests = itertools.count(self.epoch + 1)
        self.peers.epoch = self.epoch

    def next_batch_seq(self) -> int:
        self.batch_seq += 1
        return self.batch_seq

    def connected_to_broker(self, now: float) -> list[Action]:
        self.connected, self._echoed = True, False
        for peer in self.peers.values():
            peer.heard = max(peer.heard, now)  # nobody could reach us meanwhile: silence starts now
        self._broker_since = now  # until the broker says how old it is (a restarted one lost everything)
        return []

    def disconnected(self, now: float) -> list[Action]:
        self.connected = False
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

    def subscribed(self, now: float) -> list[Action]:
        self._presence_at = now
        return [Publish("presence", Presence(), retain=True)]

    def presence_overwritten(self, now: float) -> list[Action]:
        """Something not ours replaced our retained presence: say it again (at most once a second)."""
        return self.subscribed(now) if self.connected and now - self._presence_at >= 1.0 else []

    def own_presence(self, now: float, ours: Digests) -> list[Action]:
        """Our presence came back: every retained presence arrived before it, so we know who is up."""
        if self._echoed:
            return []
        self._echoed = True
        present = self.peers.present()
        if self.serving:  # after a reconnection: ask each peer again for every batch we may lack
            return [a for name in present for a in self._ask(name, now, ours, self.peers[name].reask())]
        self._awaiting = (self._awaiting or set()) | set(present)  # a reconnection while joining adds
        request = next(self._requests)  # joining: everybody's whole state
        for name in present:
            self.peers[name].asking(request, now, since=0)
        note = Note(f"joining: waiting for the state of {present}" if present else "joining")
        return [note, Publish("digest", Digest(ours, request, self.batch_seq)), *self._check_serving(now)]

    def message(self, message: Message, now: float, ours: Digests, retained: bool = False) -> list[Action]:
        """A message, already authenticated by the codec and checked against its topic
        (kvs.replication.topics); `retained`: the broker's retained copy, sent on subscribing."""
        if message.origin == self.node_id:  # only our presence comes back to us (MQTT no-local)
            fresh = not retained and message.body == Presence(up=True)  # the echo, not a retained copy
            return self.own_presence(now, ours) if fresh else []
        return self._counted(self._message(message, now, ours, retained))

    def _message(self, message: Message, now: float, ours: Digests, retained: bool) -> list[Action]:
        origin, body = message.origin, message.body
        if isinstance(body, Presence) and not body.up:
            return self._left(message, now)
        if isinstance(body, Presence) and (known := self.peers.get(origin)) and known.epoch == message.epoch:
            # retained: comes again on every subscription; live: the way to the peer opened again
            return self._present(origin, now, ours) if retained else self._heard_again(origin, now, ours)
        peer = self.peers.admit(message, now)
        if peer is None:
            return [Note(f"dropped a replayed message from {origin}", drop="replayed")]
        if isinstance(body, Batch):
            apply = Apply(origin, body.fragments, batch=True, sent_ms=message.sent_ms, size=message.size)
            return [apply, *self._batch_seen(origin, body.seq, now, ours)]
        if isinstance(body, Digest):
            return self._digest(origin, body, now, ours)
        if isinstance(body, Transfer):
            return self._transfer(origin, body, now, ours)
        return self._present(origin, now, ours)

    def _present(self, origin: str, now: float, ours: Digests) -> list[Action]:
        peer = self.peers[origin]
        if peer.present:
            return []
        peer.present = True
        actions: list[Action] = [Note(f"peer {origin} seen")]
        if self._awaiting is not None and not self.serving and self._echoed:
            self._awaiting.add(origin)  # up, but its presence came after ours: wait for it too
            actions += self._ask(origin, now, ours)
        return actions

    def _heard_again(self, origin: str, now: float, ours: Digests) -> list[Action]:
        """A known peer's presence, live: a request to it still unanswered is asked again (REASKS at most)."""
        peer = self.peers[origin]
        if (
            not peer.present
            or not peer.asked
            or peer.reasked >= REASKS
            or not self._echoed
            or not self.connected
        ):
            return self._present(origin, now, ours)
        reasked = peer.reasked
        actions = self._ask(origin, now, ours, since=peer.reask())
        peer.reasked = reasked + 1
        return [Note(f"peer {origin} heard again: asking it again"), *actions]

    def _left(self, message: Message, now: float) -> list[Action]:
        if not self.peers.left(message.origin, message.epoch):  # no longer waited for: not asked
            return []
        return [Note(f"peer {message.origin} left"), *self._check_serving(now)]

    def _batch_seen(
        self, origin: str, seq: int, now: float, ours: Digests, received: bool = True
    ) -> list[Action]:
        """Asks `origin` for what it sent since, when a batch number was skipped."""
        if not (skipped := self.peers[origin].batches_up_to(seq, received)):
            return []
        note = Note(f"batch {skipped} of {origin} was lost: asking for it")
        return [note, *self._ask(origin, now, ours, skipped)]

    def _digest(self, origin: str, digest: Digest, now: float, ours: Digests) -> list[Action]:
        peer = self.peers[origin]
        actions = self._batch_seen(origin, digest.batch_seq, now, ours, received=False)
        if digest.request:
            return actions + self._answer(origin, digest, ours)
        stuck = peer.stuck(digest.buckets, ours)
        if not stuck or self.node_id > origin or peer.sending or peer.asked:
            return actions  # nothing to repair, the peer with the smaller id repairs, or we wait for it
        peer.sending, self.last_repair = True, now
        note = Note(f"repairing {len(stuck)} bucket(s) with {origin}")
        return [*actions, note, SendState(origin, stuck, send_back=stuck, kind="repair")]

    def _transfer(self, origin: str, transfer: Transfer, now: float, ours: Digests) -> list[Action]:
        peer = self.peers[origin]
        actions: list[Action] = [Apply(origin, transfer.fragments)]
        complete = peer.part_received(transfer)
        if complete is None:
            return actions
        if transfer.answers and transfer.answers == peer.asked:
            peer.asked = 0
            if not complete or peer.again is not None:  # a part was lost, or a batch since the request
                since, peer.again = (peer.again or 0) if complete else 0, None
                actions += self._ask(origin, now, ours, since=since)
        if complete and transfer.send_back and not peer.sending:
            peer.sending, self.last_repair = True, now
            actions.append(SendState(origin, transfer.send_back, kind="repair_reply"))
        return actions + self._check_serving(now)

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

    def tick(self, now: float, ours: Digests) -> list[Action]:
        """Called every sync interval (with jitter)."""
        return self._counted(self._tick(now, ours))

    def _tick(self, now: float, ours: Digests) -> list[Action]:
        actions = self._check_serving(now)
        if not self.connected:
            return actions
        silent = self.peers.forget_silent(now, FORGET_ROUNDS * self.interval)
        actions += [Note(f"peer {name} forgotten: silent too long") for name in silent]
        if not self._echoed and now - self._presence_at > RETRY_ROUNDS * self.interval:
            actions += self.subscribed(now)  # our presence was lost: say it again
        for name, peer in self.peers.items():
            if peer.asked and now - peer.asked_at > RETRY_ROUNDS * self.interval:
                peer.asked = 0
                actions += self._ask(name, now, ours, since=peer.asked_since)
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

    def poll(self, now: float) -> list[Action]:
        """While joining, call often: serving may begin as soon as the broker has settled."""
        return self._check_serving(now)

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
        since = self._broker_since
        if since is not None and self._bridged_since is not None:
            since = max(since, self._bridged_since)
        settled = self.fresh or (since is not None and now >= since + self.settle)
        if not all(self._bridges.values()):  # cut off from another site: its state is out of reach
            settled = False
        waiting = [p for p in self._awaiting if p in self.peers and self.peers[p].asked]
        if not settled or waiting:
            return []
        self.serving = True
        return [Serve()]
