"""Per-snapshot survey results cached by content hash: a re-run redoes only what is missing.

Where: ``--cache DIR``; by default ``$XDG_CACHE_HOME/memdesc/fleet`` (``~/.cache/memdesc/fleet``
when XDG_CACHE_HOME is unset), on the machine that runs ``memdesc fleet survey`` (the client:
workers never read or write it, so a remote cluster needs no shared cache folder). Entries are
written atomically as each result arrives, so an interrupted run keeps every finished snapshot.
``--no-cache`` neither reads nor writes it; deleting the folder is always safe.

Layout::

    DIR/results/RR/RESULT.json   one machine summary (nothing about the path it was found at)
    DIR/paths/PP/PATHKEY         the content hash of a snapshot folder as last seen

* content hash = sha256 over the snapshot's input files (ingest.snapshot.input_files: name,
  size and bytes of each, in name order), so a copy of a snapshot elsewhere is a hit;
* RESULT = sha256(recipe, content hash); the recipe is the memdesc version, the summary layout
  version, the bytes of every memdesc source file a summary depends on (all but cli/ and the
  renderers in report/) and of the descriptor table: any change to them misses every entry
  rather than reuse a stale one;
* PATHKEY = sha256(recipe, real path, (name, size, mtime_ns, ctime_ns, inode) of each input
  file): an unchanged folder is recognised from its directory entries without reading it.

Failures are never cached: a snapshot that failed is tried again on the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import memdesc
from memdesc import __version__
from memdesc.analysis.fleet import SUMMARY_VERSION
from memdesc.atomic import atomic_file
from memdesc.errors import InputError
from memdesc.ingest.kpagefile import open_file, permission
from memdesc.ingest.snapshot import input_files

_BLOCK = 1 << 20
#: The one report module a summary is made from (survey_dict); other report and cli modules
#: only render summaries, so changing them does not invalidate the cache.
SURVEY_REPORT = ("report/json_out.py",)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "memdesc" / "fleet"


def recipe(descriptor_path: str | os.PathLike) -> str:
    """What a cached result depends on besides the snapshot (see the module docstring)."""
    h = hashlib.sha256(f"memdesc {__version__}; summary {SUMMARY_VERSION}".encode())
    package = Path(memdesc.__file__).parent
    for p in sorted(package.rglob("*.py")):
        rel = p.relative_to(package).as_posix()
        if rel.startswith("cli/") or (rel.startswith("report/") and rel not in SURVEY_REPORT):
            continue
        h.update(rel.encode() + b"\0" + p.read_bytes())
    h.update(Path(descriptor_path).read_bytes())
    return h.hexdigest()


def _hash_file(h, path: Path) -> None:
    with open_file(path) as f:
        while block := f.read(_BLOCK):
            h.update(block)


def content_hash(folder: str) -> str:
    """sha256 over the snapshot's input files (name, size, bytes). One-line errors."""
    h = hashlib.sha256()
    try:
        files = input_files(Path(folder))
    except OSError as e:
        raise InputError(f"{folder}: cannot list the folder: {e.strerror or e}") from None
    for p in files:
        try:
            size = p.stat().st_size
        except PermissionError:
            raise permission(p) from None
        h.update(f"{p.name}\0{size}\0".encode())
        _hash_file(h, p)
    return h.hexdigest()


def _path_key(recipe_hash: str, folder: str) -> str | None:
    h = hashlib.sha256(f"{recipe_hash}\0{os.path.realpath(folder)}".encode())
    try:
        for p in input_files(Path(folder)):
            st = p.stat()
            h.update(f"\0{p.name}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0"
                     f"{st.st_ino}".encode())
    except (OSError, InputError):
        return None
    return h.hexdigest()


class ResultCache:
    """The cache folder (``root`` None: no cache, every lookup misses, nothing is written)."""

    def __init__(self, root: Path | None, recipe_hash: str):
        self.root = root
        self.recipe = recipe_hash
        self.warned = False

    def _file(self, kind: str, key: str) -> Path:
        assert self.root is not None
        return self.root / kind / key[:2] / key

    def identify(self, folder: str) -> str:
        """The content hash of ``folder``: from the path index when its files are unchanged,
        else by reading them (and remembered). InputError when they cannot be read."""
        pkey = _path_key(self.recipe, folder) if self.root else None
        if pkey:
            with contextlib.suppress(OSError):
                known = self._file("paths", pkey).read_text().strip()
                if len(known) == 64:
                    return known
        digest = content_hash(folder)
        if pkey:
            self._write(self._file("paths", pkey), digest + "\n")
        return digest

    def result_key(self, digest: str) -> str:
        return hashlib.sha256(f"{self.recipe}\0{digest}".encode()).hexdigest()

    def get(self, digest: str) -> dict[str, Any] | None:
        if self.root is None:
            return None
        path = self._file("results", self.result_key(digest) + ".json")
        with contextlib.suppress(OSError, ValueError):
            d = json.loads(path.read_text())
            if isinstance(d, dict) and d.get("summary_version") == SUMMARY_VERSION:
                return d["summary"]
        return None

    def put(self, digest: str, summary: dict[str, Any]) -> None:
        if self.root is None:
            return
        text = json.dumps({"summary_version": SUMMARY_VERSION, "summary": summary})
        self._write(self._file("results", self.result_key(digest) + ".json"), text)

    def _write(self, path: Path, text: str) -> None:
        try:
            with atomic_file(path, "w") as f:
                f.write(text)
        except OSError as e:
            if not self.warned:
                print(f"memdesc: cannot write the fleet cache {self.root} ({e.strerror or e}); "
                      "going on without it", file=sys.stderr)
                self.warned = True
