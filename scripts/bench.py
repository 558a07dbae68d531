#!/usr/bin/env python3
"""The kvs benchmark: kvs beside the ceilings of what it is built on, in one run.

    scripts/bench.py [--rounds 3] [--seconds 1.2]

(from a fresh clone too: it runs ./compile.sh --dev first and re-runs itself in .venv).

Starts, on free loopback ports: a private mosquitto configured as kvs's own;
kvs servers (replication on: each measured server has a second one
subscribed); and bare grpcio servers with trivial handlers ("echo", in three
server styles: thread pool, grpc.aio, grpc.aio on uvloop). Load comes from
separate client processes (scripts/bench_load.py) with C calls in flight. Each
figure is the median of --rounds rounds, the targets measured in turn within
each round so that the machine's noise falls on all of them alike.

Prints one `name=value` line per figure, then a table with ratios and targets.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".venv" / "bin" / "python")
if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():  # not yet in the project's environment
    subprocess.run([str(ROOT / "compile.sh"), "--dev"], check=True)
    os.execv(PYTHON, [PYTHON, __file__, *sys.argv[1:]])
sys.path.insert(0, str(ROOT))

from kvs.datadir import open_data_dir  # noqa: E402
from kvs.store import Store  # noqa: E402
from tests.e2e.harness import KvsServer, Mosquitto, Process, free_port, listening, wait_for  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
KEYS = 100_000
KEYS_ON_DISK = 1_000_000
RAW_BYTES = KEYS * (16 + 100)  # 16-byte keys, 100-byte values
LAG_RATE, LAG_SECONDS = 1000, 3


@dataclass
class Figure:
    name: str
    unit: str
    values: list[float] = field(default_factory=list)

    @property
    def value(self) -> float:
        return statistics.median(self.values)


@dataclass
class Comparison:
    """A kvs figure, the ceiling it is held against, and the target for their ratio."""

    label: str
    kvs: str
    ceiling: str
    target: str
    met: Callable[[float], bool]


class Bench:
    def __init__(self, rounds: int, seconds: float, work: Path) -> None:
        self.rounds = rounds
        self.seconds = seconds
        self.work = work
        self.figures: dict[str, Figure] = {}
        self.processes: list[Process] = []
        self.cpu_per_call = 0.0  # seconds, of the last `load` given a server

    # Processes ---------------------------------------------------------------

    def start(self) -> None:
        self.broker = Mosquitto(self.work)
        self._keep(self.broker)
        self.pair = self._pair("bench", [])
        self.kvs = address(self.pair[0])
        self.kvs_asyncio = address(self._pair("bench-asyncio", ["--event-loop", "asyncio"])[0])
        self.kvs_alone = address(self._server("alone-1", "bench-alone", []))  # what the peer costs
        self.echo = {style: self._echo(style) for style in ("uvloop", "aio", "sync")}

    def _keep(self, process: Process) -> None:
        self.processes.append(process)
        process.start()

    def _server(self, name: str, cluster: str, extra: list[str]) -> KvsServer:
        server = KvsServer(self.work, name, ["--broker", self.broker.address, "--cluster", cluster, *extra])
        self._keep(server)
        server.wait_serving()
        return server

    def _pair(self, cluster: str, extra: list[str]) -> tuple[KvsServer, KvsServer]:
        """The measured server and its peer, which replication keeps in step."""
        return self._server(f"{cluster}-1", cluster, extra), self._server(f"{cluster}-2", cluster, extra)

    def _echo(self, style: str) -> str:
        port = free_port()
        self._keep(
            Process(f"echo-{style}", [PYTHON, "scripts/bench_echo.py", style, str(port)], self.work, ENV)
        )
        wait_for(f"echo-{style}", lambda: listening(port))
        return f"127.0.0.1:{port}"

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    # Measurements ------------------------------------------------------------

    def record(self, name: str, unit: str, value: float) -> None:
        self.figures.setdefault(name, Figure(name, unit)).values.append(value)

    def load(self, address: str, mode: str, concurrency: int, server: KvsServer | None = None) -> float:
        """Calls (or streamed messages) per second from client processes, 8 calls in flight each at most.

        With `server`, also records the CPU time that server spent per call (over every call
        made, warm-up included), which the other processes on the machine disturb far less.
        """
        cpu = _cpu(server.pid) if server else 0.0
        processes = max(1, concurrency // 8)
        runs = [
            subprocess.Popen(
                [
                    PYTHON,
                    "scripts/bench_load.py",
                    address,
                    mode,
                    str(concurrency // processes),
                    str(self.seconds),
                    f"{mode[0]}{n}",
                ],
                cwd=ROOT,
                env=ENV,
                stdout=subprocess.PIPE,
                text=True,
            )
            for n in range(processes)
        ]
        outputs = [json.loads(run.communicate(timeout=120)[0]) for run in runs]
        if server:
            self.cpu_per_call = (_cpu(server.pid) - cpu) / sum(int(out["total"]) for out in outputs)
        return sum(int(out["count"]) for out in outputs) / self.seconds

    def throughput(self) -> None:
        targets = {"kvs": self.kvs, "echo_uvloop": self.echo["uvloop"]}
        styles = {
            "kvs_alone": self.kvs_alone,
            "kvs_asyncio": self.kvs_asyncio,
            "echo_aio": self.echo["aio"],
            "echo_sync": self.echo["sync"],
        }
        for _ in range(self.rounds):
            for mode in ("put", "get", "putall", "getall"):
                for concurrency in (1, 16):
                    chosen = dict(targets)
                    if concurrency == 16 and mode in ("put", "putall"):
                        chosen |= styles  # the server styles, compared where they differ most
                    for target, address in chosen.items():
                        unit = "msgs/s" if mode.endswith("all") else "calls/s"
                        self.record(
                            f"{mode}_c{concurrency}.{target}", unit, self.load(address, mode, concurrency)
                        )

    def lag(self) -> None:
        s1, s2 = self.pair
        count = LAG_RATE * LAG_SECONDS
        # The throughput runs may have left s2 a backlog to apply: start from a converged pair.
        wait_for("the measured pair to converge", lambda: s1.status().digest == s2.status().digest, 120)
        for r in range(self.rounds):
            prefix = f"lag{r}-"
            watcher = self._script("bench_lag.py", "watch", address(s2), str(count), prefix)
            writer = self._script("bench_lag.py", "write", address(s1), str(LAG_RATE), str(count), prefix)
            acked = json.loads(writer.communicate(timeout=120)[0])
            seen = json.loads(watcher.communicate(timeout=120)[0])
            lags = sorted(max(0.0, s - a) * 1000 for a, s in zip(acked, seen, strict=True))
            self.record("lag_p50", "ms", statistics.median(lags))
            self.record("lag_p99", "ms", lags[int(len(lags) * 0.99)])
            mqtt = json.loads(
                self._script("bench_mqtt.py", str(self.broker.port), "latency", "2").communicate()[0]
            )
            self.record("lag_p50.mqtt", "ms", mqtt["p50_ms"])
            self.record("lag_p99.mqtt", "ms", mqtt["p99_ms"])
            rate = json.loads(
                self._script("bench_mqtt.py", str(self.broker.port), "rate", "2").communicate()[0]
            )
            self.record("mqtt_qos1_rate", "msgs/s", rate["rate"])

    def joiner(self) -> None:
        """A late joiner into a cluster holding KEYS keys, and into an empty one; their RSS."""
        full = self._server("join-1", "bench-join", [])
        self._server("empty-1", "bench-empty", [])
        filled = self._script("bench_load.py", f"127.0.0.1:{full.port}", "fill", "4", str(KEYS), "m")
        assert json.loads(filled.communicate(timeout=300)[0])["count"] == KEYS
        for r in range(self.rounds):
            for cluster, name in (("bench-empty", "joiner_empty"), ("bench-join", "joiner")):
                start = time.monotonic()
                joiner = KvsServer(
                    self.work, f"{cluster}-late{r}", ["--broker", self.broker.address, "--cluster", cluster]
                )
                self.processes.append(joiner)
                joiner.start()
                joiner.wait_serving(timeout=60)
                self.record(f"{name}_serving", "s", time.monotonic() - start)
                time.sleep(0.5)
                self.record(f"{name}_rss", "MB", _rss(joiner.pid) / 1e6)
                joiner.stop()
        empty_rss = self.figures["joiner_empty_rss"].value
        self.record(
            "memory_per_100k_keys", "MB", (self.figures["joiner_rss"].value - empty_rss) * 100_000 / KEYS
        )
        self.record("memory_raw_100k_keys", "MB", RAW_BYTES * 100_000 / KEYS / 1e6)

    def disk(self) -> None:
        """Put and PutAll with the store on disk (with and without --fsync) against in memory."""
        stores = {
            "memory": [],
            "disk": ["--data-dir", str(self.work / "disk-{}")],
            "fsync": ["--data-dir", str(self.work / "fsync-{}"), "--fsync"],
        }
        targets = {}
        for store, extra in stores.items():
            cluster = f"bench-{store}"
            targets[store], _ = (
                self._server(f"{cluster}-{n}", cluster, [a.format(n) for a in extra]) for n in (1, 2)
            )
        for _ in range(self.rounds):
            for mode in ("put", "putall"):
                for concurrency in (1, 16):
                    for store, server in targets.items():
                        name = f"store_{mode}_c{concurrency}"
                        unit = "msgs/s" if mode.endswith("all") else "calls/s"
                        rate = self.load(address(server), mode, concurrency, server)
                        self.record(f"{name}.{store}", unit, rate)
                        self.record(f"{name}_cpu.{store}", "us", self.cpu_per_call * 1e6)

    def restart(self) -> None:
        """Start to SERVING on a --data-dir holding KEYS_ON_DISK keys, and on an empty one."""
        full, empty = self.work / "restart-full", self.work / "restart-empty"
        for data, count in ((full, KEYS_ON_DISK), (empty, 0)):
            data_dir = open_data_dir(data, "bench-restart")
            store = Store(lambda: 1, data_dir.store_path)
            store.defer_commits(lambda: None)  # one transaction for the whole fill
            for i in range(count):
                store.put(f"{i:016d}", "v" * 100)
            store.close()
            data_dir.close()
        for r in range(self.rounds):
            for data, name in ((empty, "restart_empty"), (full, "restart")):
                start = time.monotonic()
                server = KvsServer(
                    self.work,
                    f"restart-{name}-{r}",
                    ["--broker", self.broker.address, "--cluster", "bench-restart", "--data-dir", str(data)],
                )
                self.processes.append(server)
                server.start()
                server.wait_serving(timeout=120)
                self.record(f"{name}_serving", "s", time.monotonic() - start)
                server.stop(signal.SIGKILL)  # a crash: the next start finds what kill -9 leaves

    def _script(self, script: str, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [PYTHON, f"scripts/{script}", *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True
        )


def address(server: KvsServer) -> str:
    return f"127.0.0.1:{server.port}"


def _cpu(pid: int) -> float:
    """Seconds of CPU (user and system) the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for pid {pid}")


