"""A state transfer streams: a store many times larger than the transfer's memory bounds moves to a
joiner, with the sender's and the joiner's peak memory (VmHWM) growing by far less than the store
(docs/replication.md, "Bounded answers")."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvs._gen import kvs_pb2 as pb
from tests.e2e.conftest import Processes, start

VALUE = "x" * 4000
KEYS = 100
VERSIONS = 250  # 100 MB of values, 1 MB of history a key: one page of keys used to be all of it
GROWTH = 30 * 1024 * 1024
"""Peak memory either side may gain while the transfer runs: well under the store's 100 MB."""


def peak_rss(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def reset_peak(pid: int) -> None:
    """Resets VmHWM to the current RSS (Linux: writing 5 to clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@pytest.mark.slow  # about 40 s: a 100 MB store is filled, then moved
def test_a_store_larger_than_the_bounds_moves_to_a_joiner_in_bounded_memory(
    processes: Processes, tmp_path: Path
) -> None:
    sender = start(processes, "s1", tmp_path / "s1")
    requests = [pb.KeyValueRequest(key=f"k{i:03}", val=VALUE) for i in range(KEYS) for _ in range(VERSIONS)]
    for at in range(0, len(requests), 500):
        list(sender.stub.PutAll(iter(requests[at : at + 500]), timeout=60))
    size = sender.status().store_bytes
    assert size > 3 * GROWTH
    reset_peak(sender.pid)
    before = peak_rss(sender.pid)

    joiner = start(processes, "s2", tmp_path / "s2", wait=False)
    joiner.wait_serving(timeout=180)
    # The joiner serves once it holds the whole store.
    assert joiner.status().digest == sender.status().digest
    assert joiner.status().keys == KEYS
    assert joiner.status().store_bytes == size
    sender_growth = peak_rss(sender.pid) - before
    joiner_peak = peak_rss(joiner.pid)
    mb = {"store": size, "sender +": sender_growth, "joiner": joiner_peak, "sender before": before}
    print(", ".join(f"{name} {value / 1e6:.0f} MB" for name, value in mb.items()))
    assert sender_growth < GROWTH, f"the sender's peak memory grew by {sender_growth / 1e6:.0f} MB"
    # Against the sender's own resident memory before: a like server, on a like store file.
    assert joiner_peak < before + GROWTH, f"the joiner peaked at {joiner_peak / 1e6:.0f} MB"
