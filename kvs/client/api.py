"""kvs.Client: the typed Python client of a kvs server.

    import kvs

    with kvs.Client("localhost:40000") as c:
        first = c.put("fruta", "banana")
        c.put("fruta", "maçã")
        print(c.get("fruta").val, c.get("fruta", at=first.ver).val, c.get("nada").found)

Replies become frozen dataclasses. docs/contract.md, "The calls"'s two "not found" forms are
told apart by `KeyValue.status`: `Status.NO_KEY` (the key does not exist:
ver 0) and `Status.NOT_AT_VERSION` (it exists, but holds nothing at or below
the version asked: the reply echoes that version with an empty value).
`found` is true only for `Status.FOUND`; the raw key, val and ver are kept.
Every gRPC failure, an unreachable server included, is a `KvsClientError`
carrying the status code, the server's message and a one-line explanation.
Calls that stream replies return lists; a stream that fails part-way raises
with the replies that did arrive (and were applied) in `error.partial`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

import grpc

from kvs._gen import kvs_pb2 as pb
from kvs._gen import kvs_pb2_grpc as pb_grpc
from kvs.net.channel import Options, open_channel
from kvs.net.tls import ClientTls

DEFAULT_TIMEOUT = 10.0
"""Seconds a call may take, unless the client or the call says otherwise."""


class Status(enum.Enum):
    """What a reply about one key says."""

    FOUND = "found"  # a value (for a delete or trim: the newest version it removed or kept)
    NO_KEY = "no key"  # the key does not exist
    NOT_AT_VERSION = "not at version"  # the key exists, but has no version at or below the one asked


@dataclass(frozen=True)
class KeyValue:
    """One key's reply to a read, delete or trim.

    A value "" stored at exactly the version asked looks, on the wire, the same
    as `Status.NOT_AT_VERSION` (docs/contract.md, "The calls" echoes the version asked with an
    empty value); such a reply is reported as `NOT_AT_VERSION`.
    """

    key: str
    val: str
    ver: int
    status: Status

    @property
    def found(self) -> bool:
        return self.status is Status.FOUND


@dataclass(frozen=True)
class Written:
    """The reply to one put: the new version, and the newest value it replaced, if any."""

    key: str
    ver: int
    old_val: str
    old_ver: int

    @property
    def created(self) -> bool:
        """True when the key held no version before this put."""
        return self.old_ver == 0

    @property
    def previous(self) -> KeyValue:
        """The value this put replaced, as a `KeyValue` (`NO_KEY` when `created`)."""
        status = Status.NO_KEY if self.created else Status.FOUND
        return KeyValue(self.key, self.old_val, self.old_ver, status)


Result = TypeVar("Result", KeyValue, Written)
Reply = TypeVar("Reply", pb.KeyValueVersionReply, pb.PutReply)


class KvsClientError(Exception):
    """A call that failed: refused by the server, not answered in time, or no server reached.

    `code` is the gRPC status code, `details` the server's (or gRPC's) message,
    `partial` the replies a stream delivered before it failed. `str()` is one
    line a person can act on.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        target: str,
        tls: ClientTls | None = None,
        partial: tuple[KeyValue | Written, ...] = (),
    ) -> None:
        self.code = code
        self.details = details
        self.target = target
        self.partial = partial
        super().__init__(explain(code, details, target, tls))

    @classmethod
    def of(cls, error: grpc.RpcError, target: str, tls: ClientTls | None = None) -> KvsClientError:
        code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = (error.details() if isinstance(error, grpc.Call) else None) or str(error)
        return cls(code, details, target, tls)


def explain(code: grpc.StatusCode, details: str, target: str, tls: ClientTls | None) -> str:
    """One line that says what went wrong and, for connection and TLS failures, what to check."""
    if code == grpc.StatusCode.UNAVAILABLE:
        return _unavailable(details, target, tls)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer from {target} in time (is the server still catching up?)"
    return f"{code.name}: {details}"


def _unavailable(details: str, target: str, tls: ClientTls | None) -> str:
    # gRPC reports every TLS failure as UNAVAILABLE; its message names the cause.
    if "WRONG_VERSION_NUMBER" in details:
        return f"TLS handshake with {target} failed: the server does not speak TLS (connect without --tls-ca)"
    if "CERTIFICATE_VERIFY_FAILED" in details:
        reason = details.partition("CERTIFICATE_VERIFY_FAILED")[2].removesuffix(": OK").strip(": ")
        return (
            f"TLS handshake with {target} failed: its certificate is not signed by the CA of --tls-ca "
            f"(CERTIFICATE_VERIFY_FAILED: {reason})"
        )
    if "Hostname Verification" in details:
        return (
            f"TLS handshake with {target} failed: its certificate does not name the host dialled "
            "(make it for every name and address clients use)"
        )
    if "andshake" in details:
        return f"TLS handshake with {target} failed ({details})"
    if "Socket closed" in details or "Connection reset" in details:
        # The server hung up on a connection it had accepted: a TLS server that
        # got plaintext, or a mutual-TLS server that got no certificate it trusts.
        if tls is None:
            return f"{target} closed the connection: does it speak TLS? (then pass --tls-ca)"
        if tls.cert is None:
            return (
                f"{target} closed the TLS connection: does it require a client certificate? "
                "(then pass --tls-cert and --tls-key)"
            )
        return f"{target} closed the TLS connection: does it trust this client certificate?"
    return f"cannot reach a kvs server at {target}: is it running? ({details})"


