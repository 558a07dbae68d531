"""The Admin service: a server's view of its own replica, for `scripts/admin.sh` and the web view.

It reads the replica through the `Replica` protocol below (what
kvs.replication.adapter.Replicator exposes), and imports no replication code, so it
can be served and tested without MQTT (tests/replica.py is a fake one).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from typing import Any, Protocol

import grpc

from kvs._gen import replication_pb2 as pb
from kvs._gen import replication_pb2_grpc as pb_grpc
from kvs.service.upkeep import Quota
from kvs.storage.store import Fragment, Store

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Admin"].full_name
WATCH_BACKLOG_KEYS = 50_000
"""Keys queued at most for one Watch stream; a watcher further behind is ended."""
DUMP_PAGE = 100
"""Keys read from the store per step of a Dump."""
DUMP_PART_BYTES = 1 << 20
"""Values per Dump reply at most (but one version of any size): a longer history comes in parts."""

Watcher = Callable[[str, Sequence[Fragment]], None]
"""Called with (origin, fragments) after each batch from a peer is applied."""


class Replica(Protocol):
    """What the Admin service reads of a server's replica, besides its store."""

    @property
    def node_id(self) -> str: ...

    @property
    def cluster(self) -> str: ...

    @property
    def peers(self) -> Collection[str]:
        """The peers known to be up."""
        ...

    @property
    def connected(self) -> bool:
        """Whether the broker connection is up now."""
        ...

    @property
    def broker(self) -> str:
        """The broker in use (the last that accepted a connection), as HOST:PORT."""
        ...

    @property
    def caught_up(self) -> asyncio.Event:
        """Set once the replica holds its peers' state."""
        ...

    @property
    def last_repair(self) -> float | None:
        """When (time.time()) the replica last took part in a repair, if ever."""
        ...

    def watch(self, watcher: Watcher) -> Callable[[], None]:
        """Calls `watcher` after each batch applied from a peer, until the returned function is called."""
        ...


def fragment_messages(fragment: Fragment) -> Iterator[pb.Fragment]:
    """The Dump replies of one key's state: its floor, and its versions with their values, in
    parts of about DUMP_PART_BYTES of values at most (kvs.admin.parts joins them again).

    One version alone can take a part of its own of up to a Put's size (kvs.limits): with its
    key and nine bytes for the version it stays within a client's 4 MiB receive limit."""
    versions: list[tuple[int, str]] = []
    size, floor = 0, fragment.floor
    for ver, val in fragment.versions:
        weight = len(val.encode())
        if versions and size + weight > DUMP_PART_BYTES:
            yield _message(fragment.key, floor, versions)
            versions, size, floor = [], 0, 0
        versions.append((ver, val))
        size += weight
    if versions or floor or not fragment.versions:
        yield _message(fragment.key, floor, versions)


def _message(key: str, floor: int, versions: list[tuple[int, str]]) -> pb.Fragment:
    return pb.Fragment(
        key=key, floor=floor, versions=[ver for ver, _ in versions], values=[val for _, val in versions]
    )


class Admin(pb_grpc.AdminServicer):
    """Runs on the event loop, like the KeyValueStore service."""

    def __init__(self, store: Store, replica: Replica, quota: Quota | None = None) -> None:
        self._store = store
        self._replica = replica
        self._quota = quota

    async def Status(
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.StatusReply:
        replica = self._replica
        last_repair = replica.last_repair
        return pb.StatusReply(
            id=replica.node_id,
            cluster=replica.cluster,
            peers=sorted(replica.peers),
            keys=self._store.key_count(),
            digest=self._store.digest(),
            caught_up=replica.caught_up.is_set(),
            connected=replica.connected,
            broker=replica.broker,
            last_repair_ms=0 if last_repair is None else int(last_repair * 1000),
            store_bytes=self._store.size,
            quota_bytes=0 if self._quota is None else self._quota.limit,
            over_quota=self._quota is not None and self._quota.over,
        )

    async def Dump(
        self, request: pb.DumpRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.Fragment]:
        # A page at a time: each yield waits for gRPC's flow control, so a client
        # that does not read holds one page (a page may see writes the previous did not).
        after = ""
        while page := self._store.export_page(after, DUMP_PAGE):
            for fragment in page:
                for part in fragment_messages(fragment):
                    yield part
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

        unwatch = self._replica.watch(note)
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
