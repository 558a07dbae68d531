"""Security around the broker (docs/contract.md, "Security"): the cluster key file, broker credentials, the
private broker's password and ACL, MQTT over TLS. Real mosquitto, real ./server.sh processes."""

from __future__ import annotations

import contextlib
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import trustme
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from kvs._gen import kvs_pb2 as pb
from kvs.local.processes import BrokerTls, LocalBroker, config_home, port_open, wait_for
from kvs.mqtt.broker import SOCKET_NAME, USER, BrokerAuth, configure, private_home
from tests.e2e.conftest import Processes
from tests.e2e.harness import KvsServer, converged

BROKER_ERROR = "Falha ao se conectar com o broker. Verifique se o broker está sendo executado."
NOT_AUTHORIZED = 135  # MQTT 5 CONNACK reason code


def write_secret(path: Path, content: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(content)
    path.chmod(mode)
    return path


def exit_lines(server: KvsServer) -> tuple[int | None, list[str]]:
    """Waits for `server` to give up; its exit status and the lines it wrote that are not INFO logs."""
    wait_for(f"{server.name} to exit", lambda: not server.running())
    status = server.stop()
    lines = [line for line in server.log().splitlines() if " INFO " not in line]
    assert "Traceback" not in server.log()
    return status, lines


ANONYMOUS = BrokerAuth()


Target = int | Path
"""A broker's loopback TCP port, or the private broker's Unix socket."""


def mqtt_client(target: Target) -> mqtt.Client:
    version, protocol = CallbackAPIVersion.VERSION2, MQTTProtocolVersion.MQTTv5
    if isinstance(target, Path):
        return mqtt.Client(version, protocol=protocol, transport="unix")
    return mqtt.Client(version, protocol=protocol)


def mqtt_connect(client: mqtt.Client, target: Target) -> None:
    if isinstance(target, Path):
        client.connect(str(target))
    else:
        client.connect("127.0.0.1", target)


def connack(target: Target, auth: BrokerAuth = ANONYMOUS) -> ReasonCode:
    """What the broker answers to a plain paho client's CONNECT with these credentials."""
    client = mqtt_client(target)
    configure(client, auth)
    answers: list[ReasonCode] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: answers.append(reason)
    mqtt_connect(client, target)
    try:
        wait_for("a CONNACK", lambda: client.loop(0.05) is not None and bool(answers), timeout=10)
    finally:
        client.disconnect()
    return answers[0]


def mqtt_packet(kind: int, body: bytes) -> bytes:
    assert len(body) < 128  # one byte of remaining length
    return bytes([kind, len(body)]) + body


def mqtt_string(text: str) -> bytes:
    return struct.pack("!H", len(text)) + text.encode()


def anonymous_session(target: Target, then: bytes) -> bytes:
    """Sends an anonymous MQTT 3.1.1 CONNECT and, without waiting for its answer, `then`;
    returns every byte the broker sends until it closes the connection.

    A broker that hangs up with `then` unread resets the connection; what it sent
    before stays readable (Linux reads the receive queue before the error).
    """
    connect = mqtt_packet(0x10, mqtt_string("MQTT") + bytes([4, 0x02, 0, 60]) + mqtt_string("intruder"))
    received = b""
    if isinstance(target, Path):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(str(target))
    else:
        sock = socket.create_connection(("127.0.0.1", target), timeout=10)
    with sock:
        sock.sendall(connect + then)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(4096):
                received += chunk
    return received


# The cluster key file ------------------------------------------------------------------


def test_a_key_file_readable_by_others_stops_the_server_with_one_line(
    processes: Processes, tmp_path: Path
) -> None:
    key = write_secret(tmp_path / "cluster.key", bytes(32), 0o644)
    server = processes.server("s1", ["--cluster-key-file", str(key)], wait=False)
    assert exit_lines(server) == (
        1,
        [f"server.py: cluster key file {key} is open to other users (mode 0644): run chmod 600 {key}"],
    )


def test_the_default_key_file_is_made_0600_and_refused_once_others_may_read_it(processes: Processes) -> None:
    s1 = processes.server("s1")
    key = config_home(processes.log_dir) / "kvs" / f"{processes.cluster}.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(key.read_bytes()) == 32
    assert s1.stop() == 0
    key.chmod(0o640)
    status, lines = exit_lines(processes.server("s2", wait=False))
    assert (status, lines) == (1, [f"server.py: cluster key file {key} is open to other users "
                                   f"(mode 0640): run chmod 600 {key}"])  # fmt: skip


def test_a_missing_or_short_key_file_is_refused(processes: Processes, tmp_path: Path) -> None:
    missing = tmp_path / "missing.key"
    server = processes.server("s1", ["--cluster-key-file", str(missing)], wait=False)
    assert exit_lines(server) == (1, [f"server.py: cluster key file {missing} does not exist"])
    short = write_secret(tmp_path / "short.key", b"k" * 16)
    server = processes.server("s2", ["--cluster-key-file", str(short)], wait=False)
    status, [line] = exit_lines(server)
    assert status == 1
    assert line.startswith(f"server.py: cluster key file {short} holds 16 bytes, not 32")


# Broker credentials --------------------------------------------------------------------


def test_servers_with_the_broker_password_replicate_and_a_wrong_one_is_one_line(
    processes: Processes, tmp_path: Path
) -> None:
    broker = processes.new_broker(users={"shop": "right password"})
    password = write_secret(tmp_path / "broker.password", b"right password\n")
    flags = ["--broker", broker.address, "--broker-user", "shop"]
    s1 = processes.server("s1", [*flags, "--broker-password-file", str(password)])
    s2 = processes.server("s2", flags, env={"KVS_BROKER_PASSWORD": "right password"})
    written = s1.stub.Put(pb.KeyValueRequest(key="k", val="v"))
    wait_for("s2 to replicate", lambda: s2.stub.Get(pb.KeyRequest(key="k")).ver == written.ver)

    wrong = processes.server("s3", flags, env={"KVS_BROKER_PASSWORD": "wrong"}, wait=False)
    refused = (
        f"the broker refused this server ({broker.address}: Not authorized):"
        " check --broker-user and its password"
    )
    assert exit_lines(wrong) == (1, [refused])
    # The first of a list refuses: said as a refusal, at once (the next is not tried).
    brokers = f"{broker.address},127.0.0.1:{processes.port()}"
    anonymous = processes.server("s4", ["--broker", brokers], wait=False)
    assert exit_lines(anonymous) == (1, [refused])
    converged([s1, s2])


def test_a_password_file_readable_by_others_is_refused(processes: Processes, tmp_path: Path) -> None:
    password = write_secret(tmp_path / "broker.password", b"secret\n", 0o644)
    server = processes.server(
        "s1", ["--broker-user", "shop", "--broker-password-file", str(password)], wait=False
    )
    assert exit_lines(server) == (
        1,
        [f"server.py: broker password file {password} is open to other users (mode 0644): "
         f"run chmod 600 {password}"],
    )  # fmt: skip


def test_a_broker_ca_file_that_is_not_a_certificate_is_one_line(processes: Processes, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    server = processes.server("s1", ["--broker-tls-ca", str(missing)], wait=False)
    assert exit_lines(server) == (1, [f"server.py: --broker-tls-ca {missing}: No such file or directory"])
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    server = processes.server("s2", ["--broker-tls-ca", str(garbage)], wait=False)
    status, [line] = exit_lines(server)
    assert status == 1
    assert line.startswith(f"server.py: --broker-tls-ca {garbage}: [X509")


# The private broker ----------------------------------------------------------------------


def test_the_private_broker_lets_in_only_servers_that_hold_its_password(processes: Processes) -> None:
    port = processes.port()
    env = {"KVS_BROKER": f"localhost:{port}"}
    s1 = processes.server("s1", env=env)
    assert "started a private mosquitto" in s1.log()
    s2 = processes.server("s2", env=env)
    written = s1.stub.Put(pb.KeyValueRequest(key="k", val="v"))
    wait_for("s2 to replicate", lambda: s2.stub.Get(pb.KeyRequest(key="k")).ver == written.ver)

    password_file = config_home(processes.log_dir) / "kvs" / f"broker-{port}.password"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    password = password_file.read_text()
    assert not port_open(port)  # the private broker has no TCP port: only its Unix socket
    home = private_home(port)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    sock = home / SOCKET_NAME
    assert connack(sock).value == NOT_AUTHORIZED
    assert connack(sock, BrokerAuth(USER, "wrong")).value == NOT_AUTHORIZED
    assert connack(sock, BrokerAuth(USER)).value == NOT_AUTHORIZED
    assert connack(sock, BrokerAuth("intruder", password)).value == NOT_AUTHORIZED
    assert not connack(sock, BrokerAuth(USER, password)).is_failure  # the one way in

    # Whatever an anonymous client sends right after its CONNECT is not acted on: no
    # SUBACK, no message, only the refusal (MQTT 3.1.1 return code 5) and the end.
    subscribe_all = mqtt_packet(0x82, b"\x00\x01" + mqtt_string("#") + b"\x00")
    assert anonymous_session(sock, subscribe_all) == b"\x20\x02\x00\x05"
    assert_anonymous_publish_is_not_delivered(sock, password, f"{processes.cluster}/batch")

    # A server with another config directory has another password: refused, in one line.
    elsewhere = processes.log_dir / "elsewhere"
    stranger = processes.server("s3", env={**env, "XDG_CONFIG_HOME": str(elsewhere)}, wait=False)
    assert exit_lines(stranger) == (
        1,
        [f"the broker refused this server (unix:{sock}: Not authorized): it is not this user's "
         f"private broker, or {elsewhere}/kvs/broker-{port}.password changed"],
    )  # fmt: skip
    assert s2.stub.Get(pb.KeyRequest(key="k")).ver == written.ver  # the others go on


def assert_anonymous_publish_is_not_delivered(target: Target, password: str, topic: str) -> None:
    watcher = mqtt_client(target)
    configure(watcher, BrokerAuth(USER, password))
    seen: list[bytes] = []
    watcher.on_message = lambda _c, _u, message: seen.append(bytes(message.payload))
    mqtt_connect(watcher, target)
    watcher.loop_start()
    try:
        watcher.subscribe(topic, qos=1)
        # Once a message of the watcher's own is seen, the watcher is subscribed.
        wait_for("the watcher", lambda: watcher.publish(topic, b"ready", qos=1) and b"ready" in seen)
        publish = mqtt_packet(0x30, mqtt_string(topic) + b"forged")
        assert anonymous_session(target, publish) == b"\x20\x02\x00\x05"
        # The broker handles one connection's packets in order, and the forged one came first.
        watcher.publish(topic, b"control", qos=1).wait_for_publish(10)
        wait_for("the control message", lambda: b"control" in seen)
        assert b"forged" not in seen
    finally:
        watcher.disconnect()
        watcher.loop_stop()


# MQTT over TLS -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate that signed the broker's
    other_ca: Path  # a CA that did not
    broker: BrokerTls


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca, other = trustme.CA(), trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    (tmp_path / "pki").mkdir()
    files = {name: tmp_path / "pki" / name for name in ("ca.pem", "other-ca.pem", "broker.pem", "broker.key")}
    ca.cert_pem.write_to_path(str(files["ca.pem"]))
    other.cert_pem.write_to_path(str(files["other-ca.pem"]))
    for blob in leaf.cert_chain_pems:
        blob.write_to_path(str(files["broker.pem"]), append=True)
    files["broker.key"].touch(mode=0o600)
    leaf.private_key_pem.write_to_path(str(files["broker.key"]))
    return Pki(files["ca.pem"], files["other-ca.pem"], BrokerTls(files["broker.pem"], files["broker.key"]))


@pytest.fixture
def tls_broker(processes: Processes, pki: Pki) -> LocalBroker:
    return processes.new_broker(users={"shop": "tls password"}, tls=pki.broker)


def test_servers_replicate_over_tls_and_without_the_right_ca_fail_in_one_line(
    processes: Processes, pki: Pki, tls_broker: LocalBroker
) -> None:
    flags = ["--broker", tls_broker.address, "--broker-user", "shop"]
    env = {"KVS_BROKER_PASSWORD": "tls password"}
    s1 = processes.server("s1", [*flags, "--broker-tls-ca", str(pki.ca)], env=env)
    s2 = processes.server("s2", [*flags, "--broker-tls-ca", str(pki.ca)], env=env)
    # Enough traffic for several MQTT packets to share one TLS record (kvs.mqtt reads them all).
    keys = [f"k{i:04}" for i in range(2000)]
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        list(s1.stub.PutAll(pb.KeyValueRequest(key=k, val=k) for k in chunk))
    wait_for("s2 to replicate", lambda: s2.status().keys == len(keys))
    converged([s1, s2])
    assert "Traceback" not in s1.log() + s2.log()  # kvs.mqtt reads TLS sockets without error

    wrong_ca = processes.server("s3", [*flags, "--broker-tls-ca", str(pki.other_ca)], env=env, wait=False)
    status, [line] = exit_lines(wrong_ca)
    assert status == 1
    assert line.startswith(f"{BROKER_ERROR} ({tls_broker.address}: ")
    assert "CERTIFICATE_VERIFY_FAILED" in line
    plaintext = processes.server("s4", flags, env=env, wait=False)
    status, [line] = exit_lines(plaintext)
    assert status == 1
    assert line.startswith(f"{BROKER_ERROR} ({tls_broker.address}: ")
    assert line.endswith(": no answer to CONNECT)")  # the TLS listener hung up on a plaintext CONNECT


def test_a_plain_client_cannot_use_the_tls_broker_and_a_verified_one_can(
    pki: Pki, tls_broker: LocalBroker
) -> None:
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        connack(tls_broker.port, BrokerAuth("shop", "tls password", pki.other_ca))
    assert connack(tls_broker.port, BrokerAuth("shop", "wrong", pki.ca)).value == NOT_AUTHORIZED
    assert not connack(tls_broker.port, BrokerAuth("shop", "tls password", pki.ca)).is_failure
    # A plaintext CONNECT gets no CONNACK: the broker wants a TLS handshake, and hangs up.
    assert not anonymous_session(tls_broker.port, b"").startswith(b"\x20")
