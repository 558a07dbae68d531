"""Faults: the broker goes away, messages go missing, garbage arrives, no broker at all."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path

from kvs._gen import kvs_pb2 as pb
from kvs._gen import replication_pb2 as rpb
from kvs.clock import now_ms
from kvs.local.processes import wait_for
from kvs.mqtt.broker import SOCKET_NAME, private_home
from kvs.replication.codec import Codec, Digest
from kvs.storage.store import BUCKETS, Fragment
from tests.e2e.conftest import Processes
from tests.e2e.harness import KvsServer, Writer, converged, publish_all, run_admin

BROKER_ERROR = "Falha ao se conectar com o broker. Verifique se o broker está sendo executado."


def assert_everywhere(servers: Sequence[KvsServer], acknowledged: dict[str, int]) -> None:
    for server in servers:
        for k, ver in acknowledged.items():
            got = server.stub.Get(pb.KeyRequest(key=k))
            assert (got.val, got.ver) == (k, ver), f"{server.name} lost {k}@{ver}: has {got}"


def test_a_broker_restart_loses_no_acknowledged_write(processes: Processes) -> None:
    broker = processes.broker
    servers = processes.cluster_of(2)
    with Writer(servers, "w") as writer:
        writer.wait_for(200)
        broker.stop()
        writer.wait_for(300)  # the servers keep answering while the broker is away
        processes.new_broker(port=broker.port)
        wait_for("both servers to reconnect", lambda: all(s.status().connected for s in servers))
        writer.wait_for(200)
    converged(servers, timeout=60)
    assert_everywhere(servers, writer.acknowledged)
    assert all("broker connection lost" in s.log() for s in servers)


def test_a_three_server_cluster_converges_after_the_broker_was_down_for_long(processes: Processes) -> None:
    broker = processes.broker
    servers = processes.cluster_of(3)
    broker.stop()
    acknowledged = {}
    for i in range(600):
        server = servers[i % 3]
        k = f"offline{i:04}"
        acknowledged[k] = server.stub.Put(pb.KeyValueRequest(key=k, val=k)).ver
        if i % 5 == 0:
            server.stub.Del(pb.KeyRequest(key=f"offline{i - 1:04}"))
            acknowledged.pop(f"offline{i - 1:04}", None)
    processes.new_broker(port=broker.port)
    converged(servers, timeout=60)
    assert_everywhere(servers, acknowledged)


def test_a_message_lost_on_the_way_is_repaired_by_anti_entropy(processes: Processes) -> None:
    servers = processes.cluster_of(2, sync_interval=0.5)
    s1, s2 = servers
    s1.stub.Put(pb.KeyValueRequest(key="everywhere", val="1"))
    # State that reaches s1 only, as if s2 had missed the message that carried it.
    ghost = Codec(processes.cluster, "ghost", processes.cluster_key(), epoch=1, clock=now_ms)  # sent now
    only_s1 = [Fragment("missed", 0, ((1234, "by s2"),)), Fragment("tomb", 99)]
    publish_all(
        processes.broker, [(f"{processes.cluster}/to/s1", p) for p in ghost.transfer(only_s1, to="s1")]
    )
    wait_for("s1 to hold it", lambda: s1.stub.Get(pb.KeyRequest(key="missed")).ver == 1234)
    dump = converged(servers, timeout=30)
    assert s2.stub.Get(pb.KeyRequest(key="missed")) == pb.KeyValueVersionReply(
        key="missed", val="by s2", ver=1234
    )
    assert rpb.Fragment(key="tomb", floor=99) in dump
    assert "repairing" in s1.log() + s2.log()


def garbage(cluster: str, key: bytes) -> list[tuple[str, bytes]]:
    """Hostile payloads on every topic kvs uses: junk, and well-formed messages without the key."""
    topics = [f"{cluster}/batch", f"{cluster}/digest", f"{cluster}/to/s1", f"{cluster}/peers/s1"]
    bad_payloads = [
        os.urandom(200),
        b"",
        b"\x00" * 9 * 1024 * 1024,
        b"{not: protobuf}",
        b"\x02" + os.urandom(99),
    ]
    forger = Codec(cluster, "evil", os.urandom(32), epoch=1)
    forged = [forger.presence(), forger.digest(Digest(tuple(range(BUCKETS)), request=1))]
    forged.append(forger.batch([Fragment("k", 0, ((1, "v"),))], 0))
    other_cluster = Codec("elsewhere", "evil", key, epoch=1)
    member = Codec(cluster, "s3", key, epoch=1)
    messages = [(t, p) for t in topics for p in bad_payloads + forged]
    messages += [(t, other_cluster.presence()) for t in topics]
    messages += [(f"{cluster}/batch", member.digest(Digest(tuple(range(BUCKETS)))))]  # the wrong kind
    messages += [(f"{cluster}/peers/s1", Codec(cluster, "s2", os.urandom(32), epoch=1).presence())]
    messages += [(f"{cluster}/peers/evil", member.presence())]  # a member's presence on another's topic
    return messages


def test_garbage_on_the_replication_topics_is_dropped_and_everything_keeps_working(
    processes: Processes,
) -> None:
    s1, s2 = processes.cluster_of(2)
    messages = garbage(processes.cluster, processes.cluster_key())
    publish_all(processes.broker, messages)
    written = s2.stub.Put(pb.KeyValueRequest(key="after", val="garbage"))
    expected = pb.KeyValueVersionReply(key="after", val="garbage", ver=written.ver)
    wait_for("s1 to replicate after the garbage", lambda: s1.stub.Get(pb.KeyRequest(key="after")) == expected)
    written = s1.stub.Put(pb.KeyValueRequest(key="back", val="too"))
    wait_for("s2 to replicate too", lambda: s2.stub.Get(pb.KeyRequest(key="back")).ver == written.ver)
    assert s1.running()
    assert s2.running()
    assert s1.stub.Get(pb.KeyRequest(key="k")).ver == 0  # nothing of the garbage was applied
    assert s1.status().peers == ["s2"]  # the forged presence was not believed
    # A log line for each reason, with a count, not one per message.
    lines = [line for line in s1.log().splitlines() if "dropped" in line]
    assert 4 <= len(lines) <= 10 < len(messages), lines
    assert any("bad authentication tag" in line for line in lines)
    assert "Traceback" not in s1.log() + s2.log()


def test_an_explicit_broker_that_cannot_be_reached_is_a_clear_error(processes: Processes) -> None:
    address = f"127.0.0.1:{processes.port()}"
    server = processes.server("s1", ["--broker", address], wait=False)
    wait_for("the server to give up", lambda: not server.running())
    assert server.stop() == 1
    log = server.log()
    assert BROKER_ERROR in log
    assert address in log
    assert "Traceback" not in log


def test_without_a_broker_the_servers_share_a_private_one_that_the_last_stops(processes: Processes) -> None:
    port = processes.port()
    env = {"KVS_BROKER": f"localhost:{port}"}
    s1 = processes.server("s1", env=env)
    assert "started a private mosquitto" in s1.log()
    s2 = processes.server("s2", env=env)
    assert "started a private mosquitto" not in s2.log()
    written = s1.stub.Put(pb.KeyValueRequest(key="k", val="v"))
    wait_for("s2 to replicate", lambda: s2.stub.Get(pb.KeyRequest(key="k")).ver == written.ver)
    assert s1.stop() == 0
    assert "leaving the private mosquitto" in s1.log()
    sock = private_home(port) / SOCKET_NAME
    assert answers(sock)
    assert s2.stop() == 0
    assert "stopped the private mosquitto" in s2.log()
    assert not answers(sock)


def test_admin_compare_tells_identical_replicas_from_different_ones(processes: Processes) -> None:
    s1, s2 = processes.cluster_of(2, sync_interval=600)  # no anti-entropy round during the test
    s1.stub.Put(pb.KeyValueRequest(key="shared", val="1"))
    converged([s1, s2])
    addresses = [f"127.0.0.1:{s1.port}", f"127.0.0.1:{s2.port}"]
    done = run_admin("compare", *addresses)
    assert (done.returncode, done.stdout) == (
        0,
        f"identical: 1 keys (tombstones included) on {', '.join(addresses)}\n",
    )
    ghost = Codec(processes.cluster, "ghost", processes.cluster_key(), epoch=1, clock=now_ms)  # sent now
    publish_all(
        processes.broker,
        [(f"{processes.cluster}/to/s1", p) for p in ghost.transfer([Fragment("only", 5)], to="s1")],
    )
    wait_for("s1 to hold the tombstone", lambda: len(s1.dump()) == 2)
    done = run_admin("compare", *addresses)
    assert done.returncode == 1
    assert done.stdout == f"{addresses[1]} differs from {addresses[0]} on 1 key(s), e.g. ['only']\n"


def answers(sock: Path) -> bool:
    """Whether something accepts connections on the Unix socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        return probe.connect_ex(str(sock)) == 0
