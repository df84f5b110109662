"""The buddy allocator and per-cpu page lists over the emulated mem_map, at every stage.

Mirrors mm/page_alloc.c of Linux 6.18: __free_one_page() merging (buddy_pfn = pfn ^ (1 <<
order), same zone, no merge of unmergeable pageblocks at >= pageblock_order), expand() and
__rmqueue_smallest() splitting, migratetype fallbacks as __rmqueue_claim()/try_to_claim_block()
(whole-block claiming) and __rmqueue_steal(), per-cpu pages (NR_PCP_LISTS 14,
order_to_pindex(), nr_pcp_alloc()/nr_pcp_free()/nr_pcp_high(), free_pcppages_bulk()),
watermarks (__zone_watermark_ok(), zone_watermark_fast(), lowmem_reserve), the highatomic
reserve, ALLOC_NOFRAGMENT, and get_page_from_freelist() over the node's zonelist. Free lists
are threaded through the struct page bytes of the stage (see memdesc.mm.free_tracking); the
policy is the same code at every stage, so a sequence of calls returns the same PFNs and
leaves the same free lists whatever the layout.

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

import threading

import numpy as np
from numba import njit

from memdesc.mm import free_tracking as ft
from memdesc.mm.access_core import (
    OP_ALLOC_BUDDY,
    OP_ALLOC_PCP,
    OP_ALLOC_REFILL,
    OP_FREE_BUDDY,
    OP_FREE_DRAIN,
    OP_FREE_PCP,
    op_begin,
    op_end,
    op_refine,
)
from memdesc.mm.free_tracking import (
    C_HPZ,
    C_NCPU,
    C_NNODE,
    C_NZ,
    C_NZL,
    C_OFF_PB,
    C_OFF_PBZ,
    C_OFF_ZL,
    NR_PCP_LISTS,
    buddy_order_of,
    clear_buddy,
    free_range,
    lds,
    list_add,
    list_add_tail,
    list_del,
    list_empty,
    list_first,
    list_last,
    mark_pcp,
    memdesc_slot,
    page_init,
    page_is_movable,
    page_zone_index,
    prep_new_page,
    px,
    sadd,
    set_buddy_order,
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
    ALLOC_MIN_RESERVE,
    ALLOC_NO_WATERMARKS,
    ALLOC_NOFRAGMENT,
    ALLOC_NON_BLOCK,
    ALLOC_OOM,
    ALLOC_RESERVES,
    ALLOC_WMARK_LOW,
    ALLOC_WMARK_MASK,
    MIGRATE_HIGHATOMIC,
    MIGRATE_ISOLATE,
    MIGRATE_MOVABLE,
    MIGRATE_PCPTYPES,
    MIGRATE_RECLAIMABLE,
    MIGRATE_TYPES,
    MIGRATE_UNMOVABLE,
    WMARK_HIGH,
    ZONE_DMA32,
    ZONE_MOVABLE,
    ZONE_NORMAL,
    check_gfp,
    gfp_migratetype,
    gfp_to_alloc_flags,
    gfp_zone,
)
from memdesc.mm.mm_types import FieldAbsent, page_dtype, page_member
from memdesc.mm.mmzone import (
    HPAGE_PMD_ORDER,
    MAX_ORDER_NR_PAGES,
    MAX_PAGE_ORDER,
    NR_PAGE_ORDERS,
    NR_ZONES,
    PAGE_ALLOC_COSTLY_ORDER,
    ZONE_NAMES,
    Machine,
    ZoneSpec,
    pageblock_nr_pages,
    pageblock_order,
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
from memdesc.stages import Stage, get_stage, variant_name

# ================================================================================================
# numba kernels: (mem, S, ...). mem is the mem_map words, S the int64 state (config header,
# list heads, zone rows Z_*, per_cpu_pages rows P_*, pageblock flags, PFN->zone table and
# zonelists; free_tracking.zx/px/hx index its regions). Entry points called from Python
# rebind both through unmanaged() so the callees pass them without refcounting.
# ================================================================================================

@njit(cache=True)
def migratetype_is_mergeable(mt):
    return mt < MIGRATE_PCPTYPES


@njit(cache=True)
def account_freepages(S, gz, nr, mt):
    """Mirrors account_freepages(): NR_FREE_PAGES and nr_free_highatomic; isolated pages
    are not free memory."""
    z = zx(S, gz)
    if mt == MIGRATE_ISOLATE:
        return
    sadd(S, z + Z_FREE, nr)
    if mt == MIGRATE_HIGHATOMIC:
        sadd(S, z + Z_FREE_HA, nr)


@njit(cache=True)
def add_to_free_list(mem, S, pfn, gz, order, mt, tail):
    """Mirrors __add_to_free_list()."""
    z = zx(S, gz)
    h = free_head(S, gz, order, mt)
    if tail:
        list_add_tail(mem, S, pfn, h, gz, order)
    else:
        list_add(mem, S, pfn, h, gz, order)
    sadd(S, z + Z_NRFREE + order, 1)
    if order >= pageblock_order and mt != MIGRATE_ISOLATE:
        sadd(S, z + Z_FREE_BLOCKS, np.int64(1) << order)


@njit(cache=True)
def del_from_free_list(mem, S, pfn, gz, order, mt):
    """Mirrors __del_page_from_free_list(): list_del, __ClearPageBuddy, private = 0."""
    z = zx(S, gz)
    list_del(mem, S, pfn, gz, order)
    clear_buddy(mem, S, pfn)
    sadd(S, z + Z_NRFREE + order, -(1))
    if order >= pageblock_order and mt != MIGRATE_ISOLATE:
        sadd(S, z + Z_FREE_BLOCKS, -(np.int64(1) << order))


@njit(cache=True)
def del_page_from_free_list(mem, S, pfn, gz, order, mt):
    """Mirrors del_page_from_free_list(): __del_page_from_free_list() + account_freepages()."""
    del_from_free_list(mem, S, pfn, gz, order, mt)
    account_freepages(S, gz, -(np.int64(1) << order), mt)


@njit(cache=True)
def move_to_free_list(mem, S, pfn, gz, order, old_mt, new_mt):
    """Mirrors move_to_free_list(): list_move_tail() to the new type, accounting both."""
    nr = np.int64(1) << order
    list_del(mem, S, pfn, gz, order)
    list_add_tail(mem, S, pfn, free_head(S, gz, order, new_mt), gz, order)
    account_freepages(S, gz, -nr, old_mt)
    account_freepages(S, gz, nr, new_mt)
    if order >= pageblock_order and (old_mt == MIGRATE_ISOLATE) != (new_mt == MIGRATE_ISOLATE):
        sadd(S, zx(S, gz) + Z_FREE_BLOCKS, nr if old_mt == MIGRATE_ISOLATE else -nr)


@njit(cache=True)
def page_is_buddy(mem, S, pfn, buddy, order):
    """Mirrors page_is_buddy(): PageBuddy(buddy), buddy_order(buddy) == order and the same
    page_zone_id() (checked last, as the kernel does)."""
    if buddy_order_of(mem, S, buddy) != order:
        return False
    return page_zone_index(mem, S, pfn) == page_zone_index(mem, S, buddy)


@njit(cache=True)
def buddy_merge_likely(mem, S, pfn, buddy_pfn, order):
    """Mirrors buddy_merge_likely(): is the order+1 buddy of the merged block free?"""
    if order >= MAX_PAGE_ORDER - 1:
        return False
    higher = buddy_pfn & pfn
    return page_is_buddy(mem, S, higher, higher ^ (np.int64(1) << (order + 1)), order + 1)


@njit(cache=True)
def __free_one_page(mem, S, pfn, gz, order, mt, fpi):
    """Mirrors __free_one_page(): merge with free buddies up to MAX_PAGE_ORDER; at
    pageblock_order and above only when both pageblock types are mergeable (a differing
    buddy pageblock takes our type, "Match buddy type"); insert at the tail when FPI_TO_TAIL
    or buddy_merge_likely()."""
    account_freepages(S, gz, np.int64(1) << order, mt)
    buddy_pfn = pfn
    while order < MAX_PAGE_ORDER:
        buddy_mt = mt
        buddy_pfn = pfn ^ (np.int64(1) << order)
        if not page_is_buddy(mem, S, pfn, buddy_pfn, order):
            break
        if order >= pageblock_order:
            buddy_mt = get_pfnblock_migratetype(S, buddy_pfn)
            if mt != buddy_mt and (not migratetype_is_mergeable(mt)
                                   or not migratetype_is_mergeable(buddy_mt)):
                break
        del_from_free_list(mem, S, buddy_pfn, gz, order, buddy_mt)
        if buddy_mt != mt:
            set_pageblock_migratetype(S, buddy_pfn, mt)
        pfn = buddy_pfn & pfn
        order += 1
    set_buddy_order(mem, S, pfn, order)
    to_tail = True if fpi & FPI_TO_TAIL else buddy_merge_likely(mem, S, pfn, buddy_pfn, order)
    add_to_free_list(mem, S, pfn, gz, order, mt, to_tail)


@njit(cache=True)
def split_large_buddy(mem, S, pfn, gz, order, fpi):
    """Mirrors split_large_buddy(): free a block larger than a pageblock piecewise, each
    pageblock with its own migratetype."""
    end = pfn + (np.int64(1) << order)
    if order > pageblock_order:
        order = pageblock_order
    while True:
        mt = get_pfnblock_migratetype(S, pfn)
        __free_one_page(mem, S, pfn, gz, order, mt, fpi)
        pfn += np.int64(1) << order
        if pfn >= end:
            break


@njit(cache=True)
def expand(mem, S, pfn, gz, low, high, mt):
    """Mirrors expand(): halve the block, putting each upper half back on free_area[high]."""
    size = np.int64(1) << high
    nr_added = 0
    while high > low:
        high -= 1
        size >>= 1
        add_to_free_list(mem, S, pfn + size, gz, high, mt, False)
        set_buddy_order(mem, S, pfn + size, high)
        nr_added += size
    return nr_added


@njit(cache=True)
def page_del_and_expand(mem, S, pfn, gz, low, high, mt):
    """Mirrors page_del_and_expand()."""
    nr = np.int64(1) << high
    del_from_free_list(mem, S, pfn, gz, high, mt)
    nr -= expand(mem, S, pfn, gz, low, high, mt)
    account_freepages(S, gz, -nr, mt)


@njit(cache=True)
def __rmqueue_smallest(mem, S, gz, order, mt):
    """Mirrors __rmqueue_smallest(): first block of the smallest order >= ``order`` on
    free_list[mt], split down."""
    for co in range(order, NR_PAGE_ORDERS):
        h = free_head(S, gz, co, mt)
        if list_empty(S, h):
            continue
        pfn = list_first(S, h)
        page_del_and_expand(mem, S, pfn, gz, order, co, mt)
        return pfn
    return -1


@njit(cache=True)
def fallback_of(mt, i):
    """fallbacks[MIGRATE_PCPTYPES][MIGRATE_PCPTYPES - 1] of mm/page_alloc.c."""
    if mt == MIGRATE_UNMOVABLE:
        return MIGRATE_RECLAIMABLE if i == 0 else MIGRATE_MOVABLE
    if mt == MIGRATE_MOVABLE:
        return MIGRATE_RECLAIMABLE if i == 0 else MIGRATE_UNMOVABLE
    return MIGRATE_UNMOVABLE if i == 0 else MIGRATE_MOVABLE


@njit(cache=True)
def should_try_claim_block(order, start_mt):
    """Mirrors should_try_claim_block()."""
    if order >= pageblock_order:
        return True
    if order >= pageblock_order // 2:
        return True
    return bool(start_mt in (MIGRATE_RECLAIMABLE, MIGRATE_UNMOVABLE))


@njit(cache=True)
def find_suitable_fallback(mem, S, gz, order, mt, claimable):
    """Mirrors find_suitable_fallback(): -2 if claiming is not worth it at this order, -1 if
    no fallback list has a block, else the fallback migratetype."""
    if claimable and not should_try_claim_block(order, mt):
        return -2
    if lds(S, zx(S, gz) + Z_NRFREE + order) == 0:
        return -1
    for i in range(MIGRATE_PCPTYPES - 1):
        fmt = fallback_of(mt, i)
        if not list_empty(S, free_head(S, gz, order, fmt)):
            return fmt
    return -1


@njit(cache=True)
def change_pageblock_range(S, pfn, order, mt):
    """Mirrors change_pageblock_range()."""
    n = np.int64(1) << (order - pageblock_order) if order > pageblock_order else 1
    for i in range(n):
        set_pageblock_migratetype(S, pfn + i * pageblock_nr_pages, mt)


@njit(cache=True)
def prep_move_freepages_block(mem, S, gz, pfn, counts):
    """Mirrors prep_move_freepages_block(): the pageblock of ``pfn`` if the zone spans it
    whole (else -1); with ``counts`` (int64[2]) fills free and movable pages."""
    z = zx(S, gz)
    start = pfn & ~(pageblock_nr_pages - 1)
    end = start + pageblock_nr_pages
    if not (S[z + Z_START] <= start < S[z + Z_END]):
        return -1
    if not (S[z + Z_START] <= end - 1 < S[z + Z_END]):
        return -1
    if counts.shape[0] >= 2:
        nfree = 0
        nmov = 0
        p = start
        while p < end:
            o = buddy_order_of(mem, S, p)
            if o >= 0:
                nfree += np.int64(1) << o
                p += np.int64(1) << o
                continue
            if page_is_movable(mem, S, p):
                nmov += 1
            p += 1
        counts[0] = nfree
        counts[1] = nmov
    return start


@njit(cache=True)
def __move_freepages_block(mem, S, gz, start, old_mt, new_mt):
    """Mirrors __move_freepages_block(): every free block of the pageblock to new_mt."""
    end = start + pageblock_nr_pages
    p = start
    moved = 0
    while p < end:
        o = buddy_order_of(mem, S, p)
        if o < 0:
            p += 1
            continue
        move_to_free_list(mem, S, p, gz, o, old_mt, new_mt)
        p += np.int64(1) << o
        moved += np.int64(1) << o
    return moved


@njit(cache=True)
def move_freepages_block(mem, S, gz, pfn, old_mt, new_mt):
    """Mirrors move_freepages_block(): -1 when the pageblock straddles the zone."""
    start = prep_move_freepages_block(mem, S, gz, pfn, np.zeros(0, np.int64))
    if start < 0:
        return -1
    res = __move_freepages_block(mem, S, gz, start, old_mt, new_mt)
    set_pageblock_migratetype(S, start, new_mt)
    return res


@njit(cache=True)
def try_to_claim_block(mem, S, gz, pfn, current_order, order, start_type, block_type, alloc_flags):
    """Mirrors try_to_claim_block(): take a >= pageblock block whole, or convert the
    pageblock when free + compatible pages are at least half of it."""
    if current_order >= pageblock_order:
        del_page_from_free_list(mem, S, pfn, gz, current_order, block_type)
        change_pageblock_range(S, pfn, current_order, start_type)
        nr_added = expand(mem, S, pfn, gz, order, current_order, start_type)
        account_freepages(S, gz, nr_added, start_type)
        return pfn
    # boost_watermark() is not modelled (no kswapd to undo it)
    counts = np.zeros(2, np.int64)
    start = prep_move_freepages_block(mem, S, gz, pfn, counts)
    if start < 0:
        return -1
    free_pages, movable_pages = counts[0], counts[1]
    if start_type == MIGRATE_MOVABLE:
        alike = movable_pages
    elif block_type == MIGRATE_MOVABLE:
        alike = pageblock_nr_pages - (free_pages + movable_pages)
    else:
        alike = 0
    if free_pages + alike >= (1 << (pageblock_order - 1)):
        __move_freepages_block(mem, S, gz, start, block_type, start_type)
        set_pageblock_migratetype(S, start, start_type)
        S[zx(S, gz) + Z_CLAIMED] += 1
        return __rmqueue_smallest(mem, S, gz, order, start_type)
    return -1


@njit(cache=True)
def __rmqueue_claim(mem, S, gz, order, start_mt, alloc_flags):
    """Mirrors __rmqueue_claim(): largest fallback block first, try to claim its pageblock."""
    min_order = order
    if order < pageblock_order and (alloc_flags & ALLOC_NOFRAGMENT):
        min_order = pageblock_order
    for co in range(MAX_PAGE_ORDER, min_order - 1, -1):
        fmt = find_suitable_fallback(mem, S, gz, co, start_mt, True)
        if fmt == -1:
            continue
        if fmt == -2:
            break
        pfn = list_first(S, free_head(S, gz, co, fmt))
        page = try_to_claim_block(mem, S, gz, pfn, co, order, start_mt, fmt, alloc_flags)
        if page >= 0:
            S[zx(S, gz) + Z_EXTFRAG] += 1
            return page
    return -1


@njit(cache=True)
def __rmqueue_steal(mem, S, gz, order, start_mt):
    """Mirrors __rmqueue_steal(): smallest fallback block, the pageblock keeps its type."""
    for co in range(order, NR_PAGE_ORDERS):
        fmt = find_suitable_fallback(mem, S, gz, co, start_mt, False)
        if fmt == -1:
            continue
        pfn = list_first(S, free_head(S, gz, co, fmt))
        page_del_and_expand(mem, S, pfn, gz, order, co, fmt)
        S[zx(S, gz) + Z_EXTFRAG] += 1
        return pfn
    return -1


@njit(cache=True)
def __rmqueue(mem, S, gz, order, mt, alloc_flags, mode):
    """Mirrors __rmqueue() (no CMA): returns (pfn, mode) with rmqueue_mode remembered across
    the calls of one rmqueue_bulk()."""
    if mode == RMQUEUE_NORMAL:
        page = __rmqueue_smallest(mem, S, gz, order, mt)
        if page >= 0:
            return page, mode
    if mode <= RMQUEUE_CLAIM:
        page = __rmqueue_claim(mem, S, gz, order, mt, alloc_flags)
        if page >= 0:
            return page, RMQUEUE_NORMAL
    if not (alloc_flags & ALLOC_NOFRAGMENT):
        page = __rmqueue_steal(mem, S, gz, order, mt)
        if page >= 0:
            return page, RMQUEUE_STEAL
    return -1, mode


# ---- per-cpu pages -------------------------------------------------------------------------

@njit(cache=True)
def pcp_allowed_order(order):
    """Mirrors pcp_allowed_order() with CONFIG_TRANSPARENT_HUGEPAGE."""
    return order <= PAGE_ALLOC_COSTLY_ORDER or order == HPAGE_PMD_ORDER


@njit(cache=True)
def order_to_pindex(mt, order):
    """Mirrors order_to_pindex()."""
    if order > PAGE_ALLOC_COSTLY_ORDER:
        return NR_LOWORDER_PCP_LISTS + (1 if mt == MIGRATE_MOVABLE else 0)
    return MIGRATE_PCPTYPES * order + mt


@njit(cache=True)
def rmqueue_bulk(mem, S, gz, order, count, h, mt, alloc_flags):
    """Mirrors rmqueue_bulk(): up to ``count`` blocks onto the tail of the pcp list."""
    mode = RMQUEUE_NORMAL
    i = 0
    while i < count:
        page, mode = __rmqueue(mem, S, gz, order, mt, alloc_flags, mode)
        if page < 0:
            break
        mark_pcp(mem, S, page)
        list_add_tail(mem, S, page, h, gz, order)
        i += 1
    return i


@njit(cache=True)
def nr_pcp_alloc(S, gz, cpu, zflags, order):
    """Mirrors nr_pcp_alloc(): batch (scaled by alloc_factor for order 0), growing
    pcp->high towards high_max unless the zone is below its high watermark."""
    pc = px(S, gz, cpu)
    base_batch = lds(S, pc + P_BATCH)
    high_min = lds(S, pc + P_HIGH_MIN)
    high_max = lds(S, pc + P_HIGH_MAX)
    high = min(max(lds(S, pc + P_HIGH), high_min), high_max)
    sts(S, pc + P_HIGH, high)
    if high < base_batch:
        return 1
    batch = base_batch if order else base_batch << lds(S, pc + P_ALLOC_FACTOR)
    if high_min != high_max and not (zflags & ZONE_BELOW_HIGH):
        high = min(high + batch, high_max)
        sts(S, pc + P_HIGH, high)
    if not order:
        max_nr_alloc = max(high - lds(S, pc + P_COUNT) - base_batch, base_batch)
        if batch <= max_nr_alloc and lds(S, pc + P_ALLOC_FACTOR) < CONFIG_PCP_BATCH_SCALE_MAX:
            sadd(S, pc + P_ALLOC_FACTOR, 1)
        batch = min(batch, max_nr_alloc)
    if batch > 1:
        batch = max(batch >> order, 2)
    return batch


@njit(cache=True)
def rmqueue_pcplist(mem, S, gz, cpu, order, mt, alloc_flags):
    """Mirrors rmqueue_pcplist() + __rmqueue_pcplist(): refill an empty list with
    rmqueue_bulk(), then take its first block."""
    pc = px(S, gz, cpu)
    sts(S, pc + P_FREE_COUNT, lds(S, pc + P_FREE_COUNT) >> (1))
    h = pcp_head(S, gz, cpu, order_to_pindex(mt, order))
    if list_empty(S, h):
        op_refine(S, OP_ALLOC_PCP, OP_ALLOC_BUDDY, OP_ALLOC_REFILL)
        batch = nr_pcp_alloc(S, gz, cpu, lds(S, zx(S, gz) + Z_FLAGS), order)
        alloced = rmqueue_bulk(mem, S, gz, order, batch, h, mt, alloc_flags)
        sadd(S, pc + P_COUNT, alloced << order)
        if list_empty(S, h):
            return -1
    page = list_first(S, h)
    list_del(mem, S, page, gz, order)
    sadd(S, pc + P_COUNT, -(np.int64(1) << order))
    return page


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


# ---- watermarks ------------------------------------------------------------------------------

@njit(cache=True)
def __zone_watermark_unusable_free(S, gz, order, alloc_flags):
    """Mirrors __zone_watermark_unusable_free() (no CMA)."""
    unusable = (np.int64(1) << order) - 1
    if not (alloc_flags & ALLOC_RESERVES):
        unusable += lds(S, zx(S, gz) + Z_FREE_HA)
    return unusable


@njit(cache=True)
def __zone_watermark_ok(mem, S, gz, order, mark, highest, alloc_flags, free_pages):
    """Mirrors __zone_watermark_ok()."""
    z = zx(S, gz)
    wmin = mark
    free_pages -= __zone_watermark_unusable_free(S, gz, order, alloc_flags)
    if alloc_flags & ALLOC_RESERVES:
        if alloc_flags & ALLOC_MIN_RESERVE:
            wmin -= wmin // 2
            if alloc_flags & ALLOC_NON_BLOCK:
                wmin -= wmin // 4
        if alloc_flags & ALLOC_OOM:
            wmin -= wmin // 2
    if free_pages <= wmin + lds(S, z + Z_LOWRES + highest):
        return False
    if order == 0:
        return True
    for o in range(order, NR_PAGE_ORDERS):
        if lds(S, z + Z_NRFREE + o) == 0:
            continue
        for mt in range(MIGRATE_PCPTYPES):
            if not list_empty(S, free_head(S, gz, o, mt)):
                return True
        if (alloc_flags & (ALLOC_HIGHATOMIC | ALLOC_OOM)) and not list_empty(
                S, free_head(S, gz, o, MIGRATE_HIGHATOMIC)):
            return True
    return False


@njit(cache=True)
def zone_watermark_fast(mem, S, gz, order, mark, highest, alloc_flags):
    """Mirrors zone_watermark_fast()."""
    z = zx(S, gz)
    free_pages = lds(S, z + Z_FREE)
    if order == 0:
        reserved = __zone_watermark_unusable_free(S, gz, 0, alloc_flags)
        usable = free_pages - min(free_pages, reserved)
        if usable > mark + lds(S, z + Z_LOWRES + highest):
            return True
    return __zone_watermark_ok(mem, S, gz, order, mark, highest, alloc_flags, free_pages)


@njit(cache=True)
def wmark_pages(S, gz, i):
    z = zx(S, gz)
    return lds(S, z + Z_WMARK + i) + lds(S, z + Z_BOOST)


# ---- the highatomic reserve -------------------------------------------------------------------

@njit(cache=True)
def reserve_highatomic_pageblock(mem, S, pfn, order, gz):
    """Mirrors reserve_highatomic_pageblock(): up to ~1% of the zone, mergeable blocks only."""
    z = zx(S, gz)
    managed = S[z + Z_MANAGED]
    if managed // 100 < pageblock_nr_pages:
        return
    max_managed = -(-(managed // 100) // pageblock_nr_pages) * pageblock_nr_pages
    if S[z + Z_RES_HA] >= max_managed:
        return
    mt = get_pfnblock_migratetype(S, pfn)
    if not migratetype_is_mergeable(mt):
        return
    if order < pageblock_order:
        if move_freepages_block(mem, S, gz, pfn, mt, MIGRATE_HIGHATOMIC) == -1:
            return
        S[z + Z_RES_HA] += pageblock_nr_pages
    else:
        change_pageblock_range(S, pfn, order, MIGRATE_HIGHATOMIC)
        S[z + Z_RES_HA] += np.int64(1) << order


@njit(cache=True)
def unreserve_highatomic_pageblock(mem, S, zlb, highest, mt, force):
    """Mirrors unreserve_highatomic_pageblock(): hand one reserved block back."""
    for k in range(S[C_NZL]):
        gz = S[zlb + k]
        if gz < 0:
            break
        if S[zx(S, gz) + Z_TYPE] > highest:
            continue
        if not force and S[zx(S, gz) + Z_RES_HA] <= pageblock_nr_pages:
            continue
        for order in range(NR_PAGE_ORDERS):
            h = free_head(S, gz, order, MIGRATE_HIGHATOMIC)
            if list_empty(S, h):
                continue
            page = list_first(S, h)
            size = max(pageblock_nr_pages, np.int64(1) << order)
            size = min(size, S[zx(S, gz) + Z_RES_HA])
            S[zx(S, gz) + Z_RES_HA] -= size
            if order < pageblock_order:
                ret = move_freepages_block(mem, S, gz, page, MIGRATE_HIGHATOMIC, mt)
            else:
                move_to_free_list(mem, S, page, gz, order, MIGRATE_HIGHATOMIC, mt)
                change_pageblock_range(S, page, order, mt)
                ret = 1
            if ret > 0:
                return True
    return False


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


# ---- freeing ----------------------------------------------------------------------------------

@njit(cache=True)
def nr_pcp_high(S, gz, cpu, zflags, batch, free_high):
    """Mirrors nr_pcp_high() (ZONE_RECLAIM_ACTIVE never set: no reclaim)."""
    pc = px(S, gz, cpu)
    high_min = lds(S, pc + P_HIGH_MIN)
    high_max = lds(S, pc + P_HIGH_MAX)
    high = min(max(lds(S, pc + P_HIGH), high_min), high_max)
    sts(S, pc + P_HIGH, high)
    if high == 0:
        return 0
    if free_high:
        sts(S, pc + P_HIGH, max(high - (batch << CONFIG_PCP_BATCH_SCALE_MAX), high_min))
        return 0
    if high_min == high_max:
        return high
    fc = lds(S, pc + P_FREE_COUNT)
    if zflags & ZONE_BELOW_HIGH:
        sts(S, pc + P_HIGH, max(high - max(fc, batch), high_min))
        high = max(lds(S, pc + P_COUNT), high_min)
    elif lds(S, pc + P_COUNT) >= high:
        need_high = fc + batch
        if lds(S, pc + P_HIGH) < need_high:
            sts(S, pc + P_HIGH, min(max(need_high, high_min), high_max))
    return high


@njit(cache=True)
def nr_pcp_free(S, gz, cpu, batch, high, free_high):
    """Mirrors nr_pcp_free()."""
    pc = px(S, gz, cpu)
    if free_high:
        return min(lds(S, pc + P_COUNT), batch << CONFIG_PCP_BATCH_SCALE_MAX)
    if high < batch:
        return 1
    return min(max(lds(S, pc + P_FREE_COUNT), batch), high - batch)


@njit(cache=True)
def free_pcppages_bulk(mem, S, gz, cpu, count, pindex):
    """Mirrors free_pcppages_bulk(): round-robin over the lists from ``pindex``, oldest
    (tail) block first, back to the buddy with its pageblock's migratetype."""
    pc = px(S, gz, cpu)
    count = min(lds(S, pc + P_COUNT), count)
    pindex = pindex - 1
    while count > 0:
        while True:
            pindex += 1
            if pindex > NR_PCP_LISTS - 1:
                pindex = 0
            h = pcp_head(S, gz, cpu, pindex)
            if not list_empty(S, h):
                break
        order = pindex_to_order(pindex)
        nr = np.int64(1) << order
        while True:
            page = list_last(S, h)
            mt = get_pfnblock_migratetype(S, page)
            list_del(mem, S, page, gz, order)
            count -= nr
            sadd(S, pc + P_COUNT, -(nr))
            clear_buddy(mem, S, page)
            __free_one_page(mem, S, page, gz, order, mt, FPI_NONE)
            if count <= 0 or list_empty(S, h):
                break


