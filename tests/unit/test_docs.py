"""The docs against the code: flags, paths and promises that can be checked are.

- docs/operations.md's "Server flags" table names exactly the flags of the server's own
  parser (what `./server.sh -h` prints), docs/contract.md's client table those of
  `./client.sh -h`, and every `./server.sh`, `./client.sh` or
  `scripts/admin.sh` command in the docs (in a code block or a code span) uses only that
  program's flags;
- every other `--flag` in README.md and docs/*.md belongs to some parser of kvs or
  scripts/, or to a named outside tool;
- every file path the docs name (`kvs/...`, `tests/...`, `scripts/...`, `proto/...`,
  `docs/...`) exists, and every dotted name (`kvs.storage.store`, `kvs.Client`) that the
  docs or the comments and docstrings of kvs/ name can be imported;
- no doc says a feature is "coming", "not built" or true only "as of this version":
  docs say what the code does now;
- docs/operations.md's metrics table names exactly the metrics a server exposes, and
  README.md's table of docs points to every page of docs/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import io
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from kvs.client.cli import build_parser as client_parser
from kvs.metrics import Metrics, StoreCollector
from kvs.storage.store import Stats

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
PATH = re.compile(r"(?<![\w./-])(?:kvs|tests|scripts|proto|docs)/[\w./-]*\w")
DOTTED = re.compile(r"(?<![\w./-])kvs(?:\.[A-Za-z_]\w*)+")
FILE_NAMES = {"kvs.sqlite", "kvs.proto"}  # DIR/kvs.sqlite, proto/kvs.proto
UNBUILT = re.compile(r"\bcoming\b|as of this version|not (?:yet )?built|to be confirmed", re.IGNORECASE)

OUTSIDE_FLAGS = {
    "--dev": "compile.sh (a shell script: the packages of the tests and checks too)",
    "--fast": "scripts/test.sh (a shell script: the unit and integration tiers, no slow test)",
    "--strict": "mypy",
    "--gil": "py-spy",
    "--system": "useradd",
    "--home-dir": "useradd",
    "--shell": "useradd",
    "--now": "systemctl enable",
}


class _Caught(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def caught_parser(run: Callable[[], object]) -> argparse.ArgumentParser:
    """The parser `run` builds, taken at the moment it parses (nothing after it runs)."""

    def grab(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> NoReturn:
        raise _Caught(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_known_args", grab)
        try:
            run()
        except _Caught as caught:
            return caught.parser
    raise AssertionError(f"{run} parsed no arguments")


def flags_of(parser: argparse.ArgumentParser) -> set[str]:
    """The parser's long options, its subcommands' included."""
    flags = {option for action in parser._actions for option in action.option_strings}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= flags_of(sub)
    return {flag for flag in flags if flag.startswith("--") and flag != "--help"}


def server_flags() -> set[str]:
    # Wherever the server's parse_args lives (kvs.server.settings now), kvs.server.main uses it.
    try:
        from kvs.server.settings import parse_args  # noqa: PLC0415
    except ImportError:
        from kvs.server.main import parse_args  # type: ignore[attr-defined, unused-ignore]  # noqa: PLC0415
    return flags_of(caught_parser(lambda: parse_args([])))


def admin_flags() -> set[str]:
    from kvs.admin.cli import main  # noqa: PLC0415

    return flags_of(caught_parser(lambda: main(["status"])))


def source_flags() -> set[str]:
    """Every "--flag" string literal in kvs/ and scripts/: the other parsers (bench.py and its helpers)."""
    found: set[str] = set()
    for path in [*ROOT.joinpath("kvs").rglob("*.py"), *ROOT.joinpath("scripts").glob("*.py")]:
        found.update(re.findall(r"[\"'](--[a-z][a-z0-9-]*)[\"']", path.read_text()))
    return found


def doc_lines() -> Iterator[tuple[Path, int, str]]:
    """Each doc's lines, a shell line continued with a backslash joined to the next."""
    for doc in DOCS:
        pending, start = "", 0
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            if not pending:
                start = number
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            yield doc, start, pending + line
            pending = ""


def command_texts() -> Iterator[tuple[Path, int, str]]:
    """What may hold a command: each line of a fenced block, and each `code span` of prose."""
    fenced = False
    for doc, number, line in doc_lines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced:
            yield doc, number, line
        else:
            for span in re.findall(r"`([^`]+)`", line):
                yield doc, number, span


def where(doc: Path, number: int) -> str:
    return f"{doc.relative_to(ROOT)}:{number}"


