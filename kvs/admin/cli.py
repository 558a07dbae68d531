"""The admin command line (`scripts/admin.sh`): a client of the servers' Admin service.

scripts/admin.sh status 40000 40001      a table: a row per server (one address: it and its peers)
scripts/admin.sh status --json 40000     the same, one JSON object per server
scripts/admin.sh dump 40000              every key's full state, one JSON line each
scripts/admin.sh compare 40000 40001     do these servers hold the same replica?
scripts/admin.sh watch 40000             the batches a server applies from its peers
scripts/admin.sh web 40000 [--port 8080] a live web page of the cluster (kvs/admin/web.py)
"""

from __future__ import annotations

import argparse
import functools
import json
import operator
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kvs._gen import replication_pb2 as pb
from kvs._gen import replication_pb2_grpc as pb_grpc
from kvs.admin.parts import joined
from kvs.client.api import KvsClientError
from kvs.limits import quoted
from kvs.net.channel import open_channel
from kvs.net.tls import ClientTls, TlsError


def dump_of(channel: grpc.Channel) -> list[pb.Fragment]:
    """Every key's full state, as the server's Dump replies (tombstones included), by key; a key
    sent in several parts (a long history) joined back into one."""
    return list(joined(pb_grpc.AdminStub(channel).Dump(pb.DumpRequest(), timeout=60)))


def as_json(fragment: pb.Fragment) -> str:
    """One line of `dump`: the key, its floor, and its [version, value] pairs."""
    versions = [[ver, val] for ver, val in zip(fragment.versions, fragment.values, strict=True)]
    return json.dumps(
        {"key": fragment.key, "floor": fragment.floor, "versions": versions}, ensure_ascii=False
    )


ADDRESS = re.compile(r"(\[[^]]+\]|[^:\[\]]+):[0-9]{1,5}")
"""HOST:PORT (or [IPv6]:PORT): a peer id of that shape is taken for its address."""


@dataclass(frozen=True)
class Server:
    """One server as `status` found it: `reply` is None when it could not be asked."""

    id: str
    address: str | None  # None: known only by an id that is not an address
    health: str  # SERVING, NOT_SERVING, or why it could not be asked
    reply: pb.StatusReply | None = None


def ask(address: str, known_as: str | None = None, tls: ClientTls | None = None) -> Server:
    """The health and Admin.Status of the server at `address`."""
    with open_channel(address, tls) as channel:
        try:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            reply = pb_grpc.AdminStub(channel).Status(pb.StatusRequest(), timeout=10)
        except grpc.RpcError as error:
            return Server(known_as or address, address, str(KvsClientError.of(error, address, tls)))
    return Server(reply.id, address, health_pb2.HealthCheckResponse.ServingStatus.Name(health.status), reply)


def survey(addresses: Sequence[str], tls: ClientTls | None = None) -> list[Server]:
    """The servers at `addresses`; given one, also the peers it has seen, when their ids are addresses."""
    servers = [ask(address, tls=tls) for address in addresses]
    first = servers[0].reply
    if len(addresses) == 1 and first is not None:
        for peer in sorted(set(first.peers) - {first.id}):
            servers.append(
                ask(peer, peer, tls)
                if ADDRESS.fullmatch(peer)
                else Server(peer, None, "id is not an address")
            )
    return servers


def fingerprint(digest: Sequence[int]) -> str:
    """A digest to compare by eye: the XOR of every bucket's hash."""
    return f"{functools.reduce(operator.xor, digest, 0):016x}"


def describe(servers: Sequence[Server], now: float) -> list[dict[str, object]]:
    """One JSON-ready record per server (None where it could not be asked)."""
    digests = [tuple(s.reply.digest) if s.reply else None for s in servers]
    answered = sum(d is not None for d in digests)
    records: list[dict[str, object]] = []
    for server, digest in zip(servers, digests, strict=True):
        reply = server.reply
        record: dict[str, object] = {"id": server.id, "address": server.address, "health": server.health}
        if reply is not None:
            record |= {
                "cluster": reply.cluster,
                "peers": list(reply.peers),
                "keys": reply.keys,
                "caught_up": reply.caught_up,
                "connected": reply.connected,
                "broker": reply.broker,
                "digest": fingerprint(reply.digest),
                # How many of the other servers that answered hold the same digest.
                "same_digest": sum(other == digest for other in digests) - 1,
                "others": answered - 1,
                "since_repair_s": round(now - reply.last_repair_ms / 1000, 1)
                if reply.last_repair_ms
                else None,
                "store_bytes": reply.store_bytes,
                "quota_bytes": reply.quota_bytes,
                "over_quota": reply.over_quota,
            }
        records.append(record)
    return records