@njit(cache=True)
def free_frozen_page_commit(mem, S, gz, cpu, pfn, mt, order):
    """Mirrors free_frozen_page_commit(): onto the head of the pcp list; past pcp->high,
    free_pcppages_bulk() and clear ZONE_BELOW_HIGH once the zone is above high again."""
    pc = px(S, gz, cpu)
    z = zx(S, gz)
    sts(S, pc + P_ALLOC_FACTOR, lds(S, pc + P_ALLOC_FACTOR) >> (1))
    pindex = order_to_pindex(mt, order)
    mark_pcp(mem, S, pfn)
    list_add(mem, S, pfn, pcp_head(S, gz, cpu, pindex), gz, order)
    sadd(S, pc + P_COUNT, np.int64(1) << order)
    batch = lds(S, pc + P_BATCH)
    free_high = False
    flags = lds(S, pc + P_FLAGS)
    if order and order <= PAGE_ALLOC_COSTLY_ORDER:
        free_high = (lds(S, pc + P_FREE_COUNT) >= batch + lds(S, pc + P_HIGH_MIN) // 2
                     and (flags & PCPF_PREV_FREE_HIGH_ORDER) != 0
                     and ((flags & PCPF_FREE_HIGH_BATCH) == 0 or lds(S, pc + P_COUNT) >= batch))
        sts(S, pc + P_FLAGS, flags | PCPF_PREV_FREE_HIGH_ORDER)
    elif flags & PCPF_PREV_FREE_HIGH_ORDER:
        sts(S, pc + P_FLAGS, flags & ~PCPF_PREV_FREE_HIGH_ORDER)
    if lds(S, pc + P_FREE_COUNT) < (batch << CONFIG_PCP_BATCH_SCALE_MAX):
        sadd(S, pc + P_FREE_COUNT, np.int64(1) << order)
    high = nr_pcp_high(S, gz, cpu, lds(S, z + Z_FLAGS), batch, free_high)
    if lds(S, pc + P_COUNT) >= high:
        op_refine(S, OP_FREE_PCP, OP_FREE_BUDDY, OP_FREE_DRAIN)
        free_pcppages_bulk(mem, S, gz, cpu, nr_pcp_free(S, gz, cpu, batch, high, free_high),
                           pindex)
        if (lds(S, z + Z_FLAGS) & ZONE_BELOW_HIGH) and __zone_watermark_ok(
                mem, S, gz, 0, wmark_pages(S, gz, WMARK_HIGH), ZONE_MOVABLE, 0,
                lds(S, z + Z_FREE)):
            sts(S, z + Z_FLAGS, lds(S, z + Z_FLAGS) & (~ZONE_BELOW_HIGH))


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


