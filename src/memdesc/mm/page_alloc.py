"""The page allocator's entry points over the emulated mem_map, at every stage.

Mirrors mm/page_alloc.c of Linux 6.18. The kernel keeps the allocator in one file; here it is
split along its own lines, each file stating its invariants:

* memdesc.mm.buddy: free lists, __free_one_page() merging, expand()/__rmqueue_smallest()
  splitting, the migratetype fallbacks (__rmqueue_claim()/try_to_claim_block(),
  __rmqueue_steal()), move_freepages_block(), the watermark checks and the highatomic reserve;
* memdesc.mm.pcp: the per-cpu page lists (NR_PCP_LISTS 14, order_to_pindex(),
  nr_pcp_alloc()/nr_pcp_free()/nr_pcp_high(), free_pcppages_bulk(), drain_pages_zone());
* memdesc.mm.page_isolation: MIGRATE_ISOLATE on a pageblock (mm/page_isolation.c);
* memdesc.mm.memmap_init: MemMap and its boot (mm/mm_init.c: free_area_init(), memmap_init(),
  memblock_free_all()), and the page_zone()/page_to_nid() lookups on it;
* memdesc.mm.vmstat: /proc/buddyinfo and /proc/pagetypeinfo views, decay_pcp_high();
* this file: rmqueue() (pcp or buddy), the zonelist walk get_page_from_freelist() with
  ALLOC_NOFRAGMENT, __alloc_pages() and its slow path, __free_pages(), batch kernels and the
  Python API below. Every public name listed below is importable from here.

Free lists are threaded through the struct page bytes of the stage (see
memdesc.mm.free_tracking); the policy is the same code at every stage, so a sequence of calls
returns the same PFNs and leaves the same free lists whatever the layout. Invariant of this
layer: a PFN is handed out at most once until it is freed at the same order (the debug
record raises VMBug otherwise); every managed page is exactly one of free (buddy), on a pcp
list, or allocated (memdesc.mm.debug.check_memmap).

Not modelled: reclaim, compaction, kswapd and watermark boosting (an allocation that may
reclaim gets one retry after unreserving highatomic blocks and draining every pcp list, as
__alloc_pages_direct_reclaim() does when reclaim frees nothing), CMA, page reporting,
shuffling, cpusets, memory hotplug, the periodic decay_pcp_high() and the cache-size based
PCPF_FREE_HIGH_BATCH. __GFP_ZERO is accepted but there are no page contents to clear here
(memdesc.mm.kmem.PageContents zeroes the pages it backs). pcp->high starts at high_min.

Public API (stable; other layers build on it)
--------------------------------------------
``mm = MemMap(machine, stage, debug=True, free_all=True)``
    mem_map (one uint64 array, ``mm.mem``; ``mm.pages`` is the structured per-page view),
    zones, pageblocks, pcp lists; every managed page is free after construction (with
    ``free_all=False`` none is: memdesc.mm.start_state.set_start_state() sets up a running
    kernel's state instead). ``buffer=`` lends a uint64 array to hold mem_map (reused
    across stages by the replay; its contents are overwritten).
    ``debug`` keeps a record of live allocations, rejects bad frees (VMBug) and runs the full
    invariant check (memdesc.mm.debug) every ``check_every`` calls.
``alloc_pages(mm, gfp, order, nid=0, cpu=0) -> int``
    PFN of the first page, or -1 when the allocation fails (never raises for lack of memory).
``free_pages(mm, pfn, order, cpu=0)`` (also ``__free_pages``)
``alloc_pages_bulk(mm, gfp, orders, nid=0, cpu=0) -> np.ndarray[int64]``
    ``orders`` (and optionally ``gfp``) are arrays; one numba call; -1 for failures.
``free_pages_bulk(mm, pfns, orders, cpu=0)``
``run_ops(mm, kinds, gfps, orders, slots, nslots, nid=0, cpu=0) -> (pfns, slot_pfn)``
    a mixed alloc (kind 0, result stored in ``slots[i]``) / free (kind 1, frees the slot)
    sequence in one call (trace replay, benchmarks).
``set_page_memdesc(mm, pfn, order, word)``
    write the memdesc word of an allocation into every page (dynamic stages on; FieldAbsent
    before). Numba callers pass ``mm.mem, mm.S`` to ``set_memdesc_nb`` and friends.
``page_zone(mm, pfn) -> ZoneSpec``, ``page_zonenum()``, ``page_to_nid()``, ``folio_nid()``
    the stage's lookup (page->flags, or descriptor / Misc inline bits / PFN table).
``page_field(mm, pfn, name)``, ``set_page_field(mm, pfn, name, value)``
    struct page members by name; FieldAbsent for members the stage does not have.
``drain_all_pages(mm)``, ``set_pageblock_isolate(mm, pfn)``, ``clear_pageblock_isolate(mm,
pfn)``, ``free_area_counts(mm)``, ``free_lists(mm)``, ``zone_free_pages(mm)``, ``buddyinfo(mm)``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.mm import free_tracking as ft
from memdesc.mm.access_core import (
    OP_ALLOC_BUDDY,
    OP_ALLOC_PCP,
    OP_FREE_BUDDY,
    OP_FREE_PCP,
    op_begin,
    op_end,
    op_refine,
)
from memdesc.mm.buddy import (  # noqa: F401 -- also re-exported (pa.X callers)
    __free_one_page,
    __rmqueue,
    __rmqueue_smallest,
    account_freepages,
    add_to_free_list,
    change_pageblock_range,
    del_page_from_free_list,
    move_freepages_block,
    reserve_highatomic_pageblock,
    split_large_buddy,
    unreserve_highatomic_pageblock,
    wmark_pages,
    zone_watermark_fast,
)
from memdesc.mm.free_tracking import (  # noqa: F401 -- C_NCPU, C_NZ, list_add_tail re-exported
    C_NCPU,
    C_NNODE,
    C_NZ,
    C_NZL,
    C_OFF_ZL,
    free_range,
    lds,
    list_add_tail,
    memdesc_slot,
    page_zone_index,
    prep_new_page,
    sadd,
    sts,
    unmanaged,
    zx,
)
from memdesc.mm.gfp import (
    __GFP_COMP,
    __GFP_DIRECT_RECLAIM,
    __GFP_KSWAPD_RECLAIM,
    __GFP_MEMALLOC,
    __GFP_NOMEMALLOC,
    __GFP_THISNODE,
    ALLOC_HIGHATOMIC,
    ALLOC_KSWAPD,
    ALLOC_NO_WATERMARKS,
    ALLOC_NOFRAGMENT,
    ALLOC_NON_BLOCK,
    ALLOC_OOM,
    ALLOC_WMARK_LOW,
    ALLOC_WMARK_MASK,
    MIGRATE_HIGHATOMIC,
    MIGRATE_ISOLATE,
    MIGRATE_MOVABLE,
    MIGRATE_PCPTYPES,
    WMARK_HIGH,
    ZONE_DMA32,
    ZONE_NORMAL,
    check_gfp,
    gfp_migratetype,
    gfp_to_alloc_flags,
    gfp_zone,
)
from memdesc.mm.memmap_init import (  # noqa: F401 -- also re-exported (pa.X callers)
    MemMap,
    folio_nid,
    init_range_nb,
    page_field,
    page_to_nid,
    page_zone,
    page_zonenum,
    set_page_field,
)
from memdesc.mm.mm_types import FieldAbsent, page_member
from memdesc.mm.mmzone import MAX_PAGE_ORDER
from memdesc.mm.page_isolation import (
    clear_pageblock_isolate,
    set_pageblock_isolate,
)
from memdesc.mm.pcp import (  # noqa: F401 -- also re-exported (pa.X callers)
    drain_all_pages_nb,
    free_frozen_page_commit,
    order_to_pindex,
    pcp_allowed_order,
    rmqueue_pcplist,
)
from memdesc.mm.vmstat import (  # noqa: F401 -- also re-exported (pa.X callers)
    buddyinfo,
    free_area_counts,
    free_lists,
    pagetypeinfo_free_nb,
    pcp_count,
    zone_free_pages,
)
from memdesc.mm.zone_state import (  # noqa: F401 -- re-exported: pa.Z_*, pa.P_* ...
    CONFIG_PCP_BATCH_SCALE_MAX,
    FPI_NONE,
    FPI_TO_TAIL,
    NPCOL,
    NR_LOWORDER_PCP_LISTS,
    NZCOL,
    P_ALLOC_FACTOR,
    P_BATCH,
    P_COUNT,
    P_FLAGS,
    P_FREE_COUNT,
    P_HIGH,
    P_HIGH_MAX,
    P_HIGH_MIN,
    PB_COMPACT_SKIP,
    PB_MIGRATE_ISOLATE,
    PB_MIGRATE_MASK,
    PCPF_FREE_HIGH_BATCH,
    PCPF_PREV_FREE_HIGH_ORDER,
    RMQUEUE_CLAIM,
    RMQUEUE_CMA,
    RMQUEUE_NORMAL,
    RMQUEUE_STEAL,
    Z_BASE,
    Z_BOOST,
    Z_CLAIMED,
    Z_END,
    Z_EXTFRAG,
    Z_FAILED,
    Z_FLAGS,
    Z_FREE,
    Z_FREE_BLOCKS,
    Z_FREE_HA,
    Z_LOWRES,
    Z_MANAGED,
    Z_NID,
    Z_NRFREE,
    Z_PGALLOC,
    Z_PGFREE,
    Z_PRESENT,
    Z_RES_HA,
    Z_START,
    Z_TYPE,
    Z_WMARK,
    ZONE_BELOW_HIGH,
    VMBug,
    free_head,
    get_pfnblock_migratetype,
    pcp_head,
    pindex_to_order,
    set_pageblock_migratetype,
)

# ================================================================================================
# numba kernels: (mem, S, ...). mem is the mem_map words, S the int64 state (config header,
# list heads, zone rows Z_*, per_cpu_pages rows P_*, pageblock flags, PFN->zone table and
# zonelists; free_tracking.zx/px/hx index its regions). Entry points called from Python
# rebind both through unmanaged() so the callees pass them without refcounting.
# ================================================================================================

@njit(cache=True)
def rmqueue_buddy(mem, S, gz, order, alloc_flags, mt):
    """Mirrors rmqueue_buddy(): the highatomic reserve first for ALLOC_HIGHATOMIC, and as a
    last resort for ALLOC_OOM/ALLOC_NON_BLOCK."""
    op_refine(S, OP_ALLOC_PCP, OP_ALLOC_BUDDY, OP_ALLOC_BUDDY)
    page = -1
    if alloc_flags & ALLOC_HIGHATOMIC:
        page = __rmqueue_smallest(mem, S, gz, order, MIGRATE_HIGHATOMIC)
    if page < 0:
        page, _ = __rmqueue(mem, S, gz, order, mt, alloc_flags, RMQUEUE_NORMAL)
        if page < 0 and (alloc_flags & (ALLOC_OOM | ALLOC_NON_BLOCK)):
            page = __rmqueue_smallest(mem, S, gz, order, MIGRATE_HIGHATOMIC)
    return page


@njit(cache=True)
def rmqueue(mem, S, gz, cpu, order, alloc_flags, mt):
    """Mirrors rmqueue(): pcp lists for pcp-allowed orders, else the buddy lists."""
    if pcp_allowed_order(order):
        page = rmqueue_pcplist(mem, S, gz, cpu, order, mt, alloc_flags)
        if page >= 0:
            return page
    return rmqueue_buddy(mem, S, gz, order, alloc_flags, mt)


# ---- the zonelist walk -------------------------------------------------------------------------

@njit(cache=True)
def first_zone(mem, S, zlb, highest):
    """Mirrors first_zones_zonelist(): the preferred zone (first with idx <= highest)."""
    for k in range(S[C_NZL]):
        gz = lds(S, zlb + k)
        if gz < 0:
            return -1
        if S[zx(S, gz) + Z_TYPE] <= highest:
            return gz
    return -1


@njit(cache=True)
def alloc_flags_nofragment(mem, S, pref, gfp):
    """Mirrors alloc_flags_nofragment(): ALLOC_NOFRAGMENT when the preferred zone is
    ZONE_NORMAL and its node has DMA32 memory (or the machine has one node)."""
    alloc_flags = gfp & __GFP_KSWAPD_RECLAIM
    if pref < 0 or S[zx(S, pref) + Z_TYPE] != ZONE_NORMAL:
        return alloc_flags
    dma32 = pref - (ZONE_NORMAL - ZONE_DMA32)
    if S[C_NNODE] > 1 and S[zx(S, dma32) + Z_MANAGED] == 0:
        return alloc_flags
    return alloc_flags | ALLOC_NOFRAGMENT


@njit(cache=True)
def get_page_from_freelist(mem, S, zlb, order, alloc_flags, highest, mt, cpu, pref):
    """Mirrors get_page_from_freelist(): the first zone of the zonelist (idx <= highest)
    that passes its watermark and has a block; ALLOC_NOFRAGMENT is dropped before leaving
    the preferred node (``pref``, ac->preferred_zoneref) and before giving up. Returns (pfn,
    zone, alloc_flags)."""
    while True:
        no_fallback = alloc_flags & ALLOC_NOFRAGMENT
        restart = False
        for k in range(S[C_NZL]):
            gz = lds(S, zlb + k)
            if gz < 0:
                break
            if S[zx(S, gz) + Z_TYPE] > highest:
                continue
            # leaving the preferred node: locality beats fragmentation avoidance
            if (no_fallback and S[C_NNODE] > 1 and gz != pref
                    and lds(S, zx(S, gz) + Z_NID) != lds(S, zx(S, pref) + Z_NID)):
                alloc_flags &= ~ALLOC_NOFRAGMENT
                restart = True
                break
            ok = False
            if not (lds(S, zx(S, gz) + Z_FLAGS) & ZONE_BELOW_HIGH):
                if zone_watermark_fast(mem, S, gz, order, wmark_pages(S, gz, WMARK_HIGH), highest,
                                       alloc_flags):
                    ok = True
                else:
                    sts(S, zx(S, gz) + Z_FLAGS, lds(S, zx(S, gz) + Z_FLAGS) | (ZONE_BELOW_HIGH))
            if not ok:
                mark = wmark_pages(S, gz, alloc_flags & ALLOC_WMARK_MASK)
                ok = (zone_watermark_fast(mem, S, gz, order, mark, highest, alloc_flags)
                      or (alloc_flags & ALLOC_NO_WATERMARKS) != 0)
            if not ok:
                continue
            page = rmqueue(mem, S, gz, cpu, order, alloc_flags, mt)
            if page >= 0:
                if alloc_flags & ALLOC_HIGHATOMIC:
                    reserve_highatomic_pageblock(mem, S, page, order, gz)
                return page, gz, alloc_flags
        if restart:
            continue
        if no_fallback:
            alloc_flags &= ~ALLOC_NOFRAGMENT
            continue
        return -1, -1, alloc_flags


@njit(cache=True)
def alloc_pages_nb(mem, S, gfp, order, nid, cpu):
    """Mirrors __alloc_pages() -> get_page_from_freelist() with ALLOC_WMARK_LOW, then the
    slow path: gfp_to_alloc_flags() (min watermark, __GFP_HIGH/atomic reserves,
    ALLOC_HIGHATOMIC), ALLOC_NO_WATERMARKS for __GFP_MEMALLOC, and for callers that may
    reclaim one retry after unreserve_highatomic_pageblock() and drain_all_pages().
    Returns the PFN (prep_new_page() done) or -1. One counted operation (memdesc.mm.access):
    alloc_pages.pcp, refined to .refill / .buddy by the path taken."""
    mem, S = unmanaged(mem), unmanaged(S)
    op_begin(S, OP_ALLOC_PCP if pcp_allowed_order(order) else OP_ALLOC_BUDDY)
    page = _alloc_pages(mem, S, gfp, order, nid, cpu)
    op_end(S)
    return page


@njit(cache=True)
def _alloc_pages(mem, S, gfp, order, nid, cpu):
    highest = gfp_zone(gfp)
    mt = gfp_migratetype(gfp)
    zlb = S[C_OFF_ZL] + (nid * 2 + (1 if gfp & __GFP_THISNODE else 0)) * S[C_NZL]
    pref = first_zone(mem, S, zlb, highest)
    if pref < 0 or order > MAX_PAGE_ORDER:
        return -1
    alloc_flags = ALLOC_WMARK_LOW | alloc_flags_nofragment(mem, S, pref, gfp)
    page, gz, _ = get_page_from_freelist(mem, S, zlb, order, alloc_flags, highest, mt, cpu,
                                         pref)
    if page < 0:
        alloc_flags = gfp_to_alloc_flags(gfp, order)
        page, gz, _ = get_page_from_freelist(mem, S, zlb, order, alloc_flags, highest, mt, cpu,
                                             pref)
        if page < 0 and (gfp & __GFP_MEMALLOC) and not (gfp & __GFP_NOMEMALLOC):
            alloc_flags = ALLOC_NO_WATERMARKS | (alloc_flags & ALLOC_KSWAPD)
            page, gz, _ = get_page_from_freelist(mem, S, zlb, order, alloc_flags, highest, mt,
                                                 cpu, pref)
        if page < 0 and (gfp & __GFP_DIRECT_RECLAIM):
            unreserve_highatomic_pageblock(mem, S, zlb, highest, mt, False)
            drain_all_pages_nb(mem, S)
            page, gz, _ = get_page_from_freelist(mem, S, zlb, order, alloc_flags, highest, mt,
                                                 cpu, pref)
            if page < 0 and unreserve_highatomic_pageblock(mem, S, zlb, highest, mt, True):
                page, gz, _ = get_page_from_freelist(mem, S, zlb, order, alloc_flags, highest,
                                                     mt, cpu, pref)
    if page < 0:
        sadd(S, zx(S, pref) + Z_FAILED, 1)
        return -1
    prep_new_page(mem, S, page, order, (gfp & __GFP_COMP) != 0, gz)
    sadd(S, zx(S, gz) + Z_PGALLOC, np.int64(1) << order)
    return page


# ---- freeing ---------------------------------------------------------------------------------

@njit(cache=True)
def free_pages_nb(mem, S, pfn, order, cpu):
    """Mirrors __free_pages() -> free_pages_prepare() + __free_frozen_pages(): pcp-allowed
    orders go to the pcp list (HIGHATOMIC as MOVABLE, isolated pageblocks straight to the
    buddy), larger ones to free_one_page()."""
    mem, S = unmanaged(mem), unmanaged(S)
    op_begin(S, OP_FREE_PCP)
    _free_pages(mem, S, pfn, order, cpu)
    op_end(S)


@njit(cache=True)
def _free_pages(mem, S, pfn, order, cpu):
    n = np.int64(1) << order
    free_range(mem, S, pfn, n)
    gz = page_zone_index(mem, S, pfn)
    sadd(S, zx(S, gz) + Z_PGFREE, n)
    if not pcp_allowed_order(order):
        op_refine(S, OP_FREE_PCP, OP_FREE_BUDDY, OP_FREE_BUDDY)
        split_large_buddy(mem, S, pfn, gz, order, FPI_NONE)
        return
    mt = get_pfnblock_migratetype(S, pfn)
    if mt >= MIGRATE_PCPTYPES:
        if mt == MIGRATE_ISOLATE:
            op_refine(S, OP_FREE_PCP, OP_FREE_BUDDY, OP_FREE_BUDDY)
            split_large_buddy(mem, S, pfn, gz, order, FPI_NONE)
            return
        mt = MIGRATE_MOVABLE
    free_frozen_page_commit(mem, S, gz, cpu, pfn, mt, order)


# ---- batch kernels -------------------------------------------------------------------------------

@njit(cache=True)
def alloc_bulk_nb(mem, S, gfps, orders, nid, cpu, out):
    mem, S = unmanaged(mem), unmanaged(S)
    for i in range(orders.shape[0]):
        out[i] = alloc_pages_nb(mem, S, gfps[i], orders[i], nid, cpu)


@njit(cache=True)
def free_bulk_nb(mem, S, pfns, orders, cpu):
    mem, S = unmanaged(mem), unmanaged(S)
    for i in range(pfns.shape[0]):
        if pfns[i] >= 0:
            free_pages_nb(mem, S, pfns[i], orders[i], cpu)


@njit(cache=True)
def run_ops_nb(mem, S, kinds, gfps, orders, slots, nid, cpu, slot_pfn, slot_order, out):
    """Replay: kind 0 allocates into ``slot_pfn[slots[i]]`` (out[i] = pfn or -1), kind 1
    frees that slot (skipped when empty). Returns the number of failed allocations."""
    mem, S = unmanaged(mem), unmanaged(S)
    fails = 0
    for i in range(kinds.shape[0]):
        s = slots[i]
        if kinds[i] == 0:
            p = alloc_pages_nb(mem, S, gfps[i], orders[i], nid, cpu)
            out[i] = p
            if p < 0:
                fails += 1
            else:
                slot_pfn[s] = p
                slot_order[s] = orders[i]
        else:
            p = slot_pfn[s]
            out[i] = p
            if p >= 0:
                free_pages_nb(mem, S, p, slot_order[s], cpu)
                slot_pfn[s] = -1
    return fails


@njit(cache=True)
def set_memdesc_nb(mem, S, pfn, order, word):
    """alloc_page_desc()'s last step: the memdesc word into every page of the allocation."""
    mem, S = unmanaged(mem), unmanaged(S)
    slot = memdesc_slot(S)
    w = S[1]
    for i in range(np.int64(1) << order):
        ft.stm(mem, S, (pfn + i) * w + slot, word)