COMPARISONS = [
    *(
        Comparison(f"{mode} C={c}", f"{mode}_c{c}.kvs", f"{mode}_c{c}.echo_uvloop", target, met)
        for mode, target, met in (
            ("put", ">= 0.8", lambda r: r >= 0.8),
            ("get", ">= 0.8", lambda r: r >= 0.8),
            ("putall", ">= 0.7", lambda r: r >= 0.7),
            ("getall", ">= 0.7", lambda r: r >= 0.7),
        )
        for c in (1, 16)
    ),
    Comparison("lag p50 at 1000/s", "lag_p50", "lag_p50.mqtt", "", lambda r: True),
    Comparison("lag p99 at 1000/s", "lag_p99", "lag_p99.mqtt", "<= 10 ms", lambda r: True),
    Comparison("late joiner SERVING", "joiner_serving", "joiner_empty_serving", "<= 2 s", lambda r: True),
    *(
        Comparison(
            f"{mode} C={c} {store}",
            f"store_{mode}_c{c}.{store}",
            f"store_{mode}_c{c}.memory",
            ">= 0.85" if store == "disk" else "",
            lambda r: r >= 0.85,
        )
        for mode in ("put", "putall")
        for c in (1, 16)
        for store in ("disk", "fsync")
    ),
    *(
        Comparison(
            f"{mode} C={c} {store} CPU/call",
            f"store_{mode}_c{c}_cpu.{store}",
            f"store_{mode}_c{c}_cpu.memory",
            "",
            lambda r: True,
        )
        for mode in ("put", "putall")
        for c in (1, 16)
        for store in ("disk", "fsync")
    ),
    Comparison("restart, 1M keys", "restart_serving", "restart_empty_serving", "", lambda r: True),
    Comparison(
        "memory / 100k keys", "memory_per_100k_keys", "memory_raw_100k_keys", "<= 2.0", lambda r: r <= 2.0
    ),
]
ABSOLUTE = {"lag_p99": lambda v: v <= 10, "joiner_serving": lambda v: v <= 2}


