"""One function opens every client channel (kvs/net/channel.py), and TLS files are checked before use."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from kvs.limits import MAX_REPLY_BYTES, MAX_REQUEST_BYTES
from kvs.net.channel import channel_options
from kvs.net.tls import ClientTls, ServerTls, TlsError

ROOT = Path(__file__).resolve().parents[2]
OPENS_A_CHANNEL = re.compile(r"\b(insecure_channel|secure_channel)\(")


def test_only_kvs_channel_opens_grpc_channels() -> None:
    sources = [*ROOT.glob("kvs/**/*.py"), *ROOT.glob("scripts/*.py"), *ROOT.glob("tests/**/*.py")]
    assert len(sources) > 20
    openers = sorted(
        str(path.relative_to(ROOT))
        for path in sources
        if path.name != "test_channel.py" and OPENS_A_CHANNEL.search(path.read_text())
    )
    assert openers == ["kvs/net/channel.py"]


def test_channels_have_the_limits_and_options_win_over_them() -> None:
    assert dict(channel_options()) == {
        "grpc.max_receive_message_length": MAX_REPLY_BYTES,
        "grpc.max_send_message_length": MAX_REQUEST_BYTES,
    }
    options = dict(channel_options([("grpc.max_send_message_length", -1), ("grpc.enable_retries", 0)]))
    assert options["grpc.max_send_message_length"] == -1
    assert options["grpc.max_receive_message_length"] == MAX_REPLY_BYTES
    assert options["grpc.enable_retries"] == 0


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def pem(folder: Path, name: str, blob: trustme.Blob) -> str:
    path = folder / name
    blob.write_to_path(path)
    return str(path)


def test_good_files_load(ca: trustme.CA, tmp_path: Path) -> None:
    cert = ca.issue_cert("localhost")
    ca_path = pem(tmp_path, "ca.pem", ca.cert_pem)
    cert_path, key_path = (
        pem(tmp_path, "c.pem", cert.cert_chain_pems[0]),
        pem(tmp_path, "k.pem", cert.private_key_pem),
    )
    client = ClientTls.from_files(ca_path, cert_path, key_path)
    assert (client.root_ca, client.cert, client.key) == (
        ca.cert_pem.bytes(),
        cert.cert_chain_pems[0].bytes(),
        cert.private_key_pem.bytes(),
    )
    assert ClientTls.from_files(ca_path) == ClientTls(ca.cert_pem.bytes())
    server = ServerTls.from_files(cert_path, key_path, ca_path)
    assert server.client_ca == ca.cert_pem.bytes()
    assert server.credentials() is not None
    assert client.credentials() is not None


def test_bad_files_are_one_line_naming_the_flag_and_the_file(ca: trustme.CA, tmp_path: Path) -> None:
    cert, other = ca.issue_cert("localhost"), ca.issue_cert("other")
    cert_path = pem(tmp_path, "c.pem", cert.cert_chain_pems[0])
    wrong_key = pem(tmp_path, "other.key", other.private_key_pem)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    cases: list[tuple[Callable[[], object], str]] = [
        (
            lambda: ClientTls.from_files(str(tmp_path / "none.pem")),
            f"cannot read --tls-ca {tmp_path}/none.pem: ",
        ),
        (lambda: ClientTls.from_files(str(garbage)), f"--tls-ca {garbage} is not a PEM CA certificate"),
        (lambda: ClientTls.from_files(None, cert_path), "--tls-cert and --tls-key go together"),
        (
            lambda: ServerTls.from_files(cert_path, wrong_key),
            f"--tls-key {wrong_key} are not a PEM certificate",
        ),
        (
            lambda: ServerTls.from_files(cert_path, str(garbage)),
            "are not a PEM certificate and its private key",
        ),
    ]
    for load, message in cases:
        with pytest.raises(TlsError) as raised:
            load()
        assert message in str(raised.value)
        assert "\n" not in str(raised.value)
    with pytest.raises(TlsError):
        ClientTls(cert=b"x")
