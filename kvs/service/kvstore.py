"""The gRPC servicer: validate -> store -> reply (docs/contract.md, "The calls").

Runs on the server's asyncio event loop, the one thread that owns the store
(kvs/server/main.py). It writes through `ReplicatedStore` (kvs.service.replicated), which
publishes every accepted mutation and does large ones in bounded steps; no
handler publishes anything itself. Errors are translated once, through `STATUS`;
an exception it does not name (a bug, or the store's file failing under it)
is INTERNAL, logged in one line, never gRPC's "Unexpected <class ...>".
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from kvs._gen import kvs_pb2 as pb
from kvs._gen import kvs_pb2_grpc as pb_grpc
from kvs.errors import InvalidArgument, KvsError, NotDurable, QuotaExceeded, TooLarge, VersionExhausted
from kvs.limits import MAX_GETALL_BYTES, quoted
from kvs.service.replicated import ReplicatedStore
from kvs.storage.store import Entry, Version, Written

log = logging.getLogger(__name__)

_SERVICE = pb.DESCRIPTOR.services_by_name["KeyValueStore"]
SERVICE_NAME = _SERVICE.full_name

# The one error table: what each store error becomes on the wire (anything else: INTERNAL).
STATUS: dict[type[KvsError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    VersionExhausted: grpc.StatusCode.OUT_OF_RANGE,
    TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NotDurable: grpc.StatusCode.UNAVAILABLE,  # the commit failed: not acknowledged, the server stops
    QuotaExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,  # Put and PutAll past --quota-bytes
}

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
Request = TypeVar("Request")
Reply = TypeVar("Reply")


def _unary(
    handler: Callable[[KeyValueStore, Request, Context], Awaitable[Reply]],
) -> Callable[[KeyValueStore, Request, Context], Awaitable[Reply]]:
    """Waits until the server is ready, then runs the handler; errors become statuses."""

    @functools.wraps(handler)
    async def wrapper(self: KeyValueStore, request: Request, context: Context) -> Reply:
        if not self.ready.is_set():  # once set it stays set: no coroutine per call after that
            await self.ready.wait()
        try:
            return await handler(self, _decoded(request), context)
        except Exception as error:  # every error becomes a status (the table's fallback: INTERNAL)
            await context.abort(*_status(error, handler.__name__))
            raise  # abort() raises; this line only tells type checkers so

    return wrapper


def _streaming(
    handler: Callable[[KeyValueStore, Request, Context], AsyncIterator[Reply]],
) -> Callable[[KeyValueStore, Request, Context], AsyncIterator[Reply]]:
    """As `_unary`, for calls that stream replies: the replies sent before an error stay sent.

    In a request stream, `_key` meets a request that did not decode and ends the
    call there, after the replies to the requests before it.
    """

    @functools.wraps(handler)
    async def wrapper(self: KeyValueStore, request: Request, context: Context) -> AsyncIterator[Reply]:
        if not self.ready.is_set():
            await self.ready.wait()
        try:
            async for reply in handler(self, _decoded(request), context):
                yield reply
        except Exception as error:  # as in _unary
            await context.abort(*_status(error, handler.__name__))

    return wrapper


@dataclass(frozen=True, slots=True)
class Undecodable:
    """What a handler gets in place of a request whose bytes do not parse.

    grpc would answer UNKNOWN "Unexpected <class DecodeError>" (and log it) if a
    request deserializer raised, before any handler runs; protobuf raises
    DecodeError for a string field that is not valid UTF-8. `add_to_server`'s
    deserializers return this instead, and the decorators above (for a single
    request) or `_key` (for each request of a stream, which every streaming
    handler validates) turn it into INVALID_ARGUMENT, so a bad request is
    refused like any other.
    """

    message: str


def _decoder(message: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    def decode(data: bytes) -> Message | Undecodable:
        try:
            return message.FromString(data)
        except DecodeError:
            return Undecodable(
                f"request is not a valid {message.DESCRIPTOR.name} (keys and values must be UTF-8)"
            )

    return decode


def _decoded(request: Request) -> Request:
    if isinstance(request, Undecodable):
        raise InvalidArgument(request.message)
    return request


_HANDLER_KINDS: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler[Any, Any]]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def add_to_server(servicer: KeyValueStore, server: grpc.aio.Server) -> None:
    """As the generated `add_KeyValueStoreServicer_to_server`, with requests that do not decode
    handed to the handlers as `Undecodable`."""
    handlers = {}
    for method in _SERVICE.methods:
        request, reply = getattr(pb, method.input_type.name), getattr(pb, method.output_type.name)
        handlers[method.name] = _HANDLER_KINDS[method.client_streaming, method.server_streaming](
            getattr(servicer, method.name),
            request_deserializer=_decoder(request),
            response_serializer=reply.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)  # type: ignore[attr-defined]  # stubs predate it


def _status(error: Exception, call: str) -> tuple[grpc.StatusCode, str]:
    """The status `error` ends `call` with: its row of STATUS, or INTERNAL (said in the log)."""
    code = next((code for kind, code in STATUS.items() if isinstance(error, kind)), None)
    if code is not None:
        return code, str(error)
    where = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    at = f" at {where.filename}:{where.lineno}" if where else ""
    log.error("%s failed: %s: %s%s", call, type(error).__name__, error, at)
    return grpc.StatusCode.INTERNAL, f"{call} failed in the server: {type(error).__name__}: {error}"


class KeyValueStore(pb_grpc.KeyValueStoreServicer):
    """The nine RPCs of docs/contract.md, "The interface" over one store."""

    def __init__(self, store: ReplicatedStore, ready: asyncio.Event) -> None:
        self._store = store
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
        # A page at a time: each yield waits for gRPC's flow control, so a client
        # that does not read holds one page of the server's memory.
        async for entry in self._store.get_range(fr, to, at):
            yield _reply(entry)

    @_streaming
    async def GetAll(
        self, request_iterator: AsyncIterator[pb.KeyRequest], context: Context
    ) -> AsyncIterator[pb.KeyValueVersionReply]:
        # One version for the whole stream: the largest asked (none: the newest),
        # so nothing is answered before the last request. Only the keys are kept,
        # MAX_GETALL_BYTES of them at most.
        keys, at, held = [], 0, 0
        async for request in request_iterator:
            key = _key(request)
            held += sys.getsizeof(key) + 8  # the string and its slot in the list
            if held > MAX_GETALL_BYTES:
                raise TooLarge(
                    f"GetAll stream too large: its keys pass {MAX_GETALL_BYTES // 2**20} MiB, which the"
                    f" server holds at most for one stream (it reads the whole stream before answering);"
                    f" split it into several GetAll calls of fewer keys"
                )
            keys.append(key)
            at = max(at, _version(request) or 0)
            await self._store.pace()  # gRPC may hand over many requests without suspending
        async for entry in self._store.get_many(keys, at or None):
            yield _reply(entry)

    @_unary
    async def Put(self, request: pb.KeyValueRequest, context: Context) -> pb.PutReply:
        return _put_reply(await self._store.put(_key(request), request.val))

    @_streaming
    async def PutAll(
        self, request_iterator: AsyncIterator[pb.KeyValueRequest], context: Context
    ) -> AsyncIterator[pb.PutReply]:
        # Requests that arrived together share a commit (kvs.storage.durable; one by one in memory).
        async for requests in self._store.ahead(request_iterator, pb.KeyValueRequest.ByteSize):
            done, refused = await self._group(requests, lambda r: self._store.put(_key(r), r.val, wait=False))
            for written in done:
                yield _put_reply(written)
            if refused:
                raise refused

    @_unary
    async def Del(self, request: pb.KeyRequest, context: Context) -> pb.KeyValueVersionReply:
        return _reply(await self._store.delete(_key(request)))

    @_streaming
    async def DelRange(
        self, request: pb.KeyRange, context: Context
    ) -> AsyncIterator[pb.KeyValueVersionReply]:
        fr, to, _ = _range(request)
        async for removed in self._store.delete_range(fr, to):
            yield _reply(removed)

    @_streaming
    async def DelAll(
        self, request_iterator: AsyncIterator[pb.KeyRequest], context: Context
    ) -> AsyncIterator[pb.KeyValueVersionReply]:
        async for requests in self._store.ahead(request_iterator, pb.KeyRequest.ByteSize):
            done, refused = await self._group(requests, lambda r: self._store.delete(_key(r), wait=False))
            for removed in done:
                yield _reply(removed)
            if refused:
                raise refused

    async def _group(
        self, requests: list[Request], write: Callable[[Request], Awaitable[Reply]]
    ) -> tuple[list[Reply], KvsError | None]:
        """Applies a group of a stream's requests in order, up to the first refused one, and waits
        until they are durable: their replies may then go out, and the refusal after them."""
        done: list[Reply] = []
        refused = None
        for request in requests:
            try:
                done.append(await write(request))
            except KvsError as error:
                refused = error
                break
        if not self._store.settled:  # in memory it always is: no coroutine per request
            await self._store.durable()
        return done, refused

    @_unary
    async def Trim(self, request: pb.KeyRequest, context: Context) -> pb.KeyValueVersionReply:
        return _reply(await self._store.trim(_key(request)))


# Validation at the edge ------------------------------------------------------


def _key(request: pb.KeyRequest | pb.KeyValueRequest) -> str:
    _decoded(request)  # in a stream, the request may not have decoded
    if not request.key:
        raise InvalidArgument("key must not be empty")
    return request.key


def _version(request: pb.KeyRequest) -> Version | None:
    """The version to read at, or None when blank (absent or <= 0).

    Any int64 is a bound a read may be made at: one above every stored version
    reads the newest, up to 9223372036854775807. Only stored versions are bounded
    (by year 9999, kvs.storage.store.MAX_VERSION), and the server's clock makes those, not a request.
    """
    return request.ver if request.HasField("ver") and request.ver > 0 else None


def _range(request: pb.KeyRange) -> tuple[str, str, Version | None]:
    if not request.fr.key or not request.to.key:
        raise InvalidArgument("range keys fr.key and to.key must not be empty")
    if request.fr.key > request.to.key:  # str order is code point order, which is UTF-8 byte order
        raise InvalidArgument(
            f"range is reversed: fr.key {quoted(request.fr.key)} > to.key {quoted(request.to.key)}"
        )
    at = max(_version(request.fr) or 0, _version(request.to) or 0)
    return request.fr.key, request.to.key, at or None


# Replies and errors ------------------------------------------------------------


def _reply(entry: Entry) -> pb.KeyValueVersionReply:
    return pb.KeyValueVersionReply(key=entry.key, val=entry.val, ver=entry.ver)


def _put_reply(written: Written) -> pb.PutReply:
    return pb.PutReply(key=written.key, old_val=written.old_val, old_ver=written.old_ver, ver=written.ver)
