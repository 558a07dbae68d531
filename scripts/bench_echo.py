"""The ceiling servers of the benchmark: kvs's own service with trivial handlers.

They answer Put, Get, PutAll and GetAll with replies of the same size as
kvs's, doing nothing else, so the load generator drives them exactly as it
drives kvs. Three styles: a thread-pool grpc.server ("sync"), grpc.aio
("aio"), and grpc.aio on uvloop ("uvloop").

    python scripts/bench_echo.py STYLE PORT
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc

from kvs._gen import kvs_pb2 as pb
from kvs._gen import kvs_pb2_grpc as pb_grpc

VERSION = 1_795_745_634_443
VALUE = "v" * 100


def put_reply(request: pb.KeyValueRequest) -> pb.PutReply:
    return pb.PutReply(key=request.key, old_val=VALUE, old_ver=VERSION, ver=VERSION + 1)


def get_reply(request: pb.KeyRequest) -> pb.KeyValueVersionReply:
    return pb.KeyValueVersionReply(key=request.key, val=VALUE, ver=VERSION)


class SyncEcho(pb_grpc.KeyValueStoreServicer):
    def Put(self, request: pb.KeyValueRequest, context: Any) -> pb.PutReply:
        return put_reply(request)

    def Get(self, request: pb.KeyRequest, context: Any) -> pb.KeyValueVersionReply:
        return get_reply(request)

    def PutAll(self, request_iterator: Iterator[pb.KeyValueRequest], context: Any) -> Iterator[pb.PutReply]:
        for request in request_iterator:
            yield put_reply(request)

    def GetAll(
        self, request_iterator: Iterator[pb.KeyRequest], context: Any
    ) -> Iterator[pb.KeyValueVersionReply]:
        for request in request_iterator:
            yield get_reply(request)


class AioEcho(pb_grpc.KeyValueStoreServicer):
    async def Put(self, request: pb.KeyValueRequest, context: Any) -> pb.PutReply:
        return put_reply(request)

    async def Get(self, request: pb.KeyRequest, context: Any) -> pb.KeyValueVersionReply:
        return get_reply(request)

    async def PutAll(
        self, request_iterator: AsyncIterator[pb.KeyValueRequest], context: Any
    ) -> AsyncIterator[pb.PutReply]:
        async for request in request_iterator:
            yield put_reply(request)

    async def GetAll(
        self, request_iterator: AsyncIterator[pb.KeyRequest], context: Any
    ) -> AsyncIterator[pb.KeyValueVersionReply]:
        async for request in request_iterator:
            yield get_reply(request)


def serve_sync(port: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    pb_grpc.add_KeyValueStoreServicer_to_server(SyncEcho(), server)  # type: ignore[abstract]  # 4 RPCs of 9
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


async def serve_aio(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_KeyValueStoreServicer_to_server(AioEcho(), server)  # type: ignore[abstract]  # 4 RPCs of 9
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    style, port = sys.argv[1], int(sys.argv[2])
    if style == "sync":
        serve_sync(port)
    elif style == "aio":
        asyncio.run(serve_aio(port))
    else:
        import uvloop  # noqa: PLC0415 - only this style needs it

        uvloop.run(serve_aio(port))


if __name__ == "__main__":
    main()
