"""Bounded memory per stream, and requests that do not decode, against a real server (SPEC guarantee 8)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import grpc
import pytest

from kvs._gen import kvs_pb2 as pb
from kvs._gen import kvs_pb2_grpc as pb_grpc
from kvs.net.channel import open_channel
from tests.e2e.conftest import Processes

KEYS = 200_000
STREAMS = 20


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_unread_get_range_streams_hold_bounded_server_memory(processes: Processes) -> None:
    server = processes.server("s1")
    stub = server.stub
    for part in range(4):  # a few big PutAll streams
        keys = (f"k{i:07}" for i in range(part, KEYS, 4))
        assert (
            sum(1 for _ in stub.PutAll((pb.KeyValueRequest(key=k, val="v" * 20) for k in keys), timeout=60))
            > 0
        )
    assert server.status().keys == KEYS
    before = rss_mb(server.pid)
    peak = Peak(server.pid)

    # A connection of its own, whose streams are never read.
    channel = open_channel(f"127.0.0.1:{server.port}", options=[("grpc.use_local_subchannel_pool", 1)])
    failed: grpc.RpcError | None = None
    with channel:
        unread = pb_grpc.KeyValueStoreStub(channel)
        span = pb.KeyRange(fr=pb.KeyRequest(key="k"), to=pb.KeyRequest(key="l"))
        streams = [unread.GetRange(span, timeout=120) for _ in range(STREAMS)]
        try:
            # One reply from each, to know the server is at work on all of them (main
            # built each whole range before its first reply); then nothing is read.
            for stream in streams:
                assert next(iter(stream)).key == "k0000000"
            time.sleep(3)  # the window in which the server may fill its buffers (RSS is sampled)
            # The server still answers while they hang.
            assert stub.Get(pb.KeyRequest(key="k0000001"), timeout=5).val == "v" * 20
        except grpc.RpcError as error:
            failed = error
        highest = peak.stop()
    print(f"server RSS {before:.0f} MB before the streams, {highest:.0f} MB at most with {STREAMS} unread")
    assert highest - before < 200, f"RSS grew from {before:.0f} MB to {highest:.0f} MB"
    assert failed is None, failed


class Peak:
    """Samples a process's RSS every 0.1 s on a thread until `stop()`, which returns the highest (MB)."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._highest = rss_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            with contextlib.suppress(OSError, AssertionError):  # the process may have ended
                self._highest = max(self._highest, rss_mb(self._pid))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(5)
        return self._highest


def test_a_key_or_value_that_is_not_utf8_is_invalid_argument_and_logs_nothing(processes: Processes) -> None:
    server = processes.server("s1")
    put = cast(Callable[[bytes], bytes], server.channel.unary_unary("/project.KeyValueStore/Put", None, None))
    put_all = cast(
        Callable[[Iterator[bytes]], Iterator[bytes]],
        server.channel.stream_stream("/project.KeyValueStore/PutAll", None, None),
    )
    lines = len(server.log().splitlines())
    for _ in range(200):
        with pytest.raises(grpc.RpcError) as refused:
            put(b"\x0a\x01k\x12\x02\xff\xfe")  # key "k", a value that is not UTF-8
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
    with pytest.raises(grpc.RpcError) as refused:
        list(put_all(iter([b"\x0a\x01a\x12\x01v", b"\x0a\x02\xff\xfe\x12\x01v"])))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
    assert server.stub.Get(pb.KeyRequest(key="k")) == pb.KeyValueVersionReply(key="k")
    assert server.stub.Get(pb.KeyRequest(key="a")).val == "v"
    assert len(server.log().splitlines()) - lines < 5, server.log()[-2000:]
