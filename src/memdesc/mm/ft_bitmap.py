"""Free-page tracking ``bitmap`` (page8): LLFree-style free-page state outside struct page
[S: LLFree, Wrenger et al., USENIX ATC'23; luhsra/llfree-rs; I: its use for the buddy].

The buddy free_area lists are gone: a bit per page (set at the first page of every free
buddy block), a free-page counter per pageblock (LLFree's 512-page "tree" counter) and, per
free_area[order].free_list[mt], a head outside struct page holding the number of blocks and
the lowest PFN that may hold one (a search cursor). Taking a block (the list's "first")
searches upwards from the cursor, skipping pageblocks whose counter is too small, and
returns the block of that order and migratetype with the lowest address: this option
chooses blocks by address, not by list order, so its observables differ from the list
options' (measured: memdesc.analysis.ft_compare). Each search counts its steps (counters
and bitmap words read; :func:`memdesc.mm.free_tracking.walk_stats`).

The struct page word is ``packed``'s (type Buddy:4 | order:4 for PageBuddy and the order,
which merging reads); a free block's first page also keeps its list index (bits 8..19)
so a removal finds its head. The per-cpu lists stay the kernel's doubly linked lists,
threaded through the word as ``packed`` does (this option owns only the free_area lists),
so packed's limits apply (a zone < 2^28 pages, at most 288 CPUs).

Departure, stated: LLFree's per-CPU reservations (each CPU reserves a tree and allocates
from it) and its lock-free updates are not modelled; the kernel's pcp lists take their place
(``memdesc stages`` says so in this option's description).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.mm.ft_common import (
    C_F_MD,
    C_HPZ,
    C_OFF_PB,
    C_OFF_PBZ,
    C_OFF_SIDE,
    C_W,
    HEADS_FREE,
    SIDE_STATS,
    U4,
    Z_END,
    Z_START,
    bit_assign,
    head_set,
    hx,
    ldm,
    lds,
    local_head,
    record_walk,
    sadd,
    stm,
    zx,
)
from memdesc.mm.ft_packed import (  # noqa: F401 -- the page word and the pcp links are packed's
    MAX_ZONE_PAGES,
    buddy_order_of,
    clear_buddy,
    free_range,
    free_state,
    init_reserved,
    is_pcp_page,
    link_get,
    link_set,
    mark_pcp,
    max_cpus,
    prep_new_page,
    set_buddy_order,
    tail_ok,
)
from memdesc.mm.mmzone import pageblock_order

NAME = "bitmap"
#: counts its searches in the side region (memdesc.mm.free_tracking.walk_stats)
WALKS = True

_LIST_SH = np.uint64(8)
_M12 = np.uint64(0xFFF)
_PB = np.int64(1) << pageblock_order


def configure(stage, cfg: np.ndarray) -> None:
    """Nothing beyond the layout slots."""


def side_words(nr_pfns: int) -> int:
    """Search counters, a free-page counter per pageblock, then the bit per page."""
    npb = nr_pfns >> pageblock_order
    return SIDE_STATS + npb + 1 + ((npb + 1) << pageblock_order >> 6) + 1


@njit(cache=True)
def _counters(S):
    """Index in S of the pageblock free-page counters (one per pageblock)."""
    return S[C_OFF_SIDE] + SIDE_STATS


@njit(cache=True)
def _bits(S):
    """Index in S of the bit per page."""
    return _counters(S) + S[C_OFF_PBZ] - S[C_OFF_PB] + 1


@njit(cache=True)
def _count_pages(S, pfn, order, d):
    """Add ``d`` blocks of ``order`` at ``pfn`` to the pageblock counters."""
    c = _counters(S)
    size = np.int64(1) << order
    for k in range(max(np.int64(1), size >> pageblock_order)):
        sadd(S, c + (pfn >> pageblock_order) + k, d * min(size, _PB))


# ---- the free_area "lists": head = (cursor, blocks) ---------------------------------------------

@njit(cache=True)
def fl_owns(mem, S, node, h, gz):
    """The free_area lists are bitmaps; the pcp lists stay doubly linked."""
    if h >= 0:
        return local_head(S, h, gz) < HEADS_FREE
    return is_pcp_page(mem, S, node) == 0


@njit(cache=True)
def _blocks(S, h):
    """Blocks on list ``h`` (the head's prev word; an untouched head reads -1 - h)."""
    return max(lds(S, hx(S, h) + 1), np.int64(0))


@njit(cache=True)
def _align(p, size):
    return (p + size - 1) & ~(size - 1)


@njit(cache=True)
def _search(mem, S, h, gz, order, start, count):
    """The lowest-addressed free block >= ``start`` of ``order`` on list ``h`` (-1 - h: none);
    ``count``: record the search's steps (counters, bitmap words and struct pages read).
    Zones start MAX_ORDER-aligned in the PFN space the blocks are aligned in."""
    z = zx(S, gz)
    size = np.int64(1) << order
    loc = np.uint64(local_head(S, h, gz))
    p = _align(max(start, S[z + Z_START]), size)
    end = S[z + Z_END]
    c, bits = _counters(S), _bits(S)
    steps = 0
    found = -1 - h
    while p < end and found < 0:
        pb = p >> pageblock_order
        steps += 1
        if lds(S, c + pb) >= min(size, _PB):
            q = p
            stop = min((pb + 1) << pageblock_order, end) if size < _PB else p + 1
            while q < stop:
                steps += 1
                v = np.uint64(lds(S, bits + (q >> 6))) >> np.uint64(q & 63)
                if v == 0:
                    q = _align((q | 63) + 1, size)
                    continue
                q += np.int64(np.log2(np.float64(v & (~v + np.uint64(1)))))
                if q & (size - 1) or q >= stop:
                    q = _align(q + 1, size)
                    continue
                steps += 1
                w = ldm(mem, S, q * S[C_W] + S[C_F_MD])
                if (np.int64((w >> np.uint64(4)) & U4) == order
                        and (w >> _LIST_SH) & _M12 == loc):
                    found = q
                    break
                q += size
        p = (pb + 1) << pageblock_order if size < _PB else p + size
    if count:
        record_walk(S, steps)
    return found


@njit(cache=True)
def fl_empty(mem, S, h, gz, order):
    return _blocks(S, h) == 0


@njit(cache=True)
def fl_first(mem, S, h, gz, order):
    """The lowest-addressed block of the list (from the cursor, which it advances)."""
    if _blocks(S, h) == 0:
        return -1 - h
    q = _search(mem, S, h, gz, order, lds(S, hx(S, h)), True)
    if q >= 0:
        head_set(S, h, 0, q)
    return q


@njit(cache=True)
def fl_next(mem, S, node, h, gz, order):
    """Blocks in address order (``node`` = -1 - h: the first); -1 - h after the last."""
    if _blocks(S, h) == 0:
        return -1 - h
    start = lds(S, hx(S, h)) if node < 0 else node + (np.int64(1) << order)
    return _search(mem, S, h, gz, order, start, False)


@njit(cache=True)
def fl_last(mem, S, h, gz, order):
    """The highest-addressed block (a walk over the list: checkers only)."""
    last = -1 - h
    node = fl_next(mem, S, -1 - h, h, gz, order)
    while node >= 0:
        last = node
        node = fl_next(mem, S, node, h, gz, order)
    return last


@njit(cache=True)
def fl_linked_ok(mem, S, node, prev, h, gz, order):
    """Blocks come in address order, none below the cursor."""
    return node > prev if prev >= 0 else node >= lds(S, hx(S, h))


@njit(cache=True)
def _set_list(mem, S, node, loc):
    i = node * S[C_W] + S[C_F_MD]
    stm(mem, S, i, (ldm(mem, S, i) & ~(_M12 << _LIST_SH)) | (np.uint64(loc) << _LIST_SH))


@njit(cache=True)
def _head_add(S, h, node):
    n = _blocks(S, h)
    if n == 0 or node < lds(S, hx(S, h)):
        head_set(S, h, 0, node)
    head_set(S, h, 1, n + 1)


@njit(cache=True)
def fl_add(mem, S, node, h, gz, order, tail):
    """Set the block's bit, count its pages in its pageblock(s), one more block on ``h``
    (head or tail makes no difference: blocks are taken by address)."""
    _set_list(mem, S, node, local_head(S, h, gz))
    bit_assign(S, _bits(S), node, True)
    _count_pages(S, node, order, 1)
    _head_add(S, h, node)


@njit(cache=True)
def fl_del(mem, S, node, h, gz, order):
    """Clear the block's bit and counts (the head from the block's word when ``h`` < 0)."""
    if h < 0:
        h = gz * S[C_HPZ] + np.int64((ldm(mem, S, node * S[C_W] + S[C_F_MD]) >> _LIST_SH)
                                     & _M12)
    bit_assign(S, _bits(S), node, False)
    _count_pages(S, node, order, -1)
    head_set(S, h, 1, _blocks(S, h) - 1)


@njit(cache=True)
def fl_move(mem, S, node, h, nh, gz, order):
    """move_to_free_list(): the block stays where it is; only the list counts change."""
    _set_list(mem, S, node, local_head(S, nh, gz))
    head_set(S, h, 1, _blocks(S, h) - 1)
    _head_add(S, nh, node)

