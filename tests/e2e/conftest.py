"""Fixtures that start real processes and always stop them, by PID."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.conftest import FAILED
from tests.e2e.harness import KvsServer, Mosquitto, Process


class Processes:
    """Starts brokers and servers for one test; the fixture stops them all."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Process] = []

    def broker(self, port: int | None = None) -> Mosquitto:
        broker = Mosquitto(self.log_dir, port)
        self.started.append(broker)
        broker.start()
        return broker

    def server(
        self, name: str, extra: Sequence[str] = (), *, wait: bool = True, port: int | None = None
    ) -> KvsServer:
        server = KvsServer(self.log_dir, name, extra, port)
        self.started.append(server)
        server.start()
        if wait:
            server.wait_serving()
        return server


@pytest.fixture
def processes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    yield started
    for process in reversed(started.started):
        process.stop()
    if request.node.stash.get(FAILED, False):
        for process in started.started:
            print(f"----- log of {process.name} (pid {process.popen.pid if process.popen else '-'}) -----")
            print(process.log()[-20000:])
