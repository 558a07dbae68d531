"""The gRPC servicer: validate -> store -> reply (SPEC section 2).

Runs on the server's asyncio event loop, the one thread that owns the store
(kvs/server.py). Every accepted mutation is handed to `publish` in the same
step, so replication sees writes in the order the store accepted them.
Errors are translated once, through `STATUS`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeAlias, TypeVar

import grpc

from kvs._gen import kvs_pb2 as pb
from kvs._gen import kvs_pb2_grpc as pb_grpc
from kvs.durable import GroupCommit
from kvs.errors import InvalidArgument, KvsError, NotDurable, VersionExhausted
from kvs.store import Entry, Fragment, Store, Version, Written

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["KeyValueStore"].full_name

# The one error table: what each store error becomes on the wire.
STATUS: dict[type[KvsError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    VersionExhausted: grpc.StatusCode.OUT_OF_RANGE,
    NotDurable: grpc.StatusCode.UNAVAILABLE,
}

Publish = Callable[[Sequence[Fragment]], None]
"""Takes the fragments of an accepted mutation for replication."""


Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
Request = TypeVar("Request")
Reply = TypeVar("Reply")


def _unary(
    handler: Callable[[KeyValueStore, Request, Context], Awaitable[Reply]],
) -> Callable[[KeyValueStore, Request, Context], Awaitable[Reply]]:
    """Waits until the server is ready, then runs the handler; errors become statuses."""

    @functools.wraps(handler)
    async def wrapper(self: KeyValueStore, request: Request, context: Context) -> Reply:
        await self.ready.wait()
        try:
            return await handler(self, request, context)
        except KvsError as error:
            await context.abort(*_status(error))
            raise  # abort() raises; this line only tells type checkers so

    return wrapper


def _streaming(
    handler: Callable[[KeyValueStore, Request, Context], AsyncIterator[Reply]],
) -> Callable[[KeyValueStore, Request, Context], AsyncIterator[Reply]]:
    """As `_unary`, for calls that stream replies: the replies sent before an error stay sent."""

    @functools.wraps(handler)
    async def wrapper(self: KeyValueStore, request: Request, context: Context) -> AsyncIterator[Reply]:
        await self.ready.wait()
        try:
            async for reply in handler(self, request, context):
                yield reply
        except KvsError as error:
            await context.abort(*_status(error))

    return wrapper


def _status(error: KvsError) -> tuple[grpc.StatusCode, str]:
    code = next(code for kind, code in STATUS.items() if isinstance(error, kind))
    return code, str(error)


class KeyValueStore(pb_grpc.KeyValueStoreServicer):
    """The nine RPCs of SPEC section 1 over one store."""

    def __init__(
        self, store: Store, publish: Publish, ready: asyncio.Event, commits: GroupCommit | None = None
    ) -> None:
        self._store = store
        self._publish = publish
        # Writes reply only once durable (kvs.durable; at once in memory).
        self._commits = commits or GroupCommit(store)
        # Calls wait here until the server holds its peers' state (kvs.replication).
        self.ready = ready

    @_unary
    async def Get(self, request: pb.KeyRequest, context: Context) -> pb.KeyValueVersionReply:
        return _reply(self._store.get(_key(request), _version(request)))

    @_streaming
    async def GetRange(
        self, request: pb.KeyRange, context: Context
    ) -> AsyncIterator[pb.KeyValueVersionReply]:
        fr, to, at = _range(request)
        for entry in self._store.get_range(fr, to, at):
            yield _reply(entry)

    @_streaming
    async def GetAll(
        self, request_iterator: AsyncIterator[pb.KeyRequest], context: Context
    ) -> AsyncIterator[pb.KeyValueVersionReply]:
        requests = [request async for request in request_iterator]
        keys = [_key(request) for request in requests]
        # One version for the whole stream: the largest asked (none: the newest).
        at = max((_version(request) or 0 for request in requests), default=0)
        # Read every key before the first reply goes out: one consistent view.
        for entry in [self._store.get(key, at) for key in keys]:
            yield _reply(entry)

    @_unary
    async def Put(self, request: pb.KeyValueRequest, context: Context) -> pb.PutReply:
        written, fragment = self._store.put(_key(request), request.val)
        self._publish((fragment,))
        await self._commits.durable()
        return _put_reply(written)

    @_streaming
    async def PutAll(
        self, request_iterator: AsyncIterator[pb.KeyValueRequest], context: Context
    ) -> AsyncIterator[pb.PutReply]:
        # Requests that arrived together share a commit (kvs.durable; one by one in memory).
        async for requests in self._commits.ahead(request_iterator, pb.KeyValueRequest.ByteSize):
            done: list[Written] = []
            refused = None
            for request in requests:
                try:
                    written, fragment = self._store.put(_key(request), request.val)
                except KvsError as error:
                    refused = error  # after the replies of the requests applied before it
                    break
                self._publish((fragment,))
                done.append(written)
            await self._commits.durable()
            for written in done:
                yield _put_reply(written)
            if refused:
                raise refused

    @_unary
    async def Del(self, request: pb.KeyRequest, context: Context) -> pb.KeyValueVersionReply:
        removed, fragment = self._store.delete(_key(request))
        if fragment:
            self._publish((fragment,))
        await self._commits.durable()
        return _reply(removed)

    @_streaming
    async def DelRange(
        self, request: pb.KeyRange, context: Context
    ) -> AsyncIterator[pb.KeyValueVersionReply]:
        fr, to, _ = _range(request)
        done = self._store.delete_range(fr, to)
        self._publish([fragment for _, fragment in done])
        await self._commits.durable()
        for removed, _ in done:
            yield _reply(removed)

    @_streaming
    async def DelAll(
        self, request_iterator: AsyncIterator[pb.KeyRequest], context: Context
    ) -> AsyncIterator[pb.KeyValueVersionReply]:
        async for requests in self._commits.ahead(request_iterator, pb.KeyRequest.ByteSize):
            done: list[Entry] = []
            refused = None
            for request in requests:
                try:
                    removed, fragment = self._store.delete(_key(request))
                except KvsError as error:
                    refused = error
                    break
                if fragment:
                    self._publish((fragment,))
                done.append(removed)
            await self._commits.durable()
            for removed in done:
                yield _reply(removed)
            if refused:
                raise refused

    @_unary
    async def Trim(self, request: pb.KeyRequest, context: Context) -> pb.KeyValueVersionReply:
        kept, fragment = self._store.trim(_key(request))
        if fragment:
            self._publish((fragment,))
        await self._commits.durable()
        return _reply(kept)


# Validation at the edge ------------------------------------------------------


def _key(request: pb.KeyRequest | pb.KeyValueRequest) -> str:
    if not request.key:
        raise InvalidArgument("key must not be empty")
    return request.key


def _version(request: pb.KeyRequest) -> Version | None:
    """The version to read at, or None when blank (absent or <= 0)."""
    return request.ver if request.HasField("ver") and request.ver > 0 else None


def _range(request: pb.KeyRange) -> tuple[str, str, Version | None]:
    if not request.fr.key or not request.to.key:
        raise InvalidArgument("range keys fr.key and to.key must not be empty")
    if request.fr.key > request.to.key:  # str order is code point order, which is UTF-8 byte order
        raise InvalidArgument(f"range is reversed: fr.key {request.fr.key!r} > to.key {request.to.key!r}")
    at = max(_version(request.fr) or 0, _version(request.to) or 0)
    return request.fr.key, request.to.key, at or None


# Replies and errors ------------------------------------------------------------


def _reply(entry: Entry) -> pb.KeyValueVersionReply:
    return pb.KeyValueVersionReply(key=entry.key, val=entry.val, ver=entry.ver)


def _put_reply(written: Written) -> pb.PutReply:
    return pb.PutReply(key=written.key, old_val=written.old_val, old_ver=written.old_ver, ver=written.ver)
