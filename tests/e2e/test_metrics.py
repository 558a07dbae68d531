"""`./server.sh --metrics-port`: a scrape of a real server after a known sequence of calls."""

from __future__ import annotations

import socket
import subprocess

import grpc
import pytest

from kvs._gen import kvs_pb2 as pb
from kvs.local.processes import wait_for
from tests.e2e.conftest import Processes
from tests.e2e.harness import ROOT, KvsServer
from tests.scrape import scrape

KVS = "/project.KeyValueStore/"


def requests(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], method: str, code: str) -> float:
    return samples.get(("kvs_grpc_requests_total", (("code", code), ("method", KVS + method))), 0.0)


def test_a_scrape_counts_exactly_the_calls_made(processes: Processes) -> None:
    port = processes.port()
    server = processes.server("s1", ["--metrics-port", str(port)])
    before = scrape(port)
    assert requests(before, "Put", "OK") == 0

    for key in ("a", "b", "c"):
        server.stub.Put(pb.KeyValueRequest(key=key, val="v"))
    server.stub.Put(pb.KeyValueRequest(key="a", val="w"))
    with pytest.raises(grpc.RpcError) as refused:
        server.stub.Get(pb.KeyRequest(key=""))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    server.stub.Get(pb.KeyRequest(key="a"))
    server.stub.Del(pb.KeyRequest(key="b"))

    after = scrape(port)
    assert requests(after, "Put", "OK") == 4
    assert requests(after, "Get", "INVALID_ARGUMENT") == 1
    assert requests(after, "Get", "OK") == 1
    assert requests(after, "Del", "OK") == 1
    assert after["kvs_grpc_request_duration_seconds_count", (("method", KVS + "Put"),)] == 4
    assert after["kvs_grpc_request_duration_seconds_bucket", (("le", "+Inf"), ("method", KVS + "Put"))] == 4
    assert after["kvs_store_keys", ()] == 2  # a and c
    assert after["kvs_store_versions", ()] == 3  # a twice, c once
    assert after["kvs_store_tombstones", ()] == 1  # b
    assert after["kvs_replication_messages_dropped_total", (("reason", "malformed"),)] == 0


def test_metrics_are_off_by_default(processes: Processes) -> None:
    server = processes.server("s1")
    assert "metrics on" not in server.log()


def test_a_taken_metrics_port_is_one_line_and_exit_1(processes: Processes) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server: KvsServer = processes.server("s1", ["--metrics-port", str(port)], wait=False)
        wait_for("the server to exit", lambda: not server.running())
    assert server.stop() == 1
    assert f"cannot serve metrics on port {port}" in server.log()
    assert "Traceback" not in server.log()


def test_a_bad_metrics_port_is_a_usage_error() -> None:
    done = subprocess.run(
        [str(ROOT / "server.sh"), "--metrics-port", "70000"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--metrics-port must be between 0 and 65535" in done.stderr
