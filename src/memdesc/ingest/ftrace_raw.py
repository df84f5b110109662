"""Decode per-CPU ``trace_pipe_raw`` ring-buffer pages with the tracefs format files.

A ``trace_pipe_raw`` read returns whole sub-buffers (struct buffer_data_page): a header whose
layout ``events/header_page`` gives (timestamp, commit), then ``commit`` bytes of compressed
entries whose header ``events/header_event`` describes (type_len:5, time_delta:27, array[]).
The commit word also carries RB_MISSED_EVENTS (bit 31: events were lost before this page) and
RB_MISSED_STORED (bit 30: their count is stored as a long right after the data). Entry types:
data (type_len 1..28: 4*type_len bytes of data follow; 0: the length is in array[0]),
padding (29; time_delta 0 = the rest of the page is empty), time_extend (30: add
array[0] << 27 | time_delta) and time_stamp (31: absolute 59-bit time). Each data record
starts with common_type (the event ID); its fields sit at the offsets of its ``format`` file.
"""

from __future__ import annotations

import contextlib
import queue
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zstandard
from numba import njit

from memdesc.errors import InputError
from memdesc.ingest.trace_events import (
    COLUMNS,
    EVENT_CODE,
    EVENT_NAMES,
    GFP_NAMES_6_18,
    LOOKUP_EVENTS,
    MARKER,
    LostEvents,
    StringTable,
    Trace,
    finish_trace,
    map_distinct,
)
from memdesc.ingest.trace_format import Formats, load_formats, print_flags_table

# Field slots decoded from each record (index into the per-event offset tables).
FIELDS = ("pfn", "order", "gfp_flags", "migratetype", "percpu_refill", "ptr", "call_site",
          "bytes_req", "bytes_alloc", "i_ino", "s_dev", "index", "last_index", "address", "lru",
          "flags", "error_code", "common_pid", "name", "buf")
(F_PFN, F_ORDER, F_GFP, F_MT, F_REFILL, F_PTR, F_CS, F_BREQ, F_BALLOC, F_INO, F_DEV, F_INDEX,
 F_LAST, F_ADDR, F_LRU, F_FLAGS, F_ERR, F_PID, F_NAME, F_BUF) = range(20)
#: Value when an event has no such field (mm_page_free_batched's missing order is printed 0,
#: set in RawTables).
ABSENT = (-1, -1, 0, -1, -1, 0, 0, -1, -1, 0, 0, -1, -1, 0, -1, -1, -1, -1, 0, 0)
#: The fields kept in the int64 rows of ``o_val`` (rows beyond ``o_val.shape[0]`` are not
#: written: a trace without lookup events gets the first 5 rows only), and their columns.
VAL_FIELDS = (F_PFN, F_PTR, F_CS, F_BREQ, F_BALLOC, F_INO, F_DEV, F_INDEX, F_LAST, F_ADDR,
              F_LRU, F_FLAGS, F_ERR)
VAL_COLUMNS = ("pfn", "ptr", "call_site", "bytes_req", "bytes_alloc", "ino", "dev", "index",
               "last_index", "address", "lru", "lru_flags", "error_code")
NVAL_KMEM = 5
RB_MISSED_EVENTS = 1 << 31   # [S] kernel/trace/ring_buffer.c
RB_MISSED_STORED = 1 << 30
TS_MSB_SHIFT = 59            # [S] ring_buffer.c: absolute time stamps keep 59 bits (TS_MSB)
ERRORS = {
    1: "page commit larger than the page (not trace_pipe_raw data, or corrupt)",
    2: "entry runs past the page's committed data",
    3: "record shorter than its event's fields",
}


@njit(cache=True)
def _rd(data, off, size, signed):
    """Little-endian integer of ``size`` bytes at ``off``."""
    v = np.uint64(0)
    for i in range(size):
        v |= np.uint64(data[off + i]) << np.uint64(8 * i)
    if signed and size < 8 and v >> np.uint64(8 * size - 1):
        return np.int64(v) - (np.int64(1) << np.int64(8 * size))
    return np.int64(v)