# ================================================================================================
# Python side
# ================================================================================================

# ---- the public functions ---------------------------------------------------------------------

def _check_order(order: int) -> None:
    if not 0 <= order <= MAX_PAGE_ORDER:
        raise ValueError(f"order {order} outside 0..{MAX_PAGE_ORDER}")


def alloc_pages(mm: MemMap, gfp: int, order: int = 0, nid: int = 0, cpu: int = 0) -> int:
    """Allocate 2^order pages; the first PFN or -1. Mirrors alloc_pages_node(nid, gfp, order)."""
    check_gfp(gfp)
    _check_order(order)
    pfn = int(alloc_pages_nb(mm.mem, mm.S, gfp, order, nid, cpu))
    if mm.debug and pfn >= 0:
        _record_alloc(mm, np.array([pfn]), np.array([order]))
    mm._after_call()
    return pfn


def free_pages(mm: MemMap, pfn: int, order: int = 0, cpu: int = 0) -> None:
    """Free an allocation made by alloc_pages(). Mirrors __free_pages(page, order)."""
    _check_order(order)
    if mm.debug:
        _record_free(mm, np.array([pfn]), np.array([order]))
    free_pages_nb(mm.mem, mm.S, int(pfn), order, cpu)
    mm._after_call()


__free_pages = free_pages


