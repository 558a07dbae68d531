"""`./server.sh` and `./client.sh` as a person uses them (docs/contract.md, "The command line")."""

from __future__ import annotations

import re
import signal

import pytest

from kvs.local.processes import reserve_port, wait_for
from tests.e2e.conftest import Processes
from tests.e2e.harness import KvsServer, run_client

VERSION = re.compile(r"version (\d{13}) \(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC\)")


@pytest.fixture
def server(processes: Processes) -> KvsServer:
    return processes.server("s1")


def test_put_then_get_prints_the_value_and_its_version(server: KvsServer) -> None:
    put = server.client("put", "--chave", "abc", "--valor", "zyx").stdout
    assert put.startswith('"abc" written at version ')
    assert put.rstrip().endswith("; new key")
    written = VERSION.search(put)
    assert written
    got = server.client("get", "--chave", "abc").stdout
    assert got == f'"abc" = "zyx" at {written.group(0)}\n'


def test_json_prints_one_object_per_reply(server: KvsServer) -> None:
    [put] = server.client_json("put", "--chave", "k", "--valor", "v1")
    assert put.keys() == {"key", "old_val", "old_ver", "ver"}
    [again] = server.client_json("put", "--chave", "k", "--valor", "v2")
    assert (again["old_val"], again["old_ver"]) == ("v1", put["ver"])
    assert server.client_json("get", "--chave", "k") == [{"key": "k", "val": "v2", "ver": again["ver"]}]
    assert server.client_json("get", "--chave", "k", "--versao", str(put["ver"])) == [
        {"key": "k", "val": "v1", "ver": put["ver"]}
    ]
    assert server.client_json("get", "--chave", "nope") == [{"key": "nope", "val": "", "ver": 0}]


def test_every_operation_from_the_command_line(server: KvsServer) -> None:
    written = server.client_json("putall", "--chave", "a", "b", "c", "d", "--valor", "1", "2", "3", "4")
    assert [w["key"] for w in written] == ["a", "b", "c", "d"]
    first = int(str(written[0]["ver"]))
    replies = server.client_json("getrange", "--chave", "b", "c")
    assert [(r["key"], r["val"]) for r in replies] == [("b", "2"), ("c", "3")]
    replies = server.client_json("getall", "--chave", "d", "zz", "a", "--versao", str(first - 1), "0", "0")
    assert replies == [
        {"key": "d", "val": "", "ver": first - 1},
        {"key": "zz", "val": "", "ver": 0},
        {"key": "a", "val": "", "ver": first - 1},
    ]
    server.client("put", "--chave", "a", "--valor", "1b")
    assert server.client_json("trim", "--chave", "a")[0]["val"] == "1b"
    assert server.client_json("del", "--chave", "a")[0]["val"] == "1b"
    assert [r["key"] for r in server.client_json("delrange", "--chave", "b", "c")] == ["b", "c"]
    assert [r["ver"] != 0 for r in server.client_json("delall", "--chave", "d", "a")] == [True, False]
    assert server.client_json("getrange", "--chave", "a", "z") == []


def test_readable_lines_for_not_found_and_nothing_at_that_version(server: KvsServer) -> None:
    assert server.client("get", "--chave", "nope").stdout == '"nope" not found\n'
    server.client("put", "--chave", "k", "--valor", "v")
    assert (
        server.client("get", "--chave", "k", "--versao", "5").stdout == '"k" has no version at or before 5\n'
    )


INT64_MIN, INT64_MAX, YEAR_9999 = -(2**63), 2**63 - 1, 253402300799999


def test_reads_at_every_int64_version_from_the_command_line(server: KvsServer) -> None:
    """A read version is only a bound (docs/contract.md, "Keys, values, versions")."""
    [first] = server.client_json("put", "--chave", "k", "--valor", "one")
    [second] = server.client_json("put", "--chave", "k", "--valor", "two")
    newest = {"key": "k", "val": "two", "ver": second["ver"]}
    for at in (INT64_MIN, -1, 0, YEAR_9999, YEAR_9999 + 1, INT64_MAX):
        assert server.client_json("get", "--chave", "k", "--versao", str(at)) == [newest], at
    assert server.client_json("get", "--chave", "k", "--versao", "1") == [{"key": "k", "val": "", "ver": 1}]
    assert server.client_json("get", "--chave", "k", "--versao", str(first["ver"])) == [
        {"key": "k", "val": "one", "ver": first["ver"]}
    ]
    assert server.client("get", "--chave", "k", "--versao", str(INT64_MAX)).stdout.startswith(
        f'"k" = "two" at version {second["ver"]} ('
    )
    assert server.client_json("get", "--chave", "nope", "--versao", str(INT64_MAX)) == [
        {"key": "nope", "val": "", "ver": 0}
    ]
    assert server.client("get", "--chave", "nope", "--versao", str(INT64_MAX)).stdout == '"nope" not found\n'
    for versions in (["1", str(INT64_MAX)], [str(INT64_MAX), "1"], [str(INT64_MIN), str(YEAR_9999 + 1)]):
        assert server.client_json("getrange", "--chave", "a", "z", "--versao", *versions) == [newest], (
            versions
        )
    assert server.client_json("getrange", "--chave", "a", "z", "--versao", str(INT64_MIN), "1") == [
        {"key": "k", "val": "", "ver": 1}
    ]
    # GetAll: every key at the largest version of the stream, here the last one.
    assert server.client_json(
        "getall", "--chave", "k", "nope", "k", "--versao", "1", "0", str(INT64_MAX)
    ) == [
        newest,
        {"key": "nope", "val": "", "ver": 0},
        newest,
    ]
    assert server.client_json("getall", "--chave", "k", "nope", "--versao", "1", "-1") == [
        {"key": "k", "val": "", "ver": 1},
        {"key": "nope", "val": "", "ver": 0},
    ]


