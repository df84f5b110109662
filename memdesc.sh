#!/usr/bin/env bash
# One entry point for a fresh clone: creates .venv on first use, installs memdesc into it,
# compiles the numba kernels (python -m memdesc.jit), then runs `memdesc ARGS...`, or the
# whole test suite for `./memdesc.sh test [PYTEST ARGS]`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
stamp="$venv/.installed-$(sha256sum "$here/pyproject.toml" | cut -c1-16)"
# numba's cache: memdesc keys a folder under this base by its sources (memdesc/__init__.py);
# a NUMBA_CACHE_DIR set by the user is used as given.
export MEMDESC_NUMBA_CACHE_BASE="${MEMDESC_NUMBA_CACHE_BASE:-$venv/numba-cache}"
if [[ ! -f "$stamp" ]]; then
    echo "memdesc: setting up $venv (first run only)..." >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
    "$venv/bin/python" -m pip install --quiet -e "$here[test]" >&2
    touch "$stamp"
    # compile every kernel now, with a progress line, rather than silently in the first
    # command (an interrupted or failed warm-up only means compiling on first use)
    "$venv/bin/python" -m memdesc.jit >&2 || true
fi
if [[ "${1:-}" == "test" ]]; then
    shift
    cd "$here"
    "$venv/bin/ruff" check src tests bench
    exec "$venv/bin/python" -m pytest "$@"
fi
exec "$venv/bin/memdesc" "$@"
