"""Fixtures that start real processes and always stop them, by PID."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.conftest import FAILED
from tests.e2e.harness import BrokerTls, KvsServer, Mosquitto, Process


class Processes:
    """Starts brokers and servers for one test; the fixture stops them all.

    Servers join the test's own cluster on the test's own broker (started on
    first use) unless told otherwise.
    """

    def __init__(self, log_dir: Path, cluster: str) -> None:
        self.log_dir = log_dir
        self.cluster = cluster
        self.started: list[Process] = []
        self._broker: Mosquitto | None = None

    @property
    def broker(self) -> Mosquitto:
        if self._broker is None:
            self._broker = self.new_broker()
        return self._broker

    def new_broker(
        self, port: int | None = None, *, users: Mapping[str, str] | None = None, tls: BrokerTls | None = None
    ) -> Mosquitto:
        broker = Mosquitto(self.log_dir, port, users=users, tls=tls)
        self.started.append(broker)
        broker.start()
        return broker

    def server(
        self,
        name: str,
        extra: Sequence[str] = (),
        *,
        wait: bool = True,
        port: int | None = None,
        sync_interval: float = 1.0,
        env: dict[str, str] | None = None,
    ) -> KvsServer:
        settings = ["--cluster", self.cluster, "--sync-interval", str(sync_interval)]
        if "--broker" not in extra and not (env and "KVS_BROKER" in env):
            settings += ["--broker", self.broker.address]
        server = KvsServer(self.log_dir, name, [*settings, *extra], port, env)
        self.started.append(server)
        server.start()
        if wait:
            server.wait_serving()
        return server

    def cluster_of(self, count: int, sync_interval: float = 1.0) -> list[KvsServer]:
        """`count` servers s1, s2, ... started together, once all report SERVING."""
        servers = [self.server(f"s{i}", wait=False, sync_interval=sync_interval) for i in range(1, count + 1)]
        for server in servers:
            server.wait_serving()
        return servers


@pytest.fixture
def processes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path, f"test-{uuid.uuid4().hex[:8]}")
    yield started
    for process in reversed(started.started):
        process.stop()
    if request.node.stash.get(FAILED, False):
        for process in started.started:
            print(f"----- log of {process.name} (pid {process.popen.pid if process.popen else '-'}) -----")
            print(process.log()[-20000:])
