"""The --data-dir: what it holds, who may use it, and the checks before a store opens.

    DIR/kvs.sqlite        the store (kvs.storage.store): SQLite, WAL mode, with kvs's application id
    DIR/kvs.sqlite-wal    SQLite's write-ahead log, and -shm its index (SQLite's own files)
    DIR/lock              held with flock() by the server using DIR: its pid, then the number
                          of the last commit it made (`record_commit`)

DIR is this account's alone: it is created 0700 and its files 0600, and a DIR
that belongs to another account, or that the group or others may enter, read
or write, is refused with the chmod that fixes it (PostgreSQL refuses such a
data directory too). No file in it is opened through a symbolic link: a link
(or anything but a regular file of this account with one name) in place of
one of its files is refused before any file is opened, so a link planted at
DIR/lock cannot make the server truncate what it points to.

A new store file is made whole under a temporary name, then renamed into place,
so that DIR/kvs.sqlite is either absent or a complete kvs store with its `meta`
table (format version, cluster name). Every check that can refuse DIR runs
before anything in it is written, and an existing store is checked through a
read-only connection (its cluster, its format, SQLite's quick_check), so a
refusal leaves the store file and its write-ahead log as they were. A refusal is
one line (`DataDirError`) and the server exits 1 (kvs.server).

A cut write-ahead log (a copy interrupted, a disk that lost its tail) loses
commits silently: SQLite stops at the first frame that does not check out.
So the store counts its commits (kvs.storage.store, `Store.commits`) and the server
writes that count into DIR/lock after each commit; at the next start, a store
whose count is below the one in the lock file lost the commits in between, and
`lost_commits` says how many (the server logs it in one line; what the peers
hold comes back through the join).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import quote

from kvs.errors import DataDirError

STORE_FILE: Final = "kvs.sqlite"
LOCK_FILE: Final = "lock"
SIDE_FILES: Final = (f"{STORE_FILE}-wal", f"{STORE_FILE}-shm")
TEMPORARY: Final = f"{STORE_FILE}.new"
FORMAT: Final = 1
"""The version of this layout and of the store's tables; a store of another format is refused."""
APPLICATION_ID: Final = 0x6B767331
"""SQLite's header field for the program that owns a file: "kvs1"."""
_MAGIC: Final = b"SQLite format 3\x00"
_PID_BYTES: Final = 32
"""The lock file: the pid in its first 32 bytes, the last commit's number after them."""

_META = """
-- Pages freed by deletes, trims and retention can be given back to the file system
-- (kvs.storage.store.Store.give_back); settable only before the file is first written.
PRAGMA auto_vacuum = INCREMENTAL;
PRAGMA application_id = {app};
BEGIN;
-- What the file is: name -> value ("format", "cluster").
CREATE TABLE meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
COMMIT;
"""


@dataclass
class DataDir:
    """An open --data-dir: its lock is held until `close()` (or the process ends)."""

    path: Path
    cluster: str
    _lock: int
    recorded_commits: int = 0
    """The number of the last commit the previous server of DIR recorded (0: none recorded)."""

    @property
    def store_path(self) -> Path:
        return self.path / STORE_FILE

    def record_commit(self, number: int) -> None:
        """Notes in the lock file that commit `number` is done (no fsync: as durable as the commit
        itself without --fsync; with it, a power loss can only make the note lag behind)."""
        os.pwrite(self._lock, f"{number:020d}\n".encode(), _PID_BYTES)

    def lost_commits(self, store_commits: int) -> int:
        """How many commits the store lacks of those recorded: > 0 when its write-ahead log was cut."""
        return max(0, self.recorded_commits - store_commits)

    def close(self) -> None:
        os.close(self._lock)  # releases the flock


def open_data_dir(path: Path, cluster: str) -> DataDir:
    """Locks DIR for this process and checks (or creates) its store; raises DataDirError."""
    where = f"--data-dir {path}"
    _check_dir(path, where)
    for name in (LOCK_FILE, STORE_FILE, *SIDE_FILES, TEMPORARY):
        _check_entry(path / name, where)
    lock, recorded = _lock(path, where)
    try:
        store = path / STORE_FILE
        if store.exists():
            _check(store, cluster, where)
        else:
            _create(store, cluster, where)
        for name in (STORE_FILE, *SIDE_FILES):  # from older versions, or copied in: this account's only
            with contextlib.suppress(FileNotFoundError):
                if stat.S_IMODE((path / name).lstat().st_mode) & 0o077:
                    os.chmod(path / name, 0o600, follow_symlinks=False)
    except BaseException:
        os.close(lock)
        raise
    return DataDir(path, cluster, lock, recorded)