def alloc_pages_bulk(mm: MemMap, gfp, orders, nid: int = 0, cpu: int = 0) -> np.ndarray:
    """One allocation per element of ``orders`` (``gfp`` a scalar or an array of the same
    length), in order, in one numba call. Returns int64 PFNs, -1 where an allocation failed."""
    orders = np.ascontiguousarray(orders, np.int64)
    gfps = np.broadcast_to(np.asarray(gfp, np.int64), orders.shape).copy()
    for g in np.unique(gfps):
        check_gfp(int(g))
    if orders.size and (orders.min() < 0 or orders.max() > MAX_PAGE_ORDER):
        raise ValueError(f"orders must be in 0..{MAX_PAGE_ORDER}")
    out = np.empty(orders.shape[0], np.int64)
    alloc_bulk_nb(mm.mem, mm.S, gfps, orders, nid, cpu, out)
    if mm.debug:
        ok = out >= 0
        _record_alloc(mm, out[ok], orders[ok])
    mm._after_call()
    return out


def free_pages_bulk(mm: MemMap, pfns, orders, cpu: int = 0) -> None:
    """Free many allocations in one numba call (entries with pfn < 0 are skipped)."""
    pfns = np.ascontiguousarray(pfns, np.int64)
    orders = np.ascontiguousarray(np.broadcast_to(np.asarray(orders, np.int64), pfns.shape))
    if mm.debug:
        ok = pfns >= 0
        _record_free(mm, pfns[ok], orders[ok])
    free_bulk_nb(mm.mem, mm.S, pfns, orders, cpu)
    mm._after_call()


