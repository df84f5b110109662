"""Replay a kernel allocation trace through the emulated page allocator, at every stage.

Two modes (``memdesc replay --mode``):

``placement``
    The trace's own PFNs and orders drive the emulator's buddy and pcp lists, starting from the
    trace's pre-snapshot, so the emulated free lists follow the real kernel's. Each page event
    has the meaning it has in Linux 6.18's mm/page_alloc.c:

    * ``mm_page_alloc_zone_locked`` (__rmqueue_smallest() and the fallbacks, under zone->lock):
      the block leaves the buddy lists. It goes onto the emitting CPU's pcp list (a refill by
      rmqueue_bulk()) when its order may live there (pcp_allowed_order()); a direct
      rmqueue_buddy() allocation follows at once as an ``mm_page_alloc`` of the same pfn and
      takes it off again. (``percpu_refill`` is printed as ``pcp_allowed_order(order) &&
      migratetype < MIGRATE_PCPTYPES``, not as "this was a refill", so it cannot tell them
      apart; it is kept for the statistics.)
    * ``mm_page_alloc``: the block is handed out (from the pcp list, or right after its
      zone_locked event); prep_new_page().
    * ``mm_page_free`` (free_pages_prepare(); ``mm_page_free_batched`` rows flagged
      ``dup_of_prev_free`` are the same free and are skipped): pcp-allowed orders go onto the
      emitting CPU's pcp list (free_frozen_page_commit()), others straight to the buddy
      (__free_pages_ok() -> split_large_buddy()).
    * ``mm_page_pcpu_drain`` (free_pcppages_bulk()): the block leaves its pcp list for the
      buddy (__free_one_page(), merging). Its migratetype is the pageblock's at that moment;
      when the emulated pageblock says otherwise the pageblock is moved (move_freepages_block())
      -- the kernel changed it where no event shows it (counted as ``pageblock_mt_learned``).

    The emulator's own pcp batch/high logic is not used in this mode: the trace says when the
    kernel refilled and drained. What no event shows is counted, never hidden
    (:data:`MISMATCHES`): the kernel's frees that bypass the pcp lists when the pcp lock is
    contended, free-page reporting and compaction taking free pages off and back without kmem
    events, and the fuzz of the snapshot itself.

``policy``
    Only the requests are replayed: each ``mm_page_alloc`` becomes alloc_pages(gfp, order) on
    the emitting CPU, each free frees the emulator's block that the same trace allocation got
    ("frees by identity"; frees of allocations older than the trace free the snapshot's block
    at the same pfn). The emulator's allocator (pcp lists, fallbacks, claiming) chooses the
    placement, so stages and free-tracking options compare on fragmentation.

Start state (both modes): the emulated machine is built from the pre-snapshot's zoneinfo and
iomem (analysis/machine_from_snapshot.py) with the RAM the buddy never got taken from the
snapshot itself (PG_reserved pages, never-initialised pages at the top of a zone); every
allocation unit the snapshot shows (trace_types.snapshot_units) is taken off the buddy lists
(take_page_off_buddy()/break_down_buddy_pages()) so the free blocks are the snapshot's
KPF_BUDDY runs. Pageblock migratetypes are not in any /proc file per pageblock; they are
inferred from what the pageblock holds (:func:`infer_pageblock_mt`) and compared with
pagetypeinfo's totals.

Snapshot timing: the pre-snapshot reads kpageflags chunk by chunk *while the trace runs*; the
chunk markers (``FIXTURE snapshot ... chunk start_pfn=0x.. npfn=N`` written before each chunk,
``memdesc snapshot chunk ...`` written after it) say when. An event is applied only if it
comes after the read of the chunk holding its pfn (:func:`snapshot_gates`); earlier events
are already in the snapshot.

The hot loops are numba kernels over the columns and the emulator's arrays (one call per block
of ~1 M operations, so progress can be shown). Results are sampled along the trace; the
metrics per sample (fragmentation, metadata per stage) are computed afterwards, vectorised.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from numba import njit

from memdesc.analysis import fragmentation as frag
from memdesc.analysis import trace_types as tt
from memdesc.analysis.census import CLASSES, NR_UNIT_ORDERS, Census
from memdesc.analysis.classify import Layout
from memdesc.analysis.cost import stage_cost
from memdesc.analysis.descriptors import DescriptorTable, load_descriptors
from memdesc.analysis.machine_from_snapshot import zone_specs
from memdesc.analysis.survey import layout_of, nr_cpus_of
from memdesc.errors import InputError
from memdesc.ingest import procfs
from memdesc.ingest.snapshot import Snapshot, open_snapshot
from memdesc.ingest.trace_events import Trace
from memdesc.mm import page_alloc as pa
from memdesc.mm.free_tracking import (
    buddy_order_of,
    clear_buddy,
    free_state,
    list_add,
    list_del,
    mark_pcp,
    page_zone_index,
    prep_new_page,
    px,
    set_buddy_order,
    unmanaged,
    zx,
)
from memdesc.mm.gfp import (
    MIGRATE_HIGHATOMIC,
    MIGRATE_ISOLATE,
    MIGRATE_MOVABLE,
    MIGRATE_PCPTYPES,
    MIGRATE_RECLAIMABLE,
    MIGRATE_UNMOVABLE,
)
from memdesc.mm.mmzone import (
    MAX_PAGE_ORDER,
    NR_PAGE_ORDERS,
    NR_ZONES,
    ZONE_NAMES,
    Machine,
    pageblock_order,
)
from memdesc.stages import Stage, variant_name

MODES = ("placement", "policy")

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
            rows.append((m[1], int(m[2], 16), int(m[3]), int(index[i])))
    kpage_end = steps.get("kpage_end", steps.get("after_read_begin"))
    if not rows:
        gate = kpage_end if kpage_end is not None else 0
        return ChunkGates(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                          gate, "steps" if kpage_end is not None else "none", steps)
    style = rows[0][0]
    starts = np.array([r[1] for r in rows], np.int64)
    sizes = np.array([r[2] for r in rows], np.int64)
    marks = np.array([r[3] for r in rows], np.int64)
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

    def __len__(self) -> int:
        return len(self.kind)


@njit(cache=True, nogil=True)
def _pair_ops(kind, pfn, order, applies, npfn, pair, first, stats):
    """Pair frees with allocations by head PFN (stats: 0 frees of trace allocations, 1 frees
    of older allocations, 2 order mismatches, 3 allocations still live at the end) and mark
    the first applied op of each PFN."""
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
        if k == 0:
            head[p] = i
        elif k == 1:
            j = head[p]
            pair[i] = j
            if j >= 0:
                stats[0] += 1
                if order[j] != order[i]:
                    stats[2] += 1
                head[p] = -1
            else:
                stats[1] += 1
    for p in range(npfn):
        if head[p] >= 0:
            stats[3] += 1


def prepare_ops(tr: Trace, types: tt.TypeInference, gates: ChunkGates) -> ReplayOps:
    """Page events -> operations (see :class:`ReplayOps` and the module docstring)."""
    ev = tr.events
    e = ev["event"]
    pfn = ev["pfn"]
    alloc = (e == 0) & (pfn >= 0)
    free = ((e == 1) | ((e == 2) & ~ev["dup_of_prev_free"])) & (pfn >= 0)
    take = (e == 3) & (pfn >= 0)
    drain = (e == 4) & (pfn >= 0)
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
    stats = np.zeros(4, np.int64)
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
         "free_batched_dups_skipped": int(((e == 2) & ev["dup_of_prev_free"]).sum()),
         "free_batched_orphans": int(((e == 2) & ~ev["dup_of_prev_free"]).sum()),
         "failed_allocs_skipped": int(((e == 0) & (pfn < 0)).sum()),
         "take_refill": int(((kind == OP_TAKE) & (ev["percpu_refill"][idx] == 1)).sum()),
         "frees_of_trace_allocs": int(stats[0]), "frees_of_older_allocs": int(stats[1]),
         "free_order_differs_from_alloc": int(stats[2]),
         "allocs_live_at_end": int(stats[3])})


# ---- the start state ---------------------------------------------------------------------------

def _ranges(mask: np.ndarray, base: int = 0) -> list[tuple[int, int]]:
    """[start, end) runs of True in ``mask``."""
    m = np.concatenate(([False], mask, [False]))
    d = np.flatnonzero(m[1:] != m[:-1])
    return [(base + int(a), base + int(b)) for a, b in zip(d[::2], d[1::2], strict=True)]


def machine_for_replay(snapshot: Snapshot, layout: Layout, units: tt.SnapshotUnits,
                       zoneinfo: list[procfs.ZoneInfo]) -> tuple[Machine, list[str]]:
    """The emulated machine of the snapshot, with the non-managed RAM placed where the
    snapshot shows it: PG_reserved pages and the never-initialised run at the top of a zone
    (as many as zoneinfo's present - managed leaves). Where the two disagree the snapshot
    wins and the difference is noted."""
    notes = []
    specs = {(s.node, s.name): s for s in zone_specs(zoneinfo)}
    ram = layout.ram or [(z.start_pfn, z.end_pfn) for z in layout.zones]
    in_ram = np.zeros(snapshot.pfn_count, bool)
    for a, b in ram:
        in_ram[a:min(b, snapshot.pfn_count)] = True
    reserved: list[tuple[int, int]] = []
    new_specs = []
    for z in layout.zones:
        lo, hi = z.start_pfn, min(z.end_pfn, snapshot.pfn_count)
        pc = units.pclass[lo:hi]
        ram_z = in_ram[lo:hi]
        res = (pc == tt.CLASS_INDEX["reserved"]) & ram_z
        need = z.present - z.managed - int(res.sum())
        not_zero = np.flatnonzero(ram_z & (pc != tt.FLAG0))
        top = hi - lo if not len(not_zero) else int(not_zero[-1]) + 1
        f0_top = np.zeros_like(res)
        if need > 0:
            run = np.flatnonzero(ram_z[top:])        # flags==0 RAM at the top of the zone
            f0_top[top + run[-need:] if need <= len(run) else top + run] = True
        managed_mask = ram_z & ~res & ~f0_top
        managed = int(managed_mask.sum())
        if managed != z.managed:
            notes.append(f"zone {z.name}: zoneinfo says managed {z.managed:,}, the snapshot "
                         f"leaves {managed:,} (PG_reserved and never-initialised pages "
                         "counted from kpageflags); the emulator uses the snapshot's")
        reserved += _ranges(ram_z & ~managed_mask, lo)
        s = specs[(z.node, z.name)]
        new_specs.append(replace(s, managed=managed))
    others = [s for k, s in specs.items() if k not in {(z.node, z.name) for z in layout.zones}]
    nr_cpus = nr_cpus_of(zoneinfo) or 1
    machine = Machine.from_zones(new_specs + others, ram, nr_cpus=nr_cpus,
                                 reserved=reserved, name=str(snapshot.source))
    return machine, notes


#: Census classes whose pages the kernel can move (LRU folios, KSM) [S: mm/compaction.c].
_MOVABLE_CLASSES = ("file", "anon", "shmem", "ksm")


def infer_pageblock_mt(units: tt.SnapshotUnits, nr_pfns: int) -> np.ndarray:
    """A migratetype per pageblock from what it holds [I]: the majority of its allocated
    pages decides between MOVABLE (file, anon, shmem, KSM), RECLAIMABLE (slab) and UNMOVABLE
    (everything else); pageblocks with nothing allocated stay MOVABLE (memmap_init_range())."""
    pc = np.zeros(nr_pfns, np.int8)
    n = min(nr_pfns, len(units.pclass))
    pc[:n] = units.pclass[:n]
    nb = nr_pfns >> pageblock_order
    pcb = pc[: nb << pageblock_order].reshape(nb, 1 << pageblock_order)
    movable = np.isin(pcb, [tt.CLASS_INDEX[c] for c in _MOVABLE_CLASSES]).sum(axis=1)
    slab = (pcb == tt.SLAB).sum(axis=1)
    free_or_hole = np.isin(pcb, [tt.FREE, tt.HOLE, tt.UNINIT]).sum(axis=1)
    other = (1 << pageblock_order) - movable - slab - free_or_hole
    mt = np.full(nb, MIGRATE_MOVABLE, np.int8)
    mt[(slab > movable) & (slab >= other)] = MIGRATE_RECLAIMABLE
    mt[(other > movable) & (other > slab)] = MIGRATE_UNMOVABLE
    return mt


@njit(cache=True, nogil=True)
def _release_outside(mem, S, gz, head, order, lo, hi, mt):
    """Give back to the free lists the parts of the free block [head, head + 2^order) (already
    off its list) outside [lo, hi), as buddy blocks. Generalises break_down_buddy_pages()
    (mm/page_alloc.c, used by take_page_off_buddy()) to a target range."""
    stack_p = np.empty(2 * (MAX_PAGE_ORDER + 1), np.int64)
    stack_o = np.empty(2 * (MAX_PAGE_ORDER + 1), np.int64)
    top = 0
    stack_p[0] = head
    stack_o[0] = order
    top = 1
    while top > 0:
        top -= 1
        p = stack_p[top]
        o = stack_o[top]
        end = p + (np.int64(1) << o)
        if end <= lo or p >= hi:
            pa.add_to_free_list(mem, S, p, gz, o, mt, False)
            set_buddy_order(mem, S, p, o)
            pa.account_freepages(S, gz, np.int64(1) << o, mt)
        elif not (p >= lo and end <= hi):
            half = np.int64(1) << (o - 1)
            stack_p[top] = p
            stack_o[top] = o - 1
            stack_p[top + 1] = p + half
            stack_o[top + 1] = o - 1
            top += 2


@njit(cache=True, nogil=True)
def _free_head_of(mem, S, pfn):
    """(head, order) of the free buddy block holding ``pfn``, or (-1, -1)."""
    for o in range(NR_PAGE_ORDERS):
        h = pfn & ~((np.int64(1) << o) - 1)
        bo = buddy_order_of(mem, S, h)
        if bo >= o:
            return h, bo
    return -1, -1


@njit(cache=True, nogil=True)
def take_range(mem, S, gz, pfn, order):
    """Take [pfn, pfn + 2^order) off the buddy lists. Mirrors take_page_off_buddy() for a
    block: the free block holding it is deleted and broken down around it
    (break_down_buddy_pages()). Returns 2 when one free block held it all, 1 when it was
    gathered from several (or only partly free), 0 when none of it was free."""
    lo = pfn
    hi = pfn + (np.int64(1) << order)
    h, o = _free_head_of(mem, S, pfn)
    if h >= 0 and h + (np.int64(1) << o) >= hi:
        mt = pa.get_pfnblock_migratetype(S, h)
        pa.del_page_from_free_list(mem, S, h, gz, o, mt)
        _release_outside(mem, S, gz, h, o, lo, hi, mt)
        return 2
    got = 0
    p = lo
    while p < hi:
        h, o = _free_head_of(mem, S, p)
        if h < 0:
            p += 1
            continue
        mt = pa.get_pfnblock_migratetype(S, h)
        pa.del_page_from_free_list(mem, S, h, gz, o, mt)
        _release_outside(mem, S, gz, h, o, lo, hi, mt)
        got += 1
        p = h + (np.int64(1) << o)
    return 1 if got else 0


@njit(cache=True, nogil=True)
def _place_snapshot(mem, S, managed, ucls, uord, st, blk):
    """Start state: every snapshot unit inside the managed RAM taken off the buddy and
    prepared as an allocation (compound when larger than a page). Returns the units placed
    and the managed pages the snapshot shows in use but no unit covers (should be 0)."""
    mem, S = unmanaged(mem), unmanaged(S)
    n = ucls.shape[0]
    placed = 0
    p = 0
    while p < n:
        c = ucls[p]
        if c < 0 or not managed[p]:
            p += 1
            continue
        o = uord[p]
        if o > MAX_PAGE_ORDER:       # a hugetlb gigantic folio: take it page block by block
            o = MAX_PAGE_ORDER
        gz = page_zone_index(mem, S, p)
        take_range(mem, S, gz, p, o)
        prep_new_page(mem, S, p, o, o > 0, gz)
        st[p] = ST_SNAP
        blk[p] = o
        placed += 1
        p += 1
    return placed


@njit(cache=True, nogil=True)
def _set_pageblocks(mem, S, mt):
    """Move each pageblock to its inferred migratetype (move_freepages_block())."""
    mem, S = unmanaged(mem), unmanaged(S)
    moved = 0
    for b in range(mt.shape[0]):
        gz = S[S[pa.C_OFF_PBZ] + b]
        if gz < 0 or mt[b] == MIGRATE_MOVABLE:
            continue
        pfn = np.int64(b) << pageblock_order
        old = pa.get_pfnblock_migratetype(S, pfn)
        if old != mt[b] and pa.move_freepages_block(mem, S, gz, pfn, old, mt[b]) >= 0:
            moved += 1
    return moved


# ---- unit accounting (both modes) ---------------------------------------------------------------

@njit(cache=True, nogil=True)
def _unit_add(ucls, uord, units, p, o, c):
    ucls[p] = c
    uord[p] = o
    units[c, o] += 1


@njit(cache=True, nogil=True)
def _unit_drop(ucls, uord, units, p, o):
    """Remove the units whose heads lie in [p, p + 2^o)."""
    if ucls[p] >= 0 and uord[p] == o:
        units[ucls[p], uord[p]] -= 1
        ucls[p] = -1
        return
    for q in range(p, p + (np.int64(1) << o)):
        if ucls[q] >= 0:
            units[ucls[q], uord[q]] -= 1
            ucls[q] = -1


# ---- placement ---------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _count(mism, slot, i):
    """Count a mismatch and keep the first and last op index where it happened."""
    if mism[slot, 0] == 0:
        mism[slot, 1] = i
    mism[slot, 0] += 1
    mism[slot, 2] = i


@njit(cache=True, nogil=True)
def _pcp_unlink(mem, S, st, blk, pcpu, p):
    """Take block ``p`` off the pcp list it sits on (list_del + per_cpu_pages.count)."""
    o = np.int64(blk[p])
    gz = page_zone_index(mem, S, p)
    list_del(mem, S, p, gz, o)
    S[px(S, gz, pcpu[p]) + pa.P_COUNT] -= np.int64(1) << o
    st[p] = ST_NONE


@njit(cache=True, nogil=True)
def _pcp_link(mem, S, st, blk, pcpu, p, o, gz, cpu, mt, tail):
    """Put block ``p`` on ``cpu``'s pcp list for (mt, o) (rmqueue_bulk() adds at the tail,
    free_frozen_page_commit() at the head)."""
    if mt >= MIGRATE_PCPTYPES or mt < 0:
        mt = MIGRATE_MOVABLE
    h = pa.pcp_head(S, gz, cpu, pa.order_to_pindex(mt, o))
    mark_pcp(mem, S, p)
    if tail:
        pa.list_add_tail(mem, S, p, h, gz, o)
    else:
        list_add(mem, S, p, h, gz, o)
    S[px(S, gz, cpu) + pa.P_COUNT] += np.int64(1) << o
    st[p] = ST_PCP
    blk[p] = o
    pcpu[p] = cpu


@njit(cache=True, nogil=True)
def _reset_pages(mem, S, p, o):
    for q in range(p, p + (np.int64(1) << o)):
        free_state(mem, S, q)


@njit(cache=True, nogil=True)
def _to_buddy(mem, S, p, o, gz):
    """A block leaves the allocator's hands for the buddy lists (__free_one_page() with the
    pageblock's migratetype; split per pageblock above pageblock_order)."""
    if o > pageblock_order:
        pa.split_large_buddy(mem, S, p, gz, o, pa.FPI_NONE)
    else:
        pa.__free_one_page(mem, S, p, gz, o, pa.get_pfnblock_migratetype(S, p), pa.FPI_NONE)


