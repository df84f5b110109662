"""memdesc: the Linux memory-descriptor plan as an executable model, measured on real machines.

Importing the package points numba's on-disk cache at a folder keyed by the contents of the
modules that hold or feed numba kernels (:func:`numba_cache_dir`), so a kernel compiled from
older sources is never reused, and arranges for a one-line notice on stderr whenever a kernel
has to be compiled (``memdesc.jit``). Nothing here imports numba itself.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.util
import os
import sys

__version__ = "0.1.0"

#: Sub-packages that never define nor feed a numba kernel (data flows one way: ingest ->
#: mm/analysis -> report -> cli), so editing them keeps the compiled kernels.
NO_KERNELS = ("cli", "report")
#: Where the keyed cache folders live when neither NUMBA_CACHE_DIR nor
#: MEMDESC_NUMBA_CACHE_BASE is set: inside a virtual environment its ``numba-cache`` folder,
#: the one memdesc.sh names (so ``memdesc`` run from an activated .venv finds the kernels the
#: set-up compiled), else the user's cache folder.
DEFAULT_CACHE_BASE = (
    os.path.join(sys.prefix, "numba-cache") if sys.prefix != sys.base_prefix
    else os.path.join(os.environ.get("XDG_CACHE_HOME")
                      or os.path.join(os.path.expanduser("~"), ".cache"), "memdesc", "numba"))


def source_hash(root: str | None = None) -> str:
    """16 hex digits of SHA-256 over the path and bytes of every kernel-bearing .py file of
    the package at ``root`` (this one by default)."""
    root = root or os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel.split(os.sep)[0] in NO_KERNELS:
            dirnames[:] = []
            continue
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".py"):
                with open(os.path.join(dirpath, name), "rb") as f:
                    h.update(f"{rel}/{name}\0".encode() + f.read() + b"\0")
    return h.hexdigest()[:16]


def numba_cache_dir() -> tuple[str, bool]:
    """The numba cache folder to use and whether memdesc chose it (False: the user's
    NUMBA_CACHE_DIR, used as given)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"], False
    base = os.environ.get("MEMDESC_NUMBA_CACHE_BASE") or DEFAULT_CACHE_BASE
    return os.path.join(base, source_hash()), True


class _AfterNumbaImport(importlib.abc.MetaPathFinder):
    """Runs ``memdesc.jit.install_notice()`` right after numba is first imported, so every
    command that compiles a kernel says so, and commands that never touch numba do not pay
    for importing it."""

    def find_spec(self, name, path=None, target=None):
        if name != "numba":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_hook(module):
            exec_module(module)
            try:
                from memdesc.jit import install_notice

                install_notice()
            except Exception:  # noqa: BLE001 -- a notice must never break an import
                pass

        loader.exec_module = exec_then_hook
        return spec


def _setup() -> None:
    cache, _ = numba_cache_dir()
    os.environ["NUMBA_CACHE_DIR"] = cache
    if "numba" in sys.modules:          # imported before us: set its config too
        sys.modules["numba"].config.CACHE_DIR = cache
        from memdesc.jit import install_notice

        install_notice()
    elif not any(isinstance(f, _AfterNumbaImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterNumbaImport())


_setup()
