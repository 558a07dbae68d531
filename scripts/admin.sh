#!/usr/bin/env bash
# Inspects kvs servers' replicas: status, dump, compare (see kvs/admin.py).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ -f $here/kvs/_gen/.generated && -x $here/.venv/bin/python ]] || "$here/compile.sh" >&2
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" exec "$here/.venv/bin/python" -m kvs.admin "$@"
