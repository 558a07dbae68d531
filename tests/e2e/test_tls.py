"""gRPC over TLS and mutual TLS with real processes (docs/contract.md, "Security"): certificates
made by trustme, `./server.sh --tls-cert/--tls-key[/--tls-client-ca]`, and
`./client.sh` and `scripts/admin.sh` with `--tls-ca[/--tls-cert/--tls-key]`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from kvs.local.processes import wait_for
from kvs.net.channel import open_channel
from tests.e2e.conftest import Certs, Processes, tls_server
from tests.e2e.harness import run_admin, run_client


def one_error_line(done: subprocess.CompletedProcess[str], start: str) -> str:
    assert done.returncode == 1, done
    assert done.stdout == ""
    assert done.stderr.startswith(start), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr


def test_tls_clients_are_served_and_plaintext_ones_refused(processes: Processes, certs: Certs) -> None:
    server = tls_server(processes, certs)
    assert "over TLS" in server.log()
    ca = ["--tls-ca", str(certs.ca)]
    written = server.client_json(*ca, "put", "--chave", "k", "--valor", "segredo")
    assert server.client_json(*ca, "get", "--chave", "k") == [
        {"key": "k", "val": "segredo", "ver": written[0]["ver"]}
    ]

    plaintext = server.client("get", "--chave", "k", check=False)
    line = one_error_line(plaintext, f"client.py: error: 127.0.0.1:{server.port} closed the connection")
    assert "does it speak TLS? (then pass --tls-ca)" in line
    with open_channel(f"127.0.0.1:{server.port}") as channel, pytest.raises(grpc.RpcError) as raised:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_that_does_not_trust_the_servers_ca_is_refused(processes: Processes, certs: Certs) -> None:
    server = tls_server(processes, certs)
    done = server.client("--tls-ca", str(certs.other_ca), "get", "--chave", "k", check=False)
    line = one_error_line(done, f"client.py: error: TLS handshake with 127.0.0.1:{server.port} failed")
    assert "not signed by the CA of --tls-ca" in line
    assert "CERTIFICATE_VERIFY_FAILED" in line


def test_mutual_tls_requires_a_client_certificate_signed_by_the_clients_ca(
    processes: Processes, certs: Certs
) -> None:
    server = tls_server(processes, certs, mutual=True)
    assert "over mutual TLS" in server.log()
    ca = ["--tls-ca", str(certs.ca)]
    mine = ["--tls-cert", str(certs.client_cert), "--tls-key", str(certs.client_key)]
    server.client(*ca, *mine, "put", "--chave", "k", "--valor", "v")
    assert server.client_json(*ca, *mine, "get", "--chave", "k")[0]["val"] == "v"

    without = server.client(*ca, "get", "--chave", "k", check=False)
    line = one_error_line(without, f"client.py: error: 127.0.0.1:{server.port} closed the TLS connection")
    assert "does it require a client certificate? (then pass --tls-cert and --tls-key)" in line
    theirs = ["--tls-cert", str(certs.other_cert), "--tls-key", str(certs.other_key)]
    stranger = server.client(*ca, *theirs, "get", "--chave", "k", check=False)
    one_error_line(stranger, f"client.py: error: 127.0.0.1:{server.port} closed the TLS connection")
    plaintext = server.client("get", "--chave", "k", check=False)
    one_error_line(plaintext, f"client.py: error: 127.0.0.1:{server.port} closed the connection")


def test_health_reflection_and_admin_share_the_secure_port(processes: Processes, certs: Certs) -> None:
    server = tls_server(processes, certs, mutual=True)
    assert server.health() == health_pb2.HealthCheckResponse.SERVING
    assert "project.KeyValueStore" in ProtoReflectionDescriptorDatabase(server.channel).get_services()
    address = f"127.0.0.1:{server.port}"
    flags = certs.client_flags()
    status = run_admin("status", address, *flags)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[1].split()[:3] == ["tls1", f"127.0.0.1:{server.port}", "SERVING"]
    refused = run_admin("status", address, "--tls-ca", str(certs.ca))
    one_error_line(refused, f"admin.sh: error: {address} closed the TLS connection")


def test_a_tls_client_to_a_plaintext_server_says_so(processes: Processes, certs: Certs) -> None:
    server = processes.server("plain")
    done = server.client("--tls-ca", str(certs.ca), "get", "--chave", "k", check=False)
    one_error_line(done, f"client.py: error: TLS handshake with 127.0.0.1:{server.port} failed: ")
    assert "the server does not speak TLS" in done.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--tls-ca", "/nonexistent/ca.pem"],
            "cannot read --tls-ca /nonexistent/ca.pem: No such file or directory",
        ),
        (["--tls-ca", "{garbage}"], "--tls-ca {garbage} is not a PEM CA certificate"),
        (
            ["--tls-ca", "{ca}", "--tls-cert", "{client_cert}", "--tls-key", "{other_key}"],
            "and --tls-key {other_key} are not a PEM certificate and its private key",
        ),
    ],
)
def test_unusable_tls_files_are_one_line_and_exit_1(
    certs: Certs, tmp_path: Path, flags: list[str], message: str
) -> None:
    names = {name: str(getattr(certs, name)) for name in Certs.__dataclass_fields__}
    names["garbage"] = str(tmp_path / "garbage.pem")
    Path(names["garbage"]).write_text("not a certificate\n")
    done = run_client(*[flag.format(**names) for flag in flags], "get", "--chave", "k", check=False)
    assert message.format(**names) in one_error_line(done, "client.py: error: ")


def test_a_certificate_without_its_key_is_a_usage_error(certs: Certs) -> None:
    done = run_client("--tls-cert", str(certs.client_cert), "get", "--chave", "k", check=False)
    assert done.returncode == 2
    assert "--tls-cert and --tls-key go together" in done.stderr


@pytest.mark.parametrize(
    ("flags", "status", "message"),
    [
        (["--tls-cert", "{server_cert}"], 2, "--tls-cert and --tls-key go together"),
        (
            ["--tls-cert", "/nonexistent.pem", "--tls-key", "{server_key}"],
            1,
            "cannot read --tls-cert /nonexistent.pem",
        ),
        (
            ["--tls-cert", "{server_cert}", "--tls-key", "{client_key}"],
            1,
            "are not a PEM certificate and its private key",
        ),
        (
            ["--tls-cert", "{server_cert}", "--tls-key", "{server_key}", "--tls-client-ca", "{server_key}"],
            1,
            "--tls-client-ca {server_key} is not a PEM CA certificate",
        ),
    ],
)
def test_a_server_with_unusable_tls_files_says_so_in_one_line(
    processes: Processes, certs: Certs, flags: list[str], status: int, message: str
) -> None:
    names = {name: str(getattr(certs, name)) for name in Certs.__dataclass_fields__}
    server = processes.server("bad", [flag.format(**names) for flag in flags], wait=False)
    wait_for("the server to exit", lambda: not server.running())
    assert server.stop() == status
    log = server.log()
    assert message.format(**names) in log
    assert "Traceback" not in log
    if status == 1:
        assert log.startswith("server.py: error: ")
        assert log.count("\n") == 1
