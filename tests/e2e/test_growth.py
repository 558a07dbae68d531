"""Growth over time with real servers: the quota, retention, freed space (docs/operations.md)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import grpc
import pytest

from kvs._gen import kvs_pb2 as pb
from kvs.local.processes import wait_for
from kvs.storage.datadir import STORE_FILE
from tests.e2e.conftest import Processes
from tests.e2e.harness import ROOT, KvsServer, converged, run_admin
from tests.scrape import scrape


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--quota-bytes", "10XB"], "--quota-bytes"),
        (["--quota-bytes", "0"], "--quota-bytes"),
        (["--retention", "10"], "--retention"),
        (["--retention=-5s"], "--retention"),
        (["--retention", "1w"], "--retention"),
        (["--keep-versions", "0"], "--keep-versions"),
        (["--keep-versions", "two"], "--keep-versions"),
    ],
)
def test_a_malformed_growth_flag_is_one_line_naming_it_and_exit_2(flags: list[str], named: str) -> None:
    done = subprocess.run(
        [str(ROOT / "server.sh"), *flags], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert named in done.stderr


def put(server: KvsServer, key: str, val: str) -> grpc.StatusCode:
    try:
        server.stub.Put(pb.KeyValueRequest(key=key, val=val))
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_past_the_quota_writes_are_refused_the_rest_works_and_writes_come_back(
    processes: Processes, tmp_path: Path
) -> None:
    metrics = processes.port()
    full = processes.server("s1", ["--quota-bytes", "2KB", "--metrics-port", str(metrics)])
    peer = processes.server("s2")
    value = "v" * 100  # 111 bytes a version with its 3-byte key
    codes = [put(full, f"k{i:02}", value) for i in range(25)]
    assert codes[:18] == [grpc.StatusCode.OK] * 18  # 18 * 111 = 1998 bytes: within 2 KB
    assert codes[19:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 6  # the 19th went over
    with pytest.raises(grpc.RpcError) as refused:
        list(full.stub.PutAll(iter([pb.KeyValueRequest(key="k00", val="w")])))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "over its quota" in str(refused.value.details())
    assert full.stub.Get(pb.KeyRequest(key="k00", ver=0)).val == value  # nothing of the refused went in

    # The CLI: one line that says what to do, exit 1.
    done = full.client("put", "--chave", "k99", "--valor", "x", check=False)
    assert done.returncode != 0, done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "RESOURCE_EXHAUSTED" in done.stderr
    assert "delete or trim keys" in done.stderr
    # Visible: the log, the metric, admin.sh status.
    assert "over the quota" in full.log()
    assert scrape(metrics)["kvs_store_over_quota", ()] == 1
    status = run_admin("status", "--json", f"127.0.0.1:{full.port}").stdout.splitlines()[0]
    assert '"over_quota": true' in status
    assert '"quota_bytes": 2000' in status
    assert "OVER(" in run_admin("status", f"127.0.0.1:{full.port}").stdout

    # Reads, Trim and replication from a peer go on.
    assert (
        len(list(full.stub.GetRange(pb.KeyRange(fr=pb.KeyRequest(key="k"), to=pb.KeyRequest(key="l"))))) == 19
    )
    assert full.stub.Trim(pb.KeyRequest(key="k01")).val == value
    peer.stub.Put(pb.KeyValueRequest(key="from-peer", val="w" * 500))
    wait_for("the peer's write", lambda: full.stub.Get(pb.KeyRequest(key="from-peer")).val == "w" * 500)

    # Deletes bring it under: writes resume by themselves within 10 s.
    deleted = list(full.stub.DelRange(pb.KeyRange(fr=pb.KeyRequest(key="k"), to=pb.KeyRequest(key="l"))))
    assert len(deleted) == 19
    peer.stub.Del(pb.KeyRequest(key="from-peer"))
    started = time.monotonic()
    wait_for("writes to resume", lambda: put(full, "again", "v") == grpc.StatusCode.OK, timeout=10)
    assert time.monotonic() - started < 10
    assert "back under the quota" in full.log()
    assert scrape(metrics)["kvs_store_over_quota", ()] == 0
    converged([full, peer])


def test_retention_on_two_servers_converges_with_no_repair(processes: Processes, tmp_path: Path) -> None:
    # The second server's clock runs 3 s ahead (a module that shifts time.time, loaded at start).
    shift = tmp_path / "shift"
    shift.mkdir()
    (shift / "sitecustomize.py").write_text(
        "import time\n"
        "_time, _time_ns = time.time, time.time_ns\n"
        "time.time = lambda: _time() + 3.0\n"
        "time.time_ns = lambda: _time_ns() + 3_000_000_000\n"
    )
    ports = [processes.port(), processes.port()]
    flags = ["--keep-versions", "3", "--retention", "4s"]
    s1 = processes.server("s1", [*flags, "--metrics-port", str(ports[0])], wait=False, sync_interval=0.5)
    s2 = processes.server(
        "s2",
        [*flags, "--metrics-port", str(ports[1])],
        wait=False,
        sync_interval=0.5,
        env={"PYTHONPATH": str(shift)},
    )
    s1.wait_serving()
    s2.wait_serving()
    first = s1.stub.Put(pb.KeyValueRequest(key="k0", val="first")).ver
    deadline = time.monotonic() + 8
    i = 0
    while time.monotonic() < deadline:  # both write the same keys, each at its own clock
        for server in (s1, s2):
            server.stub.Put(pb.KeyValueRequest(key=f"k{i % 20}", val=f"{server.name}-{i}"))
        i += 1
        time.sleep(0.005)

    def most_versions() -> int:
        return max(len(fragment.versions) for fragment in s1.dump())

    assert most_versions() <= 3 + 1  # --keep-versions 3: at most one more, in flight
    # Once nobody writes, every version but each key's newest is older than 4 s within 4 + 15 s.
    wait_for("retention to keep only the newest", lambda: most_versions() == 1, timeout=4 + 15)
    dump = converged([s1, s2])
    assert len(dump) == 20
    # A read at a version that retention dropped: the key exists, nothing is left at or before it.
    assert s1.stub.Get(pb.KeyRequest(key="k0", ver=first)) == pb.KeyValueVersionReply(key="k0", ver=first)
    samples = [scrape(port) for port in ports]
    assert [s["kvs_replication_repairs_started_total", ()] for s in samples] == [0, 0]
    assert sum(s["kvs_retention_versions_dropped_total", ()] for s in samples) > 0
    assert s1.status().last_repair_ms == s2.status().last_repair_ms == 0


def test_deleted_data_gives_its_space_back_to_the_file_system(processes: Processes, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = processes.server("s1", ["--data-dir", str(data)])
    value = "v" * 4000
    for start in range(0, 6000, 500):
        list(
            server.stub.PutAll(
                pb.KeyValueRequest(key=f"k{i:05}", val=value) for i in range(start, start + 500)
            )
        )
    file = data / STORE_FILE
    wait_for("the file to hold them", lambda: file.stat().st_size > 16_000_000, timeout=60)
    full = file.stat().st_size
    list(server.stub.DelRange(pb.KeyRange(fr=pb.KeyRequest(key="k"), to=pb.KeyRequest(key="l"))))
    # It keeps VACUUM_FROM free pages (4 MiB) for reuse and gives the rest back.
    wait_for("the file to shrink", lambda: file.stat().st_size < full / 3, timeout=60)
    print(f"file: {full} bytes with 6000 values of 4000 bytes, {file.stat().st_size} once deleted")
