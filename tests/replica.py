"""A replica the tests set by hand, for the Admin service (kvs.admin.service.Replica)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kvs.admin.service import Watcher
from kvs.storage.store import Fragment


@dataclass
class FakeReplica:
    """Every field the Admin service reads, as plain attributes; `applied` plays a peer's batch."""

    node_id: str = "n1"
    cluster: str = "kvs"
    peers: frozenset[str] = frozenset()
    connected: bool = True
    broker: str = "127.0.0.1:1883"
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    last_repair: float | None = None
    watchers: list[Watcher] = field(default_factory=list)

    def watch(self, watcher: Watcher) -> Callable[[], None]:
        self.watchers.append(watcher)
        return lambda: self.watchers.remove(watcher)

    def applied(self, origin: str, fragments: Sequence[Fragment]) -> None:
        for watcher in list(self.watchers):
            watcher(origin, fragments)
