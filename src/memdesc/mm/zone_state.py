"""The allocator's zone and per-cpu state layout: the columns of a zone row and a
per_cpu_pages row in the int64 state array S, the pageblock flag bits, and the indices of
the free-list and pcp-list heads.

One module owns this layout so that the allocator (memdesc.mm.page_alloc) and its invariant
checks (memdesc.mm.debug) both import it and not each other.
"""

from __future__ import annotations

from numba import njit

from memdesc.mm import free_tracking as ft
from memdesc.mm.free_tracking import C_HPZ, C_OFF_PB, HEADS_FREE, NR_PCP_LISTS
from memdesc.mm.gfp import MIGRATE_ISOLATE, MIGRATE_PCPTYPES, MIGRATE_TYPES
from memdesc.mm.mmzone import HPAGE_PMD_ORDER, PAGE_ALLOC_COSTLY_ORDER, pageblock_order

# ---- zone state columns (int64 zs[gz, col]) ----------------------------------------------------
Z_BASE = ft.Z_BASE          # packed links: zone_start_pfn rounded down to MAX_ORDER_NR_PAGES
Z_START, Z_END, Z_NID, Z_TYPE, Z_MANAGED, Z_PRESENT = 1, 2, 3, 4, 5, 6
Z_FREE = 7                 # NR_FREE_PAGES (buddy lists, not pcp, not isolated)
Z_FREE_BLOCKS = 8          # NR_FREE_PAGES_BLOCKS
Z_WMARK = 9                # _watermark[min, low, high, promo]
Z_BOOST = 13               # watermark_boost (always 0: no kswapd)
Z_LOWRES = 14              # lowmem_reserve[MAX_NR_ZONES]
Z_NRFREE = 19              # free_area[order].nr_free
Z_RES_HA = 30              # nr_reserved_highatomic
Z_FREE_HA = 31             # nr_free_highatomic
Z_FLAGS = 32               # ZONE_BELOW_HIGH
Z_PGALLOC, Z_PGFREE, Z_EXTFRAG, Z_CLAIMED, Z_FAILED = 33, 34, 35, 36, 37
NZCOL = ft.NZCOL
ZONE_BELOW_HIGH = 1

# ---- per_cpu_pages columns (int64 pcp[gz, cpu, col]) -------------------------------------------
P_COUNT, P_HIGH, P_HIGH_MIN, P_HIGH_MAX, P_BATCH, P_FLAGS, P_ALLOC_FACTOR, P_FREE_COUNT = range(8)
NPCOL = ft.NPCOL
PCPF_PREV_FREE_HIGH_ORDER, PCPF_FREE_HIGH_BATCH = 1, 2
CONFIG_PCP_BATCH_SCALE_MAX = 5         # [S: mm/Kconfig default]
NR_LOWORDER_PCP_LISTS = MIGRATE_PCPTYPES * (PAGE_ALLOC_COSTLY_ORDER + 1)

# pageblock flag bits [S: include/linux/pageblock-flags.h]
PB_MIGRATE_MASK, PB_COMPACT_SKIP, PB_MIGRATE_ISOLATE = 7, 8, 16

RMQUEUE_NORMAL, RMQUEUE_CMA, RMQUEUE_CLAIM, RMQUEUE_STEAL = 0, 1, 2, 3
FPI_NONE, FPI_TO_TAIL = 0, 2


class VMBug(AssertionError):
    """A VM_BUG_ON: the caller broke an allocator rule (bad free, double free, bad range)."""


@njit(cache=True)
def free_head(S, gz, order, mt):
    """Index of zone->free_area[order].free_list[mt]."""
    return gz * S[C_HPZ] + order * MIGRATE_TYPES + mt


@njit(cache=True)
def pcp_head(S, gz, cpu, pindex):
    """Index of per_cpu_pages.lists[pindex] of ``cpu`` in zone ``gz``."""
    return gz * S[C_HPZ] + HEADS_FREE + cpu * NR_PCP_LISTS + pindex


@njit(cache=True)
def get_pfnblock_migratetype(S, pfn):
    """Mirrors get_pfnblock_migratetype(): MIGRATE_ISOLATE when PB_migrate_isolate is set."""
    f = ft.lds(S, S[C_OFF_PB] + (pfn >> pageblock_order))
    if f & PB_MIGRATE_ISOLATE:
        return MIGRATE_ISOLATE
    return f & PB_MIGRATE_MASK


@njit(cache=True)
def set_pageblock_migratetype(S, pfn, mt):
    """Mirrors set_pageblock_migratetype(): writes the type, clears PB_migrate_isolate."""
    i = S[C_OFF_PB] + (pfn >> pageblock_order)
    S[i] = (S[i] & PB_COMPACT_SKIP) | mt


@njit(cache=True)
def pindex_to_order(pindex):
    """Mirrors pindex_to_order()."""
    if pindex >= NR_LOWORDER_PCP_LISTS:
        return HPAGE_PMD_ORDER
    return pindex // MIGRATE_PCPTYPES
