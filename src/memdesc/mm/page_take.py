"""Taking pages off the allocator's lists from outside its own allocation paths, and reading
its free counts: what the trace replay (memdesc.analysis.replay_loops) does when the trace,
not the emulator, decides where a block goes.

* :func:`take_range` mirrors take_page_off_buddy() (mm/page_alloc.c, used by memory-failure)
  for a block: the free block holding it leaves its list and is broken down around it
  (break_down_buddy_pages(), generalised to a target range).
* :func:`claim_whole_block` mirrors try_to_claim_block() when it claims a whole free block
  of pageblock_order or more for another migratetype (change_pageblock_range(), then
  expand()).
* :func:`pcp_list_add` / :func:`pcp_list_del` are the pcp list step of
  free_frozen_page_commit() / rmqueue_bulk() (list_add(&page->pcp_list, ...) and
  ``pcp->count += 1 << order``) and of the pcp list's list_del() (``pcp->count -= ...``),
  without the high/batch policy around them.
* :func:`zone_nr_free` and :func:`pcp_pages` read zone->free_area[order].nr_free and the
  pages on a zone's pcp lists (all CPUs).

These are the replay's bookkeeping, not kernel operations the access accounting counts
(memdesc.mm.access): the words are read and written without it, as the replay did inline.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.mm import page_alloc as pa
from memdesc.mm.free_tracking import (
    buddy_order_of,
    list_add,
    list_del,
    mark_pcp,
    px,
    set_buddy_order,
    zx,
)
from memdesc.mm.gfp import MIGRATE_MOVABLE, MIGRATE_PCPTYPES
from memdesc.mm.mmzone import MAX_PAGE_ORDER, NR_PAGE_ORDERS, pageblock_order


@njit(cache=True, nogil=True)
def release_outside(mem, S, gz, head, order, lo, hi, mt):
    """Give back to the free lists the parts of the free block [head, head + 2^order) (already
    off its list) outside [lo, hi), as buddy blocks. Generalises break_down_buddy_pages()
    (mm/page_alloc.c, used by take_page_off_buddy()) to a target range."""
    stack_p = np.empty(2 * (MAX_PAGE_ORDER + 1), np.int64)
    stack_o = np.empty(2 * (MAX_PAGE_ORDER + 1), np.int64)
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
def free_head_of(mem, S, pfn):
    """(head, order) of the free buddy block holding ``pfn``, or (-1, -1): the search of
    take_page_off_buddy() (each order's aligned head, PageBuddy with buddy_order >= order)."""
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
    h, o = free_head_of(mem, S, pfn)
    if h >= 0 and h + (np.int64(1) << o) >= hi:
        mt = pa.get_pfnblock_migratetype(S, h)
        pa.del_page_from_free_list(mem, S, h, gz, o, mt)
        release_outside(mem, S, gz, h, o, lo, hi, mt)
        return 2
    got = 0
    p = lo
    while p < hi:
        h, o = free_head_of(mem, S, p)
        if h < 0:
            p += 1
            continue
        mt = pa.get_pfnblock_migratetype(S, h)
        pa.del_page_from_free_list(mem, S, h, gz, o, mt)
        release_outside(mem, S, gz, h, o, lo, hi, mt)
        got += 1
        p = h + (np.int64(1) << o)
    return 1 if got else 0


@njit(cache=True, nogil=True)
def claim_whole_block(mem, S, gz, pfn, order, start_mt):
    """Take [pfn, pfn + 2^order) from a free block of pageblock_order or more as
    try_to_claim_block() does when it claims the whole block: the block leaves its list, its
    pageblocks become ``start_mt`` (change_pageblock_range()) and the rest is expanded onto
    the new type's lists. Smaller free blocks are taken as take_range() does."""
    h, o = free_head_of(mem, S, pfn)
    if h < 0 or o < pageblock_order or not (0 <= start_mt < MIGRATE_PCPTYPES):
        return take_range(mem, S, gz, pfn, order)
    old = pa.get_pfnblock_migratetype(S, h)
    if old >= MIGRATE_PCPTYPES:
        return take_range(mem, S, gz, pfn, order)
    pa.del_page_from_free_list(mem, S, h, gz, o, old)
    pa.change_pageblock_range(S, h, o, start_mt)
    release_outside(mem, S, gz, h, o, pfn, pfn + (np.int64(1) << order), start_mt)
    return 2


@njit(cache=True, nogil=True)
def pcp_list_add(mem, S, p, o, gz, cpu, mt, tail):
    """Put block ``p`` of order ``o`` on ``cpu``'s pcp list for (mt, o) and count it:
    rmqueue_bulk() adds at the tail, free_frozen_page_commit() at the head, then
    ``pcp->count += 1 << order``. A migratetype outside the pcp types goes on the movable
    list, as free_frozen_pages() puts MIGRATE_HIGHATOMIC's (and the replay an unknown one)."""
    if mt >= MIGRATE_PCPTYPES or mt < 0:
        mt = MIGRATE_MOVABLE
    h = pa.pcp_head(S, gz, cpu, pa.order_to_pindex(mt, o))
    mark_pcp(mem, S, p)
    if tail:
        pa.list_add_tail(mem, S, p, h, gz, o)
    else:
        list_add(mem, S, p, h, gz, o)
    S[px(S, gz, cpu) + pa.P_COUNT] += np.int64(1) << o


@njit(cache=True, nogil=True)
def pcp_list_del(mem, S, p, o, gz, cpu):
    """Take block ``p`` of order ``o`` off ``cpu``'s pcp list: list_del(&page->pcp_list) and
    ``pcp->count -= 1 << order`` (the pcp part of rmqueue_pcplist()/free_pcppages_bulk())."""
    list_del(mem, S, p, gz, o)
    S[px(S, gz, cpu) + pa.P_COUNT] -= np.int64(1) << o


@njit(cache=True, nogil=True)
def zone_nr_free(S, gz, order):
    """zone->free_area[order].nr_free of global zone ``gz``."""
    return S[zx(S, gz) + pa.Z_NRFREE + order]


@njit(cache=True, nogil=True)
def pcp_pages(S, gz):
    """Pages on global zone ``gz``'s pcp lists, summed over its CPUs (each pcp->count)."""
    c = 0
    for cpu in range(S[pa.C_NCPU]):
        c += S[px(S, gz, cpu) + pa.P_COUNT]
    return c
