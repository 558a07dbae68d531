"""The kvs command-line client (docs/contract.md, "The command line"), on top of kvs.Client (api.py).

Its flags and its help are the seed client's, in Portuguese, word for word:
scripts and course material written for the original client keep working.
What it prints (replies and errors) is in English, as the rest of kvs.

    ./client.sh put --chave abc --valor zyx
    ./client.sh get --chave abc [--versao V]
    ./client.sh getrange --chave FROM TO [--versao V [V]]
    ./client.sh getall --chave K1 K2 ... [--versao V1 V2 ...]
    ./client.sh putall --chave K1 K2 --valor V1 V2
    ./client.sh del|trim --chave K;  delrange --chave FROM TO;  delall --chave K1 K2 ...
    ./client.sh --tls-ca CA.pem [--tls-cert CERT.pem --tls-key KEY.pem] get --chave abc

Exit status: 0 done, 1 the server refused or could not be reached, 2 usage error.
"""

from __future__ import annotations

import os

# gRPC's C core logs TLS handshake failures on stderr by itself; this client says
# each failure in one line of its own. Set before gRPC is loaded (by kvs.client.api).
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from kvs.client.api import Client, KeyValue, KvsClientError, Status, Written
from kvs.net.tls import ClientTls, TlsError

DEFAULT_PORT = 40000
INT64 = range(-(2**63), 2**63)


@dataclass(frozen=True)
class Shape:
    """How many --chave, --valor and --versao an operation takes."""

    keys: str  # "one", "two" or "many"
    values: bool = False  # one --valor per --chave
    versions: str = "keys"  # "keys": at most one per key (one for each key with "many"); "none"


SHAPES = {
    "get": Shape("one"),
    "getrange": Shape("two"),
    "getall": Shape("many"),
    "put": Shape("one", values=True, versions="none"),
    "putall": Shape("many", values=True, versions="none"),
    "del": Shape("one"),
    "delrange": Shape("two"),
    "delall": Shape("many"),
    "trim": Shape("one"),
}


# The seed client's usage lines, kept verbatim (scripts and course material show
# them), plus two lines for the options this client added.
USAGE = (
    "client.py [-h] [--porta [PORTA]] --chave CHAVE [CHAVE ...] [--valor VALOR [VALOR ...]] "
    "[--versao VERSAO [VERSAO ...]]\n"
    "                 {get,getrange,getall,put,putall,del,delrange,delall,trim}\n"
    "                 [--host HOST] [--json] [--timeout TIMEOUT]\n"
    "                 [--tls-ca PATH] [--tls-cert PATH --tls-key PATH]"
)


def build_parser() -> argparse.ArgumentParser:
    # The seed's help text, word for word; the options kvs added say theirs in the same voice.
    # RawTextHelpFormatter: no rewrapping, so each line reads the same at any terminal width.
    parser = argparse.ArgumentParser(
        prog="client.py",
        usage=USAGE,
        description="Cliente de acesso ao sistema de armazenamento Chave-Valor Versionado.",
        epilog="Versões são milissegundos desde 1970 (época Unix) no servidor que aceitou a escrita.\n"
        "del, delrange, delall e trim aceitam --versao como get, getrange e getall, e a ignoram.",
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--porta", nargs="?", type=int, default=DEFAULT_PORT, const=DEFAULT_PORT,
                        help="Porta do servidor para conexão.")  # fmt: skip
    parser.add_argument(
        "--chave", nargs="+", required=True, help="Chave(s) na(s) qual(is) a operação será aplicada."
    )
    parser.add_argument("--valor", nargs="+", help="Novo(s) Valor(es) para a(s) chave(s) especificada(s).")
    parser.add_argument(
        "--versao", nargs="+", type=int, help="Versão(ões) da(s) chave(s) especificada(s) que se deseja."
    )
    parser.add_argument("--host", default="localhost", help="Máquina do servidor para conexão (localhost).")
    parser.add_argument(
        "--json", action="store_true", help="Imprime cada resposta como um objeto JSON por linha."
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="Segundos de espera pela resposta do servidor (10)."
    )
    parser.add_argument(
        "--tls-ca",
        metavar="PATH",
        help="Certificado (PEM) da autoridade que assina o do servidor; conecta com TLS.",
    )
    parser.add_argument(
        "--tls-cert",
        metavar="PATH",
        help="Certificado (PEM) do cliente, para servidores que exigem TLS mútuo.",
    )
    parser.add_argument("--tls-key", metavar="PATH", help="Chave privada (PEM) do certificado do cliente.")
    parser.add_argument("operation", choices=list(SHAPES), help="Operação a ser realizada.")
    return parser


def usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the counts of --chave, --valor and --versao, if anything."""
    op, shape = args.operation, SHAPES[args.operation]
    keys, values, versions = args.chave, args.valor or [], args.versao or []
    if shape.keys == "one" and len(keys) != 1:
        return f"{op} takes exactly one --chave (got {len(keys)})"
    if shape.keys == "two" and len(keys) != 2:
        return f"{op} takes two --chave, the first and the last key of the range (got {len(keys)})"
    if shape.values and len(values) != len(keys):
        return f"{op} takes one --valor per --chave (got {len(keys)} keys and {len(values)} values)"
    if not shape.values and values:
        return f"{op} takes no --valor (only put and putall do)"
    if shape.versions == "none" and versions:
        return f"{op} takes no --versao: the server chooses the version of a write"
    if shape.keys == "one" and len(versions) > 1:
        return f"{op} takes at most one --versao (got {len(versions)})"
    if shape.keys == "two" and len(versions) > 2:
        return f"{op} takes at most two --versao, one per end of the range (got {len(versions)})"
    if shape.keys == "many" and versions and len(versions) != len(keys):
        return (
            f"{op} takes one --versao per --chave or none (got {len(keys)} keys and {len(versions)} versions)"
        )
    if any(version not in INT64 for version in versions):
        return "--versao must fit in a signed 64-bit integer"
    if args.porta not in range(1, 65536):
        return f"--porta must be between 1 and 65535 (got {args.porta})"
    if (args.tls_cert is None) != (args.tls_key is None):
        return "--tls-cert and --tls-key go together (the client's certificate and its key)"
    return None


def read_version(args: argparse.Namespace) -> int | None:
    """The version a read is made at: the largest --versao given (blank ones do not count)."""
    versions: list[int] = [v for v in args.versao or [] if v > 0]
    if args.operation in ("get", "getrange", "getall") and versions:
        return max(versions)
    return None


Result = KeyValue | Written


def call(client: Client, args: argparse.Namespace) -> list[Result]:
    """Makes the call the arguments ask for (del, delrange, delall and trim ignore --versao)."""
    op, keys, at = args.operation, args.chave, read_version(args)
    if op == "get":
        return [client.get(keys[0], at)]
    if op == "getrange":
        return list(client.get_range(keys[0], keys[1], at))
    if op == "getall":
        return list(client.get_all(keys, at))
    if op == "put":
        return [client.put(keys[0], args.valor[0])]
    if op == "putall":
        return list(client.put_all(zip(keys, args.valor, strict=True)))
    if op == "del":
        return [client.delete(keys[0])]
    if op == "delrange":
        return list(client.delete_range(keys[0], keys[1]))
    if op == "delall":
        return list(client.delete_all(keys))
    return [client.trim(keys[0])]


def quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def version_text(ver: int) -> str:
    """A version and, since versions are milliseconds, the moment it names."""
    try:
        moment = datetime.fromtimestamp(ver / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    except (OverflowError, OSError, ValueError):
        return f"version {ver}"
    return f"version {ver} ({moment} UTC)"


def readable(result: Result) -> str:
    """One line a person can read; keys and values are quoted so that any text shows plainly."""
    if isinstance(result, Written):
        before = (
            "new key"
            if result.created
            else f"replaced {quoted(result.old_val)}, {version_text(result.old_ver)}"
        )
        return f"{quoted(result.key)} written at {version_text(result.ver)}; {before}"
    if result.status is Status.NO_KEY:
        return f"{quoted(result.key)} not found"
    if result.status is Status.NOT_AT_VERSION:
        return f"{quoted(result.key)} has no version at or before {result.ver}"
    return f"{quoted(result.key)} = {quoted(result.val)} at {version_text(result.ver)}"


def as_json(result: Result) -> str:
    """The reply's raw fields, as on the wire (docs/contract.md, "The interface")."""
    if isinstance(result, Written):
        fields: dict[str, object] = {
            "key": result.key, "old_val": result.old_val, "old_ver": result.old_ver, "ver": result.ver,
        }  # fmt: skip
    else:
        fields = {"key": result.key, "val": result.val, "ver": result.ver}
    return json.dumps(fields, ensure_ascii=False)


def address_of(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"{host}:{port}"


def tls_of(args: argparse.Namespace) -> ClientTls | None:
    if args.tls_ca is None and args.tls_cert is None:
        return None
    return ClientTls.from_files(args.tls_ca, args.tls_cert, args.tls_key)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = usage_problem(args)
    if problem:
        parser.error(problem)
    show = as_json if args.json else readable
    try:
        tls = tls_of(args)
        with Client(address_of(args.host, args.porta), tls=tls, timeout=args.timeout) as client:
            for result in call(client, args):
                print(show(result), flush=True)
    except KvsClientError as error:
        for result in error.partial:  # a stream that failed part-way applied these
            print(show(result), flush=True)
        print(f"client.py: error: {error}", file=sys.stderr)
        return 1
    except TlsError as error:
        print(f"client.py: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
