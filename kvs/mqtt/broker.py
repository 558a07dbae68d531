"""The broker address, and the private mosquitto a server starts when no trusted
broker listens at the default address.

With the default address (localhost:1883, no broker flags) a server uses, in
this order: the private broker of its account if it runs; else a broker that
listens on that TCP port and belongs to this account, root or a system account
(kvs.mqtt.owner), without credentials; else it starts the private broker. A
listener of another ordinary account is never connected to (a warning says
so): it would receive the password and every value.

The private broker listens on a Unix socket, not on TCP: `mqtt.sock` in a
directory only its account may enter (`$TMPDIR/kvs-broker-<uid>-<port>`, mode
0700, refused if anybody else owns it or may write to it), so no other account
can reach it or stand in for it; the servers also check that the socket's peer
is their own account (SO_PEERCRED) before they send their password.

Several servers of one account share that private broker. Each holds a shared
lock on `users.lock` while it uses the broker, and the decisions to start or
stop it are taken one at a time under `start.lock`. So the first server starts
it, the others reuse it, and the last one to leave (the one that can lock
`users.lock` exclusively) stops it. The kernel drops the locks of a crashed
server, so a crash never keeps the broker alive for ever: the next server that
leaves cleanly stops it.

The private broker accepts no anonymous client either (docs/security.md): one user,
`kvs`, whose password is generated once and kept 0600 next to the cluster key
(`$XDG_CONFIG_HOME/kvs/broker-<port>.password`), where the other servers of
the same user find it. An ACL lets that user alone publish and subscribe, under
any topic (the broker is shared by every cluster of the machine), and read the
broker's own `$SYS` topics.

`BrokerAuth` and `configure` are the one place that sets up a paho client's
credentials and TLS, for any broker.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

import paho.mqtt.client as mqtt

from kvs.keys import config_dir, ensure_secret, read_password
from kvs.mqtt.owner import account, listeners, trusted

log = logging.getLogger(__name__)

DEFAULT_PORT = 1883
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

USER: Final = "kvs"
"""The one user of the private broker."""

# What every broker kvs starts is set to (docs/performance.md, "Measured facts"): Nagle
# off, a queue long enough that a busy subscriber is not dropped from, nothing on disk.
# `user`: run as root, mosquitto would otherwise become the user `mosquitto`, who
# cannot read the 0600 password file (as any other user, mosquitto ignores it). Logs
# to stderr, which is not buffered: a log shows each connection as it happens.
SETTINGS = """\
user {system_user}
sys_interval 1
set_tcp_nodelay true
max_queued_messages 100000
persistence false
log_dest stderr
"""
ACL = f"""\
# Only kvs servers, under any cluster prefix; and the broker's own statistics.
user {USER}
topic readwrite #
topic read $SYS/#
"""


@dataclass(frozen=True)
class BrokerAuth:
    """How a server authenticates to the broker, and whether it speaks TLS; all None: neither."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca: Path | None = None  # the CA that signed the broker's certificate: connect with TLS


def configure(client: mqtt.Client, auth: BrokerAuth) -> None:
    """Sets a paho client's credentials and TLS (paho's own) before it connects."""
    if auth.user is not None:
        client.username_pw_set(auth.user, auth.password)
    if auth.tls_ca is not None:
        client.tls_set(ca_certs=str(auth.tls_ca))


def private_password_path(port: int) -> Path:
    return config_dir() / f"broker-{port}.password"


def private_auth(port: int) -> BrokerAuth:
    """The credentials of the private broker on `port`, its password created if missing (KeyFileError)."""
    path = private_password_path(port)
    ensure_secret(path, lambda: secrets.token_urlsafe(32).encode())
    return BrokerAuth(USER, read_password(path, "private broker password file"))


def mosquitto_config(
    listen: int | Path,
    *,
    host: str = "127.0.0.1",
    password_file: Path | None = None,
    acl_file: Path | None = None,
    tls: tuple[Path, Path] | None = None,
) -> str:
    """The config of a mosquitto that kvs starts: on `host`:`listen`, or on the Unix socket `listen`.

    With `password_file` it lets in only the users it names (else anyone); `acl_file`
    limits what they may do; `tls` (certificate chain, private key: PEM files) makes
    the listener speak TLS only. The private broker has a password file and an ACL
    (`EmbeddedBroker`); the local clusters of `kvs.local` use the same settings.
    """
    listener = f"0 {listen}" if isinstance(listen, Path) else f"{listen} {host}"
    lines = [f"listener {listener}", f"allow_anonymous {'false' if password_file else 'true'}"]
    if password_file is not None:
        lines.append(f"password_file {password_file}")
    if acl_file is not None:
        lines.append(f"acl_file {acl_file}")
    if tls is not None:
        lines += [f"certfile {tls[0]}", f"keyfile {tls[1]}"]
    system_user = pwd.getpwuid(os.getuid()).pw_name
    return "".join(f"{line}\n" for line in lines) + SETTINGS.format(system_user=system_user)


