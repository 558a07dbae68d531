"""The layers, read from the code's own imports (kvs/__init__.py and each package's docstring).

The admin command line is a gRPC client only: it loads no replication, storage or
MQTT code. Nothing in kvs/ imports it, and scripts/ imports nothing under tests/.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ADMIN_CLI = "kvs.admin.cli"
NOT_IN_THE_ADMIN_CLI = ("kvs.replication", "kvs.storage", "kvs.mqtt", "paho")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[str]:
    """Every module `path` names in an import: `from a.b import c` names a.b and a.b.c."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def kvs_modules() -> list[Path]:
    return [path for path in sorted((ROOT / "kvs").rglob("*.py")) if "_gen" not in path.parts]


def test_the_admin_cli_loads_no_replication_storage_or_mqtt_code() -> None:
    listed = subprocess.run(
        [sys.executable, "-c", f"import sys, {ADMIN_CLI}; print('\\n'.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        timeout=60,
    ).stdout.split()
    assert ADMIN_CLI in listed
    assert [name for name in listed if under(name, NOT_IN_THE_ADMIN_CLI)] == []


def test_the_admin_cli_imports_no_replication_storage_or_mqtt_code_even_indirectly() -> None:
    """The same, read from the source: every kvs module the admin CLI's imports reach (packages' __init__
    included), whether or not the import runs (TYPE_CHECKING, inside a function)."""
    by_name = {module_name(path): path for path in kvs_modules()}
    reached, todo = set(), [ADMIN_CLI]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for module in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):  # its packages, then it
            if module in by_name and module not in reached:
                reached.add(module)
                todo.extend(imports(by_name[module]))
            elif under(module, NOT_IN_THE_ADMIN_CLI):
                reached.add(module)
    assert sorted(name for name in reached if under(name, NOT_IN_THE_ADMIN_CLI)) == []


def test_no_module_of_kvs_imports_the_admin_cli() -> None:
    importers = [
        str(path.relative_to(ROOT))
        for path in kvs_modules()
        if module_name(path) != ADMIN_CLI and any(under(name, (ADMIN_CLI,)) for name in imports(path))
    ]
    assert importers == []


def test_scripts_import_nothing_under_tests() -> None:
    importers = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "scripts").rglob("*.py"))
        if any(under(name, ("tests",)) for name in imports(path))
    ]
    assert importers == []
