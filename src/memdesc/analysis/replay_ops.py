"""Trace events as allocator operations: the snapshot's read times (gates), the operation
stream and the pairing of frees with allocations. See memdesc.analysis.replay."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numba import njit

from memdesc.analysis import trace_types as tt
from memdesc.errors import InputError
from memdesc.ingest.trace_events import EVENT_NAMES, Trace
from memdesc.mm.mmzone import MAX_PAGE_ORDER

# ---- operations -----------------------------------------------------------------------------

#: Operation kinds of the prepared stream (one per page event that changes allocator state).
OP_ALLOC, OP_FREE, OP_TAKE, OP_DRAIN = 0, 1, 2, 3
OP_NAMES = ("alloc", "free", "take", "drain")

#: Per-PFN state of a block head the emulator does not hold on its buddy lists.
ST_NONE, ST_ALLOC, ST_PCP, ST_TAKEN, ST_SNAP = 0, 1, 2, 3, 4

#: What the replay could not apply as the kernel did, by name (index = counter slot).
MISMATCHES = (
    # -- kernel paths that emit no kmem event (expected; the replay follows them) --------
    "alloc_snapshot_pcp",     # first event on a page the snapshot shows in use is an
                              #   mm_page_alloc with no zone_locked: it sat on a pcp list
    "drain_snapshot_pcp",     # same, first event a drain
    "alloc_claimed_untraced", # mm_page_alloc of a block the buddy holds free: taken by
                              #   try_to_claim_block()'s whole-block path, which emits only
                              #   mm_page_alloc_extfrag (not recorded); replayed as that claim
    "drain_claimed_untraced", # drain of a block the buddy holds free: it reached a pcp list
                              #   by that claim path; only its pageblock type is learned
    "free_after_untraced_alloc",  # mm_page_free of a block on a pcp list: handed out by
                              #   alloc_pages_bulk() (vmalloc, page_pool), which emits no
                              #   mm_page_alloc; replayed as that allocation then the free
    "snapshot_unit_order",    # a free of a pre-trace allocation whose order the snapshot
                              #   cannot show (non-compound high-order pages read as order 0)
    "pageblock_mt_learned",   # a drain's migratetype differs from the emulated pageblock:
                              #   the pageblock is moved (move_freepages_block())
    # -- disagreements: the emulated state may differ from the kernel's from here on -----
    "take_not_free",          # zone_locked of a block the emulated buddy does not hold free
    "take_from_pcp",          # ... it sat on an emulated pcp list: the kernel had freed it
                              #   straight to the buddy (pcp trylock failed); merges missed
    "take_partial",           # ... only parts of it were free
    "alloc_of_allocated",     # mm_page_alloc of a block already allocated (a free is missing)
    "free_of_free",           # mm_page_free of a block the emulator holds free (taken off
                              #   the buddy as if allocated untraced, then freed)
    "drain_not_pcp",          # drain of a block allocated in the trace (its free is missing)
    "order_mismatch",         # the pcp block at the pfn has another order than the event's
    "unmanaged_pfn",          # an event on a PFN the emulated buddy does not manage
    # -- policy mode ------------------------------------------------------------------------
    "alloc_failed",           # the emulator could not satisfy the request
    "free_unknown",           # a free whose allocation the emulator never made
)
M = {n: i for i, n in enumerate(MISMATCHES)}
# the same slots as numba globals
(M_ALLOC_SNAPSHOT_PCP, M_DRAIN_SNAPSHOT_PCP, M_ALLOC_CLAIMED, M_DRAIN_CLAIMED,
 M_FREE_AFTER_BULK, M_SNAPSHOT_UNIT_ORDER, M_PAGEBLOCK_MT_LEARNED, M_TAKE_NOT_FREE,
 M_TAKE_FROM_PCP, M_TAKE_PARTIAL, M_ALLOC_OF_ALLOCATED, M_FREE_OF_FREE, M_DRAIN_NOT_PCP,
 M_ORDER_MISMATCH, M_UNMANAGED, M_ALLOC_FAILED, M_FREE_UNKNOWN) = range(len(MISMATCHES))
#: Counters that are kernel behaviour the replay follows, not disagreements with the kernel.
EXPECTED = MISMATCHES[:M_TAKE_NOT_FREE]

NCLS = len(tt.CLASS_NAMES)


@dataclass
class ChunkGates:
    """When the pre-snapshot read each PFN: events before ``gate[c]`` (an event index) on a
    PFN of chunk ``c`` are already in the snapshot."""

    starts: np.ndarray        # int64 first PFN of each chunk (sorted)
    sizes: np.ndarray         # int64 PFNs per chunk
    gate: np.ndarray          # int64 event index from which the chunk's events apply
    default_gate: int         # for PFNs in no chunk: the end of the kpage reads
    style: str                # "fixture-before-read", "memdesc-after-read", "steps", "none"
    steps: dict[str, int] = field(default_factory=dict)   # meta.json step -> event index

    def of(self, pfn: np.ndarray) -> np.ndarray:
        """The gate of each PFN."""
        pfn = np.asarray(pfn, np.int64)
        if not len(self.starts):
            return np.full(len(pfn), self.default_gate, np.int64)
        c = np.searchsorted(self.starts, pfn, side="right") - 1
        cc = np.clip(c, 0, None)
        inside = (c >= 0) & (pfn < self.starts[cc] + self.sizes[cc])
        return np.where(inside, self.gate[cc], self.default_gate)

    @property
    def last(self) -> int:
        """The event index after which every PFN's events apply."""
        return int(max(self.gate.max(initial=0), self.default_gate))