@njit(cache=True)
def drain_pages_zone(mem, S, gz, cpu):
    """Mirrors drain_pages_zone(): everything on one CPU's lists back to the buddy."""
    pc = px(S, gz, cpu)
    while S[pc + P_COUNT] > 0:
        to_drain = min(S[pc + P_COUNT], S[pc + P_BATCH] << CONFIG_PCP_BATCH_SCALE_MAX)
        free_pcppages_bulk(mem, S, gz, cpu, to_drain, 0)


@njit(cache=True)
def drain_all_pages_nb(mem, S):
    """Mirrors drain_all_pages(NULL)."""
    mem, S = unmanaged(mem), unmanaged(S)
    for gz in range(S[C_NZ]):
        if S[zx(S, gz) + Z_MANAGED] == 0:
            continue
        for cpu in range(S[C_NCPU]):
            drain_pages_zone(mem, S, gz, cpu)


# ---- boot: memmap_init() and memblock_free_all() ------------------------------------------------

@njit(cache=True)
def _page_init_clean(mem, S, pfn, gz, reserved):
    """page_init() on a page whose words are first cleared (the storage may be reused)."""
    w = S[ft.C_W]
    for k in range(w):
        mem[pfn * w + k] = 0
    page_init(mem, S, pfn, gz, reserved)


