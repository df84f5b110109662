"""Read kmem traces printed as text: tracefs ``trace``/``trace_pipe``, ``trace-cmd report``
and ``perf script`` output of the same tracepoints.

The three dialects share one line grammar, parsed by a numba kernel over raw bytes in blocks
of a few MiB (no Python object per line)::

    [INSTANCE: ]TASK-PID [(TGID)] [CPU] [FLAGS] SECONDS.FRACTION: [SYSTEM:]EVENT: key=value ...
    TASK PID [CPU] SECONDS.FRACTION: SYSTEM:EVENT: key=value ...          (perf script)

plus the loss lines of each tool: ``CPU:N [LOST M EVENTS]`` (trace_pipe),
``##### CPU N buffer started ####`` (trace, overwrite mode: earlier events of CPU N were
overwritten), ``CPU:N [M EVENTS DROPPED]`` (trace-cmd) and ``PERF_RECORD_LOST lost M``
(``perf script --show-lost-events``). Markers are ``tracing_mark_write: TEXT`` (tracefs) or
``print: tracing_mark_write: TEXT`` (trace-cmd). Lines of other events are counted by name in
``Trace.other_events``. Strings (gfp, cache name, call site) are hashed in the kernel and
decoded once per distinct value.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import zstandard

from memdesc.errors import InputError
from memdesc.ingest.ftrace_lines import (
    ERRORS,
    EVENT_HASHES,
    H_ADDR,
    H_BALLOC,
    H_BREQ,
    H_DEV,
    H_ERRCODE,
    H_FLAGS,
    H_INO,
    H_LRU,
    H_MT,
    H_OFS,
    H_ORDER,
    H_PAGE,
    H_PAGE_NULL,
    H_PFN,
    H_PTR,
    H_REFILL,
    K_BAD,
    K_EVENT,
    K_LOST,
    K_MARKER,
    K_OTHER,
    KEY_HASHES,
    NROW,
    R_ADDR,
    R_BALLOC,
    R_BREQ,
    R_COUNT,
    R_CPU,
    R_CS_H,
    R_DEV,
    R_ERR,
    R_ERRCODE,
    R_EV,
    R_GFP_H,
    R_HAVE,
    R_INDEX,
    R_INO,
    R_KIND,
    R_LAST,
    R_LINE,
    R_LRU,
    R_LRU_FLAGS,
    R_MT,
    R_NAME_H,
    R_ORDER,
    R_PAGE,
    R_PFN,
    R_PID,
    R_PTR,
    R_REFILL,
    R_TIME,
    R_TXT_E,
    R_TXT_S,
    REQUIRED,
    ROW_DEFAULTS,
    fnv_rows,
    parse_block,
)
from memdesc.ingest.trace_events import (
    COLUMNS,
    PFN_EVENTS,
    STRUCT_PAGE_SIZE,
    VMEMMAP_BASE,
    GfpTable,
    LostEvents,
    StringTable,
    Trace,
    concat_columns,
    empty_columns,
    finish_trace,
)

BLOCK_BYTES = 8 << 20
#: lookup-event columns: (column, row slot, R_HAVE bit)
_LOOKUP_COLUMNS = (("dev", R_DEV, H_DEV), ("ino", R_INO, H_INO), ("index", R_INDEX, H_OFS),
                   ("last_index", R_LAST, H_OFS), ("lru", R_LRU, H_LRU),
                   ("lru_flags", R_LRU_FLAGS, H_FLAGS), ("address", R_ADDR, H_ADDR),
                   ("error_code", R_ERRCODE, H_ERRCODE))


def open_text(path: Path) -> io.BufferedReader:
    """A binary stream of the text, transparently decompressing ``.zst``."""
    fh = open(path, "rb")  # noqa: SIM115 (returned)
    if path.suffix == ".zst":
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(fh, closefd=True),
                                 buffer_size=1 << 20)
    return fh


def _blocks(stream, block_bytes: int) -> Iterator[tuple[np.ndarray, int, bool]]:
    """Yield (buffer, n_bytes_of_complete_lines, is_last) with carry-over of partial lines."""
    carry = b""
    while True:
        chunk = stream.read(block_bytes)
        data = carry + chunk if carry else chunk
        if not chunk:
            if data:
                yield np.frombuffer(data, dtype=np.uint8), len(data), True
            return
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            carry = data
            continue
        carry = data[cut:]
        yield np.frombuffer(data, dtype=np.uint8), cut, False


class _Decoder:
    """Per-distinct-string decoding shared across blocks (gfp -> int, strings -> id)."""

    def __init__(self, gfp: GfpTable, strings: StringTable, path: Path, lenient: bool):
        self.gfp, self.strings, self.path, self.lenient = gfp, strings, path, lenient
        self.cache: dict[int, dict[int, int]] = {R_GFP_H: {}, R_NAME_H: {}, R_CS_H: {}}
        self.bad_hashes: set[int] = set()

    def _decode(self, col: int, text: bytes) -> int:
        if col == R_GFP_H:
            return self.gfp.value(text)
        s = text.decode("utf-8", "replace")
        if col == R_CS_H:
            s = re.sub(r"/0x[0-9a-f]+$", "", s)     # tracefs prints sym+off/size, others sym+off
        return self.strings.id(s)

    def map(self, rows: np.ndarray, col: int, buf: np.ndarray, fill: int,
            line_of: Callable[[int], int]) -> np.ndarray:
        """Values for the hashed string column ``col`` of ``rows`` (``fill`` where absent)."""
        h = rows[:, col]
        present = rows[:, col + 1] != rows[:, col + 2]
        out = np.full(len(rows), fill, dtype=np.int64)
        if not present.any():
            return out
        uniq, first, inv = np.unique(h[present], return_index=True, return_inverse=True)
        cache = self.cache[col]
        idx = np.flatnonzero(present)
        vals = np.empty(len(uniq), dtype=np.int64)
        for j, u in enumerate(uniq.tolist()):
            v = cache.get(u)
            if v is None:
                r = rows[idx[first[j]]]
                text = buf[r[col + 1]:r[col + 2]].tobytes()
                try:
                    v = cache[u] = self._decode(col, text)
                except KeyError as e:
                    if not self.lenient:
                        raise InputError(
                            f"{self.path}: line {line_of(r[R_LINE])}: unknown gfp flag {e} in "
                            f"{text.decode(errors='replace')!r}; read the recording folder "
                            "(with formats/) or pass the traced kernel's formats") from None
                    v = -2
                    self.bad_hashes.add(u)
            vals[j] = v
        out[idx] = vals[inv]
        return out


def _columns(rows: np.ndarray, buf: np.ndarray, dec: _Decoder, line_of: Callable[[int], int],
             vmemmap_base: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Event rows -> typed columns; also a mask of rows dropped for unknown gfp names."""
    n = len(rows)
    ev = empty_columns(n)
    code = rows[:, R_EV]
    ev["time"][:] = rows[:, R_TIME]
    ev["cpu"][:] = rows[:, R_CPU]
    ev["pid"][:] = rows[:, R_PID]
    ev["event"][:] = code
    have = rows[:, R_HAVE]
    pfn = np.where(have & H_PFN, rows[:, R_PFN], -1)
    page = rows[:, R_PAGE].view(np.uint64)
    from_page = ((have & H_PFN) == 0) & ((have & H_PAGE) != 0)
    # page= is the struct page address (vmemmap_base + 64 * pfn) in tracefs text; tools that
    # cannot evaluate vmemmap_base (libtraceevent) print the pfn itself.
    in_vmemmap = page >= np.uint64(vmemmap_base)
    pfn = np.where(from_page & in_vmemmap,
                   ((page - np.uint64(vmemmap_base)) // np.uint64(STRUCT_PAGE_SIZE)).view(np.int64),
                   np.where(from_page, rows[:, R_PAGE], pfn))
    pfn = np.where((have & H_PAGE_NULL) != 0, -1, pfn)       # failed allocation: page NULL
    ev["pfn"][:] = np.where(np.isin(code, PFN_EVENTS), pfn, -1)
    ev["order"][:] = np.where(have & H_ORDER, rows[:, R_ORDER], -1)
    ev["migratetype"][:] = np.where(have & H_MT, rows[:, R_MT], -1)
    ev["percpu_refill"][:] = np.where(have & H_REFILL, rows[:, R_REFILL], -1)
    ev["ptr"][:] = np.where(have & H_PTR, rows[:, R_PTR], 0).view(np.uint64)
    ev["bytes_req"][:] = np.where(have & H_BREQ, rows[:, R_BREQ], -1)
    ev["bytes_alloc"][:] = np.where(have & H_BALLOC, rows[:, R_BALLOC], -1)
    for name, col, bit in _LOOKUP_COLUMNS:
        dt, fill = COLUMNS[name]
        val = np.where(have & bit, rows[:, col], fill)
        ev[name][:] = val.view(dt) if dt.itemsize == 8 else val.astype(dt)
    gfp = dec.map(rows, R_GFP_H, buf, 0, line_of)
    ev["cache"][:] = dec.map(rows, R_NAME_H, buf, -1, line_of)
    ev["call_site"][:] = dec.map(rows, R_CS_H, buf, -1, line_of)
    bad = gfp == -2
    ev["gfp"][:] = np.where(bad, 0, gfp)
    return ev, bad


def detect_dialect(head: bytes) -> str:
    """'tracefs-text', 'trace-cmd-report' or 'perf-script' from the first lines of a file."""
    for line in head.splitlines()[:200]:
        s = line.strip()
        if not s or s.startswith(b"#"):
            continue
        if s.startswith(b"cpus=") or s.startswith(b"version = "):
            return "trace-cmd-report"
        if re.search(rb"\]\s+\d+\.\d+:\s+[\w-]+:[\w-]+:", s):
            return "perf-script"
        if re.search(rb"\]\s", s):
            return "tracefs-text"
    return "tracefs-text"


def read_text(path: str | Path, *, lenient: bool = False, gfp: GfpTable | None = None,
              progress: Callable[[int], None] | None = None, block_bytes: int = BLOCK_BYTES,
              vmemmap_base: int = VMEMMAP_BASE) -> Trace:
    """Read a text trace (any of the three dialects, optionally ``.zst``) into a Trace.

    ``progress(n)`` is called with the number of input bytes consumed per block;
    ``vmemmap_base`` converts ``page=`` to a pfn for kernels that print no ``pfn=``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such trace file")
    gfp = gfp or GfpTable()
    strings = StringTable()
    dec = _Decoder(gfp, strings, path, lenient)
    parts: list[dict[str, np.ndarray]] = []
    markers: list[tuple[int, int, int, str]] = []
    lost_rows: list[tuple[int, int, int, int, int]] = []   # cpu, time, count, line, index
    other: dict[str, int] = {}
    skipped: list[str] = []
    n_skipped = 0
    header_entries = None
    dialect = None
    n_events = 0
    line_base = 0
    out = np.empty((0, NROW), dtype=np.int64)
    with open_text(path) as stream:
        for buf, n, is_last in _blocks(stream, block_bytes):
            if dialect is None:
                head = buf[:min(n, 1 << 16)].tobytes()
                dialect = detect_dialect(head)
                m = re.search(rb"entries-in-buffer/entries-written:\s*(\d+)/(\d+)", head)
                header_entries = (int(m[1]), int(m[2])) if m else None
            cap = int(np.count_nonzero(buf[:n] == 10)) + 1
            if len(out) < cap:
                out = np.empty((cap, NROW), dtype=np.int64)
            nrow, nlines = parse_block(buf, n, out, ROW_DEFAULTS, EVENT_HASHES, KEY_HASHES,
                                        REQUIRED)
            rows = out[:nrow]
            base = line_base

            def line_of(i: int, base: int = base) -> int:
                return base + int(i) + 1

            kind = rows[:, R_KIND]
            for r in rows[kind == K_BAD]:
                where = f"line {line_of(r[R_LINE])}"
                if is_last and r[R_LINE] == nlines - 1 and buf[n - 1] != 10:
                    msg = "truncated last line"
                else:
                    msg = ERRORS.get(int(r[R_ERR]), "unreadable line")
                if not lenient:
                    text = _line_text(buf, n, int(r[R_LINE]))
                    raise InputError(f"{path}: {where}: {msg}: {text[:160]!r} "
                                     "(use --lenient to skip bad lines)")
                n_skipped += 1
                if len(skipped) < 20:
                    skipped.append(f"{where}: {msg}")
            ordered = rows[(kind == K_EVENT) | (kind == K_MARKER)]
            is_ev = ordered[:, R_KIND] == K_EVENT
            ev_rows = ordered[is_ev]
            if len(ev_rows):
                cols, bad = _columns(ev_rows, buf, dec, line_of, vmemmap_base)
                if bad.any():                      # lenient: unknown gfp names
                    n_skipped += int(bad.sum())
                    for r in ev_rows[bad][:max(0, 20 - len(skipped))]:
                        skipped.append(f"line {line_of(r[R_LINE])}: unknown gfp flag name")
                    cols = {k: v[~bad] for k, v in cols.items()}
                    good = np.ones(len(ordered), dtype=bool)
                    good[np.flatnonzero(is_ev)[bad]] = False
                    ordered, is_ev = ordered[good], is_ev[good]
                parts.append(cols)
            # Running index of events (markers excluded) for marker and loss positions.
            ev_index = n_events + np.cumsum(is_ev) - is_ev
            for r, idx in zip(ordered[~is_ev], ev_index[~is_ev], strict=True):
                text = buf[r[R_TXT_S]:r[R_TXT_E]].tobytes().decode("utf-8", "replace").rstrip()
                markers.append((int(r[R_TIME]), int(r[R_CPU]), int(idx), text))
            # Loss lines and other events: index = events parsed before that line.
            ev_lines = ordered[is_ev][:, R_LINE]
            for r in rows[kind == K_LOST]:
                idx = n_events + int(np.searchsorted(ev_lines, r[R_LINE]))
                lost_rows.append((int(r[R_CPU]), int(r[R_TIME]), int(r[R_COUNT]),
                                  line_of(r[R_LINE]), idx))
            oth = rows[kind == K_OTHER]
            if len(oth):
                uniq, first, cnt = np.unique(fnv_rows(buf, oth[:, R_TXT_S], oth[:, R_TXT_E]),
                                             return_index=True, return_counts=True)
                for j in range(len(uniq)):
                    r = oth[first[j]]
                    name = buf[r[R_TXT_S]:r[R_TXT_E]].tobytes().decode("utf-8", "replace")
                    other[name] = other.get(name, 0) + int(cnt[j])
            n_events += int(np.count_nonzero(is_ev))
            line_base += nlines
            if progress:
                progress(n)
    events = concat_columns(parts) if parts else empty_columns(0)
    tr = Trace(events=events, strings=strings.strings, other_events=other,
               skipped_lines=n_skipped, skipped_where=skipped, source_format=dialect or "empty",
               path=path, header_entries=header_entries)
    tr.lost = _resolve_lost(lost_rows, events)
    return finish_trace(tr, markers)


def _resolve_lost(lost_rows: list[tuple[int, int, int, int, int]],
                  events: dict[str, np.ndarray]) -> list[LostEvents]:
    """A loss line without its own timestamp takes the next event of its CPU."""
    out = []
    cpu_col, time_col = events["cpu"], events["time"]
    by_cpu: dict[int, np.ndarray] = {}
    for cpu, t, count, line, idx in lost_rows:
        if t < 0:
            pos = by_cpu.get(cpu)
            if pos is None:
                pos = by_cpu[cpu] = np.flatnonzero(cpu_col == cpu)
            j = np.searchsorted(pos, idx)
            t = int(time_col[pos[j]]) if j < len(pos) else (int(time_col[-1]) if len(time_col)
                                                             else 0)
        out.append(LostEvents(cpu, t, count, f"line {line}"))
    return out


def _line_text(buf: np.ndarray, n: int, line: int) -> str:
    data = buf[:n].tobytes()
    start = 0
    for _ in range(line):
        start = data.index(b"\n", start) + 1
    end = data.find(b"\n", start)
    return data[start:end if end >= 0 else n].decode("utf-8", "replace")

