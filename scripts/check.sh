#!/usr/bin/env bash
# Format, lint and type checks: ruff format, ruff, mypy --strict. Clean on every commit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./compile.sh --dev >&2
.venv/bin/ruff format --check kvs tests scripts
.venv/bin/ruff check kvs tests scripts
.venv/bin/mypy
