"""The Admin service: a server's view of its own replica, for `scripts/admin.sh` and the web view.

It reads the replica through the `Replica` protocol (what a Replicator exposes), so
it can be served and tested without MQTT.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from kvs._gen import replication_pb2 as pb
from kvs._gen import replication_pb2_grpc as pb_grpc
from kvs.replication.adapter import Replicator
from kvs.replication.codec import fields
from kvs.storage.store import Fragment, Store

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
            last_repair_ms=0 if replicator.last_repair is None else int(replicator.last_repair * 1000),
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