@njit(cache=True, nogil=True)
def _sample(S, units, k, nr_free, pcp, units_s):
    """Free blocks per zone and order, pcp pages per zone and the unit counts, into slot k."""
    nz = S[pa.C_NZ]
    ncpu = S[pa.C_NCPU]
    for gz in range(nz):
        z = zx(S, gz)
        for o in range(NR_PAGE_ORDERS):
            nr_free[k, gz, o] = S[z + pa.Z_NRFREE + o]
        c = 0
        for cpu in range(ncpu):
            c += S[px(S, gz, cpu) + pa.P_COUNT]
        pcp[k, gz] = c
    units_s[k] = units


@njit(cache=True, nogil=True)
def _learn_mt(mem, S, gz, p, emt):
    """A drain's migratetype is its pageblock's at that moment (free_pcppages_bulk() reads
    get_pfnblock_migratetype()); move the emulated pageblock when it disagrees, unless the
    pageblock sits inside a larger free block. Returns True when moved."""
    pmt = pa.get_pfnblock_migratetype(S, p)
    if not (0 <= emt < MIGRATE_PCPTYPES) or pmt >= MIGRATE_PCPTYPES or emt == pmt:
        return False
    h, o = _free_head_of(mem, S, p)
    if o > pageblock_order:
        return False
    return pa.move_freepages_block(mem, S, gz, p, pmt, emt) >= 0


