"""A physical-memory snapshot: the live /proc, a saved folder, or the bundled capture.

A snapshot is the three PFN-indexed u64 files the kernel exports (``/proc/kpageflags``,
``kpagecount``, ``kpagecgroup``; fs/proc/page.c) plus the /proc text files that describe zones,
free lists and slabs. :func:`open_snapshot` validates the input up front (one actionable line per
problem) and :meth:`Snapshot.chunks` streams the PFN files in bounded memory.

Folder format (what ``memdesc snapshot save`` writes, and the layout of the real captures in
shared/fixtures/snapshot-*): ``NAME.bin``, ``NAME.bin.zst`` or ``NAME.bin.gz`` for the kpage
files (raw little-endian u64 per PFN, index = PFN; codecs in ingest/kpagefile.py);
``NAME.before``/``NAME.after`` (read just before / after the kpage reads) or ``NAME.txt`` for the
/proc text files; ``uname.txt`` and ``meta.json``. A sample folder of the public fleet study
(Mansi & Swift 2024, ``HOST/MM-DD-YYYY-HH-MM-SS/``) opens too: ``kpageflags.gz`` (gzip of the raw
file), ``meminfo``, and ``info`` (hostname, then ``uname -a``); it has no zoneinfo, so the survey
runs in its kpageflags-only mode and says what that weakens.

Live snapshots read /proc directly: the /proc text files are read once when the snapshot is
opened (``text(name, "before")``); ``text(name, "after")`` re-reads the file the first time it is
asked for (after the caller's kpage reads) and keeps that copy.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from memdesc.errors import InputError, PermissionProblem
from memdesc.ingest.kpagefile import (
    KPAGE_FORMS,
    KPF_BYTES,
    PROC,
    KpageFile,
    kpage_file,
    open_reader,
    os_open,
    permission,
    read_exact,
)

#: Default PFNs per chunk: a multiple of MAX_ORDER_NR_PAGES (1024) and of 2^18 (a 1 GiB
#: hugetlb folio), so no naturally aligned block straddles two chunks. 8 MiB per file.
CHUNK_PFNS = 1 << 20
KPAGE_FILES = ("kpageflags", "kpagecount", "kpagecgroup")
PROCFS_FILES = ("meminfo", "zoneinfo", "buddyinfo", "pagetypeinfo", "slabinfo", "iomem", "vmstat")
BUNDLED_NAME = "snapshot-idle"
BUNDLED_NOTE = "surveying the bundled Linux 6.18 snapshot snapshot-idle"


@dataclass
class Snapshot:
    """One snapshot; use :func:`open_snapshot` or :func:`bundled_snapshot` to get one."""

    source: str          # "/proc" (live), the folder path, or "bundled:snapshot-idle"
    kind: str            # "live" | "folder" | "bundled"
    pfn_count: int
    kernel: str | None   # `uname -r` style release if known
    note: str | None     # one line for the user, e.g. why the bundled snapshot is used
    root: Path = field(default=PROC, repr=False)          # the folder, or /proc when live
    _kpage: dict[str, KpageFile] = field(default_factory=dict, repr=False)
    _before: dict[str, str | None] = field(default_factory=dict, repr=False)   # live only
    _after: dict[str, str | None] = field(default_factory=dict, repr=False)    # live only

    @property
    def live(self) -> bool:
        return self.kind == "live"

    def has(self, name: str) -> bool:
        """Whether this snapshot holds ``name`` (a name from KPAGE_FILES or PROCFS_FILES)."""
        if name in KPAGE_FILES:
            return name in self._kpage
        if name in PROCFS_FILES:
            if self.live:
                return self.text(name) is not None
            return self._text_path(name, "before") is not None
        raise ValueError(f"unknown snapshot file {name!r}; expected one of "
                         f"{', '.join(KPAGE_FILES + PROCFS_FILES)}")

    @property
    def skipped(self) -> list[str]:
        """Names from KPAGE_FILES and PROCFS_FILES this snapshot does not hold."""
        return [n for n in KPAGE_FILES + PROCFS_FILES if not self.has(n)]

    def kpage_path(self, name: str) -> Path | None:
        """The file a kpage name is read from (None when absent)."""
        f = self._kpage.get(name)
        return f.path if f else None

    def chunks(self, names=("kpageflags",), chunk_pfns: int = CHUNK_PFNS, start_pfn: int = 0,
               end_pfn: int | None = None) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Yield ``(start_pfn, {name: uint64 array})`` over [start_pfn, end_pfn) in chunks.

        Arrays of one chunk have equal lengths; each chunk is a fresh array the caller may keep.
        Memory is bounded by ``8 * chunk_pfns`` bytes per name: files are read, or
        stream-decompressed, chunk by chunk; /proc by pread. A file that turns out truncated or
        corrupt part-way raises InputError naming it (callers write their outputs atomically).
        """
        if isinstance(names, str):
            names = (names,)
        names = tuple(names)
        for n in names:
            if n not in KPAGE_FILES:
                raise ValueError(f"{n!r} is not a kpage file ({', '.join(KPAGE_FILES)})")
            if n not in self._kpage:
                raise InputError(f"{self.source}: this snapshot has no {n}; "
                                 f"available: {', '.join(self._kpage)}")
        if chunk_pfns <= 0:
            raise ValueError(f"chunk_pfns must be positive, got {chunk_pfns}")
        end = self.pfn_count if end_pfn is None else min(end_pfn, self.pfn_count)
        if not 0 <= start_pfn <= end:
            raise ValueError(f"PFN range [{start_pfn}, {end}) is outside [0, {self.pfn_count})")
        return self._chunks(names, chunk_pfns, start_pfn, end)

    def _chunks(self, names, chunk_pfns, start, end):
        with contextlib.ExitStack() as stack:
            readers = {n: stack.enter_context(open_reader(self._kpage[n], start * KPF_BYTES))
                       for n in names}
            pfn = start
            while pfn < end:
                n_pfns = min(chunk_pfns, end - pfn)
                out = {}
                for n in names:
                    arr = np.empty(n_pfns, dtype="<u8")
                    read_exact(readers[n], memoryview(arr).cast("B"), self._kpage[n], pfn)
                    out[n] = arr
                yield pfn, out
                pfn += n_pfns

    def text(self, name: str, when: str = "before") -> str | None:
        """The text of a /proc file, or None if this snapshot does not hold it.

        For files saved as NAME.before/NAME.after, ``when`` picks one and the other is the
        fallback; then NAME.txt, then NAME. Live: "before" is the copy read at open time,
        "after" is read on first request.
        """
        if when not in ("before", "after"):
            raise ValueError(f"when must be 'before' or 'after', not {when!r}")
        if self.live:
            if name not in PROCFS_FILES:
                return None
            cache = self._before if when == "before" else self._after
            if name not in cache:
                cache[name] = read_proc_text(self.root / name)
            return cache[name]
        path = self._text_path(name, when)
        return None if path is None else _read_text(path)

    def _text_path(self, name: str, when: str) -> Path | None:
        other = "after" if when == "before" else "before"
        for candidate in (f"{name}.{when}", f"{name}.{other}", f"{name}.txt", name):
            path = self.root / candidate
            if path.is_file():
                return path
        return None


