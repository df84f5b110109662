"""Pageblock isolation: MIGRATE_ISOLATE on one pageblock and back.

Mirrors mm/page_isolation.c of Linux 6.18 (set_migratetype_isolate() /
unset_migratetype_isolate()) and the helpers it calls in mm/page_alloc.c
(__move_freepages_block_isolate(), toggle_pageblock_isolate()), for one pageblock and without
migrating allocated pages (no start_isolate_page_range() over a range, no
has_unmovable_pages() check).

Invariants: an isolated pageblock's free pages sit on the MIGRATE_ISOLATE lists, are not
counted in NR_FREE_PAGES, and do not merge with a buddy of another pageblock type; a free
block larger than a pageblock is split when one of its pageblocks is isolated and merges
again when isolation ends. Isolation targets stay inside RAM: a PFN whose pageblock no zone
spans is refused with ValueError (the numba kernels index the pageblock tables unchecked).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numba import njit

from memdesc.mm.buddy import (
    __free_one_page,
    __move_freepages_block,
    del_page_from_free_list,
    page_is_buddy,
    prep_move_freepages_block,
    split_large_buddy,
)
from memdesc.mm.free_tracking import (
    C_OFF_PB,
    C_OFF_PBZ,
    buddy_order_of,
    unmanaged,
    zx,
)
from memdesc.mm.gfp import MIGRATE_ISOLATE
from memdesc.mm.mmzone import (
    MAX_PAGE_ORDER,
    NR_PAGE_ORDERS,
    pageblock_nr_pages,
    pageblock_order,
)
from memdesc.mm.zone_state import (
    FPI_NONE,
    PB_MIGRATE_ISOLATE,
    PB_MIGRATE_MASK,
    Z_START,
    get_pfnblock_migratetype,
)

if TYPE_CHECKING:
    from memdesc.mm.memmap_init import MemMap


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
