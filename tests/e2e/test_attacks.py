"""Hostile publishers on the broker (docs/contract.md, "Security", guarantee 5): what someone without the
cluster key can do to a running cluster, each as the attack was first tried by hand."""

from __future__ import annotations

import os
import time
from pathlib import Path

from kvs._gen import kvs_pb2 as pb
from kvs.local.processes import wait_for
from kvs.replication.codec import Codec, Digest, chunks
from kvs.storage.store import BUCKETS, Fragment
from tests.e2e.conftest import Processes
from tests.e2e.harness import KvsServer, converged, publish_all, tap

ZEROS = (0,) * BUCKETS


def rss_kb(server: KvsServer) -> int:
    for line in Path(f"/proc/{server.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_forged_batch_changes_nothing_and_is_logged(processes: Processes) -> None:
    s1, s2 = processes.cluster_of(2)
    s1.stub.Put(pb.KeyValueRequest(key="victim", val="kept"))
    wait_for("s2 to hold the victim", lambda: s2.stub.Get(pb.KeyRequest(key="victim")).val == "kept")
    forger = Codec(processes.cluster, "s1", os.urandom(32), epoch=int(time.time() * 1000))
    evil = [
        Fragment("created", 0, ((1_000, "by an outsider"),)),
        Fragment("victim", floor=2**62),
        Fragment("blocked", 0, ((2**63 - 2, "for ever"),)),
    ]
    publish_all(
        processes.broker, [(f"{processes.cluster}/batch", forger.batch(chunk, 0)) for chunk in chunks(evil)]
    )
    written = s2.stub.Put(pb.KeyValueRequest(key="after", val="x"))
    wait_for("a real write after it", lambda: s1.stub.Get(pb.KeyRequest(key="after")).ver == written.ver)
    for server in (s1, s2):
        assert server.stub.Get(pb.KeyRequest(key="created")).ver == 0
        assert server.stub.Get(pb.KeyRequest(key="victim")).val == "kept"
        assert server.stub.Put(pb.KeyValueRequest(key="blocked", val="fine")).ver < 2**62
        assert "bad authentication tag" in server.log()


def test_a_bit_flipped_or_replayed_batch_is_dropped(processes: Processes) -> None:
    s1, s2 = processes.cluster_of(2)
    with tap(processes.broker, processes.cluster) as listener:
        s1.stub.Put(pb.KeyValueRequest(key="k", val="first"))
        captured = listener.first(f"{processes.cluster}/batch")
    s1.stub.Del(pb.KeyRequest(key="k"))
    wait_for("s2 to see the delete", lambda: s2.stub.Get(pb.KeyRequest(key="k")).ver == 0)
    flipped = bytearray(captured)
    flipped[-2] ^= 0x20
    publish_all(processes.broker, [(f"{processes.cluster}/batch", bytes(flipped))] * 3)
    publish_all(processes.broker, [(f"{processes.cluster}/batch", captured)] * 3)
    wait_for("s2 to log the flipped batch", lambda: "bad authentication tag" in s2.log())
    wait_for("s2 to log the replays", lambda: "replayed" in s2.log())
    assert s2.stub.Get(pb.KeyRequest(key="k")).ver == 0


def test_forged_and_replayed_digests_make_the_servers_send_nothing(processes: Processes) -> None:
    servers = processes.cluster_of(3)
    for i, server in enumerate(servers):
        list(server.stub.PutAll(pb.KeyValueRequest(key=f"k{i}-{n:05}", val="v" * 100) for n in range(3_000)))
    converged(servers)
    with tap(processes.broker, processes.cluster) as listener:
        # A request the servers would have answered with their whole state, signed by nobody.
        forger = Codec(processes.cluster, "made-up", os.urandom(32), epoch=int(time.time() * 1000))
        forged = [(f"{processes.cluster}/digest", forger.digest(Digest(ZEROS, request=1))) for _ in range(20)]
        publish_all(processes.broker, forged)
        # A real request, captured and replayed: a joiner's, answered once when it was new.
        joiner = processes.server("s4")
        request = next(
            p for t, p, _ in listener.messages if t == f"{processes.cluster}/digest" and len(p) > 2000
        )
        answered = listener.bytes_on(f"{processes.cluster}/to/")
        mark = len(listener.messages)
        publish_all(processes.broker, [(f"{processes.cluster}/digest", request)] * 20)
        time.sleep(2)
        assert answered > 9_000 * 100  # the real request was answered with the whole state
        assert listener.bytes_on(f"{processes.cluster}/to/", since=mark) == 0
    for server in [*servers, joiner]:
        assert server.running()


def test_digests_from_20000_invented_origins_cost_no_lasting_memory(processes: Processes) -> None:
    s1, s2 = processes.cluster_of(2)
    before = rss_kb(s1)
    payloads = []
    for i in range(20_000):
        forger = Codec(processes.cluster, f"invented-{i}", os.urandom(32), epoch=1)
        payloads.append((f"{processes.cluster}/digest", forger.digest(Digest(ZEROS))))
    publish_all(processes.broker, payloads)
    s2.stub.Put(pb.KeyValueRequest(key="after", val="x"))
    wait_for("s1 to still replicate", lambda: s1.stub.Get(pb.KeyRequest(key="after")).val == "x")
    assert rss_kb(s1) - before < 20_000, "more than 20 MB kept"
    assert s1.status().peers == ["s2"]


def test_fake_and_emptied_presences_neither_delay_nor_hurry_a_joiner(processes: Processes) -> None:
    s1, s2 = processes.cluster_of(2)
    list(s1.stub.PutAll(pb.KeyValueRequest(key=f"k{n:05}", val="v") for n in range(5_000)))
    converged([s1, s2])
    forger = Codec(processes.cluster, "ghost", os.urandom(32), epoch=1)
    cluster = processes.cluster
    fake = [(f"{cluster}/peers/ghost", forger.presence())]
    emptied = [(f"{cluster}/peers/s1", b""), (f"{cluster}/peers/s2", b"")]
    publish_all(processes.broker, fake + emptied, retain=True)
    started = time.monotonic()
    joiner = processes.server("s3")
    assert time.monotonic() - started < 8, "a fake peer made the joiner wait"
    assert "caught up: 5000 keys" in joiner.log()
    assert "waiting for the state of ['s1', 's2']" in joiner.log()


def test_two_clusters_with_different_keys_on_one_broker_never_mix(processes: Processes) -> None:
    a1, a2 = processes.cluster_of(2)
    settings = ["--cluster", processes.cluster, "--broker", processes.broker.address]
    other = KvsServer(processes.log_dir, "b1", [*settings, "--cluster-key-file", str(_other_key(processes))])
    processes.started.append(other)
    other.start()
    other.wait_serving()
    a1.stub.Put(pb.KeyValueRequest(key="ours", val="a"))
    other.stub.Put(pb.KeyValueRequest(key="theirs", val="b"))
    wait_for("a2 to see a1's write", lambda: a2.stub.Get(pb.KeyRequest(key="ours")).val == "a")
    time.sleep(1)
    assert other.stub.Get(pb.KeyRequest(key="ours")).ver == 0
    assert a2.stub.Get(pb.KeyRequest(key="theirs")).ver == 0
    assert other.status().peers == []


def _other_key(processes: Processes) -> str:
    path = processes.log_dir / "other.key"
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    assert processes.cluster_key() != path.read_bytes()
    return str(path)
