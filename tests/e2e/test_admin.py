"""`scripts/admin.sh status` over a real two-server cluster."""

from __future__ import annotations

import json

from kvs._gen import kvs_pb2 as pb
from kvs.clock import now_ms
from kvs.local.processes import wait_for
from kvs.replication.codec import Codec
from kvs.storage.store import Fragment
from tests.e2e.conftest import Processes, addressed
from tests.e2e.harness import converged, publish_all, run_admin


def rows(stdout: str) -> dict[str, list[str]]:
    """The table's rows by id, after checking its header."""
    header, *lines = stdout.splitlines()
    assert header.split() == [
        "id",
        "address",
        "health",
        "keys",
        "quota",
        "digest",
        "agrees",
        "peers",
        "last_repair",
        "broker",
    ]
    return {line.split()[0]: line.split() for line in lines}


def test_status_from_one_address_finds_the_peer_and_shows_a_row_each(processes: Processes) -> None:
    s1, s2 = addressed(processes, 2)
    written = [s1.stub.Put(pb.KeyValueRequest(key=key, val="v")) for key in ("a", "b", "c")]
    # s2 deletes the "b" it holds: a Del that came before the Put's replication would delete nothing.
    wait_for("s2 to hold b", lambda: s2.stub.Get(pb.KeyRequest(key="b")).ver == written[1].ver)
    assert s2.stub.Del(pb.KeyRequest(key="b")).ver == written[1].ver
    converged([s1, s2])

    done = run_admin("status", f"127.0.0.1:{s1.port}")
    assert done.returncode == 0, done.stderr
    table = rows(done.stdout)
    assert sorted(table) == sorted([s1.name, s2.name])
    digest, broker = table[s1.name][5], processes.broker.address
    for server in (s1, s2):
        address = f"127.0.0.1:{server.port}"
        assert table[server.name] == [
            server.name,
            address,
            "SERVING",
            "2",
            "0%",
            digest,
            "all",
            "1",
            "never",
            broker,
        ]


def test_status_tells_a_differing_digest_and_a_server_that_does_not_answer(processes: Processes) -> None:
    s1, _ = addressed(processes, 2)
    lone = processes.server("lone", ["--cluster", "elsewhere"])  # another cluster: other data
    lone.stub.Put(pb.KeyValueRequest(key="only-here", val="v"))
    silent = f"127.0.0.1:{processes.port()}"

    done = run_admin("status", f"127.0.0.1:{s1.port}", f"127.0.0.1:{lone.port}", silent)
    assert done.returncode == 1  # one server could not be asked
    table = rows(done.stdout)
    assert table[s1.name][2:7] == ["SERVING", "0", "0%", table[s1.name][5], "none"]
    assert table["lone"][2:7] == ["SERVING", "1", "0%", table["lone"][5], "none"]
    assert table[s1.name][5] != table["lone"][5]
    assert table[silent][:6] == [silent, silent, "cannot", "reach", "a", "kvs"]  # and why, in its own words
    assert table[silent][-7:] == ["-"] * 7


def test_status_json_and_ids_that_are_not_addresses(processes: Processes) -> None:
    s1, _ = processes.cluster_of(2)  # ids s1 and s2: not addresses
    done = run_admin("status", "--json", f"127.0.0.1:{s1.port}")
    assert done.returncode == 0, done.stderr
    first, second = (json.loads(line) for line in done.stdout.splitlines())
    assert first["id"] == "s1"
    assert first["health"] == "SERVING"
    assert first["peers"] == ["s2"]
    assert first["since_repair_s"] is None
    assert second == {"id": "s2", "address": None, "health": "id is not an address"}


def test_status_shows_the_seconds_since_a_repair_on_both_sides_of_it(processes: Processes) -> None:
    s1, s2 = addressed(processes, 2, sync_interval=0.5)
    # State that reaches s1 only, as if s2 had missed the message: anti-entropy repairs s2.
    ghost = Codec(processes.cluster, "ghost", processes.cluster_key(), epoch=1, clock=now_ms)  # sent now
    inbox = f"{processes.cluster}/to/{s1.name}"
    publish_all(
        processes.broker,
        [(inbox, p) for p in ghost.transfer([Fragment("missed", 0, ((1234, "x"),))], to=s1.name)],
    )
    wait_for("s1 to hold it", lambda: s1.stub.Get(pb.KeyRequest(key="missed")).ver == 1234)
    converged([s1, s2])

    done = run_admin("status", f"127.0.0.1:{s2.port}")
    assert done.returncode == 0, done.stderr
    table = rows(done.stdout)
    for server in (s1, s2):
        since = table[server.name][8]
        assert since.endswith("s"), table  # not "never"
        assert 0 <= int(since.removesuffix("s")) < 60
