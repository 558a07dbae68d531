"""The Admin service (a server's view of its own replica) and its command line.

scripts/admin.sh status --porta 40000          id, peers, key count, digest
scripts/admin.sh dump --porta 40000            every key's full state, one JSON line each
scripts/admin.sh compare --porta 40000 40001   do these servers hold the same replica?
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import operator
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from kvs._gen import replication_pb2 as pb
from kvs._gen import replication_pb2_grpc as pb_grpc
from kvs.api import KvsClientError
from kvs.channel import open_channel
from kvs.codec import fields
from kvs.replication import Replicator
from kvs.store import Fragment, Store
from kvs.tls import ClientTls, TlsError

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Admin"].full_name
WATCH_BACKLOG = 10_000
"""Batches queued at most for one Watch stream."""


class Admin(pb_grpc.AdminServicer):
    """Runs on the event loop, like the KeyValueStore service."""

    def __init__(self, store: Store, replicator: Replicator) -> None:
        self._store = store
        self._replicator = replicator

    async def Status(
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.StatusReply:
        replicator = self._replicator
        return pb.StatusReply(
            id=replicator.node_id,
            cluster=replicator.cluster,
            peers=sorted(replicator.peers),
            keys=self._store.key_count(),
            digest=self._store.digest(),
            caught_up=replicator.caught_up.is_set(),
            connected=replicator.connected,
        )

    async def Dump(
        self, request: pb.DumpRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.Fragment]:
        # Read it all before the first reply: one consistent view.
        fragments = list(self._store.export())
        for fragment in fragments:
            yield pb.Fragment(**fields(fragment))

    async def Watch(
        self, request: pb.WatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.Applied]:
        applied: asyncio.Queue[pb.Applied] = asyncio.Queue(maxsize=WATCH_BACKLOG)

        def note(origin: str, fragments: Sequence[Fragment]) -> None:
            if applied.full():
                return  # a watcher too slow to keep up misses batches rather than holding memory
            applied.put_nowait(pb.Applied(origin=origin, keys=[fragment.key for fragment in fragments]))

        unwatch = self._replicator.watch(note)
        try:
            while True:
                yield await applied.get()
        finally:
            unwatch()


# The command line -------------------------------------------------------------


def dump_of(channel: grpc.Channel) -> list[dict[str, object]]:
    stub = pb_grpc.AdminStub(channel)
    return [
        {
            "key": f.key,
            "floor": f.floor,
            "versions": [[v, x] for v, x in zip(f.versions, f.values, strict=True)],
        }
        for f in stub.Dump(pb.DumpRequest(), timeout=60)
    ]


def status_of(channel: grpc.Channel) -> dict[str, object]:
    reply = pb_grpc.AdminStub(channel).Status(pb.StatusRequest(), timeout=10)
    return {
        "id": reply.id,
        "cluster": reply.cluster,
        "peers": list(reply.peers),
        "keys": reply.keys,
        "caught_up": reply.caught_up,
        "connected": reply.connected,
        # A fingerprint to compare by eye: the XOR of every bucket's hash.
        "digest": f"{functools.reduce(operator.xor, reply.digest, 0):016x}",
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="admin.sh", description="Inspects the replicas of kvs servers.")
    parser.add_argument("command", choices=["status", "dump", "compare", "watch"])
    parser.add_argument("servers", nargs="*", default=["40000"], help="PORT or HOST:PORT (40000)")
    parser.add_argument("--tls-ca", metavar="PATH", help="connect with TLS, trusting this PEM CA")
    parser.add_argument("--tls-cert", metavar="PATH", help="client certificate (PEM), for mutual TLS")
    parser.add_argument("--tls-key", metavar="PATH", help="the PEM private key of --tls-cert")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    servers = [f"localhost:{server}" if server.isdigit() else server for server in args.servers]
    try:
        tls = None
        if args.tls_ca is not None or args.tls_cert is not None:
            tls = ClientTls.from_files(args.tls_ca, args.tls_cert, args.tls_key)
    except TlsError as error:
        print(f"admin.sh: error: {error}", file=sys.stderr)
        return 1
    channels = {server: open_channel(server, tls) for server in servers}
    try:
        return run(args.command, channels)
    except CallFailed as failed:
        print(f"admin.sh: error: {KvsClientError.of(failed.error, failed.server, tls)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        for channel in channels.values():
            channel.close()


class CallFailed(Exception):
    """A call to one server failed; says which."""

    def __init__(self, server: str, error: grpc.RpcError) -> None:
        super().__init__(server)
        self.server = server
        self.error = error


def run(command: str, channels: dict[str, grpc.Channel]) -> int:
    results: list[list[dict[str, object]]] = []
    for server, channel in channels.items():
        try:
            if command == "status":
                print(json.dumps(status_of(channel), ensure_ascii=False))
            elif command == "dump":
                for line in dump_of(channel):
                    print(json.dumps(line, ensure_ascii=False))
            elif command == "watch":
                for applied in pb_grpc.AdminStub(channel).Watch(pb.WatchRequest()):
                    line = {"origin": applied.origin, "keys": list(applied.keys)}
                    print(json.dumps(line, ensure_ascii=False), flush=True)
                return 0  # the first server only
            else:
                results.append(dump_of(channel))
        except grpc.RpcError as error:
            raise CallFailed(server, error) from None
    return compare(results, list(channels)) if command == "compare" else 0


def compare(dumps: list[list[dict[str, object]]], servers: list[str]) -> int:
    """Prints whether every dump equals the first; 0 if they all do."""
    first = {str(entry["key"]): entry for entry in dumps[0]}
    same = True
    for server, dump in zip(servers[1:], dumps[1:], strict=True):
        theirs = {str(entry["key"]): entry for entry in dump}
        differing = sorted(k for k in first.keys() | theirs.keys() if first.get(k) != theirs.get(k))
        if differing:
            same = False
            print(f"{server} differs from {servers[0]} on {len(differing)} key(s), e.g. {differing[:5]}")
    if same:
        print(f"identical: {len(first)} keys (tombstones included) on {', '.join(servers)}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
