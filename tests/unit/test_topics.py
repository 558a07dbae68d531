"""A signed message is taken only on the topic it was signed for."""

from __future__ import annotations

import pytest

from kvs.errors import CodecError
from kvs.replication.codec import Codec, Digest
from kvs.replication.topics import Topics
from kvs.storage.store import BUCKETS

KEY = b"k" * 32
a = Codec("kvs", "a", KEY, epoch=1)
j = Codec("kvs", "j", KEY, epoch=2)
topics = Topics("kvs", "j")


def test_a_transfer_signed_for_another_server_is_refused_on_this_ones_inbox() -> None:
    [for_b] = list(a.transfer([], answers=3, to="b"))
    with pytest.raises(CodecError, match="signed for 'b'"):
        topics.check("kvs/to/j", j.decode(for_b))
    [for_j] = list(a.transfer([], answers=3, to="j"))
    assert topics.check("kvs/to/j", j.decode(for_j)).to == "j"


def test_a_request_to_one_server_cannot_be_moved_onto_the_broadcast_topic() -> None:
    request = a.digest(Digest((0,) * BUCKETS, request=5), to="b")
    with pytest.raises(CodecError, match="signed for 'b'"):
        topics.check("kvs/digest", j.decode(request))
    broadcast = a.digest(Digest((0,) * BUCKETS, request=5))
    with pytest.raises(CodecError, match="signed for 'everyone'"):
        topics.check("kvs/to/j", j.decode(broadcast))
