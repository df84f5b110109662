"""The replay's start state from a snapshot: which pages are free (and in which blocks), which
allocations exist, and the migratetype of every pageblock.

No /proc file gives a pageblock's migratetype per pageblock; /proc/pagetypeinfo gives, per
zone, how many pageblocks have each type ("Number of blocks type") and how many free blocks
of each order sit on each type's free list ("Free pages count per migrate type at order").
:func:`assign_pageblock_mt` picks the pageblocks (the documented rule, docs/replay.md):

1. **Counts from pagetypeinfo.** Per zone, exactly as many pageblocks get Unmovable,
   Reclaimable and HighAtomic as the snapshot's pagetypeinfo counts (``.before``: read before
   the kpage files; the ``.after`` copy is kept for the check at the end of the reads, so the
   start never sees what it is checked against). Every other pageblock is Movable (the type
   memmap_init_range() gives every pageblock). Isolated pageblocks are left Movable and noted.
2. **Contents choose the pageblocks.** Each pageblock scores its pages for each type:
   Unmovable = pages of no movable or slab class (page tables, reserved, untyped, zero page)
   plus half its slab pages; Reclaimable = slab pages; HighAtomic = as Unmovable; movable and
   free pages count against all three (every pageblock starts Movable, and only unmovable or
   reclaimable allocations falling back into it change that). Greedily,
   the highest (pageblock, type) scores are taken while the type has pageblocks left.
   A free order-10 block's two pageblocks move as one item: the kernel gives both halves one
   type when it merges them (__free_one_page(), "Match buddy type").
3. **Free lists repair.** The free blocks the snapshot shows (KPF_BUDDY runs cut into maximal
   aligned blocks) per pageblock are compared with pagetypeinfo's free counts per type and
   order: pageblocks are swapped between types (equal sizes, so the counts of step 1 hold)
   while a swap brings the free pages per (type, order) closer to pagetypeinfo's
   (:func:`_repair_nb`, first improvement, at most 20 passes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

from memdesc.analysis import trace_types as tt
from memdesc.analysis.census import CLASS_INDEX
from memdesc.ingest import procfs
from memdesc.mm.gfp import (
    MIGRATE_HIGHATOMIC,
    MIGRATE_MOVABLE,
    MIGRATE_RECLAIMABLE,
    MIGRATE_TYPES,
    MIGRATE_UNMOVABLE,
)
from memdesc.mm.mmzone import MAX_PAGE_ORDER, NR_PAGE_ORDERS, Machine, pageblock_order
from memdesc.mm.start_state import free_blocks

#: pagetypeinfo's migratetype names (migratetype_names[] in mm/vmstat.c) by migratetype.
MT_NAMES = ("Unmovable", "Movable", "Reclaimable", "HighAtomic", "Isolate")
_MOVABLE = [CLASS_INDEX[c] for c in ("file", "anon", "shmem", "ksm", "hugetlb")]
_NEUTRAL = [tt.FREE, tt.HOLE, tt.UNINIT, tt.FLAG0]
#: the non-Movable types step 2 hands out, in this order on equal scores
_ASSIGNED = (MIGRATE_UNMOVABLE, MIGRATE_RECLAIMABLE, MIGRATE_HIGHATOMIC)
PB = 1 << pageblock_order


@dataclass
class StartState:
    """What every stage's emulated memory starts from (stage independent)."""

    managed: np.ndarray           # uint8[nr_pfns]: the buddy manages the PFN
    free_pfn: np.ndarray          # int64 head of each free block
    free_order: np.ndarray        # int8
    unit_pfn: np.ndarray          # int64 head of each allocation (pieces of <= MAX_PAGE_ORDER)
    unit_order: np.ndarray        # int8
    pageblock_mt: np.ndarray      # int8[nr_pageblocks]
    #: per zone: how the pageblock types were chosen (counts asked, given, repair result)
    rule: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def managed_map(machine: Machine) -> np.ndarray:
    """uint8[nr_pfns]: 1 where the buddy allocator manages the PFN."""
    m = np.zeros(machine.nr_pfns, np.uint8)
    for z in machine.zones:
        for s, e in machine.managed_ranges(z):
            m[s:e] = 1
    return m


@njit(cache=True, nogil=True)
def _cover_nb(heads, orders, busy):
    """Set ``busy`` on the pages of every allocation (head, order) below len(busy)."""
    n = busy.shape[0]
    for i in range(heads.shape[0]):
        for p in range(heads[i], min(heads[i] + (np.int64(1) << orders[i]), n)):
            busy[p] = True


