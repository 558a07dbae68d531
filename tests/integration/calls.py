"""Requests, expected replies and the errors of the KeyValueStore calls, for the integration tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest

from kvs._gen import kvs_pb2 as pb
from tests.integration.conftest import Running


def key(k: str, ver: int | None = None) -> pb.KeyRequest:
    return pb.KeyRequest(key=k) if ver is None else pb.KeyRequest(key=k, ver=ver)


def span(fr: str, to: str, fr_ver: int | None = None, to_ver: int | None = None) -> pb.KeyRange:
    return pb.KeyRange(fr=key(fr, fr_ver), to=key(to, to_ver))


def kv(k: str, v: str) -> pb.KeyValueRequest:
    return pb.KeyValueRequest(key=k, val=v)


def reply(k: str, v: str, ver: int) -> pb.KeyValueVersionReply:
    return pb.KeyValueVersionReply(key=k, val=v, ver=ver)


def put_reply(k: str, old_val: str, old_ver: int, ver: int) -> pb.PutReply:
    return pb.PutReply(key=k, old_val=old_val, old_ver=old_ver, ver=ver)


def put(kvs: Running, k: str, v: str, at: int | None = None) -> pb.PutReply:
    if at is not None:
        kvs.clock.now = at
    result: pb.PutReply = kvs.stub.Put(kv(k, v))
    return result


def dump(kvs: Running) -> list[pb.KeyValueVersionReply]:
    return list(kvs.stub.GetRange(span("\x01", "\U0010ffff")))


def status_of(call: Callable[[], object]) -> grpc.RpcError:
    """The error a call fails with; a stream is read to its end."""

    def run() -> None:
        result = call()
        if isinstance(result, Iterator):
            list(result)

    with pytest.raises(grpc.RpcError) as raised:
        run()
    return raised.value


def check(error: grpc.RpcError, code: grpc.StatusCode, words: str) -> None:
    assert error.code() == code
    assert words in (error.details() or "")