@njit(cache=True, nogil=True)
def init_range_nb(mem, S, lo, hi, gz, reserved):
    """memmap_init_range() over [lo, hi): struct pages of zone ``gz`` (page_init() each,
    every word written, so the storage need not be zeroed first).

    Fast path: a struct page of the range is the first one plus (pfn - lo) times a fixed
    step per word (the words hold node/zone bits, constants and self-pointers such as
    INIT_LIST_HEAD(lru) that move 64 B per page), so when page_init() of the first three
    pages shows that, the rest is written as that line and the last page is checked
    against page_init(); any other shape falls back to page_init() per page."""
    mem, S = unmanaged(mem), unmanaged(S)
    w = S[ft.C_W]
    if hi - lo < 8:
        for pfn in range(lo, hi):
            _page_init_clean(mem, S, pfn, gz, reserved)
        return
    for pfn in range(lo, lo + 3):
        _page_init_clean(mem, S, pfn, gz, reserved)
    base = np.empty(w, np.uint64)
    step = np.empty(w, np.uint64)
    linear = True
    for k in range(w):
        base[k] = mem[lo * w + k]
        step[k] = mem[(lo + 1) * w + k] - base[k]
        if mem[(lo + 2) * w + k] != mem[(lo + 1) * w + k] + step[k]:
            linear = False
    if linear:
        for pfn in range(lo + 3, hi):
            i = np.uint64(pfn - lo)
            for k in range(w):
                mem[pfn * w + k] = base[k] + i * step[k]
        last = np.empty(w, np.uint64)
        for k in range(w):
            last[k] = mem[(hi - 1) * w + k]
        _page_init_clean(mem, S, hi - 1, gz, reserved)
        for k in range(w):
            if mem[(hi - 1) * w + k] != last[k]:
                linear = False
    if not linear:
        for pfn in range(lo + 3, hi):
            _page_init_clean(mem, S, pfn, gz, reserved)


