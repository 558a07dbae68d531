"""Size limits at their exact edges (kvs/limits.py, docs/contract.md, "The calls" and guarantee 8).

The largest request the server accepts, with the largest key or the largest
value, gets a reply, and every later read of it fits a client's 4 MiB receive
limit; one byte more is RESOURCE_EXHAUSTED and changes nothing. The server's
clock is set near the year-9999 bound, so versions take their largest
encoding (7-byte varints) and replies reach the limit exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from kvs._gen import kvs_pb2 as pb
from kvs._gen import kvs_pb2_grpc
from kvs.limits import MAX_REPLY_BYTES, MAX_REQUEST_BYTES
from kvs.net.channel import channel_options, open_channel
from tests.integration.conftest import Running
from tests.sizes import request_of_size

LAST_VERSION = 253402300799999
"""The last millisecond of year 9999: no version is larger (docs/contract.md, "Security")."""


@pytest.fixture
def unlimited(kvs: Running) -> Iterator[kvs_pb2_grpc.KeyValueStoreStub]:
    """A client that sends whatever it is given, so that the server's own limit is what refuses."""
    channel = open_channel(f"127.0.0.1:{kvs.port}", options=[("grpc.max_send_message_length", -1)])
    yield kvs_pb2_grpc.KeyValueStoreStub(channel)
    channel.close()


def test_the_arithmetic_of_the_limits() -> None:
    assert MAX_REPLY_BYTES == 4 * 1024 * 1024
    assert MAX_REQUEST_BYTES == MAX_REPLY_BYTES - 16
    assert LAST_VERSION < 2**48
    assert pb.KeyValueVersionReply(ver=LAST_VERSION).ByteSize() == 8
    for where in ("key", "value"):
        request = request_of_size(MAX_REQUEST_BYTES, where)
        worst = pb.PutReply(key=request.key, old_val=request.val, old_ver=LAST_VERSION, ver=LAST_VERSION)
        assert worst.ByteSize() == MAX_REPLY_BYTES


def test_every_channel_receives_4_mib_and_sends_no_more_than_the_server_takes() -> None:
    options = dict(channel_options())
    assert options["grpc.max_receive_message_length"] == MAX_REPLY_BYTES
    assert options["grpc.max_send_message_length"] == MAX_REQUEST_BYTES


@pytest.mark.parametrize("where", ["key", "value"])
def test_the_largest_request_is_accepted_and_every_reply_to_it_is_readable(kvs: Running, where: str) -> None:
    kvs.clock.now = LAST_VERSION - 10
    first = request_of_size(MAX_REQUEST_BYTES, where)
    written = kvs.stub.Put(first, timeout=30)
    assert (written.key, written.old_ver, written.ver) == (first.key, 0, LAST_VERSION - 10)

    got = kvs.stub.Get(pb.KeyRequest(key=first.key), timeout=30)
    assert (got.key, got.val, got.ver) == (first.key, first.val, LAST_VERSION - 10)

    # A Put that replaces it: its reply carries the old value, and is exactly the reply limit.
    second = pb.KeyValueRequest(key=first.key, val=first.val.replace("x", "y"))
    assert second.ByteSize() == MAX_REQUEST_BYTES
    replaced = kvs.stub.Put(second, timeout=30)
    assert replaced.ByteSize() == MAX_REPLY_BYTES
    assert (replaced.old_val, replaced.old_ver, replaced.ver) == (
        first.val,
        LAST_VERSION - 10,
        LAST_VERSION - 9,
    )

    [newest] = list(kvs.stub.GetAll(iter([pb.KeyRequest(key=first.key)]), timeout=30))
    # A KeyRequest with the largest key has no room for a version: older versions of
    # that key are read through a range with short bounds (kvs/limits.py).
    at = pb.KeyRange(fr=pb.KeyRequest(key="a", ver=LAST_VERSION - 10), to=pb.KeyRequest(key="z"))
    [old] = list(kvs.stub.GetRange(at, timeout=30))
    assert (newest.val, old.key, old.val) == (second.val, first.key, first.val)
    deleted = kvs.stub.Del(pb.KeyRequest(key=first.key), timeout=30)
    assert (deleted.val, deleted.ver) == (second.val, LAST_VERSION - 9)


@pytest.mark.parametrize("where", ["key", "value"])
@pytest.mark.parametrize("size", [MAX_REQUEST_BYTES + 1, MAX_REPLY_BYTES])
def test_one_byte_more_is_refused_by_the_server_and_changes_nothing(
    kvs: Running, unlimited: kvs_pb2_grpc.KeyValueStoreStub, where: str, size: int
) -> None:
    request = request_of_size(size, where)
    with pytest.raises(grpc.RpcError) as raised:
        unlimited.Put(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as streamed:
        list(unlimited.PutAll(iter([request]), timeout=30))
    assert streamed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    everything = pb.KeyRange(fr=pb.KeyRequest(key="a"), to=pb.KeyRequest(key="z"))
    assert list(kvs.stub.GetRange(everything, timeout=30)) == []
    assert kvs.published == []


def test_a_client_refuses_to_send_what_the_server_would_refuse(kvs: Running) -> None:
    request = request_of_size(MAX_REQUEST_BYTES + 1, "value")
    with pytest.raises(grpc.RpcError) as raised:
        kvs.stub.Put(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert kvs.stub.Get(pb.KeyRequest(key=request.key), timeout=30).ver == 0
    assert kvs.published == []
