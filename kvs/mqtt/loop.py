"""paho-mqtt driven by the asyncio event loop instead of a thread of its own.

Why: with paho's own thread (`loop_start`), every publish woke that thread and
moved the GIL back and forth; measured, a replicated Put cost three times the
CPU of an unreplicated one (docs/performance.md). Here the event loop reads
and writes paho's socket (`add_reader`/`add_writer`), so paho's callbacks run
on the loop thread, the one that owns the store, and nothing crosses threads.

paho's own retry loop lives in that thread, so reconnecting is this module's
job. One task keeps the connection: once told it was lost (`connection_lost`),
it dials again with a backoff of 0.25, 0.5, 1, 1, ... seconds (and a little
jitter) until the broker has answered a CONNECT (`connection_made`), however
the link fails: refused, reset at once, reset before the broker answers, or
silent (paho's keepalive, or CONNECT_TIMEOUT, gives up on it). Both signals
are levels, not edges, so a loss that arrives while a dial is still under way
is never missed (it was, once: the server stopped reconnecting for good).
Dialing (`connect()`, `reconnect()`) blocks while the TCP connection opens, so
it runs on a worker thread; paho calls the socket callbacks from there, and
they hop to the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties

log = logging.getLogger(__name__)

MISC_EVERY = 1.0
"""Seconds between paho's housekeeping calls (keepalive pings, timeouts)."""
READ_BURST = 256
"""Packets read at most in one turn of the loop, so that gRPC calls still get theirs..."""
READ_SECONDS = 0.001
"""...and seconds spent reading in one turn at most (each packet is decoded as it is read: 256 small
batches took 20 to 40 ms of CPU, a turn the gRPC calls of a replica waited for)."""
BACKOFF = (0.25, 0.5, 1.0)
"""Seconds before each reconnection attempt; the last one repeats (the cap). A server that joins
waits for a restarted broker to be up longer than the last (kvs.replication.sync.SETTLE), so keep it short."""
JITTER = 0.2
"""Each wait is up to this fraction shorter, so that servers that lost one broker do not dial in step."""
CONNECT_TIMEOUT = 15.0
"""Seconds a dial may wait for the broker's answer (CONNACK) before the next one."""
SAY_EVERY = 30.0
"""Seconds between the log lines of a reconnection that keeps failing (the first ones are all said)."""

Dial = Callable[[int], object]
"""Opens a new connection (on a worker thread), for attempt n = 1, 2, ...; raises OSError."""