def _check_dir(path: Path, where: str) -> None:
    """Creates DIR (0700) if missing; refuses one that is not this account's alone or not writable."""
    try:
        info = path.stat()
    except FileNotFoundError:
        try:
            path.mkdir(mode=0o700, parents=True)
            os.chmod(path, 0o700)  # whatever the umask
        except OSError as error:
            raise DataDirError(f"{where}: cannot create it ({error.strerror})") from None
        return
    except OSError as error:
        raise DataDirError(f"{where}: cannot use it ({error.strerror})") from None
    if not stat.S_ISDIR(info.st_mode):
        raise DataDirError(f"{where}: is a file, not a directory")
    if info.st_uid != os.geteuid():
        raise DataDirError(
            f"{where}: belongs to {_account(info.st_uid)}, not to this account ({_account(os.geteuid())})"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o700 != 0o700 or not os.access(path, os.W_OK | os.X_OK):
        raise DataDirError(f"{where}: not writable by this account (mode {mode:04o}): run chmod 700 {path}")
    if mode & 0o077:
        raise DataDirError(f"{where}: other accounts may use it (mode {mode:04o}): run chmod 700 {path}")


def _check_entry(file: Path, where: str) -> None:
    """Refuses a link, or anything but a regular file of this account with one name, at `file`."""
    try:
        info = file.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise DataDirError(f"{where}: {file} is a symbolic link; kvs opens no file through one: remove it")
    if not stat.S_ISREG(info.st_mode):
        raise DataDirError(f"{where}: {file} is not a regular file: remove it")
    if info.st_uid != os.geteuid():
        raise DataDirError(f"{where}: {file} belongs to {_account(info.st_uid)}, not to this account")
    if info.st_nlink != 1:
        raise DataDirError(f"{where}: {file} has {info.st_nlink} names (hard links): keep one")


def _account(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _open(file: Path, flags: int, where: str) -> int:
    """Opens a file of DIR without following a link (O_NOFOLLOW), created 0600 with O_CREAT."""
    try:
        return os.open(file, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY, 0o600)
    except OSError as error:
        raise DataDirError(f"{where}: cannot open {file.name} ({error.strerror})") from None


def _lock(path: Path, where: str) -> tuple[int, int]:
    """The locked lock file, and the commit number it recorded; truncated only once it is locked
    and known to be a regular file of this account."""
    fd = _open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, where)
    try:
        recorded = _take(fd, path / LOCK_FILE, where)
    except BaseException:
        os.close(fd)
        raise
    return fd, recorded


def _take(fd: int, lock: Path, where: str) -> int:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_nlink != 1:
        raise DataDirError(f"{where}: {lock} is not a regular file of this account: remove it")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, _PID_BYTES, 0).decode(errors="replace").strip() or "?"
        raise DataDirError(f"{where}: in use by another kvs server (pid {holder})") from None
    recorded = os.pread(fd, 64, _PID_BYTES).decode(errors="replace").strip()
    os.ftruncate(fd, 0)
    os.fchmod(fd, 0o600)
    os.pwrite(fd, f"{os.getpid()}\n".ljust(_PID_BYTES).encode(), 0)
    return int(recorded) if recorded.isdigit() else 0


def _check(store: Path, cluster: str, where: str) -> None:
    """Refuses a file that is not a kvs store of this format and cluster, or that is read-only
    or corrupt, through a read-only connection: the store and its log stay as they are."""
    fd = _open(store, os.O_RDONLY, where)
    try:
        header = os.pread(fd, 100, 0)
    finally:
        os.close(fd)
    if not header.startswith(_MAGIC):
        raise DataDirError(f"{where}: {store.name} is not an SQLite database, so not a kvs store")
    if int.from_bytes(header[68:72], "big") != APPLICATION_ID:
        raise DataDirError(f"{where}: {store.name} is an SQLite database of another program, not a kvs store")
    for name in (STORE_FILE, *SIDE_FILES):
        file = store.with_name(name)
        if file.exists() and (not file.stat().st_mode & stat.S_IWUSR or not os.access(file, os.W_OK)):
            now = stat.S_IMODE(file.stat().st_mode)
            raise DataDirError(f"{where}: {name} is read-only (mode {now:04o}): run chmod 600 {file}")
    # Read-only: no write, no checkpoint. Without a log the file is the whole store (immutable:
    # SQLite then creates no -wal or -shm either); with one, SQLite may rebuild the -shm index.
    logged = store.with_name(SIDE_FILES[0]).exists()
    uri = f"file:{quote(str(store))}?{'mode=ro' if logged else 'immutable=1'}"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
            if meta.get("format") == str(FORMAT) and meta.get("cluster") == cluster:
                problems = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
            else:
                problems = ["ok"]  # refused below for what it is
    except sqlite3.Error as error:
        raise DataDirError(f"{where}: {store.name} is unreadable or corrupt ({error})") from None
    if meta.get("format") != str(FORMAT):
        raise DataDirError(
            f"{where}: {store.name} has format {meta.get('format')}; this kvs reads format {FORMAT}"
        )
    if meta.get("cluster") != cluster:
        raise DataDirError(
            f"{where}: holds a store of cluster {meta.get('cluster')!r}, not {cluster!r} (see --cluster)"
        )
    if problems != ["ok"]:
        lines = [line for row in problems for line in row.splitlines() if not line.startswith("***")]
        first = (lines or ["?"])[0][:200]  # one line: quick_check's rows hold several
        raise DataDirError(
            f"{where}: {store.name} is corrupt (SQLite's quick_check: {first}): restore it from a backup,"
            " or move DIR away and let the server get its data from its peers"
        )


def _create(store: Path, cluster: str, where: str) -> None:
    """A new store file, made under a temporary name and renamed into place once complete."""
    for leftover in SIDE_FILES:
        if store.with_name(leftover).exists():
            raise DataDirError(f"{where}: has {leftover} but no {store.name}; move it away")
    temporary = store.with_name(TEMPORARY)  # only ever ours: a leftover of a failed start
    temporary.unlink(missing_ok=True)
    try:
        os.close(_open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, where))  # 0600 before SQLite opens it
        with contextlib.closing(sqlite3.connect(temporary, isolation_level=None)) as db:
            db.executescript(_META.format(app=APPLICATION_ID))
            db.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?)",
                [("format", str(FORMAT)), ("cluster", cluster)],
            )
        fd = os.open(temporary, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, store)
        fd = os.open(store.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself
        finally:
            os.close(fd)
    except (OSError, sqlite3.Error) as error:
        temporary.unlink(missing_ok=True)
        raise DataDirError(f"{where}: cannot create {store.name} ({error})") from None