_CHUNK = re.compile(r"^(FIXTURE|memdesc) snapshot .*?chunk start_pfn=0x([0-9a-fA-F]+) "
                    r"npfn=(\d+)")


class _ChunkMark(NamedTuple):
    """One pre-snapshot chunk marker of the trace (_CHUNK)."""

    style: str          # "FIXTURE" (written before the read) or "memdesc" (after)
    start_pfn: int
    npfn: int
    index: int          # the marker's event index


def _steps(tr: Trace, snapshot_dir: Path | None) -> dict[str, int]:
    """meta.json capture steps (CLOCK_MONOTONIC ns) as event indices, when the trace clock is
    the same clock (the steps fall inside the trace)."""
    if snapshot_dir is None or not (snapshot_dir / "meta.json").is_file():
        return {}
    try:
        meta = json.loads((snapshot_dir / "meta.json").read_text())
    except ValueError as e:
        raise InputError(f"{snapshot_dir / 'meta.json'}: unreadable ({e})") from None
    t = tr.events["time"]
    if not len(t):
        return {}
    out = {}
    for s in meta.get("steps", []):
        ns = s.get("monotonic_ns")
        if isinstance(ns, int) and t[0] <= ns <= t[-1]:
            out[str(s.get("step"))] = int(np.searchsorted(t, ns, side="left"))
    return out


def snapshot_gates(tr: Trace, snapshot_dir: Path | None = None) -> ChunkGates:
    """The chunk read times of the pre-snapshot, from the trace's markers (see module doc)."""
    snapshot_dir = snapshot_dir or tr.snapshot_dir
    steps = _steps(tr, snapshot_dir)
    texts = tr.markers.get("text", []) if tr.markers else []
    index = np.asarray(tr.markers.get("index", []), np.int64) if tr.markers else np.zeros(0)
    rows = []
    for i, text in enumerate(texts):
        m = _CHUNK.match(text)
        if m:
            rows.append(_ChunkMark(m[1], int(m[2], 16), int(m[3]), int(index[i])))
    kpage_end = steps.get("kpage_end", steps.get("after_read_begin"))
    if not rows:
        gate = kpage_end if kpage_end is not None else 0
        return ChunkGates(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                          gate, "steps" if kpage_end is not None else "none", steps)
    style = rows[0].style
    starts = np.array([r.start_pfn for r in rows], np.int64)
    sizes = np.array([r.npfn for r in rows], np.int64)
    marks = np.array([r.index for r in rows], np.int64)
    if style == "FIXTURE":          # marker written just before the chunk is read
        gate = marks
        how = "fixture-before-read"
    else:                           # marker written after the chunk was read
        first = steps.get("kpage_begin", int(marks[0]))
        gate = np.concatenate(([first], marks[:-1]))
        how = "memdesc-after-read"
    order = np.argsort(starts, kind="stable")
    end = int(marks.max()) if kpage_end is None else max(kpage_end, int(marks.max()))
    return ChunkGates(starts[order], sizes[order], gate[order], end, how, steps)


@dataclass
class ReplayOps:
    """The page events as allocator operations, in trace order.

    ``pair[i]`` (frees) is the op index of the allocation this free releases (-1: allocated
    before the trace or before its chunk was read); ``applies[i]`` is False for events the
    snapshot already contains; ``first[i]`` marks the first applied op on its PFN (a page the
    snapshot shows in use whose first event is an alloc or a drain was on a pcp list then).
    """

    kind: np.ndarray
    pfn: np.ndarray
    order: np.ndarray
    mt: np.ndarray
    cpu: np.ndarray
    gfp: np.ndarray
    cls: np.ndarray
    evidx: np.ndarray
    refill: np.ndarray
    applies: np.ndarray
    pair: np.ndarray
    first: np.ndarray
    n_events: int
    stats: dict = field(default_factory=dict)
    #: trace clock (ns) of each op (policy mode's vmstat intervals)
    time: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.kind)


