"""The kvs command-line client (SPEC section 4). Its flags stay in Portuguese
on purpose: scripts written for the original client keep working.

    ./client.sh put --chave abc --valor zyx
    ./client.sh get --chave abc [--versao V]
    ./client.sh getrange --chave FROM TO [--versao V [V]]
    ./client.sh getall --chave K1 K2 ... [--versao V1 V2 ...]
    ./client.sh putall --chave K1 K2 --valor V1 V2
    ./client.sh del|trim --chave K;  delrange --chave FROM TO;  delall --chave K1 K2 ...

Exit status: 0 done, 1 the server refused or could not be reached, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc

from kvs._gen import kvs_pb2 as pb
from kvs._gen import kvs_pb2_grpc

DEFAULT_PORT = 40000
INT64 = range(-(2**63), 2**63)

Reply = pb.KeyValueVersionReply | pb.PutReply


@dataclass(frozen=True)
class Shape:
    """How many --chave, --valor and --versao an operation takes."""

    keys: str  # "one", "two" or "many"
    values: bool = False  # one --valor per --chave
    versions: str = "keys"  # "keys": at most one per key (one for each key with "many"); "none"


SHAPES = {
    "get": Shape("one"),
    "getrange": Shape("two"),
    "getall": Shape("many"),
    "put": Shape("one", values=True, versions="none"),
    "putall": Shape("many", values=True, versions="none"),
    "del": Shape("one"),
    "delrange": Shape("two"),
    "delall": Shape("many"),
    "trim": Shape("one"),
}


# The seed client's usage lines, kept verbatim (scripts and course material show
# them), plus one line for the options this client added.
USAGE = (
    "client.py [-h] [--porta [PORTA]] --chave CHAVE [CHAVE ...] [--valor VALOR [VALOR ...]] "
    "[--versao VERSAO [VERSAO ...]]\n"
    "                 {get,getrange,getall,put,putall,del,delrange,delall,trim}\n"
    "                 [--host HOST] [--json] [--timeout TIMEOUT]"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="client.py",
        usage=USAGE,
        description="Calls a kvs server. Versions (--versao) are milliseconds since the Unix epoch.",
        epilog="Del, delrange, delall and trim accept --versao like get, getrange and getall, and ignore it.",
    )
    parser.add_argument("--porta", nargs="?", type=int, default=DEFAULT_PORT, const=DEFAULT_PORT,
                        help=f"server port ({DEFAULT_PORT})")  # fmt: skip
    parser.add_argument("--chave", nargs="+", required=True, help="key(s): one, two (range) or several")
    parser.add_argument("--valor", nargs="+", help="value(s) for put and putall, one per key")
    parser.add_argument(
        "--versao",
        nargs="+",
        type=int,
        help="read at: one version (get), up to two (getrange), one per key (getall)",
    )
    parser.add_argument("--host", default="localhost", help="server host (localhost)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per reply")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server (10)")
    parser.add_argument("operation", choices=list(SHAPES))
    return parser


def usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the counts of --chave, --valor and --versao, if anything."""
    op, shape = args.operation, SHAPES[args.operation]
    keys, values, versions = args.chave, args.valor or [], args.versao or []
    if shape.keys == "one" and len(keys) != 1:
        return f"{op} takes exactly one --chave (got {len(keys)})"
    if shape.keys == "two" and len(keys) != 2:
        return f"{op} takes two --chave, the first and the last key of the range (got {len(keys)})"
    if shape.values and len(values) != len(keys):
        return f"{op} takes one --valor per --chave (got {len(keys)} keys and {len(values)} values)"
    if not shape.values and values:
        return f"{op} takes no --valor (only put and putall do)"
    if shape.versions == "none" and versions:
        return f"{op} takes no --versao: the server chooses the version of a write"
    if shape.keys == "one" and len(versions) > 1:
        return f"{op} takes at most one --versao (got {len(versions)})"
    if shape.keys == "two" and len(versions) > 2:
        return f"{op} takes at most two --versao, one per end of the range (got {len(versions)})"
    if shape.keys == "many" and versions and len(versions) != len(keys):
        return (
            f"{op} takes one --versao per --chave or none (got {len(keys)} keys and {len(versions)} versions)"
        )
    if any(version not in INT64 for version in versions):
        return "--versao must fit in a signed 64-bit integer"
    if args.porta not in range(1, 65536):
        return f"--porta must be between 1 and 65535 (got {args.porta})"
    return None