class LoopDriver:
    """Drives one paho client from the running event loop."""

    def __init__(self, client: mqtt.Client, dial: Dial | None = None) -> None:
        self._client = client
        self._dial: Dial = dial or (lambda attempt: client.reconnect())
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stopping = False
        self._paused = False  # the owner has too much to do: the broker's messages wait in the socket
        self._misc: asyncio.Task[None] | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()  # set by connection_lost, cleared by the dial after it
        self._made = asyncio.Event()  # set by connection_made: the broker accepted the last dial
        self._pause = 0.0
        self._write_scheduled = False
        self._waiting_to_write = False  # the socket's buffer was full: the loop watches it
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write

    async def connect(self, host: str, port: int, keepalive: int, properties: Properties) -> None:
        """The first connection; raises OSError when the broker cannot be reached."""
        await asyncio.to_thread(self._client.connect, host, port, keepalive, properties=properties)
        if self._misc is None:  # a first connection may try several brokers
            self._misc = asyncio.create_task(self._housekeeping())
            self._reconnecting = asyncio.create_task(self._keep_connected())

    @property
    def stopping(self) -> bool:
        return self._stopping

    def connection_lost(self, pause: float = 0.0) -> None:
        """Call from on_disconnect: dials again until the broker answers (unless stopping); the
        first dial waits at least `pause` seconds (a broker that refused something will again)."""
        self._pause = max(self._pause, pause)
        self._lost.set()

    def connection_made(self) -> None:
        """Call from on_connect when the broker accepted the connection."""
        self._made.set()

    async def stop(self) -> None:
        self._stopping = True
        for task in (self._misc, self._reconnecting):
            if task:
                task.cancel()
        self._client.disconnect()
        # The DISCONNECT packet is written by loop_write on the next turns of the loop.
        for _ in range(50):
            if self._client.socket() is None:
                break
            await asyncio.sleep(0.01)

    async def _keep_connected(self) -> None:
        while not self._stopping:
            await self._lost.wait()
            await self._reconnect()

    async def _reconnect(self) -> None:
        """Dials until a dial is answered and not lost since."""
        attempt, since, said = 0, time.monotonic(), 0.0
        while not self._stopping:
            wait = max(BACKOFF[min(attempt, len(BACKOFF) - 1)], self._pause)
            self._pause = 0.0
            await asyncio.sleep(wait * (1 - JITTER * random.random()))
            attempt += 1
            self._lost.clear()
            self._made.clear()
            self._unwatch()  # the dial closes the old socket: the loop must not read it meanwhile
            failure: str | None
            try:
                await asyncio.to_thread(self._dial, attempt)
            except Exception as error:  # OSError mostly; whatever it is, dial again
                failure = getattr(error, "strerror", None) or str(error) or type(error).__name__
            else:
                failure = await self._answer()
                if failure is None:
                    if attempt > 1:
                        log.info("reconnected after %d attempts in %.1f s", attempt, time.monotonic() - since)
                    return
            now = time.monotonic()
            if attempt <= 3 or now - said >= SAY_EVERY:
                said = now
                took = now - since
                log.warning(
                    "broker still unreachable after %d attempt(s) in %.1f s (%s)", attempt, took, failure
                )

    async def _answer(self) -> str | None:
        """None once the broker accepted the dial, else why not."""
        made = asyncio.ensure_future(self._made.wait())
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait([made, lost], timeout=CONNECT_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            made.cancel()
            lost.cancel()
        if self._lost.is_set():
            return "the connection was lost before the broker answered, or right after"
        if not self._made.is_set():
            return f"no answer to CONNECT in {CONNECT_TIMEOUT:g} s"
        return None

    def _unwatch(self) -> None:
        sock = self._client.socket()
        if sock is not None:
            self._forget(sock.fileno())

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(MISC_EVERY)
            self._client.loop_misc()

    # paho's socket callbacks: on the loop thread, or on a connecting worker -----

    def _on_loop(self, action: Callable[..., object], *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            action(*args)
        else:
            with contextlib.suppress(RuntimeError):  # the loop has closed: shutting down
                self._loop.call_soon_threadsafe(action, *args)

    def pause_reading(self) -> None:
        """Stops reading from the broker (TCP then holds the sender back) until `resume_reading`."""
        sock = self._client.socket()
        if not self._paused and sock is not None:
            self._paused = True
            self._loop.remove_reader(sock.fileno())

    def resume_reading(self) -> None:
        sock = self._client.socket()
        if self._paused:
            self._paused = False
            if sock is not None:
                self._loop.add_reader(sock.fileno(), self._read)

    def _socket_open(self, client: mqtt.Client, userdata: object, sock: Any) -> None:
        # paho leaves Nagle's algorithm on, which delays small publishes by up to 40 ms.
        if sock.family in (socket.AF_INET, socket.AF_INET6):  # not the private broker's Unix socket
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._paused = False
        self._on_loop(self._loop.add_reader, sock.fileno(), self._read)

    def _socket_close(self, client: mqtt.Client, userdata: object, sock: Any) -> None:
        fd = sock.fileno()  # paho closes the socket right after this call
        self._on_loop(self._forget, fd)

    def _register_write(self, client: mqtt.Client, userdata: object, sock: Any) -> None:
        self._on_loop(self._write_soon)

    def _unregister_write(self, client: mqtt.Client, userdata: object, sock: Any) -> None:
        pass  # _write watches the socket itself

    def _forget(self, fd: int) -> None:
        self._loop.remove_reader(fd)
        self._loop.remove_writer(fd)
        self._waiting_to_write = False

    def _read(self) -> None:
        # loop_read handles one packet per call when nothing of ours awaits an
        # acknowledgement; read on while more is waiting, or a busy loop would
        # take one replicated batch per turn and fall behind; but not for longer
        # than READ_SECONDS: the rest waits for the next turn.
        deadline = time.monotonic() + READ_SECONDS
        for _ in range(READ_BURST):
            self._client.loop_read()
            sock = self._client.socket()
            if self._paused or sock is None or not _has_data(sock):
                return
            if time.monotonic() >= deadline:
                if isinstance(sock, ssl.SSLSocket) and sock.pending():
                    self._loop.call_soon(self._read_on)  # bytes the socket's reader will not see
                return

    def _read_on(self) -> None:
        if not self._paused and self._client.socket() is not None:
            self._read()

    def _write_soon(self) -> None:
        # Everything published in this turn of the loop goes out in one pass at
        # its end. The socket is watched for writability only when its buffer
        # is full, rather than added and removed for every publish.
        if not self._write_scheduled:
            self._write_scheduled = True
            self._loop.call_soon(self._write)

    def _write(self) -> None:
        self._write_scheduled = False
        self._client.loop_write()
        sock = self._client.socket()
        if sock is None:
            return
        if self._client.want_write() and not self._waiting_to_write:
            self._loop.add_writer(sock.fileno(), self._write)
            self._waiting_to_write = True
        elif not self._client.want_write() and self._waiting_to_write:
            self._loop.remove_writer(sock.fileno())
            self._waiting_to_write = False


def _has_data(sock: Any) -> bool:
    if isinstance(sock, ssl.SSLSocket):
        if sock.pending():
            return True  # decrypted bytes the event loop cannot see on the socket
        sock = super(ssl.SSLSocket, sock)  # peek at the encrypted bytes (SSLSocket refuses flags)
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False
    except OSError:
        return True  # let loop_read meet the error and report the disconnection
