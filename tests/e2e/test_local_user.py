"""What a second, ordinary account on the same machine can do (docs/security.md, "The local user").

Each test makes a temporary account (tests/accounts.py; skipped unless run as root)
and attacks as that account: it squats the private broker's port before the first
server starts. Real ./server.sh and mosquitto processes.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from kvs._gen import kvs_pb2 as pb
from kvs.local.processes import config_home, wait_for
from kvs.mqtt.broker import mosquitto_binary
from kvs.storage.datadir import STORE_FILE
from tests.accounts import Account
from tests.e2e.conftest import Processes
from tests.e2e.harness import assert_refused, run_server

# The account cannot use the test's virtual environment (under root's directories).
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin:/usr/local/bin") or "python3"

# Accepts connections on 127.0.0.1:PORT and writes, for each, every byte it received (in hex).
RECORDER = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen()
print("listening", flush=True)
while True:
    connection, _ = server.accept()
    connection.settimeout(1)
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except OSError:
        pass
    connection.close()
    print(received.hex(), flush=True)
"""


def squat(account: Account, port: int) -> subprocess.Popen[bytes]:
    """A listener of `account` on 127.0.0.1:port that records what it receives."""
    recorder = account.popen(
        [SYSTEM_PYTHON, "-c", RECORDER, str(port)],
        stdout=subprocess.PIPE,
        cwd="/",
    )
    assert recorder.stdout is not None
    assert recorder.stdout.readline() == b"listening\n"
    return recorder


def stop(process: subprocess.Popen[bytes]) -> bytes:
    """Stops `process` (by its pid) and returns what it wrote."""
    os.kill(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=10)
    return output


def test_a_listener_of_another_account_on_the_default_port_gets_no_password_and_no_value(
    processes: Processes, other_account: Account
) -> None:
    port = processes.port()
    recorder = squat(other_account, port)
    try:
        env = {"KVS_BROKER": f"localhost:{port}"}
        s1 = processes.server("s1", env=env, wait=False)
        s2 = processes.server("s2", env=env, wait=False)
        wait_for("s1 to serve or exit", lambda: s1.health() == 1 or not s1.running(), timeout=30)
        assert s1.running(), s1.log()
        s2.wait_serving()
        written = s1.stub.Put(pb.KeyValueRequest(key="secret-key", val="secret-value"))
        wait_for("s2 to replicate", lambda: s2.stub.Get(pb.KeyRequest(key="secret-key")).ver == written.ver)
        assert f"port {port} is held by {other_account.name}" in s1.log() + s2.log()
    finally:
        received = stop(recorder)
    password = (config_home(processes.log_dir) / "kvs" / f"broker-{port}.password").read_bytes().strip()
    assert password.hex().encode() not in received
    assert b"secret-value".hex().encode() not in received
    assert received == b"", "the squatter was connected to"


