"""The columnar form every trace reader produces, and the quirk rules applied to it.

See :mod:`memdesc.ingest.ftrace` for the user-facing description of the columns. This module
holds the schema (event codes, column dtypes), the :class:`Trace` container, the shared string
and gfp tables, and :func:`finish_trace`, which merges per-block/per-CPU pieces and applies the
quirk rules identically for every input format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numba import njit

from memdesc.errors import InputError

#: Event codes: index into EVENT_NAMES (the kernel's tracepoint names: system kmem, then the
#: lookup events `memdesc record --lookups` adds, systems filemap, pagemap and exceptions).
EVENT_NAMES = (
    "mm_page_alloc",              # 0  page allocator: successful (or failed: pfn -1) alloc
    "mm_page_free",               # 1  free_pages_prepare(): a 2^order block freed
    "mm_page_free_batched",       # 2  free_unref_folios(): follows an mm_page_free, order 0
    "mm_page_alloc_zone_locked",  # 3  block taken off the buddy lists under zone->lock
    "mm_page_pcpu_drain",         # 4  block moved from a pcp list back to the buddy lists
    "kmem_cache_alloc",           # 5  slab object allocated from a named cache
    "kmem_cache_free",            # 6  slab object freed to a named cache
    "kmalloc",                    # 7  kmalloc()/kmalloc_node() object
    "kfree",                      # 8  kfree() (kfree(NULL) is traced too)
    "mm_filemap_add_to_page_cache",       # 9  __filemap_add_folio(): folio into the xarray
    "mm_filemap_delete_from_page_cache",  # 10 __filemap_remove_folio() / delete_from_page_
    #                                          cache_batch(): folio out of the xarray
    "mm_filemap_get_pages",       # 11 filemap_get_pages(): read() batch of [index, last_index]
    "mm_filemap_map_pages",       # 12 filemap_map_pages(): fault-around of [index, last_index]
    "mm_filemap_fault",           # 13 filemap_fault(): a file page fault at index
    "mm_lru_insertion",           # 14 lru_add(): a folio onto an LRU list
    "mm_lru_activate",            # 15 lru_activate(): a folio to the active list
    "page_fault_user",            # 16 x86 handle_page_fault(): a fault in user mode
    "page_fault_kernel",          # 17 x86 handle_page_fault(): a fault in kernel mode
)
EVENT_CODE = {n: i for i, n in enumerate(EVENT_NAMES)}
PAGE_EVENTS = (0, 1, 2, 3, 4)
SLAB_EVENTS = (5, 6, 7, 8)
LOOKUP_EVENTS = tuple(range(9, 18))
#: events whose ``pfn`` column is set (page events, page-cache add/delete, LRU events)
PFN_EVENTS = PAGE_EVENTS + (9, 10, 14, 15)
MM_PAGE_ALLOC, MM_PAGE_FREE, MM_PAGE_FREE_BATCHED = 0, 1, 2
KMEM_CACHE_FREE, KFREE = 6, 8
#: Pseudo-code used inside readers for trace_marker writes (ftrace:print); never in .events.
MARKER = len(EVENT_NAMES)

#: Column name -> (dtype, fill value for events that do not carry it).
COLUMNS: dict[str, tuple[np.dtype, int]] = {
    "time": (np.dtype(np.int64), 0),
    "cpu": (np.dtype(np.int16), -1),
    # common_pid of the event (the task it ran in; 0: the idle task, -1: the reader had none)
    "pid": (np.dtype(np.int32), -1),
    "event": (np.dtype(np.int8), -1),
    "pfn": (np.dtype(np.int64), -1),
    "order": (np.dtype(np.int8), -1),
    "gfp": (np.dtype(np.uint32), 0),
    "migratetype": (np.dtype(np.int8), -1),
    "percpu_refill": (np.dtype(np.int8), -1),
    "ptr": (np.dtype(np.uint64), 0),
    "cache": (np.dtype(np.int32), -1),
    "call_site": (np.dtype(np.int32), -1),
    "bytes_req": (np.dtype(np.int64), -1),
    "bytes_alloc": (np.dtype(np.int64), -1),
    "dup_of_prev_free": (np.dtype(np.bool_), 0),
    "is_null": (np.dtype(np.bool_), 0),
    # lookup events (memdesc record --lookups)
    "ino": (np.dtype(np.uint64), 0),
    "dev": (np.dtype(np.uint32), 0),
    "index": (np.dtype(np.int64), -1),
    "last_index": (np.dtype(np.int64), -1),
    "address": (np.dtype(np.uint64), 0),
    "lru": (np.dtype(np.int8), -1),
    "lru_flags": (np.dtype(np.int8), -1),
    "error_code": (np.dtype(np.int32), -1),
}

# [S] Documentation/arch/x86/x86_64/mm.rst (4-level paging) and [M] fixtures README item 12:
# this boot used the default bases although CONFIG_RANDOMIZE_MEMORY=y.
VMEMMAP_BASE = 0xFFFFEA0000000000
PAGE_OFFSET_BASE = 0xFFFF888000000000
STRUCT_PAGE_SIZE = 64          # [M] fixtures/btf/pahole-structs.txt, struct page on 6.18

# [M] __print_flags table of kmem/mm_page_alloc's print fmt, Linux 6.18.44 (fixtures/
# trace-slab/formats/kmem.mm_page_alloc.format, evaluated by trace_format.print_flags_table).
# Used for symbolic gfp strings when no format file of the traced kernel is at hand.
GFP_NAMES_6_18 = (
    ("GFP_TRANSHUGE", 0x1C24CA), ("GFP_TRANSHUGE_LIGHT", 0x1C20CA),
    ("GFP_HIGHUSER_MOVABLE", 0x100CCA), ("GFP_HIGHUSER", 0x100CC2), ("GFP_USER", 0x100CC0),
    ("GFP_KERNEL_ACCOUNT", 0x400CC0), ("GFP_KERNEL", 0xCC0), ("GFP_NOFS", 0xC40),
    ("GFP_ATOMIC", 0x820), ("GFP_NOIO", 0xC00), ("GFP_NOWAIT", 0x2800), ("GFP_DMA", 0x1),
    ("GFP_DMA32", 0x4), ("__GFP_RECLAIM", 0xC00), ("__GFP_DMA", 0x1), ("__GFP_HIGHMEM", 0x2),
    ("__GFP_DMA32", 0x4), ("__GFP_MOVABLE", 0x8), ("__GFP_RECLAIMABLE", 0x10),
    ("__GFP_HIGH", 0x20), ("__GFP_IO", 0x40), ("__GFP_FS", 0x80), ("__GFP_ZERO", 0x100),
    ("__GFP_DIRECT_RECLAIM", 0x400), ("__GFP_KSWAPD_RECLAIM", 0x800), ("__GFP_WRITE", 0x1000),
    ("__GFP_NOWARN", 0x2000), ("__GFP_RETRY_MAYFAIL", 0x4000), ("__GFP_NOFAIL", 0x8000),
    ("__GFP_NORETRY", 0x10000), ("__GFP_MEMALLOC", 0x20000), ("__GFP_COMP", 0x40000),
    ("__GFP_NOMEMALLOC", 0x80000), ("__GFP_HARDWALL", 0x100000), ("__GFP_THISNODE", 0x200000),
    ("__GFP_ACCOUNT", 0x400000), ("__GFP_ZEROTAGS", 0x800000), ("__GFP_NO_OBJ_EXT", 0x1000000),
)


#: per_cpu/cpuN/stats counters that mean events were lost.
LOSS_COUNTERS = ("overrun", "commit_overrun", "dropped_events")


class LostEvents(NamedTuple):
    """Events the kernel could not deliver: ``count`` -1 when the kernel did not say how many.

    ``time`` is the timestamp (ns) of the first event delivered after the loss on that CPU
    (text) or of the ring-buffer page that carries the missed-events flag (raw); ``where`` is
    "line N" (text) or "cpuN+0xOFFSET" (raw byte offset of the page in that CPU's file).
    """

    cpu: int
    time: int
    count: int
    where: str


class GfpTable:
    """Symbolic gfp strings (``GFP_KERNEL|__GFP_ZERO``) to the raw flag integer."""

    def __init__(self, names: tuple[tuple[str, int], ...] | list[tuple[str, int]] = GFP_NAMES_6_18):
        self.names = dict(names)
        self.cache: dict[bytes, int] = {b"none": 0, b"0": 0}

    def value(self, text: bytes) -> int:
        """Mirrors the inverse of trace_print_flags_seq() in kernel/trace/trace_output.c."""
        v = self.cache.get(text)
        if v is not None:
            return v
        total = 0
        for tok in text.split(b"|"):
            name = tok.decode("ascii", "replace")
            if name in self.names:
                total |= self.names[name]
            elif name[:2].lower() == "0x":
                total |= int(name, 16)
            elif name.isdigit():                  # raw values (e.g. trace-cmd report -R)
                total |= int(name)
            else:
                raise KeyError(name)
        self.cache[text] = total
        return total


class StringTable:
    """Small-int ids for repeated strings (cache names, call sites)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.strings: list[str] = []

    def id(self, s: str) -> int:
        i = self.ids.get(s)
        if i is None:
            i = self.ids[s] = len(self.strings)
            self.strings.append(s)
        return i


@dataclass
class Trace:
    """A kernel allocation trace as columns. See :mod:`memdesc.ingest.ftrace`."""

    events: dict[str, np.ndarray]
    event_names: tuple[str, ...] = EVENT_NAMES
    strings: list[str] = field(default_factory=list)
    markers: dict[str, object] = field(default_factory=dict)
    lost: list[LostEvents] = field(default_factory=list)
    overruns: dict[int, dict[str, int]] = field(default_factory=dict)
    skipped_lines: int = 0
    skipped_where: list[str] = field(default_factory=list)
    other_events: dict[str, int] = field(default_factory=dict)
    quirks: dict[str, int] = field(default_factory=dict)
    source_format: str = ""
    path: Path | None = None
    snapshot_dir: Path | None = None
    duration_ns: int = 0
    header_entries: tuple[int, int] | None = None   # text "entries-in-buffer/entries-written"

    def __len__(self) -> int:
        return len(self.events["time"])

    def counts(self) -> dict[str, int]:
        """Events per name (all events, duplicates included, as the kernel emitted them)."""
        n = np.bincount(self.events["event"].astype(np.int64), minlength=len(EVENT_NAMES))
        return {name: int(n[i]) for i, name in enumerate(self.event_names)}

    def problems(self) -> list[str]:
        """One line per known loss or skipped input, for the user."""
        out = []
        for lost in self.lost:
            n = "an unknown number of" if lost.count < 0 else f"{lost.count:,}"
            out.append(f"cpu{lost.cpu}: {n} events lost before t={lost.time / 1e9:.6f} s "
                       f"({lost.where})")
        for cpu, s in sorted(self.overruns.items()):
            bad = {k: v for k, v in s.items() if k in LOSS_COUNTERS and v}
            if bad:
                out.append(f"cpu{cpu}: ring buffer counters report lost events: "
                           + ", ".join(f"{k}={v:,}" for k, v in bad.items()))
        if self.header_entries and self.header_entries[0] != self.header_entries[1]:
            out.append(f"trace header: {self.header_entries[0]:,} entries in buffer but "
                       f"{self.header_entries[1]:,} written (older events overwritten)")
        ptr = self.events["ptr"][np.isin(self.events["event"], SLAB_EVENTS)]
        ptr = ptr[ptr != 0]
        if len(ptr) and int(ptr.max()) < 1 << 32:
            out.append("slab pointers all fit in 32 bits: they look hashed (tracefs "
                       "options/hash-ptr=1), so ptr cannot be mapped to a pfn")
        if self.skipped_lines:
            unit = "pages/records" if self.source_format == "raw" else "lines"
            out.append(f"{self.skipped_lines:,} bad {unit} skipped (--lenient), first: "
                       + "; ".join(self.skipped_where[:3]))
        return out

    def lost_total(self) -> int:
        """Known lost events (markers with a count plus per-CPU overrun/dropped counters)."""
        marked = sum(max(lost.count, 0) for lost in self.lost)
        stats = sum(s.get(k, 0) for s in self.overruns.values() for k in LOSS_COUNTERS)
        return max(marked, stats)


@njit(cache=True)
def intern_keys(keys, present):
    """Number the distinct ``keys[present]`` in order of first appearance.

    Returns ``(ids, first)``: ids[i] is the number of keys[i] (-1 where not present) and
    first[j] the row where number j first appears. An open-addressing hash table: O(n),
    unlike np.unique's sort.
    """
    bits = 10
    cap = 1 << bits
    slot_key = np.empty(cap, np.int64)
    slot_id = np.full(cap, -1, np.int64)
    ids = np.full(len(keys), -1, np.int32)
    first = np.empty(256, np.int64)
    n = 0
    for i in range(len(keys)):
        if not present[i]:
            continue
        k = keys[i]
        j = np.int64((np.uint64(k) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - bits))
        while slot_id[j] >= 0 and slot_key[j] != k:
            j = (j + 1) & (cap - 1)
        if slot_id[j] < 0:
            if n == len(first):
                first = np.concatenate((first, np.empty(n, np.int64)))
            first[n] = i
            slot_key[j], slot_id[j] = k, n
            n += 1
            if 2 * n > cap:                       # grow and rehash
                bits += 1
                cap <<= 1
                old_key, old_id = slot_key, slot_id
                slot_key = np.empty(cap, np.int64)
                slot_id = np.full(cap, -1, np.int64)
                for m in range(len(old_id)):
                    if old_id[m] >= 0:
                        q = np.int64((np.uint64(old_key[m]) * np.uint64(0x9E3779B97F4A7C15))
                                     >> np.uint64(64 - bits))
                        while slot_id[q] >= 0:
                            q = (q + 1) & (cap - 1)
                        slot_key[q], slot_id[q] = old_key[m], old_id[m]
            ids[i] = n - 1
        else:
            ids[i] = slot_id[j]
    return ids, first[:n]


def map_distinct(keys: np.ndarray, present: np.ndarray, fn, dtype=np.int64) -> np.ndarray:
    """``fn(row)`` evaluated once per distinct present key (at the row of its first
    appearance) and spread to every row with that key; -1 where absent."""
    ids, first = intern_keys(keys, present)
    if not len(first):
        return np.full(len(keys), -1, dtype=dtype)
    lut = np.array([fn(int(r)) for r in first.tolist()] + [-1], dtype=dtype)
    return lut[ids]


def empty_columns(n: int) -> dict[str, np.ndarray]:
    """Columns of length ``n`` filled with each column's "not carried" value."""
    return {k: np.full(n, fill, dtype=dt) for k, (dt, fill) in COLUMNS.items()}


def concat_columns(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not parts:
        return empty_columns(0)
    return {k: np.concatenate([p[k] for p in parts]) for k in COLUMNS}


def mark_free_batched(ev: dict[str, np.ndarray]) -> dict[str, int]:
    """Flag each ``mm_page_free_batched`` that repeats the preceding ``mm_page_free``.

    free_unref_folios() (mm/page_alloc.c) first runs free_pages_prepare() on every folio,
    which emits mm_page_free with the folio's real order, then emits mm_page_free_batched
    (printed as order 0) for the same head pfn when it puts the folio on a pcp list. Nothing
    else can happen to that pfn in between, so: a batched event whose previous page event of
    the same pfn (in trace order) is an mm_page_free is a duplicate. It gets
    ``dup_of_prev_free = True`` and that free's order. A batched event without such a free
    (the free was lost or before the trace started) stays unflagged with order 0 and is
    counted as ``free_batched_orphan``. Works in place; returns the counts.
    """
    event, pfn = ev["event"], ev["pfn"]
    page = np.flatnonzero(event <= 4)
    if not len(page):
        return {"free_batched_dup": 0, "free_batched_orphan": 0}
    order_by_pfn = page[np.argsort(pfn[page], kind="stable")]
    p, e = pfn[order_by_pfn], event[order_by_pfn]
    is_batched = e[1:] == MM_PAGE_FREE_BATCHED
    dup = is_batched & (e[:-1] == MM_PAGE_FREE) & (p[1:] == p[:-1])
    idx = order_by_pfn[1:][dup]
    ev["dup_of_prev_free"][idx] = True
    ev["order"][idx] = ev["order"][order_by_pfn[:-1][dup]]
    n_batched = int(np.count_nonzero(event == MM_PAGE_FREE_BATCHED))
    return {"free_batched_dup": int(dup.sum()), "free_batched_orphan": n_batched - int(dup.sum())}


def mark_null(ev: dict[str, np.ndarray]) -> dict[str, int]:
    """``is_null``: kfree(NULL)/kmem_cache_free(NULL), failed allocations (no page/object).

    kfree() and kmem_cache_free() fire their tracepoint before the NULL check (mm/slub.c), so
    kfree(NULL) appears in traces; __alloc_pages_noprof() traces failures with pfn -1.
    """
    event = ev["event"]
    slab = np.isin(event, SLAB_EVENTS) & (ev["ptr"] == 0)
    page_fail = (event == MM_PAGE_ALLOC) & (ev["pfn"] < 0)
    ev["is_null"] |= slab | page_fail
    return {"kfree_null": int(np.count_nonzero(slab & (event == KFREE))),
            "kmem_cache_free_null": int(np.count_nonzero(slab & (event == KMEM_CACHE_FREE))),
            "slab_alloc_failed": int(np.count_nonzero(slab & ((event == 5) | (event == 7)))),
            "page_alloc_failed": int(np.count_nonzero(page_fail))}


def finish_trace(tr: Trace, markers: list[tuple[int, int, int, str]]) -> Trace:
    """Apply the quirk rules, the marker table and the duration to a merged trace.

    ``markers`` are ``(time, cpu, index, text)``; ``index`` = number of events before it.
    """
    tr.quirks.update(mark_free_batched(tr.events))
    tr.quirks.update(mark_null(tr.events))
    markers.sort(key=lambda m: m[2])
    tr.markers = {
        "time": np.array([m[0] for m in markers], dtype=np.int64),
        "cpu": np.array([m[1] for m in markers], dtype=np.int16),
        "index": np.array([m[2] for m in markers], dtype=np.int64),
        "text": [m[3] for m in markers],
    }
    times = [tr.events["time"][[0, -1]]] if len(tr) else []
    if markers:
        times.append(tr.markers["time"][[0, -1]])
    if times:
        t = np.concatenate(times)
        tr.duration_ns = int(t.max() - t.min())
    return tr


def parse_cpu_stats(text: str) -> dict[str, int]:
    """``per_cpu/cpuN/stats`` -> {'entries': .., 'overrun': .., 'commit_overrun': ..,
    'dropped_events': .., ...} (integer lines only)."""
    out = {}
    for line in text.splitlines():
        key, sep, val = line.partition(":")
        val = val.strip()
        if sep and val.lstrip("-").isdigit():
            out[key.strip().replace(" ", "_")] = int(val)
    return out


def read_stats_files(folder: Path) -> dict[int, dict[str, int]]:
    """Per-CPU ring-buffer counters saved beside a trace, in any of the layouts we know:
    ``per-cpu-stats.txt`` ("== cpuN" sections, the fixtures), ``stats.cpuN.txt`` or
    ``per_cpu/cpuN/stats``."""
    out: dict[int, dict[str, int]] = {}
    combined = folder / "per-cpu-stats.txt"
    if combined.is_file():
        cpu = None
        chunks: dict[int, list[str]] = {}
        for line in combined.read_text().splitlines():
            if line.startswith("== cpu"):
                try:
                    cpu = int(line[6:].strip())
                except ValueError as e:
                    raise InputError(f"{combined}: bad section line {line!r}") from e
                chunks[cpu] = []
            elif cpu is not None:
                chunks[cpu].append(line)
        out = {c: parse_cpu_stats("\n".join(lines)) for c, lines in chunks.items()}
    for p in list(folder.glob("stats.cpu*.txt")) + list(folder.glob("per_cpu/cpu*/stats")):
        digits = "".join(ch for ch in (p.name if p.name != "stats" else p.parent.name)
                         if ch.isdigit())
        if digits:
            out[int(digits)] = parse_cpu_stats(p.read_text())
    return out