#: slots of _pair_ops()'s ``stats``: frees of trace allocations, frees of older allocations,
#: frees whose order differs from the allocation's, allocations still live at the end
PAIR_FREES_OF_TRACE, PAIR_FREES_OF_OLDER, PAIR_ORDER_DIFFERS, PAIR_LIVE_AT_END = 0, 1, 2, 3
NR_PAIR_STATS = 4
#: page-event codes of the trace (memdesc.ingest.trace_events.EVENT_NAMES)
EV_PAGE_ALLOC = EVENT_NAMES.index("mm_page_alloc")
EV_PAGE_FREE = EVENT_NAMES.index("mm_page_free")
EV_PAGE_FREE_BATCHED = EVENT_NAMES.index("mm_page_free_batched")
EV_PAGE_ZONE_LOCKED = EVENT_NAMES.index("mm_page_alloc_zone_locked")
EV_PCPU_DRAIN = EVENT_NAMES.index("mm_page_pcpu_drain")


@njit(cache=True, nogil=True)
def _pair_ops(kind, pfn, order, applies, npfn, pair, first, stats):
    """Pair frees with allocations by head PFN (``stats`` by the PAIR_* slots) and mark the
    first applied op of each PFN."""
    head = np.full(npfn, -1, np.int64)
    seen = np.zeros(npfn, np.uint8)
    for i in range(kind.shape[0]):
        p = pfn[i]
        if p < 0 or p >= npfn:
            continue
        if applies[i] and seen[p] == 0:
            first[i] = 1
            seen[p] = 1
        k = kind[i]
        if k == OP_ALLOC:
            head[p] = i
        elif k == OP_FREE:
            j = head[p]
            pair[i] = j
            if j >= 0:
                stats[PAIR_FREES_OF_TRACE] += 1
                if order[j] != order[i]:
                    stats[PAIR_ORDER_DIFFERS] += 1
                head[p] = -1
            else:
                stats[PAIR_FREES_OF_OLDER] += 1
    for p in range(npfn):
        if head[p] >= 0:
            stats[PAIR_LIVE_AT_END] += 1


def prepare_ops(tr: Trace, types: tt.TypeInference, gates: ChunkGates) -> ReplayOps:
    """Page events -> operations (see :class:`ReplayOps` and the module docstring)."""
    ev = tr.events
    e = ev["event"]
    pfn = ev["pfn"]
    batched = e == EV_PAGE_FREE_BATCHED
    alloc = (e == EV_PAGE_ALLOC) & (pfn >= 0)
    free = ((e == EV_PAGE_FREE) | (batched & ~ev["dup_of_prev_free"])) & (pfn >= 0)
    take = (e == EV_PAGE_ZONE_LOCKED) & (pfn >= 0)
    drain = (e == EV_PCPU_DRAIN) & (pfn >= 0)
    sel = alloc | free | take | drain
    idx = np.nonzero(sel)[0]
    kind = np.select([alloc[idx], free[idx], take[idx]], [OP_ALLOC, OP_FREE, OP_TAKE],
                     OP_DRAIN).astype(np.int8)
    opfn = pfn[idx]
    applies = idx >= gates.of(opfn)
    order = ev["order"][idx].astype(np.int8)
    n = len(idx)
    pair = np.full(n, -1, np.int64)
    first = np.zeros(n, np.uint8)
    stats = np.zeros(NR_PAIR_STATS, np.int64)
    npfn = int(opfn.max(initial=-1)) + 1
    _pair_ops(kind, opfn, order, applies, npfn, pair, first, stats)
    bad_order = int(((order < 0) | (order > MAX_PAGE_ORDER)).sum())
    if bad_order:
        raise InputError(f"{tr.path}: {bad_order} page events with an order outside "
                         f"0..{MAX_PAGE_ORDER}; not a trace of this kernel's page allocator")
    counts = {name: int((kind == k).sum()) for k, name in enumerate(OP_NAMES)}
    return ReplayOps(
        kind, opfn, order, ev["migratetype"][idx], ev["cpu"][idx].astype(np.int64),
        ev["gfp"][idx].astype(np.int64), types.cls[idx].astype(np.int8), idx.astype(np.int64),
        ev["percpu_refill"][idx], applies, pair, first, len(e),
        {"ops": counts, "applied": int(applies.sum()), "before_snapshot": int((~applies).sum()),
         "free_batched_dups_skipped": int((batched & ev["dup_of_prev_free"]).sum()),
         "free_batched_orphans": int((batched & ~ev["dup_of_prev_free"]).sum()),
         "failed_allocs_skipped": int(((e == EV_PAGE_ALLOC) & (pfn < 0)).sum()),
         "take_refill": int(((kind == OP_TAKE) & (ev["percpu_refill"][idx] == 1)).sum()),
         "frees_of_trace_allocs": int(stats[PAIR_FREES_OF_TRACE]),
         "frees_of_older_allocs": int(stats[PAIR_FREES_OF_OLDER]),
         "free_order_differs_from_alloc": int(stats[PAIR_ORDER_DIFFERS]),
         "allocs_live_at_end": int(stats[PAIR_LIVE_AT_END])}, ev["time"][idx].astype(np.int64))

