"""What the sync core (kvs/replication/sync.py) asks its adapter to do: frozen values, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kvs.replication.codec import Digest, Presence
from kvs.storage.store import Fragment

Route = Literal["digest", "presence"] | str
"""Where a message goes: the digest topic, this server's presence topic, or a peer's inbox (its id)."""


@dataclass(frozen=True, slots=True)
class Publish:
    route: Route
    body: Digest | Presence  # the core publishes only these; batches and transfers go through the adapter
    retain: bool = False


SendKind = Literal["answer", "lost", "repair", "repair_reply"]
"""Why state is sent: an answer to a request for the buckets that differ (a joiner's, or after a
reconnection); an answer to a request for lost batches (`since`); a repair this server starts
(two periodic digests differed the same way); the reply to a peer's repair (its `send_back`)."""


@dataclass(frozen=True, slots=True)
class SendState:
    """Send `peer` this server's state of `buckets` (None: all), then call `Sync.sent(peer)`."""

    peer: str
    buckets: frozenset[int] | None
    send_back: frozenset[int] = frozenset()
    answers: int = 0
    since: int = 0  # or, if this server still keeps them, its batches from this number on
    kind: SendKind = "answer"


@dataclass(frozen=True, slots=True)
class Apply:
    """Join these fragments into the store (`batch`: they came in a Batch, for watchers)."""

    origin: str
    fragments: tuple[Fragment, ...]
    batch: bool = False
    sent_ms: int = 0  # the sender's clock when it published the batch (replication lag)
    size: int = 0  # the payload's bytes (a batch's, for the metrics)
    late: int = 0  # a version below it is dropped: a late message's (kvs.replication.horizon)


@dataclass(frozen=True, slots=True)
class SetAside:
    """Back from an absence past --tombstone-ttl: move every version older than `cut` out of the store
    (not served, hashed nor sent), and forget the batches kept for resending."""

    cut: int


@dataclass(frozen=True, slots=True)
class Settle:
    """The peers have answered: drop the versions set aside (what they hold came back with their
    answers), or join them back when no peer answered (`restore`)."""

    restore: bool


@dataclass(frozen=True, slots=True)
class Touched:
    """In touch with the cluster at `ms` (wall clock): saved with --data-dir."""

    ms: int


@dataclass(frozen=True, slots=True)
class Serve:
    """This server holds its peers' state: report SERVING."""


@dataclass(frozen=True, slots=True)
class PeerCounts:
    """The peers known to be up, and those whose latest periodic digest differed from ours when it
    came, changed to these."""

    up: int
    differing: int


@dataclass(frozen=True, slots=True)
class Note:
    """Something worth a log line; `drop` names the reason when a message was dropped."""

    text: str
    drop: str = ""


Action = Publish | SendState | Apply | Serve | PeerCounts | Note | SetAside | Settle | Touched
