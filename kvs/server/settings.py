"""The server's command line: its flags, checked, become one `Settings`.

Nothing here starts anything: `parse_args` reads the flags (and KVS_BROKER,
KVS_BROKER_PASSWORD), checks them, reads the files they name (cluster key, broker
password, TLS certificates) and returns the settings that kvs.server.main wires up.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from kvs.errors import ConfigError
from kvs.keys import load_cluster_key, read_password
from kvs.mqtt.broker import Address, BrokerAuth, private_auth
from kvs.net.tls import ServerTls, TlsError
from kvs.units import parse_duration, parse_size

DEFAULT_PORT = 40000
DEFAULT_BROKER = "localhost:1883"


@dataclass(frozen=True)
class Settings:
    """What the command line sets."""

    port: int
    listen: str
    node_id: str
    cluster: str
    broker: Address  # the first of `brokers`
    broker_is_default: bool  # no --broker, --broker-user, --broker-tls-ca: a private mosquitto may be started
    sync_interval: float
    event_loop: str  # "uvloop" or "asyncio"
    cluster_key: bytes  # 32 bytes (kvs.keys)
    broker_auth: BrokerAuth  # credentials and TLS; the private broker's own when it is used
    tls: ServerTls | None = None  # --tls-cert, --tls-key, --tls-client-ca
    metrics_port: int | None = None  # --metrics-port: serve Prometheus metrics there (kvs.metrics)
    data_dir: Path | None = None  # None: the store is in memory
    fsync: bool = False
    brokers: tuple[Address, ...] = ()
    """Every address of --broker (or KVS_BROKER), in order: the first that answers is used, and the
    next on the list once it is lost (docs/sites.md). Empty: `broker` alone."""
    quota_bytes: int | None = None  # --quota-bytes; None: the default (kvs.server.main.default_quota)
    keep_versions: int | None = None  # --keep-versions: None keeps every version
    retention_ms: int | None = None  # --retention: None keeps versions however old
    tombstone_ttl_ms: int | None = None  # --tombstone-ttl: None keeps the floors of deleted keys for ever


class _Parser(argparse.ArgumentParser):
    """A usage error is one line that names the flag (and exit 2), without the long usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def _typed(parse: Callable[[str], int]) -> Callable[[str], int]:
    """An argparse type from a parser of kvs.units: its ValueError becomes the usage error's text."""

    def typed(text: str) -> int:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return typed


def _count(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"{text!r}: must be a whole number, at least 1")
    return int(text)


