#!/usr/bin/env bash
# The kvs command-line client: ./client.sh -h (sets kvs up first if needed).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Set up unless done: the stamps compile.sh writes last, not .venv, which an interrupted set-up leaves.
[[ -f $here/kvs/_gen/.generated ]] && compgen -G "$here/.venv/.installed-*" >/dev/null || "$here/compile.sh" >&2
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" exec "$here/.venv/bin/python" -m kvs.client "$@"
