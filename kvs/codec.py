"""Replication messages <-> bytes (proto/replication.proto). Pure: no IO.

`decode` accepts only a well-formed message of this cluster's format and
raises `CodecError` on anything else, so the MQTT side can log and drop it.
Every payload it produces stays under `MAX_PAYLOAD`: long lists of fragments
are split into several messages, and a key with a very long history into
several fragments (a key's state may arrive in pieces: the join does not mind).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from kvs._gen import replication_pb2 as pb
from kvs.errors import CodecError
from kvs.store import BUCKETS, MAX_VERSION, Fragment

FORMAT = 1
"""The payload format this code reads and writes; see Envelope.format."""

MAX_PAYLOAD = 8 * 1024 * 1024
"""Larger payloads are refused: twice the largest gRPC request a server takes."""

CHUNK = 256 * 1024
"""A message is closed once it holds about this many characters of fragments."""


@dataclass(frozen=True, slots=True)
class Batch:
    """Mutations a server accepted from its clients."""

    fragments: tuple[Fragment, ...]


@dataclass(frozen=True, slots=True)
class Digest:
    """One hash per bucket of the sender's state; urgent: answer with differences now."""

    buckets: tuple[int, ...]
    urgent: bool = False


@dataclass(frozen=True, slots=True)
class Transfer:
    """Part of the sender's state; `last` ends a transfer, `send_back` asks for ours."""

    fragments: tuple[Fragment, ...]
    last: bool = False
    send_back: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Presence:
    """The sender is up."""


Body = Batch | Digest | Transfer | Presence


@dataclass(frozen=True, slots=True)
class Message:
    origin: str
    body: Body


class Codec:
    """Encodes and decodes the messages of one server of one cluster."""

    def __init__(self, cluster: str, origin: str) -> None:
        self.cluster = cluster
        self.origin = origin

    # Encoding ----------------------------------------------------------------

    def digest(self, buckets: tuple[int, ...], urgent: bool = False) -> bytes:
        envelope = self._envelope()
        envelope.digest.buckets.extend(buckets)
        envelope.digest.urgent = urgent
        return envelope.SerializeToString()

    def presence(self) -> bytes:
        envelope = self._envelope()
        envelope.presence.SetInParent()
        return envelope.SerializeToString()

    def batches(self, fragments: Iterable[Fragment]) -> Iterator[bytes]:
        """Batch payloads carrying `fragments` in order (one, unless they are large)."""
        for chunk in _chunks(fragments):
            envelope = self._envelope()
            _fill(envelope.batch.fragments, chunk)
            yield envelope.SerializeToString()

    def transfer(self, fragments: Iterable[Fragment], send_back: Iterable[int] = ()) -> Iterator[bytes]:
        """Transfer payloads carrying `fragments`; the final one (always sent) sets `last`."""
        pending: list[Fragment] | None = None
        for chunk in _chunks(fragments):
            if pending is not None:
                yield self._transfer(pending, last=False, send_back=())
            pending = chunk
        yield self._transfer(pending or [], last=True, send_back=send_back)

    def _transfer(self, chunk: list[Fragment], last: bool, send_back: Iterable[int]) -> bytes:
        envelope = self._envelope()
        _fill(envelope.transfer.fragments, chunk)
        envelope.transfer.last = last
        envelope.transfer.send_back.extend(sorted(send_back))
        return envelope.SerializeToString()

    def _envelope(self) -> pb.Envelope:
        return pb.Envelope(format=FORMAT, cluster=self.cluster, origin=self.origin)

    # Decoding ----------------------------------------------------------------

    def decode(self, payload: bytes) -> Message:
        """The message in `payload`; CodecError unless it is a valid one for this cluster."""
        if not payload:
            raise CodecError("empty payload")
        if len(payload) > MAX_PAYLOAD:
            raise CodecError(f"payload of {len(payload)} bytes is over the {MAX_PAYLOAD}-byte limit")
        envelope = pb.Envelope()
        try:
            envelope.ParseFromString(payload)
        except DecodeError as error:
            raise CodecError(f"not a kvs message ({len(payload)} bytes): {error}") from None
        if envelope.format != FORMAT:
            raise CodecError(f"unknown payload format {envelope.format} (this server reads {FORMAT})")
        if envelope.cluster != self.cluster:
            raise CodecError(f"message for cluster {envelope.cluster!r}, this is {self.cluster!r}")
        if not envelope.origin:
            raise CodecError("message without an origin")
        return Message(envelope.origin, _body(envelope))