def run_ops(mm: MemMap, kinds, gfps, orders, slots, nslots: int, nid: int = 0, cpu: int = 0):
    """Replay a mixed sequence in one call (see module docstring). Returns (out, slot_pfn):
    out[i] is the PFN allocated or freed by op i (-1 for a failed allocation)."""
    kinds = np.ascontiguousarray(kinds, np.int64)
    n = kinds.shape[0]
    gfps = np.ascontiguousarray(np.broadcast_to(np.asarray(gfps, np.int64), (n,)))
    orders = np.ascontiguousarray(np.broadcast_to(np.asarray(orders, np.int64), (n,)))
    slots = np.ascontiguousarray(slots, np.int64)
    for g in np.unique(gfps[kinds == 0]):
        check_gfp(int(g))
    slot_pfn = np.full(nslots, -1, np.int64)
    slot_order = np.zeros(nslots, np.int64)
    out = np.empty(n, np.int64)
    if mm.debug:
        # replay op by op so the allocation record and the checks see every step
        for i in range(n):
            s = slots[i]
            if kinds[i] == 0:
                p = alloc_pages(mm, int(gfps[i]), int(orders[i]), nid, cpu)
                out[i] = p
                if p >= 0:
                    slot_pfn[s], slot_order[s] = p, orders[i]
            else:
                out[i] = slot_pfn[s]
                if slot_pfn[s] >= 0:
                    free_pages(mm, int(slot_pfn[s]), int(slot_order[s]), cpu)
                    slot_pfn[s] = -1
        return out, slot_pfn
    run_ops_nb(mm.mem, mm.S, kinds, gfps, orders, slots, nid, cpu, slot_pfn, slot_order, out)
    return out, slot_pfn