@njit(cache=True, nogil=True)
def claim_whole_block(mem, S, gz, pfn, order, start_mt):
    """Take [pfn, pfn + 2^order) from a free block of pageblock_order or more as
    try_to_claim_block() does when it claims the whole block: the block leaves its list, its
    pageblocks become ``start_mt`` (change_pageblock_range()) and the rest is expanded onto
    the new type's lists. Smaller free blocks are taken as take_range() does."""
    h, o = _free_head_of(mem, S, pfn)
    if h < 0 or o < pageblock_order or not (0 <= start_mt < MIGRATE_PCPTYPES):
        return take_range(mem, S, gz, pfn, order)
    old = pa.get_pfnblock_migratetype(S, h)
    if old >= MIGRATE_PCPTYPES:
        return take_range(mem, S, gz, pfn, order)
    pa.del_page_from_free_list(mem, S, h, gz, o, old)
    pa.change_pageblock_range(S, h, o, start_mt)
    _release_outside(mem, S, gz, h, o, pfn, pfn + (np.int64(1) << order), start_mt)
    return 2


@njit(cache=True, nogil=True)
def _placement_loop(mem, S, lo, hi, kind, pfn, order, mt, cpu, cls, evidx, applies, first,
                    managed, st, blk, pcpu, ucls, uord, units, mism, spos, snext, nr_free, pcp,
                    units_s):
    """Apply ops [lo, hi) as the kernel did (module docstring); record a sample before the
    first op at or past each sample position. Returns the next sample slot."""
    mem, S = unmanaged(mem), unmanaged(S)
    ncpu = S[pa.C_NCPU]
    k = snext
    ns = spos.shape[0]
    for i in range(lo, hi):
        while k < ns and evidx[i] >= spos[k]:
            _sample(S, units, k, nr_free, pcp, units_s)
            k += 1
        if not applies[i]:
            continue
        p = pfn[i]
        o = np.int64(order[i])
        if p < 0 or p + (np.int64(1) << o) > managed.shape[0] or not managed[p]:
            _count(mism, M_UNMANAGED, i)
            continue
        gz = page_zone_index(mem, S, p)
        c = cpu[i] % ncpu
        op = kind[i]
        s = st[p]
        if op == OP_TAKE:
            if s == ST_PCP:
                _count(mism, M_TAKE_FROM_PCP, i)
                _pcp_unlink(mem, S, st, blk, pcpu, p)
            else:
                r = take_range(mem, S, gz, p, o)
                if r == 0:
                    _count(mism, M_TAKE_NOT_FREE, i)
                elif r == 1:
                    _count(mism, M_TAKE_PARTIAL, i)
                if s in (ST_ALLOC, ST_SNAP):
                    _unit_drop(ucls, uord, units, p, o)
                    _reset_pages(mem, S, p, o)
            if pa.pcp_allowed_order(o):
                _pcp_link(mem, S, st, blk, pcpu, p, o, gz, c, mt[i], True)
            else:
                st[p] = ST_TAKEN
                blk[p] = o
        elif op == OP_ALLOC:
            if s == ST_PCP:
                if blk[p] != o:
                    _count(mism, M_ORDER_MISMATCH, i)
                small = blk[p] < o
                _pcp_unlink(mem, S, st, blk, pcpu, p)
                if small:
                    take_range(mem, S, gz, p, o)
            elif s == ST_TAKEN:
                if blk[p] != o:
                    _count(mism, M_ORDER_MISMATCH, i)
            elif s in (ST_SNAP, ST_ALLOC):
                if s == ST_SNAP and first[i]:
                    _count(mism, M_ALLOC_SNAPSHOT_PCP, i)
                else:
                    _count(mism, M_ALLOC_OF_ALLOCATED, i)
                _unit_drop(ucls, uord, units, p, o)
                _reset_pages(mem, S, p, o)
            else:
                _count(mism, M_ALLOC_CLAIMED, i)
                claim_whole_block(mem, S, gz, p, o, mt[i])
            prep_new_page(mem, S, p, o, o > 0, gz)
            st[p] = ST_ALLOC
            blk[p] = o
            _unit_add(ucls, uord, units, p, o, cls[i])
        elif op == OP_FREE:
            if s == ST_PCP:
                _count(mism, M_FREE_AFTER_BULK, i)
                _pcp_unlink(mem, S, st, blk, pcpu, p)
            elif s == ST_TAKEN:
                _count(mism, M_FREE_AFTER_BULK, i)
            elif s == ST_NONE:
                # it must have been allocated: take it as an untraced claim + bulk allocation
                _count(mism, M_FREE_OF_FREE, i)
                if claim_whole_block(mem, S, gz, p, o, pa.get_pfnblock_migratetype(S, p)) == 0:
                    continue
            elif blk[p] != o:
                _count(mism, M_SNAPSHOT_UNIT_ORDER if s == ST_SNAP else M_ORDER_MISMATCH, i)
            _unit_drop(ucls, uord, units, p, o)
            _reset_pages(mem, S, p, o)
            st[p] = ST_NONE
            pmt = pa.get_pfnblock_migratetype(S, p)
            if pa.pcp_allowed_order(o) and pmt != MIGRATE_ISOLATE:
                if pmt == MIGRATE_HIGHATOMIC:
                    pmt = MIGRATE_MOVABLE
                _pcp_link(mem, S, st, blk, pcpu, p, o, gz, c, pmt, False)
            else:
                _to_buddy(mem, S, p, o, gz)
        else:                                                     # OP_DRAIN
            if s == ST_PCP:
                if blk[p] != o:
                    _count(mism, M_ORDER_MISMATCH, i)
                _pcp_unlink(mem, S, st, blk, pcpu, p)
                clear_buddy(mem, S, p)
            elif s in (ST_SNAP, ST_ALLOC, ST_TAKEN):
                if s == ST_SNAP and first[i]:
                    _count(mism, M_DRAIN_SNAPSHOT_PCP, i)
                else:
                    _count(mism, M_DRAIN_NOT_PCP, i)
                _unit_drop(ucls, uord, units, p, o)
                _reset_pages(mem, S, p, o)
                st[p] = ST_NONE
            else:
                _count(mism, M_DRAIN_CLAIMED, i)
                if _learn_mt(mem, S, gz, p, mt[i]):
                    _count(mism, M_PAGEBLOCK_MT_LEARNED, i)
                continue
            if _learn_mt(mem, S, gz, p, mt[i]):
                _count(mism, M_PAGEBLOCK_MT_LEARNED, i)
            _to_buddy(mem, S, p, o, gz)
    return k


