"""scripts/cluster.sh: a private broker and N servers on this machine, all stopped on Ctrl-C."""

from __future__ import annotations

import re
import signal
import socket
from pathlib import Path

from kvs import Client
from kvs.local.processes import Process, port_open, wait_for
from tests.e2e.harness import ROOT

LINE = re.compile(r"^(broker|s\d+) 127\.0\.0\.1:(\d+)", re.MULTILINE)


def cluster(tmp_path: Path, *args: str) -> Process:
    process = Process("cluster", [str(ROOT / "scripts" / "cluster.sh"), *args], tmp_path, cwd=ROOT)
    process.start()
    return process


def test_cluster_sh_serves_n_replicating_servers_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    process = cluster(tmp_path, "2", "--porta", "0", "--log-dir", str(tmp_path / "logs"))
    try:
        wait_for(
            "the addresses", lambda: "Ctrl-C stops them all" in process.log() or not process.running(), 60
        )
        ports = dict(LINE.findall(process.log()))
        assert set(ports) == {"broker", "s1", "s2"}, process.log()
        with Client(f"127.0.0.1:{ports['s1']}") as s1, Client(f"127.0.0.1:{ports['s2']}") as s2:
            written = s1.put("k", "v")
            wait_for("s2 to replicate", lambda: s2.get("k").ver == written.ver)
        assert process.stop(signal.SIGINT) == 0  # Ctrl-C
        assert process.log().endswith("stopped\n")
        assert not any(port_open(int(port)) for port in ports.values())
        assert (tmp_path / "logs" / "s1.log").exists()  # --log-dir is kept
    finally:
        process.close()


def test_a_server_that_cannot_start_stops_the_others_and_shows_its_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        process = cluster(tmp_path, "1", "--porta", str(taken.getsockname()[1]))
        try:
            wait_for("cluster.sh to give up", lambda: not process.running(), 60)
            assert process.stop() == 1
            log = process.log()
            assert "----- log of s1 -----" in log
            assert "is the port in use?" in log
        finally:
            process.close()
