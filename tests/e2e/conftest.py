"""Fixtures that start real processes and always stop them, by PID; helpers the e2e tests share
that need them (servers on a data dir, servers whose ids are addresses, TLS certificates)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from kvs.local.processes import BrokerTls, LocalBroker, Process, Reservation, config_home, reserve_port
from kvs.net.tls import ClientTls
from tests.conftest import FAILED
from tests.e2e.harness import KvsServer


class Processes:
    """Starts brokers and servers for one test; the fixture stops them all.

    Servers join the test's own cluster on the test's own broker (started on
    first use) unless told otherwise. Ports handed out stay reserved until the test ends.
    """

    def __init__(self, log_dir: Path, cluster: str) -> None:
        self.log_dir = log_dir
        self.cluster = cluster
        self.started: list[Process] = []
        self._broker: LocalBroker | None = None
        self._ports: list[Reservation] = []

    @property
    def broker(self) -> LocalBroker:
        if self._broker is None:
            self._broker = self.new_broker()
        return self._broker

    def new_broker(
        self, port: int | None = None, *, users: Mapping[str, str] | None = None, tls: BrokerTls | None = None
    ) -> LocalBroker:
        broker = LocalBroker(self.log_dir, port, users=users, tls=tls)
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

    def port(self) -> int:
        """A loopback port that nothing else gets until the test ends (nothing listens on it)."""
        reservation = reserve_port()
        self._ports.append(reservation)
        return reservation.port

    def cluster_key(self) -> bytes:
        """The cluster key the test's servers use (a member's; tests forge with others).

        The first server of the test created it under the test's XDG_CONFIG_HOME."""
        return (config_home(self.log_dir) / "kvs" / f"{self.cluster}.key").read_bytes()

    def close(self) -> None:
        for process in reversed(self.started):
            process.close()
        for reservation in self._ports:
            reservation.release()


def start(processes: Processes, name: str, data_dir: Path, port: int | None = None, *,
          wait: bool = True, extra: Sequence[str] = ()) -> KvsServer:  # fmt: skip
    return processes.server(name, ["--data-dir", str(data_dir), *extra], port=port, wait=wait)


def addressed(processes: Processes, count: int, sync_interval: float = 1.0) -> list[KvsServer]:
    """Servers whose ids are their addresses, so that status can find them from one."""
    ports = [processes.port() for _ in range(count)]
    servers = [
        processes.server(f"127.0.0.1:{port}", port=port, wait=False, sync_interval=sync_interval)
        for port in ports
    ]
    for server in servers:
        server.wait_serving()
    return servers


@dataclass(frozen=True)
class Certs:
    ca: Path  # signs the server's and the good client's certificates
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # trusted by nobody here
    other_cert: Path  # a client certificate signed by other_ca
    other_key: Path

    def client_flags(self) -> list[str]:
        """The flags of a client (`client.sh`, `admin.sh`) that trusts `ca` and shows the good client's
        certificate."""
        return [
            "--tls-ca",
            str(self.ca),
            "--tls-cert",
            str(self.client_cert),
            "--tls-key",
            str(self.client_key),
        ]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("certs")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1", "::1")
    client = ca.issue_cert("client@kvs.test")
    stranger = other.issue_cert("stranger@kvs.test")
    paths = {name: folder / f"{name}.pem" for name in Certs.__dataclass_fields__}
    ca.cert_pem.write_to_path(paths["ca"])
    other.cert_pem.write_to_path(paths["other_ca"])
    for blob, cert, key in [(server, "server_cert", "server_key"), (client, "client_cert", "client_key"),
                            (stranger, "other_cert", "other_key")]:  # fmt: skip
        blob.private_key_pem.write_to_path(paths[key])
        for pem in blob.cert_chain_pems:
            pem.write_to_path(paths[cert], append=True)
    return Certs(**paths)


def tls_server(processes: Processes, certs: Certs, mutual: bool = False) -> KvsServer:
    flags = ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)]
    if mutual:
        flags += ["--tls-client-ca", str(certs.ca)]
    server = processes.server("tls1", flags, wait=False)
    server.tls = (
        ClientTls.from_files(str(certs.ca), str(certs.client_cert), str(certs.client_key))
        if mutual
        else ClientTls.from_files(str(certs.ca))
    )
    server.wait_serving()  # the health check, over TLS
    return server


@pytest.fixture
def processes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path, f"test-{uuid.uuid4().hex[:8]}")
    yield started
    started.close()
    if request.node.stash.get(FAILED, False):
        for process in started.started:
            print(f"----- log of {process.name} (pid {process.popen.pid if process.popen else '-'}) -----")
            print(process.log()[-20000:])