@njit(cache=True)
def _keep_text(data, s, e, key, pool, ht, st):
    """Copy ``data[s:e]`` to the text pool and return its span (start << 16 | length); with
    ``key`` != 0 only the first time that key is seen (open-addressing table ``ht`` of keys and
    spans). ``st`` holds the pool fill and an overflow flag (set: grow the pool and redo)."""
    n = min(e - s, 0xFFFF)
    slot = -1
    if key != 0:
        mask = len(ht) - 1
        slot = key & mask
        while ht[slot, 0] != 0:
            if ht[slot, 0] == key:
                return ht[slot, 1]
            slot = (slot + 1) & mask
        if 2 * (st[2] + 1) > len(ht):             # keep the table at most half full
            st[1] = 1
            return np.int64(-1)
    if st[0] + n > len(pool):
        st[1] = 1
        return np.int64(-1)
    pool[st[0]:st[0] + n] = data[s:s + n]
    span = (st[0] << 16) | n
    st[0] += n
    if slot >= 0:
        ht[slot, 0], ht[slot, 1] = key, span
        st[2] += 1
    return span


@njit(cache=True, nogil=True)
def _walk(data, page_size, hp, eh, id2code, foff, fsize, fsign, need, absent, ct_off, ct_size,
          fill, cpu, times, codes, dest, o_time, o_cpu, o_pid, o_event, o_val, o_order, o_gfp,
          o_mt, o_refill, o_key, pool, ht, st, m_span, lost, errs, others):
    """Walk every page of one CPU's file. Mirrors rb_update_read_stamp()/rb_event_length() in
    kernel/trace/ring_buffer.c.

    Pass 1 (``fill`` False) stores each known record's time and event code. Pass 2 writes
    record n's fields at row ``dest[n]`` of the output columns (markers: ``-1 - dest[n]`` in
    the marker table), so the CPUs are merged without an intermediate copy. ``o_val`` holds
    the VAL_FIELDS (its first rows); ``o_key`` the hash of the cache name, whose
    text goes to ``pool`` once per hash (:func:`_keep_text`); ``m_span`` the marker texts'
    spans in ``pool``. ``absent`` is the per-event value of fields an event lacks. ``data``
    may be any run of whole pages of the file. Returns (records, lost pages, errors).
    """
    ts_off, ts_size, c_off, c_size, d_off, d_size = hp[0], hp[1], hp[2], hp[3], hp[4], hp[5]
    tl_bits, padding, t_extend, t_stamp, dmax, td_bits = eh[0], eh[1], eh[2], eh[3], eh[4], eh[5]
    tl_mask = (1 << tl_bits) - 1
    ts_msb = np.int64(-1) << np.int64(TS_MSB_SHIFT)
    npages = len(data) // page_size
    v = np.empty(F_NAME, np.int64)        # one record's fields (scratch)
    n = 0
    nlost = 0
    nerr = 0
    for pg in range(npages):
        base = pg * page_size
        ts = _rd(data, base + ts_off, ts_size, False)
        commit = _rd(data, base + c_off, c_size, False)
        size = commit & 0x3FFFFFFF
        if size > d_size:
            if nerr < len(errs):
                errs[nerr, 0], errs[nerr, 1] = base + c_off, 1
            nerr += 1
            continue
        p = base + d_off
        end = p + size
        if commit & RB_MISSED_EVENTS:
            if fill:
                cnt = -1
                if commit & RB_MISSED_STORED and size + 8 <= d_size:
                    cnt = _rd(data, end, 8, False)
                lost[nlost, 0], lost[nlost, 1], lost[nlost, 2] = ts, cnt, base
            nlost += 1
        while p + 4 <= end:
            hdr = _rd(data, p, 4, False)
            tl = hdr & tl_mask
            delta = hdr >> tl_bits
            if tl == padding:
                if delta == 0:
                    break
                p += 4 + _rd(data, p + 4, 4, False)
                continue
            if tl == t_extend:
                ts += (_rd(data, p + 4, 4, False) << td_bits) | delta
                p += 8
                continue
            if tl == t_stamp:
                abs_ts = (_rd(data, p + 4, 4, False) << td_bits) | delta
                if ts & ts_msb:                       # mirrors rb_fix_abs_ts()
                    abs_ts |= ts & ts_msb
                    if abs_ts < ts:
                        abs_ts += np.int64(1) << np.int64(TS_MSB_SHIFT)
                ts = abs_ts
                p += 8
                continue
            if tl > dmax:
                break
            ts += delta
            if tl == 0:
                dlen = _rd(data, p + 4, 4, False) - 4
                ds = p + 8
            else:
                dlen = tl * 4
                ds = p + 4
            if dlen < ct_off + ct_size or ds + dlen > end:
                if nerr < len(errs):
                    errs[nerr, 0], errs[nerr, 1] = p, 2
                nerr += 1
                break
            etype = _rd(data, ds + ct_off, ct_size, False)
            p = ds + dlen
            code = id2code[etype] if etype < len(id2code) else -2
            if code < 0:
                if not fill:
                    others[min(etype, len(others) - 1)] += 1
                continue
            if dlen < need[code]:
                if nerr < len(errs):
                    errs[nerr, 0], errs[nerr, 1] = ds, 3
                nerr += 1
                break
            if not fill:
                times[n] = ts
                codes[n] = code
                n += 1
                continue
            d = dest[n]
            n += 1
            s = -1
            e = -1
            o = foff[code, F_NAME]
            if o >= 0:                                # __data_loc: len << 16 | offset
                loc = _rd(data, ds + o, 4, False)
                s = ds + (loc & 0xFFFF)
                e = min(s + (loc >> 16), ds + dlen)
                while e > s and data[e - 1] == 0:
                    e -= 1
            o = foff[code, F_BUF]
            if o >= 0:                                # char buf[]: NUL-terminated
                s = ds + o
                e = s
                while e < ds + dlen and data[e] != 0:
                    e += 1
            key = np.int64(0)
            if d < 0:                                 # a marker
                m_span[-1 - d] = _keep_text(data, s, e, key, pool, ht, st) if s >= 0 else -1
                continue
            if s >= 0:
                h = np.uint64(0xCBF29CE484222325)
                for i in range(s, e):
                    h = (h ^ np.uint64(data[i])) * np.uint64(0x100000001B3)
                key = np.int64(h) | 1                 # never 0 (the table's empty slot)
                _keep_text(data, s, e, key, pool, ht, st)
            for f in range(F_NAME):
                o = foff[code, f]
                v[f] = (_rd(data, ds + o, fsize[code, f], fsign[code, f]) if o >= 0
                        else absent[code, f])
            o_time[d] = ts
            o_cpu[d] = cpu
            o_pid[d] = v[F_PID]
            o_event[d] = code
            for r in range(o_val.shape[0]):
                o_val[r, d] = v[VAL_FIELDS[r]]
            o_order[d] = v[F_ORDER]
            o_gfp[d] = v[F_GFP] & 0xFFFFFFFF
            o_mt[d] = v[F_MT]
            o_refill[d] = v[F_REFILL]
            o_key[d] = key
    return n, nlost, nerr


