"""The soak part of bench.py: what a server costs over time under churn with retention on.

Imported by scripts/bench.py (`--only soak`), which starts the servers:

- `churn` runs scripts/bench_load.py's churn (Put and Del in turn over many keys) against one
  server for a while, sampling its resident memory (and, with --data-dir, its store's file
  size, write-ahead log included) every few seconds; `slope` fits a line through the samples
  after the warm-up, in bytes per million operations.
- `fill_backlog` makes a --data-dir store holding a backlog of old versions, for the worst
  Get while retention drops it.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kvs.storage.datadir import STORE_FILE, open_data_dir
from kvs.storage.store import Fragment, Store


@dataclass
class Sample:
    seconds: float  # since the churn started
    ops: int  # operations done so far
    rss: int  # bytes
    file: int  # bytes of the store's file and its write-ahead log (0 in memory)


@dataclass
class Churn:
    """Reads the churn's progress lines (operations done so far) on a thread of its own."""

    process: subprocess.Popen[str]
    ops: int = 0
    _thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.ops = int(json.loads(line)["ops"])

    def wait(self) -> None:
        self.process.wait(timeout=120)
        self._thread.join(10)


def file_size(data_dir: Path | None) -> int:
    if data_dir is None:
        return 0
    return sum(
        path.stat().st_size for path in data_dir.glob(f"{STORE_FILE}*") if path.name != f"{STORE_FILE}-shm"
    )


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for pid {pid}")


def sample(churn: Churn, pid: int, data_dir: Path | None, seconds: float, every: float) -> list[Sample]:
    """Samples every `every` s until the churn ends (it runs `seconds`), printing each."""
    samples = []
    start = time.monotonic()
    while churn.process.poll() is None and time.monotonic() - start < seconds + 30:
        time.sleep(every)
        s = Sample(time.monotonic() - start, churn.ops, rss(pid), file_size(data_dir))
        samples.append(s)
        file = f" file={s.file / 1e6:.1f}MB" if data_dir else ""
        print(f"  soak t={s.seconds:5.0f}s ops={s.ops:>9,} rss={s.rss / 1e6:.1f}MB{file}", flush=True)
    churn.wait()
    return samples


def slope(samples: list[Sample], value: str) -> float:
    """Least-squares slope of `value` (rss or file) against operations: bytes per million operations."""
    xs = [s.ops for s in samples]
    ys = [float(getattr(s, value)) for s in samples]
    if len(xs) < 2 or max(xs) == min(xs):
        return float("nan")  # too few samples past the warm-up: a slower machine needs a longer run
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    fit = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return fit * 1_000_000


def fill_backlog(path: Path, cluster: str, keys: int, versions: int) -> None:
    """A --data-dir store of `keys` keys with `versions` versions each, all from 1970 (versions 1 to
    `versions`): retention drops all but each key's newest as soon as the server sweeps."""
    data_dir = open_data_dir(path, cluster)
    store = Store(lambda: 1, data_dir.store_path)
    store.defer_commits(lambda: None)  # one transaction for the whole fill
    value = "v" * 100
    for k in range(keys):
        store.join([Fragment(f"{k:016d}", 0, tuple((v, value) for v in range(1, versions + 1)))])
    store.close()
    data_dir.close()