# ---- policy ------------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _policy_loop(mem, S, lo, hi, kind, pfn, order, cpu, gfp, cls, evidx, applies, pair,
                 managed, st, blk, ucls, uord, units, emu, mism, spos, snext, nr_free, pcp,
                 units_s):
    """Replay only the requests (module docstring). ``emu[i]`` is the emulator's PFN for
    alloc op ``i`` (-1: failed / not yet / freed)."""
    mem, S = unmanaged(mem), unmanaged(S)
    ncpu = S[pa.C_NCPU]
    k = snext
    ns = spos.shape[0]
    for i in range(lo, hi):
        while k < ns and evidx[i] >= spos[k]:
            _sample(S, units, k, nr_free, pcp, units_s)
            k += 1
        if not applies[i]:
            continue
        op = kind[i]
        o = np.int64(order[i])
        if op == OP_ALLOC:
            q = pa.alloc_pages_nb(mem, S, gfp[i], o, 0, cpu[i] % ncpu)
            emu[i] = q
            if q < 0:
                _count(mism, M_ALLOC_FAILED, i)
                continue
            st[q] = ST_ALLOC
            blk[q] = o
            _unit_add(ucls, uord, units, q, o, cls[i])
        elif op == OP_FREE:
            j = pair[i]
            if j >= 0 and applies[j]:
                q = emu[j]
                if q < 0:
                    _count(mism, M_FREE_UNKNOWN, i)
                    continue
                oo = np.int64(order[j])
                emu[j] = -1
            else:
                q = pfn[i]                 # an allocation the snapshot holds at this pfn
                oo = o
                if q < 0 or q >= managed.shape[0] or not managed[q] or st[q] != ST_SNAP:
                    _count(mism, M_FREE_UNKNOWN, i)
                    continue
            _unit_drop(ucls, uord, units, q, oo)
            st[q] = ST_NONE
            pa.free_pages_nb(mem, S, q, oo, cpu[i] % ncpu)
    return k


