"""The per-cpu page lists (struct per_cpu_pages) of the page allocator.

The kernel keeps these in mm/page_alloc.c; this file holds them apart, named for what it
holds. Mirrors Linux 6.18: NR_PCP_LISTS (14) lists per zone and CPU, order_to_pindex()
(one list per migratetype for orders 0..PAGE_ALLOC_COSTLY_ORDER, two for the THP order),
pcp_allowed_order(), the refill rmqueue_bulk() / nr_pcp_alloc() / rmqueue_pcplist(), the
free side free_frozen_page_commit() / nr_pcp_high() / nr_pcp_free() / free_pcppages_bulk(),
and drain_pages_zone() / drain_all_pages().

Invariants: a block on a pcp list is not PageBuddy (it carries the pcp mark where the stage
keeps one) and per_cpu_pages.count (P_COUNT) is the pages the CPU's lists hold; pcp->high
stays within [high_min, high_max] (auto-tuning of commit 51a755c56dc0, Linux 6.7);
free_pcppages_bulk() returns each block to the buddy with its pageblock's migratetype.

Not modelled: ZONE_RECLAIM_ACTIVE (no reclaim), the cache-size based PCPF_FREE_HIGH_BATCH
and pcp->high starting anywhere but high_min; decay_pcp_high() is in memdesc.mm.vmstat.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.mm.access_core import (
    OP_ALLOC_BUDDY,
    OP_ALLOC_PCP,
    OP_ALLOC_REFILL,
    OP_FREE_BUDDY,
    OP_FREE_DRAIN,
    OP_FREE_PCP,
    op_refine,
)
from memdesc.mm.buddy import (
    __free_one_page,
    __rmqueue,
    __zone_watermark_ok,
    wmark_pages,
)
from memdesc.mm.free_tracking import (
    C_NCPU,
    C_NZ,
    NR_PCP_LISTS,
    clear_buddy,
    fl_add,
    fl_del,
    fl_empty,
    fl_first,
    fl_last,
    lds,
    mark_pcp,
    px,
    sadd,
    sts,
    unmanaged,
    zx,
)
from memdesc.mm.gfp import (
    MIGRATE_MOVABLE,
    MIGRATE_PCPTYPES,
    WMARK_HIGH,
    ZONE_MOVABLE,
)
from memdesc.mm.mmzone import (
    HPAGE_PMD_ORDER,
    PAGE_ALLOC_COSTLY_ORDER,
)
from memdesc.mm.zone_state import (
    CONFIG_PCP_BATCH_SCALE_MAX,
    FPI_NONE,
    NR_LOWORDER_PCP_LISTS,
    P_ALLOC_FACTOR,
    P_BATCH,
    P_COUNT,
    P_FLAGS,
    P_FREE_COUNT,
    P_HIGH,
    P_HIGH_MAX,
    P_HIGH_MIN,
    PCPF_FREE_HIGH_BATCH,
    PCPF_PREV_FREE_HIGH_ORDER,
    RMQUEUE_NORMAL,
    Z_FLAGS,
    Z_FREE,
    Z_MANAGED,
    ZONE_BELOW_HIGH,
    get_pfnblock_migratetype,
    pcp_head,
    pindex_to_order,
)

# ================================================================================================
# numba kernels: (mem, S, ...). mem is the mem_map words, S the int64 state (config header,
# list heads, zone rows Z_*, per_cpu_pages rows P_*, pageblock flags, PFN->zone table and
# zonelists; free_tracking.zx/px/hx index its regions). Entry points called from Python
# rebind both through unmanaged() so the callees pass them without refcounting.
# ================================================================================================

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
        fl_add(mem, S, page, h, gz, order, True)
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
    if fl_empty(mem, S, h, gz, order):
        op_refine(S, OP_ALLOC_PCP, OP_ALLOC_BUDDY, OP_ALLOC_REFILL)
        batch = nr_pcp_alloc(S, gz, cpu, lds(S, zx(S, gz) + Z_FLAGS), order)
        alloced = rmqueue_bulk(mem, S, gz, order, batch, h, mt, alloc_flags)
        sadd(S, pc + P_COUNT, alloced << order)
        if fl_empty(mem, S, h, gz, order):
            return -1
    page = fl_first(mem, S, h, gz, order)
    fl_del(mem, S, page, h, gz, order)
    sadd(S, pc + P_COUNT, -(np.int64(1) << order))
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
            if not fl_empty(mem, S, h, gz, pindex_to_order(pindex)):
                break
        order = pindex_to_order(pindex)
        nr = np.int64(1) << order
        while True:
            page = fl_last(mem, S, h, gz, order)
            mt = get_pfnblock_migratetype(S, page)
            fl_del(mem, S, page, h, gz, order)
            count -= nr
            sadd(S, pc + P_COUNT, -(nr))
            clear_buddy(mem, S, page)
            __free_one_page(mem, S, page, gz, order, mt, FPI_NONE)
            if count <= 0 or fl_empty(mem, S, h, gz, order):
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
    fl_add(mem, S, pfn, pcp_head(S, gz, cpu, pindex), gz, order, False)
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