def test_separators_and_unicode_survive_the_command_line(server: KvsServer) -> None:
    key, value = 'a,b;c"d (e) f', "line one\nline two — ação 键 🙂"
    server.client("put", "--chave", key, "--valor", value)
    assert server.client_json("get", "--chave", key)[0]["val"] == value
    assert server.client("get", "--chave", key).stdout.startswith(
        '"a,b;c\\"d (e) f" = "line one\\nline two — ação 键 🙂" at version '
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["get", "--chave", "a", "b"], "get takes exactly one --chave (got 2)"),
        (["getrange", "--chave", "a"], "getrange takes two --chave"),
        (["put", "--chave", "a"], "put takes one --valor per --chave"),
        (["putall", "--chave", "a", "b", "--valor", "1"], "putall takes one --valor per --chave"),
        (["put", "--chave", "a", "--valor", "1", "--versao", "5"], "put takes no --versao"),
        (["getall", "--chave", "a", "b", "--versao", "1"], "one --versao per --chave or none"),
        (["get", "--chave", "a", "--valor", "x"], "get takes no --valor"),
        (["get", "--chave", "a", "--versao", "x"], "invalid int value"),
        (["get", "--chave", "a", "--versao", str(2**63)], "signed 64-bit"),
        (["bogus", "--chave", "a"], "invalid choice"),
        (["get"], "--chave"),
    ],
)
def test_usage_errors_exit_2_and_say_what_is_expected(args: list[str], message: str) -> None:
    done = run_client(*args, check=False)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_help_shows_the_seed_usage_lines() -> None:
    out = run_client("-h").stdout
    assert out.startswith(
        "usage: client.py [-h] [--porta [PORTA]] --chave CHAVE [CHAVE ...] [--valor VALOR [VALOR ...]] "
        "[--versao VERSAO [VERSAO ...]]\n"
        "                 {get,getrange,getall,put,putall,del,delrange,delall,trim}\n"
    )
    for option in ("--porta", "--chave", "--valor", "--versao", "--host", "--json", "--timeout", "--tls-ca"):
        assert option in out


def test_help_is_the_seed_help_word_for_word() -> None:
    lines = [line.strip() for line in run_client("-h").stdout.splitlines()]
    assert "Cliente de acesso ao sistema de armazenamento Chave-Valor Versionado." in lines
    for option, text in [
        ("", "Operação a ser realizada."),
        ("--porta [PORTA]", "Porta do servidor para conexão."),
        ("", "Chave(s) na(s) qual(is) a operação será aplicada."),
        ("", "Novo(s) Valor(es) para a(s) chave(s) especificada(s)."),
        ("", "Versão(ões) da(s) chave(s) especificada(s) que se deseja."),
    ]:
        # Short options share the line with their help; long ones have it on the next line.
        assert any(line == text or line.split() == [*option.split(), *text.split()] for line in lines), text


def test_an_unreachable_server_is_one_line_and_exit_1() -> None:
    with reserve_port() as port:  # nothing listens on it
        done = run_client(
            "--porta", str(port.port), "--host", "127.0.0.1", "get", "--chave", "k", check=False
        )
    assert done.returncode == 1
    assert done.stderr.startswith("client.py: error: cannot reach a kvs server at 127.0.0.1:")
    assert done.stderr.count("\n") == 1
    assert done.stdout == ""


def test_a_server_refusal_is_one_line_and_exit_1(server: KvsServer) -> None:
    done = server.client("getrange", "--chave", "z", "a", check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("client.py: error: INVALID_ARGUMENT: range is reversed")
    done = server.client("put", "--chave", "", "--valor", "v", check=False)
    assert (done.returncode, done.stderr) == (
        1,
        "client.py: error: INVALID_ARGUMENT: key must not be empty\n",
    )


def test_a_second_server_on_a_taken_port_says_so_and_exits(processes: Processes, server: KvsServer) -> None:
    second = processes.server("s2", port=server.port, wait=False)
    wait_for("the second server to exit", lambda: not second.running())
    assert second.stop() != 0
    assert "is the port in use?" in second.log()
    assert server.client("get", "--chave", "k").returncode == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_server_stops_cleanly_on_a_signal(server: KvsServer, sig: signal.Signals) -> None:
    assert server.stop(sig) == 0
    log = server.log()
    assert "listening on 127.0.0.1:" in log
    assert "shutting down" in log
    assert "Traceback" not in log