def _body(envelope: pb.Envelope) -> Body:
    kind = envelope.WhichOneof("body")
    if kind == "batch":
        return Batch(_fragments(envelope.batch.fragments))
    if kind == "digest":
        buckets = tuple(envelope.digest.buckets)
        if len(buckets) != BUCKETS:
            raise CodecError(f"digest with {len(buckets)} buckets, not {BUCKETS}")
        return Digest(buckets, envelope.digest.urgent)
    if kind == "transfer":
        send_back = frozenset(envelope.transfer.send_back)
        if any(bucket >= BUCKETS for bucket in send_back):
            raise CodecError(f"transfer asks for a bucket beyond {BUCKETS - 1}")
        return Transfer(_fragments(envelope.transfer.fragments), envelope.transfer.last, send_back)
    if kind == "presence":
        return Presence()
    raise CodecError("message without a body")


def _fragments(messages: Iterable[pb.Fragment]) -> tuple[Fragment, ...]:
    fragments = []
    for message in messages:
        key, floor, versions, values = message.key, message.floor, message.versions, message.values
        if not key:
            raise CodecError("fragment with an empty key")
        count = len(versions)
        if count != len(values):
            raise CodecError(f"fragment of {key!r} has {count} versions for {len(values)} values")
        if count == 1:  # a put, or a key with one version: most fragments, so the quick way
            pairs: tuple[tuple[int, str], ...] = ((versions[0], values[0]),)
        else:
            pairs = tuple(zip(versions, values, strict=False))  # lengths checked above
        if floor < 0 or any(not 0 < ver <= MAX_VERSION for ver, _ in pairs):
            raise CodecError(f"fragment of {key!r} has a version out of range")
        fragments.append(Fragment(key, floor, pairs))
    return tuple(fragments)


def fields(fragment: Fragment) -> dict[str, Any]:
    """The fields of the protobuf Fragment that carries `fragment`."""
    return {
        "key": fragment.key,
        "floor": fragment.floor,
        "versions": [ver for ver, _ in fragment.versions],
        "values": [val for _, val in fragment.versions],
    }


def _fill(repeated: Any, chunk: list[Fragment]) -> None:
    """Adds the fragments to a repeated Fragment field (in place: extend() would copy them)."""
    for fragment in chunk:
        repeated.add(**fields(fragment))


def _chunks(fragments: Iterable[Fragment]) -> Iterator[list[Fragment]]:
    """Fragments in order, in groups of about CHUNK characters of keys and values.

    Characters, not bytes: counting is cheap, and UTF-8 takes at most 4 bytes
    a character, so a payload stays well under MAX_PAYLOAD.
    """
    chunk: list[Fragment] = []
    size = 0
    for fragment in fragments:
        weight = _weight(fragment)
        for piece in (fragment,) if weight < CHUNK else _pieces(fragment):
            chunk.append(piece)
            size += weight if piece is fragment else _weight(piece)
            if size >= CHUNK:
                yield chunk
                chunk, size = [], 0
    if chunk:
        yield chunk


def _weight(fragment: Fragment) -> int:
    return len(fragment.key) + 12 + sum(len(val) + 12 for _, val in fragment.versions)


def _pieces(fragment: Fragment) -> Iterator[Fragment]:
    """A fragment too big for one message: its floor and each version apart."""
    if fragment.floor:
        yield Fragment(fragment.key, fragment.floor)
    for version in fragment.versions:
        yield Fragment(fragment.key, versions=(version,))
