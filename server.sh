#!/usr/bin/env bash
# Runs one kvs server: ./server.sh [--porta 40000] [--broker HOST:PORT] [--cluster kvs] [--id ID] [--data-dir DIR [--fsync]]
# (sets kvs up first if needed; ./server.sh -h lists every flag).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Set up unless done: the stamps compile.sh writes last, not .venv, which an interrupted set-up leaves.
[[ -f $here/kvs/_gen/.generated ]] && compgen -G "$here/.venv/.installed-*" >/dev/null || "$here/compile.sh" >&2
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" exec "$here/.venv/bin/python" -m kvs.server "$@"