@njit(cache=True, nogil=True)
def _policy_release_pcp(mem, S, kind, pfn, order, applies, first, managed, st, ucls, uord,
                        units):
    """Policy start: pages the snapshot shows in use that the trace first allocates or drains
    without a zone_locked were free on pcp lists; free them so both modes start with the same
    free memory. Returns the pages freed."""
    mem, S = unmanaged(mem), unmanaged(S)
    freed = 0
    for i in range(kind.shape[0]):
        if not (applies[i] and first[i]) or (kind[i] != OP_ALLOC and kind[i] != OP_DRAIN):
            continue
        p = pfn[i]
        o = np.int64(order[i])
        if p < 0 or p >= managed.shape[0] or not managed[p] or st[p] != ST_SNAP:
            continue
        _unit_drop(ucls, uord, units, p, o)
        st[p] = ST_NONE
        pa.free_pages_nb(mem, S, p, o, 0)
        freed += np.int64(1) << o
    return freed



# ---- the driver -------------------------------------------------------------------------------

@dataclass
class ReplayInput:
    """Everything a replay needs, prepared once and shared by every stage."""

    trace: Trace
    snapshot: Snapshot
    layout: Layout
    zoneinfo: list[procfs.ZoneInfo]
    units: tt.SnapshotUnits
    types: tt.TypeInference
    gates: ChunkGates
    ops: ReplayOps
    machine: Machine
    pageblock_mt: np.ndarray
    base_census: Census
    notes: list[str]
    prep_seconds: float
    #: the type rules checked against the snapshot (trace_types.check_against_snapshot())
    type_check: dict = field(default_factory=dict)


