#!/usr/bin/env bash
# A kvs cluster on this machine, for demos and teaching: ./scripts/cluster.sh N [--porta 40000]
# starts a private MQTT broker and N servers (127.0.0.1:40000, 40001, ...), prints their
# addresses, and stops them all on Ctrl-C (kvs/local/cluster.py; -h lists every flag).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Set up unless done: the stamps compile.sh writes last, not .venv, which an interrupted set-up leaves.
[[ -f $here/kvs/_gen/.generated ]] && compgen -G "$here/.venv/.installed-*" >/dev/null || "$here/compile.sh" >&2
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" exec "$here/.venv/bin/python" -m kvs.local "$@"
