#!/usr/bin/env bash
# Sets kvs up on this machine; safe to run again (a rerun with nothing to do takes a second).
#   1. Debian packages: python3-venv if Python lacks venv, and mosquitto (the MQTT broker);
#      with --dev, chromium and chromium-driver (headless browser tests of scripts/admin.sh web).
#   2. .venv with the pinned packages of requirements.txt (--dev: requirements-dev.txt).
#   3. The Python stubs in kvs/_gen, generated from proto/.
# Usage: ./compile.sh [--dev]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

req=requirements.txt
[[ ${1:-} == --dev ]] && req=requirements-dev.txt

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
[[ -x .venv/bin/python ]] || { echo "compile.sh: creating .venv" >&2; python3 -m venv .venv; }

# Reinstall only when the requirements (or the project metadata) change.
stamp=.venv/.installed-${req%.txt}
want=$(cat requirements*.txt pyproject.toml | sha256sum | cut -c1-16)
if [[ ! -f $stamp || $(<"$stamp") != "$want" ]]; then
    echo "compile.sh: installing Python packages from $req" >&2
    .venv/bin/pip install -q --disable-pip-version-check -r "$req"
    .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
    echo "$want" >"$stamp"
fi

# Regenerate the stubs when a .proto changed. The -I mapping makes the stubs
# import each other as kvs._gen.*, so they work as a package.
gen_stamp=kvs/_gen/.generated
want=$(cat proto/*.proto | sha256sum | cut -c1-16)
if [[ ! -f $gen_stamp || $(<"$gen_stamp") != "$want" ]]; then
    echo "compile.sh: generating kvs/_gen from proto/" >&2
    PATH="$PWD/.venv/bin:$PATH" .venv/bin/python -m grpc_tools.protoc -Ikvs/_gen=proto \
        --python_out=. --mypy_out=quiet:. --grpc_python_out=. --mypy_grpc_out=quiet:. proto/*.proto
    echo "$want" >"$gen_stamp"
fi
