"""The replication topics of one server, and which message each may carry. Pure: no IO.

Under the cluster prefix C (docs/replication.md):

    C/batch        Batch      the mutations a server accepted, as it accepted them
    C/digest       Digest     a hash per key bucket: periodic, or a request after (re)connecting
    C/to/<id>      Transfer   state sent to one server; or a Digest request to that server
    C/peers/<id>   Presence   retained: up while the server runs, down once it has left
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from kvs.errors import CodecError
from kvs.replication.codec import Batch, Digest, Message, Presence, Transfer

UPTIME: Final = "$SYS/broker/uptime"
BRIDGES: Final = "$SYS/broker/connection/+/state"
"""Mosquitto's bridge notifications ("1" up, "0" down), retained: a joiner does not trust its broker's
presences while one of its bridges is down, nor until SETTLE s after one came up (docs/sites.md)."""
"""Mosquitto's age in seconds ("42 seconds"): a joiner trusts retained presences once it is old enough."""


@dataclass(frozen=True)
class Topics:
    cluster: str
    node_id: str

    def route(self, route: str) -> str:
        """The topic of an action's route (kvs.replication.actions).

        A route is "batch", "digest", "presence", or a peer's id (its inbox).
        """
        if route in ("batch", "digest"):
            return f"{self.cluster}/{route}"
        if route == "presence":
            return self.presence(self.node_id)
        return f"{self.cluster}/to/{route}"

    def presence(self, node_id: str) -> str:
        return f"{self.cluster}/peers/{node_id}"

    def subscriptions(self) -> list[tuple[str, int, bool]]:
        """(topic, QoS, no local) of everything a server listens to."""
        return [
            (self.route("batch"), 1, True),
            (self.route("digest"), 1, True),
            (self.route(self.node_id), 1, False),
            (self.presence("+"), 1, False),
            (UPTIME, 0, False),
            (BRIDGES, 0, False),
        ]

    def check(self, topic: str, message: Message) -> Message:
        """The message, if it is the kind its topic carries and comes from where it says."""
        expected: tuple[type, ...]
        if topic == self.route("batch"):
            expected = (Batch,)
        elif topic == self.route("digest"):
            expected = (Digest,)
        elif topic == self.route(self.node_id):
            expected = (Transfer, Digest)
        else:
            expected = (Presence,)
            if topic != self.presence(message.origin):
                raise CodecError(f"presence of {message.origin!r} on another server's topic", "misrouted")
        if not isinstance(message.body, expected):
            raise CodecError(f"a {type(message.body).__name__} on {topic}", "misrouted")
        if message.to != (self.node_id if topic == self.route(self.node_id) else ""):
            raise CodecError(f"signed for {message.to or 'everyone'!r}, found on {topic}", "misrouted")
        if message.origin == self.node_id and not isinstance(message.body, Presence):
            raise CodecError("claims to come from this server", "misrouted")
        return message


def uptime(payload: bytes) -> int | None:
    """The seconds in Mosquitto's `$SYS/broker/uptime` payload ("42 seconds"), if that is what it is."""
    seconds = payload.split(b" ")[0]
    return int(seconds) if seconds.isdigit() else None


def recipient(route: str) -> str:
    """Who a message on `route` is signed for: a peer's id for its inbox, else everyone ("")."""
    return "" if route in ("batch", "digest", "presence") else route


def bridge_state(topic: str, payload: bytes) -> tuple[str, bool] | None:
    """(bridge, up) from a Mosquitto bridge notification on BRIDGES, if that is what it is."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[:3] != ["$SYS", "broker", "connection"] or parts[4] != "state":
        return None
    if payload not in (b"0", b"1"):
        return None
    return parts[3], payload == b"1"
