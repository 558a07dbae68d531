#!/usr/bin/env bash
# The kvs benchmark (scripts/bench.py; docs/performance.md): sets kvs up first if needed
# (./compile.sh --dev), then runs it in .venv. Arguments go to scripts/bench.py.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$here/compile.sh" --dev >&2
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" exec "$here/.venv/bin/python" "$here/scripts/bench.py" "$@"