# --- text files ---------------------------------------------------------------------------------

def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except PermissionError:
        raise permission(path) from None


def read_proc_text(path: Path) -> str | None:
    """A /proc text file, or None when it is absent or this user may not read it (e.g.
    slabinfo and pagetypeinfo are root-only)."""
    try:
        return path.read_text(errors="replace")
    except (PermissionError, FileNotFoundError):
        return None


def check_readable(path: str | os.PathLike) -> None:
    """Raise PermissionProblem / InputError (one line) unless ``path`` can be opened for
    reading. Used for /proc/kpageflags before anything else is done."""
    os.close(os_open(Path(path)))


# --- sizes ------------------------------------------------------------------------------------

def live_pfn_count(path: str | os.PathLike = PROC / "kpageflags") -> int:
    """Number of PFNs /proc/kpageflags exposes: the kernel's get_max_dump_pfn()
    (max_pfn rounded up to a memory section, fs/proc/page.c). The file's size reads as 0, so
    find the first offset where pread returns nothing (exponential, then binary search)."""
    fd = os_open(Path(path))
    try:
        def readable(pfn: int) -> bool:
            return len(os.pread(fd, KPF_BYTES, pfn * KPF_BYTES)) == KPF_BYTES
        if not readable(0):
            return 0
        lo, hi = 0, 1
        while readable(hi):
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if readable(mid) else (lo, mid)
        return hi
    finally:
        os.close(fd)


