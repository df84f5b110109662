"""Invariant checks of the emulated page allocator, in the spirit of CONFIG_DEBUG_VM
(VM_BUG_ON_PAGE) and check_free_page()/bad_page() in mm/page_alloc.c.

:func:`check_memmap` walks every free list and pcp list through the stage's own list
operations (memdesc.mm.free_tracking.LIST_OPS: fl_next, fl_linked_ok, fl_last) and checks
that:

* links are consistent both ways and every list element is a block of the list's order,
  aligned, inside its zone, with the zone the stage's page_zone() gives;
* free list elements are PageBuddy with buddy_order() equal to the list order, and their
  pageblock(s) carry the list's migratetype; tail pages of a free block are not PageBuddy and,
  at the descriptor stages, read as type Buddy (no order);
* pcp list elements are not PageBuddy (and carry the pcp mark where the stage keeps one);
* free_area[order].nr_free, NR_FREE_PAGES, NR_FREE_PAGES_BLOCKS, nr_free_highatomic and
  per_cpu_pages.count equal what the lists hold;
* free blocks, pcp blocks and live allocations (the MemMap's debug record) never overlap and
  together cover every managed page exactly once, and nothing else;
* every page of a live allocation carries the same memdesc word (where the stage has one), of
  a type other than Buddy, and no page of it is PageBuddy; at the overlay stages the tails of
  a compound page point at its head (compound_head = head | 1).

A failure raises :class:`memdesc.mm.page_alloc.VMBug` naming the PFN and the broken rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numba import njit

from memdesc.mm.free_tracking import (
    C_BUDDYMASK,
    C_NCPU,
    C_NZ,
    C_W,
    NR_PCP_LISTS,
    buddy_order_of,
    fl_last,
    fl_linked_ok,
    fl_next,
    is_pcp_page,
    memdesc_slot,
    page_zone_index,
    px,
    tail_ok,
    unmanaged,
    zx,
)
from memdesc.mm.gfp import MIGRATE_HIGHATOMIC, MIGRATE_ISOLATE, MIGRATE_TYPES
from memdesc.mm.kmem import VMEMMAP_START
from memdesc.mm.mm_types import PG_head
from memdesc.mm.mmzone import NR_PAGE_ORDERS, pageblock_nr_pages, pageblock_order
from memdesc.mm.zone_state import (
    P_COUNT,
    Z_END,
    Z_FREE,
    Z_FREE_BLOCKS,
    Z_FREE_HA,
    Z_MANAGED,
    Z_NRFREE,
    Z_START,
    VMBug,
    free_head,
    get_pfnblock_migratetype,
    pcp_head,
    pindex_to_order,
)

if TYPE_CHECKING:
    from memdesc.mm.memmap_init import MemMap

_VMEMMAP = np.uint64(VMEMMAP_START)
_MESSAGES = {
    1: "list link inconsistent (next->prev != this)",
    2: "free list element is not PageBuddy with the list's order",
    3: "block not aligned to its order",
    4: "block outside its zone",
    5: "page_zone() of the block is not the zone whose list holds it",
    6: "pageblock migratetype differs from the free list's",
    7: "page counted twice (free/pcp/allocated ranges overlap)",
    8: "free_area[order].nr_free differs from the lists",
    9: "NR_FREE_PAGES differs from the free lists",
    10: "NR_FREE_PAGES_BLOCKS differs from the free lists",
    11: "nr_free_highatomic differs from the free lists",
    12: "per_cpu_pages.count differs from the pcp lists",
    13: "pcp list element is PageBuddy or lacks the pcp mark",
    14: "tail page of a free block is PageBuddy or not typed Buddy",
    15: "managed page neither free, on a pcp list nor allocated (leak)",
    16: "page outside managed memory is free or allocated",
    17: "pages of one allocation carry different memdesc words (or compound_head)",
    18: "allocated page reads as free (PageBuddy or type Buddy)",
    19: "list longer than the zone (cycle)",
}


@njit(cache=True)
def _tail_ok(mem, S, pfn):
    """A non-head page of a free block: not PageBuddy; at the descriptor stages typed Buddy
    (the encoding's tail_ok())."""
    if buddy_order_of(mem, S, pfn) >= 0:
        return False
    return tail_ok(mem, S, pfn)


@njit(cache=True)
def _mark(cover, lo, n, val):
    for p in range(lo, lo + n):
        if cover[p] != 0:
            return p
        cover[p] = val
    return -1


@njit(cache=True)
def _check_span(mem, S, node, gz, order, zstart, zend, on_pcp):
    """A listed block (buddy or pcp) is naturally aligned, inside its zone's span, and
    page_zone() of its first page is that zone. (0, 0, 0, 0) when it is."""
    size = np.int64(1) << order
    if node & (size - 1):
        return 3, node, np.int64(order), np.int64(on_pcp)
    if node < zstart or node + size > zend:
        return 4, node, np.int64(gz), np.int64(order)
    z = np.int64(page_zone_index(mem, S, node))
    if z != gz:
        return 5, node, np.int64(gz), z
    return 0, np.int64(0), np.int64(0), np.int64(0)


@njit(cache=True)
def _check_cover(mem, S, cover, node, order, mark):
    """A listed block's tail pages are clean and no other list or allocation covers it."""
    size = np.int64(1) << order
    for t in range(node + 1, node + size):
        if not _tail_ok(mem, S, t):
            return 14, np.int64(t), node, np.int64(order)
    p = np.int64(_mark(cover, node, size, mark))
    if p >= 0:
        return 7, p, node, np.int64(order)
    return 0, np.int64(0), np.int64(0), np.int64(0)


@njit(cache=True)
def check_nb(mem, S, managed_map, alloc_order, have_record):
    """Returns (code, pfn, detail1, detail2); code 0 when every invariant holds."""
    mem, S = unmanaged(mem), unmanaged(S)
    n = managed_map.shape[0]
    cover = np.zeros(n, np.int8)
    for gz in range(S[C_NZ]):
        if S[zx(S, gz) + Z_MANAGED] == 0:
            continue
        zstart, zend = S[zx(S, gz) + Z_START], S[zx(S, gz) + Z_END]
        free_pages = 0
        free_blocks = 0
        free_ha = 0
        for order in range(NR_PAGE_ORDERS):
            nblocks = 0
            size = np.int64(1) << order
            for mt in range(MIGRATE_TYPES):
                h = free_head(S, gz, order, mt)
                prev = -1 - h
                node = fl_next(mem, S, prev, h, gz, order)
                steps = 0
                while node != -1 - h:
                    steps += 1
                    if steps > zend - zstart:
                        return 19, node, gz, order
                    if node < 0 or not fl_linked_ok(mem, S, node, prev, h, gz, order):
                        return 1, node, gz, order
                    if buddy_order_of(mem, S, node) != order:
                        return 2, node, order, buddy_order_of(mem, S, node)
                    r = _check_span(mem, S, node, gz, order, zstart, zend, 0)
                    if r[0]:
                        return r
                    nb = max(np.int64(1), size >> pageblock_order)
                    for k in range(nb):
                        bmt = get_pfnblock_migratetype(S, node + k * pageblock_nr_pages)
                        if bmt != mt:
                            return 6, node + k * pageblock_nr_pages, mt, bmt
                    r = _check_cover(mem, S, cover, node, order, 1)
                    if r[0]:
                        return r
                    nblocks += 1
                    if mt != MIGRATE_ISOLATE:
                        free_pages += size
                        if order >= pageblock_order:
                            free_blocks += size
                    if mt == MIGRATE_HIGHATOMIC:
                        free_ha += size
                    prev = node
                    node = fl_next(mem, S, node, h, gz, order)
                if fl_last(mem, S, h, gz, order) != prev:
                    return 1, prev, gz, order
            if nblocks != S[zx(S, gz) + Z_NRFREE + order]:
                return 8, gz, order, nblocks
        if free_pages != S[zx(S, gz) + Z_FREE]:
            return 9, gz, free_pages, S[zx(S, gz) + Z_FREE]
        if free_blocks != S[zx(S, gz) + Z_FREE_BLOCKS]:
            return 10, gz, free_blocks, S[zx(S, gz) + Z_FREE_BLOCKS]
        if free_ha != S[zx(S, gz) + Z_FREE_HA]:
            return 11, gz, free_ha, S[zx(S, gz) + Z_FREE_HA]
        for cpu in range(S[C_NCPU]):
            count = 0
            for pindex in range(NR_PCP_LISTS):
                order = pindex_to_order(pindex)
                size = np.int64(1) << order
                h = pcp_head(S, gz, cpu, pindex)
                prev = -1 - h
                node = fl_next(mem, S, prev, h, gz, order)
                steps = 0
                while node != -1 - h:
                    steps += 1
                    if steps > zend - zstart:
                        return 19, node, gz, order
                    if node < 0 or not fl_linked_ok(mem, S, node, prev, h, gz, order):
                        return 1, node, gz, order
                    if buddy_order_of(mem, S, node) >= 0 or is_pcp_page(mem, S, node) == 0:
                        return 13, node, cpu, pindex
                    r = _check_span(mem, S, node, gz, order, zstart, zend, 1)
                    if r[0]:
                        return r
                    r = _check_cover(mem, S, cover, node, order, 2)
                    if r[0]:
                        return r
                    count += size
                    prev = node
                    node = fl_next(mem, S, node, h, gz, order)
                if fl_last(mem, S, h, gz, order) != prev:
                    return 1, prev, gz, order
            if count != S[px(S, gz, cpu) + P_COUNT]:
                return 12, gz, cpu, count
    if have_record:
        slot = memdesc_slot(S)
        w = S[C_W]
        for pfn in range(n):
            o = alloc_order[pfn]
            if o < 0:
                continue
            size = np.int64(1) << o
            p = _mark(cover, pfn, size, 3)
            if p >= 0:
                return 7, p, pfn, o
            word = mem[pfn * w + slot] if slot >= 0 else np.uint64(0)
            if slot < 0 and (mem[pfn * 8] >> np.uint64(PG_head)) & np.uint64(1):
                # a compound page (overlay stages): every tail points at the head
                head = _VMEMMAP + (np.uint64(pfn) << np.uint64(6)) + np.uint64(1)
                for q in range(pfn + 1, pfn + size):
                    if mem[q * 8 + 1] != head:
                        return 17, q, pfn, o
            for q in range(pfn, pfn + size):
                if buddy_order_of(mem, S, q) >= 0:
                    return 18, q, pfn, o
                if slot >= 0:
                    wq = mem[q * w + slot]
                    if wq != word:
                        return 17, q, pfn, o
                    if (S[C_BUDDYMASK] >> np.int64(wq & np.uint64(15))) & 1:
                        return 18, q, pfn, o
        for pfn in range(n):
            if managed_map[pfn] and cover[pfn] == 0:
                return 15, pfn, 0, 0
    for pfn in range(n):
        if not managed_map[pfn] and cover[pfn] != 0:
            return 16, pfn, cover[pfn], 0
    return 0, 0, 0, 0


def managed_map(mm: MemMap) -> np.ndarray:
    """bool per PFN: RAM handed to the buddy allocator (cached on the MemMap)."""
    cached = getattr(mm, "_managed_map", None)
    if cached is None:
        cached = np.zeros(mm.nr_pfns, np.bool_)
        for z in mm.machine.zones:
            for s, e in mm.machine.managed_ranges(z):
                cached[s:e] = True
        mm._managed_map = cached
    return cached


def check_memmap(mm: MemMap) -> None:
    """Raise VMBug if any allocator invariant is broken (see the module docstring)."""
    rec = mm._order if mm._order is not None else np.zeros(0, np.int8)
    code, a, b, c = check_nb(mm.mem, mm.S, managed_map(mm), rec, mm._order is not None)
    if code:
        raise VMBug(f"VM_BUG_ON at stage {mm.stage.id}: {_MESSAGES.get(int(code), code)} "
                    f"(pfn/zone {int(a):#x}, {int(b)}, {int(c)})")

