#!/usr/bin/env bash
# One entry point for a fresh clone: creates .venv on first use, installs memdesc into it,
# then runs `memdesc ARGS...`, or the whole test suite for `./memdesc.sh test [PYTEST ARGS]`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
stamp="$venv/.installed-$(sha256sum "$here/pyproject.toml" | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
    echo "memdesc: setting up $venv (first run only)..." >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
    "$venv/bin/python" -m pip install --quiet -e "$here[test]" >&2
    touch "$stamp"
fi
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$here/.venv/numba-cache}"
if [[ "${1:-}" == "test" ]]; then
    shift
    cd "$here"
    "$venv/bin/ruff" check src tests bench
    exec "$venv/bin/python" -m pytest "$@"
fi
exec "$venv/bin/memdesc" "$@"
