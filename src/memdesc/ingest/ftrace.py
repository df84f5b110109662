"""Read kernel allocation traces (kmem tracepoints) in every format people have.

``read_trace(path, lenient=False, progress=None) -> Trace`` accepts

* a recording folder (``memdesc record`` output or the fixtures' trace-* folders): the raw
  per-CPU pages in ``raw/`` decoded with ``formats/`` when both exist, else the text
  ``trace.txt[.zst]``; per-CPU ring-buffer counters (``per-cpu-stats.txt``,
  ``stats.cpuN.txt`` or ``meta.json``) become ``Trace.overruns``; ``pre-snapshot/`` becomes
  ``Trace.snapshot_dir``;
* a folder of ``trace_pipe_raw.cpuN.bin[.zst]`` files (``formats/`` beside or inside it);
* a text file (optionally ``.zst``): tracefs ``trace`` / ``trace_pipe`` output,
  ``trace-cmd report`` output or ``perf script`` output (detected from the content; one
  grammar parses all three, see :mod:`memdesc.ingest.ftrace_text`).

Events (``Trace.event_names``; the code is the index): 0 mm_page_alloc, 1 mm_page_free,
2 mm_page_free_batched, 3 mm_page_alloc_zone_locked, 4 mm_page_pcpu_drain,
5 kmem_cache_alloc, 6 kmem_cache_free, 7 kmalloc, 8 kfree. Other events are counted by name
in ``Trace.other_events``. trace_marker writes go to ``Trace.markers``.

``Trace.events`` is a dict of equally long numpy columns, in the order the kernel's ``trace``
file prints them (timestamp order, ties to the lower CPU, per-CPU order kept):

===================  =======  =====================================================  ======
column               dtype    meaning                                                absent
===================  =======  =====================================================  ======
time                 int64    ns of the trace clock (text: µs as printed, x1000)
cpu                  int16    CPU that emitted the event
pid                  int32    common_pid: the task the event ran in (text: TASK-PID   -1
                              before [CPU]; raw: the record's common_pid); 0 idle
event                int8     code above
pfn                  int64    page events; from ``pfn=``, else from ``page=``         -1
                              (vmemmap_base 0xffffea0000000000 + 64*pfn); -1 for a
                              failed mm_page_alloc (page NULL)
order                int8     page events (mm_page_free_batched: see quirks)          -1
gfp                  uint32   raw gfp flags (symbolic text mapped back with the      0
                              kernel's __print_flags table)
migratetype          int8     alloc, zone_locked, pcpu_drain                         -1
percpu_refill        int8     mm_page_alloc_zone_locked                              -1
ptr                  uint64   slab events: object address, kept raw (direct map;     0
                              pfn = (ptr - page_offset_base) >> 12 is the
                              consumer's business)
cache                int32    kmem_cache_alloc/free: index of the cache name in      -1
                              ``Trace.strings``
call_site            int32    slab events: index in ``Trace.strings`` of the call    -1
                              site: ``sym+0xoff`` in text (tracefs' ``/size`` cut),
                              ``0xaddress`` in raw pages (no symbols there)
bytes_req            int64    kmem_cache_alloc, kmalloc                              -1
bytes_alloc          int64    kmem_cache_alloc, kmalloc                              -1
dup_of_prev_free     bool     see quirks                                             False
is_null              bool     no page/object: kfree(NULL), kmem_cache_free(NULL),    False
                              failed allocations (pfn -1 / ptr 0)
===================  =======  =====================================================  ======

Quirks (counts in ``Trace.quirks``):

* ``mm_page_free_batched`` is emitted by free_unref_folios() *after* free_pages_prepare()
  already emitted ``mm_page_free`` for the same pfn with the real order, and it always prints
  order 0. A batched event whose previous page event of the same pfn is that mm_page_free
  gets ``dup_of_prev_free = True`` and the free's order: count a free once by skipping rows
  with ``dup_of_prev_free``. Batched events with no such free (lost, or before the trace)
  keep order 0, stay unflagged and are counted as ``free_batched_orphan``.
* ``kfree(NULL)`` is traced (the tracepoint fires before the NULL check): rows are kept with
  ``ptr == 0`` and ``is_null``; counted as ``kfree_null``.

Losses: ``Trace.lost`` lists :class:`LostEvents` ``(cpu, time, count, where)`` for every
loss the input reports (count -1 when unknown): ``CPU:N [LOST M EVENTS]``, ``##### CPU N
buffer started ####``, trace-cmd's ``[M EVENTS DROPPED]``, perf's ``PERF_RECORD_LOST`` and
ring-buffer pages flagged RB_MISSED_EVENTS (with the count when RB_MISSED_STORED).
``Trace.overruns`` holds per-CPU ``overrun``/``commit_overrun``/``dropped_events`` counters
when the recording saved them (``dropped_events`` -- a full buffer without overwrite -- is
reported nowhere else). ``Trace.problems()`` renders all of this as one line each.

Bad input raises :class:`memdesc.errors.InputError` naming the line (text) or the byte offset
in a CPU's file (raw); with ``lenient=True`` bad lines (raw: the rest of a bad page, or a
partial trailing page) are skipped and counted in ``Trace.skipped_lines`` with the first
places in ``skipped_where``. A text line with a gfp flag name the kernel's table lacks is a
bad line too (a recording folder's ``formats/`` supplies the traced kernel's table; else the
built-in Linux 6.18 table is used).

Other :class:`Trace` attributes: ``event_names``; ``strings`` (cache names and call sites);
``markers`` (dict: ``time`` int64 ns, ``cpu``, ``index`` = number of events before the
marker, ``text`` list of str); ``other_events`` ({name: count}); ``quirks`` ({name: count}:
free_batched_dup, free_batched_orphan, kfree_null, kmem_cache_free_null, slab_alloc_failed,
page_alloc_failed); ``source_format`` ('raw', 'tracefs-text', 'trace-cmd-report',
'perf-script'); ``header_entries`` (the text header's entries-in-buffer/entries-written);
``duration_ns`` (last minus first timestamp, markers included); ``snapshot_dir``; ``path``.
Methods: ``counts()`` (events per name), ``problems()`` (one line per loss or skip),
``lost_total()``.

Reading never builds a Python object per event: text is parsed in blocks of a few MiB by a
numba kernel over the bytes (:mod:`memdesc.ingest.ftrace_lines`); raw pages are walked by a
numba kernel (:mod:`memdesc.ingest.ftrace_raw`) over each CPU's file, streamed in chunks of
whole pages (zstd-decompressed by a background thread while the previous chunk is decoded).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import zstandard

from memdesc.errors import InputError
from memdesc.ingest.ftrace_raw import raw_files, read_raw
from memdesc.ingest.ftrace_text import read_text
from memdesc.ingest.trace_events import (
    EVENT_NAMES,
    GFP_NAMES_6_18,
    VMEMMAP_BASE,
    GfpTable,
    LostEvents,
    Trace,
    read_stats_files,
)
from memdesc.ingest.trace_format import load_formats, parse_event_format, print_flags_table

__all__ = ["EVENT_NAMES", "LostEvents", "Trace", "read_trace", "trace_input_bytes"]

TEXT_NAMES = ("trace.txt.zst", "trace.txt", "trace.zst", "trace")
SNAPSHOT_NAMES = ("pre-snapshot", "snapshot")


def _formats_dir(folder: Path) -> Path | None:
    for cand in (folder / "formats", folder.parent / "formats"):
        if (cand / "header_page").is_file():
            return cand
    return None


def _gfp_for(folder: Path | None) -> GfpTable:
    """The gfp name table of the traced kernel when its formats are at hand."""
    if folder is not None:
        fmt = folder / "kmem.mm_page_alloc.format"
        if fmt.is_file():
            table = print_flags_table(parse_event_format(fmt.read_text()).print_fmt,
                                      "gfp_flags")
            if table:
                return GfpTable(table)
    return GfpTable(GFP_NAMES_6_18)


def _resolve(path: Path) -> tuple[str, Path, Path | None, Path | None]:
    """(kind, input, formats folder, recording folder) for a user-given path."""
    if path.is_file():
        marks = ("meta.json", "formats", "per-cpu-stats.txt")
        rec = path.parent if any((path.parent / n).exists() for n in marks) else None
        return "text", path, _formats_dir(path.parent), rec
    if not path.is_dir():
        raise InputError(f"{path}: no such file or folder")
    fmt = _formats_dir(path)
    if (path / "raw").is_dir() and raw_files(path / "raw") and fmt:
        return "raw", path / "raw", fmt, path
    if raw_files(path):
        if not fmt:
            raise InputError(f"{path}: raw ring-buffer pages but no formats/ folder (with "
                             "header_page, header_event and the event format files) beside them")
        return "raw", path, fmt, path.parent if fmt == path.parent / "formats" else path
    for name in TEXT_NAMES:
        if (path / name).is_file():
            return "text", path / name, fmt, path
    raise InputError(f"{path}: neither raw/ with formats/ nor trace.txt[.zst]: not a trace "
                     "recording")


def trace_input_bytes(path: str | Path) -> int:
    """Bytes read_trace() will report through ``progress`` (decompressed where known)."""
    kind, inp, _, _ = _resolve(Path(path))
    files = list(raw_files(inp).values()) if kind == "raw" else [inp]
    total = 0
    for f in files:
        size = f.stat().st_size
        if f.suffix == ".zst":
            with open(f, "rb") as fh:
                head = fh.read(18)
            try:
                n = zstandard.frame_content_size(head)
            except zstandard.ZstdError:
                n = -1
            size = n if n > 0 else size * 5
        total += size
    return total


def _overruns(rec: Path | None) -> dict[int, dict[str, int]]:
    if rec is None:
        return {}
    out = read_stats_files(rec)
    meta = rec / "meta.json"
    if not out and meta.is_file():
        try:
            stats = json.loads(meta.read_text()).get("per_cpu_stats", {})
            out = {int(k): {kk: int(vv) for kk, vv in v.items()} for k, v in stats.items()}
        except (ValueError, AttributeError) as e:
            raise InputError(f"{meta}: unreadable meta.json ({e})") from None
    return out


#: bytes of a text trace looked at before reading it (binary input is refused)
SNIFF_BYTES = 1 << 16


def _head(path: Path) -> bytes:
    """The first SNIFF_BYTES of a text trace, decompressed when it is zstd."""
    with open(path, "rb") as fh:
        if path.suffix != ".zst":
            return fh.read(SNIFF_BYTES)
        try:
            return zstandard.ZstdDecompressor().stream_reader(fh).read(SNIFF_BYTES)
        except zstandard.ZstdError as e:
            raise InputError(f"{path}: not a valid zstd file ({e}); nothing read") from None


def check_text_input(path: Path) -> None:
    """Refuse binary data given as a text trace in one line, before any of it is echoed:
    NUL bytes, invalid UTF-8 or more than 1 % control characters in the first 64 KiB."""
    head = _head(path)
    try:
        text = head.decode()
    except UnicodeDecodeError as e:
        # a multi-byte character cut at the end of the sample is fine
        text = head[:e.start].decode() if e.start >= len(head) - 3 else None
    ctrl = 0 if text is None else sum(1 for c in text if ord(c) < 32 and c not in "\n\r\t")
    if b"\0" in head or text is None or ctrl > len(text) / 100:
        raise InputError(f"{path}: binary data, not a trace: give a recording folder, raw "
                         "per-CPU pages with formats/, or tracefs/trace-cmd/perf script text")


def read_trace(path: str | Path, lenient: bool = False,
               progress: Callable[[int], None] | None = None, *,
               vmemmap_base: int = VMEMMAP_BASE) -> Trace:
    """Read a kmem trace (text file, raw folder or recording folder) into a :class:`Trace`.

    ``progress(n)`` is called as input is consumed (``n`` bytes, see trace_input_bytes()).
    ``vmemmap_base`` is only used for text traces whose page events print ``page=`` but no
    ``pfn=`` (the default is the x86-64 base without KASLR, as on the fixtures' machine).
    """
    kind, inp, fmt, rec = _resolve(Path(path))
    if kind == "raw":
        tr = read_raw(inp, load_formats(fmt), lenient=lenient, progress=progress)
    else:
        check_text_input(inp)
        tr = read_text(inp, lenient=lenient, gfp=_gfp_for(fmt), progress=progress,
                       vmemmap_base=vmemmap_base)
    tr.path = Path(path)
    tr.overruns = _overruns(rec)
    if rec is not None:
        for name in SNAPSHOT_NAMES:
            if (rec / name).is_dir():
                tr.snapshot_dir = rec / name
                break
    return tr
