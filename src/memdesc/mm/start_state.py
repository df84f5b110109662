"""A running kernel's page allocator state set up directly: the free blocks on their free
lists, the allocated blocks prepared, every pageblock with its migratetype.

A kernel never starts from a snapshot, so this mirrors no single kernel function. It leaves
the state the kernel's own functions would leave: memmap_init() for every struct page
(page_init(), as MemMap boots), the pageblock migratetypes written as
set_pageblock_migratetype() writes them, each free block added as __free_one_page() adds a
block that has no free buddy (set_buddy_order(), __add_to_free_list() on the list of its
pageblock's type, account_freepages()) and each allocated block prepared as prep_new_page()
prepares it. Departures: the free lists are in ascending PFN order (the kernel's list order
is history no snapshot shows), and free blocks are taken as given: the caller passes the
maximal aligned blocks of each free run (:func:`free_blocks`), which is what the kernel's
merging leaves when nothing stops it (an unmergeable pageblock type stops it only for
isolated and highatomic pageblocks).

Replaces the older route of freeing all memory at boot and taking every allocated block back
off the buddy (take_page_off_buddy()/break_down_buddy_pages() per block, then
move_freepages_block() per pageblock): same free lists, one pass instead of three.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.mm import page_alloc as pa
from memdesc.mm.free_tracking import page_zone_index, prep_new_page, set_buddy_order, unmanaged
from memdesc.mm.gfp import MIGRATE_ISOLATE, MIGRATE_TYPES
from memdesc.mm.mmzone import MAX_PAGE_ORDER, pageblock_order


@njit(cache=True, nogil=True)
def _free_blocks_nb(busy, lo, hi, out_pfn, out_order, k):
    """Maximal aligned blocks of the runs of ``busy == 0`` in [lo, hi), appended at ``k``."""
    p = lo
    while p < hi:
        if busy[p]:
            p += 1
            continue
        e = p
        while e < hi and not busy[e]:
            e += 1
        while p < e:
            o = 0
            while o < MAX_PAGE_ORDER and not (p >> o) & 1:
                o += 1
            if p == 0:
                o = MAX_PAGE_ORDER
            while p + (np.int64(1) << o) > e:
                o -= 1
            out_pfn[k] = p
            out_order[k] = o
            k += 1
            p += np.int64(1) << o
    return k


def free_blocks(busy: np.ndarray, ranges: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(head pfn, order) of the maximal aligned free blocks of every run of pages that are
    not ``busy`` inside the given managed ``ranges`` (the buddy's merging, done at once)."""
    n = sum(e - s for s, e in ranges)
    pfn = np.empty(max(n, 1), np.int64)
    order = np.empty(max(n, 1), np.int8)
    k = 0
    for s, e in ranges:
        k = _free_blocks_nb(busy, s, e, pfn, order, k)
    return pfn[:k].copy(), order[:k].copy()


@njit(cache=True, nogil=True)
def _start_state_nb(mem, S, free_pfn, free_order, unit_pfn, unit_order):
    mem, S = unmanaged(mem), unmanaged(S)
    for i in range(free_pfn.shape[0]):
        p = free_pfn[i]
        o = np.int64(free_order[i])
        gz = page_zone_index(mem, S, p)
        mt = pa.get_pfnblock_migratetype(S, p)
        set_buddy_order(mem, S, p, o)
        pa.add_to_free_list(mem, S, p, gz, o, mt, True)
        pa.account_freepages(S, gz, np.int64(1) << o, mt)
    for i in range(unit_pfn.shape[0]):
        p = unit_pfn[i]
        o = np.int64(unit_order[i])
        gz = page_zone_index(mem, S, p)
        prep_new_page(mem, S, p, o, o > 0, gz)


def set_start_state(mm: pa.MemMap, pageblock_mt: np.ndarray, free_pfn: np.ndarray,
                    free_order: np.ndarray, unit_pfn: np.ndarray,
                    unit_order: np.ndarray) -> None:
    """Give ``mm`` (a MemMap built with ``free_all=False``: struct pages initialised, nothing
    on the free lists) a running kernel's state: pageblock ``b`` gets ``pageblock_mt[b]``
    (pageblocks of no zone are left alone), the blocks (``free_pfn``, ``free_order``) go on the
    free lists of their pageblock's type, the allocations (``unit_pfn``, ``unit_order`` <=
    MAX_PAGE_ORDER) are prepared as prep_new_page() does (compound when order > 0)."""
    if int(mm.zs[:, pa.Z_FREE].sum()) or int(mm.zs[:, pa.Z_NRFREE].sum()):
        raise ValueError("set_start_state() needs a MemMap with empty free lists "
                         "(MemMap(..., free_all=False))")
    mt = np.asarray(pageblock_mt, np.int64)
    if ((mt < 0) | (mt >= MIGRATE_TYPES) | (mt == MIGRATE_ISOLATE)).any():
        raise ValueError("pageblock migratetypes must be 0..3 (isolation is set afterwards)")
    n = min(len(mt), len(mm.pb))
    inzone = mm.pbz[:n] >= 0
    mm.pb[:n][inzone] = (mm.pb[:n][inzone] & pa.PB_COMPACT_SKIP) | mt[:n][inzone]
    if len(unit_order) and int(np.max(unit_order)) > MAX_PAGE_ORDER:
        raise ValueError(f"allocations above order {MAX_PAGE_ORDER} must be passed as "
                         "MAX_PAGE_ORDER pieces")
    if len(free_order) and int(np.max(free_order)) > MAX_PAGE_ORDER:
        raise ValueError(f"free blocks above order {MAX_PAGE_ORDER}")
    _start_state_nb(mm.mem, mm.S, np.asarray(free_pfn, np.int64),
                    np.asarray(free_order, np.int8), np.asarray(unit_pfn, np.int64),
                    np.asarray(unit_order, np.int8))


__all__ = ["free_blocks", "set_start_state", "pageblock_order"]
