#!/usr/bin/env bash
# Runs the test suite from a fresh clone: sets up what is missing (./compile.sh --dev),
# then pytest. Extra arguments go to pytest.
#   scripts/test.sh                 the whole suite (what CI runs)
#   scripts/test.sh --fast          the fast loop: unit and integration tiers, no slow test
#   scripts/test.sh -m "not slow"   any marker expression: unit, integration, e2e, slow
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./compile.sh --dev
if [[ ${1:-} == --fast ]]; then
    shift
    set -- -m "(unit or integration) and not slow" "$@"
fi
exec .venv/bin/python -m pytest "$@"