# --- opening ----------------------------------------------------------------------------------

def _uname_line(root: Path) -> list[str] | None:
    """Fields of the folder's ``uname -a`` line: uname.txt (ours) or the line of ``info`` that
    starts with "Linux" (the fleet study's file: hostname, then uname -a, then dmidecode)."""
    for name in ("uname.txt", "info"):
        path = root / name
        if path.is_file():
            for line in _read_text(path).splitlines():
                parts = line.split()
                if parts and (parts[0] == "Linux" or name == "uname.txt"):
                    return parts
    return None


def _kernel_from_folder(root: Path) -> str | None:
    meta = root / "meta.json"
    if meta.is_file():
        with contextlib.suppress(ValueError, OSError):
            kernel = json.loads(meta.read_text()).get("kernel")
            if isinstance(kernel, str) and kernel:
                return kernel
    parts = _uname_line(root)
    if parts and len(parts) >= 3 and parts[0] == "Linux":
        return parts[2]                                 # `uname -a`
    if parts and len(parts) == 1:
        return parts[0]                                 # `uname -r`
    return None


def folder_host(root: Path) -> str | None:
    """The host name a snapshot folder records: the first line of the fleet study's ``info``
    (``hostname``), else the node name of ``uname -a`` (uname.txt). None when neither says."""
    info = root / "info"
    if info.is_file():
        first = next(iter(_read_text(info).split("\n")), "").strip()
        if first and not first.startswith("Linux "):
            return first
    parts = _uname_line(root)
    if parts and len(parts) >= 2 and parts[0] == "Linux":
        return parts[1]
    return None


def _kpage_candidates(name: str) -> list[tuple[str, str]]:
    return [(name + ending, codec) for ending, codec in KPAGE_FORMS]


def is_snapshot_folder(entries: set[str]) -> bool:
    """Whether a folder holding the file names ``entries`` is a snapshot (it has a kpageflags
    file in one of the forms of KPAGE_FORMS)."""
    return any(n in entries for n, _ in _kpage_candidates("kpageflags"))


def input_files(root: Path) -> list[Path]:
    """The files of a snapshot folder that opening and surveying it read (kpage files, /proc
    text files, uname.txt/info, meta.json), sorted: what a content hash of the snapshot covers.
    Nothing is validated here."""
    try:
        entries = {p.name for p in root.iterdir()}
    except PermissionError:
        raise permission(root) from None
    names = {n for k in KPAGE_FILES for n, _ in _kpage_candidates(k)}
    names |= {f"{p}{s}" for p in PROCFS_FILES for s in (".before", ".after", ".txt", "")}
    names |= {"uname.txt", "info", "meta.json"}
    return sorted(root / n for n in entries & names)


