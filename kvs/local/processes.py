"""Child processes for local clusters: reserved ports, polling until a deadline, stopping by PID.

Ports come from the kernel (bind to port 0) and stay reserved until the process that
owns them is closed: `reserve_port` keeps a socket bound (SO_REUSEADDR, never
listening) on the port, which the kernel then hands to nobody else, while mosquitto
and the kvs server, which set SO_REUSEADDR too, can still bind and listen on it. So
two processes of one test (or of two test runs on one machine) never get the same
port, and a server restarted on its port finds it free.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import kvs
from kvs._gen import kvs_pb2_grpc, replication_pb2, replication_pb2_grpc
from kvs.admin.parts import joined
from kvs.mqtt.broker import Address, listening, mosquitto_binary, mosquitto_config, write_password_file
from kvs.net.channel import open_channel
from kvs.net.tls import ClientTls

T = TypeVar("T")

SOURCE = Path(kvs.__file__).resolve().parents[1]
"""The directory that holds the `kvs` package: child servers run this very code."""
SERVER = (sys.executable, "-m", "kvs.server")
"""How a `LocalServer` starts by default (`command`): this Python, this kvs."""


class Reservation:
    """A port of `host` that nobody else gets until `release()`: a socket bound to it, not listening."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._socket: socket.socket | None = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self.port: int = self._socket.getsockname()[1]

    def release(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def reserve_port(host: str = "127.0.0.1") -> Reservation:
    """A free port of `host` (a loopback address), held until released (see the module's docstring)."""
    return Reservation(host)


def _port(port: int | None) -> tuple[int, Reservation | None]:
    """`port` as given, or a reserved one and its reservation."""
    if port is not None:
        return port, None
    reservation = reserve_port()
    return reservation.port, reservation


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 20.0, every: float = 0.05) -> T:
    """Polls `probe` until it returns something other than None (or False); AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def port_open(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port`."""
    return listening(Address("127.0.0.1", port))


class Process:
    """A child process with its output in a log file; stopped by PID, never by name.

    It runs in a session of its own, so a Ctrl-C typed at the parent reaches only the
    parent, which stops its children in order. `close()` stops it and releases its port.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        *,
        cwd: Path | None = None,
        reservation: Reservation | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self.cwd = cwd
        self._env = {**os.environ, **(env or {})}
        self.popen: subprocess.Popen[bytes] | None = None
        self._reservation = reservation  # released by close()

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self._env,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Sends `sig` to the process and waits; kills it if it does not end in time."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        return self.popen.returncode

    def close(self) -> None:
        """Stops the process and releases its reserved port."""
        self.stop()
        if self._reservation is not None:
            self._reservation.release()
            self._reservation = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass(frozen=True)
class BrokerTls:
    """The broker's certificate chain and private key (PEM files): its listener speaks MQTT over TLS."""

    cert: Path
    key: Path


class LocalBroker(Process):
    """A private mosquitto on a loopback port, configured as the private broker of `kvs.mqtt.broker`.

    By default it lets anyone in. With `users` (name -> password) it accepts only
    them; with `tls` its listener speaks TLS only. Its files go to `log_dir`.
    """

    def __init__(
        self,
        log_dir: Path,
        port: int | None = None,
        *,
        users: Mapping[str, str] | None = None,
        tls: BrokerTls | None = None,
    ) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise FileNotFoundError("mosquitto is not installed (./compile.sh installs it)")
        self.port, reservation = _port(port)
        name = f"mosquitto-{self.port}"
        passwords = write_password_file(log_dir / f"{name}.passwd", users) if users else None
        config = log_dir / f"{name}.conf"
        config.write_text(
            mosquitto_config(self.port, password_file=passwords, tls=(tls.cert, tls.key) if tls else None)
        )
        super().__init__(name, [binary, "-c", str(config)], log_dir, reservation=reservation)

    def start(self) -> None:
        super().start()
        wait_for(f"mosquitto on port {self.port}", lambda: port_open(self.port) or not self.running())
        assert self.running(), self.log()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def config_home(log_dir: Path) -> Path:
    """The XDG_CONFIG_HOME of the servers started with `log_dir`: kvs keeps its keys in `kvs/` under it."""
    return log_dir / "config"


class LocalServer(Process):
    """A kvs server listening on 127.0.0.1 on a reserved port (or `port`), with id `name` (or `node_id`).

    `command` starts it (`python -m kvs.server` of this kvs by default; the tests use
    `./server.sh`); `extra` are more flags (--broker, --cluster, ...). Its cluster key
    (and any broker password it makes) go to `config_home(log_dir)`, never to the
    user's own ~/.config.
    """

    def __init__(
        self,
        log_dir: Path,
        name: str,
        extra: Sequence[str] = (),
        port: int | None = None,
        *,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] = SERVER,
        cwd: Path | None = None,
        node_id: str | None = None,
    ) -> None:
        self.port, reservation = _port(port)
        node_id = node_id or name
        argv = [*command, "--porta", str(self.port), "--listen", "127.0.0.1", "--id", node_id, *extra]
        pythonpath = os.pathsep.join(filter(None, [str(SOURCE), os.environ.get("PYTHONPATH")]))
        env = {"XDG_CONFIG_HOME": str(config_home(log_dir)), "PYTHONPATH": pythonpath, **(env or {})}
        super().__init__(name, argv, log_dir, env, cwd=cwd, reservation=reservation)
        self._channel: grpc.Channel | None = None
        self.tls: ClientTls | None = None
        """What `channel` uses: set it for a server started with --tls-cert (before the first call)."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            # Short reconnection backoff: a channel opened before the server listens
            # would otherwise wait a second or more before trying again.
            options = [("grpc.initial_reconnect_backoff_ms", 20), ("grpc.max_reconnect_backoff_ms", 100),
                       ("grpc.min_reconnect_backoff_ms", 20)]  # fmt: skip
            self._channel = open_channel(self.address, self.tls, options=options)
        return self._channel

    @property
    def stub(self) -> kvs_pb2_grpc.KeyValueStoreStub:
        return kvs_pb2_grpc.KeyValueStoreStub(self.channel)

    def status(self) -> replication_pb2.StatusReply:
        reply: replication_pb2.StatusReply = replication_pb2_grpc.AdminStub(self.channel).Status(
            replication_pb2.StatusRequest(), timeout=10
        )
        return reply

    def dump(self) -> list[replication_pb2.Fragment]:
        """The whole replica: every key's floor and versions, tombstones included."""
        parts = replication_pb2_grpc.AdminStub(self.channel).Dump(replication_pb2.DumpRequest(), timeout=60)
        return list(joined(parts))  # a long history comes in several parts

    def health(self) -> int | None:
        try:
            reply = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return None
        status: int = reply.status
        return status

    def wait_serving(self, timeout: float = 30.0) -> None:
        def serving() -> bool:
            assert self.running(), f"{self.name} exited:\n{self.log()}"
            return bool(self.health() == health_pb2.HealthCheckResponse.SERVING)

        wait_for(f"{self.name} to report SERVING", serving, timeout, every=0.01)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        return super().stop(sig, timeout)
