"""A physical-memory snapshot: the live /proc, a saved folder, or the bundled capture.

A snapshot is the three PFN-indexed u64 files the kernel exports (``/proc/kpageflags``,
``kpagecount``, ``kpagecgroup``; fs/proc/page.c) plus the /proc text files that describe zones,
free lists and slabs. :func:`open_snapshot` validates the input up front (one actionable line per
problem) and :meth:`Snapshot.chunks` streams the PFN files in bounded memory.

Folder format (what ``memdesc snapshot save`` writes, and the layout of the real captures in
shared/fixtures/snapshot-*): ``NAME.bin`` or ``NAME.bin.zst`` for the kpage files (raw
little-endian u64 per PFN, index = PFN); ``NAME.before``/``NAME.after`` (read just before / after
the kpage reads) or ``NAME.txt`` for the /proc text files; ``uname.txt`` and ``meta.json``.

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
import zstandard

from memdesc.errors import InputError, PermissionProblem

#: Default PFNs per chunk: a multiple of MAX_ORDER_NR_PAGES (1024) and of 2^18 (a 1 GiB
#: hugetlb folio), so no naturally aligned block straddles two chunks. 8 MiB per file.
CHUNK_PFNS = 1 << 20
KPAGE_FILES = ("kpageflags", "kpagecount", "kpagecgroup")
PROCFS_FILES = ("meminfo", "zoneinfo", "buddyinfo", "pagetypeinfo", "slabinfo", "iomem", "vmstat")
KPF_BYTES = 8                      # one u64 per PFN [S: fs/proc/page.c KPMSIZE]
PROC = Path("/proc")
BUNDLED_NAME = "snapshot-idle"
BUNDLED_NOTE = "surveying the bundled Linux 6.18 snapshot snapshot-idle"

_ZSTD_SKIPPABLE = range(0x184D2A50, 0x184D2A60)   # skippable-frame magic numbers [S: RFC 8878]


@dataclass
class _KpageFile:
    path: Path
    compressed: bool
    nbytes: int                    # decompressed length


@dataclass
class Snapshot:
    """One snapshot; use :func:`open_snapshot` or :func:`bundled_snapshot` to get one."""

    source: str          # "/proc" (live), the folder path, or "bundled:snapshot-idle"
    kind: str            # "live" | "folder" | "bundled"
    pfn_count: int
    kernel: str | None   # `uname -r` style release if known
    note: str | None     # one line for the user, e.g. why the bundled snapshot is used
    root: Path = field(default=PROC, repr=False)          # the folder, or /proc when live
    _kpage: dict[str, _KpageFile] = field(default_factory=dict, repr=False)
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
            readers = {n: stack.enter_context(_open_reader(self._kpage[n], start * KPF_BYTES))
                       for n in names}
            pfn = start
            while pfn < end:
                n_pfns = min(chunk_pfns, end - pfn)
                out = {}
                for n in names:
                    arr = np.empty(n_pfns, dtype="<u8")
                    _read_exact(readers[n], memoryview(arr).cast("B"), self._kpage[n], pfn)
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


# --- readers ----------------------------------------------------------------------------------

class _PreadReader:
    """Sequential reads of an uncompressed kpage file by pread: /proc needs 8-byte aligned
    offsets and counts (kpageflags_read() in fs/proc/page.c) and has no meaningful size."""

    def __init__(self, path: Path, offset: int):
        self.fd = _os_open(path)
        self.offset = offset

    def readinto(self, view: memoryview) -> int:
        n = os.preadv(self.fd, [view], self.offset)
        self.offset += n
        return n

    def close(self) -> None:
        os.close(self.fd)


@contextlib.contextmanager
def _open_reader(f: _KpageFile, offset: int) -> Iterator:
    if not f.compressed:
        reader = _PreadReader(f.path, offset)
        try:
            yield reader
        finally:
            reader.close()
        return
    with _open_file(f.path) as fh:
        try:
            stream = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
            _skip(stream, offset, f)
            yield stream
        except zstandard.ZstdError as e:
            raise _corrupt(f.path, e) from None


def _skip(stream, nbytes: int, f: _KpageFile) -> None:
    """Decompress and drop ``nbytes`` (zstd streams cannot seek)."""
    scratch = memoryview(bytearray(min(nbytes, 1 << 22) or 1))
    while nbytes:
        got = stream.readinto(scratch[:min(nbytes, len(scratch))])
        if not got:
            raise _truncated(f, f.nbytes - nbytes)
        nbytes -= got


def _read_exact(reader, view: memoryview, f: _KpageFile, pfn: int) -> None:
    """Fill ``view`` from ``reader`` or raise InputError: the file ended early or is corrupt."""
    done = 0
    try:
        while done < len(view):
            got = reader.readinto(view[done:])
            if not got:
                raise _truncated(f, pfn * KPF_BYTES + done)
            done += got
    except zstandard.ZstdError as e:
        raise _corrupt(f.path, e) from None
    except OSError as e:
        raise InputError(f"{f.path}: read failed at PFN {pfn}: {e.strerror}") from None


def _truncated(f: _KpageFile, got: int) -> InputError:
    if got % KPF_BYTES:
        return _not_whole(f.path, got)
    return InputError(f"{f.path}: ends after {got // KPF_BYTES:,} PFNs, expected "
                      f"{f.nbytes // KPF_BYTES:,}: the file is truncated; copy or capture it "
                      "again")


def _not_whole(path: Path, nbytes: int) -> InputError:
    return InputError(f"{path}: {nbytes:,} bytes is not a whole number of 8-byte PFN entries: "
                      "the file is truncated; copy or capture it again")


def _corrupt(path: Path, e: Exception) -> InputError:
    return InputError(f"{path}: corrupt zstd data ({e}); copy or capture the snapshot again")


# --- low-level file access with one-line errors ---------------------------------------------------

def _permission(path: Path) -> PermissionProblem:
    if str(path).startswith(f"{PROC}/"):
        return PermissionProblem(f"{path} is not readable (it needs root): run as root or pass "
                                 "--snapshot DIR")
    return PermissionProblem(f"{path} is not readable by this user: fix its permissions or "
                             "run as a user who may read it")


def _os_open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY)
    except PermissionError:
        raise _permission(path) from None
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None


def _open_file(path: Path):
    try:
        return open(path, "rb", buffering=0)  # noqa: SIM115 (returned to a with-statement)
    except PermissionError:
        raise _permission(path) from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder, expected a file") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except PermissionError:
        raise _permission(path) from None


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
    os.close(_os_open(Path(path)))


# --- sizes ------------------------------------------------------------------------------------

def zst_content_size(path: Path) -> int | None:
    """Decompressed size of a zstd file from its frame headers, or None when a frame does not
    record it. Walks every frame and block header (RFC 8878 §3.1) so truncation is caught
    without decompressing; raises InputError on anything that is not zstd."""
    total: int | None = 0
    with _open_file(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise InputError(f"{path}: empty file, not zstd data; copy or capture it again")
        pos = 0
        try:
            while pos < size:
                fh.seek(pos)
                head = fh.read(18)                      # the largest frame header
                magic = int.from_bytes(head[:4], "little")
                if magic in _ZSTD_SKIPPABLE:
                    pos += 8 + int.from_bytes(head[4:8], "little")
                    continue
                params = zstandard.get_frame_parameters(head)
                if params.content_size == zstandard.CONTENTSIZE_UNKNOWN:
                    total = None
                elif total is not None:
                    total += params.content_size
                pos += zstandard.frame_header_size(head)
                while True:                             # block headers: 3 bytes each
                    fh.seek(pos)
                    bh = fh.read(3)
                    if len(bh) < 3:
                        raise _corrupt(path, EOFError("the file ends inside a frame"))
                    v = int.from_bytes(bh, "little")
                    btype, bsize = (v >> 1) & 3, v >> 3
                    if btype == 3:
                        raise _corrupt(path, ValueError("reserved block type"))
                    pos += 3 + (1 if btype == 1 else bsize)
                    if v & 1:
                        break
                pos += 4 if params.has_checksum else 0
        except zstandard.ZstdError as e:
            raise _corrupt(path, e) from None
        if pos != size:
            raise _corrupt(path, EOFError("the file ends inside a frame"))
    return total


def _stream_size(path: Path) -> int:
    """Decompressed size by decompressing (bounded memory); InputError if corrupt."""
    n = 0
    buf = memoryview(bytearray(1 << 22))
    with _open_file(path) as fh:
        try:
            stream = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
            while got := stream.readinto(buf):
                n += got
        except zstandard.ZstdError as e:
            raise _corrupt(path, e) from None
    return n


def _kpage_file(path: Path) -> _KpageFile:
    compressed = path.name.endswith(".zst")
    if compressed:
        nbytes = zst_content_size(path)
        if nbytes is None:
            nbytes = _stream_size(path)
    else:
        try:
            nbytes = path.stat().st_size
        except PermissionError:
            raise _permission(path) from None
        with _open_file(path):
            pass                                        # readable?
    if nbytes % KPF_BYTES:
        raise _not_whole(path, nbytes)
    return _KpageFile(path, compressed, nbytes)


def live_pfn_count(path: str | os.PathLike = PROC / "kpageflags") -> int:
    """Number of PFNs /proc/kpageflags exposes: the kernel's get_max_dump_pfn()
    (max_pfn rounded up to a memory section, fs/proc/page.c). The file's size reads as 0, so
    find the first offset where pread returns nothing (exponential, then binary search)."""
    fd = _os_open(Path(path))
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

def _kernel_from_folder(root: Path) -> str | None:
    meta = root / "meta.json"
    if meta.is_file():
        with contextlib.suppress(ValueError, OSError):
            kernel = json.loads(meta.read_text()).get("kernel")
            if isinstance(kernel, str) and kernel:
                return kernel
    uname = root / "uname.txt"
    if uname.is_file():
        parts = _read_text(uname).split()
        if len(parts) >= 3 and parts[0] == "Linux":
            return parts[2]                             # `uname -a`
        if len(parts) == 1:
            return parts[0]                             # `uname -r`
    return None


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
        raise _permission(root) from None
    if not entries:
        raise InputError(f"snapshot folder {root} is empty; pass a folder written by "
                         "`memdesc snapshot save`")
    kpage: dict[str, _KpageFile] = {}
    for name in KPAGE_FILES:
        found = [c for c in (f"{name}.bin", f"{name}.bin.zst") if c in entries]
        if len(found) > 1:
            raise InputError(f"{root}: holds both {found[0]} and {found[1]}; keep only one "
                             "copy of the capture (delete the other)")
        if found:
            kpage[name] = _kpage_file(root / found[0])
    if "kpageflags" not in kpage:
        raise InputError(f"{root}: a snapshot needs kpageflags.bin or kpageflags.bin.zst")
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
            kpage[name] = _KpageFile(path, False, pfn_count * KPF_BYTES)
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
