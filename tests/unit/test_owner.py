"""Who owns a local socket (kvs.mqtt.owner), read from /proc/net/tcp and SO_PEERCRED."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from kvs.mqtt import owner


def test_a_listener_and_the_other_end_of_a_connection_to_it_are_this_account() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        found = owner.listeners(port)
        assert [(str(f.address), f.port, f.uid) for f in found] == [("127.0.0.1", port, os.getuid())]
        assert found[0].connect_to == "127.0.0.1"
        with socket.create_connection(("127.0.0.1", port)) as client:
            assert owner.peer_uid(client) == os.getuid()
            owner.check_peer(client)  # ours: trusted


def test_an_ipv6_wildcard_listener_is_found_and_reached_on_the_loopback() -> None:
    with socket.socket(socket.AF_INET6) as server:
        server.bind(("::", 0))
        server.listen()
        port = server.getsockname()[1]
        [found] = owner.listeners(port)
        assert (found.connect_to, found.uid) == ("::1", os.getuid())
        with socket.create_connection(("127.0.0.1", port)) as client:  # v4-mapped on a dual-stack socket
            assert owner.peer_uid(client) == os.getuid()


def test_the_peer_of_a_unix_socket_is_its_process_account(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
            assert owner.peer_uid(client) == os.getuid()


def test_which_accounts_are_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getuid", lambda: 1500)
    assert owner.trusted(1500)  # this account
    assert owner.trusted(0)  # root
    assert owner.trusted(105)  # a system account
    assert not owner.trusted(1501)  # another ordinary account
    assert not owner.trusted(65534)  # nobody runs no system broker