def requests_of(args: argparse.Namespace) -> list[pb.KeyRequest]:
    versions = args.versao or []
    return [
        pb.KeyRequest(key=key, ver=versions[i]) if i < len(versions) else pb.KeyRequest(key=key)
        for i, key in enumerate(args.chave)
    ]


def call(stub: kvs_pb2_grpc.KeyValueStoreStub, args: argparse.Namespace) -> Iterable[Reply]:
    """Makes the call the arguments ask for; replies come back as they arrive."""
    op, timeout = args.operation, args.timeout
    keys = requests_of(args)
    if op in ("getrange", "delrange"):
        ranged = stub.GetRange if op == "getrange" else stub.DelRange
        return ranged(pb.KeyRange(fr=keys[0], to=keys[1]), timeout=timeout)
    if op in ("put", "putall"):
        writes = [pb.KeyValueRequest(key=k, val=v) for k, v in zip(args.chave, args.valor, strict=True)]
        return (
            stub.PutAll(iter(writes), timeout=timeout)
            if op == "putall"
            else [stub.Put(writes[0], timeout=timeout)]
        )
    if op in ("getall", "delall"):
        streamed = stub.GetAll if op == "getall" else stub.DelAll
        return streamed(iter(keys), timeout=timeout)
    unary = {"get": stub.Get, "del": stub.Del, "trim": stub.Trim}[op]
    return [unary(keys[0], timeout=timeout)]


def echoed_version(args: argparse.Namespace) -> int | None:
    """The version a "nothing at or before it" reply echoes: the one the call reads at."""
    versions: list[int] = [v for v in args.versao or [] if v > 0]
    if args.operation in ("get", "getrange", "getall") and versions:
        return max(versions)
    return None


def quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def version_text(ver: int) -> str:
    """A version and, since versions are milliseconds, the moment it names."""
    try:
        moment = datetime.fromtimestamp(ver / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    except (OverflowError, OSError, ValueError):
        return f"version {ver}"
    return f"version {ver} ({moment} UTC)"


def readable(reply: Reply, echoed: int | None) -> str:
    """One line a person can read; keys and values are quoted so that any text shows plainly."""
    if isinstance(reply, pb.PutReply):
        before = (
            f"replaced {quoted(reply.old_val)}, {version_text(reply.old_ver)}" if reply.old_ver else "new key"
        )
        return f"{quoted(reply.key)} written at {version_text(reply.ver)}; {before}"
    if reply.ver == 0:
        return f"{quoted(reply.key)} not found"
    if reply.ver == echoed and not reply.val:
        return f"{quoted(reply.key)} has no version at or before {reply.ver}"
    return f"{quoted(reply.key)} = {quoted(reply.val)} at {version_text(reply.ver)}"


def as_json(reply: Reply) -> str:
    if isinstance(reply, pb.PutReply):
        fields: dict[str, object] = {
            "key": reply.key, "old_val": reply.old_val, "old_ver": reply.old_ver, "ver": reply.ver,
        }  # fmt: skip
    else:
        fields = {"key": reply.key, "val": reply.val, "ver": reply.ver}
    return json.dumps(fields, ensure_ascii=False)


def address_of(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"{host}:{port}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = usage_problem(args)
    if problem:
        parser.error(problem)
    address = address_of(args.host, args.porta)
    with grpc.insecure_channel(address) as channel:
        stub = kvs_pb2_grpc.KeyValueStoreStub(channel)
        try:
            echoed = echoed_version(args)
            for reply in call(stub, args):
                print(as_json(reply) if args.json else readable(reply, echoed), flush=True)
        except grpc.RpcError as error:
            print(f"client.py: error: {describe(error, address)}", file=sys.stderr)
            return 1
    return 0


def describe(error: grpc.RpcError, address: str) -> str:
    code = error.code()
    details = error.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"cannot reach a kvs server at {address}: is it running? ({details})"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer from {address} in time (is the server still catching up?)"
    return f"{code.name}: {details}"


if __name__ == "__main__":
    sys.exit(main())
