"""Which account is at the other end of a local broker connection (Linux), and whether to trust it.

Any account of a machine may listen on a free loopback port, so "something
answers on localhost:1883" says nothing about who will read what a server
sends there: the broker password, then every replicated value. Linux tells
who owns each TCP socket (the uid column of /proc/net/tcp and tcp6), and the
peer of a Unix socket (SO_PEERCRED). A server that uses the default broker
address connects only to a listener that belongs to

- this account,
- root or a system account (a uid below UID_MIN of /etc/login.defs, 1000 by
  default: the services the administrator installed, such as Debian's
  `mosquitto` user), or
- the `mosquitto` user, whatever its uid;

and checks the connection itself once it is open, before anything is sent on
it (`check_peer`), so a listener that changed hands between the look-up and
the connection, or before a reconnection, gets nothing either.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import pwd
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

LISTEN: Final = "0A"
"""The state column of a listening socket in /proc/net/tcp."""
DEFAULT_UID_MIN: Final = 1000

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UntrustedBroker(ConnectionError):
    """The listener at the broker's address belongs to another ordinary account."""


@dataclass(frozen=True)
class Listener:
    address: IPAddress
    port: int
    uid: int

    @property
    def connect_to(self) -> str:
        """The loopback address to connect to for this listener (a wildcard one listens there too)."""
        if self.address.is_unspecified:
            return "127.0.0.1" if self.address.version == 4 else "::1"
        return str(self.address)


@functools.cache
def uid_min() -> int:
    """The first uid of ordinary accounts (UID_MIN in /etc/login.defs)."""
    try:
        for line in Path("/etc/login.defs").read_text().splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[0] == "UID_MIN" and fields[1].isdigit():
                return int(fields[1])
    except OSError:
        pass
    return DEFAULT_UID_MIN


def trusted(uid: int) -> bool:
    """Whether a broker of `uid` may be used: this account, root, a system account or mosquitto's."""
    if uid == os.getuid() or uid < uid_min():
        return True
    try:
        return uid == pwd.getpwnam("mosquitto").pw_uid
    except KeyError:
        return False


def account(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def listeners(port: int) -> list[Listener]:
    """The TCP sockets listening on `port` at a loopback or wildcard address."""
    return [
        Listener(local[0], local[1], uid)
        for local, _, state, uid in _sockets()
        if state == LISTEN and local[1] == port and (local[0].is_loopback or local[0].is_unspecified)
    ]


def peer_uid(sock: socket.socket) -> int | None:
    """The account that owns the other end of a connected local socket; None if Linux does not say."""
    if sock.family == socket.AF_UNIX:
        _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        return int(uid)
    mine, theirs = _endpoint(sock.getsockname()), _endpoint(sock.getpeername())
    for local, remote, _, uid in _sockets():
        if local == theirs and remote == mine:  # their side of this connection (its owner: the listener's)
            return uid
    return None


def check_peer(sock: socket.socket) -> None:
    """Raises UntrustedBroker (and shuts `sock` down) unless a trusted account owns its other end.

    For a Unix socket, only this account is trusted (the private broker's)."""
    uid = peer_uid(sock)
    mine = sock.family == socket.AF_UNIX
    if uid is None or (uid != os.getuid() if mine else not trusted(uid)):
        sock.shutdown(socket.SHUT_RDWR)  # nothing is sent on it; paho closes it
        who = "an unknown account" if uid is None else account(uid)
        raise UntrustedBroker(f"the broker's address is held by {who}, not this account or a system service")


def _endpoint(name: tuple[str, int] | tuple[str, int, int, int]) -> tuple[IPAddress, int]:
    address = ipaddress.ip_address(name[0].split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address, name[1]


def _sockets() -> list[tuple[tuple[IPAddress, int], tuple[IPAddress, int], str, int]]:
    """(local, remote, state, uid) of every TCP socket in /proc/net/tcp and tcp6."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            rows.append((_parse(fields[1]), _parse(fields[2]), fields[3], int(fields[7])))
    return rows


def _parse(text: str) -> tuple[IPAddress, int]:
    """`0100007F:075B` -> (127.0.0.1, 1883): the address in 32-bit words of host byte order."""
    hex_address, hex_port = text.split(":")
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)) if struct.pack("=I", 1)[0] else raw
    address: IPAddress = ipaddress.ip_address(words)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address, int(hex_port, 16)
