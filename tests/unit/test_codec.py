"""The replication codec: round trips, splitting, and refusal of anything else."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvs._gen import replication_pb2 as pb
from kvs.errors import CodecError
from kvs.replication.codec import (
    CHUNK,
    FORMAT,
    MAX_PAYLOAD,
    TAG,
    TRANSFER_CHUNK,
    Batch,
    Codec,
    Digest,
    Presence,
    Transfer,
    chunks,
)
from kvs.storage.store import BUCKETS, LAST_VERSION, MAX_VERSION, Fragment, Store
from tests.state import everything

KEY = b"k" * 32
codec = Codec("kvs", "s1", KEY, epoch=77, clock=lambda: 1234)
other = Codec("kvs", "s2", KEY, epoch=88)


def test_a_batch_round_trips_in_order_with_its_number_epoch_counter_and_send_time() -> None:
    fragments = (Fragment("a", 0, ((5, "x"),)), Fragment("b", 9), Fragment("ação", 3, ((3, ""), (4, "🙂"))))
    payload = codec.batch(fragments, 41)
    message = other.decode(payload)
    assert (message.origin, message.body) == ("s1", Batch(fragments, seq=41))
    assert (message.epoch, message.sent_ms) == (77, 1234)


def test_every_message_carries_a_larger_counter() -> None:
    counters = [other.decode(codec.presence()).counter for _ in range(3)]
    assert counters == sorted(set(counters))


def test_a_digest_and_a_presence_round_trip() -> None:
    buckets = tuple(range(2**64 - BUCKETS, 2**64))
    assert other.decode(codec.digest(Digest(buckets, 3, 9, 4))).body == Digest(buckets, 3, 9, 4)
    assert other.decode(codec.presence()).body == Presence()
    assert other.decode(codec.presence(up=False)).body == Presence(up=False)


def test_an_empty_transfer_is_one_last_message() -> None:
    [payload] = list(codec.transfer([], send_back=[3, 1], answers=5))
    body = other.decode(payload).body
    assert isinstance(body, Transfer)
    assert (body.fragments, body.last, body.send_back, body.parts, body.answers) == (
        (),
        True,
        frozenset({1, 3}),
        1,
        5,
    )


def test_a_payload_signed_with_another_key_or_altered_is_refused_before_it_is_parsed() -> None:
    payload = codec.presence()
    with pytest.raises(CodecError, match="bad authentication tag"):
        Codec("kvs", "s2", b"x" * 32).decode(payload)
    flipped = bytearray(payload)
    flipped[-1] ^= 1
    with pytest.raises(CodecError, match="bad authentication tag"):
        other.decode(bytes(flipped))


def test_a_large_transfer_is_split_and_only_the_final_message_is_last() -> None:
    fragments = [Fragment(f"key{i:05}", 0, ((1, "v" * 100),)) for i in range(10_000)]
    payloads = list(codec.transfer(fragments, send_back=[7]))
    assert len(payloads) > 3
    assert all(len(p) < CHUNK + 4096 for p in payloads)
    decoded = [other.decode(p).body for p in payloads]
    assert all(isinstance(body, Transfer) for body in decoded)
    transfers = [body for body in decoded if isinstance(body, Transfer)]
    assert [t.last for t in transfers] == [False] * (len(transfers) - 1) + [True]
    assert [t.part for t in transfers] == list(range(len(transfers)))
    assert len({t.id for t in transfers}) == 1
    assert transfers[-1].parts == len(transfers)
    assert [t.send_back for t in transfers][-1] == frozenset({7})
    assert [f for t in transfers for f in t.fragments] == fragments


def test_a_transfer_made_a_fragment_at_a_time_is_the_same_in_smaller_messages() -> None:
    fragments = [Fragment(f"key{i:05}", 0, ((1, "v" * 100),)) for i in range(2_000)]
    writer = codec.transfer_writer("s9", TRANSFER_CHUNK)
    payloads = [p for f in fragments for p in writer.add(f)] + writer.finish([3], answers=4)
    assert len(payloads) > 3
    assert all(len(p) < TRANSFER_CHUNK + 4096 for p in payloads)
    transfers = [body for p in payloads if isinstance(body := other.decode(p).body, Transfer)]
    assert [t.part for t in transfers] == list(range(len(payloads)))
    assert [t.last for t in transfers] == [False] * (len(payloads) - 1) + [True]
    assert (transfers[-1].parts, transfers[-1].send_back, transfers[-1].answers) == (
        len(payloads),
        frozenset({3}),
        4,
    )
    assert [f for t in transfers for f in t.fragments] == fragments


def test_a_payload_decoded_in_steps_is_the_same_message() -> None:
    fragments = [Fragment(f"key{i:05}", 0, ((1, "v" * 10),)) for i in range(1_000)]
    for payload in [codec.batch(fragments, 3), *codec.transfer(fragments, to="s2"), codec.presence()]:
        steps = list(other.decode_in_steps(payload, 300))
        assert steps[-1] == other.decode(payload)
        assert all(step is None for step in steps[:-1])
    assert len(list(other.decode_in_steps(codec.batch(fragments, 4), 300))) == 4 + 1
    with pytest.raises(CodecError, match="bad authentication tag"):
        list(other.decode_in_steps(codec.batch(fragments, 5)[:-1] + b"?", 300))


def test_a_key_too_big_for_one_message_travels_in_pieces_that_join_to_the_same_state() -> None:
    big = Fragment("k", 2, tuple((ver, str(ver) * 300_000) for ver in range(2, 40)))
    payloads = [codec.batch(chunk, 0) for chunk in chunks([big])]
    assert len(payloads) > 1
    assert all(len(p) <= MAX_PAYLOAD for p in payloads)
    pieces = [f for p in payloads for f in other.decode(p).body.fragments]  # type: ignore[union-attr]
    whole, joined = Store(lambda: 1), Store(lambda: 1)
    whole.join([big])
    joined.join(pieces)
    assert everything(whole) == everything(joined)


def envelope(**fields: object) -> pb.Envelope:
    message = pb.Envelope(cluster="kvs", origin="s2", epoch=1, counter=1)
    for name, value in fields.items():
        setattr(message, name, value)
    return message


def sealed(message: pb.Envelope | bytes, fmt: int = FORMAT) -> bytes:
    """A payload with a valid tag around `message` (a well-formed forgery needs the key)."""
    body = message if isinstance(message, bytes) else message.SerializeToString()
    return bytes((fmt,)) + hmac.digest(KEY, body, hashlib.sha256) + body


def with_fragment(**fields: object) -> bytes:
    message = envelope()
    message.batch.fragments.add(**fields)
    return sealed(message)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty payload"),
        (b"\x02" + b"\xff" * 10, "bad authentication tag"),
        (b"\x02" + b"\xff" * (TAG + 10), "bad authentication tag"),
        (sealed(b"\xff" * 10), "not a kvs message"),
        (b"x" * (MAX_PAYLOAD + 1), "over the"),
        (sealed(envelope(), fmt=1), "unknown payload format 1"),
        (sealed(envelope(), fmt=3), "unknown payload format 3"),
        (sealed(envelope(cluster="other")), "for cluster 'other'"),
        (sealed(envelope(origin="")), "without an origin"),
        (sealed(envelope(counter=0)), "without an epoch and counter"),
        (sealed(envelope()), "without a body"),
        (with_fragment(key=""), "empty key"),
        (with_fragment(key="k", versions=[1, 2], values=["a"]), "2 versions for 1 values"),
        (with_fragment(key="k", versions=[0], values=["a"]), "out of range"),
        (with_fragment(key="k", versions=[-4], values=["a"]), "out of range"),
        (with_fragment(key="k", versions=[MAX_VERSION], values=["a"]), "out of range"),
        (with_fragment(key="k", floor=-1), "out of range"),
        (with_fragment(key="k", floor=MAX_VERSION + 1), "out of range"),
    ],
)
def test_malformed_payloads_are_refused_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(CodecError, match=reason):
        codec.decode(payload)


def test_the_edges_of_the_bound_are_accepted_exactly() -> None:
    """A Del of the last version sets floor = MAX_VERSION: accepted, and one more is not (above)."""
    message = codec.decode(with_fragment(key="k", floor=MAX_VERSION, versions=[LAST_VERSION], values=["a"]))
    assert isinstance(message.body, Batch)
    assert message.body.fragments == (Fragment("k", MAX_VERSION, ((LAST_VERSION, "a"),)),)


def test_a_digest_of_the_wrong_size_is_refused() -> None:
    message = envelope()
    message.digest.buckets.extend([1, 2, 3])
    with pytest.raises(CodecError, match="3 buckets"):
        codec.decode(sealed(message))


def test_a_transfer_asking_for_a_bucket_that_does_not_exist_is_refused() -> None:
    message = envelope()
    message.transfer.send_back.append(BUCKETS)
    with pytest.raises(CodecError, match="bucket beyond"):
        codec.decode(sealed(message))


@given(st.binary(max_size=512))
def test_any_bytes_decode_to_a_message_or_a_codec_error(payload: bytes) -> None:
    for candidate in (payload, sealed(payload)):
        try:
            message = codec.decode(candidate)
        except CodecError:
            continue
        assert message.origin