def _open_folder(root: Path, kind: str, source: str, note: str | None = None) -> Snapshot:
    if not root.exists():
        raise InputError(f"snapshot folder {root} does not exist; pass a folder written by "
                         "`memdesc snapshot save`")
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; a snapshot is a folder written by "
                         "`memdesc snapshot save`")
    try:
        entries = {p.name for p in root.iterdir()}
    except PermissionError:
        raise permission(root) from None
    if not entries:
        raise InputError(f"snapshot folder {root} is empty; pass a folder written by "
                         "`memdesc snapshot save`")
    kpage: dict[str, KpageFile] = {}
    for name in KPAGE_FILES:
        found = [(c, codec) for c, codec in _kpage_candidates(name) if c in entries]
        if len(found) > 1:
            raise InputError(f"{root}: holds both {found[0][0]} and {found[1][0]}; keep only "
                             "one copy of the capture (delete the other)")
        if found:
            kpage[name] = kpage_file(root / found[0][0], found[0][1])
    if "kpageflags" not in kpage:
        raise InputError(f"{root}: a snapshot needs kpageflags.bin, kpageflags.bin.zst, "
                         "kpageflags.bin.gz or kpageflags.gz")
    sizes = {n: f.nbytes for n, f in kpage.items()}
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{kpage[n].path.name} {s // KPF_BYTES:,}" for n, s in sizes.items())
        raise InputError(f"{root}: kpage files hold different numbers of PFNs ({listing}); "
                         "they come from different captures or one is truncated")
    pfn_count = sizes["kpageflags"] // KPF_BYTES
    if pfn_count == 0:
        raise InputError(f"{kpage['kpageflags'].path}: holds no PFNs (empty file)")
    _check_meta(root, pfn_count)
    return Snapshot(source=source, kind=kind, pfn_count=pfn_count,
                    kernel=_kernel_from_folder(root), note=note, root=root, _kpage=kpage)


def _check_meta(root: Path, pfn_count: int) -> None:
    meta = root / "meta.json"
    if not meta.is_file():
        return
    try:
        recorded = json.loads(_read_text(meta)).get("pfn_count")
    except (ValueError, AttributeError):
        raise InputError(f"{meta}: not valid JSON; copy or capture the snapshot again") from None
    if recorded is not None and recorded != pfn_count:
        raise InputError(f"{meta} records {recorded:,} PFNs but the kpage files hold "
                         f"{pfn_count:,}: the files are truncated or from another capture")


def open_live(proc: str | os.PathLike = PROC, pfn_count: int | None = None) -> Snapshot:
    """This machine, read from /proc (reading its /proc text files now, as "before").
    PermissionProblem when /proc/kpageflags is not readable (not root). ``pfn_count`` skips
    the probe when the caller has just measured it."""
    proc = Path(proc)
    flags = proc / "kpageflags"
    if not flags.exists():
        raise InputError(f"{flags} does not exist (kernel built without "
                         "CONFIG_PROC_PAGE_MONITOR): pass --snapshot DIR")
    check_readable(flags)
    if pfn_count is None:
        pfn_count = live_pfn_count(flags)
    kpage = {}
    for name in KPAGE_FILES:
        path = proc / name
        if os.access(path, os.R_OK):
            kpage[name] = KpageFile(path, "raw", pfn_count * KPF_BYTES)
    snap = Snapshot(source=str(proc), kind="live", pfn_count=pfn_count,
                    kernel=os.uname().release, note=None, root=proc, _kpage=kpage)
    for name in PROCFS_FILES:                           # the "before" copies
        snap.text(name, "before")
    return snap


def bundled_snapshot(note: str | None = None) -> Snapshot:
    """The real Linux 6.18 capture shipped inside memdesc (data/snapshot-idle)."""
    root = Path(str(resources.files("memdesc").joinpath("data", BUNDLED_NAME)))
    if not (root / "kpageflags.bin.zst").is_file():
        raise InputError(f"the bundled snapshot is missing from this installation ({root}); "
                         "reinstall memdesc")
    return _open_folder(root, "bundled", f"bundled:{BUNDLED_NAME}", note)


def open_snapshot(path: str | os.PathLike | None) -> Snapshot:
    """Open a snapshot: None = this machine if /proc/kpageflags is readable, else the bundled
    snapshot (with ``.note`` saying why); "/proc" = this machine (errors if not readable);
    "bundled" or "bundled:snapshot-idle" = the bundled one; anything else = a folder."""
    if path is None:
        try:
            return open_live()
        except PermissionProblem:
            why = "not root: /proc/kpageflags is not readable"
        except InputError:
            why = "/proc/kpageflags does not exist on this kernel"
        return bundled_snapshot(note=f"{why}; {BUNDLED_NOTE}")
    if str(path) in ("bundled", f"bundled:{BUNDLED_NAME}"):
        return bundled_snapshot()
    p = Path(path)
    if p.resolve() == PROC:
        return open_live()
    return _open_folder(p, "folder", str(p))


def open_folder(path: str | os.PathLike) -> Snapshot:
    """Open the snapshot folder ``path`` (never /proc or the bundled one, whatever its name)."""
    return _open_folder(Path(path), "folder", str(path))
