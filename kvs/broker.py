"""The broker address, and the private mosquitto a server starts when nothing
listens at the default address.

Several servers of one machine share that private broker. Each holds a shared
lock on `users.lock` while it uses the broker, and the decisions to start or
stop it are taken one at a time under `start.lock`. So the first server starts
it, the others reuse it, and the last one to leave (the one that can lock
`users.lock` exclusively) stops it. The kernel drops the locks of a crashed
server, so a crash never keeps the broker alive for ever: the next server that
leaves cleanly stops it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger("kvs.broker")

DEFAULT_PORT = 1883
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

# What every broker kvs starts is set to (docs/performance.md, "Measured facts"): Nagle off, a queue
# long enough that a busy subscriber is not dropped from, nothing on disk.
CONFIG = """\
listener {port} 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
max_queued_messages 100000
persistence false
log_dest stdout
"""


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        """`host`, `host:port` or `[v6]:port`; ValueError when it is none of them."""
        host, sep, port = text.rpartition(":")
        if not sep or (host.count(":") and not host.startswith("[")):
            host, port = text, str(DEFAULT_PORT)  # no port, or a bare IPv6 address
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"not a broker address (HOST:PORT): {text!r}")
        return cls(host, int(port))

    @property
    def local(self) -> bool:
        return self.host in LOCAL_HOSTS

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def listening(address: Address) -> bool:
    try:
        with socket.create_connection((address.host, address.port), timeout=1):
            return True
    except OSError:
        return False


def mosquitto_binary() -> str | None:
    # Debian installs mosquitto in /usr/sbin, which is not on a user's PATH.
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    return shutil.which("mosquitto", path=path)


class EmbeddedBroker:
    """A private mosquitto on 127.0.0.1:port, shared by the servers of this machine."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.home = Path(tempfile.gettempdir()) / f"kvs-broker-{port}"
        self._users: IO[str] | None = None  # holds a shared lock while this server uses the broker
        self._process: subprocess.Popen[bytes] | None = None  # set when this server started it

    def acquire(self) -> None:
        """Makes sure a broker listens on the port (starting ours if none does) and marks it used."""
        self.home.mkdir(exist_ok=True)
        with self._deciding():
            if not listening(Address("127.0.0.1", self.port)):
                self._start()
            self._users = (self.home / "users.lock").open("a")
            fcntl.flock(self._users, fcntl.LOCK_SH)

    def release(self) -> None:
        """Stops the broker if no other server uses it any more."""
        if self._users is None:
            return
        with self._deciding(), self._users as users:
            self._users = None
            fcntl.flock(users, fcntl.LOCK_UN)
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("leaving the private mosquitto on port %d running: other servers use it", self.port)
                return
            self._stop()

    @contextmanager
    def _deciding(self) -> Iterator[None]:
        with (self.home / "start.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield  # closing the file releases the lock

    def _start(self) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise FileNotFoundError("mosquitto is not installed (./compile.sh installs it)")
        config = self.home / "mosquitto.conf"
        config.write_text(CONFIG.format(port=self.port))
        with (self.home / "mosquitto.log").open("ab") as output:
            # A session of its own: Ctrl-C on the server that started it must not stop it for the others.
            process = subprocess.Popen(
                [binary, "-c", str(config)], stdout=output, stderr=output, start_new_session=True
            )
        self._process = process
        (self.home / "pid").write_text(str(process.pid))
        deadline = time.monotonic() + 5
        while not listening(Address("127.0.0.1", self.port)):
            if process.poll() is not None or time.monotonic() > deadline:
                raise OSError(f"the private mosquitto did not start; see {self.home / 'mosquitto.log'}")
            time.sleep(0.02)
        log.info("nothing listened on port %d: started a private mosquitto (pid %d, log %s)",
                 self.port, process.pid, self.home / "mosquitto.log")  # fmt: skip

    def _stop(self) -> None:
        pid_file = self.home / "pid"
        try:
            pid = int(pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return  # not ours (a broker somebody else runs), or already gone
        if str(self.home / "mosquitto.conf").encode() not in cmdline:
            return  # the pid was reused by another process
        os.kill(pid, signal.SIGTERM)
        if self._process is not None and self._process.pid == pid:
            self._process.wait(5)  # our child: reap it
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        pid_file.unlink(missing_ok=True)
        log.info("stopped the private mosquitto (pid %d): no server uses it any more", pid)


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
