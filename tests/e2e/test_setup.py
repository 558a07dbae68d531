"""Set-up from a fresh clone: any number of commands may start it at once, and an
interrupted set-up is completed by the next command (./compile.sh).

Each test copies the working tree as a clone would hold it (no .venv, no kvs/_gen) and
lets its scripts make their own .venv: a pip install, so these tests are slow.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from kvs._gen import kvs_pb2 as pb
from kvs.local.processes import LocalServer, Process, wait_for
from tests.e2e.conftest import Processes
from tests.e2e.harness import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

SETUP = 600.0  # seconds a first set-up may take (pip installs every package)


def fresh_clone(where: Path) -> Path:
    """The files `git clone` would give of this working tree (uncommitted changes included)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout  # fmt: skip
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():  # not a file deleted from the working tree
            (where / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, where / name)
    return where


def command(processes: Processes, clone: Path, name: str, *args: str) -> Process:
    """`clone/args[0] args[1:]`, stopped at the end of the test."""
    process = Process(name, [str(clone / args[0]), *args[1:]], processes.log_dir, cwd=clone)
    processes.started.append(process)
    process.start()
    return process


def server(processes: Processes, clone: Path, name: str) -> LocalServer:
    flags = ["--broker", processes.broker.address, "--cluster", processes.cluster, "--sync-interval", "1"]
    started = LocalServer(processes.log_dir, name, flags, command=[str(clone / "server.sh")], cwd=clone)
    processes.started.append(started)
    started.start()
    return started


def finished(process: Process) -> int:
    wait_for(f"{process.name} to finish", lambda: not process.running(), SETUP, every=0.2)
    code = process.stop()
    assert code is not None
    return code


def test_servers_a_client_and_the_admin_tool_started_at_once_on_a_fresh_clone_all_work(
    processes: Processes, tmp_path: Path
) -> None:
    clone = fresh_clone(tmp_path / "kvs")
    s1, s2 = server(processes, clone, "s1"), server(processes, clone, "s2")
    others = [
        command(processes, clone, "client", "client.sh", "-h"),
        command(processes, clone, "admin", "scripts/admin.sh", "-h"),
        command(processes, clone, "compile", "compile.sh"),
    ]
    for process in others:
        assert finished(process) == 0, process.log()
    s1.wait_serving(SETUP)
    s2.wait_serving(SETUP)

    put = command(
        processes, clone, "put", "client.sh", "--porta", str(s1.port), "put", "--chave", "k", "--valor", "v"
    )
    assert finished(put) == 0, put.log()
    wait_for("s2 to replicate", lambda: s2.stub.Get(pb.KeyRequest(key="k")).val == "v")
    logs = "".join(process.log() for process in [s1, s2, *others])
    assert "Traceback" not in logs, logs
    for step in ("creating .venv", "installing Python packages", "generating kvs/_gen"):
        assert logs.count(f"compile.sh: {step}") == 1, logs  # done once, by whichever ran first


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def pip_of(setup: Process, clone: Path) -> int | None:
    """The pip that compile.sh runs, once it has installed a first package; else None."""
    if not (clone / ".venv" / ".installing").exists():
        return None
    installed = [d.name for d in (clone / ".venv" / "lib").glob("python3*/site-packages/*.dist-info")]
    if not any(not name.startswith(("pip-", "setuptools-")) for name in installed):
        return None
    for child in children(setup.pid):
        with contextlib.suppress(OSError):
            if b"pip" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
    return None


def test_a_set_up_killed_during_pip_install_is_completed_by_the_next_commands(
    processes: Processes, tmp_path: Path
) -> None:
    clone = fresh_clone(tmp_path / "kvs")
    setup = command(processes, clone, "setup", "compile.sh")
    pip = wait_for("pip to install a first package", lambda: pip_of(setup, clone), SETUP, every=0.01)
    os.kill(pip, signal.SIGKILL)
    assert finished(setup) != 0
    assert not list((clone / ".venv").glob(".installed-*"))  # the set-up is not taken for done

    s1 = server(processes, clone, "s1")
    client = command(processes, clone, "client", "client.sh", "-h")
    assert finished(client) == 0, client.log()
    s1.wait_serving(SETUP)
    assert "compile.sh: completing an interrupted install" in s1.log() + client.log()
    python = str(clone / ".venv" / "bin" / "python")
    modules = "grpc, grpc_health, grpc_reflection, grpc_tools, google.protobuf, paho.mqtt, uvloop"
    subprocess.run([python, "-c", f"import {modules}"], check=True, timeout=60)
    subprocess.run([python, "-m", "pip", "check"], check=True, timeout=60, capture_output=True)