@njit(cache=True)
def _merge(times, codes, starts, ends, marker):
    """Merge per-CPU sequences by timestamp, ties to the lower CPU, order within a CPU kept
    (mirrors __find_next_entry() in kernel/trace/trace.c, how the ``trace`` file merges).

    Returns ``dest`` (row r goes to event row dest[r], or is marker -1 - dest[r]), the rows
    of the markers, and for each marker the number of events merged before it.
    """
    k = len(starts)
    head = starts.copy()
    total = ends[-1] - starts[0] if k else 0
    dest = np.empty(total, np.int64)
    mrows = np.empty(total, np.int64)
    mindex = np.empty(total, np.int64)
    ne = 0
    nm = 0
    for _ in range(total):
        best = -1
        for c in range(k):
            if head[c] < ends[c] and (best < 0 or times[head[c]] < times[head[best]]):
                best = c
        r = head[best]
        head[best] += 1
        if codes[r] == marker:
            dest[r] = -1 - nm
            mrows[nm] = r
            mindex[nm] = ne
            nm += 1
        else:
            dest[r] = ne
            ne += 1
    return dest, mrows[:nm].copy(), mindex[:nm].copy()     # copies free the spare rows


class RawTables:
    """The offset tables the decoder needs, built from a Formats."""

    def __init__(self, formats: Formats):
        if formats.page is None or formats.entry is None:
            raise InputError("formats/ lacks header_page or header_event; cannot decode "
                             "raw ring-buffer pages without them")
        self.page_size = formats.page.page_size
        p, e = formats.page, formats.entry
        self.hp = np.array([p.ts_offset, p.ts_size, p.commit_offset, p.commit_size,
                            p.data_offset, p.data_size], dtype=np.int64)
        self.eh = np.array([e.type_len_bits, e.padding, e.time_extend, e.time_stamp,
                            e.data_max_type_len, e.time_delta_bits], dtype=np.int64)
        wanted = {name: EVENT_CODE[name] for name in EVENT_NAMES if name in formats.events}
        if "print" in formats.events:
            wanted["print"] = MARKER
        ids = [ev.id for ev in formats.events.values()]
        self.id2code = np.full(max(ids, default=0) + 1, -1, dtype=np.int64)
        self.foff = np.full((MARKER + 1, len(FIELDS)), -1, dtype=np.int64)
        self.fsize = np.zeros_like(self.foff)
        self.fsign = np.zeros((MARKER + 1, len(FIELDS)), dtype=np.bool_)
        self.need = np.zeros(MARKER + 1, dtype=np.int64)
        self.absent = np.tile(np.array(ABSENT, dtype=np.int64), (MARKER + 1, 1))
        self.absent[EVENT_CODE["mm_page_free_batched"], F_ORDER] = 0
        common = None
        for name, code in wanted.items():
            ev = formats.events[name]
            self.id2code[ev.id] = code
            common = ev.fields.get("common_type", common)
            for f, fname in enumerate(FIELDS):
                fld = ev.fields.get(fname)
                if fld is not None and (fld.size or fname == "buf"):
                    self.foff[code, f], self.fsize[code, f] = fld.offset, fld.size
                    self.fsign[code, f] = fld.signed
            self.need[code] = max(fl.offset + fl.size for fl in ev.fields.values())
        if common is None:
            raise InputError("formats/ has none of the kmem events this reader decodes")
        self.ct_off, self.ct_size = common.offset, common.size
        self.names_by_id = {ev.id: ev.name for ev in formats.events.values()}
        self.gfp_names = _gfp_names(formats)

    def args(self, data: np.ndarray) -> tuple:
        return (data, self.page_size, self.hp, self.eh, self.id2code, self.foff, self.fsize,
                self.fsign, self.need, self.absent, self.ct_off, self.ct_size)

    def bound(self, nbytes: int) -> int:
        """At most this many known records fit in ``nbytes`` of pages."""
        smallest = 4 + (int(self.need[self.id2code[self.id2code >= 0]].min()) + 3) // 4 * 4
        return nbytes // smallest + 1


