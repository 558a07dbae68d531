"""TLS settings for gRPC: PEM files read and checked once, at start, with one clear error.

gRPC itself only finds out that a certificate file is garbage when a
connection is attempted, and then says so in a log line of its C core and a
vague status. Python's own `ssl` module parses the same PEM files, so every
file is loaded into an `ssl.SSLContext` first: a missing, unreadable or
malformed file, or a key that does not match its certificate, is a `TlsError`
naming the flag and the file before any connection exists.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc


class TlsError(ValueError):
    """A TLS file that cannot be used; the message is one line naming the flag and the file."""


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise TlsError(f"cannot read {flag} {path}: {error.strerror or error}") from None


def _no_password() -> bytes:
    raise TlsError("encrypted private keys are not supported")


def _check_pair(cert: str, key: str, cert_flag: str, key_flag: str) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as error:
        raise TlsError(
            f"{cert_flag} {cert} and {key_flag} {key} are not a PEM certificate and its private key "
            f"({error.reason or error})"
        ) from None


def _check_ca(path: str, flag: str) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError as error:
        raise TlsError(f"{flag} {path} is not a PEM CA certificate ({error.reason or error})") from None


@dataclass(frozen=True)
class ClientTls:
    """What a client trusts and, for mutual TLS, shows.

    `root_ca` None trusts the system's CAs. `cert` and `key` (PEM, both or
    neither) are the client's certificate chain and key for a server that
    requires one (`--tls-client-ca`).
    """

    root_ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise TlsError("a client certificate needs its key, and a key its certificate")

    @classmethod
    def from_files(cls, ca: str | None, cert: str | None = None, key: str | None = None) -> ClientTls:
        """Reads and checks the client's flags `--tls-ca`, `--tls-cert`, `--tls-key`."""
        if (cert is None) != (key is None):
            raise TlsError("--tls-cert and --tls-key go together")
        root = None
        if ca is not None:
            root = _read(ca, "--tls-ca")
            _check_ca(ca, "--tls-ca")
        chain = private = None
        if cert is not None and key is not None:
            chain, private = _read(cert, "--tls-cert"), _read(key, "--tls-key")
            _check_pair(cert, key, "--tls-cert", "--tls-key")
        return cls(root, chain, private)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_ca, self.key, self.cert)


@dataclass(frozen=True)
class ServerTls:
    """The server's certificate chain and key; with `client_ca`, clients must show a certificate it signed."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(cls, cert: str, key: str, client_ca: str | None = None) -> ServerTls:
        """Reads and checks the server's flags `--tls-cert`, `--tls-key`, `--tls-client-ca`."""
        chain, private = _read(cert, "--tls-cert"), _read(key, "--tls-key")
        _check_pair(cert, key, "--tls-cert", "--tls-key")
        clients = None
        if client_ca is not None:
            clients = _read(client_ca, "--tls-client-ca")
            _check_ca(client_ca, "--tls-client-ca")
        return cls(chain, private, clients)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )
