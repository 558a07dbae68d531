"""Recorded traffic published again later, across restarts and departures (docs/security.md, "Replays
and clocks"): each as the attack was first tried by hand, with the broker's access and no key."""

from __future__ import annotations

import re
import time

from kvs._gen import kvs_pb2 as pb
from kvs.replication.codec import Codec, Presence
from kvs.replication.sync import SKEW
from tests.e2e.conftest import Processes
from tests.e2e.harness import KvsServer, Tap, converged, publish_all, tap


def fill(server: KvsServer, keys: int, prefix: str = "k") -> None:
    list(server.stub.PutAll(pb.KeyValueRequest(key=f"{prefix}{n:06}", val="v" * 100) for n in range(keys)))


def presences(processes: Processes, listener: Tap, name: str, up: bool = True) -> list[bytes]:
    """The presences of `name` the tap saw (its clock-stamped "up"s, or its "down"s), oldest first."""
    reader = Codec(processes.cluster, "tap", processes.cluster_key())
    topic = f"{processes.cluster}/peers/{name}"
    return [p for p in listener.payloads(topic) if reader.decode(p).body == Presence(up)]


def caught_up(server: KvsServer) -> tuple[int, float]:
    """The keys held and the seconds taken, as its log said when it began to serve."""
    found = re.search(r"caught up: (\d+) keys, ([\d.]+) s after start", server.log())
    assert found, server.log()
    return int(found[1]), float(found[2])


def test_an_earlier_run_s_presence_replayed_does_not_make_a_joiner_serve_early(processes: Processes) -> None:
    """Found black-box: it served with 3,568 of 30,000 keys (the real run's answer was taken for
    nobody's after its first part)."""
    with tap(processes.broker, processes.cluster) as listener:
        [s1] = processes.cluster_of(1)
        earlier = presences(processes, listener, "s1")[-1]
    s1.stop()
    s1.start()
    s1.wait_serving()
    fill(s1, 20_000)
    publish_all(processes.broker, [(f"{processes.cluster}/peers/s1", earlier)], retain=True)
    joiner = processes.server("s2")
    last = joiner.stub.Get(pb.KeyRequest(key="k019999"))  # sent the moment it says SERVING
    assert last.val == "v" * 100
    assert caught_up(joiner)[0] == 20_000


def test_join_requests_replayed_after_the_receiver_restarted_are_not_answered(processes: Processes) -> None:
    """Found black-box: a new run remembers no counters; 2 KB of requests brought 2 MB of transfers."""
    s1, s2 = processes.cluster_of(2)
    fill(s1, 3_000)
    converged([s1, s2])
    with tap(processes.broker, processes.cluster) as listener:
        joiner = processes.server("s3")
        requests = [
            p for t, p, _ in listener.messages if t == f"{processes.cluster}/digest" and len(p) > 2000
        ]
        time.sleep(SKEW)  # older than two clocks may differ by, once s2 subscribes again
        s2.stop()
        s2.start()
        s2.wait_serving()
        converged([s1, s2, joiner])
        mark = len(listener.messages)
        publish_all(processes.broker, [(f"{processes.cluster}/digest", r) for r in requests] * 10)
        time.sleep(2)
        assert requests
        assert listener.bytes_on(f"{processes.cluster}/to/", since=mark) == 0


def test_a_departed_server_s_presence_replayed_holds_a_joiner_back_one_interval_at_most(
    processes: Processes,
) -> None:
    """Found black-box: 36 s with a one-second sync interval (183 s with the default)."""
    with tap(processes.broker, processes.cluster) as listener:
        s1, s2 = processes.cluster_of(2)
        fill(s1, 1_000)
        converged([s1, s2])
        s2.stop()
        up = presences(processes, listener, "s2")[-1]
    publish_all(processes.broker, [(f"{processes.cluster}/peers/s2", up)], retain=True)
    joiner = processes.server("s3", wait=False)  # sync interval 1 s
    joiner.wait_serving(timeout=15)
    keys, took = caught_up(joiner)
    assert keys == 1_000
    assert "waiting for the state of ['s1', 's2']" in joiner.log()  # the replay was taken, then let go
    assert "no longer waiting for s2" in joiner.log(), f"served after {took} s"
