"""Big requests for the benchmark's stall figures: one call that does a lot of work.

    python scripts/bench_stall.py ADDRESS putall COUNT PREFIX    # one PutAll stream of COUNT new keys
    python scripts/bench_stall.py ADDRESS getrange PREFIX         # one GetRange over every PREFIX key, read
    python scripts/bench_stall.py ADDRESS delrange PREFIX         # one DelRange over every PREFIX key
    python scripts/bench_stall.py ADDRESS history KEY COUNT       # COUNT versions of KEY (PutAll streams)
    python scripts/bench_stall.py ADDRESS trim KEY                # one Trim of KEY

Prints one JSON object: the replies received and the seconds the call took.
scripts/bench.py polls a Get from its own process meanwhile (`Poller`), so the
work of this client does not fall on the Get's latency.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator

from kvs._gen import kvs_pb2 as pb
from kvs._gen import kvs_pb2_grpc as pb_grpc
from kvs.net.channel import open_channel

VALUE = "v" * 100
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]


def key_of(prefix: str, i: int) -> str:
    return f"{prefix}{i:015d}"[-16:]


def puts(keys: Iterator[str]) -> Iterator[pb.KeyValueRequest]:
    for key in keys:
        yield pb.KeyValueRequest(key=key, val=VALUE)


def main() -> None:
    address, mode, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    with open_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.KeyValueStoreStub(channel)
        stub.Get(pb.KeyRequest(key="warm"), wait_for_ready=True, timeout=30)
        start = time.monotonic()
        if mode == "putall":
            count, prefix = int(args[0]), args[1]
            replies = sum(1 for _ in stub.PutAll(puts(key_of(prefix, i) for i in range(count))))
        elif mode in ("getrange", "delrange"):
            prefix = args[0]
            span = pb.KeyRange(fr=pb.KeyRequest(key=prefix), to=pb.KeyRequest(key=prefix + "\U0010ffff"))
            call = stub.GetRange if mode == "getrange" else stub.DelRange
            replies = sum(1 for _ in call(span))
        elif mode == "history":
            key, count = args[0], int(args[1])
            replies = 0
            for start_at in range(0, count, 50_000):
                batch = min(50_000, count - start_at)
                replies += sum(1 for _ in stub.PutAll(puts(key for _ in range(batch))))
        elif mode == "trim":
            stub.Trim(pb.KeyRequest(key=args[0]), timeout=600)
            replies = 1
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps({"replies": replies, "seconds": time.monotonic() - start}))


if __name__ == "__main__":
    main()
