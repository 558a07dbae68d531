"""Requests of an exact encoded size, for the tests of the size limits (kvs/limits.py)."""

from __future__ import annotations

from kvs._gen import kvs_pb2 as pb


def request_of_size(size: int, where: str) -> pb.KeyValueRequest:
    """A Put request of exactly `size` encoded bytes, all but a few in the key or in the value."""
    fixed = pb.KeyValueRequest(key="v").ByteSize() if where == "value" else 0
    length = size - fixed - 5  # 1 tag byte and a 4-byte length varint for 2^21 <= length < 2^28
    if where == "key":
        request = pb.KeyValueRequest(key="k" * length)
    else:
        request = pb.KeyValueRequest(key="v", val="x" * length)
    assert request.ByteSize() == size
    return request
