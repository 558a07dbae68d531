#!/usr/bin/env python3
"""The kvs benchmark: kvs beside the ceilings of what it is built on, in one run.

    scripts/bench.sh [--rounds 3] [--seconds 1.2] [--only PART] (parts: throughput, metrics, lag,
    joiner, stalls, auth, batching, disk, sites, restart, soak)

(scripts/bench.sh runs ./compile.sh --dev first, then this file in .venv).

Starts, on reserved loopback ports (kvs.local): a private mosquitto configured as kvs's own;
kvs servers (replication on: each measured server has a second one
subscribed); and bare grpcio servers with trivial handlers ("echo", in three
server styles: thread pool, grpc.aio, grpc.aio on uvloop). Load comes from
separate client processes (scripts/bench_load.py) with C calls in flight. Each
figure is the median of --rounds rounds, the targets measured in turn within
each round (in alternating order: `alternate`) so that the machine's noise
falls on all of them alike; each ratio is the median of the rounds' ratios,
shown with their range.

The stall part (SPEC guarantee 8) polls a Get every 20 ms on every server of a
replicated pair, from threads of this process, while one big call runs on the
first from another process (scripts/bench_stall.py): a PutAll of 200,000 new
keys, a GetRange and a DelRange over them, a Trim of a key with a long history;
each until every server has applied it; then while a joiner takes a transfer of
1,000,000 keys (the sender's Get and the joiner's health check). It reports the
worst latency and the p99 per server, next to a bare gRPC echo server polled the
same way through the same calls (the ceiling: what this machine gives any server
under that load), the control (Gets alone) in every round, and with --loop-cpu
the longest turn of each server's loop in CPU ms (scripts/bench_loop_cpu.py).

The sites part (docs/sites.md) starts two mosquittos of its own, on 127.0.0.2 and
127.0.0.3, b's bridged to a's through a proxy (kvs/local/linkproxy.py), and
measures replication lag across the bridge with no added delay and with 50 ms
each way, next to two servers on one broker in the same run; then the time from
healing a 60 s cut of the bridge, under writes on both sides, until every write
is on both servers.

The soak part (docs/performance.md, "Soak") churns Put and Del over many keys with
retention on, for a few minutes on a server in memory and then on one with --data-dir,
printing memory (and the file's size) every few seconds and their slopes after the
warm-up (scripts/bench_soak.py); then Put throughput with retention on against off, and
the worst Get while retention drops a backlog of a million versions.

Prints one `name=value` line per figure, then a table with ratios and targets, then whether the
kernel's autogroup scheduling was on (it decides the stall figures).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import bench_loop_cpu
import grpc
from bench_soak import Churn, fill_backlog, sample, slope
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from kvs._gen import kvs_pb2 as pb
from kvs._gen import kvs_pb2_grpc as pb_grpc
from kvs.local.linkproxy import LinkProxy
from kvs.local.processes import (
    SERVER,
    SOURCE,
    LocalBroker,
    LocalServer,
    Process,
    Reservation,
    port_open,
    wait_for,
)
from kvs.local.sites import Site, crosses
from kvs.net.channel import open_channel
from kvs.storage.datadir import open_data_dir
from kvs.storage.store import Store

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(SOURCE)}  # the helper scripts run this very kvs
KEYS = 100_000
KEYS_ON_DISK = 1_000_000
RAW_BYTES = KEYS * (16 + 100)  # 16-byte keys, 100-byte values
LAG_RATE, LAG_SECONDS = 1000, 3
LIGHT_RATE, LIGHT_SECONDS = 200, 10
"""Issue 17's light load: lag p99 under 5 ms and worst under 20 ms at 200 Puts/s."""
CUT_SECONDS = 60
STALL_KEYS = 200_000
STALL_CONTROL = 5.0
"""Seconds of the stall part's control: the polling with nothing else running."""
TRANSFER_KEYS = 1_000_000
"""Keys a joiner takes in one transfer, in the stall part."""
POLL_EVERY = 0.020
STALL_SERVERS = ("s1", "s2")
"""The stall part's servers: the one that takes the big calls, and its peer, which applies them."""
STALL_POLLED = (*STALL_SERVERS, "echo")
"""...and the ceiling: a bare gRPC echo server polled the same way through the same calls."""
STALL_CALLS = ("idle", "putall", "getrange", "delrange", "trim", "transfer")
SOAK_KEYS = 5_000
SOAK_SECONDS = 300.0
SOAK_WARMUP_OPS = 120_000
"""Operations of churn before the slopes are fitted: by then retention (20 s) has dropped versions
for a while and the batches kept for resending (16 MiB, 55,000 to 110,000 batches) are full."""
SOAK_EVERY = 5.0
SOAK_RETENTION = "20s"
BACKLOG_KEYS, BACKLOG_VERSIONS = 1_000, 1_000


@dataclass
class Figure:
    name: str
    unit: str
    values: list[float] = field(default_factory=list)

    @property
    def value(self) -> float:
        """The median of the rounds."""
        return statistics.median(self.values)

    @property
    def spread(self) -> str:
        """The range of the rounds, as "low-high" ("" for a single round)."""
        if len(self.values) < 2:
            return ""
        return f"{min(self.values):.4g}-{max(self.values):.4g}"


