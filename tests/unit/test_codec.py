"""The replication codec: round trips, splitting, and refusal of anything else."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvs._gen import replication_pb2 as pb
from kvs.codec import CHUNK, FORMAT, MAX_PAYLOAD, Batch, Codec, Digest, Message, Presence, Transfer
from kvs.errors import CodecError
from kvs.store import BUCKETS, MAX_VERSION, Fragment, Store

codec = Codec("kvs", "s1")
other = Codec("kvs", "s2")


def test_a_batch_round_trips_in_order() -> None:
    fragments = (Fragment("a", 0, ((5, "x"),)), Fragment("b", 9), Fragment("ação", 3, ((3, ""), (4, "🙂"))))
    [payload] = list(codec.batches(fragments))
    assert other.decode(payload) == Message("s1", Batch(fragments))


def test_a_digest_and_a_presence_round_trip() -> None:
    buckets = tuple(range(2**64 - BUCKETS, 2**64))
    assert other.decode(codec.digest(buckets, urgent=True)) == Message("s1", Digest(buckets, urgent=True))
    assert other.decode(codec.presence()) == Message("s1", Presence())


def test_an_empty_transfer_is_one_last_message() -> None:
    [payload] = list(codec.transfer([], send_back=[3, 1]))
    assert other.decode(payload) == Message("s1", Transfer((), last=True, send_back=frozenset({1, 3})))


def test_a_large_transfer_is_split_and_only_the_final_message_is_last() -> None:
    fragments = [Fragment(f"key{i:05}", 0, ((1, "v" * 100),)) for i in range(10_000)]
    payloads = list(codec.transfer(fragments, send_back=[7]))
    assert len(payloads) > 3
    assert all(len(p) < CHUNK + 4096 for p in payloads)
    decoded = [other.decode(p).body for p in payloads]
    assert all(isinstance(body, Transfer) for body in decoded)
    transfers = [body for body in decoded if isinstance(body, Transfer)]
    assert [t.last for t in transfers] == [False] * (len(transfers) - 1) + [True]
    assert [t.send_back for t in transfers][-1] == frozenset({7})
    assert [f for t in transfers for f in t.fragments] == fragments


def test_a_key_too_big_for_one_message_travels_in_pieces_that_join_to_the_same_state() -> None:
    big = Fragment("k", 2, tuple((ver, str(ver) * 300_000) for ver in range(2, 40)))
    payloads = list(codec.batches([big]))
    assert len(payloads) > 1
    assert all(len(p) <= MAX_PAYLOAD for p in payloads)
    pieces = [f for p in payloads for f in other.decode(p).body.fragments]  # type: ignore[union-attr]
    whole, joined = Store(lambda: 1), Store(lambda: 1)
    whole.join([big])
    joined.join(pieces)
    assert list(whole.export()) == list(joined.export())


def envelope(**fields: object) -> pb.Envelope:
    message = pb.Envelope(format=FORMAT, cluster="kvs", origin="s2")
    for name, value in fields.items():
        setattr(message, name, value)
    return message


def with_fragment(**fields: object) -> bytes:
    message = envelope()
    message.batch.fragments.add(**fields)
    return message.SerializeToString()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty payload"),
        (b"\xff" * 10, "not a kvs message"),
        (b"x" * (MAX_PAYLOAD + 1), "over the"),
        (envelope(format=2).SerializeToString(), "unknown payload format 2"),
        (envelope(format=0).SerializeToString(), "unknown payload format 0"),
        (envelope(cluster="other").SerializeToString(), "for cluster 'other'"),
        (envelope(origin="").SerializeToString(), "without an origin"),
        (envelope().SerializeToString(), "without a body"),
        (with_fragment(key=""), "empty key"),
        (with_fragment(key="k", versions=[1, 2], values=["a"]), "2 versions for 1 values"),
        (with_fragment(key="k", versions=[0], values=["a"]), "out of range"),
        (with_fragment(key="k", versions=[-4], values=["a"]), "out of range"),
        (with_fragment(key="k", versions=[MAX_VERSION + 1], values=["a"]), "out of range"),
        (with_fragment(key="k", floor=-1), "out of range"),
    ],
)
def test_malformed_payloads_are_refused_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(CodecError, match=reason):
        codec.decode(payload)


def test_a_digest_of_the_wrong_size_is_refused() -> None:
    message = envelope()
    message.digest.buckets.extend([1, 2, 3])
    with pytest.raises(CodecError, match="3 buckets"):
        codec.decode(message.SerializeToString())


def test_a_transfer_asking_for_a_bucket_that_does_not_exist_is_refused() -> None:
    message = envelope()
    message.transfer.send_back.append(BUCKETS)
    with pytest.raises(CodecError, match="bucket beyond"):
        codec.decode(message.SerializeToString())


@given(st.binary(max_size=512))
def test_any_bytes_decode_to_a_message_or_a_codec_error(payload: bytes) -> None:
    try:
        message = codec.decode(payload)
    except CodecError:
        return
    assert isinstance(message, Message)