def test_a_mosquitto_of_another_account_on_the_default_port_sees_no_value(
    processes: Processes, other_account: Account, tmp_path: Path
) -> None:
    """The squatter runs a real broker that lets anyone in, and subscribes to everything."""
    port = processes.port()
    home = Path(os.environ.get("TMPDIR", "/tmp")) / f"squat-{other_account.name}"
    home.mkdir(mode=0o700)
    os.chown(home, other_account.uid, other_account.gid)
    try:
        config = home / "mosquitto.conf"
        config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        os.chown(config, other_account.uid, other_account.gid)
        broker = other_account.popen(
            [str(mosquitto_binary()), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
        )
        try:
            wait_for("the squatter's mosquitto", lambda: listening_as(port, other_account.uid))
            seen: list[bytes] = []
            sniffer = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
            sniffer.on_message = lambda _c, _u, message: seen.append(message.topic.encode() + message.payload)
            sniffer.connect("127.0.0.1", port)
            sniffer.subscribe("#")
            sniffer.loop_start()
            try:
                env = {"KVS_BROKER": f"localhost:{port}"}
                s1 = processes.server("s1", env=env, wait=False)
                wait_for("s1 to serve or exit", lambda: s1.health() == 1 or not s1.running(), timeout=30)
                assert s1.running(), s1.log()
                s1.stub.Put(pb.KeyValueRequest(key="k", val="sniffed-value"))
                s1.stub.Put(pb.KeyValueRequest(key="k2", val="sniffed-value"))
                assert s1.stop() == 0
            finally:
                sniffer.disconnect()
                sniffer.loop_stop()
        finally:
            stop(broker)
    finally:
        subprocess.run(["rm", "-rf", str(home)], check=True)
    assert not any(b"sniffed-value" in message for message in seen)
    assert not any(b"/peers/" in message for message in seen)  # not even a presence


def listening_as(port: int, uid: int) -> bool:
    """Whether a socket of `uid` listens on 127.0.0.1:port (as /proc/net/tcp shows it)."""
    wanted = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A" and int(fields[7]) == uid:
            return True
    return False


def test_a_broker_of_this_account_or_a_system_one_on_the_default_port_is_used_without_the_password(
    processes: Processes,
) -> None:
    """As the course's set-up expects: a system mosquitto on localhost:1883 is the broker."""
    broker = processes.new_broker()  # run as root, mosquitto becomes the user mosquitto: a system service
    env = {"KVS_BROKER": f"localhost:{broker.port}"}
    s1 = processes.server("s1", env=env)
    s2 = processes.server("s2", env=env)
    assert "started a private mosquitto" not in s1.log() + s2.log()
    assert f"broker connected (127.0.0.1:{broker.port})" in s1.log()
    written = s1.stub.Put(pb.KeyValueRequest(key="k", val="v"))
    wait_for("s2 to replicate", lambda: s2.stub.Get(pb.KeyRequest(key="k")).ver == written.ver)
    assert "New client connected" in broker.log()
    assert "u'kvs'" not in broker.log()  # connected without the private broker's user


# The data directory and the secret files ------------------------------------------------


def shared_parent() -> Path:
    """A directory under /tmp that every account may enter (tmp_path's parents are root's, 0700)."""
    parent = Path(tempfile.mkdtemp(prefix="kvs-shared-"))
    parent.chmod(0o755)
    return parent


def test_a_new_data_dir_is_0700_its_files_0600_and_another_account_reads_nothing(
    processes: Processes, other_account: Account
) -> None:
    parent = shared_parent()
    try:
        data = parent / "data"
        server = processes.server("s1", ["--data-dir", str(data)])
        server.stub.Put(pb.KeyValueRequest(key="k", val="private-value"))
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data.iterdir()}
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert STORE_FILE in modes
        assert set(modes.values()) == {0o600}, modes
        for argv in (
            ["ls", str(data)],
            ["cat", str(data / STORE_FILE)],
            ["cat", str(data / f"{STORE_FILE}-wal")],
        ):
            done = other_account.run(argv)
            assert done.returncode != 0, (argv, done)
            assert "Permission denied" in done.stderr, (argv, done)
        assert server.stop() == 0
    finally:
        shutil.rmtree(parent)


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o707, 0o777, 0o701])
def test_an_existing_dir_other_accounts_may_use_is_refused_with_how_to_fix_it(
    tmp_path: Path, mode: int
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(mode)
    assert_refused(run_server(data, "c"), f"mode {mode:04o}", f"chmod 700 {data}")
    assert list(data.iterdir()) == []  # not even the lock file
    data.chmod(0o700)
    assert_starts(data)


def test_a_dir_of_another_account_is_refused(tmp_path: Path, other_account: Account) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    os.chown(data, other_account.uid, other_account.gid)
    assert_refused(run_server(data, "c"), f"belongs to {other_account.name}")
    assert list(data.iterdir()) == []


@pytest.mark.parametrize("name", ["lock", STORE_FILE, f"{STORE_FILE}-wal", f"{STORE_FILE}-shm"])
def test_a_symbolic_link_planted_in_the_dir_is_refused_and_its_target_left_whole(
    tmp_path: Path, name: str
) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("somebody's precious file\n")
    (data / name).symlink_to(victim)
    assert_refused(run_server(data, "c"), f"{data / name} is a symbolic link")
    assert victim.read_text() == "somebody's precious file\n"
    assert sorted(p.name for p in data.iterdir()) == [name]


def test_a_key_or_password_file_of_another_account_is_refused(
    processes: Processes, other_account: Account, tmp_path: Path
) -> None:
    key = tmp_path / "cluster.key"
    key.write_bytes(bytes(32))
    key.chmod(0o600)
    os.chown(key, other_account.uid, other_account.gid)
    server = processes.server("s1", ["--cluster-key-file", str(key)], wait=False)
    wait_for("s1 to exit", lambda: not server.running())
    assert server.stop() == 1
    assert server.log().strip().splitlines() == [
        f"server.py: cluster key file {key} belongs to {other_account.name}, not to this account"
        f" ({pwd.getpwuid(os.getuid()).pw_name}): run chown {pwd.getpwuid(os.getuid()).pw_name} {key}"
    ]
    password = tmp_path / "broker.password"
    password.write_text("secret\n")
    password.chmod(0o600)
    os.chown(password, other_account.uid, other_account.gid)
    flags = ["--broker-user", "shop", "--broker-password-file", str(password)]
    server = processes.server("s2", flags, wait=False)
    wait_for("s2 to exit", lambda: not server.running())
    assert server.stop() == 1
    [line] = server.log().strip().splitlines()
    assert line.startswith(f"server.py: broker password file {password} belongs to {other_account.name}")


def assert_starts(data: Path) -> None:
    """A server with `data` gets past its checks (it then stops: there is no broker)."""
    done = run_server(data, "c")
    assert "Falha ao se conectar com o broker" in done.stderr, done.stderr


def test_a_squatter_who_takes_the_port_after_the_system_broker_stops_gets_nothing_on_reconnection(
    processes: Processes, other_account: Account
) -> None:
    broker = processes.new_broker()  # run as root, mosquitto becomes the user mosquitto: a system service
    env = {"KVS_BROKER": f"localhost:{broker.port}"}
    s1 = processes.server("s1", env=env)
    broker.stop()
    wait_for("s1 to see the broker gone", lambda: "broker connection lost" in s1.log())
    s1.stub.Put(pb.KeyValueRequest(key="k", val="written-while-away"))  # queued for the broker
    recorder = squat(other_account, broker.port)
    try:
        # s1 dials again every second or so; the squatter's recorder writes what each dial sent.
        with contextlib.suppress(AssertionError):
            wait_for(
                "s1 to refuse the squatter", lambda: "not this account or a system" in s1.log(), timeout=8
            )
        time.sleep(1.5)  # the recorder writes a connection's bytes once it is closed or quiet for 1 s
    finally:
        received = stop(recorder)
    assert set(received.splitlines()) <= {b""}, received  # connections, but not one byte on them
    assert "not this account or a system service" in s1.log()
    again = processes.new_broker(port=broker.port)
    wait_for("s1 to reconnect", lambda: s1.log().count("broker connected") >= 2)
    assert again.running()
