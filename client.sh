#!/usr/bin/env bash
# The kvs command-line client: ./client.sh -h (sets kvs up first if needed).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[[ -f $here/kvs/_gen/.generated && -x $here/.venv/bin/python ]] || "$here/compile.sh" >&2
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" exec "$here/.venv/bin/python" -m kvs.client "$@"
