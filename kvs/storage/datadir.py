"""The --data-dir: what it holds, who may use it, and the checks before a store opens.

    DIR/kvs.sqlite        the store (kvs.store): SQLite, WAL mode, with kvs's application id
    DIR/kvs.sqlite-wal    SQLite's write-ahead log, and -shm its index (SQLite's own files)
    DIR/lock              held with flock() by the server using DIR; holds its pid

A new store file is made whole under a temporary name, then renamed into place,
so that DIR/kvs.sqlite is either absent or a complete kvs store with its `meta`
table (format version, cluster name). Every check that can refuse DIR runs
before anything in it is written; a refusal is one line (`DataDirError`) and
the server exits 1 (kvs.server).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from kvs.errors import DataDirError

STORE_FILE: Final = "kvs.sqlite"
LOCK_FILE: Final = "lock"
FORMAT: Final = 1
"""The version of this layout and of the store's tables; a store of another format is refused."""
APPLICATION_ID: Final = 0x6B767331
"""SQLite's header field for the program that owns a file: "kvs1"."""
_MAGIC: Final = b"SQLite format 3\x00"

_META = """
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

    @property
    def store_path(self) -> Path:
        return self.path / STORE_FILE

    def close(self) -> None:
        os.close(self._lock)  # releases the flock


def open_data_dir(path: Path, cluster: str) -> DataDir:
    """Locks DIR for this process and checks (or creates) its store; raises DataDirError."""
    where = f"--data-dir {path}"
    if path.exists() and not path.is_dir():
        raise DataDirError(f"{where}: is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataDirError(f"{where}: cannot create it ({error.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise DataDirError(f"{where}: not writable by this user")
    lock = _lock(path, where)
    try:
        store = path / STORE_FILE
        if store.exists() or store.is_symlink():
            _check(store, cluster, where)
        else:
            _create(store, cluster, where)
    except BaseException:
        os.close(lock)
        raise
    return DataDir(path, cluster, lock)


def _lock(path: Path, where: str) -> int:
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise DataDirError(f"{where}: cannot open its lock file ({error.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise DataDirError(f"{where}: in use by another kvs server (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _check(store: Path, cluster: str, where: str) -> None:
    """Refuses a file that is not a kvs store of this format and cluster, reading only."""
    try:
        with store.open("rb") as file:
            header = file.read(100)
    except OSError as error:
        raise DataDirError(f"{where}: cannot read {store.name} ({error.strerror})") from None
    if not header.startswith(_MAGIC):
        raise DataDirError(f"{where}: {store.name} is not an SQLite database, so not a kvs store")
    if int.from_bytes(header[68:72], "big") != APPLICATION_ID:
        raise DataDirError(f"{where}: {store.name} is an SQLite database of another program, not a kvs store")
    try:
        with contextlib.closing(sqlite3.connect(store)) as db:
            meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
    except sqlite3.Error as error:
        raise DataDirError(f"{where}: {store.name} is unreadable ({error})") from None
    if meta.get("format") != str(FORMAT):
        raise DataDirError(
            f"{where}: {store.name} has format {meta.get('format')}; this kvs reads format {FORMAT}"
        )
    if meta.get("cluster") != cluster:
        raise DataDirError(
            f"{where}: holds a store of cluster {meta.get('cluster')!r}, not {cluster!r} (see --cluster)"
        )


def _create(store: Path, cluster: str, where: str) -> None:
    """A new store file, made under a temporary name and renamed into place once complete."""
    for leftover in ("-wal", "-shm"):
        if store.with_name(store.name + leftover).exists():
            raise DataDirError(f"{where}: has {store.name}{leftover} but no {store.name}; move it away")
    temporary = store.with_name(store.name + ".new")  # only ever ours: a leftover of a failed start
    temporary.unlink(missing_ok=True)
    try:
        with contextlib.closing(sqlite3.connect(temporary, isolation_level=None)) as db:
            db.executescript(_META.format(app=APPLICATION_ID))
            db.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?)",
                [("format", str(FORMAT)), ("cluster", cluster)],
            )
        fd = os.open(temporary, os.O_RDONLY)
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
