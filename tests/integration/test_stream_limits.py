"""What one client's stream may cost the server (docs/contract.md, "How much one stream costs"),
and error messages that quote at most a short prefix of a key."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from kvs._gen import kvs_pb2 as pb
from kvs.limits import MAX_GETALL_BYTES, MAX_REQUEST_BYTES
from tests.integration.calls import check, status_of
from tests.integration.conftest import Running

BIG = MAX_REQUEST_BYTES - 16  # a key as large as one request may hold


def big_keys(count: int, seen: list[int] | None = None) -> Iterator[pb.KeyRequest]:
    for i in range(count):
        if seen is not None:
            seen.append(i)
        yield pb.KeyRequest(key=f"{i:08}" + "k" * (BIG - 8))


def test_a_getall_stream_past_its_bound_is_resource_exhausted_with_no_reply(kvs: Running) -> None:
    count = MAX_GETALL_BYTES // BIG + 2
    replies: list[pb.KeyValueVersionReply] = []

    def call() -> None:
        replies.extend(kvs.stub.GetAll(big_keys(count)))

    error = status_of(call)
    check(error, grpc.StatusCode.RESOURCE_EXHAUSTED, f"{MAX_GETALL_BYTES // 2**20} MiB")
    assert "split" in (error.details() or "")
    assert replies == []  # nothing answered
    assert kvs.stub.Get(pb.KeyRequest(key="after")).ver == 0  # and the server goes on


def test_a_getall_stream_under_its_bound_is_answered_whole(kvs: Running) -> None:
    count = MAX_GETALL_BYTES // (BIG + 100) - 1
    replies = list(kvs.stub.GetAll(big_keys(count)))
    assert len(replies) == count
    assert all(reply.ver == 0 for reply in replies)


def test_a_reversed_range_of_long_keys_is_invalid_argument_with_a_short_message(kvs: Running) -> None:
    fr, to = "b" * 2**20, "a" * 2**20  # 1 MiB each: the request fits, a message quoting both did not
    request = pb.KeyRange(fr=pb.KeyRequest(key=fr), to=pb.KeyRequest(key=to))
    for error in (
        status_of(lambda: kvs.stub.GetRange(request)),
        status_of(lambda: kvs.stub.DelRange(request)),
    ):
        check(error, grpc.StatusCode.INVALID_ARGUMENT, "range is reversed")
        assert len(error.details() or "") < 300
