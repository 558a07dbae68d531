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
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from kvs._gen import replication_pb2 as pb
from kvs._gen import replication_pb2_grpc as pb_grpc
from kvs.codec import fields
from kvs.replication import Replicator
from kvs.store import Fragment, Store

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Admin"].full_name
WATCH_BACKLOG_KEYS = 50_000
"""Keys queued at most for one Watch stream; a watcher further behind is ended."""
DUMP_PAGE = 100
"""Keys read from the store per step of a Dump."""


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
        # A page at a time: each yield waits for gRPC's flow control, so a client
        # that does not read holds one page (a page may see writes the previous did not).
        after = ""
        while page := self._store.export_page(after, DUMP_PAGE):
            for fragment in page:
                yield pb.Fragment(**fields(fragment))
            after = page[-1].key

    async def Watch(
        self, request: pb.WatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.Applied]:
        # Bounded: a watcher that does not keep up is ended, rather than holding
        # memory or silently missing batches.
        applied: deque[pb.Applied] = deque()
        queued = 0  # keys in `applied`
        behind = False
        arrived = asyncio.Event()

        def note(origin: str, fragments: Sequence[Fragment]) -> None:
            nonlocal queued, behind
            if behind:
                return
            if queued + len(fragments) > WATCH_BACKLOG_KEYS:
                behind = True
                applied.clear()
            else:
                applied.append(pb.Applied(origin=origin, keys=[fragment.key for fragment in fragments]))
                queued += len(fragments)
            arrived.set()

        unwatch = self._replicator.watch(note)
        try:
            while True:
                if not applied and not behind:
                    arrived.clear()
                    await arrived.wait()
                if behind:
                    message = f"more than {WATCH_BACKLOG_KEYS} applied keys were waiting to be sent"
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"watcher fell behind: {message}")
                batch = applied.popleft()
                queued -= len(batch.keys)
                yield batch
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
    args = parser.parse_args(argv)
    servers = [f"localhost:{server}" if server.isdigit() else server for server in args.servers]
    try:
        channels = [grpc.insecure_channel(server) for server in servers]
        if args.command == "status":
            for channel in channels:
                print(json.dumps(status_of(channel), ensure_ascii=False))
        elif args.command == "dump":
            for channel in channels:
                for line in dump_of(channel):
                    print(json.dumps(line, ensure_ascii=False))
        elif args.command == "watch":
            for applied in pb_grpc.AdminStub(channels[0]).Watch(pb.WatchRequest()):
                print(
                    json.dumps({"origin": applied.origin, "keys": list(applied.keys)}, ensure_ascii=False),
                    flush=True,
                )
        else:
            return compare([dump_of(channel) for channel in channels], servers)
    except grpc.RpcError as error:
        print(f"admin.sh: error: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


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