class Client:
    """A connection to one kvs server; use it in a `with` block, or call `close()`.

    `target` is HOST:PORT. `timeout` is the deadline of each call in seconds
    (None: none); each method takes `timeout=` to override it. `tls` makes
    the channel speak TLS (`ClientTls.from_files(ca, cert, key)`); `options`
    are extra gRPC channel options, over the limits of `kvs.net.channel`.
    """

    def __init__(
        self,
        target: str,
        *,
        tls: ClientTls | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        options: Options = (),
    ) -> None:
        self.target = target
        self.timeout = timeout
        self._tls = tls
        self._channel = open_channel(target, tls, options=options)
        self._stub = pb_grpc.KeyValueStoreStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # Reads -------------------------------------------------------------------

    def get(self, key: str, at: int | None = None, *, timeout: float | None = None) -> KeyValue:
        """The newest value of `key`, or its value at the greatest version <= `at`."""
        reply = self._unary(self._stub.Get, _key(key, at), timeout)
        return _key_value(reply, at)

    def get_range(
        self, fr: str, to: str, at: int | None = None, *, timeout: float | None = None
    ) -> list[KeyValue]:
        """Every existing key from `fr` to `to` (inclusive, byte-wise order), newest or at `at`."""
        span = pb.KeyRange(fr=_key(fr, at), to=_key(to))
        return self._stream(
            lambda t: self._stub.GetRange(span, timeout=t), timeout, lambda r: _key_value(r, at)
        )

    def get_all(
        self, keys: Iterable[str], at: int | None = None, *, timeout: float | None = None
    ) -> list[KeyValue]:
        """One reply per key, in order, duplicates included; all read at `at` (None: newest)."""
        requests = [_key(key, at) for key in keys]
        return self._stream(
            lambda t: self._stub.GetAll(iter(requests), timeout=t), timeout, lambda r: _key_value(r, at)
        )

    # Writes ------------------------------------------------------------------

    def put(self, key: str, val: str, *, timeout: float | None = None) -> Written:
        """Stores a new version of `key`; the server chooses the version."""
        return _written(self._unary(self._stub.Put, pb.KeyValueRequest(key=key, val=val), timeout))

    def put_all(
        self, items: Mapping[str, str] | Iterable[tuple[str, str]], *, timeout: float | None = None
    ) -> list[Written]:
        """As `put` for each (key, value), in order; a mapping's order is its own."""
        pairs = items.items() if isinstance(items, Mapping) else items
        requests = [pb.KeyValueRequest(key=key, val=val) for key, val in pairs]
        return self._stream(lambda t: self._stub.PutAll(iter(requests), timeout=t), timeout, _written)

    def delete(self, key: str, *, timeout: float | None = None) -> KeyValue:
        """Removes every version of `key`; replies the newest one removed (`NO_KEY`: nothing was)."""
        return _key_value(self._unary(self._stub.Del, _key(key), timeout), None)

    def delete_range(self, fr: str, to: str, *, timeout: float | None = None) -> list[KeyValue]:
        """Deletes every existing key from `fr` to `to`; one reply per key removed, ascending."""
        span = pb.KeyRange(fr=_key(fr), to=_key(to))
        return self._stream(
            lambda t: self._stub.DelRange(span, timeout=t), timeout, lambda r: _key_value(r, None)
        )

    def delete_all(self, keys: Iterable[str], *, timeout: float | None = None) -> list[KeyValue]:
        """As `delete` for each key, in order."""
        requests = [_key(key) for key in keys]
        return self._stream(
            lambda t: self._stub.DelAll(iter(requests), timeout=t), timeout, lambda r: _key_value(r, None)
        )

    def trim(self, key: str, *, timeout: float | None = None) -> KeyValue:
        """Removes every version of `key` but the newest, and replies that one."""
        return _key_value(self._unary(self._stub.Trim, _key(key), timeout), None)

    # Plumbing ----------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def _unary(self, method: Callable[..., Reply], request: object, timeout: float | None) -> Reply:
        try:
            return method(request, timeout=self._deadline(timeout))
        except grpc.RpcError as error:
            raise KvsClientError.of(error, self.target, self._tls) from None

    def _stream(
        self,
        call: Callable[[float | None], Iterable[Reply]],
        timeout: float | None,
        convert: Callable[[Reply], Result],
    ) -> list[Result]:
        results: list[Result] = []
        try:
            for reply in call(self._deadline(timeout)):
                results.append(convert(reply))
        except grpc.RpcError as error:
            failed = KvsClientError.of(error, self.target, self._tls)
            failed.partial = tuple(results)
            raise failed from None
        return results


def _key(key: str, at: int | None = None) -> pb.KeyRequest:
    return pb.KeyRequest(key=key) if at is None else pb.KeyRequest(key=key, ver=at)


def _key_value(reply: pb.KeyValueVersionReply, at: int | None) -> KeyValue:
    """docs/contract.md, "The calls"'s forms: (key, "", 0) no key; (key, "", at) nothing at or below `at`."""
    if reply.ver == 0:
        status = Status.NO_KEY
    elif at is not None and at > 0 and reply.ver == at and not reply.val:
        status = Status.NOT_AT_VERSION
    else:
        status = Status.FOUND
    return KeyValue(reply.key, reply.val, reply.ver, status)


def _written(reply: pb.PutReply) -> Written:
    return Written(reply.key, reply.ver, reply.old_val, reply.old_ver)