def load_replay_input(tr: Trace, snapshot_dir: Path | None = None,
                      progress: Callable[[int], None] | None = None) -> ReplayInput:
    """Snapshot, type inference, gates and operations of a trace (stage independent)."""
    from memdesc.analysis.classify import build_census, classify_chunks

    t0 = time.monotonic()
    snapshot_dir = snapshot_dir or tr.snapshot_dir
    if snapshot_dir is None:
        raise InputError(f"{tr.path}: no pre-snapshot beside this trace; the replay starts "
                         "from one (record with `memdesc record` without --no-snapshot, or "
                         "pass --snapshot DIR)")
    snapshot = open_snapshot(snapshot_dir)
    layout, zoneinfo = layout_of(snapshot)
    if not zoneinfo or not layout.zones:
        raise InputError(f"{snapshot_dir}: the snapshot has no zoneinfo; the emulated "
                         "machine is built from it")
    units = tt.snapshot_units(snapshot, layout, progress=progress)
    tally = classify_chunks(((s, a["kpageflags"]) for s, a in
                             snapshot.chunks(("kpageflags",))), layout)
    base = build_census(tally, str(snapshot.source), snapshot.kernel, nr_cpus_of(zoneinfo))
    types = tt.infer_types(tr)
    gates = snapshot_gates(tr, snapshot_dir)
    ops = prepare_ops(tr, types, gates)
    machine, notes = machine_for_replay(snapshot, layout, units, zoneinfo)
    pb_mt = infer_pageblock_mt(units, machine.nr_pfns)
    if gates.style == "none":
        notes.append("no snapshot chunk markers or capture steps in the trace: every event is "
                     "applied on top of the snapshot (events before it are counted twice)")
    gate_of_event = np.full(len(tr), gates.default_gate, np.int64)
    ev_pfn = tr.events["pfn"]
    gate_of_event[ev_pfn >= 0] = gates.of(ev_pfn[ev_pfn >= 0])
    check = tt.check_against_snapshot(tr, types, units, gate_of_event)
    return ReplayInput(tr, snapshot, layout, zoneinfo, units, types, gates, ops, machine,
                       pb_mt, base, notes, time.monotonic() - t0, check)


@dataclass
class StageRun:
    """One stage's replay: samples, counters, timing, final buddyinfo."""

    stage: Stage
    mode: str
    seconds: float
    setup_seconds: float
    samples_pos: np.ndarray        # event index of each sample
    nr_free: np.ndarray            # int64[samples, zones, orders]
    pcp: np.ndarray                # int64[samples, zones]
    units: np.ndarray              # int64[samples, classes, unit orders]
    mismatches: dict[str, int]
    start: dict
    final_buddyinfo: str
    alloc_pfn_digest: str = ""
    #: per mismatch with a non-zero count: (first, last) trace event index
    mismatch_where: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: the emulated memory at the end (only with replay_stage(keep_memmap=True))
    memmap: pa.MemMap | None = None

    @property
    def name(self) -> str:
        return variant_name(self.stage)


def sample_positions(inp: ReplayInput, samples: int) -> np.ndarray:
    """Event indices where state is sampled: evenly from the end of the snapshot reads to the
    end of the trace, plus the buddyinfo check point and the trace markers after the snapshot
    (workload phases; at most 1000)."""
    start = min(inp.gates.last, inp.ops.n_events)
    pos = np.linspace(start, inp.ops.n_events, max(2, samples)).astype(np.int64)
    check = inp.gates.steps.get("after_read_begin")
    extra = [check] if check is not None else []
    return np.unique(np.concatenate([pos, np.array(extra, np.int64),
                                     marker_positions(inp)[0][:1000]]))


def marker_positions(inp: ReplayInput) -> tuple[np.ndarray, list[str]]:
    """Event indices and texts of the trace markers after the snapshot reads (chunk markers
    excluded)."""
    m = inp.trace.markers or {}
    idx = np.asarray(m.get("index", []), np.int64)
    texts = list(m.get("text", []))
    keep = [i for i, t in enumerate(texts)
            if idx[i] >= inp.gates.last and not _CHUNK.match(t)]
    return idx[keep], [texts[i] for i in keep]


def _managed_map(machine: Machine) -> np.ndarray:
    m = np.zeros(machine.nr_pfns, np.uint8)
    for z in machine.zones:
        for s, e in machine.managed_ranges(z):
            m[s:e] = 1
    return m