def _gfp_names(formats: Formats) -> list[tuple[str, int]]:
    ev = formats.events.get("mm_page_alloc")
    table = print_flags_table(ev.print_fmt, "gfp_flags") if ev else []
    return table or list(GFP_NAMES_6_18)


def _fill(reader, buf: np.ndarray) -> int:
    """Read into ``buf`` until it is full or the input ends; returns the bytes read."""
    view, got = memoryview(buf), 0
    while got < len(buf):
        n = reader.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _file_chunks(path: Path, chunk: int):
    """(file offset, bytes) of ``path`` in runs of ``chunk`` bytes, decompressed if .zst."""
    with open(path, "rb") as fh:
        reader = (zstandard.ZstdDecompressor().stream_reader(fh, read_size=1 << 20)
                  if path.suffix == ".zst" else fh)
        off = 0
        while True:
            buf = np.empty(chunk, np.uint8)
            try:
                n = _fill(reader, buf)
            except zstandard.ZstdError as e:
                raise InputError(f"{path}: not valid zstd data ({e})") from None
            if n:
                yield off, buf[:n]
                off += n
            if n < chunk:
                return


def _chunks(files: dict[int, Path], chunk: int):
    """(cpu, file offset, bytes) over all files in order, read (and zstd-decompressed) by a
    background thread up to READ_AHEAD_BYTES ahead: zstandard and file reads release the GIL,
    and so does _walk(), so reading overlaps decoding, and the loading of the decoder's numba
    kernel at the first chunk (0.15 s in a fresh process). Ends with (cpu, file size, None)
    per file."""
    q: queue.Queue = queue.Queue(maxsize=max(1, READ_AHEAD_BYTES // chunk))
    stop = threading.Event()

    def produce() -> None:
        try:
            for cpu, path in files.items():
                size = 0
                for off, data in _file_chunks(path, chunk):
                    if stop.is_set():
                        return
                    q.put((cpu, off, data))
                    size = off + len(data)
                q.put((cpu, size, None))
            q.put(None)
        except BaseException as e:                 # handed to the consumer
            q.put(e)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():                   # unblock a producer waiting on put()
            with contextlib.suppress(queue.Empty):
                q.get(timeout=0.05)
        thread.join()


def raw_files(folder: Path) -> dict[int, Path]:
    """``trace_pipe_raw.cpuN.bin[.zst]`` (or ``cpuN``/``cpuN.raw``) files by CPU number."""
    out = {}
    for p in sorted(folder.iterdir()):
        m = re.match(r"(?:trace_pipe_raw\.)?cpu(\d+)(?:\.bin|\.raw)?(?:\.zst)?$", p.name)
        if m and p.is_file():
            out[int(m[1])] = p
    return dict(sorted(out.items()))


#: Bytes decoded at a time per CPU file (rounded down to whole pages): with READ_AHEAD_BYTES,
#: bounds the memory for input whatever the trace size.
CHUNK_BYTES = 16 << 20
#: Pass 1 keeps its decompressed chunks for pass 2 up to this many bytes (beyond, pass 2
#: reads and decompresses the files again).
RETAIN_BYTES = 256 << 20
#: The reading thread decompresses up to this many bytes ahead of the decoder.
READ_AHEAD_BYTES = 64 << 20
#: Pass 2 threads (_walk releases the GIL; each takes whole chunks).
FILL_THREADS = 2


def read_raw(folder: str | Path, formats: Formats | str | Path, *, lenient: bool = False,
             progress: Callable[[int], None] | None = None,
             chunk_bytes: int = CHUNK_BYTES) -> Trace:
    """Decode a folder of per-CPU trace_pipe_raw files with the given formats.

    Pass 1 streams each CPU's pages for times and event codes; the CPUs are merged in the
    order the kernel's ``trace`` file uses; pass 2 streams the pages again and writes every
    record's fields straight into its merged row. Each pass reads ``chunk_bytes`` of whole
    pages at a time, so memory is the output columns plus a few chunks.
    """
    folder = Path(folder)
    if not isinstance(formats, Formats):
        formats = load_formats(formats)
    tab = RawTables(formats)
    files = raw_files(folder)
    if not files:
        raise InputError(f"{folder}: no trace_pipe_raw.cpuN.bin[.zst] files")
    chunk = max(1, chunk_bytes // tab.page_size) * tab.page_size
    cpus = list(files)
    skipped, n_skipped = [], 0
    others = np.zeros(len(tab.id2code) + 1, dtype=np.int64)
    # pass 1 leaves the output columns alone: empty ones of the same types (one compilation)
    z8, z16, z32 = np.empty(0, np.int8), np.empty(0, np.int16), np.empty(0, np.uint32)
    zi32 = np.empty(0, np.int32)
    z64, z2, zu8 = np.empty(0, np.int64), np.empty((0, 0), np.int64), np.empty(0, np.uint8)
    times = {c: [] for c in cpus}
    codes = {c: [] for c in cpus}
    nlost = dict.fromkeys(cpus, 0)
    where: list[str] = []
    starts: dict[tuple[int, int], tuple[int, int]] = {}   # (cpu, offset): first record, loss
    kept, kept_bytes = [], 0
    for cpu, off, data in _chunks(files, chunk):
        path = files[cpu]
        if data is None:                           # end of this CPU's file
            tail = off % tab.page_size
            if tail:
                msg = (f"{path}: byte offset {off - tail}: truncated: {tail} bytes after the "
                       f"last whole {tab.page_size}-byte page")
                if not lenient:
                    raise InputError(msg + " (use --lenient to ignore them)")
                skipped.append(msg)
                n_skipped += 1
            if where:
                if not lenient:
                    raise InputError(where[0] + " (use --lenient to skip the rest of such "
                                     "pages)")
                skipped.extend(where)
                where = []
            continue
        bound = tab.bound(len(data))
        t, c = np.empty(bound, np.int64), np.empty(bound, np.int8)
        errs = np.zeros((20, 2), dtype=np.int64)
        n, nl, nerr = _walk(*tab.args(data), False, cpu, t, c, z64, z64, z16, zi32, z8, z2, z8,
                            z32, z8, z8, z64, zu8, z2, z64, z64, z2, errs, others)
        where.extend(f"{path}: byte offset {off + int(o)}: {ERRORS.get(int(k), 'bad record')}"
                     for o, k in errs[:min(nerr, len(errs))])
        n_skipped += nerr
        starts[cpu, off] = sum(len(x) for x in times[cpu]), nlost[cpu]
        kept_bytes += len(data)
        kept.append((cpu, off, data if kept_bytes <= RETAIN_BYTES else None))
        times[cpu].append(t[:n].copy())
        codes[cpu].append(c[:n].copy())
        nlost[cpu] += nl
        if progress:
            progress(len(data))
    counts = [sum(len(t) for t in times[c]) for c in cpus]
    bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    all_times = np.concatenate([t for c in cpus for t in times[c]] or [z64])
    all_codes = np.concatenate([t for c in cpus for t in codes[c]] or [z8])
    del times, codes
    dest, mrows, mindex = _merge(all_times, all_codes, bounds[:-1], bounds[1:], MARKER)
    mtimes = all_times[mrows]
    del all_codes, all_times
    n_ev = len(dest) - len(mrows)
    ev = {k: (np.zeros if k in ("dup_of_prev_free", "is_null") else np.empty)(n_ev, dtype=dt)
          for k, (dt, _) in COLUMNS.items()}
    lookups = any(name in formats.events for name in EVENT_NAMES[LOOKUP_EVENTS[0]:])
    val = np.empty((len(VAL_FIELDS) if lookups else NVAL_KMEM, n_ev), np.int64)
    key = np.empty(n_ev, np.int64)
    lost_rows = {c: np.empty((nlost[c], 3), np.int64) for c in cpus}
    cols = (ev["time"], ev["cpu"], ev["pid"], ev["event"], val, ev["order"], ev["gfp"],
            ev["migratetype"], ev["percpu_refill"], key)
    texts = [_Texts(len(mrows)) for _ in range(FILL_THREADS)]
    if all(d is not None for _, _, d in kept):
        todo = iter(kept)
    else:                                          # too big to keep: read the files again
        kept = []
        todo = _chunks(files, chunk)
    lock = threading.Lock()

    def fill(tx: _Texts) -> None:
        """Pass 2 over the chunks this thread takes from ``todo`` (any order: each chunk's
        first output record and loss row are known from pass 1)."""
        while True:
            with lock:
                item = next(todo, None)
            if item is None:
                return
            cpu, off, data = item
            if data is None:
                continue
            i = cpus.index(cpu)
            r0, l0 = starts[cpu, off]
            nl = tx.walk(tab.args(data), cpu, dest[bounds[i] + r0:bounds[i + 1]], cols,
                         lost_rows[cpu][l0:])
            lost_rows[cpu][l0:l0 + nl, 2] += off

    with ThreadPoolExecutor(FILL_THREADS) as ex:
        for fut in [ex.submit(fill, tx) for tx in texts]:
            fut.result()
    kept = dest = None                             # free them before the string tables
    lost = [LostEvents(cpu, int(t), int(c), f"cpu{cpu}+{hex(int(o))}")
            for cpu in cpus for t, c, o in lost_rows[cpu]]
    for r, name in enumerate(VAL_COLUMNS):
        if name == "call_site":
            continue                               # mapped to strings below
        dt, fill = COLUMNS[name]
        ev[name] = (val[r].view(dt) if dt.itemsize == 8 else val[r].astype(dt)
                    ) if r < len(val) else np.full(n_ev, fill, dt)

    mcpu = [cpus[i] for i in (np.searchsorted(bounds, mrows, "right") - 1).tolist()]
    mtext = [next((t for tx in texts if (t := tx.marker(j)) is not None), "")
             for j in range(len(mrows))]
    markers = [(int(t), c, int(k), mtext[j].rstrip())
               for j, (t, k, c) in enumerate(zip(mtimes.tolist(), mindex.tolist(), mcpu,
                                                 strict=True))]
    names = {k: t for tx in texts for k, t in tx.names().items()}
    strings = StringTable()
    cs = val[2]
    ev["call_site"] = map_distinct(
        cs, (tab.foff[:, F_CS] >= 0)[ev["event"]],
        lambda i: strings.id(f"0x{int(cs[i]) & 0xFFFFFFFFFFFFFFFF:x}"), np.int32)
    ev["cache"] = map_distinct(key, (tab.foff[:, F_NAME] >= 0)[ev["event"]],
                               lambda i: strings.id(names[int(key[i])]), np.int32)
    tr = Trace(events=ev, strings=strings.strings, source_format="raw", path=folder,
               skipped_lines=n_skipped, skipped_where=skipped[:20])
    tr.lost = sorted(lost, key=lambda x: (x.time, x.cpu))
    for etype in np.flatnonzero(others).tolist():
        name = ("event ids not in formats/" if etype == len(tab.id2code)
                else tab.names_by_id.get(etype, f"id {etype}"))
        tr.other_events[name] = int(others[etype])
    return finish_trace(tr, markers)


class _Texts:
    """One pass-2 thread's text pool: cache names once per hash, marker texts (see
    _keep_text()), grown and the chunk redone when full."""

    def __init__(self, n_markers: int):
        self.pool = np.empty(1 << 16, np.uint8)
        self.ht = np.zeros((1 << 12, 2), np.int64)
        self.st = np.zeros(3, np.int64)
        self.m_span = np.full(n_markers, -1, np.int64)

    def walk(self, args: tuple, cpu: int, dest: np.ndarray, cols: tuple,
             lost: np.ndarray) -> int:
        """_walk() pass 2 over one chunk; returns its lost-page rows."""
        z64, z8 = np.empty(0, np.int64), np.empty(0, np.int8)
        while True:
            _, nl, _ = _walk(*args, True, cpu, z64, z8, dest, *cols, self.pool, self.ht,
                             self.st, self.m_span, lost, np.zeros((20, 2), np.int64),
                             np.zeros(1, np.int64))
            if not self.st[1]:
                return nl
            self.st[1] = 0
            self.pool = np.concatenate([self.pool, np.empty(len(self.pool), np.uint8)])
            self.ht = self._rehash(2 * len(self.ht))

    def _rehash(self, size: int) -> np.ndarray:
        out = np.zeros((size, 2), np.int64)
        for k, sp in self.ht[self.ht[:, 0] != 0].tolist():
            slot = k & (size - 1)
            while out[slot, 0]:
                slot = (slot + 1) & (size - 1)
            out[slot] = k, sp
        return out

    def text(self, sp: int) -> str:
        return self.pool[sp >> 16:(sp >> 16) + (sp & 0xFFFF)].tobytes().decode("utf-8",
                                                                            "replace")

    def marker(self, j: int) -> str | None:
        sp = int(self.m_span[j])
        return None if sp < 0 else self.text(sp)

    def names(self) -> dict[int, str]:
        return {k: self.text(sp) for k, sp in self.ht[self.ht[:, 0] != 0].tolist()}
