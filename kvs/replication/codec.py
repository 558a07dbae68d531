"""Replication messages <-> bytes (proto/replication.proto). Pure: no IO.

A payload is `FORMAT` (one byte), an HMAC-SHA256 tag over the rest made with
the cluster key, then a protobuf `Envelope`. `Codec.decode` checks the tag
before it parses anything, so a payload from anyone without the key costs one
HMAC and is dropped; it raises `CodecError` on anything that is not a
well-formed message of this cluster, so the MQTT side can log and drop it.
Replays (a tagged message seen before, or too old) are the sync core's to drop: it
judges `sent_ms`, the sender's clock, against its own, and keeps an (epoch, counter)
window per peer (kvs/replication/sync.py).

Every payload it produces stays under `MAX_PAYLOAD`: long lists of fragments
are split into several messages, and a key with a very long history into
several fragments (a key's state may arrive in pieces: the join does not mind).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf.message import DecodeError

from kvs._gen import replication_pb2 as pb
from kvs.errors import CodecError
from kvs.limits import quoted
from kvs.storage.store import BUCKETS, LAST_VERSION, MAX_VERSION, Fragment

FORMAT: Final = 2
"""The payload format this code reads and writes: the first byte of every payload."""

TAG: Final = 32
"""Bytes of the HMAC-SHA256 tag after the format byte."""

MAX_PAYLOAD: Final = 8 * 1024 * 1024
"""Larger payloads are refused: twice the largest gRPC request a server takes."""

CHUNK: Final = 256 * 1024
"""A message is closed once it holds about this many characters of fragments."""

TRANSFER_CHUNK: Final = 64 * 1024
"""The same for the messages of a transfer a server sends (kvs.replication.adapter): each is encoded
by the sender, and decoded by the receiver, in 2 to 4 ms (one step of the event loop); a CHUNK took
10 to 20 ms on each side, twice that on a busy machine (issue 17)."""


@dataclass(frozen=True, slots=True)
class Batch:
    """Mutations a server accepted from its clients; `seq` numbers them per epoch."""

    fragments: tuple[Fragment, ...]
    seq: int = 0


@dataclass(frozen=True, slots=True)
class Digest:
    """One hash per bucket of the sender's state; a nonzero `request` asks for the differences."""

    buckets: tuple[int, ...]
    request: int = 0
    batch_seq: int = 0
    since: int = 0


@dataclass(frozen=True, slots=True)
class Transfer:
    """Part `part` of transfer `id`; the final part sets `last` and `parts` (and may ask `send_back`)."""

    fragments: tuple[Fragment, ...]
    last: bool = False
    send_back: frozenset[int] = frozenset()
    id: int = 0
    part: int = 0
    parts: int = 0
    answers: int = 0


@dataclass(frozen=True, slots=True)
class Presence:
    """The sender is up (retained while it runs), or has left (`up` false)."""

    up: bool = True


Body = Batch | Digest | Transfer | Presence


@dataclass(frozen=True, slots=True)
class Message:
    origin: str
    body: Body
    epoch: int = 0
    counter: int = 0
    sent_ms: int = 0
    to: str = ""  # the server it was signed for ("": everyone)
    size: int = 0  # the payload's bytes, as received