def _digest(a: np.ndarray) -> str:
    import hashlib
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def replay_stage(inp: ReplayInput, stage: Stage, mode: str = "placement",
                 samples: int = 100, block: int = 1 << 20,
                 progress: Callable[[int], None] | None = None,
                 keep_memmap: bool = False) -> StageRun:
    """Replay ``inp`` at ``stage`` in ``mode``; ``progress(n)`` after each block of ops."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    t0 = time.monotonic()
    mm = pa.MemMap(inp.machine, stage, debug=False)
    n = mm.nr_pfns
    managed = _managed_map(inp.machine)
    # np.full writes every page now (np.zeros would leave the page faults to the timed loop)
    st = np.full(n, ST_NONE, np.int8)
    blk = np.full(n, 0, np.int8)
    pcpu = np.full(n, 0, np.int16)
    ucls = np.full(n, -1, np.int8)
    uord = np.full(n, -1, np.int8)
    k = min(n, inp.units.pfn_count)
    ucls[:k] = inp.units.ucls[:k]
    uord[:k] = inp.units.uord[:k]
    placed = _place_snapshot(mm.mem, mm.S, managed, ucls, uord, st, blk)
    # units outside managed RAM (reserved, holes) stay counted but are never touched
    units = np.zeros((NCLS, NR_UNIT_ORDERS), np.int64)
    m = ucls >= 0
    np.add.at(units, (ucls[m].astype(np.int64), uord[m].astype(np.int64)), 1)
    pb = min(len(inp.pageblock_mt), len(mm.pb))
    moved = _set_pageblocks(mm.mem, mm.S, inp.pageblock_mt[:pb])
    ops = inp.ops
    start = {"units_placed": int(placed), "pageblocks_retyped": int(moved),
             "buddyinfo": pa.buddyinfo(mm)}
    if mode == "policy":
        start["snapshot_pcp_pages_freed"] = int(_policy_release_pcp(
            mm.mem, mm.S, ops.kind, ops.pfn, ops.order, ops.applies, ops.first, managed, st,
            ucls, uord, units))
    setup = time.monotonic() - t0
    spos = sample_positions(inp, samples)
    ns = len(spos)
    nz = int(mm.S[pa.C_NZ])
    nr_free = np.zeros((ns, nz, NR_PAGE_ORDERS), np.int64)
    pcp = np.zeros((ns, nz), np.int64)
    units_s = np.zeros((ns, NCLS, NR_UNIT_ORDERS), np.int64)
    mism = np.zeros((len(MISMATCHES), 3), np.int64)
    emu = np.full(len(ops), -1, np.int64)
    nxt = 0
    loop_args = (ops.kind, ops.pfn, ops.order)
    if mode == "placement":               # load the compiled loop before the clock starts
        _placement_loop(mm.mem, mm.S, 0, 0, *loop_args, ops.mt, ops.cpu, ops.cls, ops.evidx,
                        ops.applies, ops.first, managed, st, blk, pcpu, ucls, uord, units, mism,
                        spos, 0, nr_free, pcp, units_s)
    else:
        _policy_loop(mm.mem, mm.S, 0, 0, *loop_args, ops.cpu, ops.gfp, ops.cls, ops.evidx,
                     ops.applies, ops.pair, managed, st, blk, ucls, uord, units, emu, mism,
                     spos, 0, nr_free, pcp, units_s)
    t1 = time.monotonic()
    for lo in range(0, len(ops), block):
        hi = min(len(ops), lo + block)
        if mode == "placement":
            nxt = _placement_loop(mm.mem, mm.S, lo, hi, ops.kind, ops.pfn, ops.order, ops.mt,
                                  ops.cpu, ops.cls, ops.evidx, ops.applies, ops.first, managed,
                                  st, blk, pcpu, ucls, uord, units, mism, spos, nxt, nr_free,
                                  pcp, units_s)
        else:
            nxt = _policy_loop(mm.mem, mm.S, lo, hi, ops.kind, ops.pfn, ops.order, ops.cpu,
                               ops.gfp, ops.cls, ops.evidx, ops.applies, ops.pair, managed, st,
                               blk, ucls, uord, units, emu, mism, spos, nxt, nr_free, pcp,
                               units_s)
        if progress:
            progress(hi - lo)
    while nxt < ns:                                   # samples at or past the last op
        _sample(mm.S, units, nxt, nr_free, pcp, units_s)
        nxt += 1
    seconds = time.monotonic() - t1
    digest = _digest(emu) if mode == "policy" else ""
    where = {name: (int(ops.evidx[mism[j, 1]]), int(ops.evidx[mism[j, 2]]))
             for j, name in enumerate(MISMATCHES) if mism[j, 0]}
    return StageRun(stage, mode, seconds, setup, spos, nr_free, pcp, units_s,
                    {name: int(v) for name, v in zip(MISMATCHES, mism[:, 0], strict=True)},
                    start,
                    pa.buddyinfo(mm), digest, where, mm if keep_memmap else None)


# ---- results -----------------------------------------------------------------------------------

def zone_names(machine: Machine) -> list[str]:
    """Name of each emulated zone row (node * NR_ZONES + zone type)."""
    return [f"{z.node}/{z.name}" for z in machine.zones]


def buddyinfo_check(inp: ReplayInput, run: StageRun) -> dict | None:
    """Emulated free blocks per zone and order against the kernel's next buddyinfo: the
    pre-snapshot's buddyinfo.after (read right after the kpage files) at its capture step.
    Within the documented effect of the pcp lists the two agree exactly: buddyinfo counts
    only the buddy lists, as the emulator does, and the pcp lists are followed event by
    event; what remains is listed, not hidden."""
    pos = inp.gates.steps.get("after_read_begin")
    text = inp.snapshot.text("buddyinfo", "after")
    if pos is None or text is None or not inp.snapshot.has("buddyinfo"):
        return None
    kernel = procfs.parse_buddyinfo(text)
    k = int(np.searchsorted(run.samples_pos, pos))
    if k >= len(run.samples_pos) or run.samples_pos[k] != pos:
        return None
    zinfo_after = inp.snapshot.text("zoneinfo", "after")
    pcp_after = {}
    if zinfo_after:
        for z in procfs.parse_zoneinfo(zinfo_after):
            if z.pcp:
                pcp_after[(z.node, z.name)] = sum(p.count for p in z.pcp)
    zones = []
    orders = 1 << np.arange(NR_PAGE_ORDERS)
    exact = True
    for (node, zname), counts in kernel.items():
        gz = node * NR_ZONES + ZONE_NAMES.index(zname)
        emu = run.nr_free[k, gz].tolist()
        diff = [e - c for e, c in zip(emu, counts, strict=True)]
        exact &= not any(diff)
        zones.append({
            "zone": f"{node}/{zname}", "kernel": counts, "emulated": emu, "diff": diff,
            "kernel_free_pages": int(np.dot(counts, orders)),
            "emulated_free_pages": int(np.dot(emu, orders)),
            "free_pages_diff": int(np.dot(diff, orders)),
            "kernel_pcp_pages": pcp_after.get((node, zname)),
            "emulated_pcp_pages": int(run.pcp[k, gz]),
        })
    return {"at_event": int(pos), "reference": "pre-snapshot buddyinfo.after (step "
            "after_read_begin)", "exact": bool(exact), "zones": zones}


def census_at(inp: ReplayInput, units: np.ndarray, nr_free: np.ndarray,
              pcp_pages: int) -> Census:
    """A Census of the emulated state for the cost model: allocation units by class and
    order from the replay (``flags0`` snapshot pages count as untyped, as the survey's
    classification would), free blocks from the buddy lists, pcp pages as untyped, and the
    classes the trace never changes (holes, never-initialised) from the snapshot's census."""
    base = inp.base_census
    u = {c: units[i].copy() for i, c in enumerate(CLASSES)}
    # flags==0 pages are order-0 units; the never-initialised ones (never touched by a trace)
    # are the snapshot census's own class
    u["untyped"] = u["untyped"] + units[tt.FLAG0]
    u["untyped"][0] += pcp_pages - base.pages_by_class["uninitialised"]
    u["untyped"][0] = max(0, int(u["untyped"][0]))
    free = np.zeros(NR_UNIT_ORDERS, np.int64)
    free[:NR_PAGE_ORDERS] = nr_free.sum(axis=0)
    u["free"] = free
    u["hole"] = base.units_by_class["hole"].copy()
    u["uninitialised"] = base.units_by_class["uninitialised"].copy()
    sizes = 1 << np.arange(NR_UNIT_ORDERS, dtype=np.int64)
    pages = {c: int((u[c] * sizes).sum()) for c in CLASSES}
    return Census(source=f"replay of {inp.trace.path}", pfns=base.pfns, pages_by_class=pages,
                  units_by_class=u, memmap_pages=base.memmap_pages, ram_pages=base.ram_pages,
                  kernel=base.kernel, nr_cpus=base.nr_cpus)