def _coverage(heads: np.ndarray, orders: np.ndarray, n: int) -> np.ndarray:
    """bool[n]: pages covered by the allocations (head, order)."""
    busy = np.zeros(n, bool)
    _cover_nb(np.asarray(heads, np.int64), np.asarray(orders, np.int64), busy)
    return busy


def _pieces(heads: np.ndarray, orders: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Allocations above MAX_PAGE_ORDER (gigantic hugetlb folios) as MAX_PAGE_ORDER pieces."""
    big = orders > MAX_PAGE_ORDER
    if not big.any():
        return heads, orders
    reps = np.where(big, np.int64(1) << np.maximum(orders - MAX_PAGE_ORDER, 0), 1)
    h = np.repeat(heads, reps)
    first = np.repeat(np.cumsum(reps) - reps, reps)
    step = np.where(np.repeat(big, reps), 1 << MAX_PAGE_ORDER, 0)
    h = h + (np.arange(len(h)) - first) * step
    return h, np.minimum(np.repeat(orders, reps), MAX_PAGE_ORDER).astype(np.int8)


def start_state(units: tt.SnapshotUnits, machine: Machine,
                pti: procfs.PageTypeInfo | None) -> StartState:
    """Free blocks, allocations and pageblock types of the snapshot (module docstring)."""
    n = machine.nr_pfns
    managed = managed_map(machine)
    k = min(n, units.pfn_count)
    ucls = np.full(n, -1, np.int8)
    uord = np.full(n, -1, np.int8)
    ucls[:k], uord[:k] = units.ucls[:k], units.uord[:k]
    heads = np.flatnonzero((ucls >= 0) & managed.astype(bool)).astype(np.int64)
    orders = uord[heads].astype(np.int64)
    busy = _coverage(heads, orders, n) | ~managed.astype(bool)
    ranges = [r for z in machine.zones for r in machine.managed_ranges(z)]
    fpfn, ford = free_blocks(busy.view(np.uint8), ranges)
    upfn, uo = _pieces(heads, orders)
    pclass = np.full(n, tt.HOLE, np.int8)
    pclass[:k] = units.pclass[:k]
    mt, rule, notes = assign_pageblock_mt(pclass, managed, fpfn, ford, machine, pti)
    return StartState(managed, fpfn, ford, upfn, uo.astype(np.int8), mt, rule, notes)


@njit(cache=True, nogil=True)
def _class_hist_nb(pclass, nb, ncls):
    """int64[nb, ncls]: pages of each class per pageblock."""
    hist = np.zeros((nb, ncls), np.int64)
    for b in range(nb):
        for i in range(b * PB, (b + 1) * PB):
            hist[b, pclass[i]] += 1
    return hist


def _block_scores(pclass: np.ndarray, nb: int) -> np.ndarray:
    """float[nb, MIGRATE_TYPES]: step 2's score of each pageblock for each type, and the
    count of non-neutral pages in column MIGRATE_MOVABLE (movable pages)."""
    hist = _class_hist_nb(pclass, nb, len(tt.CLASS_NAMES))
    movable = hist[:, _MOVABLE].sum(axis=1)
    slab = hist[:, tt.SLAB]
    other = PB - movable - slab - hist[:, _NEUTRAL].sum(axis=1)
    free = hist[:, tt.FREE]
    s = np.zeros((nb, MIGRATE_TYPES))
    s[:, MIGRATE_UNMOVABLE] = other + 0.5 * slab - movable - free
    s[:, MIGRATE_RECLAIMABLE] = slab - movable - free
    s[:, MIGRATE_HIGHATOMIC] = s[:, MIGRATE_UNMOVABLE]
    s[:, MIGRATE_MOVABLE] = movable
    return s


def assign_pageblock_mt(pclass: np.ndarray, managed: np.ndarray, free_pfn: np.ndarray,
                        free_order: np.ndarray,
                        machine: Machine, pti: procfs.PageTypeInfo | None
                        ) -> tuple[np.ndarray, list[dict], list[str]]:
    """A migratetype per pageblock (module docstring); per-zone rule results; notes."""
    nb = machine.nr_pfns >> pageblock_order
    mt = np.full(nb, MIGRATE_MOVABLE, np.int8)
    notes: list[str] = []
    if pti is None:
        notes.append("no pagetypeinfo in the snapshot: every pageblock starts Movable")
        return mt, [], notes
    scores = _block_scores(pclass, nb)
    # F[b, o]: free blocks of order o whose head lies in pageblock b (order 10: the lower one)
    fb = (free_pfn >> pageblock_order).astype(np.int64)
    F = np.zeros((nb, NR_PAGE_ORDERS), np.int64)
    np.add.at(F, (fb, free_order.astype(np.int64)), 1)
    item = np.arange(nb)
    o10 = fb[free_order > pageblock_order]
    item[o10 + 1] = o10                       # the upper half moves with the lower one
    rule = []
    for z in machine.zones:
        if not z.managed:
            continue
        b0, b1 = z.start_pfn >> pageblock_order, (z.end_pfn - 1) >> pageblock_order
        blocks = np.arange(b0, b1 + 1)
        live = blocks[_has_pages(pclass, managed, blocks)]
        want = pti.blocks.get((z.node, z.name))
        kfree = np.array([pti.free.get((z.node, z.name, MT_NAMES[t]), [0] * NR_PAGE_ORDERS)
                          for t in range(MIGRATE_TYPES)], np.int64)
        if want is None:
            notes.append(f"pagetypeinfo has no block counts for zone {z.name}: its "
                         "pageblocks start Movable")
            continue
        info = _assign_zone(live, item, scores, F, want, kfree, mt)
        info["zone"] = f"{z.node}/{z.name}"
        if info["kernel_blocks"] != info["blocks"]:
            notes.append(f"zone {z.name}: pagetypeinfo counts {info['kernel_blocks']:,} "
                         f"pageblocks, the snapshot shows {info['blocks']:,} with initialised "
                         "pages; Movable takes the difference")
        if want.get("Isolate"):
            notes.append(f"zone {z.name}: {want['Isolate']} isolated pageblocks in "
                         "pagetypeinfo start Movable (isolation is transient)")
        rule.append(info)
    return mt, rule, notes


def _has_pages(pclass: np.ndarray, managed: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """bool per pageblock: it holds a managed or a PG_reserved page. These are the pageblocks
    pagetypeinfo counts: pagetypeinfo_showblockcount_print() skips a pageblock whose first
    page is not online or not of the zone, and never-initialised struct pages (lazy init)
    read as zone 0."""
    sl = slice(blocks[0] * PB, (blocks[-1] + 1) * PB)
    m = managed[sl].astype(bool) | (pclass[sl] == CLASS_INDEX["reserved"])
    return m.reshape(len(blocks), PB).any(axis=1)


def _assign_zone(live: np.ndarray, item: np.ndarray, scores: np.ndarray, F: np.ndarray,
                 want: dict[str, int], kfree: np.ndarray, mt: np.ndarray) -> dict:
    quota = {t: int(want.get(MT_NAMES[t], 0)) for t in _ASSIGNED}
    # items: groups of pageblocks moving together (a free order-10 block's two halves)
    its, inv, weight = np.unique(item[live], return_inverse=True, return_counts=True)
    first = np.zeros(len(its), np.int64)
    first[inv[::-1]] = live[::-1]
    s = np.zeros((len(its), MIGRATE_TYPES))
    np.add.at(s, inv, scores[live])
    Fi = np.zeros((len(its), NR_PAGE_ORDERS), np.int64)
    np.add.at(Fi, inv, F[live])
    typ = np.full(len(its), MIGRATE_MOVABLE, np.int64)
    pairs = [(-s[i, t], t, int(first[i]), i) for t in _ASSIGNED if quota[t]
             for i in range(len(its))]
    pairs.sort()
    left = dict(quota)
    for _, t, _, i in pairs:
        if typ[i] == MIGRATE_MOVABLE and left[t] >= weight[i]:
            typ[i] = t
            left[t] -= weight[i]
    before = _cost(typ, Fi, kfree)
    passes = _repair_nb(typ, Fi, weight.astype(np.int64), kfree)
    after = _cost(typ, Fi, kfree)
    # every pageblock whose item is one of this zone's takes that item's type (its: sorted)
    if len(its):
        pos = np.minimum(np.searchsorted(its, item), len(its) - 1)
        hit = its[pos] == item
        mt[hit] = typ[pos[hit]]
    given = {MT_NAMES[t]: int(weight[typ == t].sum()) for t in range(MIGRATE_TYPES)}
    return {"kernel_blocks": int(sum(want.values())), "blocks": int(len(live)),
            "kernel_counts": dict(want), "assigned": given,
            "free_pages_off_before_repair": int(before), "free_pages_off_after_repair":
            int(after), "repair_passes": int(passes)}


def _cost(typ: np.ndarray, Fi: np.ndarray, kfree: np.ndarray) -> int:
    """Pages on the wrong (type, order) free list: Σ |emulated - kernel| * 2^order / 2."""
    S = np.zeros_like(kfree)
    for t in range(MIGRATE_TYPES):
        S[t] = Fi[typ == t].sum(axis=0)
    return int((np.abs(S - kfree) * (1 << np.arange(NR_PAGE_ORDERS))).sum() // 2)


@njit(cache=True, nogil=True)
def _run_ends(ctyp, out):
    """out[j]: the first position after j whose type differs from ctyp[j] (len at the end)."""
    n = ctyp.shape[0]
    for j in range(n - 1, -1, -1):
        if j == n - 1:
            out[j] = n
        elif ctyp[j + 1] != ctyp[j]:
            out[j] = j + 1
        else:
            out[j] = out[j + 1]


@njit(cache=True, nogil=True)
def _repair_nb(typ, Fi, weight, kfree):
    """Swap items of equal weight between types while it lowers Σ |S - K| * 2^order
    (S: free blocks per type and order of the items of that type). Only items holding free
    blocks can change the sum; each is tried, in order, against the other types' items.
    Returns the passes made. Candidates of the tried item's own type are passed over a
    run of equal types at a time (``run_end``): most candidates share one type."""
    nt, no = kfree.shape
    S = np.zeros((nt, no), np.int64)
    for i in range(typ.shape[0]):
        S[typ[i]] += Fi[i]
    size = np.empty(no, np.int64)
    for o in range(no):
        size[o] = np.int64(1) << o
    cand = np.flatnonzero(Fi.sum(axis=1) > 0)
    nc = cand.shape[0]
    ctyp = np.empty(nc, np.int64)             # the type of each candidate, kept up to date
    for j in range(nc):
        ctyp[j] = typ[cand[j]]
    run_end = np.empty(nc, np.int64)
    _run_ends(ctyp, run_end)
    # items without free blocks are interchangeable here: a pool of them per (type, weight)
    ni = typ.shape[0]
    pool = np.empty((nt, 3, ni), np.int64)
    npool = np.zeros((nt, 3), np.int64)
    for i in range(ni):
        if Fi[i].sum() == 0 and weight[i] <= 2:
            pool[typ[i], weight[i], npool[typ[i], weight[i]]] = i
            npool[typ[i], weight[i]] += 1
    passes = 0
    for _ in range(20):
        passes += 1
        improved = False
        for ia in range(nc):
            a = cand[ia]
            j = 0
            while j < nc + nt:
                ta = typ[a]
                w = weight[a]
                if j < nc:
                    if ctyp[j] == ta:
                        j = run_end[j]
                        continue
                    b = cand[j]
                else:
                    tb = j - nc
                    if w > 2 or tb == ta or npool[tb, w] == 0:
                        j += 1
                        continue
                    b = pool[tb, w, npool[tb, w] - 1]
                tb = typ[b]
                if tb == ta or weight[b] != w:
                    j += 1
                    continue
                delta = 0
                for o in range(no):
                    d = Fi[b, o] - Fi[a, o]
                    if d == 0:
                        continue
                    delta += (abs(S[ta, o] + d - kfree[ta, o]) - abs(S[ta, o] - kfree[ta, o])
                              + abs(S[tb, o] - d - kfree[tb, o])
                              - abs(S[tb, o] - kfree[tb, o])) * size[o]
                if delta < 0:
                    S[ta] += Fi[b] - Fi[a]
                    S[tb] += Fi[a] - Fi[b]
                    typ[a] = tb
                    typ[b] = ta
                    ctyp[ia] = tb
                    if j >= nc:                    # the empty item moves to a's old type
                        npool[tb, w] -= 1
                        pool[ta, w, npool[ta, w]] = b
                        npool[ta, w] += 1
                    else:
                        ctyp[j] = ta
                    _run_ends(ctyp, run_end)
                    improved = True
                j += 1
        if not improved:
            break
    return passes
