#!/usr/bin/env bash
# Runs the whole test suite from a fresh clone: sets up what is missing
# (./compile.sh --dev), then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./compile.sh --dev
exec .venv/bin/python -m pytest "$@"
