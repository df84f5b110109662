"""Finding the snapshots of a fleet: folders found recursively, globs, and two layouts.

* **memdesc** layout: a folder as ``memdesc snapshot save`` writes it (kpageflags.bin[.zst|.gz],
  /proc text files, uname.txt, meta.json with the workload ``label``).
* **mansi** layout, the one public fleet study of physical memory (Mansi & Swift 2024, arXiv
  2401.03523; cron script ``frag_study_cron.sh`` of mark-i-m/frag-infra): one folder per host and
  sample, ``HOST/MM-DD-YYYY-HH-MM-SS/`` holding ``kpageflags.gz`` (gzip of raw /proc/kpageflags),
  ``meminfo``, ``info`` (hostname, then ``uname -a``), ``uptime``, ``procs``, ``log``.

Each input is a folder (searched recursively: a snapshot folder is not searched further), a
glob (``dc1/*/``, ``**`` recursive), or a kpage file (its folder). Discovery reads directory
listings and the few-byte identity files (info, uname.txt, meta.json) only: the PFN files are
read by the survey, on the workers. A subfolder that cannot be listed is reported as a failure
of that folder and the rest goes on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from memdesc.errors import InputError
from memdesc.ingest.kpagefile import KPAGE_FORMS
from memdesc.ingest.snapshot import folder_host, is_snapshot_folder

#: The study's sample folder name: MM-DD-YYYY-HH-MM-SS (``date +%m-%d-%Y-%H-%M-%S``).
MANSI_SAMPLE = re.compile(r"^(\d\d)-(\d\d)-(\d{4})-(\d\d)-(\d\d)-(\d\d)$")
_GLOB_MAGIC = re.compile(r"[*?[]")


@dataclass(frozen=True)
class FleetInput:
    """One snapshot of the fleet, as found (nothing about its contents is known yet)."""

    path: str           # the snapshot folder, as found from the user's argument
    layout: str         # "memdesc" | "mansi"
    host: str           # host name (info / uname.txt; else the study's HOST folder)
    label: str          # workload label (meta.json "label"; else the folder name / host)
    taken: str | None   # capture time, ISO 8601 (UTC when the snapshot says so), None if unknown


@dataclass(frozen=True)
class Unlisted:
    """A folder met while searching that could not be read."""

    source: str
    reason: str


def _meta(root: Path) -> dict:
    with contextlib.suppress(OSError, ValueError):
        d = json.loads((root / "meta.json").read_text())
        if isinstance(d, dict):
            return d
    return {}


def _taken_from_meta(meta: dict) -> str | None:
    """Time of the first step ``snapshot save`` recorded (CLOCK_REALTIME ns), UTC."""
    steps = meta.get("steps")
    if isinstance(steps, list) and steps and isinstance(steps[0], dict):
        ns = steps[0].get("realtime_ns")
        if isinstance(ns, int):
            t = dt.datetime.fromtimestamp(ns // 10**9, dt.UTC)
            return t.strftime("%Y-%m-%dT%H:%M:%SZ")
    return None


def describe(root: Path, entries: set[str]) -> FleetInput:
    """Identity of the snapshot folder ``root`` (listing ``entries``)."""
    sample = MANSI_SAMPLE.match(root.name)
    mansi = "kpageflags.gz" in entries and (sample is not None or "info" in entries)
    host = folder_host(root) if ("info" in entries or "uname.txt" in entries) else None
    if mansi:
        host = host or root.parent.name or "?"
        taken = None
        if sample:
            mo, d, y, hh, mm, ss = sample.groups()
            taken = f"{y}-{mo}-{d}T{hh}:{mm}:{ss}"          # the machine's local time
        return FleetInput(str(root), "mansi", host, host, taken)
    meta = _meta(root) if "meta.json" in entries else {}
    label = meta.get("label") if isinstance(meta.get("label"), str) else None
    return FleetInput(str(root), "memdesc", host or "?", label or root.name or str(root),
                      _taken_from_meta(meta))


def _listing(path: Path) -> set[str]:
    return {e.name for e in os.scandir(path)}


def _key(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _walk(root: Path, found: list, failed: list, seen: set) -> None:
    """Depth-first, names sorted; symlinked folders are followed once each."""
    try:
        key = _key(root)
        if key in seen:
            return
        seen.add(key)
        entries = _listing(root)
    except PermissionError:
        failed.append(Unlisted(str(root), "folder not readable by this user: fix its "
                                          "permissions or run as a user who may read it"))
        return
    except OSError as e:
        failed.append(Unlisted(str(root), f"cannot list the folder: {e.strerror or e}"))
        return
    if is_snapshot_folder(entries):
        found.append(describe(root, entries))
        return
    for name in sorted(entries):
        sub = root / name
        if sub.is_dir():
            _walk(sub, found, failed, seen)


def _is_kpage_file(path: Path) -> bool:
    return any(path.name == f"kpageflags{ending}" for ending, _ in KPAGE_FORMS)


def _expand(arg: str) -> list[Path]:
    if _GLOB_MAGIC.search(arg):
        matches = sorted(glob.glob(arg, recursive=True))
        if not matches:
            raise InputError(f"{arg}: the pattern matches nothing")
        return [Path(m) for m in matches]
    path = Path(arg)
    if not path.exists():
        raise InputError(f"{arg} does not exist; pass snapshot folders, folders holding them, "
                         "or globs")
    return [path]


def find_snapshots(args: list[str]) -> tuple[list[FleetInput], list[Unlisted]]:
    """Every snapshot under ``args``, in argument order then sorted path order, each once.

    InputError (before any work) when an argument does not exist, a pattern matches nothing, or
    an argument holds no snapshot at all; unreadable folders found while searching come back as
    :class:`Unlisted` and the search goes on.
    """
    found: list[FleetInput] = []
    failed: list[Unlisted] = []
    seen: set = set()
    for arg in args:
        before = len(found) + len(failed)
        paths = [p.parent if p.is_file() and _is_kpage_file(p) else p for p in _expand(arg)]
        covered = all(_key(p) in seen for p in paths)     # an earlier argument holds them
        for path in paths:
            if path.is_dir():
                _walk(path, found, failed, seen)
            elif not _GLOB_MAGIC.search(arg):
                raise InputError(f"{arg} is not a folder; pass snapshot folders, folders "
                                 "holding them, or globs")
        if len(found) + len(failed) == before and not covered:
            raise InputError(f"{arg}: no snapshot found (a snapshot folder holds kpageflags.bin, "
                             "kpageflags.bin.zst, kpageflags.bin.gz or kpageflags.gz)")
    return found, failed
