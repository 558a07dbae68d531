"""The multi-version store: each key's versions and deletion floor, and the join.

Pure: no gRPC, no MQTT, no clock of its own (the caller passes one in), no
threads. It is not thread-safe; `kvs.server.main` says which thread owns it.

A worked history of one key, "color", on one server (the clock in ms):

    clock  call                 versions after               floor  reply
    1000   put color=red        {1000: red}                  0      ver 1000
    1000   put color=blue       {1000: red, 1001: blue}      0      ver 1001 (same ms: newest + 1)
    1500   get color @1000      (unchanged)                          (color, red, 1000)
    1500   get color @999       (unchanged)                          (color, "", 999): exists, nothing <= 999
    1600   put color=green      {1000: red, 1001: blue,      0      ver 1600
                                 1600: green}
    1700   trim color           {1600: green}                1600   (color, green, 1600)
    1800   del color            {}  (a tombstone)            1801   (color, green, 1600)
    1801   get color            (unchanged)                          (color, "", 0): does not exist
    1802   join put(color, 1750, pink) from a slower peer: 1750 < floor 1801, dropped
    1805   put color=black      {1805: black}                1801   ver max(1805, 1801) = 1805

Every mutation is also returned as a `Fragment` (a piece of state) for
replication. Applying fragments is the *join*: the floor becomes the larger of
the two floors, the versions are the union of both at or above that floor, and
when two replicas hold different values under one version the greater value
wins. That is commutative, associative and idempotent, so replicas that have
seen the same fragments hold the same state in any order, with any duplicates.

The data live in an in-memory SQLite database (table by table below): it keeps
100k keys in about 1.4 times their raw bytes, where Python objects take three
times as much, and it orders keys byte-wise (UTF-8 in BINARY collation) for
ranges. A per-bucket digest (XOR of one 64-bit hash per version and per floor)
is kept up to date on every change, so replicas can compare their state cheaply.

With a `path` (--data-dir, kvs.storage.datadir) the same tables live in an SQLite file
in WAL mode, and the digest is saved with every commit (table `digest`), so a
restart reads 256 rows instead of rehashing every version. On disk a write
leaves its transaction open when `defer_commits` was called (kvs.storage.durable's
group commit ends it); otherwise each change commits at once, as in memory.
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Final, NamedTuple, TypeAlias

from kvs.errors import VersionExhausted
from kvs.limits import quoted

Version: TypeAlias = int
"""Milliseconds since the Unix epoch at the accepting server; <= 0 means blank."""

Clock: TypeAlias = Callable[[], Version]
"""Returns the current time in milliseconds."""

INT64_MAX: Final = 2**63 - 1
MAX_VERSION: Final = 253_402_300_799_999
"""No stored version or floor lies above it: the last millisecond of year 9999 (docs/contract.md,
"Security"). A replication message carrying a version or floor above its bound is refused, so no key
can be blocked for ever; a read may be made at any version (above every stored one, it reads the newest)."""
LAST_VERSION: Final = MAX_VERSION - 1
"""The largest version a key can hold. One below MAX_VERSION, because a Del raises the floor one above
the newest version (SPEC 5: the floor of a Del of the last version must stay within MAX_VERSION too)."""
BUCKETS: Final = 256
"""Digest granularity: a difference between replicas is repaired bucket by bucket."""
KEEP_INLINE: Final = 16
"""Versions beyond --keep-versions a put or a join drops at once; a longer history is the sweep's."""
ROW_OVERHEAD: Final = 8
"""What a version or a floor counts for in `Store.size` beyond its key's and value's UTF-8 bytes."""


@dataclass(frozen=True, slots=True)
class Entry:
    """A value and its version; `val == ""` with `ver` 0 or the asked version when not found."""

    key: str
    val: str
    ver: Version


@dataclass(frozen=True, slots=True)
class Written:
    """The result of a put: the newest value before it and the new version."""

    key: str
    old_val: str
    old_ver: Version
    ver: Version


@dataclass(frozen=True, slots=True)
class Fragment:
    """A piece of one key's state: a floor to raise to (0: none) and versions to add."""

    key: str
    floor: Version = 0
    versions: tuple[tuple[Version, str], ...] = ()


class Bound(NamedTuple):
    """A floor that retention wants for a key (0: none)."""

    key: str
    floor: Version


@dataclass(frozen=True, slots=True)
class Stats:
    """How much a store holds (for metrics): keys that exist, stored versions, tombstones."""

    keys: int
    versions: int
    tombstones: int
    bytes: int = 0
    """`Store.size`: the UTF-8 bytes of every stored version's key and value, plus 8 per version and
    per floor (a floor counts its key)."""


def _upper(at: Version | None) -> Version:
    """The version to read at: blank (None or <= 0) means the newest."""
    return at if at is not None and at > 0 else INT64_MAX


