"""`scripts/cluster.sh N`: a private mosquitto and N kvs servers on this machine, for demos and teaching.

Each server listens on 127.0.0.1 (ports --porta, --porta + 1, ...; --porta 0: any free
ones) and joins one cluster over the broker, which lets in only the servers (a user
and a password made for this run). The cluster key, the broker's files and every log
go to one directory (a temporary one unless --log-dir), never to ~/.config. The
addresses are printed once every server serves; Ctrl-C (or SIGTERM) stops them all,
servers first, then the broker. If a server stops by itself, the others are stopped too
and its log is printed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from kvs.local.processes import LocalBroker, LocalServer, Process, Reservation, reserve_port

BROKER_USER = "kvs"
MAX_SERVERS = 50


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cluster.sh", description="Starts a private MQTT broker and N kvs servers on this machine."
    )
    parser.add_argument("servers", type=int, metavar="N", help=f"how many servers (1 to {MAX_SERVERS})")
    parser.add_argument(
        "--porta", "--port", dest="port", type=int, default=40000,
        help="gRPC port of the first server; the others follow (40000; 0: any free ports)",
    )  # fmt: skip
    parser.add_argument("--cluster", default="kvs", help="the cluster's name (topic prefix) (kvs)")
    parser.add_argument("--data-dir", type=Path, metavar="DIR", help="keep server i's store in DIR/s<i>")
    parser.add_argument("--log-dir", type=Path, metavar="DIR", help="keep the logs and keys in DIR (kept)")
    parser.add_argument(
        "--sync-interval", type=float, default=5.0, help="seconds between anti-entropy rounds (5)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.servers <= MAX_SERVERS:
        parser.error(f"N must be between 1 and {MAX_SERVERS}")
    if args.port and not 1 <= args.port <= 65536 - args.servers:
        parser.error("--porta: the servers' ports must lie between 1 and 65535")
    return args


class Cluster:
    """The broker and the servers of one run; `stop()` stops whatever was started."""

    def __init__(self, work: Path, cluster: str) -> None:
        self.work = work
        self.cluster = cluster
        self.started: list[Process] = []
        self.servers: list[LocalServer] = []
        self.reservations: list[Reservation] = []
        password = secrets.token_urlsafe(24)
        self.password_file = work / "broker.password"
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that exists (--log-dir kept)
        with os.fdopen(fd, "w") as file:
            file.write(password)
        self.broker = LocalBroker(work, users={BROKER_USER: password})

    def start(self, count: int, port: int, data_dir: Path | None, sync_interval: float) -> None:
        self.started.append(self.broker)
        self.broker.start()
        if port:
            ports = [port + i for i in range(count)]
        else:  # reserved until the servers are stopped
            self.reservations = [reserve_port() for _ in range(count)]
            ports = [reservation.port for reservation in self.reservations]
        for i in range(1, count + 1):
            flags = [
                "--broker", self.broker.address, "--broker-user", BROKER_USER,
                "--broker-password-file", str(self.password_file),
                "--cluster", self.cluster, "--sync-interval", str(sync_interval),
            ]  # fmt: skip
            if data_dir is not None:
                flags += ["--data-dir", str(data_dir / f"s{i}")]
            # Ids that are addresses: `scripts/admin.sh status` finds every server from one.
            at = ports[i - 1]
            server = LocalServer(self.work, f"s{i}", flags, at, node_id=f"127.0.0.1:{at}")
            self.started.append(server)
            self.servers.append(server)
            server.start()
        for server in self.servers:
            server.wait_serving(timeout=60)

    def exited(self) -> Process | None:
        """A process that stopped by itself, if any."""
        return next((process for process in self.started if not process.running()), None)

    def stop(self) -> None:
        for process in reversed(self.started):
            process.close()
        for reservation in self.reservations:
            reservation.release()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.log_dir is not None:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    work = args.log_dir or Path(tempfile.mkdtemp(prefix="kvs-cluster-"))
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    cluster = Cluster(work, args.cluster)
    failed: Process | None = None
    try:
        try:
            cluster.start(args.servers, args.port, args.data_dir, args.sync_interval)
        except AssertionError as error:  # a server exited, or did not serve in time
            failed = cluster.exited()
            print(f"cluster.sh: {error}".splitlines()[0], file=sys.stderr)
            stopping.set()
        if not stopping.is_set():
            print(
                f"broker {cluster.broker.address} (user {BROKER_USER}, password in {cluster.password_file})"
            )
            for server in cluster.servers:
                print(f"{server.name} {server.address}")
            first = cluster.servers[0]
            print(f"logs in {work}; Ctrl-C stops them all. Try:")
            print(f"  ./client.sh --porta {first.port} put --chave k --valor v")
            print(f"  scripts/admin.sh status {first.address}", flush=True)
        while not stopping.wait(0.2):
            failed = cluster.exited()
            if failed is not None:
                print(f"cluster.sh: {failed.name} stopped by itself; stopping the others", file=sys.stderr)
                break
    finally:
        cluster.stop()
    if failed is not None:
        print(f"----- log of {failed.name} -----\n{failed.log()[-5000:]}", file=sys.stderr)
    if args.log_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    print("stopped", flush=True)
    return 1 if failed is not None else 0