def report(bench: Bench) -> None:
    for figure in bench.figures.values():
        print(f"{figure.name}={figure.value:.4g}")
    print()
    print(f"{'figure':<22}{'kvs':>12}{'ceiling':>12}{'ratio':>8}  {'target':<10} met")
    for c in COMPARISONS:
        if c.kvs not in bench.figures:
            continue
        kvs, ceiling = bench.figures[c.kvs], bench.figures[c.ceiling]
        ratio = kvs.value / ceiling.value
        met = ABSOLUTE[c.kvs](kvs.value) if c.kvs in ABSOLUTE else c.met(ratio)
        shown = "" if not c.target else ("yes" if met else "NO")
        print(f"{c.label:<22}{kvs.value:>12.4g}{ceiling.value:>12.4g}{ratio:>8.2f}  {c.target:<10} {shown}")
    print()
    if "put_c16.echo_sync" not in bench.figures:
        return
    print("server styles, echo ceiling (C=16): " + ", ".join(
        f"{style} put {bench.figures[f'put_c16.echo_{style}'].value:.0f}/s "
        f"putall {bench.figures[f'putall_c16.echo_{style}'].value:.0f}/s"
        for style in ("sync", "aio", "uvloop")
    ))  # fmt: skip
    figures = bench.figures
    for target, label in (("kvs_asyncio", "kvs on asyncio's own loop"), ("kvs_alone", "kvs without a peer")):
        print(f"{label} (C=16): put {figures[f'put_c16.{target}'].value:.0f}/s, "
              f"putall {figures[f'putall_c16.{target}'].value:.0f}/s")  # fmt: skip
    print(f"medians of {bench.rounds} rounds; throughput windows of {bench.seconds} s after a 0.5 s warm-up")


PARTS = ["throughput", "lag", "joiner", "disk", "restart"]
DEFAULT_PARTS = PARTS[:-1]  # restart fills a million keys first: a minute or two more


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.2)
    parser.add_argument("--only", choices=PARTS, action="append", help="run only this part (repeatable)")
    args = parser.parse_args()
    parts = args.only or DEFAULT_PARTS
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kvs-bench-") as work:
        bench = Bench(args.rounds, args.seconds, Path(work))
        try:
            bench.start()
            for part in parts:
                getattr(bench, part)()
        finally:
            bench.stop()
    report(bench)
    print(f"bench took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
