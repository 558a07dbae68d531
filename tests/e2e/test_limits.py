"""The size limits end to end: what a real server accepts at the exact edges, the CLI reads back
(docs/contract.md, "The calls" and guarantee 8; kvs/limits.py has the arithmetic)."""

from __future__ import annotations

import json

import grpc
import pytest

from kvs.client.api import Client, KvsClientError, Status
from kvs.limits import MAX_REQUEST_BYTES
from tests.e2e.conftest import Processes
from tests.e2e.harness import KvsServer
from tests.sizes import request_of_size


@pytest.fixture
def server(processes: Processes) -> KvsServer:
    return processes.server("s1")


def test_the_largest_key_and_value_are_accepted_and_the_cli_reads_them(server: KvsServer) -> None:
    by_key, by_value = request_of_size(MAX_REQUEST_BYTES, "key"), request_of_size(MAX_REQUEST_BYTES, "value")
    with Client(f"127.0.0.1:{server.port}", timeout=30) as client:
        assert client.put(by_key.key, by_key.val).created
        written = client.put(by_value.key, by_value.val)
        assert written.created

    # Command lines cannot hold 4 MiB; the CLI reads the key through a range, and the value by key.
    [ranged] = server.client_json("getrange", "--chave", "k", "kz")
    assert (ranged["key"], ranged["val"]) == (by_key.key, "")
    [got] = server.client_json("get", "--chave", "v")
    assert (got["val"], got["ver"]) == (by_value.val, written.ver)

    # Replacing the value: the reply carries the old 4 MiB value, and the CLI prints it.
    replaced = server.client("put", "--chave", "v", "--valor", "novo").stdout
    assert replaced.startswith('"v" written at version ')
    assert f'replaced "{by_value.val}", version {written.ver} (' in replaced
    assert replaced.count("\n") == 1
    [old] = server.client_json("get", "--chave", "v", "--versao", str(written.ver))
    assert old["val"] == by_value.val


@pytest.mark.parametrize("where", ["key", "value"])
def test_one_byte_more_is_refused_and_changes_nothing(server: KvsServer, where: str) -> None:
    request = request_of_size(MAX_REQUEST_BYTES + 1, where)
    unlimited = [("grpc.max_send_message_length", -1)]  # so that the server's own limit refuses it
    with Client(f"127.0.0.1:{server.port}", options=unlimited, timeout=30) as client:
        with pytest.raises(KvsClientError) as raised:
            client.put(request.key, request.val)
        assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert client.get("v").status is Status.NO_KEY
    assert server.client("getrange", "--chave", "a", "z").stdout == ""
    assert json.loads(server.client("--json", "get", "--chave", "v").stdout)["ver"] == 0
