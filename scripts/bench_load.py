"""The benchmark's load generator: one process, C calls in flight.

    python scripts/bench_load.py ADDRESS MODE CONCURRENCY SECONDS [PREFIX]

MODE is put, get (unary calls) or putall, getall (C streams at a time, each
call sending BATCH requests). Prints one JSON object: the calls (or streamed
replies) completed in SECONDS after a short warm-up.

    python scripts/bench_load.py ADDRESS fill CONCURRENCY COUNT PREFIX

puts COUNT distinct keys (PREFIX and digits, 16 bytes) with PutAll, C streams at a time.
Keys are 16 bytes and values 100 bytes, as in the memory figure.

    python scripts/bench_load.py ADDRESS churn CONCURRENCY SECONDS PREFIX KEYS

Put and Del in turn on keys drawn at random among KEYS, C calls in flight, printing
the operations done so far as one JSON line a second (the soak part of bench.py).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

from kvs._gen import kvs_pb2 as pb
from kvs._gen import kvs_pb2_grpc as pb_grpc
from kvs.net.channel import open_aio_channel

VALUE = "v" * 100
WARMUP = 0.5
BATCH = 500  # requests per PutAll or GetAll call


def key_of(prefix: str, i: int) -> str:
    return f"{prefix}{i:015d}"[-16:]


class Counter:
    def __init__(self, seconds: float) -> None:
        self.start = time.monotonic() + WARMUP
        self.end = self.start + seconds
        self.count = 0
        self.total = 0  # warm-up and the calls still running at the end included

    def running(self) -> bool:
        return time.monotonic() < self.end

    def tick(self, n: int = 1) -> None:
        self.total += n
        if self.start <= time.monotonic() < self.end:
            self.count += n


async def unary(
    stub: pb_grpc.KeyValueStoreAsyncStub, mode: str, worker: int, prefix: str, counter: Counter
) -> None:
    i = 0
    while counter.running():
        key = key_of(f"{prefix}{worker}-", i % 1000)
        if mode == "put":
            await stub.Put(pb.KeyValueRequest(key=key, val=VALUE))
        else:
            await stub.Get(pb.KeyRequest(key=key))
        counter.tick()
        i += 1


async def streaming(
    stub: pb_grpc.KeyValueStoreAsyncStub, mode: str, worker: int, prefix: str, counter: Counter
) -> None:
    # GetAll answers only once it has the whole stream (it reads at the stream's
    # largest version), so every call sends a finite batch of requests.
    keys = [key_of(f"{prefix}{worker}-", i) for i in range(BATCH)]
    while counter.running():
        if mode == "putall":
            async for _ in stub.PutAll(iter([pb.KeyValueRequest(key=key, val=VALUE) for key in keys])):
                counter.tick()
        else:
            async for _ in stub.GetAll(iter([pb.KeyRequest(key=key) for key in keys])):
                counter.tick()


async def fill(
    stub: pb_grpc.KeyValueStoreAsyncStub, worker: int, workers: int, count: int, prefix: str
) -> None:
    mine = range(worker, count, workers)
    for start in range(0, len(mine), BATCH):
        requests = [pb.KeyValueRequest(key=key_of(prefix, i), val=VALUE) for i in mine[start : start + BATCH]]
        async for _ in stub.PutAll(iter(requests)):
            pass


async def churn(stub: pb_grpc.KeyValueStoreAsyncStub, prefix: str, keys: int, counter: Counter) -> None:
    draw = random.Random()
    put = True
    while counter.running():
        key = key_of(prefix, draw.randrange(keys))
        if put:
            await stub.Put(pb.KeyValueRequest(key=key, val=VALUE))
        else:
            await stub.Del(pb.KeyRequest(key=key))
        put = not put
        counter.tick()


async def progress(counter: Counter) -> None:
    while counter.running():
        await asyncio.sleep(1)
        print(json.dumps({"ops": counter.total, "at": time.monotonic()}), flush=True)


async def main() -> None:
    address, mode, concurrency, amount = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    prefix = sys.argv[5] if len(sys.argv) > 5 else "k"
    async with open_aio_channel(address) as channel:
        stub = pb_grpc.KeyValueStoreStub(channel)
        await stub.Get(pb.KeyRequest(key="warm"), wait_for_ready=True)
        if mode == "fill":
            await asyncio.gather(
                *(fill(stub, n, concurrency, int(amount), prefix) for n in range(concurrency))
            )
            print(json.dumps({"count": int(amount)}))
            return
        seconds = amount
        counter = Counter(seconds)
        if mode == "churn":
            keys = int(sys.argv[6])
            await asyncio.gather(
                progress(counter), *(churn(stub, prefix, keys, counter) for _ in range(concurrency))
            )
            return
        work = unary if mode in ("put", "get") else streaming
        await asyncio.gather(*(work(stub, mode, n, prefix, counter) for n in range(concurrency)))
    print(json.dumps({"count": counter.count, "total": counter.total, "seconds": seconds}))


if __name__ == "__main__":
    asyncio.run(main())