class Codec:
    """Encodes and decodes the messages of one server of one cluster, signed with the cluster key."""

    def __init__(
        self, cluster: str, origin: str, key: bytes, epoch: int = 0, clock: Callable[[], int] = lambda: 0
    ) -> None:
        self.cluster = cluster
        self.origin = origin
        self.epoch = epoch
        self._key = key
        self._clock = clock
        self._counter = itertools.count(1)
        self._transfer_ids = itertools.count(1)

    # Encoding ----------------------------------------------------------------

    def digest(self, body: Digest, to: str = "") -> bytes:
        envelope = self._envelope(to)
        envelope.digest.buckets.extend(body.buckets)
        envelope.digest.request, envelope.digest.batch_seq = body.request, body.batch_seq
        envelope.digest.since = body.since
        return self._seal(envelope)

    def encode(self, body: Digest | Presence, to: str = "") -> bytes:
        """A digest or presence payload (the sync core's own messages; batches and transfers are split)."""
        return self.digest(body, to) if isinstance(body, Digest) else self.presence(body.up)

    def presence(self, up: bool = True) -> bytes:
        envelope = self._envelope()
        envelope.presence.up = up
        return self._seal(envelope)

    def batch(self, fragments: Sequence[Fragment], seq: int) -> bytes:
        """One Batch payload: keep `fragments` to one of `chunks`' groups."""
        envelope = self._envelope()
        _fill(envelope.batch.fragments, fragments)
        envelope.batch.seq = seq
        return self._seal(envelope)

    def transfer(
        self,
        fragments: Iterable[Fragment],
        send_back: Iterable[int] = (),
        answers: int = 0,
        to: str = "",
        chunk: int = CHUNK,
    ) -> Iterator[bytes]:
        """Transfer payloads carrying `fragments`; the final one (always sent) sets `last` and `parts`."""
        writer = self.transfer_writer(to, chunk)
        for fragment in fragments:
            yield from writer.add(fragment)
        yield from writer.finish(send_back, answers)

    def transfer_writer(self, to: str = "", chunk: int = CHUNK) -> TransferWriter:
        """A transfer made a fragment at a time (`transfer`, for a caller that pauses in between)."""
        return TransferWriter(self, next(self._transfer_ids), to, chunk)

    def last_part(
        self,
        transfer_id: int,
        part: int,
        chunk: Sequence[Fragment],
        *,
        send_back: Iterable[int],
        answers: int,
        to: str,
    ) -> bytes:
        last = self._envelope(to)
        _fill(last.transfer.fragments, chunk)
        last.transfer.last = True
        last.transfer.send_back.extend(sorted(send_back))
        last.transfer.parts = part + 1
        last.transfer.answers = answers
        last.transfer.id, last.transfer.part = transfer_id, part
        return self._seal(last)

    def part(self, transfer_id: int, part: int, chunk: Sequence[Fragment], to: str) -> bytes:
        envelope = self._envelope(to)
        _fill(envelope.transfer.fragments, chunk)
        envelope.transfer.id, envelope.transfer.part = transfer_id, part
        return self._seal(envelope)

    def _envelope(self, to: str = "") -> pb.Envelope:
        return pb.Envelope(
            to=to,
            cluster=self.cluster,
            origin=self.origin,
            epoch=self.epoch,
            counter=next(self._counter),
            sent_ms=self._clock(),
        )

    def _seal(self, envelope: pb.Envelope) -> bytes:
        body = envelope.SerializeToString()
        return bytes((FORMAT,)) + hmac.digest(self._key, body, hashlib.sha256) + body

    # Decoding ----------------------------------------------------------------

    def decode(self, payload: bytes) -> Message:
        """The message in `payload`; CodecError unless it is a valid, authentic one for this cluster."""
        envelope = self._open(payload)
        return _message(envelope, _body(envelope), len(payload))

    def decode_in_steps(self, payload: bytes, step: int) -> Iterator[Message | None]:
        """`decode`, for a large payload: the tag and the parse at once (C code: 10 to 30 ms for the
        largest payload), then its fragments made `step` at a time, yielding None after each step so
        that the caller can pause, and the message last. Raises CodecError as `decode` does."""
        envelope = self._open(payload)
        kind = envelope.WhichOneof("body")
        if kind not in ("batch", "transfer"):
            yield _message(envelope, _body(envelope), len(payload))
            return
        source = envelope.batch.fragments if kind == "batch" else envelope.transfer.fragments
        made: list[Fragment] = []
        for start in range(0, len(source), step):
            made.extend(_fragments(source[start : start + step]))
            yield None
        yield _message(envelope, _body(envelope, tuple(made)), len(payload))

    def _open(self, payload: bytes) -> pb.Envelope:
        """The envelope of an authentic payload of this cluster, parsed; its body not checked yet."""
        if not payload:
            raise CodecError("empty payload")
        if len(payload) > MAX_PAYLOAD:
            raise CodecError(f"payload of {len(payload)} bytes is over the {MAX_PAYLOAD}-byte limit")
        if payload[0] != FORMAT:
            raise CodecError(f"unknown payload format {payload[0]} (this server reads {FORMAT})", "foreign")
        tag, body = payload[1 : 1 + TAG], payload[1 + TAG :]
        if not hmac.compare_digest(tag, hmac.digest(self._key, body, hashlib.sha256)):
            raise CodecError("bad authentication tag (not signed with this cluster's key)", "unauthenticated")
        envelope = pb.Envelope()
        try:
            envelope.ParseFromString(body)
        except DecodeError as error:
            raise CodecError(f"not a kvs message ({len(payload)} bytes): {error}") from None
        if envelope.cluster != self.cluster:
            raise CodecError(f"message for cluster {envelope.cluster!r}, this is {self.cluster!r}", "foreign")
        if not envelope.origin:
            raise CodecError("message without an origin")
        if not envelope.epoch or not envelope.counter:
            raise CodecError("message without an epoch and counter")
        return envelope


