"""Replication lag for the benchmark: puts on one server, seen applied on another.

    python scripts/bench_lag.py write ADDRESS RATE COUNT PREFIX   # prints the ack time of each put
    python scripts/bench_lag.py watch ADDRESS COUNT PREFIX        # prints when each key was applied

The writer puts key PREFIX<i> at a fixed rate, starting a second after it
starts (time for the watcher to open its stream), and notes when each reply
came. The watcher follows the other server's Admin.Watch stream, which names
the keys of every batch as the server applies it, and notes when each key
arrived: from then on, a read on that server returns it. (Polling the server
with reads instead made the watcher and the server take a core between them
on this 2-core machine, and the lag it measured was its own.) Times are
CLOCK_MONOTONIC, shared by the processes of one machine.
"""

from __future__ import annotations

import json
import sys
import time

import grpc

from kvs._gen import kvs_pb2 as pb
from kvs._gen import kvs_pb2_grpc as pb_grpc
from kvs._gen import replication_pb2 as rpb
from kvs._gen import replication_pb2_grpc as rpb_grpc
from kvs.net.channel import open_channel


def write(stub: pb_grpc.KeyValueStoreStub, rate: float, count: int, prefix: str) -> list[float]:
    acked = []
    start = time.monotonic() + 1
    for i in range(count):
        target = start + i / rate
        while (now := time.monotonic()) < target:
            time.sleep(min(target - now, 0.0005))
        stub.Put(pb.KeyValueRequest(key=f"{prefix}{i}", val="v" * 100))
        acked.append(time.monotonic())
    return acked


def watch(channel: grpc.Channel, count: int, prefix: str) -> list[float]:
    seen: dict[int, float] = {}
    stream = rpb_grpc.AdminStub(channel).Watch(rpb.WatchRequest(), timeout=60 + count / 100)
    for applied in stream:
        now = time.monotonic()
        for key in applied.keys:
            if key.startswith(prefix):
                seen.setdefault(int(key[len(prefix) :]), now)
        if len(seen) == count:
            break  # the stream ends with the process
    return [seen[i] for i in range(count)]


def main() -> None:
    mode, address = sys.argv[1], sys.argv[2]
    channel = open_channel(address)
    stub = pb_grpc.KeyValueStoreStub(channel)
    stub.Get(pb.KeyRequest(key="warm"), wait_for_ready=True, timeout=10)
    if mode == "write":
        times = write(stub, float(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        times = watch(channel, int(sys.argv[3]), sys.argv[4])
    print(json.dumps(times))


if __name__ == "__main__":
    main()
