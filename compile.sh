#!/usr/bin/env bash
# Sets kvs up on this machine; safe to run again (a rerun with nothing to do takes a second).
#   1. Debian packages: python3-venv if Python lacks venv, and mosquitto (the MQTT broker);
#      with --dev, chromium and chromium-driver (headless browser tests of scripts/admin.sh web).
#   2. .venv with the pinned packages of requirements.txt (--dev: requirements-dev.txt).
#   3. The Python stubs in kvs/_gen, generated from proto/.
# Usage: ./compile.sh [--dev]
#
# Any number of commands may run it at once (./server.sh, ./client.sh, scripts/*.sh all do
# when kvs is not set up): one run at a time holds the lock on .venv.lock, and a run that
# finds the work done by another does nothing. Each step's stamp is written last, after
# the step succeeded, so a set-up interrupted (Ctrl-C, kill) is completed by the next
# run: a .venv without .venv/.created is made again, and an interrupted pip install is
# done again with --force-reinstall. The quick checks of the scripts that call this one
# look at those stamps (.venv/.installed-*, kvs/_gen/.generated), never at .venv alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

req=requirements.txt
[[ ${1:-} == --dev ]] && req=requirements-dev.txt

# Next to .venv, or next to the environment it links to (worktrees sharing one).
lock=$(realpath -m .venv).lock
exec 9>>"$lock"
if ! flock -n 9; then
    echo "compile.sh: another set-up is running; waiting for it to finish" >&2
    flock 9
fi

missing=()
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || missing+=(mosquitto)
if [[ $req == requirements-dev.txt ]]; then  # the live view's browser tests (tests/e2e/test_web.py)
    command -v chromium >/dev/null || missing+=(chromium)
    command -v chromedriver >/dev/null || missing+=(chromium-driver)
fi
if ((${#missing[@]})); then
    echo "compile.sh: installing Debian packages: ${missing[*]}" >&2
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    { echo "compile.sh: kvs needs Python 3.11 or newer (python3 is $(python3 -V))" >&2; exit 1; }

# A .venv is whole once `python3 -m venv` finished (.created), or once packages were
# installed into it (.installed-*: made before .created existed).
if ! [[ -f .venv/.created ]] && ! compgen -G '.venv/.installed-*' >/dev/null; then
    if [[ -e .venv || -L .venv ]]; then
        echo "compile.sh: .venv is incomplete (an interrupted set-up): making it again" >&2
        rm -rf .venv
    else
        echo "compile.sh: creating .venv" >&2
    fi
    python3 -m venv .venv
    touch .venv/.created
fi

# Reinstall only when the requirements (or the project metadata) change.
stamp=.venv/.installed-${req%.txt}
want=$(cat requirements*.txt pyproject.toml | sha256sum | cut -c1-16)
if [[ ! -f $stamp || $(<"$stamp") != "$want" ]]; then
    rm -f "$stamp"
    again=()
    if [[ -f .venv/.installing ]]; then
        # The last install stopped part-way: a package may be half-written under a
        # complete-looking name. Install every one again.
        echo "compile.sh: completing an interrupted install" >&2
        again=(--force-reinstall)
    fi
    echo "compile.sh: installing Python packages from $req" >&2
    touch .venv/.installing
    .venv/bin/pip install -q --disable-pip-version-check "${again[@]}" -r "$req"
    .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
    echo "$want" >"$stamp.tmp"
    mv "$stamp.tmp" "$stamp"
    rm -f .venv/.installing
fi

# Regenerate the stubs when a .proto changed, into a directory of their own first: no
# command ever imports a half-written stub. The -I mapping makes the stubs import each
# other as kvs._gen.*, so they work as a package.
gen_stamp=kvs/_gen/.generated
want=$(cat proto/*.proto | sha256sum | cut -c1-16)
if [[ ! -f $gen_stamp || $(<"$gen_stamp") != "$want" ]]; then
    echo "compile.sh: generating kvs/_gen from proto/" >&2
    rm -f "$gen_stamp"
    out=$(mktemp -d kvs/_gen/.new.XXXXXX)
    trap 'rm -rf "$out"' EXIT
    PATH="$PWD/.venv/bin:$PATH" .venv/bin/python -m grpc_tools.protoc -Ikvs/_gen=proto \
        --python_out="$out" --mypy_out=quiet:"$out" --grpc_python_out="$out" --mypy_grpc_out=quiet:"$out" \
        proto/*.proto
    for file in "$out"/kvs/_gen/*; do
        mv -f "$file" kvs/_gen/
    done
    echo "$want" >"$gen_stamp.tmp"
    mv "$gen_stamp.tmp" "$gen_stamp"
fi