def _message(e: pb.Envelope, body: Body, size: int) -> Message:
    return Message(e.origin, body, e.epoch, e.counter, e.sent_ms, e.to, size)


class TransferWriter:
    """The payloads of one transfer, made as its fragments come (`Codec.transfer_writer`): `add` returns
    the payloads a fragment completed (a message is encoded when the next one is full), `finish` the
    rest, the final one included. The same payloads as `Codec.transfer`, which uses it."""

    def __init__(self, codec: Codec, transfer_id: int, to: str, chunk: int) -> None:
        self._codec, self._id, self._to, self._chunk = codec, transfer_id, to, chunk
        self._part = 0
        self._pending: list[Fragment] | None = None  # a full message, sent unless it is the final one
        self._current: list[Fragment] = []
        self._size = 0

    def add(self, fragment: Fragment) -> list[bytes]:
        out = []
        weight = weight_of(fragment)
        for piece in (fragment,) if weight < CHUNK else _pieces(fragment):
            self._current.append(piece)
            self._size += weight if piece is fragment else weight_of(piece)
            if self._size >= self._chunk:
                if self._pending is not None:
                    out.append(self._codec.part(self._id, self._part, self._pending, self._to))
                    self._part += 1
                self._pending, self._current, self._size = self._current, [], 0
        return out

    def finish(self, send_back: Iterable[int] = (), answers: int = 0) -> list[bytes]:
        out = []
        last = self._current
        if self._pending is not None:
            if self._current:
                out.append(self._codec.part(self._id, self._part, self._pending, self._to))
                self._part += 1
            else:
                last = self._pending
        out.append(
            self._codec.last_part(
                self._id, self._part, last, send_back=send_back, answers=answers, to=self._to
            )
        )
        return out


def _body(envelope: pb.Envelope, made: tuple[Fragment, ...] | None = None) -> Body:
    """The message's body; `made`: its fragments, already made (`Codec.decode_in_steps`)."""
    kind = envelope.WhichOneof("body")
    if kind == "batch":
        return Batch(_fragments(envelope.batch.fragments) if made is None else made, envelope.batch.seq)
    if kind == "digest":
        digest = envelope.digest
        buckets = tuple(digest.buckets)
        if len(buckets) != BUCKETS:
            raise CodecError(f"digest with {len(buckets)} buckets, not {BUCKETS}")
        return Digest(buckets, digest.request, digest.batch_seq, digest.since)
    if kind == "transfer":
        t = envelope.transfer
        send_back = frozenset(t.send_back)
        if any(bucket >= BUCKETS for bucket in send_back):
            raise CodecError(f"transfer asks for a bucket beyond {BUCKETS - 1}")
        if t.last and not t.part < t.parts:
            raise CodecError(f"final transfer part {t.part} of {t.parts}")
        fragments = _fragments(t.fragments) if made is None else made
        return Transfer(fragments, t.last, send_back, t.id, t.part, t.parts, t.answers)
    if kind == "presence":
        return Presence(envelope.presence.up)
    raise CodecError("message without a body")