def _growth_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of docs/operations.md, "Growth over time": --quota-bytes, --keep-versions, --retention,
    --tombstone-ttl."""
    growth = parser.add_argument_group("growth over time (docs/operations.md)")
    growth.add_argument(
        "--quota-bytes",
        type=_typed(parse_size),
        metavar="SIZE",
        help="refuse Put and PutAll while the store holds more keys and values than SIZE (512MB, 2GB,"
        " 1GiB; default: 1/16 of the memory, or with --data-dir 1/4 of the disk's free space)",
    )
    growth.add_argument(
        "--keep-versions",
        type=_typed(_count),
        metavar="N",
        help="each key keeps at most its N newest versions (off: every version)",
    )
    growth.add_argument(
        "--retention",
        type=_typed(parse_duration),
        metavar="DURATION",
        help="drop versions older than DURATION (90s, 15m, 24h, 7d); a key's newest stays (off)",
    )
    growth.add_argument(
        "--tombstone-ttl",
        type=_typed(parse_duration),
        metavar="DURATION",
        help="forget the floor of a deleted key once older than DURATION; a server out of touch longer"
        " drops what only it holds of that age when it returns (off: kept for ever)",
    )


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = _Parser(prog="server.py", description="Runs one kvs server.")
    parser.add_argument(
        "--porta", "--port", dest="port", type=int, default=DEFAULT_PORT, help="gRPC port (40000)"
    )
    parser.add_argument(
        "--broker",
        help=f"MQTT broker HOST:PORT, or several separated by commas, tried in order (env KVS_BROKER, "
        f"else {DEFAULT_BROKER})",
    )
    parser.add_argument(
        "--cluster", default="kvs", help="topic prefix shared by the servers of one store (kvs)"
    )
    parser.add_argument(
        "--id", dest="node_id", help="this server's id, unique in the cluster (<hostname>:<porta>)"
    )
    parser.add_argument("--listen", default="[::]", help="address to listen on ([::]: every interface)")
    parser.add_argument(
        "--sync-interval", type=float, default=5.0, help="seconds between anti-entropy rounds (5)"
    )
    parser.add_argument(
        "--event-loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="uvloop (faster, docs/performance.md) or asyncio's own",
    )
    parser.add_argument(
        "--cluster-key-file",
        type=Path,
        metavar="PATH",
        help="the cluster key: 32 bytes, mode 0600 (~/.config/kvs/<cluster>.key, created if missing)",
    )
    parser.add_argument("--broker-user", metavar="NAME", help="MQTT user name")
    parser.add_argument(
        "--broker-password-file",
        type=Path,
        metavar="PATH",
        help="file holding the MQTT password, mode 0600 (else env KVS_BROKER_PASSWORD)",
    )
    parser.add_argument(
        "--broker-tls-ca",
        type=Path,
        metavar="PATH",
        help="connect with TLS, verifying the broker with this CA",
    )
    parser.add_argument("--tls-cert", metavar="PATH", help="serve TLS only, with this PEM certificate chain")
    parser.add_argument("--tls-key", metavar="PATH", help="the PEM private key of --tls-cert")
    parser.add_argument(
        "--tls-client-ca", metavar="PATH", help="require client certificates signed by this CA (mutual TLS)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="keep the store on disk in DIR (created if missing), not in memory",
    )
    parser.add_argument(
        "--fsync",
        action="store_true",
        help="with --data-dir: fsync each group commit (survives a power loss)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on http://LISTEN:PORT/metrics (off)",
    )
    _growth_flags(parser)
    args = parser.parse_args(argv)
    if args.fsync and args.data_dir is None:
        parser.error("--fsync needs --data-dir")
    if not 0 <= args.port <= 65535:
        parser.error(f"--porta must be between 0 and 65535, not {args.port}")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        parser.error(f"--metrics-port must be between 0 and 65535, not {args.metrics_port}")
    node_id = args.node_id or f"{socket.gethostname()}:{args.port}"
    for name, value in (("--cluster", args.cluster), ("--id", node_id)):
        if not value or any(c in value for c in "/+#\0"):
            parser.error(f"{name} must be non-empty without '/', '+', '#' or NUL (got {value!r})")
    if args.sync_interval <= 0:
        parser.error("--sync-interval must be positive")
    text = args.broker or os.environ.get("KVS_BROKER") or DEFAULT_BROKER
    try:
        brokers = parse_brokers(text)
    except ValueError as error:
        parser.error(str(error))
    broker = brokers[0]
    if args.broker_password_file and not args.broker_user:
        parser.error("--broker-password-file needs --broker-user")
    broker_is_default = args.broker is None and args.broker_user is None and args.broker_tls_ca is None
    broker_is_default = broker_is_default and len(brokers) == 1  # a list names brokers of yours
    tls = None
    if args.tls_cert or args.tls_key or args.tls_client_ca:
        if not (args.tls_cert and args.tls_key):
            parser.error("--tls-cert and --tls-key go together (and --tls-client-ca needs them)")
        try:
            tls = ServerTls.from_files(args.tls_cert, args.tls_key, args.tls_client_ca)
        except TlsError as error:
            parser.exit(1, f"server.py: error: {error}\n")
    return Settings(
        port=args.port,
        listen=args.listen,
        node_id=node_id,
        cluster=args.cluster,
        broker=broker,
        broker_is_default=broker_is_default,
        sync_interval=args.sync_interval,
        event_loop=args.event_loop,
        cluster_key=load_cluster_key(args.cluster_key_file, args.cluster),
        broker_auth=_broker_auth(args, broker, broker_is_default),
        tls=tls,
        metrics_port=args.metrics_port,
        data_dir=args.data_dir,
        fsync=args.fsync,
        brokers=brokers,
        quota_bytes=args.quota_bytes,
        keep_versions=args.keep_versions,
        retention_ms=args.retention,
        tombstone_ttl_ms=args.tombstone_ttl,
    )


def parse_brokers(text: str) -> tuple[Address, ...]:
    """`HOST:PORT[,HOST:PORT...]`, in order and without repeats; ValueError when one is not an address."""
    brokers: list[Address] = []
    for part in text.split(","):
        if not part.strip():
            raise ValueError(f"not a broker address list (HOST:PORT,HOST:PORT): {text!r}")
        broker = Address.parse(part.strip())
        if broker not in brokers:
            brokers.append(broker)
    return tuple(brokers)


def _broker_auth(args: argparse.Namespace, broker: Address, broker_is_default: bool) -> BrokerAuth:
    """The flags' credentials and TLS; with none, the private broker's own when it may be used."""
    if args.broker_tls_ca is not None:
        try:  # what paho's tls_set does later, where an error would be a traceback
            ssl.create_default_context(cafile=args.broker_tls_ca)
        except OSError as error:  # ssl.SSLError included
            raise ConfigError(f"--broker-tls-ca {args.broker_tls_ca}: {error.strerror or error}") from None
    if broker_is_default and broker.local:
        return private_auth(broker.port)
    if args.broker_user is None:
        return BrokerAuth(tls_ca=args.broker_tls_ca)
    password = os.environ.get("KVS_BROKER_PASSWORD")
    if args.broker_password_file is not None:
        password = read_password(args.broker_password_file, "broker password file")
    return BrokerAuth(args.broker_user, password, args.broker_tls_ca)
