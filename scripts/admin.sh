#!/usr/bin/env bash
# Inspects kvs servers' replicas: status, dump, compare (see kvs/admin/cli.py).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Set up unless done: the stamps compile.sh writes last, not .venv, which an interrupted set-up leaves.
[[ -f $here/kvs/_gen/.generated ]] && compgen -G "$here/.venv/.installed-*" >/dev/null || "$here/compile.sh" >&2
# gRPC's C core would log TLS handshake failures on stderr too; admin.py says them in one line.
export GRPC_VERBOSITY=${GRPC_VERBOSITY:-NONE}
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" exec "$here/.venv/bin/python" -m kvs.admin.cli "$@"