def _fragments(messages: Iterable[pb.Fragment]) -> tuple[Fragment, ...]:
    fragments = []
    for message in messages:
        key, floor, versions, values = message.key, message.floor, message.versions, message.values
        if not key:
            raise CodecError("fragment with an empty key")
        count = len(versions)
        if count != len(values):
            raise CodecError(f"fragment of {quoted(key)} has {count} versions for {len(values)} values")
        # Exactly what a store can hold: floors up to MAX_VERSION (a Del of the last version),
        # versions up to LAST_VERSION.
        if count == 1:  # a put, or a key with one version: most fragments, so the quick way
            ver = versions[0]
            pairs: tuple[tuple[int, str], ...] = ((ver, values[0]),)
            bad = not 0 < ver <= LAST_VERSION
        else:
            pairs = tuple(zip(versions, values, strict=False))  # lengths checked above
            bad = any(not 0 < ver <= LAST_VERSION for ver, _ in pairs)
        if bad or not 0 <= floor <= MAX_VERSION:
            raise CodecError(f"fragment of {quoted(key)} has a version out of range")
        fragments.append(Fragment(key, floor, pairs))
    return tuple(fragments)


def batch_fragments(payload: bytes) -> tuple[Fragment, ...]:
    """The fragments of a Batch payload this server sealed itself (one it kept: no tag to check)."""
    envelope = pb.Envelope()
    envelope.ParseFromString(payload[1 + TAG :])
    return _fragments(envelope.batch.fragments)


def fields(fragment: Fragment) -> dict[str, Any]:
    """The fields of the protobuf Fragment that carries `fragment`."""
    return {
        "key": fragment.key,
        "floor": fragment.floor,
        "versions": [ver for ver, _ in fragment.versions],
        "values": [val for _, val in fragment.versions],
    }


def _fill(repeated: Any, chunk: Sequence[Fragment]) -> None:
    """Adds the fragments to a repeated Fragment field (in place: extend() would copy them)."""
    add = repeated.add
    for fragment in chunk:
        versions = fragment.versions
        if len(versions) == 1:  # a put: most fragments, so the quick way
            ((ver, val),) = versions
            add(key=fragment.key, floor=fragment.floor, versions=(ver,), values=(val,))
        else:
            add(**fields(fragment))


def chunks(fragments: Iterable[Fragment]) -> Iterator[list[Fragment]]:
    """Fragments in order, in groups of about CHUNK characters of keys and values.

    Characters, not bytes: counting is cheap, and UTF-8 takes at most 4 bytes
    a character, so a payload stays well under MAX_PAYLOAD.
    """
    for chunk, _ in weighed_chunks(fragments):
        yield chunk


def weighed_chunks(fragments: Iterable[Fragment]) -> Iterator[tuple[list[Fragment], int]]:
    """`chunks`, each with its weight (the sum of its fragments' `weight_of`)."""
    chunk: list[Fragment] = []
    size = 0
    for fragment in fragments:
        weight = weight_of(fragment)
        if weight < CHUNK:
            chunk.append(fragment)
            size += weight
            if size >= CHUNK:
                yield chunk, size
                chunk, size = [], 0
            continue
        for piece in _pieces(fragment):
            chunk.append(piece)
            size += weight_of(piece)
            if size >= CHUNK:
                yield chunk, size
                chunk, size = [], 0
    if chunk:
        yield chunk, size


def weight_of(fragment: Fragment) -> int:
    """About the characters `fragment` takes in a payload."""
    versions = fragment.versions
    if len(versions) == 1:  # a put: most fragments
        return len(fragment.key) + len(versions[0][1]) + 24
    return len(fragment.key) + 12 + sum(len(val) + 12 for _, val in versions)


def _pieces(fragment: Fragment) -> Iterator[Fragment]:
    """A fragment too big for one message: its floor and each version apart."""
    if fragment.floor:
        yield Fragment(fragment.key, fragment.floor)
    for version in fragment.versions:
        yield Fragment(fragment.key, versions=(version,))