PURGE_GRID_MAX: Final = 30_000
"""ms: tombstones are forgotten a grid step at a time (`tombstone_cut`); kvs.service.upkeep looks every
second, so a floor is forgotten at most 31 s (and a sweep) after it passes the horizon."""


def purge_grid(ttl_ms: int) -> int:
    """The grid of `tombstone_cut`: half the TTL, between 1 s and PURGE_GRID_MAX."""
    return min(PURGE_GRID_MAX, max(1_000, ttl_ms // 2))


def tombstone_cut(now_ms: Version, ttl_ms: int) -> Version:
    """With --tombstone-ttl `ttl_ms`, the floors of deleted keys below this are forgotten at `now_ms`:
    the horizon (`now_ms - ttl_ms`) rounded down to the grid (`purge_grid`). Every server forgets a grid
    step's worth at once, at the same moment by its own clock, and kvs.replication.horizon compares no
    digests around those moments (docs/replication.md, "Tombstones")."""
    grid = purge_grid(ttl_ms)
    return (now_ms - ttl_ms) // grid * grid


def bucket_of(key: str) -> int:
    """The digest bucket of a key: the same on every replica and every run."""
    return zlib.crc32(key.encode()) % BUCKETS


_SCHEMA = """
-- One row per stored version; the primary key orders keys byte-wise, then versions.
CREATE TABLE IF NOT EXISTS versions (
    key TEXT NOT NULL,
    ver INTEGER NOT NULL,
    val TEXT NOT NULL,
    PRIMARY KEY (key, ver)
) WITHOUT ROWID;
-- The deletion floor of every key that has one (> 0): no version below it is kept.
-- A floor whose key has no versions left is a tombstone.
CREATE TABLE IF NOT EXISTS floors (
    key TEXT PRIMARY KEY,
    floor INTEGER NOT NULL
) WITHOUT ROWID;
-- Versions set aside by a server back from an absence past --tombstone-ttl (kvs.replication.horizon):
-- not served, not hashed, not sent; what no peer holds is dropped once the peers have answered.
CREATE TABLE IF NOT EXISTS doubt (
    key TEXT NOT NULL,
    ver INTEGER NOT NULL,
    val TEXT NOT NULL,
    PRIMARY KEY (key, ver)
) WITHOUT ROWID;
"""

_FLOOR = "SELECT floor FROM floors WHERE key = ?"
_AT = "SELECT ver, val FROM versions WHERE key = ? AND ver <= ? ORDER BY ver DESC LIMIT 1"
_EXISTS = "SELECT 1 FROM versions WHERE key = ? LIMIT 1"
_KEYS_BETWEEN = "SELECT DISTINCT key FROM versions WHERE key BETWEEN ? AND ? ORDER BY key"
# For each existing key of the range, its greatest version <= ?3 (NULL if none).
_RANGE_AT = """
SELECT k.key, v.ver, v.val
FROM (SELECT DISTINCT key FROM versions WHERE key BETWEEN ?1 AND ?2) AS k
LEFT JOIN versions AS v ON v.key = k.key
    AND v.ver = (SELECT max(ver) FROM versions WHERE key = k.key AND ver <= ?3)
ORDER BY k.key
"""
# One page of _RANGE_AT: at most ?5 keys, each after ?4 (keyset pagination; "" is before every key).
_RANGE_PAGE = """
SELECT k.key, v.ver, v.val
FROM (SELECT DISTINCT key FROM versions WHERE key BETWEEN ?1 AND ?2 AND key > ?4 ORDER BY key LIMIT ?5) AS k
LEFT JOIN versions AS v ON v.key = k.key
    AND v.ver = (SELECT max(ver) FROM versions WHERE key = k.key AND ver <= ?3)
ORDER BY k.key
"""
_KEYS_PAGE = (
    "SELECT DISTINCT key FROM versions WHERE key BETWEEN ?1 AND ?2 AND key > ?3 ORDER BY key LIMIT ?4"
)
# The oldest ?3 versions of a key below ?2.
_DROP_OLDEST = """
DELETE FROM versions WHERE key = ?1
    AND ver IN (SELECT ver FROM versions WHERE key = ?1 AND ver < ?2 ORDER BY ver LIMIT ?3)
RETURNING ver, val
"""
# Keys with a floor or a version after ?1, at most ?2 of them (for an export page).
_STATE_KEYS = """
SELECT key FROM floors WHERE key > ?1
UNION
SELECT key FROM versions WHERE key > ?1
ORDER BY key LIMIT ?2
"""
_VERSIONS_OF = "SELECT ver, val FROM versions WHERE key = ? ORDER BY ver"
# The floors and versions of the keys in (?1, ?2], floors first within a key.
_STATE_BETWEEN = """
SELECT key, floor, NULL, NULL FROM floors WHERE key > ?1 AND key <= ?2
UNION ALL
SELECT key, NULL, ver, val FROM versions WHERE key > ?1 AND key <= ?2
ORDER BY 1, 3
"""
# Floors (as version -1) and versions after the row (?1, ?2), in (key, version) order: a merge of two
# index range scans, stepped only as far as it is read (`Store.export_after`).
_STATE_AFTER = """
SELECT key, -1, floor FROM floors WHERE key > ?1
UNION ALL
SELECT key, ver, val FROM versions WHERE (key, ver) > (?1, ?2)
ORDER BY 1, 2
"""
_INSERT = "INSERT INTO versions (key, ver, val) VALUES (?, ?, ?)"
# A key's newest version, its value and its floor (NULL: none); no row when the key has no version.
_NEWEST_AND_FLOOR = (
    "SELECT ver, val, (SELECT floor FROM floors WHERE key = ?1) FROM versions WHERE key = ?1"
    " ORDER BY ver DESC LIMIT 1"
)
# Adds a version unless it is below the key's floor or below ?4 (a late version, older than the
# tombstone horizon), or the version is taken.
_ADD = """
INSERT INTO versions (key, ver, val)
SELECT ?1, ?2, ?3 WHERE ?2 >= max(coalesce((SELECT floor FROM floors WHERE key = ?1), 0), ?4)
ON CONFLICT (key, ver) DO NOTHING
"""
_VALUE = "SELECT val FROM versions WHERE key = ? AND ver = ?"
_REPLACE = "UPDATE versions SET val = ? WHERE key = ? AND ver = ?"
_SET_FLOOR = "INSERT INTO floors (key, floor) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET floor = ?2"
_NTH_OLDEST = "SELECT 1 FROM versions WHERE key = ?1 AND ver < ?2 ORDER BY ver LIMIT 1 OFFSET ?3"
_DROP_BELOW = "DELETE FROM versions WHERE key = ? AND ver < ? RETURNING ver, val"
_KEY_COUNT = "SELECT count(*) FROM (SELECT DISTINCT key FROM versions)"
# Key counts in steps (`Store.count_keys`): the key of the ?2-th row after ?1, and the keys up to it.
_NTH_ROW_AFTER = "SELECT key FROM versions WHERE key > ? ORDER BY key LIMIT 1 OFFSET ?"
_COUNT_AFTER = "SELECT count(DISTINCT key) FROM versions WHERE key > ?"
_COUNT_BETWEEN = "SELECT count(DISTINCT key) FROM versions WHERE key > ? AND key <= ?"
# The ?2-th newest version of a key (0: the newest) and at most ?3 after it.
_NEWEST_FROM = "SELECT ver FROM versions WHERE key = ?1 ORDER BY ver DESC LIMIT ?3 + 1 OFFSET ?2"
# For at most ?2 keys after ?1 (a skip over the primary key: a few lookups per key, not a row scan):
# the oldest and newest versions, and the ?3-th newest (0: the newest; NULL if fewer). What
# retention needs (`Store.retention_page`).
_RETENTION_PAGE = """
WITH RECURSIVE k(key) AS (
    SELECT (SELECT min(key) FROM versions WHERE key > ?1)
    UNION ALL
    SELECT (SELECT min(key) FROM versions WHERE key > k.key) FROM k WHERE k.key IS NOT NULL
    LIMIT ?2
)
SELECT key,
    (SELECT min(ver) FROM versions WHERE key = k.key),
    (SELECT max(ver) FROM versions WHERE key = k.key),
    (SELECT ver FROM versions WHERE key = k.key ORDER BY ver DESC LIMIT 1 OFFSET ?3)
FROM k WHERE key IS NOT NULL
"""
# Sizes as `Store.size` counts them (a scan, for a file saved without its size).
_SIZE = f"""
SELECT coalesce((SELECT sum(length(CAST(key AS BLOB)) + length(CAST(val AS BLOB)) + {ROW_OVERHEAD})
    FROM versions), 0) + coalesce((SELECT sum(length(CAST(key AS BLOB)) + {ROW_OVERHEAD}) FROM floors), 0)
"""

# In a file only: each bucket's digest as of the last commit (a signed 64-bit integer).
_DIGEST_SCHEMA = """
CREATE TABLE IF NOT EXISTS digest (
    bucket INTEGER PRIMARY KEY,
    hash INTEGER NOT NULL
);
"""
_SAVE_DIGEST = "INSERT OR REPLACE INTO digest (bucket, hash) VALUES (?, ?)"
_COMMITS_ROW: Final = -1
"""The digest table's row that holds, instead of a hash, how many commits the file has had
(kvs.storage.datadir compares it with the count the server recorded: a cut write-ahead log)."""
_SIZE_ROW: Final = -2
"""The digest table's row that holds `Store.size` as of the last commit (on the digest's page too)."""
# Floors after ?1, at most ?2 (`Store.purge_page`).
_FLOORS_PAGE = "SELECT key, floor FROM floors WHERE key > ?1 ORDER BY key LIMIT ?2"
_DROP_FLOOR = "DELETE FROM floors WHERE key = ?"
# Versions older than ?1 of keys from ?2 on, at most ?3, moved aside (`Store.set_aside`).
_ASIDE = """
DELETE FROM versions WHERE (key, ver) IN
    (SELECT key, ver FROM versions WHERE ver < ?1 AND key >= ?2 ORDER BY key, ver LIMIT ?3)
RETURNING key, ver, val
"""
_TO_DOUBT = "INSERT OR IGNORE INTO doubt (key, ver, val) VALUES (?, ?, ?)"
_FROM_DOUBT = (
    "DELETE FROM doubt WHERE (key, ver) IN (SELECT key, ver FROM doubt LIMIT ?) RETURNING key, ver, val"
)
_TOUCH_ROW: Final = -3
"""The digest table's row that holds when this server was last in touch with its cluster (ms)."""
_ALL_ROWS = "SELECT 'f', key, floor, '' FROM floors UNION ALL SELECT 'v', key, ver, val FROM versions"

_HASH_HEADER = struct.Struct("<cIq")  # kind (b"v" version, b"f" floor), key length, version


class Store:
    """Every key's versions and floor, with reads, writes, the join and a digest."""

    def __init__(
        self, clock: Clock, path: Path | None = None, fsync: bool = False, keep_versions: int | None = None
    ) -> None:
        """In memory, or in the SQLite file `path` (created if missing); `fsync`: FULL sync.

        `keep_versions` (--keep-versions): a put that leaves its key one version more than that
        raises the key's floor to its `keep_versions`-th newest version, in the put's fragment."""
        self._clock = clock
        self._digest = [0] * BUCKETS
        self._dirty: set[int] = set()  # buckets whose digest changed since the last commit
        self._size = 0
        self._saved_size = 0  # as of the last commit (files)
        self._on_begin: Callable[[], None] | None = None
        self.path = path
        self.commits = 0
        """How many commits this file has had (on disk; saved with each commit)."""
        self._on_commit: Callable[[int], None] | None = None
        self.keep_versions = keep_versions
        self.floor_drops = 0
        """Versions floor raises have dropped so far (a counter; `drop_below`'s are not in it)."""
        self.touched = 0
        """When this server was last in touch with its cluster, in ms (0: unknown); saved in a file."""
        # One connection, used by one thread at a time (see kvs.server).
        self._db = sqlite3.connect(path or ":memory:", isolation_level=None, check_same_thread=False)
        self._vacuums = False
        if path is None:
            self._db.executescript(_SCHEMA)
            return
        # WAL: a commit appends to the log, with no fsync under NORMAL, and survives
        # the process being killed; FULL adds an fsync per commit (power loss).
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute(f"PRAGMA synchronous = {'FULL' if fsync else 'NORMAL'}")
        self._db.execute("PRAGMA journal_size_limit = 16777216")  # a WAL that grew shrinks back to 16 MiB
        self._db.executescript(f"BEGIN; {_SCHEMA} {_DIGEST_SCHEMA} COMMIT;")
        # 2: incremental, set when kvs.storage.datadir made the file; older files keep freed pages.
        self._vacuums = self._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        saved = self._db.execute("SELECT bucket, hash FROM digest WHERE bucket >= 0").fetchall()
        count = self._db.execute("SELECT hash FROM digest WHERE bucket = ?", (_COMMITS_ROW,)).fetchone()
        self.commits = 0 if count is None else int(count[0])
        touched = self._db.execute("SELECT hash FROM digest WHERE bucket = ?", (_TOUCH_ROW,)).fetchone()
        self.touched = 0 if touched is None else int(touched[0])
        if len(saved) == BUCKETS:
            for bucket, value in saved:
                self._digest[bucket] = value % 2**64
            size = self._db.execute("SELECT hash FROM digest WHERE bucket = ?", (_SIZE_ROW,)).fetchone()
            # A file saved before sizes were kept: count them once.
            self._size = self._saved_size = size[0] if size else self._db.execute(_SIZE).fetchone()[0]
        else:  # a new file (or one saved without its digest): hash every row once
            with self._transaction():
                self.rebuild_digest()

    # Reads -----------------------------------------------------------------

    def get(self, key: str, at: Version | None = None) -> Entry:
        """The value at the greatest version <= `at` (blank: the newest)."""
        upper = _upper(at)
        row = self._db.execute(_AT, (key, upper)).fetchone()
        if row is not None:
            return Entry(key, row[1], row[0])
        # Nothing at or below `upper`: echo it if the key exists (then it was not blank).
        return Entry(key, "", upper if self._exists(key) else 0)

    def get_range(self, fr: str, to: str, at: Version | None = None) -> list[Entry]:
        """Every existing key with fr <= key <= to, ascending, at `at` (blank: newest)."""
        upper = _upper(at)
        rows = self._db.execute(_RANGE_AT, (fr, to, upper))
        return [Entry(key, "", upper) if ver is None else Entry(key, val, ver) for key, ver, val in rows]

    def range_page(self, fr: str, to: str, at: Version | None, after: str, limit: int) -> list[Entry]:
        """As `get_range`, at most `limit` keys, each after `after` ("": from `fr`).

        A caller that pages with `after` = the last key it got reads the range in bounded steps.
        """
        upper = _upper(at)
        rows = self._db.execute(_RANGE_PAGE, (fr, to, upper, after, limit))
        return [Entry(key, "", upper) if ver is None else Entry(key, val, ver) for key, ver, val in rows]

    def keys(self, fr: str, to: str, after: str, limit: int) -> list[str]:
        """At most `limit` existing keys with fr <= key <= to and key > `after`, ascending."""
        return [key for (key,) in self._db.execute(_KEYS_PAGE, (fr, to, after, limit))]

    def export_page(self, after: str, limit: int) -> list[Fragment]:
        """The whole state of at most `limit` keys (tombstones included) after `after`, by key."""
        keys = self._db.execute(_STATE_KEYS, (after, limit)).fetchall()
        if not keys:
            return []
        return list(_fragments(self._db.execute(_STATE_BETWEEN, (after, keys[-1][0]))))

    def export_after(self, key: str, ver: Version, chars: int) -> list[Fragment]:
        """The state after the row (`key`, `ver`) in (key, version) order, a floor counting as
        version -1 (start at ("", -1)): about `chars` characters of keys and values, at least one
        row, so a key with a long history comes in pieces (the join does not mind). Resume
        after `resume_at` of the last fragment. Memory stays bounded whatever a key holds."""
        rows = []
        taken = 0
        cursor = self._db.execute(_STATE_AFTER, (key, ver))
        try:
            for row in cursor:
                rows.append(row)
                taken += len(row[0]) + 12 + (len(row[2]) if row[1] >= 0 else 0)
                if taken >= chars:
                    break
        finally:
            cursor.close()  # the statement ends here, not when the cursor is collected
        fragments = []
        for name, group in groupby(rows, key=lambda row: row[0]):
            floor, versions = 0, []
            for _, at, val in group:
                if at < 0:
                    floor = val
                else:
                    versions.append((at, val))
            fragments.append(Fragment(name, floor, tuple(versions)))
        return fragments

    def count_keys(self, after: str, rows: int) -> tuple[int, str | None]:
        """How many keys exist after `after` within the next `rows` versions, and the key to count on
        after (None: none left): `key_count` in steps (kvs.replication.adapter counts a million keys in
        slices)."""
        bound = self._db.execute(_NTH_ROW_AFTER, (after, max(rows, 1) - 1)).fetchone()
        if bound is None:
            return int(self._db.execute(_COUNT_AFTER, (after,)).fetchone()[0]), None
        return int(self._db.execute(_COUNT_BETWEEN, (after, bound[0])).fetchone()[0]), bound[0]

    def key_count(self) -> int:
        """How many keys exist (tombstones excluded)."""
        count: int = self._db.execute(_KEY_COUNT).fetchone()[0]
        return count

    def stats(self) -> Stats:
        """Keys, versions and tombstones, counted now (a scan: for a scrape, not for every call)."""
        keys, versions, tombstones = self._db.execute(
            f"""SELECT ({_KEY_COUNT}), (SELECT count(*) FROM versions), (SELECT count(*) FROM floors AS f
            WHERE NOT EXISTS (SELECT 1 FROM versions WHERE key = f.key))"""
        ).fetchone()
        return Stats(keys, versions, tombstones, self._size)

    @property
    def size(self) -> int:
        """The store's size as the quota counts it (docs/operations.md): the UTF-8 bytes of the key and
        the value of every stored version, plus ROW_OVERHEAD each, and of every floor's key, plus
        ROW_OVERHEAD each. Kept up to date by every change, so reading it costs nothing."""
        return self._size

    def retention_page(self, after: str, limit: int, keep: int | None, cut: Version | None) -> list[Bound]:
        """For at most `limit` existing keys after `after`, by key: the floor retention wants, for those
        that hold a version under it. `keep`: at most that many versions (--keep-versions); `cut`:
        versions older than it go (--retention), the newest always stays.

        The floor is the `keep`-th newest version, or `cut` (the newest version, if older), whichever
        is higher: every version at or after `cut` stays, and replicas that hold the same versions
        agree on a `keep` floor. Two servers' cuts differ (their clocks do, and they sweep at other
        times), which is why the floors a sweep raises are published: the join takes the higher.
        """
        rows = self._db.execute(_RETENTION_PAGE, (after, limit, (keep or 1) - 1)).fetchall()
        bounds = []
        for key, oldest, newest, nth in rows:
            floor = nth if keep and nth is not None else 0
            if cut:
                floor = max(floor, min(cut, newest))
            bounds.append(Bound(key, floor if floor > oldest else 0))
        return bounds

    def raise_floors(self, bounds: Iterable[Bound]) -> list[Fragment]:
        """Raises each key's floor to its bound, as one change; returns the fragments of those that rose.

        Drop the versions under a high floor first (`drop_below`, in slices) to keep this step short."""
        raised = []
        with self._transaction():
            for key, floor in bounds:
                if floor > 0 and self._raise_floor(key, floor):
                    raised.append(Fragment(key, floor=floor))
        return raised

    def free_pages(self) -> int:
        """Pages of the file that hold nothing (0 in memory, or when freed space is not given back)."""
        if self.path is None or not self._vacuums:
            return 0
        count: int = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return count

    def give_back(self, pages: int) -> bool:
        """Returns up to `pages` free pages to the file system (SQLite's incremental vacuum), between
        transactions only: False if one is open (try again later) or the file cannot shrink."""
        if self.path is None or not self._vacuums or self._db.in_transaction:
            return False
        # One sqlite3 step frees one page: executescript steps the pragma to its end, in its own
        # transaction (nothing is open, so it commits nothing else).
        self._db.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
        return True

    def purge_page(self, cut: Version, after: str, limit: int) -> tuple[str | None, int]:
        """Forgets the floors below `cut` among at most `limit` floors after `after`, by key: returns the
        last key looked at (None: no floor left) and how many went. --tombstone-ttl (kvs.service.upkeep):
        a deleted key's floor (a tombstone), and a floor under a key's versions too, which nothing needs
        past the horizon either (kvs.replication.horizon drops late versions older than it) and which
        would otherwise differ between servers if the key was written again while one of them had
        forgotten its tombstone and another not yet. Not a fragment: every server forgets by its clock."""
        rows = self._db.execute(_FLOORS_PAGE, (after, limit)).fetchall()
        if not rows:
            return None, 0
        purged = 0
        with self._transaction():
            for key, floor in rows:
                if floor < cut:
                    self._db.execute(_DROP_FLOOR, (key,))
                    self._toggle(b"f", key, floor, "", -1)
                    purged += 1
        return rows[-1][0], purged

    def touch(self, ms: Version) -> None:
        """Records that this server is in touch with its cluster at `ms` (saved, in a file)."""
        self.touched = ms
        if self.path is not None:
            with self._transaction():
                self._db.execute(_SAVE_DIGEST, (_TOUCH_ROW, ms))

    def set_aside(self, cut: Version, after: str, limit: int) -> tuple[str | None, int]:
        """Moves at most `limit` versions older than `cut`, of keys from `after` on, out of the store
        into the doubt table (not read, hashed nor sent); returns the last key moved (None: none
        left) and how many moved. kvs.replication.horizon: a server back from a long absence."""
        with self._transaction():
            rows = self._db.execute(_ASIDE, (cut, after, limit)).fetchall()
            for key, ver, val in rows:
                self._db.execute(_TO_DOUBT, (key, ver, val))
                self._toggle(b"v", key, ver, val, -1)
        return (max(key for key, _, _ in rows) if rows else None), len(rows)

    def settle_doubt(self, restore: bool, limit: int) -> tuple[int, int]:
        """Empties at most `limit` rows of the doubt table: joined back into the store (`restore`),
        else dropped. Returns (rows taken, of those dropped the ones the store does not hold now:
        versions no peer sent back); (0, 0) once the table is empty."""
        with self._transaction():
            rows = self._db.execute(_FROM_DOUBT, (limit,)).fetchall()
            lost = 0
            for key, ver, val in rows:
                if restore:
                    self._add(key, ver, val)
                elif self._db.execute(_VALUE, (key, ver)).fetchone() is None:
                    lost += 1
        return len(rows), lost

    def in_doubt(self) -> int:
        """How many versions are set aside (see `set_aside`)."""
        count: int = self._db.execute("SELECT count(*) FROM doubt").fetchone()[0]
        return count

    # Writes ----------------------------------------------------------------

    def put(self, key: str, val: str) -> tuple[Written, Fragment]:
        """Store `val` under a new version: max(now, newest + 1, floor)."""
        # The hot path of every Put: one query for the newest version and the floor (a key with no
        # versions left needs a second one for its floor).
        row = self._db.execute(_NEWEST_AND_FLOOR, (key,)).fetchone()
        old_ver, old_val, floor = row if row is not None else (0, "", self._floor(key))
        ver = max(self._clock(), old_ver + 1, floor or 0)
        if ver > LAST_VERSION:
            raise VersionExhausted(f"key {quoted(key)} has no version left above {LAST_VERSION}")
        if self.path is None and not self.keep_versions:  # in memory, one statement commits itself
            self._db.execute(_INSERT, (key, ver, val))
            self._toggle(b"v", key, ver, val, 1)
            return Written(key, old_val, old_ver, ver), Fragment(key, 0, ((ver, val),))
        with self._transaction() if self.path is not None else nullcontext():
            # On disk, with the digest in the same commit.
            self._db.execute(_INSERT, (key, ver, val))
            self._toggle(b"v", key, ver, val, 1)
            floor = self._keep_floor(key) if self.keep_versions else 0
        return Written(key, old_val, old_ver, ver), Fragment(key, floor, ((ver, val),))

    def delete(self, key: str) -> tuple[Entry, Fragment | None]:
        """Remove every version: the floor rises above both now and the newest version."""
        newest = self._newest(key)
        if newest is None:
            return Entry(key, "", 0), None
        # Above both (newest <= LAST_VERSION), within MAX_VERSION even with a clock past year 9999.
        floor = min(max(self._clock(), newest.ver) + 1, MAX_VERSION)
        with self._transaction():
            self._raise_floor(key, floor)
        return newest, Fragment(key, floor=floor)

    def delete_range(self, fr: str, to: str) -> list[tuple[Entry, Fragment]]:
        """Delete every existing key with fr <= key <= to, ascending, as one change."""
        keys = [key for (key,) in self._db.execute(_KEYS_BETWEEN, (fr, to))]
        done = []
        with self._transaction():
            for key in keys:
                removed, fragment = self.delete(key)
                assert fragment is not None  # the key exists: it was just listed
                done.append((removed, fragment))
        return done

    def delete_keys(self, keys: Iterable[str]) -> list[tuple[Entry, Fragment]]:
        """Delete each of `keys` that exists, as one change; a key that does not is skipped."""
        done = []
        with self._transaction():
            for key in keys:
                removed, fragment = self.delete(key)
                if fragment is not None:
                    done.append((removed, fragment))
        return done

    def holds_more(self, key: str, below: Version, count: int) -> bool:
        """Whether `key` holds more than `count` versions under `below` (reads at most count + 1)."""
        return self._db.execute(_NTH_OLDEST, (key, below, count)).fetchone() is not None

    def drop_below(self, key: str, below: Version, limit: int) -> int:
        """Remove the oldest versions of `key` under `below`, at most `limit`; returns how many.

        Part of a floor raise done in steps (kvs.service.replicated): oldest first, so a read
        between two steps gets either the answer from before the change or the one
        after it. The floor is not touched; the change that follows raises it.
        """
        with self._transaction():
            rows = self._db.execute(_DROP_OLDEST, (key, below, limit)).fetchall()
            for ver, val in rows:
                self._toggle(b"v", key, ver, val, -1)
        return len(rows)

    def trim(self, key: str) -> tuple[Entry, Fragment | None]:
        """Remove every version but the newest: the floor rises to the newest version."""
        newest = self._newest(key)
        if newest is None:
            return Entry(key, "", 0), None
        with self._transaction():
            raised = self._raise_floor(key, newest.ver)
        return newest, Fragment(key, floor=newest.ver) if raised else None

    def join(self, fragments: Iterable[Fragment], late: Version = 0) -> None:
        """Merge state from a peer: raise floors, add versions at or above them. `late`: a version
        below it is dropped (a late message's: its key may have been deleted since and its floor
        forgotten, kvs.replication.horizon)."""
        with self._transaction():
            for fragment in fragments:
                if fragment.floor > 0:
                    self._raise_floor(fragment.key, fragment.floor)
                for ver, val in fragment.versions:
                    self._add(fragment.key, ver, val, late)
                if self.keep_versions and fragment.versions:
                    self._keep_floor(fragment.key)

    # Replica comparison ----------------------------------------------------

    def digest(self) -> tuple[int, ...]:
        """One 64-bit hash per bucket; equal digests mean equal state (collisions aside)."""
        return tuple(self._digest)

    def rebuild_digest(self) -> None:
        """Recomputes every bucket's digest from the rows (and saves it, on disk)."""
        self._digest = [0] * BUCKETS
        self._size = 0
        for kind, key, ver, val in self._db.execute(_ALL_ROWS):
            self._toggle(kind.encode(), key, ver, val, 1)
        self._dirty = set(range(BUCKETS))

    # Transactions (files) ----------------------------------------------------

    def on_commit(self, committed: Callable[[int], None]) -> None:
        """Calls `committed(n)` after each commit to the file, n being `commits` (kvs.storage.datadir)."""
        self._on_commit = committed

    def defer_commits(self, on_begin: Callable[[], None]) -> None:
        """From now on a write that opens a transaction calls `on_begin` and leaves it
        open: whoever called this ends it with `commit()`, and checkpoints the WAL
        into the file itself (kvs.storage.durable.GroupCommit, off the event loop)."""
        self._on_begin = on_begin
        self._db.execute("PRAGMA wal_autocheckpoint = 0")

    def commit(self) -> None:
        """Commits the open transaction, if any, with the digest of the buckets it changed."""
        if not self._db.in_transaction:
            return
        if self.path is not None:
            # SQLite integers are signed: store the hash's two's complement.
            rows = [
                (b, int.from_bytes(self._digest[b].to_bytes(8, "little"), "little", signed=True))
                for b in self._dirty
            ]
            # The count shares the digest's page: it costs no page of its own in the log.
            rows.append((_COMMITS_ROW, self.commits + 1))
            if self._size != self._saved_size:
                rows.append((_SIZE_ROW, self._size))
                self._saved_size = self._size
            self._db.executemany(_SAVE_DIGEST, rows)
        self._dirty.clear()
        self._db.execute("COMMIT")
        if self.path is not None:
            self.commits += 1
            if self._on_commit is not None:
                self._on_commit(self.commits)

    def checkpoint(self) -> None:
        """Copies what the WAL still holds into the file, between transactions (kvs.storage.durable)."""
        if not self._db.in_transaction:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        """Commits what is pending and closes the database (the WAL is checkpointed into the file)."""
        self.commit()
        self._db.close()

    # Internals -------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        # Batches many statements into one commit. Nothing is ever rolled back:
        # the digest mirrors each statement as it runs, so a half-done change
        # stays consistent with it (and validation keeps half-done changes out).
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN")
        if self._on_begin is not None:  # group commit: kvs.storage.durable commits it later
            self._on_begin()
            yield
            return
        try:
            yield
        finally:
            self.commit()

    def _newest(self, key: str) -> Entry | None:
        row = self._db.execute(_AT, (key, INT64_MAX)).fetchone()
        return None if row is None else Entry(key, row[1], row[0])

    def _exists(self, key: str) -> bool:
        return self._db.execute(_EXISTS, (key,)).fetchone() is not None

    def _floor(self, key: str) -> Version:
        row = self._db.execute(_FLOOR, (key,)).fetchone()
        return 0 if row is None else int(row[0])

    def _add(self, key: str, ver: Version, val: str, late: Version = 0) -> None:
        if self._db.execute(_ADD, (key, ver, val, late)).rowcount == 1:
            self._toggle(b"v", key, ver, val, 1)
            return
        # Below the floor (nothing stored), or the version is taken: the greater value wins.
        row = self._db.execute(_VALUE, (key, ver)).fetchone()
        if row is not None and val > row[0]:
            self._db.execute(_REPLACE, (val, key, ver))
            self._toggle(b"v", key, ver, row[0], -1)
            self._toggle(b"v", key, ver, val, 1)

    def _raise_floor(self, key: str, floor: Version) -> bool:
        old = self._floor(key)
        if floor <= old:
            return False
        self._db.execute(_SET_FLOOR, (key, floor))
        if old:
            self._toggle(b"f", key, old, "", -1)
        self._toggle(b"f", key, floor, "", 1)
        for ver, val in self._db.execute(_DROP_BELOW, (key, floor)).fetchall():
            self._toggle(b"v", key, ver, val, -1)
            self.floor_drops += 1
        return True

    def _keep_floor(self, key: str) -> Version:
        """After a put or a join: raises the floor to the key's `keep_versions`-th newest version, if
        that drops 1 to KEEP_INLINE versions (more is the sweep's, kvs.service.upkeep, in slices);
        returns the floor raised, or 0.

        Every replica computes the same floor from the same versions, so the join's raises need no
        publishing; a put's floor goes out in its fragment, for peers without --keep-versions."""
        rows = self._db.execute(_NEWEST_FROM, (key, (self.keep_versions or 1) - 1, KEEP_INLINE)).fetchall()
        if not 2 <= len(rows) <= KEEP_INLINE:
            return 0
        self._raise_floor(key, rows[0][0])
        return int(rows[0][0])

    def _toggle(self, kind: bytes, key: str, ver: Version, val: str, sign: int) -> None:
        """Adds (sign 1) or removes (-1) a row in the digest and the size."""
        # XOR is its own inverse: the same call adds an entry to the digest or removes it.
        raw = key.encode()
        data = val.encode()
        entry = hashlib.blake2b(_HASH_HEADER.pack(kind, len(raw), ver) + raw + data, digest_size=8)
        bucket = zlib.crc32(raw) % BUCKETS
        self._digest[bucket] ^= int.from_bytes(entry.digest(), "little")
        self._dirty.add(bucket)
        self._size += sign * (len(raw) + len(data) + ROW_OVERHEAD)


def resume_at(fragment: Fragment) -> tuple[str, Version]:
    """Where `Store.export_after` goes on after `fragment`: its last version, or its floor (-1)."""
    return fragment.key, fragment.versions[-1][0] if fragment.versions else -1


def _fragments(rows: Iterable[tuple[str, Version | None, Version | None, str | None]]) -> Iterator[Fragment]:
    """One fragment per key from (key, floor, NULL, NULL) and (key, NULL, ver, val) rows, by key."""
    for key, group in groupby(rows, key=lambda row: row[0]):
        floor = 0
        versions = []
        for _, row_floor, ver, val in group:
            if row_floor is None:
                versions.append((ver, val))
            else:
                floor = row_floor
        yield Fragment(key, floor, tuple(sorted(versions)))  # type: ignore[arg-type]
