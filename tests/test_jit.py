"""Numba compiles where the user sees it, once, into a cache keyed by the sources (issue 13)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from numba import njit

import memdesc
from memdesc import jit

PKG = Path(memdesc.__file__).parent


def test_cache_folder_is_keyed_by_kernel_sources(tmp_path, monkeypatch):
    copy = tmp_path / "memdesc"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__", "data"))
    base = memdesc.source_hash(str(copy))
    assert len(base) == 16 and int(base, 16) >= 0
    (copy / "cli" / "simulate.py").write_text("# a CLI edit keeps the kernels\n")
    (copy / "report" / "png.py").write_text("# so does a report edit\n")
    assert memdesc.source_hash(str(copy)) == base
    with open(copy / "mm" / "free_tracking.py", "a") as f:       # a helper other modules
        f.write("\nX = 1\n")                                      # inline: all recompile
    assert memdesc.source_hash(str(copy)) != base
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("MEMDESC_NUMBA_CACHE_BASE", str(tmp_path / "base"))
    assert memdesc.numba_cache_dir() == (str(tmp_path / "base" / memdesc.source_hash()), True)
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    assert memdesc.numba_cache_dir() == (str(tmp_path / "mine"), False)


def test_prune_removes_only_older_source_folders(tmp_path):
    for name in ("0123456789abcdef", "fedcba9876543210", "keep-me", "mm_c92ed1f9"):
        (tmp_path / name).mkdir()
    assert jit.prune_stale(str(tmp_path / "0123456789abcdef")) == ["fedcba9876543210"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0123456789abcdef", "keep-me",
                                                          "mm_c92ed1f9"]


SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import memdesc           # installs the notice when numba is imported
import kern
print(kern.f(41))
"""


def test_a_compile_says_so_once(tmp_path):
    (tmp_path / "kern.py").write_text("from numba import njit\n\n@njit(cache=True)\n"
                                      "def f(x):\n    return x + 1\n")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    runs = [subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env,
                           capture_output=True, text=True, timeout=120) for _ in range(2)]
    assert [r.stdout for r in runs] == ["42\n", "42\n"]
    assert "memdesc: compiling numba kernels (f, ...); first run only" in runs[0].stderr
    assert runs[1].stderr == ""                         # cached: nothing to say


def _callee(x):
    return x + 1


def test_kernels_compile_once_per_type_not_per_constant():
    jit.install_notice()
    ours = njit(_callee)
    ours.py_func.__module__ = "memdesc.fake"
    theirs = njit(lambda x: x + 1)

    @njit
    def caller():
        return ours(5) + ours(7) + theirs(5)

    assert caller() == 6 + 8 + 6
    assert [str(s) for s in ours.signatures] == ["(int64,)"]
    assert any("Literal" in str(s) for s in theirs.signatures)   # numba's default