def ratios(kvs: Figure, ceiling: Figure) -> list[float]:
    """kvs over its ceiling, round by round (each round measured both, in alternating order); the
    ratio of the medians when the two were not measured in the same rounds."""
    if len(kvs.values) == len(ceiling.values):
        return [k / c for k, c in zip(kvs.values, ceiling.values, strict=True) if c]
    return [kvs.value / ceiling.value] if ceiling.value else []


T = TypeVar("T")


def alternate(round_: int, targets: Sequence[T]) -> list[T]:
    """`targets` in order in even rounds, reversed in odd ones: over several rounds, no target is
    always measured first (on a machine warming up or cooling down, that one would gain or lose)."""
    return list(targets) if round_ % 2 == 0 else list(reversed(targets))


@dataclass
class Comparison:
    """A kvs figure, the ceiling it is held against, and the target for their ratio."""

    label: str
    kvs: str
    ceiling: str
    target: str
    met: Callable[[float], bool]


class Bench:
    def __init__(
        self, rounds: int, seconds: float, work: Path, trim_versions: int = 200_000, loop_cpu: bool = False
    ) -> None:
        self.rounds = rounds
        self.loop_cpu = loop_cpu  # the stall part's servers run under scripts/bench_loop_cpu.py
        self.transfer_dir: Path | None = None  # the stall part's sender's --data-dir, once filled
        self.sender: LocalServer | None = None
        self.stall_echo = ""  # the stall part's echo server, once started
        self.trim_versions = trim_versions
        self.seconds = seconds
        self.work = work
        self.figures: dict[str, Figure] = {}
        self.processes: list[Process] = []
        self.ports: list[Reservation] = []
        self.cpu_per_call = 0.0  # seconds, of the last `load` given a server or pids
        self.echo_pids: dict[str, int] = {}

    # Processes ---------------------------------------------------------------

    def start(self, broker_only: bool = False) -> None:
        self.broker = LocalBroker(self.work)
        self._keep(self.broker)
        if broker_only:
            return
        self.pair = self._pair("bench", [])
        self.kvs = address(self.pair[0])
        self.kvs_asyncio = address(self._pair("bench-asyncio", ["--event-loop", "asyncio"])[0])
        self.kvs_alone = address(self._server("alone-1", "bench-alone", []))  # what the peer costs
        # Two more pairs, started alike, one with --metrics-port on both servers: what metrics cost.
        self.metrics_port = self._port()
        self.metrics_pairs = {  # started in turn, so that neither pair is the older
            "on": self._server("metrics-1", "bench-metrics", ["--metrics-port", str(self.metrics_port)]),
            "off": self._server("no-metrics-1", "bench-no-metrics", []),
        }
        self._server("metrics-2", "bench-metrics", ["--metrics-port", str(self._port())])
        self._server("no-metrics-2", "bench-no-metrics", [])
        self.echo = {style: self._echo(style) for style in ("uvloop", "aio", "sync")}

    def _keep(self, process: Process) -> None:
        self.processes.append(process)
        process.start()

    def _port(self) -> int:
        """A loopback port reserved until the bench ends."""
        self.ports.append(Reservation())
        return self.ports[-1].port

    def _server(
        self,
        name: str,
        cluster: str,
        extra: list[str],
        unsigned: bool = False,
        command: Sequence[str] = SERVER,
    ) -> LocalServer:
        # unsigned: the same server with replication tags off (scripts/bench_noauth.py)
        if unsigned:
            command = [PYTHON, str(ROOT / "scripts" / "bench_noauth.py")]
        server = LocalServer(
            self.work, name, ["--broker", self.broker.address, "--cluster", cluster, *extra], command=command
        )
        self._keep(server)
        server.wait_serving()
        return server

    def _pair(self, cluster: str, extra: list[str]) -> tuple[LocalServer, LocalServer]:
        """The measured server and its peer, which replication keeps in step."""
        return self._server(f"{cluster}-1", cluster, extra), self._server(f"{cluster}-2", cluster, extra)

    def _echo(self, style: str) -> str:
        port = self._port()
        echo = Process(
            f"echo-{style}", [PYTHON, "scripts/bench_echo.py", style, str(port)], self.work, ENV, cwd=ROOT
        )
        self._keep(echo)
        wait_for(f"echo-{style}", lambda: port_open(port))
        self.echo_pids[style] = echo.pid
        return f"127.0.0.1:{port}"

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.close()
        for reservation in self.ports:
            reservation.release()

    # Measurements ------------------------------------------------------------

    def record(self, name: str, unit: str, value: float) -> None:
        self.figures.setdefault(name, Figure(name, unit)).values.append(value)

    def load(
        self,
        address: str,
        mode: str,
        concurrency: int,
        server: LocalServer | None = None,
        pids: Sequence[int] = (),
    ) -> float:
        """Calls (or streamed messages) per second from client processes, 8 calls in flight each at most.

        With `server` (or `pids`), also records the CPU time that server (those processes together)
        spent per call (over every call made, warm-up included), which the other processes on the
        machine disturb far less.
        """
        measured = [*([server.pid] if server else []), *pids]
        cpu = sum(_cpu_seconds(pid) for pid in measured)
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
        if measured:
            used = sum(_cpu_seconds(pid) for pid in measured) - cpu
            self.cpu_per_call = used / sum(int(out["total"]) for out in outputs)
        return sum(int(out["count"]) for out in outputs) / self.seconds

    def throughput(self) -> None:
        targets = {"kvs": self.kvs, "echo_uvloop": self.echo["uvloop"]}
        styles = {
            "kvs_alone": self.kvs_alone,
            "kvs_asyncio": self.kvs_asyncio,
            "echo_aio": self.echo["aio"],
            "echo_sync": self.echo["sync"],
        }
        for r in range(self.rounds):
            for mode in ("put", "get", "putall", "getall"):
                for concurrency in (1, 16):
                    chosen = dict(targets)
                    if concurrency == 16 and mode in ("put", "putall"):
                        chosen |= styles  # the server styles, compared where they differ most
                    for target, address in alternate(r, list(chosen.items())):
                        unit = "msgs/s" if mode.endswith("all") else "calls/s"
                        # The CPU per write of kvs (the server and its peer) and of the echo: a
                        # ratio that a busy machine moves far less than the rates'.
                        pids = self._cpu_pids(target) if concurrency == 16 and mode.startswith("put") else ()
                        self.record(
                            f"{mode}_c{concurrency}.{target}",
                            unit,
                            self.load(address, mode, concurrency, pids=pids),
                        )
                        if pids:
                            self.record(f"cpu_{mode}_c16.{target}", "us", self.cpu_per_call * 1e6)

    def _cpu_pids(self, target: str) -> tuple[int, ...]:
        if target == "kvs":
            return (self.pair[0].pid, self.pair[1].pid)
        return (self.echo_pids["uvloop"],) if target == "echo_uvloop" else ()

    def metrics(self) -> None:
        """Put with metrics on and off, alternating which goes first in each round.

        Also the measured server's CPU time per Put (user + system, warm-up
        included alike), which the other processes on the machine disturb less
        than the rate.
        """
        pairs = list(self.metrics_pairs.items())
        for r in range(self.rounds):
            for concurrency in (1, 16):
                for target, server in alternate(r, pairs):
                    cpu = _cpu_seconds(server.pid)
                    rate = self.load(address(server), "put", concurrency)
                    cpu = _cpu_seconds(server.pid) - cpu
                    self.record(f"metrics_put_c{concurrency}.{target}", "calls/s", rate)
                    self.record(
                        f"metrics_cpu_c{concurrency}.{target}", "us/put", cpu / (rate * self.seconds) * 1e6
                    )
        # The metrics were on: the measured server counted every Put it answered.
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as reply:
            families = text_string_to_metric_families(reply.read().decode())
        counted = sum(
            sample.value
            for family in families
            for sample in family.samples
            if sample.name == "kvs_grpc_requests_total" and sample.labels["method"].endswith("/Put")
        )
        self.record("metrics_puts_counted", "calls", counted)

    def lag(self) -> None:
        s1, s2 = self.pair
        # The throughput runs may have left s2 a backlog to apply: start from a converged pair.
        wait_for("the measured pair to converge", lambda: s1.status().digest == s2.status().digest, 120)
        for r in range(self.rounds):
            for rate, seconds, suffix in ((LIGHT_RATE, LIGHT_SECONDS, "_light"), (LAG_RATE, LAG_SECONDS, "")):
                lags = self._lags(s1, s2, rate, rate * seconds, f"lag{r}{suffix}-")
                self.record(f"lag_p50{suffix}", "ms", statistics.median(lags))
                self.record(f"lag_p99{suffix}", "ms", lags[int(len(lags) * 0.99)])
                self.record(f"lag_max{suffix}", "ms", lags[-1])
            mqtt = json.loads(
                self._script("bench_mqtt.py", str(self.broker.port), "latency", "2").communicate()[0]
            )
            self.record("lag_p50.mqtt", "ms", mqtt["p50_ms"])
            self.record("lag_p99.mqtt", "ms", mqtt["p99_ms"])
            rate = json.loads(
                self._script("bench_mqtt.py", str(self.broker.port), "rate", "2").communicate()[0]
            )
            self.record("mqtt_qos1_rate", "msgs/s", rate["rate"])

    def _lags(
        self, source: LocalServer, target: LocalServer, rate: int, count: int, prefix: str
    ) -> list[float]:
        """Sorted lags in ms of COUNT puts at RATE a second on SOURCE, as applied on TARGET."""
        watcher = self._script("bench_lag.py", "watch", address(target), str(count), prefix)
        writer = self._script("bench_lag.py", "write", address(source), str(rate), str(count), prefix)
        acked = json.loads(writer.communicate(timeout=300)[0])
        seen = json.loads(watcher.communicate(timeout=300)[0])
        return sorted(max(0.0, s - a) * 1000 for a, s in zip(acked, seen, strict=True))

    def sites(self) -> None:
        """Lag across a bridge (no delay, 50 ms each way) next to one broker; a 60 s cut healed."""
        a = Site(self.work, "a", 2, "bench-sites")
        b = Site(self.work, "b", 3, "bench-sites")
        link = b.bridge_to(a)
        self._keep(a)
        self._keep(b)
        try:
            crosses(b, a)
            one = [self._site_server(f"one-{i}", "bench-one", a) for i in (1, 2)]
            near, far = (
                self._site_server("near", "bench-sites", a),
                self._site_server("far", "bench-sites", b),
            )
            for r in range(self.rounds):
                runs: list[tuple[str, LocalServer, LocalServer, float]] = [
                    ("one", one[0], one[1], 0.0),
                    ("bridge", near, far, 0.0),
                    ("bridge_50ms", near, far, 0.05),
                ]
                for label, source, target, delay in runs:
                    link.set("pass", delay)
                    p50, p99 = self._lag(source, target, f"sites{r}{label}-")
                    self.record(f"sites_lag_p50.{label}", "ms", p50)
                    self.record(f"sites_lag_p99.{label}", "ms", p99)
            link.set("pass", 0.0)
            self._healed_cut(near, far, link)
        finally:
            link.stop()

    def _site_server(self, name: str, cluster: str, site: Site) -> LocalServer:
        server = LocalServer(self.work, name, ["--broker", site.address, "--cluster", cluster])
        self._keep(server)
        server.wait_serving()
        return server

    def _lag(self, source: LocalServer, target: LocalServer, prefix: str) -> tuple[float, float]:
        wait_for("the pair to converge", lambda: source.status().digest == target.status().digest, 120)
        lags = self._lags(source, target, LAG_RATE, LAG_RATE * LAG_SECONDS, prefix)
        return statistics.median(lags), lags[int(len(lags) * 0.99)]

    def _healed_cut(self, near: LocalServer, far: LocalServer, link: LinkProxy) -> None:
        """Writes on both sides through a CUT_SECONDS cut; from the heal, how long until every
        write is on both servers (and until the bridge carries messages again)."""
        stop = threading.Event()
        written = [0, 0]

        def write(server: LocalServer, side: int) -> None:
            stub = server.stub
            while not stop.is_set():
                stub.Put(pb.KeyValueRequest(key=f"cut{side}-{written[side]:07}", val="v" * 100))
                written[side] += 1
                time.sleep(0.001)  # a steady stream, not a flood: about 500 writes/s a side

        writers = [threading.Thread(target=write, args=(server, i)) for i, server in enumerate((near, far))]
        for thread in writers:
            thread.start()
        time.sleep(2)
        link.set("cut")
        time.sleep(CUT_SECONDS)
        link.set("pass")
        healed = time.monotonic()
        a, b = (site for site in self.processes if isinstance(site, Site))
        crosses(b, a, timeout=60)
        self.record("sites_heal_bridge_up", "s", time.monotonic() - healed)
        stop.set()
        for thread in writers:
            thread.join(30)
        total = sum(written)

        def everywhere() -> bool:
            return all(server.status().keys >= total for server in (near, far))

        wait_for("every write on both sites", everywhere, 300, every=0.1)
        self.record("sites_heal_everywhere", "s", time.monotonic() - healed)
        self.record("sites_cut_writes", "writes", total)
        converged = near.status().digest == far.status().digest
        self.record("sites_converged", "bool", float(converged))

    def auth(self) -> None:
        """Put and PutAll with replication signed (HMAC-SHA256) and unsigned, on pairs started alike,
        alternating which goes first in each round."""
        pairs = {
            "on": self._server("auth-1", "bench-auth", []),
            "off": self._server("noauth-1", "bench-noauth", [], unsigned=True),
        }
        self._server("auth-2", "bench-auth", [])
        self._server("noauth-2", "bench-noauth", [], unsigned=True)
        order = list(pairs.items())
        for r in range(self.rounds):
            for mode in ("put", "putall"):
                for target, server in alternate(r, order):
                    unit = "msgs/s" if mode == "putall" else "calls/s"
                    self.record(f"auth_{mode}_c16.{target}", unit, self.load(address(server), mode, 16))

    def batching(self) -> None:
        """Put and PutAll at C = 16, and CPU per write of the server and its peer, with the longer
        batches under load and with FLUSH_EVERY at every rate (scripts/bench_short_batches.py), on
        pairs started alike, alternating which goes first in each round."""
        short = [PYTHON, str(ROOT / "scripts" / "bench_short_batches.py")]
        pairs = {
            "on": self._pair("bench-batching", []),
            "off": (
                self._server("short-1", "bench-short", [], command=short),
                self._server("short-2", "bench-short", [], command=short),
            ),
        }
        for r in range(self.rounds):
            for mode in ("put", "putall"):
                for target, (s1, s2) in alternate(r, list(pairs.items())):
                    unit = "msgs/s" if mode == "putall" else "calls/s"
                    rate = self.load(address(s1), mode, 16, pids=(s1.pid, s2.pid))
                    self.record(f"batching_{mode}_c16.{target}", unit, rate)
                    self.record(f"batching_cpu_{mode}_c16.{target}", "us", self.cpu_per_call * 1e6)

    def joiner(self) -> None:
        """A late joiner into a cluster holding KEYS keys, and into an empty one; their RSS."""
        full = self._server("join-1", "bench-join", [])
        self._server("empty-1", "bench-empty", [])
        filled = self._script("bench_load.py", f"127.0.0.1:{full.port}", "fill", "4", str(KEYS), "m")
        assert json.loads(filled.communicate(timeout=300)[0])["count"] == KEYS
        for r in range(self.rounds):
            for cluster, name in alternate(r, (("bench-empty", "joiner_empty"), ("bench-join", "joiner"))):
                start = time.monotonic()
                joiner = LocalServer(
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

    def stalls(self) -> None:
        """The worst latency of a Get polled every 20 ms on every server while one big call runs on the
        first, and while a joiner takes a transfer; the control, the same polling with nothing else
        running, in every round."""
        command = [PYTHON, str(ROOT / "scripts" / "bench_loop_cpu.py")] if self.loop_cpu else SERVER
        servers = [
            self._server(f"stall-{n}", "bench-stall", [], command=command) for n in (1, 2)
        ]  # s1 takes the calls, s2 applies them as replicated batches
        s1 = servers[0]
        s1.stub.Put(pb.KeyValueRequest(key="polled", val="v"))
        wait_for("the polled key on every server", lambda: all(_has(s, "polled") for s in servers), 60)
        # The ceiling: what the same polling gets from a server with nothing to do but answer, while
        # the same call loads the machine (its Get answers "" for every key, as kvs's does).
        self.stall_echo = self._echo("uvloop")
        calls = (
            ("putall", ["putall", str(STALL_KEYS), "s"]),
            ("getrange", ["getrange", "s"]),
            ("delrange", ["delrange", "s"]),
            (None, ["history", "h", str(self.trim_versions)]),  # loading, not measured
            ("trim", ["trim", "h"]),
        )
        for r in range(self.rounds):
            self._stalled("idle", servers, lambda: time.sleep(STALL_CONTROL))
            for name, args in calls:
                run = functools.partial(self._call, address(s1), args)
                if name is None:
                    run()
                    _converged(servers, f"loaded{r}")
                else:
                    self._stalled(name, servers, run, f"{name}{r}")
            self._transfer(r, command)

    def _call(self, target: str, args: list[str]) -> None:
        done = json.loads(self._script("bench_stall.py", target, *args).communicate(timeout=900)[0])
        self.record(f"stall_{args[0]}_seconds", "s", done["seconds"])

    def _stalled(
        self, name: str, servers: list[LocalServer], run: Callable[[], None], marker: str = ""
    ) -> None:
        """Polls every server while `run()` runs, and until every server has applied what it did (a
        marker key written after it has reached them all): their worst Get and p99, and with
        --loop-cpu the longest turn of each server's loop."""
        since = _asctime()
        pollers = [Poller(address(server)) for server in servers]
        echo = Poller(self.stall_echo)
        run()
        if marker:
            _converged(servers, marker)
        for tag, server, poller in zip(STALL_SERVERS, servers, pollers, strict=True):
            self._polled(f"stall_{name}", tag, server, poller, since)
        self._polled(f"stall_{name}", "echo", None, echo, since)

    def _polled(self, name: str, tag: str, server: LocalServer | None, poller: Poller, since: str) -> None:
        worst, p99 = poller.stop()
        self.record(f"{name}_get_max.{tag}", "ms", worst)
        self.record(f"{name}_get_p99.{tag}", "ms", p99)
        if self.loop_cpu and server is not None:
            turn = bench_loop_cpu.longest_turn(server.log(), since, _asctime())
            self.record(f"{name}_turn_max.{tag}", "ms", turn)

    def _transfer(self, r: int, command: Sequence[str]) -> None:
        """A joiner takes the state of a server holding TRANSFER_KEYS keys: the sender's Get and the
        joiner's health check polled from the joiner's start until it serves (a joiner answers no Get
        before; its health check is answered by the same event loop)."""
        if self.transfer_dir is None:
            self.transfer_dir = self.work / "transfer"
            _fill_dir(self.transfer_dir, "bench-transfer", TRANSFER_KEYS)
            self.sender = self._server(
                "transfer-1", "bench-transfer", ["--data-dir", str(self.transfer_dir)], command=command
            )
            self.sender.stub.Put(pb.KeyValueRequest(key="polled", val="v"))
        sender = self.sender
        assert sender is not None
        joiner = LocalServer(
            self.work,
            f"transfer-2-{r}",
            ["--broker", self.broker.address, "--cluster", "bench-transfer"],
            command=command,
        )
        since = _asctime()
        polled = Poller(address(sender))
        joining = Poller(address(joiner), health=True)
        echo = Poller(self.stall_echo)
        self.processes.append(joiner)
        start = time.monotonic()
        joiner.start()
        joiner.wait_serving(timeout=600)
        self.record("stall_transfer_seconds", "s", time.monotonic() - start)
        time.sleep(1)  # what follows SERVING (the caught-up log line, the first digests)
        self._polled("stall_transfer", "s1", sender, polled, since)  # the sender
        self._polled("stall_transfer", "s2", joiner, joining, since)  # the joiner
        self._polled("stall_transfer", "echo", None, echo, since)
        joiner.stop()

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
        for r in range(self.rounds):
            for mode in ("put", "putall"):
                for concurrency in (1, 16):
                    for store, server in alternate(r, list(targets.items())):
                        name = f"store_{mode}_c{concurrency}"
                        unit = "msgs/s" if mode.endswith("all") else "calls/s"
                        rate = self.load(address(server), mode, concurrency, server)
                        self.record(f"{name}.{store}", unit, rate)
                        self.record(f"{name}_cpu.{store}", "us", self.cpu_per_call * 1e6)

    def restart(self) -> None:
        """Start to SERVING on a --data-dir holding KEYS_ON_DISK keys, and on an empty one."""
        full, empty = self.work / "restart-full", self.work / "restart-empty"
        for data, count in ((full, KEYS_ON_DISK), (empty, 0)):
            _fill_dir(data, "bench-restart", count)
        for r in range(self.rounds):
            for data, name in alternate(r, ((empty, "restart_empty"), (full, "restart"))):
                start = time.monotonic()
                server = LocalServer(
                    self.work,
                    f"restart-{name}-{r}",
                    ["--broker", self.broker.address, "--cluster", "bench-restart", "--data-dir", str(data)],
                )
                self.processes.append(server)
                server.start()
                server.wait_serving(timeout=120)
                self.record(f"{name}_serving", "s", time.monotonic() - start)
                server.stop(signal.SIGKILL)  # a crash: the next start finds what kill -9 leaves

    def soak(self) -> None:
        """Churn with retention on (tombstone expiry too, if the server has it), memory and file over
        time; Put with retention on against off; the worst Get while retention drops a backlog."""
        self.broker = LocalBroker(self.work)
        self._keep(self.broker)
        growth = ["--retention", SOAK_RETENTION, *_tombstone_ttl()]
        for store, data_dir in (("memory", None), ("disk", self.work / "soak-disk")):
            extra = ["--data-dir", str(data_dir)] if data_dir else []
            server = self._server(f"soak-{store}", f"bench-soak-{store}", [*growth, *extra])
            print(f"soak, {store}: {' '.join(growth)}, {SOAK_KEYS} keys, {SOAK_SECONDS:.0f} s", flush=True)
            args = [address(server), "churn", "8", str(SOAK_SECONDS), f"soak-{store}-", str(SOAK_KEYS)]
            samples = sample(
                Churn(self._script("bench_load.py", *args)), server.pid, data_dir, SOAK_SECONDS, SOAK_EVERY
            )
            steady = [s for s in samples if s.ops >= SOAK_WARMUP_OPS]
            self.record(f"soak_ops_per_s.{store}", "ops/s", samples[-1].ops / samples[-1].seconds)
            self.record(f"soak_rss_end.{store}", "MB", samples[-1].rss / 1e6)
            self.record(f"soak_rss_slope.{store}", "MB/Mop", slope(steady, "rss") / 1e6)
            if data_dir:
                self.record(f"soak_file_end.{store}", "MB", samples[-1].file / 1e6)
                self.record(f"soak_file_slope.{store}", "MB/Mop", slope(steady, "file") / 1e6)
            server.stop()
        self._retention_throughput()
        self._retention_backlog()

    def _retention_throughput(self) -> None:
        """Put C=16 on a pair with --retention 5s (sweeping what the load itself wrote) and on one without."""
        pairs = {
            "on": self._pair("bench-retention-on", ["--retention", "5s"])[0],
            "off": self._pair("bench-retention-off", [])[0],
        }
        seconds, self.seconds = self.seconds, max(self.seconds, 6.0)  # windows that span a sweep or more
        try:
            for r in range(self.rounds):
                for target, server in alternate(r, list(pairs.items())):
                    self.record(
                        f"retention_put_c16.{target}", "calls/s", self.load(address(server), "put", 16)
                    )
        finally:
            self.seconds = seconds

    def _retention_backlog(self) -> None:
        """A server started on a --data-dir holding BACKLOG_KEYS x BACKLOG_VERSIONS old versions with
        --retention 1m: the worst Get polled every 20 ms while its first sweep drops all but the newest."""
        data = self.work / "backlog"
        fill_backlog(data, "bench-backlog", BACKLOG_KEYS, BACKLOG_VERSIONS)
        flags = ["--broker", self.broker.address, "--cluster", "bench-backlog", "--data-dir", str(data)]
        server = LocalServer(self.work, "backlog", [*flags, "--retention", "1m"])
        self._keep(server)
        server.wait_serving(timeout=120)  # a start is not what is measured: the sweep takes much longer
        poller = Poller(address(server), key=f"{0:016d}")
        start = time.monotonic()
        newest_only = BACKLOG_KEYS * ((16 + 100 + 8) + (16 + 8))  # its newest version and its floor
        wait_for(
            "retention to drop the backlog", lambda: server.status().store_bytes <= newest_only, 600, 0.5
        )
        self.record("retention_backlog_seconds", "s", time.monotonic() - start)
        worst, p99 = poller.stop()
        self.record("retention_backlog_get_max", "ms", worst)
        self.record("retention_backlog_get_p99", "ms", p99)
        server.stop()

    def _script(self, script: str, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [PYTHON, f"scripts/{script}", *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True
        )


class Poller:
    """Calls Get (or the health check) every 20 ms on a thread of its own and keeps the latencies."""

    def __init__(self, target: str, health: bool = False, key: str = "polled") -> None:
        self._channel = open_channel(target)
        self._stub = pb_grpc.KeyValueStoreStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._call: Callable[[], object] = (
            (lambda: self._health.Check(health_pb2.HealthCheckRequest(), timeout=60))
            if health
            else (lambda: self._stub.Get(pb.KeyRequest(key=key), timeout=60))
        )
        self._stop = threading.Event()
        self.took: list[float] = []
        self._thread = threading.Thread(target=self._run, name="poller", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                self._call()
            except grpc.RpcError:  # not listening yet (a joiner): not an answer
                self._stop.wait(POLL_EVERY)
                continue
            took = time.monotonic() - start
            self.took.append(took)
            self._stop.wait(max(0.0, POLL_EVERY - took))

    def stop(self) -> tuple[float, float]:
        """Stops polling; returns the worst latency and the p99, in ms."""
        self._stop.set()
        self._thread.join(60)
        self._channel.close()
        took = sorted(self.took) or [0.0]
        return took[-1] * 1000, took[int(len(took) * 0.99)] * 1000


def _asctime() -> str:
    """Now, as the servers' log lines write it (logging's asctime)."""
    now = time.time()
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"


def _has(server: LocalServer, key: str) -> bool:
    return bool(server.stub.Get(pb.KeyRequest(key=key), timeout=10).val)


def _converged(servers: list[LocalServer], marker: str) -> None:
    """Writes `marker` on the first server after what it did, and waits until every server has it:
    replication applies a server's batches in order, so they have applied all that came before."""
    servers[0].stub.Put(pb.KeyValueRequest(key=f"marker-{marker}", val="m"))
    for server in servers:
        wait_for(
            f"{server.name} to apply the call", functools.partial(_has, server, f"marker-{marker}"), 600, 0.1
        )


def _fill_dir(data: Path, cluster: str, count: int) -> None:
    """A --data-dir for `cluster` holding `count` keys of 16 bytes with 100-byte values."""
    data_dir = open_data_dir(data, cluster)
    store = Store(lambda: 1, data_dir.store_path)
    store.defer_commits(lambda: None)  # one transaction for the whole fill
    for i in range(count):
        store.put(f"{i:016d}", "v" * 100)
    store.close()
    data_dir.close()


def address(server: LocalServer) -> str:
    return server.address


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tombstone_ttl() -> list[str]:
    """--tombstone-ttl 1m if this server has the flag (docs/operations.md), else nothing."""
    usage = subprocess.run([*SERVER, "--help"], capture_output=True, text=True, env=ENV, check=False).stdout
    return ["--tombstone-ttl", "1m"] if "--tombstone-ttl" in usage else []


def _rss(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for pid {pid}")


def _stall_ceiling(call: str, server: str, figure: str) -> str:
    """A server's Get is held against the echo's through the same call; the echo's, against its
    control (Gets alone); a turn of the loop against nothing."""
    if figure == "turn_max" or (server == "echo" and call == "idle"):
        return ""
    return f"stall_{'idle' if server == 'echo' else call}_{figure}.echo"


COMPARISONS = [
    *(
        Comparison(
            f"{label} C=16 long batches",
            f"batching_{key}_c16.on",
            f"batching_{key}_c16.off",
            "",
            lambda r: True,
        )
        for label, key in (
            ("put", "put"),
            ("putall", "putall"),
            ("CPU/put", "cpu_put"),
            ("CPU/putall", "cpu_putall"),
        )
    ),
    *(
        Comparison(
            f"{mode} C=16 auth", f"auth_{mode}_c16.on", f"auth_{mode}_c16.off", ">= 0.95", lambda r: r >= 0.95
        )
        for mode in ("put", "putall")
    ),
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
    *(
        Comparison(
            f"CPU/{mode} C=16 vs echo",
            f"cpu_{mode}_c16.kvs",
            f"cpu_{mode}_c16.echo_uvloop",
            "",
            lambda r: True,
        )
        for mode in ("put", "putall")
    ),
    *(
        Comparison(
            f"put C={c} metrics on",
            f"metrics_put_c{c}.on",
            f"metrics_put_c{c}.off",
            ">= 0.95",
            lambda r: r >= 0.95,
        )
        for c in (1, 16)
    ),
    *(
        Comparison(
            f"CPU/put C={c} metrics",
            f"metrics_cpu_c{c}.on",
            f"metrics_cpu_c{c}.off",
            "<= 1.05",
            lambda r: r <= 1.05,
        )
        for c in (1, 16)
    ),
    Comparison("lag p50 at 1000/s", "lag_p50", "lag_p50.mqtt", "", lambda r: True),
    Comparison("lag p99 at 1000/s", "lag_p99", "lag_p99.mqtt", "<= 10 ms", lambda r: True),
    Comparison("lag worst at 1000/s", "lag_max", "", "", lambda r: True),
    Comparison("lag p99 at 200/s", "lag_p99_light", "", "< 5 ms", lambda r: True),
    Comparison("lag worst at 200/s", "lag_max_light", "", "< 20 ms", lambda r: True),
    Comparison("lag p50 bridge", "sites_lag_p50.bridge", "sites_lag_p50.one", "", lambda r: True),
    Comparison("lag p99 bridge", "sites_lag_p99.bridge", "sites_lag_p99.one", "", lambda r: True),
    Comparison("lag p50 bridge 50ms", "sites_lag_p50.bridge_50ms", "sites_lag_p50.one", "", lambda r: True),
    Comparison("lag p99 bridge 50ms", "sites_lag_p99.bridge_50ms", "sites_lag_p99.one", "", lambda r: True),
    Comparison("60 s cut: everywhere", "sites_heal_everywhere", "", "<= 10 s", lambda r: True),
    Comparison("late joiner SERVING", "joiner_serving", "joiner_empty_serving", "<= 2 s", lambda r: True),
    *(
        Comparison(
            f"{what} {call} {server}",
            f"stall_{call}_{figure}.{server}",
            _stall_ceiling(call, server, figure),
            "< 250 ms" if figure == "get_max" and server != "echo" else "",
            lambda r: True,
        )
        for call in STALL_CALLS
        for server in STALL_POLLED
        for figure, what in (("get_max", "Get max"), ("get_p99", "Get p99"), ("turn_max", "turn CPU"))
    ),
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
    Comparison(
        "put C=16 retention on", "retention_put_c16.on", "retention_put_c16.off", ">= 0.9", lambda r: r >= 0.9
    ),
    Comparison("Get while retention", "retention_backlog_get_max", "", "< 250 ms", lambda r: True),
    *(
        Comparison(f"soak {what} slope {store}", f"soak_{what}_slope.{store}", "", "", lambda r: True)
        for what, store in (("rss", "memory"), ("rss", "disk"), ("file", "disk"))
    ),
    Comparison("restart, 1M keys", "restart_serving", "restart_empty_serving", "", lambda r: True),
    Comparison(
        "memory / 100k keys", "memory_per_100k_keys", "memory_raw_100k_keys", "<= 2.0", lambda r: r <= 2.0
    ),
]
ABSOLUTE = {
    "sites_heal_everywhere": lambda v: v <= 10,
    "lag_p99": lambda v: v <= 10,
    "lag_p99_light": lambda v: v < 5,
    "lag_max_light": lambda v: v < 20,
    "joiner_serving": lambda v: v <= 2,
    **{
        f"stall_{call}_get_max.{server}": lambda v: v < 250
        for call in STALL_CALLS
        for server in STALL_SERVERS
    },
    "retention_backlog_get_max": lambda v: v < 250,
}


def report(bench: Bench) -> None:
    """One `name=median` line per figure (with the range of its rounds), then the table: each ratio is
    the median of the rounds' ratios of kvs to its ceiling, and their range."""
    for figure in bench.figures.values():
        spread = f"  # rounds {figure.spread}" if figure.spread else ""
        print(f"{figure.name}={figure.value:.4g}{spread}")
    print()
    print(f"{'figure':<24}{'kvs':>10}{'ceiling':>10}{'ratio':>7} {'range':<11}  {'target':<10} met")
    for c in COMPARISONS:
        if c.kvs not in bench.figures:
            continue
        kvs = bench.figures[c.kvs]
        if c.ceiling and c.ceiling in bench.figures:  # held against a ceiling measured in the same run
            ceiling = bench.figures[c.ceiling]
            each = ratios(kvs, ceiling)
            ratio = statistics.median(each) if each else 0.0
            spread = f"{min(each):.2f}-{max(each):.2f}" if len(each) > 1 else ""
            columns = f"{ceiling.value:>10.4g}{ratio:>7.2f} {spread:<11}"
        else:  # an absolute figure
            ratio, columns = 0.0, f"{'':>10}{'':>7} {kvs.spread:<11}"
        met = ABSOLUTE[c.kvs](kvs.value) if c.kvs in ABSOLUTE else c.met(ratio)
        shown = "" if not c.target else ("yes" if met else "NO")
        print(f"{c.label:<24}{kvs.value:>10.4g}{columns}  {c.target:<10} {shown}")
    print()
    if "put_c16.echo_sync" not in bench.figures:
        return
    print(
        "server styles, echo ceiling (C=16): "
        + ", ".join(
            f"{style} put {bench.figures[f'put_c16.echo_{style}'].value:.0f}/s "
            f"putall {bench.figures[f'putall_c16.echo_{style}'].value:.0f}/s"
            for style in ("sync", "aio", "uvloop")
        )
    )
    figures = bench.figures
    for target, label in (("kvs_asyncio", "kvs on asyncio's own loop"), ("kvs_alone", "kvs without a peer")):
        print(
            f"{label} (C=16): put {figures[f'put_c16.{target}'].value:.0f}/s, "
            f"putall {figures[f'putall_c16.{target}'].value:.0f}/s"
        )
    print(
        f"medians of {bench.rounds} rounds (targets in alternating order; ranges low-high);"
        f" throughput windows of {bench.seconds} s after a 0.5 s warm-up"
    )


AUTOGROUP = Path("/proc/sys/kernel/sched_autogroup_enabled")


def scheduling() -> str:
    """How this kernel shares the CPU, which decides the stall figures (docs/performance.md, "Stalls"):
    with autogroup on, each session (each server here, like a terminal each) is one group, and a
    light process of its own session may wait hundreds of ms behind a busy one of another."""
    try:
        on = AUTOGROUP.read_text().strip() == "1"
    except OSError:
        return "kernel: no autogroup scheduling"
    return f"kernel: autogroup scheduling {'on' if on else 'off'} (sysctl kernel.sched_autogroup_enabled)"


PARTS = [
    "throughput",
    "metrics",
    "auth",
    "batching",
    "lag",
    "joiner",
    "stalls",
    "disk",
    "sites",
    "restart",
    "soak",
]
DEFAULT_PARTS = PARTS[:-3]  # sites cuts a bridge for a minute; restart fills a million keys; soak: minutes
ALONE = {"sites", "soak"}
"""Parts that start every process they need: the shared servers are not started for them."""
BROKER_ONLY = {"stalls", "restart"}
"""Parts that need the shared broker only: its servers are not started for them alone."""


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.2)
    parser.add_argument("--only", choices=PARTS, action="append", help="run only this part (repeatable)")
    parser.add_argument(
        "--trim-versions", type=int, default=200_000, help="versions of the key the stall part trims"
    )
    parser.add_argument(
        "--loop-cpu",
        action="store_true",
        help="run the stall part's servers under scripts/bench_loop_cpu.py (asyncio's loop): the longest"
        " turn of each server's loop, in CPU ms, during each call",
    )
    args = parser.parse_args()
    parts = args.only or DEFAULT_PARTS
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kvs-bench-") as work:
        bench = Bench(args.rounds, args.seconds, Path(work), args.trim_versions, args.loop_cpu)
        try:
            if set(parts) - ALONE:
                bench.start(broker_only=not set(parts) - ALONE - BROKER_ONLY)
            for part in parts:
                getattr(bench, part)()
        finally:
            bench.stop()
    report(bench)
    print(scheduling())
    print(f"bench took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
