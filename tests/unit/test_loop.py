"""kvs.mqtt.loop's reconnections, against a fake paho client: a loss that comes
while a reconnection is still under way must not end the retrying."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from kvs.mqtt.loop import LoopDriver


class FakeClient:
    """Enough of paho's client for LoopDriver: every reconnection opens a link
    that the far end resets at once, before the reconnecting task has resumed."""

    def __init__(self) -> None:
        self.on_socket_open: Any = None
        self.on_socket_close: Any = None
        self.on_socket_register_write: Any = None
        self.on_socket_unregister_write: Any = None
        self.driver: LoopDriver | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.reconnects = 0
        self.lock = threading.Lock()

    def connect(self, *args: object, **kwargs: object) -> None:
        pass

    def reconnect(self) -> None:
        with self.lock:
            self.reconnects += 1
        assert self.loop is not None
        assert self.driver is not None
        # The loop reads the reset (paho's on_disconnect) while this call has not returned yet.
        self.loop.call_soon_threadsafe(self.driver.connection_lost)
        time.sleep(0.05)

    def is_connected(self) -> bool:
        return False

    def socket(self) -> None:
        return None

    def loop_misc(self) -> None:
        pass

    def disconnect(self) -> None:
        pass


def test_a_loss_during_a_reconnection_is_retried() -> None:
    async def run() -> int:
        client = FakeClient()
        client.loop = asyncio.get_running_loop()
        driver = LoopDriver(client)  # type: ignore[arg-type]
        client.driver = driver
        await driver.connect("127.0.0.1", 1, 10, None)  # type: ignore[arg-type]
        driver.connection_lost()
        deadline = time.monotonic() + 5
        while client.reconnects < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await driver.stop()
        return client.reconnects

    assert asyncio.run(run()) >= 3
