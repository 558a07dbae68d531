"""Ports for local processes: a reserved port is handed out to nobody else until released."""

from __future__ import annotations

import socket

from kvs.local.processes import reserve_port


def any_port() -> int:
    """What the kernel hands to the next process that binds port 0."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_a_reserved_port_is_never_handed_out_again_until_released() -> None:
    # A port that was only looked up and closed (the harness's old free_port) came back
    # within ~30,000 binds in every try: a broker and a server of one test once got the same.
    with reserve_port() as reserved:
        assert all(any_port() != reserved.port for _ in range(200_000))


def test_a_server_binds_and_listens_on_its_reserved_port_as_mosquitto_and_grpc_do() -> None:
    with reserve_port() as reserved, socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", reserved.port))
        server.listen()
        with socket.create_connection(("127.0.0.1", reserved.port), timeout=5):
            pass