@dataclass
class StageSeries:
    """Per-sample results of one stage."""

    name: str
    struct_page_bytes: np.ndarray     # int64[samples]
    descriptor_bytes: np.ndarray
    total_bytes: np.ndarray
    by_type: dict[str, np.ndarray]
    unusable: np.ndarray              # int64[samples, zones, orders] (thousandths)
    extfrag: np.ndarray
    free_2m_blocks: np.ndarray        # int64[samples] (all zones)
    free_huge_percent: np.ndarray     # float[samples] (all zones)
    free_pages: np.ndarray            # int64[samples] buddy free pages (all zones)


def stage_series(inp: ReplayInput, run: StageRun,
                 table: DescriptorTable | None = None) -> StageSeries:
    """Metadata bytes (cost model on the census of each sample) and fragmentation."""
    table = table or load_descriptors()
    ns = len(run.samples_pos)
    sp = np.zeros(ns, np.int64)
    desc = np.zeros(ns, np.int64)
    by_type: dict[str, np.ndarray] = {}
    cache: dict[bytes, object] = {}
    for k in range(ns):
        key = run.units[k].tobytes() + run.pcp[k].tobytes()
        cost = cache.get(key)
        if cost is None:
            census = census_at(inp, run.units[k], run.nr_free[k], int(run.pcp[k].sum()))
            cost = cache[key] = stage_cost(census, run.stage, table)
        sp[k] = cost.struct_page_bytes
        desc[k] = cost.descriptor_bytes
        for t, v in cost.by_type.items():
            by_type.setdefault(t, np.zeros(ns, np.int64))[k] = v
    populated = [gz for gz, z in enumerate(inp.machine.zones) if z.managed]
    nf = run.nr_free[:, populated]
    total = nf.sum(axis=1)
    return StageSeries(run.name, sp, desc, sp + desc, by_type,
                       frag.unusable_free_index(nf), frag.fragmentation_index(nf),
                       frag.free_pageblocks(nf).sum(axis=1), frag.free_huge_score(total),
                       frag.contig_arrays(nf, 0)[0].sum(axis=1))


@dataclass
class ReplayResult:
    inp: ReplayInput
    mode: str
    runs: list[StageRun]
    series: list[StageSeries]
    checks: list[dict | None]

    def identical_observables(self) -> bool:
        """Every stage left the same free lists at every sample (and, in policy mode, handed
        out the same PFNs): the bisectable property."""
        a = self.runs[0]
        return all(np.array_equal(r.nr_free, a.nr_free) and np.array_equal(r.pcp, a.pcp)
                   and np.array_equal(r.units, a.units)
                   and r.alloc_pfn_digest == a.alloc_pfn_digest for r in self.runs[1:])


def replay(inp: ReplayInput, stages: list[Stage], mode: str = "placement",
           samples: int = 100, progress: Callable[[int], None] | None = None,
           table: DescriptorTable | None = None) -> ReplayResult:
    """Replay ``inp`` at each stage; series and the buddyinfo check per stage."""
    runs, series, checks = [], [], []
    table = table or load_descriptors()
    for s in stages:
        run = replay_stage(inp, s, mode, samples, progress=progress)
        runs.append(run)
        series.append(stage_series(inp, run, table))
        checks.append(buddyinfo_check(inp, run) if mode == "placement" else None)
    return ReplayResult(inp, mode, runs, series, checks)
