"""One MQTT 5 session with the broker, for the replicator: paho's client on the
event loop (kvs.mqtt), its first connection, its reconnections, and its
callbacks turned into calls on an `Events` object.

What it guarantees the replicator: `connect()` either succeeds or raises one
clear error (BrokerUnreachable, or BrokerRefused when the broker says no);
after that it reconnects for ever; every (re)connection subscribes again; and
nothing raised by a handler escapes into paho (it would stop the reading of
the packets behind it).

Several brokers (`--broker a:1883,b:1883`, docs/sites.md): the first
connection goes to the first that answers. Once connected, a lost connection
is dialed again at the same broker first (the session resumes there), then at
the next of the list, and so on round the list, one broker per attempt. A move
to another broker starts a clean session there; to the replicator it is a
reconnection like any other (it says its presence again and asks its peers for
what it may have missed), and paho sends again the publishes the old broker
had not acknowledged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any, Final, ParamSpec, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from kvs.errors import BrokerRefused, BrokerUnreachable
from kvs.mqtt.broker import Address, BrokerAuth, configure
from kvs.mqtt.loop import LoopDriver
from kvs.mqtt.owner import check_peer

log = logging.getLogger(__name__)

KEEPALIVE: Final = 10
"""Seconds; the broker declares a silent server gone (publishes its will) after 1.5 times this."""
SESSION_EXPIRY: Final = 300
"""Seconds the broker keeps queueing for a disconnected server before forgetting it."""
REFUSED_PAUSE: Final = 5.0
"""Seconds before dialing again a broker that refused a subscription (its ACL may change)."""

REFUSED: Final = (
    "the broker at %s refused the subscription to %s: this server hears nothing from its peers and counts"
    " as not connected (check the broker's ACL for the cluster's topics, docs/replication.md)"
)

P = ParamSpec("P")


class Events(Protocol):
    """What the session tells its owner, on the event loop."""

    def on_connected(self) -> None: ...
    def on_lost(self) -> None: ...
    def on_subscribed(self) -> None: ...
    def on_message(self, topic: str, payload: bytes, retained: bool) -> None: ...


def _guarded(callback: Callable[P, None]) -> Callable[P, None]:
    """Nothing escapes a paho callback: a bad message must not stop the reading of the next."""

    @functools.wraps(callback)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            callback(*args, **kwargs)
        except Exception:
            log.exception("error in MQTT callback %s (ignored)", callback.__name__)

    return wrapper


def opener(
    broker: Address | Sequence[Address], auth: BrokerAuth
) -> Callable[[str, tuple[str, bytes], list[tuple[str, int, bool]], Events], Session]:
    """Makes sessions with `broker`, or the first that answers of several (a
    kvs.replication.transport.Opener)."""
    return lambda client_id, will, subscriptions, events: Session(
        client_id, broker, auth, will=will, subscriptions=subscriptions, events=events
    )


class Session:
    """A kvs.replication.transport.Transport over paho."""

    def __init__(
        self,
        client_id: str,
        broker: Address | Sequence[Address],
        auth: BrokerAuth,
        *,
        will: tuple[str, bytes],
        subscriptions: list[tuple[str, int, bool]],
        events: Events,
    ) -> None:
        self.brokers = (broker,) if isinstance(broker, Address) else tuple(broker)
        self.broker = self.brokers[0]
        """The broker in use (the last that accepted a connection)."""
        self._dialed = self.broker  # the broker paho is set to (the last dialed)
        self._properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        self._properties.SessionExpiryInterval = SESSION_EXPIRY
        self._started = False  # the first connection was accepted: reconnect from now on
        self._events = events
        self._subscriptions = [(t, SubscribeOptions(qos=q, noLocal=n)) for t, q, n in subscriptions]
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            transport="unix" if self.broker.socket is not None else "tcp",
        )
        client.will_set(will[0], will[1], qos=1, retain=True)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)  # no limit: the replicator bounds its writes itself
        configure(client, auth)
        client.on_connect = _guarded(self._on_connect)
        client.on_disconnect = _guarded(self._on_disconnect)
        client.on_subscribe = _guarded(self._on_subscribe)
        client.on_message = _guarded(
            lambda c, u, message: events.on_message(message.topic, bytes(message.payload), message.retain)
        )
        client.on_publish = _guarded(lambda c, u, mid, reason, properties: self._acknowledged(mid))
        self._client = client
        self._writes: set[int] = set()  # the mids of writes the broker has not acknowledged yet
        self._unacknowledged: dict[int, int] = {}  # the payload sizes of all those, by mid
        self.unacknowledged_bytes = 0
        self._driver = LoopDriver(client, self._dial)
        if self.broker.verify_owner:  # before the driver's own handler, and before paho sends CONNECT
            opened = client.on_socket_open
            assert opened is not None

            def check_then_open(client: mqtt.Client, userdata: object, sock: Any) -> None:
                check_peer(sock)  # raises (paho then sends nothing): the listener is not trusted
                opened(client, userdata, sock)

            client.on_socket_open = check_then_open
        self._up = False  # the broker accepted this connection (CONNACK)
        self._subscribed = False  # and our subscriptions on it
        self._refusal = ""  # the last refused subscription said in the log (said once until accepted)
        self._connack: asyncio.Future[ReasonCode | None] = asyncio.get_running_loop().create_future()

    @property
    def connected(self) -> bool:
        """Connected, and every subscription of the cluster accepted: a deaf server is not connected."""
        return self._client.is_connected() and self._subscribed

    async def connect(self) -> None:
        """The first connection, to the first broker that answers; raises if none does, or at once
        if one refuses this server (BrokerRefused: credentials, not the network)."""
        failures = []
        for broker in self.brokers:
            try:
                await self._connect(broker)
            except BrokerRefused:
                raise  # a refusal is said as one (BrokerRefused is a BrokerUnreachable too)
            except BrokerUnreachable as error:
                failures.append(str(error))
                if len(self.brokers) > 1:
                    log.warning("broker %s", error)
            else:
                return
        await self._driver.stop()
        raise BrokerUnreachable("; ".join(failures))

    async def _connect(self, broker: Address) -> None:
        self._connack = asyncio.get_running_loop().create_future()
        self.broker = self._dialed = broker
        try:
            await self._driver.connect(broker.socket or broker.host, broker.port, KEEPALIVE, self._properties)
            reason = await asyncio.wait_for(asyncio.shield(self._connack), 10)
        except TimeoutError:  # before OSError, its base class
            reason = None
        except OSError as error:
            raise BrokerUnreachable(f"{broker}: {error.strerror or error}") from None
        if reason is not None and reason.is_failure:
            await self._driver.stop()
            raise BrokerRefused(f"{broker}: {reason}")
        if reason is None:
            raise BrokerUnreachable(f"{broker}: no answer to CONNECT")

    def _dial(self, attempt: int) -> None:
        """A reconnection (on a worker thread): the broker in use first, then round the list."""
        at = self.brokers.index(self.broker) if self.broker in self.brokers else 0
        target = self.brokers[(at + attempt - 1) % len(self.brokers)]
        if target == self._dialed:
            self._client.reconnect()  # the session resumes
            return
        log.info("trying broker %s", target)
        self._dialed = target
        # A broker not dialed last: connect() starts a clean session there (clean start on the first
        # connection, resumed on the reconnections that follow).
        self._client.connect(
            target.socket or target.host, target.port, KEEPALIVE, properties=self._properties
        )

    def hold(self, held: bool) -> None:
        """Stops reading what the broker sends (held) or reads again: the owner's backlog is full."""
        if held:
            self._driver.pause_reading()
        else:
            self._driver.resume_reading()

    def publish(self, topic: str, payload: bytes, retain: bool = False, write: bool = False) -> None:
        """QoS 1; paho keeps it while disconnected and sends it once connected again. `write`:
        count it in `writes_in_flight` until the broker acknowledges it."""
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if write:
            self._writes.add(info.mid)
        self.unacknowledged_bytes += len(payload) - self._unacknowledged.get(info.mid, 0)
        self._unacknowledged[info.mid] = len(payload)

    def _acknowledged(self, mid: int) -> None:
        self._writes.discard(mid)
        self.unacknowledged_bytes -= self._unacknowledged.pop(mid, 0)

    @property
    def writes_in_flight(self) -> int:
        return len(self._writes)

    async def stop(self, goodbye: tuple[str, bytes]) -> None:
        """Publishes `goodbye` (retained), waits up to 2 s for the broker to take everything, disconnects."""
        info = self._client.publish(*goodbye, qos=1, retain=True)
        for _ in range(200):
            if not self._client.is_connected() or info.is_published():
                break
            await asyncio.sleep(0.01)
        await self._driver.stop()

    # paho's callbacks, on the event loop (kvs.mqtt) ----------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not self._connack.done():
            self._connack.set_result(reason)
        if reason.is_failure:
            if self._started:  # the first refusal is connect()'s to report
                log.error("the broker at %s refused the connection: %s", self._dialed, reason)
            return
        if self._dialed != self.broker:
            log.warning("moved from broker %s to broker %s", self.broker, self._dialed)
            self.broker = self._dialed
        log.info("broker connected (%s%s)", self.broker, ", session resumed" if flags.session_present else "")
        self._subscribed, self._up, self._started = False, True, True
        self._driver.connection_made()
        self._events.on_connected()
        client.subscribe(self._subscriptions)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._subscribed = False
        if not self._connack.done():
            self._connack.set_result(None)  # hung up before answering (a TLS port?): connect() says so
        if not self._started:
            return
        self._events.on_lost()
        if not self._driver.stopping:
            if self._up:  # a dial that failed is the reconnection's to report
                log.warning("broker connection lost (%s); reconnecting", reason)
            self._driver.connection_lost()
        self._up = False

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        # The fifth, $SYS, is optional (a broker may keep its statistics to itself).
        refused = [
            f"{topic} ({reason})"
            for (topic, _), reason in zip(self._subscriptions[:4], reasons, strict=False)
            if reason.is_failure
        ]
        if not refused:
            self._subscribed, self._refusal = True, ""
            self._events.on_subscribed()
            return
        # Deaf: it would hear nothing from its peers. Not connected; dial again in a while.
        text = ", ".join(refused)
        if text != self._refusal:
            self._refusal = text
            log.error(REFUSED, self.broker, text)
        self._events.on_lost()
        self._driver.connection_lost(pause=REFUSED_PAUSE)
