"""A TCP proxy on loopback that plays a bad network link, for the end-to-end tests and the benchmark.

It forwards one listening port to one target, on an event loop in a thread of
its own, in one of these modes (change it at any time with `set`):

    pass    forwards both ways, each chunk `delay` seconds late (order kept)
    reset   resets every connection as soon as it is accepted (and the open ones)
    stall   accepts, then forwards nothing either way (open ones freeze too)
    cut     like reset, for a cut link: nothing gets through

Connections are always reset (RST), never closed politely, as a broken link
would leave them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from typing import Literal

Mode = Literal["pass", "reset", "stall", "cut"]


class LinkProxy:
    def __init__(self, target: tuple[str, int], listen_host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = target
        self.listen_host = listen_host
        self.port = port
        self.mode: Mode = "pass"
        self.delay = 0.0
        """Seconds each chunk waits, each way (50 ms: a slow link between sites)."""
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._links: set[asyncio.StreamWriter] = set()
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.base_events.Server | None = None

    @property
    def address(self) -> str:
        return f"{self.listen_host}:{self.port}"

    def start(self) -> LinkProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def set(self, mode: Mode, delay: float | None = None) -> None:
        """Changes the mode (and the delay); reset and cut break the open connections at once."""
        asyncio.run_coroutine_threadsafe(self._set(mode, delay), self._loop).result(10)

    async def _set(self, mode: Mode, delay: float | None) -> None:
        self.mode = mode
        if delay is not None:
            self.delay = delay
        assert self._flowing is not None
        if mode == "pass":
            self._flowing.set()
        else:
            self._flowing.clear()
        if mode in ("reset", "cut"):
            for writer in list(self._links):
                _abort(writer)

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, self.listen_host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._links):
            _abort(writer)
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # the proxy stops
            await self._link(reader, writer)

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode in ("reset", "cut"):
            _abort(writer)
            return
        try:
            far_reader, far_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(writer)
            return
        self._links |= {writer, far_writer}
        pumps = [
            asyncio.ensure_future(self._pump(reader, far_writer, writer)),
            asyncio.ensure_future(self._pump(far_reader, writer, far_writer)),
        ]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
        for end in (writer, far_writer):
            _abort(end)
            self._links.discard(end)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: asyncio.StreamWriter
    ) -> None:
        assert self._flowing is not None
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.ensure_future(self._send(queue, writer))
        try:
            while True:
                await self._flowing.wait()  # stalled: read nothing, so TCP holds the sender back
                try:
                    data = await reader.read(65536)
                except OSError:
                    return
                if not data or source.is_closing():
                    return
                await self._flowing.wait()
                queue.put_nowait((time.monotonic() + self.delay, data))
        finally:
            sender.cancel()

    async def _send(self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        while True:
            due, data = await queue.get()
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await self._flowing.wait()
            writer.write(data)
            with contextlib.suppress(OSError):
                await writer.drain()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Resets the connection (RST), as a broken link does, rather than closing it."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
