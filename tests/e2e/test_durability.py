"""Durability (SPEC section 6): --data-dir survives kill -9 of everything; bad DIRs are refused."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import grpc
import pytest

from kvs._gen import kvs_pb2 as pb
from kvs._gen import replication_pb2 as rpb
from kvs._gen.kvs_pb2_grpc import KeyValueStoreStub
from kvs.local.processes import wait_for
from kvs.storage.datadir import STORE_FILE
from kvs.storage.store import Fragment, Store
from tests.e2e.conftest import Processes, start
from tests.e2e.harness import ROOT, KvsServer, assert_refused, converged, run_server, tree


def restart(processes: Processes, servers: Sequence[KvsServer], dirs: Sequence[Path]) -> list[KvsServer]:
    """The same servers again (same ids, ports and directories), once all report SERVING."""
    again = [start(processes, s.name, d, s.port, wait=False) for s, d in zip(servers, dirs, strict=True)]
    for server in again:
        server.wait_serving()
    return again


class Writers:
    """One thread per server writing unique keys (Put, PutAll, Del) until the server dies.

    Remembers what was acknowledged, i.e. what the client received a reply for:
    `written` (key -> version) and `deleted`. A write whose call failed may or may
    not have happened; its key leaves both.
    """

    def __init__(self, servers: Sequence[KvsServer], cycle: int) -> None:
        self.written: dict[str, int] = {}
        self.deleted: set[str] = set()
        self.calls = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(server, f"c{cycle}{server.name}-"), daemon=True)
            for server in servers
        ]

    def __enter__(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, server: KvsServer, prefix: str) -> None:
        stub = server.stub
        mine: list[str] = []
        i = 0
        while not self._stop.is_set():
            i += 1
            try:
                if i % 7 == 0 and mine:
                    self._delete(stub, mine.pop(random.randrange(len(mine))))
                elif i % 5 == 0:
                    requests = [pb.KeyValueRequest(key=f"{prefix}{i:05}-{j}", val="v") for j in range(5)]
                    mine += self._acknowledged(stub.PutAll(iter(requests), timeout=5))
                else:
                    request = pb.KeyValueRequest(key=f"{prefix}{i:05}", val="v")
                    mine += self._acknowledged([stub.Put(request, timeout=5)])
            except grpc.RpcError:
                return  # the server is gone: what it did not acknowledge is uncertain
            with self._lock:
                self.calls += 1

    def _acknowledged(self, replies: Iterable[pb.PutReply]) -> list[str]:
        """Records each reply as it arrives: the keys of a stream cut short after its last stay unchecked."""
        done = []
        for reply in replies:
            with self._lock:
                self.written[reply.key] = reply.ver
            done.append(reply.key)
        return done

    def _delete(self, stub: KeyValueStoreStub, key: str) -> None:
        try:
            stub.Del(pb.KeyRequest(key=key), timeout=5)
        except grpc.RpcError:
            with self._lock:
                self.written.pop(key, None)
            raise
        with self._lock:
            self.written.pop(key)
            self.deleted.add(key)


def check_everywhere(servers: Sequence[KvsServer], written: dict[str, int], deleted: set[str]) -> None:
    """Every acknowledged write, with its version, and every acknowledged deletion, on every server."""
    keys = sorted(written) + sorted(deleted)
    for server in servers:
        replies = server.stub.GetAll(iter([pb.KeyRequest(key=k) for k in keys]), timeout=60)
        got = {reply.key: reply for reply in replies}
        for key, ver in written.items():
            assert (got[key].val, got[key].ver) == ("v", ver), f"{server.name} lost {key}@{ver}: {got[key]}"
        for key in deleted:
            assert got[key].ver == 0, f"{server.name} brought back the deleted {key}: {got[key]}"


def test_killing_every_server_and_the_broker_during_writes_loses_no_acknowledged_write(
    processes: Processes, tmp_path: Path
) -> None:
    seed = random.randrange(2**32)
    print(f"random seed {seed}")
    rng = random.Random(seed)
    dirs = [tmp_path / f"data-s{i}" for i in (1, 2, 3)]
    broker = processes.broker
    servers = [start(processes, f"s{i}", d, wait=False) for i, d in enumerate(dirs, 1)]
    for server in servers:
        server.wait_serving()
    written: dict[str, int] = {}
    deleted: set[str] = set()
    for cycle in range(5):
        with Writers(servers, cycle) as writers:
            wait_for("writes to start", lambda: writers.calls >= 30)
            threading.Event().wait(rng.uniform(0.0, 0.4))  # a random moment
            victims = [broker, *servers]
            rng.shuffle(victims)
            for victim in victims:
                os.kill(victim.pid, signal.SIGKILL)
        for victim in victims:
            victim.stop()
        assert writers.written, "nothing was acknowledged: the test would prove nothing"
        written.update(writers.written)
        deleted |= writers.deleted
        for key in writers.deleted:
            written.pop(key, None)
        broker = processes.new_broker(port=broker.port)
        servers = restart(processes, servers, dirs)
        dump = converged(servers, timeout=60)
        assert tuple(servers[0].status().digest) == digest_of(dump)  # the digest saved with the rows
        check_everywhere(servers, written, deleted)
        print(f"cycle {cycle}: {len(written)} writes and {len(deleted)} deletions acknowledged so far")


def test_a_server_restarted_alone_keeps_its_histories_deletions_and_trims(
    processes: Processes, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server = start(processes, "alone", data, extra=["--fsync"])
    stub = server.stub
    for i in range(3):
        for key in ("history", "trimmed", "deleted", "range-a", "range-b", "kept"):
            stub.Put(pb.KeyValueRequest(key=key, val=f"{key}{i}"))
    list(stub.PutAll(iter([pb.KeyValueRequest(key=f"bulk{i:03}", val="x" * i) for i in range(200)])))
    stub.Trim(pb.KeyRequest(key="trimmed"))
    stub.Del(pb.KeyRequest(key="deleted"))
    list(stub.DelRange(pb.KeyRange(fr=pb.KeyRequest(key="range-a"), to=pb.KeyRequest(key="range-z"))))
    list(stub.DelAll(iter([pb.KeyRequest(key=f"bulk{i:03}") for i in range(0, 200, 3)])))
    before, digest = server.dump(), list(server.status().digest)
    assert len(before) == 206  # 200 bulk keys (a third of them tombstones) and six others
    server.stop(signal.SIGKILL)

    server = start(processes, "alone", data, server.port)
    assert server.dump() == before
    assert list(server.status().digest) == digest
    history = [stub_get(server, "history", v) for v in sorted(v for f in before if f.key == "history"
                                                                for v in f.versions)]  # fmt: skip
    assert history == ["history0", "history1", "history2"]
    assert stub_get(server, "trimmed") == "trimmed2"
    assert server.stub.Get(pb.KeyRequest(key="deleted")).ver == 0


def stub_get(server: KvsServer, key: str, ver: int = 0) -> str:
    reply: pb.KeyValueVersionReply = server.stub.Get(pb.KeyRequest(key=key, ver=ver))
    return reply.val


def test_a_server_down_while_the_others_wrote_and_deleted_converges_after_restart(
    processes: Processes, tmp_path: Path
) -> None:
    data = tmp_path / "data-s3"
    s1, s2 = processes.cluster_of(2)
    s3 = start(processes, "s3", data)
    for i in range(100):
        [s1, s2, s3][i % 3].stub.Put(pb.KeyValueRequest(key=f"k{i:03}", val="before"))
    converged([s1, s2, s3])
    s3.stop(signal.SIGKILL)
    for i in range(0, 100, 2):
        s1.stub.Del(pb.KeyRequest(key=f"k{i:03}"))
    for i in range(1, 100, 4):
        s2.stub.Put(pb.KeyValueRequest(key=f"k{i:03}", val="after"))
        s2.stub.Trim(pb.KeyRequest(key=f"k{i:03}"))
    list(
        s2.stub.PutAll(
            iter([pb.KeyValueRequest(key=f"new{i:03}", val="while s3 was down") for i in range(50)])
        )
    )
    expected = converged([s1, s2])

    s3 = start(processes, "s3", data, s3.port)
    # Not a moment later: a restarted server reports SERVING only with its peers' state.
    assert s3.dump() == expected
    assert s3.stub.Get(pb.KeyRequest(key="k000")).ver == 0
    assert stub_get(s3, "k001") == "after"
    assert stub_get(s3, "new049") == "while s3 was down"
    converged([s1, s2, s3])


def test_a_backup_taken_while_writing_restores_into_a_new_dir(processes: Processes, tmp_path: Path) -> None:
    live, restored = tmp_path / "live", tmp_path / "restored"
    server = start(processes, "s1", live)
    list(server.stub.PutAll(iter([pb.KeyValueRequest(key=f"k{i:03}", val="v") for i in range(100)])))
    server.stub.Del(pb.KeyRequest(key="k007"))
    server.stub.Trim(pb.KeyRequest(key="k008"))
    at_backup = server.dump()
    # The command of docs/storage.md, "Backing up and restoring", while the server runs.
    backup = tmp_path / "backup.sqlite"
    script = "import sqlite3, sys; sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))"
    python = str(ROOT / ".venv" / "bin" / "python")
    subprocess.run([python, "-c", script, str(live / STORE_FILE), str(backup)], check=True, timeout=60)
    server.stub.Put(pb.KeyValueRequest(key="after-the-backup", val="v"))
    assert server.stop() == 0

    restored.mkdir(mode=0o700)
    (restored / STORE_FILE).write_bytes(backup.read_bytes())
    again = start(processes, "s1", restored, server.port)
    assert again.dump() == at_backup
    assert tuple(again.status().digest) == digest_of(at_backup)  # the saved digest is the rows' digest


def digest_of(dump: Sequence[rpb.Fragment]) -> tuple[int, ...]:
    store = Store(lambda: 1)
    store.join(Fragment(f.key, f.floor, tuple(zip(f.versions, f.values, strict=True))) for f in dump)
    return store.digest()


# Directories that cannot be used ---------------------------------------------------------------


@pytest.fixture
def stopped_store(processes: Processes, tmp_path: Path) -> Path:
    """A DIR holding a store of the test's cluster with one key, its server stopped."""
    data = tmp_path / "data"
    server = start(processes, "owner", data)
    server.stub.Put(pb.KeyValueRequest(key="mine", val="precious"))
    assert server.stop() == 0
    return data


