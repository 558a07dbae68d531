"""Secret files: the cluster key, and the passwords kvs keeps next to it (docs/contract.md, "Security").

The cluster key is 32 random bytes. Without `--cluster-key-file`, a server
uses `$XDG_CONFIG_HOME/kvs/<cluster>.key` (`~/.config/kvs/<cluster>.key`),
creating it if it is missing, so that the servers of one user on one machine
share it with no setup. Every secret file kvs reads must be a regular file
that neither the group nor others may read or write (mode 0600 or stricter):
anyone who can read it can forge replication messages. It must also belong to
the account running the server, as OpenSSH requires of its keys: whoever owns
a file may change its mode and its content.

Creation is race-free: the content is written to a private temporary file
(O_CREAT|O_EXCL, mode 0600) and then hard-linked to its name, which fails if
the name exists. So two servers that start at once end up with one file, the
first one's, and nobody ever reads a half-written key.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Final

from kvs.errors import KeyFileError

KEY_BYTES: Final = 32
"""The size of a cluster key; a key file of another size is refused."""
MAX_SECRET_BYTES: Final = 4096
"""No secret file is larger; reading stops there."""


def config_dir() -> Path:
    """`$XDG_CONFIG_HOME/kvs`, else `~/.config/kvs` (a relative XDG_CONFIG_HOME is ignored, as XDG says)."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".config"
    return root / "kvs"


def default_key_path(cluster: str) -> Path:
    return config_dir() / f"{cluster}.key"


def load_cluster_key(path: Path | None, cluster: str) -> bytes:
    """The cluster key in `path`, or in the default file (created when missing); KeyFileError if unusable."""
    if path is None:
        path = default_key_path(cluster)
        ensure_secret(path, lambda: secrets.token_bytes(KEY_BYTES))
    key = read_secret(path, "cluster key file")
    if len(key) != KEY_BYTES:
        raise KeyFileError(
            f"cluster key file {path} holds {len(key)} bytes, not {KEY_BYTES}"
            f" (make one with: head -c {KEY_BYTES} /dev/urandom > FILE; chmod 600 FILE)"
        )
    return key


def ensure_secret(path: Path, make: Callable[[], bytes]) -> None:
    """Creates `path` (mode 0600, its directory 0700) holding `make()`, unless it exists."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.path.lexists(path):
            return
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # O_EXCL, 0600
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(make())
                file.flush()
                os.fsync(file.fileno())
            # FileExistsError: another server created it meanwhile; theirs is the one everybody uses.
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
    except OSError as error:
        raise KeyFileError(f"cannot create {path}: {error.strerror or error}") from None


def read_secret(path: Path, what: str) -> bytes:
    """The content of a secret file, if only its owner may read and write it; KeyFileError if not."""
    try:
        # O_NONBLOCK: a FIFO in the key's place must not hang the server.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise KeyFileError(f"{what} {path} does not exist") from None
    except OSError as error:
        raise KeyFileError(f"cannot read {what} {path}: {error.strerror or error}") from None
    try:
        info = os.fstat(fd)
        mode = info.st_mode
        if not stat.S_ISREG(mode):
            raise KeyFileError(f"{what} {path} is not a regular file")
        if info.st_uid != os.geteuid():  # its owner may rewrite it whatever its mode, as OpenSSH says
            me, owner = _account(os.geteuid()), _account(info.st_uid)
            raise KeyFileError(
                f"{what} {path} belongs to {owner}, not to this account ({me}): run chown {me} {path}"
            )
        if mode & 0o077:
            raise KeyFileError(
                f"{what} {path} is open to other users (mode {stat.S_IMODE(mode):04o}): run chmod 600 {path}"
            )
        content = b""
        while len(content) <= MAX_SECRET_BYTES and (chunk := os.read(fd, MAX_SECRET_BYTES + 1)):
            content += chunk
    except OSError as error:
        raise KeyFileError(f"cannot read {what} {path}: {error.strerror or error}") from None
    finally:
        os.close(fd)
    return content


def _account(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def read_password(path: Path, what: str) -> str:
    """A password file's text without its final newline; KeyFileError if unusable or empty."""
    content = read_secret(path, what)
    if len(content) > MAX_SECRET_BYTES:
        raise KeyFileError(f"{what} {path} is larger than {MAX_SECRET_BYTES} bytes")
    try:
        password = content.decode().removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError:
        raise KeyFileError(f"{what} {path} is not UTF-8 text") from None
    if not password or "\n" in password:
        raise KeyFileError(f"{what} {path} must hold one non-empty line")
    return password
