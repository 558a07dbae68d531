"""Client against an in-process server on port 0: typed results, not-found forms, one error type."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kvs import Client, KvsClientError
from kvs.client.api import KeyValue, Status, Written
from kvs.local.processes import reserve_port
from tests.integration.conftest import Running, start_server

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def client(kvs: Running) -> Iterator[Client]:
    with kvs_client(kvs) as opened:
        yield opened


def kvs_client(running: Running, **settings: Any) -> Client:
    return Client(f"127.0.0.1:{running.port}", **settings)


def test_put_then_get_newest_and_at_a_version(kvs: Running, client: Client) -> None:
    first = client.put("k", "one")
    assert first == Written("k", 1000, "", 0)
    assert first.created
    assert first.previous == KeyValue("k", "", 0, Status.NO_KEY)
    kvs.clock.now = 2000
    second = client.put("k", "two")
    assert (second.created, second.previous) == (False, KeyValue("k", "one", 1000, Status.FOUND))
    assert client.get("k") == KeyValue("k", "two", 2000, Status.FOUND)
    assert client.get("k", at=1999) == KeyValue("k", "one", 1000, Status.FOUND)
    assert client.get("k").found


def test_the_two_not_found_forms_are_told_apart(client: Client) -> None:
    client.put("k", "v")  # version 1000
    missing = client.get("nope")
    assert (missing.found, missing.status, missing.ver) == (False, Status.NO_KEY, 0)
    too_early = client.get("k", at=999)
    assert (too_early.found, too_early.status) == (False, Status.NOT_AT_VERSION)
    assert (too_early.key, too_early.val, too_early.ver) == ("k", "", 999)  # the raw reply
    assert client.get("nope", at=999).status is Status.NO_KEY
    assert client.get("k", at=0).found  # a blank version reads the newest


def test_ranges_and_lists_of_keys(kvs: Running, client: Client) -> None:
    written = client.put_all({"a": "1", "b": "2", "c": "3"})
    assert [(w.key, w.ver, w.created) for w in written] == [
        ("a", 1000, True),
        ("b", 1000, True),
        ("c", 1000, True),
    ]
    kvs.clock.now = 5000
    client.put_all([("b", "2b"), ("d", "4")])
    assert [(r.key, r.val) for r in client.get_range("a", "c")] == [("a", "1"), ("b", "2b"), ("c", "3")]
    assert [(r.key, r.val, r.status) for r in client.get_range("b", "d", at=4999)] == [
        ("b", "2", Status.FOUND),
        ("c", "3", Status.FOUND),
        ("d", "", Status.NOT_AT_VERSION),
    ]
    got = client.get_all(["d", "zz", "a", "d"], at=1000)
    assert [(r.key, r.val, r.ver, r.status) for r in got] == [
        ("d", "", 1000, Status.NOT_AT_VERSION),
        ("zz", "", 0, Status.NO_KEY),
        ("a", "1", 1000, Status.FOUND),
        ("d", "", 1000, Status.NOT_AT_VERSION),
    ]
    assert [r.val for r in client.get_all(["b", "d"])] == ["2b", "4"]


def test_deletes_and_trim_say_what_they_removed_or_kept(kvs: Running, client: Client) -> None:
    client.put_all([("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")])
    kvs.clock.now = 3000
    client.put("a", "1b")
    assert client.trim("a") == KeyValue("a", "1b", 3000, Status.FOUND)
    assert client.get("a", at=2999).status is Status.NOT_AT_VERSION
    assert client.delete("a") == KeyValue("a", "1b", 3000, Status.FOUND)
    assert client.delete("a") == KeyValue("a", "", 0, Status.NO_KEY)
    assert [r.key for r in client.delete_range("b", "c")] == ["b", "c"]
    assert [r.status for r in client.delete_all(["d", "b"])] == [Status.FOUND, Status.NO_KEY]
    assert client.get_range("a", "z") == []
    assert client.trim("gone").status is Status.NO_KEY


def test_results_are_frozen(client: Client) -> None:
    result = client.put("k", "v")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.ver = 1  # type: ignore[misc]


def test_a_refusal_is_one_exception_with_the_status_code_and_message(client: Client) -> None:
    with pytest.raises(KvsClientError) as raised:
        client.put("", "v")
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details == "key must not be empty"
    assert str(raised.value) == "INVALID_ARGUMENT: key must not be empty"
    with pytest.raises(KvsClientError) as reversed_range:
        client.get_range("z", "a")
    assert reversed_range.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "range is reversed" in reversed_range.value.details


def test_a_stream_that_fails_part_way_keeps_what_was_applied(client: Client) -> None:
    with pytest.raises(KvsClientError) as raised:
        client.put_all([("a", "1"), ("", "x"), ("c", "3")])
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(w.key, w.created) for w in raised.value.partial] == [("a", True)]  # type: ignore[union-attr]
    assert client.get("a").found
    assert client.get("c").status is Status.NO_KEY


def test_an_unreachable_server_is_the_same_exception() -> None:
    with reserve_port() as port:  # nothing listens on it
        target = f"127.0.0.1:{port.port}"
        with Client(target, timeout=5) as client, pytest.raises(KvsClientError) as raised:
            client.get("k")
        assert raised.value.code == grpc.StatusCode.UNAVAILABLE
        assert str(raised.value).startswith(f"cannot reach a kvs server at {target}: is it running?")


def test_the_deadline_is_a_parameter_of_the_client_and_of_each_call(loop: asyncio.AbstractEventLoop) -> None:
    running = start_server(loop, serving=False)  # holds every call until it serves
    try:
        with kvs_client(running, timeout=0.2) as client:
            with pytest.raises(KvsClientError) as raised:
                client.get("k")
            assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "no answer from" in str(raised.value)
            with pytest.raises(KvsClientError) as per_call:
                client.put_all({"k": "v"}, timeout=0.1)
            assert per_call.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        running.channel.close()
        running.run(running.server.stop(0))


def test_the_receive_limit_is_a_parameter(kvs: Running, client: Client) -> None:
    client.put("big", "x" * 2000)
    with kvs_client(kvs, options=[("grpc.max_receive_message_length", 1000)]) as small:
        with pytest.raises(KvsClientError) as raised:
            small.get("big")
        assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert small.get("big", at=1).status is Status.NOT_AT_VERSION
    assert client.get("big").val == "x" * 2000


def test_importing_the_store_does_not_load_grpc_and_kvs_client_loads_lazily() -> None:
    program = (
        "import sys, kvs.storage.store, kvs.replication.codec\n"
        "assert 'grpc' not in sys.modules, 'the store or the codec imported grpc'\n"
        "import kvs\n"
        "assert 'grpc' not in sys.modules, 'import kvs imported grpc'\n"
        "print(kvs.Client.__name__, kvs.KvsClientError.__name__, kvs.ClientTls.__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, check=False, timeout=60
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "Client KvsClientError ClientTls\n", "")
    with pytest.raises(ImportError):
        from kvs import Nothing  # noqa: F401, PLC0415