@njit(cache=True)
def free_range_boot_nb(mem, S, lo, hi, gz):
    """Mirrors __free_pages_memory() -> __free_pages_core(FPI_TO_TAIL): max-aligned chunks."""
    mem, S = unmanaged(mem), unmanaged(S)
    start = lo
    while start < hi:
        # min(MAX_PAGE_ORDER, __ffs(start)), MAX_PAGE_ORDER for pfn 0
        order = _ffs_order(start) if start else MAX_PAGE_ORDER
        while start + (np.int64(1) << order) > hi:
            order -= 1
        split_large_buddy(mem, S, start, gz, order, FPI_TO_TAIL)
        start += np.int64(1) << order


@njit(cache=True)
def _ffs_order(x):
    o = 0
    while o < MAX_PAGE_ORDER and not (x >> o) & 1:
        o += 1
    return o


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


@njit(cache=True)
def walk_list_nb(mem, S, h, gz, order, out):
    """PFNs of list ``h`` in order into ``out``; returns the count (-2 if the back links are
    inconsistent, -3 if longer than ``out``)."""
    mem, S = unmanaged(mem), unmanaged(S)
    n = 0
    prev = -1 - h
    node = list_first(S, h)
    while node != -1 - h:
        if n >= out.shape[0]:
            return -3
        if ft.link_get(mem, S, node, 1, gz, order) != prev:
            return -2
        out[n] = node
        n += 1
        prev = node
        node = ft.link_get(mem, S, node, 0, gz, order)
    if list_last(S, h) != prev:
        return -2
    return n


