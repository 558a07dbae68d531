"""Stores that fail loudly (docs/storage.md): a store that is read-only, corrupt or of another
cluster is refused at start in one line and left as it was; a cut write-ahead log is said in
one line, and what the peers hold comes back. Real ./server.sh processes."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import struct
from pathlib import Path

import pytest

from kvs._gen import kvs_pb2 as pb
from kvs.local.processes import wait_for
from kvs.storage.datadir import STORE_FILE
from tests.e2e.conftest import Processes, start
from tests.e2e.harness import KvsServer, assert_refused, converged, run_server, tree

WAL = f"{STORE_FILE}-wal"
CUT = re.compile(r"the write-ahead log of \S+ was cut: it lost the last (\d+) commit\(s\)")


def killed_with_a_log(
    processes: Processes, data: Path, name: str = "owner", keys: int = 600, peer: KvsServer | None = None
) -> list[str]:
    """Writes `keys` keys (one commit each), then kill -9 (once `peer` holds them all, if given) at
    a moment when the write-ahead log holds commits that the store file does not and no checkpoint
    is copying them: cutting the log then loses those commits, and only those. (Killed at any
    moment, a checkpoint, every second or 250 commits, had sometimes copied them all, or was
    half-way: the cut lost nothing, or left the file torn.)"""
    server = start(processes, name, data)
    written = [f"k{i:05}" for i in range(keys)]
    for key in written:
        server.stub.Put(pb.KeyValueRequest(key=key, val="v"))
    for attempt in range(20):
        if attempt:  # one more commit, which the last checkpoint did not copy unless due again
            written.append(f"tail{attempt:02}")
            server.stub.Put(pb.KeyValueRequest(key=written[-1], val="v"))
        if peer is not None:
            wait_for("the peer to hold every write", lambda: present(peer, written) == len(written))
        os.kill(server.pid, signal.SIGSTOP)
        if log_ahead_of_the_store(data):
            break
        os.kill(server.pid, signal.SIGCONT)
    else:
        raise AssertionError("the log never held a commit the store file lacked")
    server.stop(signal.SIGKILL)
    assert (data / WAL).stat().st_size > 0
    return written


def log_ahead_of_the_store(data: Path) -> bool:
    """Whether the write-ahead log holds frames not yet copied into the store file, with no
    checkpoint under way: read from SQLite's WAL index (the -shm file: mxFrame, the frames in
    the log; nBackfill, those copied) and its checkpoint lock (https://sqlite.org/walformat.html)."""
    with open(data / f"{STORE_FILE}-shm", "r+b") as shm:
        header = shm.read(136)
        (frames,), (copied,) = struct.unpack_from("=I", header, 16), struct.unpack_from("=I", header, 96)
        try:
            fcntl.lockf(shm, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 121)  # WAL_CKPT_LOCK: 120 + 1
        except OSError:
            return False  # a checkpoint is copying frames
        fcntl.lockf(shm, fcntl.LOCK_UN, 1, 121)
    return bool(frames > copied)


def files(data: Path) -> dict[str, str]:
    """The store and its log, hashed: what a refusal must leave as it was (the -shm index and the
    lock file are not data)."""
    return {name: digest for name, digest in tree(data).items() if name in (STORE_FILE, WAL)}


def test_a_store_of_another_cluster_is_refused_before_its_log_is_checkpointed(
    processes: Processes, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    killed_with_a_log(processes, data, keys=50)
    before = files(data)
    assert WAL in before
    assert_refused(run_server(data, "another-cluster"), "cluster")
    assert files(data) == before


def test_a_read_only_store_is_refused_and_left_alone(processes: Processes, tmp_path: Path) -> None:
    data = tmp_path / "data"
    killed_with_a_log(processes, data, keys=50)
    (data / STORE_FILE).chmod(0o400)
    before = files(data)
    assert_refused(run_server(data, processes.cluster), "read-only", f"chmod 600 {data / STORE_FILE}")
    assert files(data) == before


@pytest.mark.parametrize("where", ["a-root-page", "middle"])
def test_a_corrupt_store_is_refused_at_start_and_left_alone(
    processes: Processes, tmp_path: Path, where: str
) -> None:
    data = tmp_path / "data"
    server = start(processes, "owner", data)
    list(server.stub.PutAll(iter(pb.KeyValueRequest(key=f"k{i:05}", val="v" * 100) for i in range(3000))))
    assert server.stop() == 0  # the log checkpointed into the file
    store = data / STORE_FILE
    size = store.stat().st_size
    with store.open("r+b") as file:
        file.seek(2 * 4096 if where == "a-root-page" else (size // 4096 // 2) * 4096)  # page 3: versions
        file.write(b"\xa5" * 2000)
    before = files(data)
    assert_refused(run_server(data, processes.cluster), "corrupt")
    assert files(data) == before


def test_a_cut_write_ahead_log_is_said_in_one_line_and_the_peers_bring_back_what_it_lost(
    processes: Processes, tmp_path: Path
) -> None:
    data = tmp_path / "data-s1"
    s2 = processes.server("s2")
    written = killed_with_a_log(processes, data, name="s1", peer=s2)
    wal = data / WAL
    os.truncate(wal, 32)  # its header only: every frame not yet copied into the store is lost

    s1 = start(processes, "s1", data)
    lines = [line for line in s1.log().splitlines() if "write-ahead log" in line]
    assert len(lines) == 1, s1.log()
    match = CUT.search(lines[0])
    assert match, lines[0]
    assert int(match.group(1)) > 0
    converged([s1, s2])
    assert present(s1, written) == len(written)  # s2 held every write: the join brought them back


def test_a_cut_write_ahead_log_of_a_lone_server_says_how_many_commits_it_lost(
    processes: Processes, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    written = killed_with_a_log(processes, data, name="alone")
    wal = data / WAL
    os.truncate(wal, 32)  # its header only: every frame not yet copied into the store is lost
    alone = start(processes, "alone", data)
    match = CUT.search(alone.log())
    assert match, alone.log()
    lost_keys = len(written) - present(alone, written)
    assert lost_keys > 0
    assert int(match.group(1)) == lost_keys  # one Put, one commit: the count is exact here


def test_a_whole_log_is_not_reported_as_cut(processes: Processes, tmp_path: Path) -> None:
    data = tmp_path / "data"
    written = killed_with_a_log(processes, data, name="alone", keys=100)
    alone = start(processes, "alone", data)
    assert "write-ahead log" not in alone.log()
    assert present(alone, written) == len(written)


def present(server: KvsServer, keys: list[str]) -> int:
    replies = server.stub.GetAll(iter(pb.KeyRequest(key=k) for k in keys), timeout=60)
    return sum(1 for reply in replies if reply.ver > 0)
