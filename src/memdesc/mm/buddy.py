"""The buddy core of the page allocator: free lists, merging, splitting, migratetype
fallbacks and the watermark checks, over the emulated mem_map at every stage.

Mirrors the buddy half of mm/page_alloc.c of Linux 6.18 (the kernel keeps it in one file with
the rest; memdesc.mm.page_alloc holds the allocation and free paths that call into it,
memdesc.mm.pcp the per-cpu lists): __add_to_free_list(), __del_page_from_free_list() and
move_to_free_list() with account_freepages(); __free_one_page() merging (buddy_pfn = pfn ^ (1
<< order), same zone, no merge of unmergeable pageblocks at >= pageblock_order) and
split_large_buddy(); expand() and __rmqueue_smallest() splitting; the fallbacks[] table,
find_suitable_fallback(), __rmqueue_claim()/try_to_claim_block() (whole-block claiming),
__rmqueue_steal() and __rmqueue(); prep_move_freepages_block()/move_freepages_block(); and
__zone_watermark_ok()/zone_watermark_fast().

Invariants these functions keep (memdesc.mm.debug.check_memmap verifies them): a block on
free_area[order].free_list[mt] is PageBuddy with buddy_order() == order, aligned to 2^order,
inside its zone, and its pageblock(s) carry mt; free_area[order].nr_free (Z_NRFREE) counts
the blocks of each order, NR_FREE_PAGES (Z_FREE) every free page outside isolated
pageblocks, NR_FREE_PAGES_BLOCKS (Z_FREE_BLOCKS) those in blocks of pageblock_order or more,
nr_free_highatomic (Z_FREE_HA) those on MIGRATE_HIGHATOMIC lists. Free lists are threaded
through the struct page bytes of the stage (memdesc.mm.free_tracking), so the policy is the
same code at every stage.

Not modelled: CMA (__rmqueue_cma_fallback()), boost_watermark() and the watermark boost.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.mm.free_tracking import (
    C_NZL,
    buddy_order_of,
    clear_buddy,
    fl_add,
    fl_del,
    fl_empty,
    fl_first,
    fl_move,
    lds,
    page_is_movable,
    page_zone_index,
    sadd,
    set_buddy_order,
    zx,
)
from memdesc.mm.gfp import (
    ALLOC_HIGHATOMIC,
    ALLOC_MIN_RESERVE,
    ALLOC_NOFRAGMENT,
    ALLOC_NON_BLOCK,
    ALLOC_OOM,
    ALLOC_RESERVES,
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
    pageblock_nr_pages,
    pageblock_order,
)
from memdesc.mm.zone_state import (
    FPI_TO_TAIL,
    RMQUEUE_CLAIM,
    RMQUEUE_NORMAL,
    RMQUEUE_STEAL,
    Z_BOOST,
    Z_CLAIMED,
    Z_END,
    Z_EXTFRAG,
    Z_FREE,
    Z_FREE_BLOCKS,
    Z_FREE_HA,
    Z_LOWRES,
    Z_MANAGED,
    Z_NRFREE,
    Z_RES_HA,
    Z_START,
    Z_TYPE,
    Z_WMARK,
    free_head,
    get_pfnblock_migratetype,
    set_pageblock_migratetype,
)

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
    fl_add(mem, S, pfn, h, gz, order, tail)
    sadd(S, z + Z_NRFREE + order, 1)
    if order >= pageblock_order and mt != MIGRATE_ISOLATE:
        sadd(S, z + Z_FREE_BLOCKS, np.int64(1) << order)


@njit(cache=True)
def del_from_free_list(mem, S, pfn, gz, order, mt):
    """Mirrors __del_page_from_free_list(): list_del, __ClearPageBuddy, private = 0."""
    z = zx(S, gz)
    fl_del(mem, S, pfn, free_head(S, gz, order, mt), gz, order)
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
    fl_move(mem, S, pfn, free_head(S, gz, order, old_mt), free_head(S, gz, order, new_mt), gz,
            order)
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
        if fl_empty(mem, S, h, gz, co):
            continue
        pfn = fl_first(mem, S, h, gz, co)
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
        if not fl_empty(mem, S, free_head(S, gz, order, fmt), gz, order):
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
        pfn = fl_first(mem, S, free_head(S, gz, co, fmt), gz, co)
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
        pfn = fl_first(mem, S, free_head(S, gz, co, fmt), gz, co)
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
            if not fl_empty(mem, S, free_head(S, gz, o, mt), gz, o):
                return True
        if (alloc_flags & (ALLOC_HIGHATOMIC | ALLOC_OOM)) and not fl_empty(
                mem, S, free_head(S, gz, o, MIGRATE_HIGHATOMIC), gz, o):
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
            if fl_empty(mem, S, h, gz, order):
                continue
            page = fl_first(mem, S, h, gz, order)
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