@njit(cache=True, nogil=True)
def pagetypeinfo_free_nb(mem, S, gz, out):
    """Mirrors pagetypeinfo_showfree_print(): ``out[mt, order]`` = blocks on
    zone->free_area[order].free_list[mt], counted by walking the list (without the kernel's
    cap at 100,000). Returns False when a list is longer than the zone could hold (a
    corrupt list: a cycle)."""
    mem, S = unmanaged(mem), unmanaged(S)
    limit = S[zx(S, gz) + Z_END] - S[zx(S, gz) + Z_START]
    for order in range(NR_PAGE_ORDERS):
        for mt in range(MIGRATE_TYPES):
            h = free_head(S, gz, order, mt)
            n = 0
            node = list_first(S, h)
            while node != -1 - h:
                n += 1
                if n > limit:
                    return False
                node = ft.link_get(mem, S, node, 0, gz, order)
            out[mt, order] = n
    return True


# ---- isolation (mm/page_isolation.c) -------------------------------------------------------------

@njit(cache=True)
def pageblock_isolate_nb(mem, S, pfn, isolate):
    """Mirrors __move_freepages_block_isolate(): refuse a no-op or a pageblock straddling the
    zone; if the pageblock is part of a larger free block (find_large_buddy(), or its own
    head above pageblock_order), take that block off its list, toggle the pageblock and free
    it again piecewise (split_large_buddy()); else move the pageblock's free blocks between
    its type's lists and MIGRATE_ISOLATE."""
    mem, S = unmanaged(mem), unmanaged(S)
    gz = S[S[C_OFF_PBZ] + (pfn >> pageblock_order)]
    start = pfn & ~(pageblock_nr_pages - 1)
    f = S[S[C_OFF_PB] + (start >> pageblock_order)]
    if ((f & PB_MIGRATE_ISOLATE) != 0) == isolate:
        return False
    if prep_move_freepages_block(mem, S, gz, start, np.zeros(0, np.int64)) < 0:
        return False
    for o in range(pageblock_order + 1, NR_PAGE_ORDERS):
        head = start & ~((np.int64(1) << o) - 1)
        if head >= S[zx(S, gz) + Z_START] and buddy_order_of(mem, S, head) == o:
            del_page_from_free_list(mem, S, head, gz, o, get_pfnblock_migratetype(S, head))
            _toggle_isolate(S, start, isolate)
            split_large_buddy(mem, S, head, gz, o, FPI_NONE)
            return True
    mt = f & PB_MIGRATE_MASK
    if isolate:
        __move_freepages_block(mem, S, gz, start, mt, MIGRATE_ISOLATE)
    else:
        __move_freepages_block(mem, S, gz, start, MIGRATE_ISOLATE, mt)
    _toggle_isolate(S, start, isolate)
    return True


@njit(cache=True)
def unset_migratetype_isolate_nb(mem, S, pfn):
    """Mirrors unset_migratetype_isolate() in mm/page_isolation.c: a free block of
    pageblock_order or more whose buddy is not isolated is taken off and freed again so it
    merges (__isolate_free_page() + __putback_isolated_page()); otherwise the pageblock's
    free pages just move back to its migratetype."""
    mem, S = unmanaged(mem), unmanaged(S)
    start = pfn & ~(pageblock_nr_pages - 1)
    gz = S[S[C_OFF_PBZ] + (start >> pageblock_order)]
    f = S[S[C_OFF_PB] + (start >> pageblock_order)]
    if not (f & PB_MIGRATE_ISOLATE):
        return False
    order = buddy_order_of(mem, S, start)
    if pageblock_order <= order < MAX_PAGE_ORDER:
        buddy = start ^ (np.int64(1) << order)
        if (page_is_buddy(mem, S, start, buddy, order)
                and get_pfnblock_migratetype(S, buddy) != MIGRATE_ISOLATE):
            del_page_from_free_list(mem, S, start, gz, order, MIGRATE_ISOLATE)
            _toggle_isolate(S, start, False)
            __free_one_page(mem, S, start, gz, order, f & PB_MIGRATE_MASK, FPI_NONE)
            return True
    return pageblock_isolate_nb(mem, S, start, False)


@njit(cache=True)
def _toggle_isolate(S, pfn, isolate):
    """Mirrors toggle_pageblock_isolate()."""
    i = S[C_OFF_PB] + (pfn >> pageblock_order)
    if isolate:
        S[i] |= PB_MIGRATE_ISOLATE
    else:
        S[i] &= ~PB_MIGRATE_ISOLATE


# ================================================================================================
# Python side
# ================================================================================================

def _zonelists(machine: Machine, zs: np.ndarray) -> np.ndarray:
    """zl[nid, 0] = ZONELIST_FALLBACK (local node first, then the others; highest zone first
    within a node: build_zonelists()); zl[nid, 1] = ZONELIST_NOFALLBACK (__GFP_THISNODE)."""
    nn = machine.nr_nodes
    zl = np.full((nn, 2, nn * NR_ZONES + 1), -1, np.int64)
    for nid in range(nn):
        order = [nid] + [n for n in range(nn) if n != nid]
        for which, nodes in ((0, order), (1, [nid])):
            k = 0
            for n in nodes:
                for zt in range(NR_ZONES - 1, -1, -1):
                    gz = n * NR_ZONES + zt
                    if zs[gz, Z_MANAGED] > 0:
                        zl[nid, which, k] = gz
                        k += 1
    return zl


#: mem_maps of at least this many struct pages are initialised by two threads (MemMap._boot)
PARALLEL_INIT_PFNS = 1 << 20


def _split_pages(ranges: list[tuple[int, int, int, bool]]
                 ) -> list[list[tuple[int, int, int, bool]]]:
    """``ranges`` (lo, hi, ...) cut into two lists of about the same number of pages."""
    half = sum(hi - lo for lo, hi, *_ in ranges) // 2
    first, second, done = [], [], 0
    for lo, hi, *rest in ranges:
        cut = min(hi, max(lo, lo + half - done))
        if cut > lo:
            first.append((lo, cut, *rest))
        if hi > cut:
            second.append((cut, hi, *rest))
        done += cut - lo
    return [first, second]