def write_password_file(path: Path, users: Mapping[str, str]) -> Path:
    """A mosquitto password file (0600) for `users` (name -> password), hashed by mosquitto_passwd.

    Written in clear, then hashed in place (-U): no password appears on a command line.
    """
    passwd = mosquitto_binary("mosquitto_passwd")
    if passwd is None:
        raise FileNotFoundError("mosquitto_passwd is not installed (./compile.sh installs mosquitto)")
    _write_private(path, "".join(f"{user}:{password}\n" for user, password in users.items()))
    done = subprocess.run([passwd, "-U", str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OSError(f"mosquitto_passwd failed: {(done.stderr or done.stdout).strip()}")
    return path


SOCKET_NAME: Final = "mqtt.sock"
MAX_SOCKET_PATH: Final = 107
"""The longest path a Unix socket may have on Linux (sun_path less its NUL)."""


@dataclass(frozen=True)
class Address:
    host: str
    port: int
    socket: str | None = None
    """The private broker's Unix socket: connect there, not to host:port."""
    verify_owner: bool = False
    """Check who owns the other end of each connection before sending anything (kvs.mqtt.owner)."""

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
        if self.socket is not None:
            return f"unix:{self.socket}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def listening(address: Address) -> bool:
    try:
        with socket.create_connection((address.host, address.port), timeout=1):
            return True
    except OSError:
        return False


def mosquitto_binary(name: str = "mosquitto") -> str | None:
    # Debian installs mosquitto in /usr/sbin, which is not on a user's PATH.
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/usr/bin"])
    return shutil.which(name, path=path)


def private_home(port: int) -> Path:
    """The private broker's directory for this account and the default address's port."""
    return Path(tempfile.gettempdir()) / f"kvs-broker-{os.getuid()}-{port}"


class EmbeddedBroker:
    """A private mosquitto on a Unix socket, shared by the servers of one account on this machine."""

    def __init__(self, port: int, password: str) -> None:
        self.port = port
        self._password = password  # for the user USER (private_auth)
        self.home = private_home(port)
        self.socket = self.home / SOCKET_NAME
        self._users: IO[str] | None = None  # holds a shared lock while this server uses the broker
        self._process: subprocess.Popen[bytes] | None = None  # set when this server started it
        self.fresh = False
        """Whether this server started the broker while no other server of this machine used one:
        then nobody can hold state that it must wait for (kvs.replication.sync)."""

    @property
    def address(self) -> Address:
        return Address("localhost", self.port, socket=str(self.socket), verify_owner=True)

    def acquire(self, use_listener: bool = True) -> Address:
        """The broker to use, as the module says: the private one (started if it does not run, and
        marked used: `release()`), or a trusted listener on the TCP port (`use_listener`; nothing held)."""
        if len(str(self.socket)) > MAX_SOCKET_PATH:
            raise OSError(f"{self.socket} is too long for a Unix socket: set TMPDIR to a shorter directory")
        with suppress(FileExistsError):
            self.home.mkdir(mode=0o700)
        _check_private(self.home)
        with self._deciding():
            started = not self._answers()
            if started:
                if use_listener and (tcp := _trusted_listener(self.port)) is not None:
                    return tcp
                self._start()
            self._users = (self.home / "users.lock").open("a")
            try:  # servers whose broker died hold their shared locks while they retry
                fcntl.flock(self._users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.fresh = started
            except BlockingIOError:
                pass
            fcntl.flock(self._users, fcntl.LOCK_SH)
        return self.address

    def _answers(self) -> bool:
        """Whether the private broker runs (its socket accepts a connection)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1)
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
            return True

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
        passwords = write_password_file(self.home / "passwd", {USER: self._password})
        _write_private(self.home / "acl", ACL)
        config = self.home / "mosquitto.conf"
        _write_private(
            config, mosquitto_config(self.socket, password_file=passwords, acl_file=self.home / "acl")
        )
        self.socket.unlink(missing_ok=True)  # left by a broker that was killed: it does not answer
        with (self.home / "mosquitto.log").open("ab") as output:
            # A session of its own: Ctrl-C on the server that started it must not stop it for the others.
            process = subprocess.Popen(
                [binary, "-c", str(config)], stdout=output, stderr=output, start_new_session=True
            )
        self._process = process
        _write_private(self.home / "pid", str(process.pid))
        deadline = time.monotonic() + 5
        while not self._answers():
            if process.poll() is not None or time.monotonic() > deadline:
                raise OSError(f"the private mosquitto did not start; see {self.home / 'mosquitto.log'}")
            time.sleep(0.02)
        log.info("started a private mosquitto on %s (pid %d, log %s)",
                 self.socket, process.pid, self.home / "mosquitto.log")  # fmt: skip

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


def _trusted_listener(port: int) -> Address | None:
    """A listener on the loopback TCP `port` that belongs to this account or a system one, if any.

    Listeners of other ordinary accounts are left alone, with a warning."""
    found = listeners(port)
    for listener in found:
        if trusted(listener.uid):
            log.info("using the broker that %s runs on port %d", account(listener.uid), port)
            return Address(listener.connect_to, port, verify_owner=True)
    for listener in found:
        log.warning(
            "port %d is held by %s, not this account or a system service: not using it as the broker",
            port, account(listener.uid),
        )  # fmt: skip
    return None


def _check_private(home: Path) -> None:
    """Refuses a broker directory that another user made, or may write to (it is in /tmp)."""
    info = home.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise OSError(f"{home} belongs to another user or others may write to it: remove it")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that exists
    with os.fdopen(fd, "w") as file:
        file.write(text)


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