def table(records: Sequence[dict[str, object]]) -> list[str]:
    """The records as aligned columns, one line per server."""
    rows = [
        ["id", "address", "health", "keys", "quota", "digest", "agrees", "peers", "last_repair", "broker"]
    ]
    for r in records:
        if "digest" not in r:
            rows.append([str(r["id"]), str(r["address"] or "-"), str(r["health"]), *["-"] * 7])
            continue
        same, others = r["same_digest"], r["others"]
        agrees = (
            "-" if not others else "all" if same == others else "none" if not same else f"{same}/{others}"
        )
        since = r["since_repair_s"]
        repaired = "never" if since is None else f"{since:.0f}s"
        peers = r["peers"]
        assert isinstance(peers, list)
        rows.append([str(r["id"]), str(r["address"]), str(r["health"]), str(r["keys"]), quota_cell(r)])
        broker = str(r["broker"] or "-") + ("" if r["connected"] else " (not connected)")
        rows[-1] += [str(r["digest"]), agrees, str(len(peers)), repaired, broker]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def quota_cell(record: dict[str, object]) -> str:
    """How full the store is, as a share of its quota; "OVER" while writes are refused for it."""
    size, quota = record.get("store_bytes"), record.get("quota_bytes")
    if not isinstance(size, int) or not isinstance(quota, int) or not quota:
        return "-"  # a server from before quotas
    share = f"{100 * size / quota:.0f}%"
    return f"OVER({share})" if record.get("over_quota") else share


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="admin.sh",
        description="Inspects the replicas of kvs servers.",
        epilog="status with one server also asks the peers it has seen, when their ids are HOST:PORT "
        "addresses (the default id, <hostname>:<porta>, is one).",
    )
    parser.add_argument("command", choices=["status", "dump", "compare", "watch", "web"])
    parser.add_argument("servers", nargs="*", default=["40000"], help="PORT or HOST:PORT (40000)")
    parser.add_argument("--tls-ca", metavar="PATH", help="connect with TLS, trusting this PEM CA")
    parser.add_argument("--tls-cert", metavar="PATH", help="client certificate (PEM), for mutual TLS")
    parser.add_argument("--tls-key", metavar="PATH", help="the PEM private key of --tls-cert")
    parser.add_argument("--json", action="store_true", help="status: one JSON object per server")
    parser.add_argument("--port", type=int, default=8080, help="web: the page's HTTP port (8080)")
    parser.add_argument("--listen", default="127.0.0.1", help="web: the address it listens on (127.0.0.1)")
    parser.add_argument(
        "--probe", type=float, default=0.0, metavar="SECONDS",
        help="web: write the key kvs-web-probe every SECONDS to measure replication lag (0: never)",
    )  # fmt: skip
    args = parser.parse_intermixed_args(argv)  # options before or after the servers
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    servers = [f"localhost:{server}" if server.isdigit() else server for server in args.servers]
    try:
        tls = None
        if args.tls_ca is not None or args.tls_cert is not None:
            tls = ClientTls.from_files(args.tls_ca, args.tls_cert, args.tls_key)
    except TlsError as error:
        print(f"admin.sh: error: {error}", file=sys.stderr)
        return 1
    if args.command == "web":
        from kvs.admin import web  # noqa: PLC0415 (aiohttp only for this command)

        return web.serve(servers, tls, args.port, args.listen, args.probe)
    if args.command == "status":
        records = describe(survey(servers, tls), time.time())
        if len(records) == 1 and "digest" not in records[0]:  # nothing to tabulate: say why
            print(f"admin.sh: error: {records[0]['health']}", file=sys.stderr)
            return 1
        print(
            "\n".join(json.dumps(r, ensure_ascii=False) for r in records)
            if args.json
            else "\n".join(table(records))
        )
        # 1 if a server that was asked did not answer (an id that is not an address is not asked).
        return 0 if all("digest" in r or r["address"] is None for r in records) else 1
    channels = {server: open_channel(server, tls) for server in servers}
    try:
        return run(args.command, channels)
    except CallFailed as failed:
        print(f"admin.sh: error: {KvsClientError.of(failed.error, failed.server, tls)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        for channel in channels.values():
            channel.close()


class CallFailed(Exception):
    """A call to one server failed; says which."""

    def __init__(self, server: str, error: grpc.RpcError) -> None:
        super().__init__(server)
        self.server = server
        self.error = error


def run(command: str, channels: dict[str, grpc.Channel]) -> int:
    dumps: list[list[pb.Fragment]] = []
    for server, channel in channels.items():
        try:
            if command == "dump":
                for fragment in dump_of(channel):
                    print(as_json(fragment))
            elif command == "watch":
                for applied in pb_grpc.AdminStub(channel).Watch(pb.WatchRequest()):
                    line = {"origin": applied.origin, "keys": list(applied.keys)}
                    print(json.dumps(line, ensure_ascii=False), flush=True)
                return 0  # the first server only
            else:
                dumps.append(dump_of(channel))
        except grpc.RpcError as error:
            raise CallFailed(server, error) from None
    return compare(dumps, list(channels)) if command == "compare" else 0


def differing_keys(mine: Sequence[pb.Fragment], theirs: Sequence[pb.Fragment]) -> list[str]:
    """The keys whose state (floor, versions, values) differs between two dumps, or that one lacks."""
    by_key = {fragment.key: fragment for fragment in mine}
    other = {fragment.key: fragment for fragment in theirs}
    return sorted(key for key in by_key.keys() | other.keys() if by_key.get(key) != other.get(key))


def compare(dumps: Sequence[Sequence[pb.Fragment]], servers: Sequence[str]) -> int:
    """Prints whether every dump equals the first; 0 if they all do."""
    same = True
    for server, dump in zip(servers[1:], dumps[1:], strict=True):
        differing = differing_keys(dumps[0], dump)
        if differing:
            same = False
            examples = ", ".join(quoted(key) for key in differing[:5])
            print(f"{server} differs from {servers[0]} on {len(differing)} key(s), e.g. [{examples}]")
    if same:
        print(f"identical: {len(dumps[0])} keys (tombstones included) on {', '.join(servers)}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
