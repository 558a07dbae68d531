"""kvs.Client's one-line explanations of gRPC failures, from the details gRPC really gives."""

from __future__ import annotations

import grpc
import pytest

from kvs.client.api import KvsClientError
from kvs.net.tls import ClientTls

TARGET = "127.0.0.1:40000"
LAST = "failed to connect to all addresses; last error: "
VERIFY = "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:"
CA, MUTUAL = ClientTls(b"ca"), ClientTls(b"ca", b"cert", b"key")


@pytest.mark.parametrize(
    ("details", "tls", "line"),
    [
        (
            f"{LAST}UNAVAILABLE: ipv4:{TARGET}: Connection refused",
            None,
            f"cannot reach a kvs server at {TARGET}: is it running? ({LAST}UNAVAILABLE: ipv4:{TARGET}: "
            "Connection refused)",
        ),
        (
            f"{LAST}UNAVAILABLE: ipv4:{TARGET}: Socket closed",
            None,
            f"{TARGET} closed the connection: does it speak TLS? (then pass --tls-ca)",
        ),
        (
            f"{LAST}UNAVAILABLE: ipv4:{TARGET}: Socket closed",
            CA,
            f"{TARGET} closed the TLS connection: does it require a client certificate? "
            "(then pass --tls-cert and --tls-key)",
        ),
        (
            f"{LAST}UNAVAILABLE: ipv4:{TARGET}: Socket closed",
            MUTUAL,
            f"{TARGET} closed the TLS connection: does it trust this client certificate?",
        ),
        (
            f"{LAST}UNKNOWN: ipv4:{TARGET}: {VERIFY}OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: "
            "unable to get local issuer certificate: OK",
            CA,
            f"TLS handshake with {TARGET} failed: its certificate is not signed by the CA of --tls-ca "
            "(CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate)",
        ),
        (
            f"{LAST}UNKNOWN: ipv4:{TARGET}: Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: "
            "error:100000f7:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER: Invalid certificate "
            "verification context: OK",
            CA,
            f"TLS handshake with {TARGET} failed: the server does not speak TLS (connect without --tls-ca)",
        ),
        (
            f"{LAST}UNKNOWN: ipv4:{TARGET}: Custom verification check failed with error: UNAUTHENTICATED: "
            "Hostname Verification Check failed.",
            CA,
            f"TLS handshake with {TARGET} failed: its certificate does not name the host dialled "
            "(make it for every name and address clients use)",
        ),
    ],
)
def test_unavailable_says_what_to_check(details: str, tls: ClientTls | None, line: str) -> None:
    error = KvsClientError(grpc.StatusCode.UNAVAILABLE, details, TARGET, tls)
    assert (str(error), error.code, error.details) == (line, grpc.StatusCode.UNAVAILABLE, details)


def test_other_codes_are_the_code_and_the_servers_message() -> None:
    refused = KvsClientError(grpc.StatusCode.INVALID_ARGUMENT, "key must not be empty", TARGET)
    assert str(refused) == "INVALID_ARGUMENT: key must not be empty"
    late = KvsClientError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", TARGET)
    assert str(late) == f"no answer from {TARGET} in time (is the server still catching up?)"
