"""Run Coccinelle (``spatch``), the kernel community's semantic matcher, with one typed rule:
``struct page *p; p->mapping|index|private|lru``, and read the positions it matches.

Used to check path-status against an independent C front end (bench/bench_path_status.py,
docs/path-status.md). spatch runs from the tree's top with its defaults (local includes only)
and ``--include-headers``, over a *file group* per candidate file: a file that mentions ``page``
and one of ``->mapping``/``->index``/``->private``/``->lru`` (spatch's own token check would
open every file of the tree first).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from memdesc.errors import MemdescError

FIELDS = ("mapping", "index", "private", "lru")

SMPL = """\
@r@
struct page *p;
position pos;
@@
(
 p@pos->mapping
|
 p@pos->index
|
 p@pos->private
|
 p@pos->lru
)

@script:python@
pos << r.pos;
@@
print("SITE:%s:%s:%s" % (pos[0].file, pos[0].line, pos[0].column))
"""

_CANDIDATE = re.compile(rb"->\s*(?:" + b"|".join(f.encode() for f in FIELDS) + rb")\b")
_SITE = re.compile(r"^SITE:(.+):(\d+):(\d+)$")


@dataclass
class SpatchRun:
    sites: Counter          # (file relative to the tree, line) -> matches
    files: int              # candidate files given to spatch
    seconds: float
    version: str


def spatch_version() -> str | None:
    """``spatch --version``'s first line, or None when Coccinelle is not installed."""
    exe = shutil.which("spatch")
    if exe is None:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else "spatch"


def candidates(root: Path, files: list[str]) -> list[str]:
    """The files spatch is run on: they mention ``page`` and a ``->field`` of the rule."""
    out = []
    for rel in files:
        with open(root / rel, "rb") as f:
            data = f.read()
        if b"page" in data and _CANDIDATE.search(data):
            out.append(rel)
    return out


def spatch_command(cocci: Path, groups: Path, jobs: int) -> list[str]:
    return ["spatch", "--sp-file", str(cocci), "--file-groups", str(groups), "-j", str(jobs),
            "--include-headers", "--very-quiet", "--no-show-diff"]


def write_inputs(folder: Path, files: list[str]) -> tuple[Path, Path]:
    """The SmPL rule and the file-group list (one group per file) in ``folder``."""
    cocci = folder / "page_fields.cocci"
    cocci.write_text(SMPL)
    groups = folder / "groups"
    groups.write_text("\n\n".join(files) + "\n")
    return cocci, groups


def parse_sites(stdout: str, root: Path) -> Counter:
    """(file relative to the tree, line) -> matches, from the rule's ``SITE:`` lines. A header
    read once per file that includes it reports its positions again: each counts once."""
    positions = set()
    for line in stdout.splitlines():
        m = _SITE.match(line.strip())
        if m:
            path = os.path.normpath(m.group(1))
            rel = os.path.relpath(path, root) if os.path.isabs(path) else path
            positions.add((rel, int(m.group(2)), int(m.group(3))))
    return Counter((f, line) for f, line, _ in positions)


def run_spatch(root: Path, files: list[str], jobs: int = 2) -> SpatchRun:
    """Run the rule over ``files`` (relative to ``root``); positions of every match."""
    version = spatch_version()
    if version is None:
        raise MemdescError("spatch not found: install Coccinelle (apt-get install coccinelle)")
    with tempfile.TemporaryDirectory(prefix="memdesc-cocci-") as tmp:
        cocci, groups = write_inputs(Path(tmp), files)
        start = time.perf_counter()
        proc = subprocess.run(spatch_command(cocci, groups, jobs), cwd=root,
                              capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
    sites = parse_sites(proc.stdout, root)
    if proc.returncode != 0 and not sites:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise MemdescError(f"spatch failed (exit {proc.returncode}): {tail[0]}")
    return SpatchRun(sites, len(files), seconds, version)