def test_a_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a-file"
    path.write_text("not a directory\n")
    assert_refused(run_server(path, "c"), "is a file, not a directory")
    assert path.read_text() == "not a directory\n"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"hello, I am somebody's notes\n" * 10, "not an SQLite database"),
        (b"", "not an SQLite database"),
        (None, "another program"),
    ],
    ids=["text", "empty", "other-sqlite"],
)
def test_a_file_that_is_not_a_kvs_store_is_refused_and_left_alone(
    tmp_path: Path, content: bytes | None, words: str
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    if content is None:
        with sqlite3.connect(data / STORE_FILE) as db:
            db.execute("CREATE TABLE accounts (name TEXT, balance INTEGER)")
            db.execute("INSERT INTO accounts VALUES ('ana', 100)")
        db.close()
    else:
        (data / STORE_FILE).write_bytes(content)
    before = tree(data)
    assert_refused(run_server(data, "c"), words)
    assert tree(data) == {**before, "lock": tree(data)["lock"]}  # only the lock file is new


def test_a_store_of_another_cluster_is_refused_and_left_alone(
    processes: Processes, stopped_store: Path
) -> None:
    before = tree(stopped_store / STORE_FILE)
    assert_refused(run_server(stopped_store, "another-cluster"), "cluster", processes.cluster)
    assert tree(stopped_store / STORE_FILE) == before
    server = start(processes, "owner", stopped_store)
    assert stub_get(server, "mine") == "precious"


def test_a_dir_in_use_by_a_running_server_is_refused(processes: Processes, tmp_path: Path) -> None:
    data = tmp_path / "data"
    owner = start(processes, "owner", data)
    owner.stub.Put(pb.KeyValueRequest(key="mine", val="precious"))
    assert_refused(run_server(data, processes.cluster), "in use by another kvs server", f"pid {owner.pid}")
    assert stub_get(owner, "mine") == "precious"
    assert owner.stop() == 0
    assert stub_get(start(processes, "owner", data, owner.port), "mine") == "precious"


def test_a_dir_that_is_not_writable_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "read-only"
    data.mkdir(mode=0o700)
    # Root writes anywhere a mode allows nothing; an immutable directory stops root too.
    locked, unlocked = (["chattr", "+i"], ["chattr", "-i"]) if os.geteuid() == 0 else ([], [])
    data.chmod(0o555)
    if locked:
        subprocess.run([*locked, str(data)], check=True)
    try:
        assert_refused(run_server(data, "c"), "not writable")
        assert list(data.iterdir()) == []
    finally:
        if unlocked:
            subprocess.run([*unlocked, str(data)], check=True)
        data.chmod(0o755)
