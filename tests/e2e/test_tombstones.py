"""--tombstone-ttl with real servers: deleted keys' floors forgotten, and deleted keys that never come
back from a server away longer than the horizon (cut off from the broker, stopped with --data-dir, or
restarted from an old copy of its --data-dir): docs/operations.md, "Growth over time"; docs/replication.md,
"Tombstones"."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from kvs._gen import kvs_pb2 as pb
from kvs.local.linkproxy import LinkProxy
from kvs.local.processes import wait_for
from tests.e2e.conftest import Processes, start
from tests.e2e.harness import KvsServer, converged
from tests.scrape import scrape

TTL = ["--tombstone-ttl", "3s"]


def keys(server: KvsServer) -> dict[str, int]:
    """Every key the server holds a floor or a version of, with its floor."""
    return {f.key: f.floor for f in server.dump()}


def test_the_floors_of_deleted_keys_are_forgotten_within_a_minute_of_the_horizon(
    processes: Processes,
) -> None:
    metrics = processes.port()
    server = processes.server("s1", [*TTL, "--metrics-port", str(metrics)])
    for i in range(200):
        server.stub.Put(pb.KeyValueRequest(key=f"k{i:03}", val="v" * 100))
    list(server.stub.DelRange(pb.KeyRange(fr=pb.KeyRequest(key="k"), to=pb.KeyRequest(key="l"))))
    deleted = time.monotonic()
    assert scrape(metrics)["kvs_store_tombstones", ()] == 200
    wait_for("the tombstones to go", lambda: scrape(metrics)["kvs_store_tombstones", ()] == 0, timeout=3 + 60)
    assert time.monotonic() - deleted < 3 + 60
    sample = scrape(metrics)
    assert sample["kvs_tombstones_purged_total", ()] == 200
    assert sample["kvs_store_bytes", ()] == 0
    assert keys(server) == {}
    assert server.stub.Get(pb.KeyRequest(key="k000")) == pb.KeyValueVersionReply(key="k000")


def gone(servers: list[KvsServer], key: str) -> None:
    """`key` is deleted on every server, and stays so once they agree."""
    converged(servers)
    time.sleep(3)  # two sync intervals: a repair would have brought it back by now
    converged(servers)
    for server in servers:
        assert server.stub.Get(pb.KeyRequest(key=key)) == pb.KeyValueVersionReply(key=key), server.name
        assert key not in keys(server), server.name


def test_a_server_cut_off_past_the_horizon_brings_no_deleted_key_back(processes: Processes) -> None:
    """s2 (in memory) is cut off from the broker while s3 deletes a key and leaves; the broker restarts
    (what it queued for s2 is lost); s1 forgets the floor. Back, s2 must not hand the key to s1."""
    link = LinkProxy(("127.0.0.1", processes.broker.port)).start()
    try:
        s1, s3 = processes.server("s1", TTL, wait=False), processes.server("s3", TTL, wait=False)
        s2 = processes.server("s2", [*TTL, "--broker", link.address], wait=False)
        for server in (s1, s2, s3):
            server.wait_serving()
        s1.stub.Put(pb.KeyValueRequest(key="doomed", val="old"))
        s1.stub.Put(pb.KeyValueRequest(key="kept", val="old"))
        converged([s1, s2, s3])
        link.set("reset")  # every connection of s2 to the broker reset at once
        s3.stub.Del(pb.KeyRequest(key="doomed"))
        wait_for("s1 to hold the floor", lambda: keys(s1).get("doomed", 0) > 0)
        processes.broker.stop()
        processes.broker.start()
        wait_for("s3 to reconnect", lambda: s3.status().connected)
        s3.stop()  # its goodbye retained on the new broker: nobody waits for it
        wait_for("s1 to forget the floor", lambda: "doomed" not in keys(s1), timeout=30)
        s1.stub.Put(pb.KeyValueRequest(key="new", val="v"))
        link.set("pass")
        gone([s1, s2], "doomed")
        wait_for("s2 to settle its doubt", lambda: "back past --tombstone-ttl" in s2.log(), timeout=30)
    finally:
        link.stop()
    assert "dropped 1 version(s) older than the horizon" in s2.log()
    assert s2.stub.Get(pb.KeyRequest(key="kept")).val == "old"  # s1 holds it: it stays
    assert s2.stub.Get(pb.KeyRequest(key="new")).val == "v"


def test_a_server_stopped_past_the_horizon_with_its_data_dir_brings_no_deleted_key_back(
    processes: Processes, tmp_path: Path
) -> None:
    s1 = start(processes, "s1", tmp_path / "s1", extra=TTL)
    s2 = start(processes, "s2", tmp_path / "s2", extra=TTL)
    s1.stub.Put(pb.KeyValueRequest(key="doomed", val="old"))
    s1.stub.Put(pb.KeyValueRequest(key="kept", val="old"))
    converged([s1, s2])
    s2.stop()
    s1.stub.Del(pb.KeyRequest(key="doomed"))
    wait_for("s1 to forget the floor", lambda: keys(s1) == {"kept": 0}, timeout=30)
    s2 = start(processes, "s2", tmp_path / "s2", port=s2.port, extra=TTL)
    gone([s1, s2], "doomed")
    assert s2.stub.Get(pb.KeyRequest(key="kept")).val == "old"
    assert "out of touch with the cluster for" in s2.log()


def test_an_old_copy_of_a_data_dir_restored_brings_no_deleted_key_back(
    processes: Processes, tmp_path: Path
) -> None:
    s1 = start(processes, "s1", tmp_path / "s1", extra=TTL)
    s2 = start(processes, "s2", tmp_path / "s2", extra=TTL)
    s1.stub.Put(pb.KeyValueRequest(key="doomed", val="old"))
    converged([s1, s2])
    s2.stop()
    shutil.copytree(tmp_path / "s2", tmp_path / "backup")  # a backup, taken while s2 was stopped
    s2 = start(processes, "s2", tmp_path / "s2", port=s2.port, extra=TTL)
    s2.stub.Del(pb.KeyRequest(key="doomed"))
    wait_for("both to forget the floor", lambda: keys(s1) == keys(s2) == {}, timeout=30)
    s2.stop()
    shutil.rmtree(tmp_path / "s2")
    shutil.copytree(tmp_path / "backup", tmp_path / "s2")  # restored into the running cluster
    s2 = start(processes, "s2", tmp_path / "s2", port=s2.port, extra=TTL)
    gone([s1, s2], "doomed")
