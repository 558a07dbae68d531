"""Real processes for end-to-end tests: free ports, polling until a deadline,
stopping by PID, and the logs of whatever failed."""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvs._gen import kvs_pb2_grpc, replication_pb2, replication_pb2_grpc
from kvs.admin.parts import joined
from kvs.net.channel import open_channel
from kvs.net.tls import ClientTls

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 20.0, every: float = 0.05) -> T:
    """Polls `probe` until it returns something other than None (or False)."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Process:
    """A child process with its output in a log file; stopped by PID, never by name."""

    def __init__(
        self, name: str, argv: Sequence[str], log_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self._env = {**os.environ, **(env or {})}
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
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

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass(frozen=True)
class BrokerTls:
    """The broker's certificate chain and private key (PEM files): its listener speaks MQTT over TLS."""

    cert: Path
    key: Path


class Mosquitto(Process):
    """A private broker on a free loopback port, configured as kvs's own embedded one.

    By default it lets anyone in. With `users` (name -> password) it accepts only
    them (mosquitto_passwd); with `tls` its listener speaks TLS only.
    """

    def __init__(
        self,
        log_dir: Path,
        port: int | None = None,
        *,
        users: Mapping[str, str] | None = None,
        tls: BrokerTls | None = None,
    ) -> None:
        self.port = port or free_port()
        config = log_dir / f"mosquitto-{self.port}.conf"
        lines = [f"listener {self.port} 127.0.0.1", f"allow_anonymous {'false' if users else 'true'}"]
        if users:
            lines.append(f"password_file {password_file(log_dir / f'mosquitto-{self.port}.passwd', users)}")
        if tls:
            lines += [f"certfile {tls.cert}", f"keyfile {tls.key}"]
        if users or tls:
            # As root, mosquitto would become the user `mosquitto`, who cannot read 0600 files.
            lines.append(f"user {pwd.getpwuid(os.getuid()).pw_name}")
        lines += ["set_tcp_nodelay true", "sys_interval 1", "max_queued_messages 100000", "persistence false"]
        config.write_text("".join(f"{line}\n" for line in lines))
        super().__init__(f"mosquitto-{self.port}", [mosquitto_binary(), "-c", str(config)], log_dir)

    def start(self) -> None:
        super().start()
        wait_for(f"mosquitto on port {self.port}", lambda: listening(self.port) or not self.running())
        assert self.running(), self.log()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def password_file(path: Path, users: Mapping[str, str]) -> Path:
    """A mosquitto password file (0600) for `users`, hashed by mosquitto_passwd."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.writelines(f"{user}:{password}\n" for user, password in users.items())
    subprocess.run([mosquitto_binary("mosquitto_passwd"), "-U", str(path)], check=True, capture_output=True)
    return path


def mosquitto_binary(name: str = "mosquitto") -> str:
    for directory in ("/usr/sbin", "/usr/local/sbin", "/usr/bin"):
        if (Path(directory) / name).exists():
            return str(Path(directory) / name)
    return name


def config_home(log_dir: Path) -> Path:
    """The XDG_CONFIG_HOME of the servers of one test: kvs keeps its keys in `kvs/` under it."""
    return log_dir / "config"


class KvsServer(Process):
    """`./server.sh` on a free loopback port."""

    def __init__(
        self,
        log_dir: Path,
        name: str,
        extra: Sequence[str] = (),
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        argv = [
            str(ROOT / "server.sh"),
            "--porta",
            str(self.port),
            "--listen",
            "127.0.0.1",
            "--id",
            name,
            *extra,
        ]
        # The cluster key and the private broker's password go to the test's own
        # config directory, never to the real ~/.config (kvs.keys).
        env = {"XDG_CONFIG_HOME": str(config_home(log_dir)), **(env or {})}
        super().__init__(name, argv, log_dir, env)
        self._channel: grpc.Channel | None = None
        self.tls: ClientTls | None = None
        """What `channel` uses: set it for a server started with --tls-cert (before the first call)."""

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            # Short reconnection backoff: a channel opened before the server listens
            # would otherwise wait a second or more before trying again.
            options = [("grpc.initial_reconnect_backoff_ms", 20), ("grpc.max_reconnect_backoff_ms", 100),
                       ("grpc.min_reconnect_backoff_ms", 20)]  # fmt: skip
            self._channel = open_channel(f"127.0.0.1:{self.port}", self.tls, options=options)
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

    def client(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_client("--porta", str(self.port), "--host", "127.0.0.1", *args, check=check)

    def client_json(self, *args: str) -> list[dict[str, object]]:
        out = self.client("--json", *args).stdout
        return [json.loads(line) for line in out.splitlines()]


def run_client(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(ROOT / "client.sh"), *args], capture_output=True, text=True, cwd=ROOT, timeout=60, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"client {args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def converged(servers: Sequence[KvsServer], timeout: float = 30.0) -> list[replication_pb2.Fragment]:
    """Waits until every server has the same digest, checks their dumps are equal, returns one."""

    def same_digest() -> bool:
        digests = {tuple(server.status().digest) for server in servers}
        return len(digests) == 1

    wait_for("the servers to converge", same_digest, timeout, every=0.2)
    dumps = [server.dump() for server in servers]
    for server, dump in zip(servers[1:], dumps[1:], strict=True):
        assert dump == dumps[0], f"{server.name} differs from {servers[0].name}"
    return dumps[0]


def cluster_key(processes: object) -> bytes:
    """The cluster key the test's servers use (a member's; tests forge with others).

    The first server of the test created it under the test's XDG_CONFIG_HOME."""
    cluster: str = processes.cluster  # type: ignore[attr-defined]
    log_dir: Path = processes.log_dir  # type: ignore[attr-defined]
    return (config_home(log_dir) / "kvs" / f"{cluster}.key").read_bytes()


def run_admin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "scripts" / "admin.sh"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
