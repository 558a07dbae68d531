"""Test modules share helpers through helper modules (tests/state.py, tests/strategies.py,
tests/integration/calls.py, tests/e2e/harness.py, ...), conftest.py or kvs.local, never by
importing one another (which ties unrelated tests together, and runs the imported module's
tests' set-up on import)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_no_test_module_imports_another() -> None:
    importers = {
        str(path.relative_to(TESTS)): sorted(
            name
            for name in imported(path)
            if name.startswith("tests.") and name.rpartition(".")[2].startswith("test_")
        )
        for path in sorted(TESTS.rglob("*.py"))
    }
    assert {path: names for path, names in importers.items() if names} == {}