class MemMap:
    """One emulated kernel's physical memory: mem_map, zones, pageblocks, pcp lists.

    ``mem`` is the whole mem_map as uint64 words (``nr_pfns * sizeof(struct page) / 8``),
    ``pages`` its structured view (one element per struct page). Everything else lives in one
    int64 array ``S`` (config header, list heads, zones, pcp, pageblocks, zonelists); ``heads``,
    ``zs``, ``pcp``, ``pb``, ``pbz``, ``zl`` and ``cfg`` are numpy views of its regions.
    Numba kernels take ``(mm.mem, mm.S)`` (``mm.st``).
    """

    def __init__(self, machine: Machine, stage: Stage | str, *, debug: bool = True,
                 check_every: int | None = None, free_all: bool = True,
                 buffer: np.ndarray | None = None):
        self.machine = machine
        self.stage = get_stage(stage) if isinstance(stage, str) else stage
        st_ = self.stage
        nz, ncpu, nn = machine.nr_nodes * NR_ZONES, machine.nr_cpus, machine.nr_nodes
        cfg = ft.make_cfg(st_, ncpu, nn)
        span_limit = ft.max_zone_pages(st_)
        self.nr_pfns = machine.nr_pfns
        words = self.nr_pfns * (st_.struct_page_bytes // 8)
        if buffer is not None and buffer.dtype == np.uint64 and buffer.size >= words:
            # a caller's mem_map storage, already faulted in (a fresh array's first touch
            # costs more than initialising it); _boot() writes every word of it
            self.mem = buffer[:words]
        else:
            self.mem = np.zeros(words, np.uint64)
        self.pages = self.mem.view(page_dtype(st_))
        hpz = int(cfg[C_HPZ])
        npb = self.nr_pfns >> pageblock_order
        nzl = nz + 1
        sizes = [("heads", nz * hpz * 2, ft.C_OFF_HEADS), ("zs", nz * NZCOL, ft.C_OFF_ZS),
                 ("pcp", nz * ncpu * NPCOL, ft.C_OFF_PCP), ("pb", npb, ft.C_OFF_PB),
                 ("pbz", npb, ft.C_OFF_PBZ), ("zl", nn * 2 * nzl, ft.C_OFF_ZL),
                 ("side", ft.side_words(st_, self.nr_pfns), ft.C_OFF_SIDE)]
        off = ft.NCFG
        for _, n, slot in sizes:
            cfg[slot] = off
            off += n
        cfg[ft.C_NZL] = nzl
        self.S = S = np.zeros(off, np.int64)
        S[:ft.NCFG] = cfg
        self.cfg = S[:ft.NCFG]
        view = {name: S[cfg[slot]:cfg[slot] + n] for name, n, slot in sizes}
        self.heads = heads = view["heads"].reshape(nz * hpz, 2)
        self.zs = zs = view["zs"].reshape(nz, NZCOL)
        self.pcp = pcp = view["pcp"].reshape(nz, ncpu, NPCOL)
        self.pb, self.pbz = pb, pbz = view["pb"], view["pbz"]
        self.zl = view["zl"].reshape(nn, 2, nzl)
        heads[:, 0] = heads[:, 1] = -1 - np.arange(nz * hpz)
        pbz[:] = -1
        for gz, z in enumerate(machine.zones):
            p = machine.params(z.node, z.zone_type)
            zs[gz, Z_BASE] = z.start_pfn & ~(MAX_ORDER_NR_PAGES - 1)
            zs[gz, Z_START], zs[gz, Z_END] = z.start_pfn, z.end_pfn
            zs[gz, Z_NID], zs[gz, Z_TYPE] = z.node, z.zone_type
            zs[gz, Z_MANAGED], zs[gz, Z_PRESENT] = z.managed, z.present
            zs[gz, Z_WMARK:Z_WMARK + 4] = (p.min, p.low, p.high, p.promo)
            zs[gz, Z_LOWRES:Z_LOWRES + 5] = p.lowmem_reserve
            pcp[gz, :, P_HIGH] = p.high_min
            pcp[gz, :, P_HIGH_MIN], pcp[gz, :, P_HIGH_MAX] = p.high_min, p.high_max
            pcp[gz, :, P_BATCH] = p.batch
            if z.spanned:
                if span_limit is not None and z.end_pfn - zs[gz, Z_BASE] > span_limit:
                    raise ValueError(f"{variant_name(st_)}: zone {z.name} of node {z.node} "
                                     f"spans more than {span_limit} pages")
                b0, b1 = z.start_pfn >> pageblock_order, (z.end_pfn - 1) >> pageblock_order
                pbz[b0:b1 + 1] = gz
                pb[b0:b1 + 1] = MIGRATE_MOVABLE      # memmap_init_range(): MIGRATE_MOVABLE
        self.zl[:] = _zonelists(machine, zs)
        self.st = (self.mem, self.S)
        self._boot(free_all)
        self.debug = debug
        if check_every is None:                       # full checks are O(nr_pfns)
            check_every = 1 if self.nr_pfns <= (1 << 18) else 0
        self.check_every = check_every
        self._calls = 0
        self.contents = None          # memdesc.mm.kmem.PageContents, attached by a later layer
        self._order = np.full(self.nr_pfns, -1, np.int8) if debug else None

    def _boot(self, free_all: bool = True) -> None:
        """memmap_init() then memblock_free_all(): every struct page initialised (RAM the
        buddy never gets, holes and the tail of the last section as PG_reserved / Misc
        reserved, like init_unavailable_range()), then the managed ranges freed in max-aligned
        chunks to the tail of the free lists (__free_pages_core(FPI_TO_TAIL)). Without
        ``free_all`` the free lists stay empty (memdesc.mm.start_state fills them).

        A big mem_map is initialised by two threads, each on half of the pages (page_init()
        writes only the struct page it initialises and reads only S's configuration, and
        init_range_nb() releases the GIL): the kernel too initialises struct pages in
        parallel (deferred_init_memmap() per node, padata threads per section range)."""
        m = self.machine
        spans = sorted((z.start_pfn, z.end_pfn, gz) for gz, z in enumerate(m.zones) if z.spanned)
        ranges = []                          # (lo, hi, gz, reserved) of memmap_init_range()
        pos = 0
        for s0, e0, gz in spans:
            if s0 > pos:                    # a hole between zones: reserved, next zone's ids
                ranges.append((pos, s0, gz, True))
            for s, e in m.managed_ranges(m.zones[gz]):
                if s > s0:
                    ranges.append((s0, s, gz, True))
                ranges.append((s, e, gz, False))
                s0 = e
            if s0 < e0:
                ranges.append((s0, e0, gz, True))
            pos = e0
        if pos < self.nr_pfns:
            ranges.append((pos, self.nr_pfns, spans[-1][2], True))
        halves = _split_pages(ranges) if self.nr_pfns >= PARALLEL_INIT_PFNS else [ranges]
        helper = None
        if len(halves) > 1:
            helper = threading.Thread(target=self._init_ranges, args=(halves[1],), daemon=True)
            helper.start()
        self._init_ranges(halves[0])
        if helper is not None:
            helper.join()
        if not free_all:
            return
        for gz, z in enumerate(m.zones):
            for s, e in m.managed_ranges(z):
                free_range_boot_nb(self.mem, self.S, s, e, gz)
        self.zs[:, Z_PGALLOC:Z_FAILED + 1] = 0

    def _init_ranges(self, ranges: list[tuple[int, int, int, bool]]) -> None:
        for lo, hi, gz, reserved in ranges:
            init_range_nb(self.mem, self.S, lo, hi, gz, reserved)

    # ---- conveniences (same as the module functions) -------------------------------------------
    def alloc(self, gfp: int, order: int = 0, nid: int = 0, cpu: int = 0) -> int:
        return alloc_pages(self, gfp, order, nid, cpu)

    def free(self, pfn: int, order: int = 0, cpu: int = 0) -> None:
        free_pages(self, pfn, order, cpu)

    def check(self) -> None:
        """Run the full invariant check (memdesc.mm.debug.check_memmap)."""
        from memdesc.mm.debug import check_memmap

        check_memmap(self)

    def _after_call(self) -> None:
        if self.debug and self.check_every:
            self._calls += 1
            if self._calls % self.check_every == 0:
                self.check()

    def zone_index(self, nid: int, zone: str | int) -> int:
        zt = ZONE_NAMES.index(zone) if isinstance(zone, str) else zone
        return nid * NR_ZONES + zt

    def read_kernel_word(self, addr: int) -> int:
        """The 64-bit word at an emulated kernel address: mem_map (vmemmap) or, through the
        attached PageContents, a direct-map page (where dynamic descriptors live)."""
        from memdesc.mm.kmem import VMEMMAP_START

        if addr >= VMEMMAP_START:
            i = (addr - VMEMMAP_START) >> 3
            if i >= self.mem.shape[0]:
                raise VMBug(f"address {addr:#x} is past the end of vmemmap")
            return int(self.mem[i])
        if self.contents is None:
            raise LookupError(f"descriptor at {addr:#x}: no emulated kernel memory is attached "
                              "(MemMap.contents, a memdesc.mm.kmem.PageContents)")
        return self.contents.read64(addr)


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


def page_field(mm: MemMap, pfn: int, name: str) -> int:
    """Member ``name`` of struct page ``pfn`` (FieldAbsent if the stage has no such member).
    16-byte members (list_head) come back as (next, prev)."""
    page_member(mm.stage, name)
    v = mm.pages[name][pfn]
    return tuple(int(x) for x in v) if np.ndim(v) else int(v)


def set_page_field(mm: MemMap, pfn: int, name: str, value) -> None:
    """Store ``value`` into member ``name`` of struct page ``pfn``."""
    page_member(mm.stage, name)
    mm.pages[name][pfn] = value


def _zone_of_word(mm: MemMap, pfn: int) -> tuple[int, int]:
    """(nid, zone type) of ``pfn`` the stage's way (page_zone()/page_to_nid())."""
    from memdesc.mm.memdesc import memdesc_decode
    from memdesc.mm.mm_types import memdesc_nid, memdesc_zonenum

    stage = mm.stage
    if stage.zone_lookup == "page_flags":
        f = int(mm.pages["flags"][pfn])
        return memdesc_nid(f), memdesc_zonenum(f)
    word = int(mm.pages["memdesc"][pfn])
    md = memdesc_decode(stage, word)
    if md.type_name == "Misc":
        return md.nid, md.zone
    if md.type_name == "Buddy":                       # free: the PFN-indexed table
        gz = int(mm.pbz[pfn >> pageblock_order])
        return gz // NR_ZONES, gz % NR_ZONES
    f = mm.read_kernel_word(md.pointer)               # the descriptor's memdesc_flags_t
    return memdesc_nid(f), memdesc_zonenum(f)


def page_zone(mm: MemMap, pfn: int) -> ZoneSpec:
    """Mirrors page_zone(): the zone struct page ``pfn`` belongs to, found as the stage finds
    it (page->flags; or the descriptor's memdesc_flags_t / Misc inline bits / PFN table)."""
    nid, zt = _zone_of_word(mm, pfn)
    return mm.machine.zone(nid, zt)


def page_zonenum(mm: MemMap, pfn: int) -> int:
    """Mirrors page_zonenum()."""
    return _zone_of_word(mm, pfn)[1]


def page_to_nid(mm: MemMap, pfn: int) -> int:
    """Mirrors page_to_nid()."""
    return _zone_of_word(mm, pfn)[0]


def folio_nid(mm: MemMap, folio: int) -> int:
    """Mirrors folio_nid(): memdesc_nid(folio->flags). ``folio`` is the folio's address: its
    head struct page at the overlay stages, its descriptor from ``dynamic`` on; flags is the
    first word of both."""
    from memdesc.mm.mm_types import memdesc_nid

    return memdesc_nid(mm.read_kernel_word(folio))


def drain_all_pages(mm: MemMap) -> None:
    """Mirrors drain_all_pages(NULL): every pcp list back to the buddy."""
    drain_all_pages_nb(mm.mem, mm.S)
    mm._after_call()


def _pfn_in_ram(mm: MemMap, pfn: int) -> int:
    """``pfn`` if a zone spans its pageblock, else ValueError (the numba kernels index the
    pageblock tables by it unchecked)."""
    pfn = int(pfn)
    if not 0 <= pfn < mm.nr_pfns or mm.pbz[pfn >> pageblock_order] < 0:
        raise ValueError(f"pfn {pfn:#x} is outside the memory map of this machine "
                         f"({mm.nr_pfns:#x} pfns)")
    return pfn


def set_pageblock_isolate(mm: MemMap, pfn: int) -> bool:
    """Isolate the pageblock of ``pfn``: its free pages leave the allocatable lists and do
    not merge with neighbours (start_isolate_page_range() for one pageblock, without
    migrating allocated pages). False if already isolated or straddling a zone; ValueError
    for a PFN outside the machine's memory map (the kernel's callers never pass one:
    start_isolate_page_range() works on PFNs of a zone)."""
    ok = bool(pageblock_isolate_nb(mm.mem, mm.S, _pfn_in_ram(mm, pfn), True))
    mm._after_call()
    return ok


def clear_pageblock_isolate(mm: MemMap, pfn: int) -> bool:
    """Undo set_pageblock_isolate() (undo_isolate_page_range() for one pageblock)."""
    ok = bool(unset_migratetype_isolate_nb(mm.mem, mm.S, _pfn_in_ram(mm, pfn)))
    mm._after_call()
    return ok


def free_lists(mm: MemMap) -> dict:
    """Every non-empty list in list order (to compare stages): keys ("free", nid, zone type,
    order, migratetype) and ("pcp", nid, zone type, cpu, pindex), values lists of PFNs."""
    cfg, zs = mm.cfg, mm.zs
    out: dict = {}
    buf = np.empty(mm.nr_pfns, np.int64)
    for gz in range(int(cfg[C_NZ])):
        if zs[gz, Z_MANAGED] == 0:
            continue
        nid, zt = divmod(gz, NR_ZONES)
        for order in range(NR_PAGE_ORDERS):
            for mt in range(MIGRATE_TYPES):
                n = walk_list_nb(mm.mem, mm.S, free_head(cfg, gz, order, mt), gz, order, buf)
                if n < 0:
                    raise VMBug(f"free list {ZONE_NAMES[zt]} order {order} mt {mt} is corrupt")
                if n:
                    out[("free", nid, zt, order, mt)] = buf[:n].tolist()
        for cpu in range(int(cfg[C_NCPU])):
            for pindex in range(NR_PCP_LISTS):
                order = pindex_to_order(pindex)
                n = walk_list_nb(mm.mem, mm.S, pcp_head(cfg, gz, cpu, pindex), gz, order, buf)
                if n < 0:
                    raise VMBug(f"pcp list {ZONE_NAMES[zt]} cpu {cpu} {pindex} is corrupt")
                if n:
                    out[("pcp", nid, zt, cpu, pindex)] = buf[:n].tolist()
    return out


def free_area_counts(mm: MemMap) -> np.ndarray:
    """nr_free[zone, order] as /proc/buddyinfo shows it (zones indexed nid*4 + type)."""
    return mm.zs[:, Z_NRFREE:Z_NRFREE + NR_PAGE_ORDERS].copy()


def zone_free_pages(mm: MemMap) -> np.ndarray:
    """NR_FREE_PAGES per zone."""
    return mm.zs[:, Z_FREE].copy()


def pcp_count(mm: MemMap) -> np.ndarray:
    """Pages on pcp lists per zone (summed over CPUs)."""
    return mm.pcp[:, :, P_COUNT].sum(axis=1)


def buddyinfo(mm: MemMap) -> str:
    """The free lists in /proc/buddyinfo's format (frag_show_print())."""
    lines = []
    counts = free_area_counts(mm)
    for gz, z in enumerate(mm.machine.zones):
        if z.managed:
            cols = "".join(f"{c:7d}" for c in counts[gz])
            lines.append(f"Node {z.node}, zone {z.name:>8}{cols}")
    return "\n".join(lines) + "\n"


__all__ = [
    "MemMap", "VMBug", "FieldAbsent", "alloc_pages", "free_pages", "__free_pages",
    "alloc_pages_bulk", "free_pages_bulk", "run_ops", "set_page_memdesc", "page_field",
    "set_page_field", "page_zone", "page_zonenum", "page_to_nid", "folio_nid",
    "drain_all_pages", "set_pageblock_isolate", "clear_pageblock_isolate", "free_lists",
    "free_area_counts", "zone_free_pages", "pcp_count", "buddyinfo",
]