def _record_alloc(mm: MemMap, pfns: np.ndarray, orders: np.ndarray) -> None:
    rec = mm._order
    for p, o in zip(pfns.tolist(), orders.tolist(), strict=True):
        if rec[p] != -1:
            raise VMBug(f"pfn {p:#x} handed out twice (already allocated at order {rec[p]})")
        rec[p] = o


def _record_free(mm: MemMap, pfns: np.ndarray, orders: np.ndarray) -> None:
    rec = mm._order
    for p, o in zip(pfns.tolist(), orders.tolist(), strict=True):
        if not 0 <= p < mm.nr_pfns or rec[p] != o:
            what = "not allocated" if not 0 <= p < mm.nr_pfns or rec[p] == -1 \
                else f"allocated at order {rec[p]}"
            raise VMBug(f"bad free of pfn {p:#x} order {o}: {what} (VM_BUG_ON_PAGE)")
        rec[p] = -1


def set_page_memdesc(mm: MemMap, pfn: int, order: int, word: int) -> None:
    """Write ``word`` as the memdesc of every page of the 2^order allocation at ``pfn``
    (alloc_page_desc() [S: FolioAlloc]). FieldAbsent before stage dynamic."""
    page_member(mm.stage, "memdesc")
    if mm.debug and mm._order[pfn] != order:
        raise VMBug(f"set_page_memdesc on pfn {pfn:#x} order {order}: not an allocation")
    set_memdesc_nb(mm.mem, mm.S, int(pfn), int(order), np.uint64(word))


def drain_all_pages(mm: MemMap) -> None:
    """Mirrors drain_all_pages(NULL): every pcp list back to the buddy."""
    drain_all_pages_nb(mm.mem, mm.S)
    mm._after_call()



__all__ = [
    "MemMap", "VMBug", "FieldAbsent", "alloc_pages", "free_pages", "__free_pages",
    "alloc_pages_bulk", "free_pages_bulk", "run_ops", "set_page_memdesc", "page_field",
    "set_page_field", "page_zone", "page_zonenum", "page_to_nid", "folio_nid",
    "drain_all_pages", "set_pageblock_isolate", "clear_pageblock_isolate", "free_lists",
    "free_area_counts", "zone_free_pages", "pcp_count", "buddyinfo",
]
