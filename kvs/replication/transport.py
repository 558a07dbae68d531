"""What the replicator (kvs/replication/adapter.py) needs from the world: a session with the
broker, a clock and a source of randomness. Protocols only, no behaviour.

`kvs.mqtt.session.Session` is the transport of a real server; tests/sim.py has one
over an in-memory broker, with a simulated clock and a seeded random source, so
that the simulation runs the same adapter as production.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, Protocol

from kvs.clock import now_ms


class Listener(Protocol):
    """What a transport tells its owner, on the event loop."""

    def on_connected(self) -> None: ...
    def on_lost(self) -> None: ...
    def on_subscribed(self) -> None: ...
    def on_message(self, topic: str, payload: bytes, retained: bool) -> None: ...


class Transport(Protocol):
    """One session with the broker: QoS 1 publishes, reconnections its own business.

    After a successful `connect()` it reconnects for ever, subscribes again after each
    connection (then calls `on_subscribed`), and publishes the will when the connection
    breaks without `stop()`."""

    @property
    def broker(self) -> object:
        """The broker's address, as said in logs and metrics (str())."""
        ...

    @property
    def connected(self) -> bool:
        """Connected, and every subscription accepted."""
        ...

    @property
    def writes_in_flight(self) -> int:
        """Publishes made with `write` that the broker has not acknowledged yet."""
        ...

    @property
    def unacknowledged_bytes(self) -> int:
        """Bytes of payload of every publish that the broker has not acknowledged yet."""
        ...

    async def connect(self) -> None:
        """The first connection: returns once the broker accepted it, else raises
        (kvs.errors.BrokerUnreachable or BrokerRefused)."""

    def publish(self, topic: str, payload: bytes, retain: bool = False, write: bool = False) -> None:
        """Sends now, or once connected again; `write`: counted in `writes_in_flight` until acknowledged."""

    def hold(self, held: bool) -> None:
        """Stops delivering messages (held), or delivers again: the owner's backlog is full."""

    async def stop(self, goodbye: tuple[str, bytes]) -> None:
        """Publishes `goodbye` (topic, payload; retained), waits a little for it to go, disconnects."""


Subscriptions = list[tuple[str, int, bool]]
"""(topic filter, QoS, no local) of everything a server listens to (kvs.replication.topics)."""

Opener = Callable[[str, tuple[str, bytes], Subscriptions, Listener], Transport]
"""Makes a transport: (client id, will as (topic, payload), subscriptions, listener)."""


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds, for intervals and timeouts (time.monotonic); the event loop's time is the same."""
        ...

    def wall_ms(self) -> int:
        """Milliseconds since the Unix epoch (a run's epoch, send times for the replication lag)."""
        ...


class SystemClock:
    """The real clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall_ms(self) -> int:
        return now_ms()


SYSTEM_CLOCK: Final[Clock] = SystemClock()
