"""Guarantees 6 and 7 under the faults that first broke them, with real processes."""

from __future__ import annotations

import signal
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from kvs._gen import kvs_pb2 as pb
from kvs.local.processes import wait_for
from tests.e2e.conftest import Processes
from tests.e2e.harness import KvsServer, Writer


def missing(servers: Sequence[KvsServer], acknowledged: dict[str, int]) -> dict[str, int]:
    """How many acknowledged writes (key, version) each server lacks, from its dump."""
    counts = {}
    for server in servers:
        held = {f.key: set(f.versions) for f in server.dump()}
        counts[server.name] = sum(1 for k, ver in acknowledged.items() if ver not in held.get(k, ()))
    return counts


@pytest.mark.slow  # 80 s: the outage, then three full states for a joiner
def test_writes_lost_in_a_40_s_broker_outage_are_all_repaired_while_writes_go_on(
    processes: Processes,
) -> None:
    """The real-process smoke test of guarantee 7. Its bound, every lost write back within 10 s of
    the broker's return, is checked on a simulated clock, where a loaded machine cannot make it
    flaky (tests/unit/test_sync_simulation.py, test_lost_batches_are_repaired_within_10_s_...);
    here every write must come back, on real processes, and a joiner must then have them all."""
    broker = processes.broker
    servers = processes.cluster_of(3)
    with Writer(servers, "w") as writer:
        writer.wait_for(500)
        broker.stop(signal.SIGKILL)
        time.sleep(40)  # the outage itself: writes go on, and fill the servers' write windows
        # What the test is about, whatever this machine's speed (a count of writes was a proxy,
        # 5,000 in 40 s, that a loaded machine missed): every server skipped batches.
        wait_for(
            "every server's write window to fill",
            lambda: all("(write window full)" in server.log() for server in servers),
            timeout=120,
        )
        processes.new_broker(port=broker.port)
        back = time.monotonic()
        before = dict(writer.acknowledged)

        # Reading tens of thousands of keys back from three servers takes Python's gRPC
        # client longer than the repair itself, so the clock stops when every tenth write of
        # the outage is on every server; then every single write is checked. (A lost batch
        # comes back in one transfer with every batch of that server since: a repair is
        # never partial, so the sample does not hide a slow part.)
        def held(server: KvsServer, writes: list[tuple[str, int]]) -> bool:
            replies = server.stub.GetAll((pb.KeyRequest(key=k) for k, _ in writes), timeout=60)
            return all(reply.ver == ver for reply, (_, ver) in zip(replies, writes, strict=True))

        def everywhere(writes: list[tuple[str, int]]) -> float | None:
            with ThreadPoolExecutor(len(servers)) as pool:
                found = list(pool.map(lambda server: held(server, writes), servers))
            return time.monotonic() if all(found) else None

        writes = list(before.items())
        repaired_at = wait_for(
            "every tenth write of the outage everywhere", lambda: everywhere(writes[::10]), timeout=60
        )
        print(f"repaired {repaired_at - back:.1f} s after the broker came back")
        assert missing(servers, before) == {server.name: 0 for server in servers}
        writer.wait_for(500)  # writes never stopped
        # A server that joins now has everything written before it started.
        written = len(writer.acknowledged)
        joiner = processes.server("s4", wait=False)
        # Three full states to join while the writes go on: 65-70 s for the whole test at a load
        # average of 8; the joiner alone took over 90 s at 11 to 27 (no bound here: the simulation's).
        joiner.wait_serving(timeout=240)
        snapshot = dict(list(writer.acknowledged.items())[:written])
    assert missing([joiner], snapshot) == {"s4": 0}


def test_a_joiner_right_after_a_broker_restart_serves_only_with_every_key(processes: Processes) -> None:
    broker = processes.broker
    s1, s2 = processes.cluster_of(2)
    list(s1.stub.PutAll(pb.KeyValueRequest(key=f"a{n:05}", val="v") for n in range(10_000)))
    list(s2.stub.PutAll(pb.KeyValueRequest(key=f"b{n:05}", val="v") for n in range(10_000)))
    wait_for("s1 to hold 20,000 keys", lambda: s1.status().keys == 20_000)
    broker.stop()
    time.sleep(3)  # the servers back off between reconnection attempts
    processes.new_broker(port=broker.port)  # no persistence: no retained presence is left
    joiner = processes.server("s3", wait=False)
    joiner.wait_serving()
    assert "caught up: 20000 keys" in joiner.log()
    assert joiner.stub.Get(pb.KeyRequest(key="b09999")).val == "v"
    assert joiner.stub.Del(pb.KeyRequest(key="a00000")).ver > 0