def flag_table(doc: str, heading: str) -> set[str]:
    """The flags in the first column of the tables under `heading` (up to the next heading)."""
    text = (ROOT / "docs" / doc).read_text()
    assert f"\n{heading}\n" in text, f'docs/{doc} has no "{heading}" section'
    section = re.split(r"\n#+ ", text.split(f"\n{heading}\n", 1)[1], maxsplit=1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `--")]
    return {flag for row in rows for flag in FLAG.findall(row.split("|")[1])}


def operations_flag_table() -> set[str]:
    return flag_table("operations.md", "## Server flags")


def test_the_operations_table_names_every_server_flag_and_no_other() -> None:
    documented, parsed = operations_flag_table(), server_flags()
    assert not parsed - documented, f"server flags missing from docs/operations.md: {parsed - documented}"
    assert not documented - parsed, f"docs/operations.md names flags the server lacks: {documented - parsed}"


def test_the_contract_table_names_every_client_flag_and_no_other() -> None:
    documented, parsed = flag_table("contract.md", "## The command line"), flags_of(client_parser())
    assert documented == parsed, f"docs/contract.md lacks {parsed - documented}, names {documented - parsed}"


def commands(line: str, program: str) -> Iterator[list[str]]:
    """The flags of each `program` command on a line, up to a comment or the next command."""
    for match in re.finditer(rf"(?<![\w-]){re.escape(program)}\b", line):
        rest = re.split(r"\s#|&&|\|\||;|\|", line[match.end() :], maxsplit=1)[0]
        yield FLAG.findall(rest)


def test_command_lines_in_the_docs_use_only_their_programs_flags() -> None:
    programs = {
        "server.sh": server_flags(),
        "client.sh": flags_of(client_parser()),
        "admin.sh": admin_flags(),
    }
    wrong = [
        f"{where(doc, number)}: {program} has no {flag}"
        for doc, number, line in command_texts()
        for program, known in programs.items()
        for flags in commands(line, program)
        for flag in flags
        if flag not in known
    ]
    assert not wrong, "\n".join(wrong)


def test_every_flag_the_docs_name_belongs_to_some_program() -> None:
    known = server_flags() | flags_of(client_parser()) | admin_flags() | source_flags() | set(OUTSIDE_FLAGS)
    unknown = [
        f"{where(doc, number)}: {flag}"
        for doc, number, line in doc_lines()
        for flag in FLAG.findall(line)
        if flag not in known
    ]
    assert not unknown, "flags no parser has:\n" + "\n".join(unknown)


def test_every_path_the_docs_name_exists() -> None:
    missing = [
        f"{where(doc, number)}: {path}"
        for doc, number, line in doc_lines()
        for path in PATH.findall(line)
        if not (ROOT / path).exists() and not path.startswith("kvs/_gen/")  # made by ./compile.sh
    ]
    assert not missing, "\n".join(missing)


def test_no_doc_promises_what_is_not_built() -> None:
    said = [
        f"{where(doc, number)}: {line.strip()}" for doc, number, line in doc_lines() if UNBUILT.search(line)
    ]
    assert not said, "say what the code does now:\n" + "\n".join(said)


def test_the_server_help_is_what_the_table_was_checked_against() -> None:
    # The parser the tests read is the one `./server.sh -h` prints (kvs.server runs kvs.server.main).
    from kvs.server.main import main  # noqa: PLC0415

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["--help"])
    assert set(FLAG.findall(out.getvalue())) - {"--help"} == server_flags()


def resolves(dotted: str) -> bool:
    """Whether `dotted` is a module of kvs, or an attribute reached from the longest one."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:end]))
        except ImportError:
            continue
        for name in parts[end:]:
            if not hasattr(found, name):
                return False
            found = getattr(found, name)
        return True
    return False


def code_lines() -> Iterator[tuple[Path, int, str]]:
    """The lines of kvs/ that are not imports (where dotted names are prose: comments, docstrings)."""
    for path in sorted(ROOT.joinpath("kvs").rglob("*.py")):
        if "_gen" in path.parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.lstrip().startswith(("import ", "from ")):
                yield path, number, line


def test_every_module_the_docs_and_docstrings_name_exists() -> None:
    unknown = [
        f"{where(path, number)}: {name}"
        for path, number, line in [*doc_lines(), *code_lines()]
        for name in DOTTED.findall(line)
        if name not in FILE_NAMES and not resolves(name)
    ]
    assert not unknown, "no such module or attribute:\n" + "\n".join(unknown)


def test_the_metrics_table_names_every_metric_of_the_registry_and_no_other() -> None:
    """docs/operations.md, "The metrics": a row for each metric a server exposes (its name as
    scraped: counters end in `_total`), and none it does not."""

    async def exposed() -> set[str]:
        store = StoreCollector(lambda: Stats(0, 0, 0), asyncio.get_running_loop())  # read on the loop
        families = [*Metrics().registry.collect(), *store.describe()]
        return {m.name + ("_total" if m.type == "counter" else "") for m in families}

    text = (ROOT / "docs" / "operations.md").read_text()
    table = text.split("### The metrics", 1)[1].split("\n\n", 2)[1]
    documented = set()
    for row in table.splitlines()[2:]:
        first, *more = re.findall(r"`([\w.]+)`", row.split("|")[1])
        namespace = "_".join(first.split("_")[:2])  # `..._bytes_sent_total` after kvs_replication_...
        documented |= {first} | {f"{namespace}_{name.removeprefix('..._')}" for name in more}
    assert documented == asyncio.run(exposed())


def test_the_readme_points_to_every_doc() -> None:
    """README.md's table of docs ("Where everything else is") has a row for each docs/*.md."""
    text = (ROOT / "README.md").read_text()
    table = text.split("## Where everything else is", 1)[1].split("\n\n", 2)[1]
    linked = set(re.findall(r"^\| \[docs/([\w.-]+\.md)\]", table, re.MULTILINE))
    assert linked == {path.name for path in (ROOT / "docs").glob("*.md")}
