"""Free-page tracking ``slist`` (page8): a singly linked list in the word plus per-order
bitmaps (research memdesc-spec §8.3 (b), ours [I]).

One word = type:4 | kind:4 | list:12 | next:44. ``kind`` tells a free block's first page
(KIND_HEAD), a tail (KIND_TAIL) and a pcp page (KIND_PCP) apart; ``list`` is the zone-local
index of the list head the block sits on; ``next`` is the next block's PFN + 1 (0: the list
ends). There is no prev link: the list head keeps first and last (the kernel's list_head
pair, outside struct page), so add at the head or tail is O(1) and the kernel's list order
is kept exactly, but removing a block from the middle of a list (a merge with a free buddy,
move_freepages_block(), free_pcppages_bulk() taking the pcp list's last block) walks from
the head to find the predecessor. Each removal counts its steps (struct page words read):
:func:`memdesc.mm.free_tracking.walk_stats`.

A free block's order is not in the word: bit ``pfn >> order`` of bitmap ``order`` (one
bitmap per order, 2 bits per page in all, outside struct page) is set while the block is a
free buddy of that order, so page_is_buddy() is an O(1) bitmap test per order.

Limits: 12 bits name a zone's list heads: (4096 - 55) // 14 = 288 CPUs; 44-bit PFNs.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.mm.ft_common import (
    C_BUDDY,
    C_F_MD,
    C_HPZ,
    C_OFF_PB,
    C_OFF_PBZ,
    C_OFF_SIDE,
    C_W,
    HEADS_FREE,
    NR_PCP_LISTS,
    SIDE_STATS,
    U4,
    acc_link,
    bit_assign,
    bit_test,
    head_empty,
    head_first,
    head_last,
    head_set,
    ldm,
    list_first,
    list_last,
    local_head,
    misc_init_reserved,
    nibble_tail_ok,
    record_walk,
    stm,
)

# kind sits where packed's order nibble does: the tail, pcp and allocated words are packed's
from memdesc.mm.ft_packed import (  # noqa: F401
    NIB_PCP,
    NIB_TAIL,
    free_range,
    free_state,
    is_pcp_page,
    mark_pcp,
    prep_new_page,
)
from memdesc.mm.mmzone import NR_PAGE_ORDERS

NAME = "slist"
#: counts its walks in the side region (memdesc.mm.free_tracking.walk_stats)
WALKS = True

KIND_HEAD, KIND_PCP, KIND_TAIL = 0x0, NIB_PCP, NIB_TAIL
_LIST_SH, _NEXT_SH = np.uint64(8), np.uint64(20)
_M12 = np.uint64(0xFFF)
_LOW20 = np.uint64((1 << 20) - 1)
LIST_HEADS = 1 << 12


def max_cpus() -> int:
    """CPUs whose pcp list heads 12 bits can name: (4096 - 55 buddy heads) // 14 = 288."""
    return (LIST_HEADS - HEADS_FREE) // NR_PCP_LISTS


def configure(stage, cfg: np.ndarray) -> None:
    """Nothing beyond the layout slots."""


def _bitmap_words(npb: int, order: int) -> int:
    return (((npb + 1) << 9) >> order >> 6) + 1


def side_words(nr_pfns: int) -> int:
    """Walk counters, then one bitmap per order (bit pfn >> order)."""
    return SIDE_STATS + sum(_bitmap_words(nr_pfns >> 9, o) for o in range(NR_PAGE_ORDERS))


# FreeTracking ops this encoding shares with others (mm/ft_common.py)
init_reserved = misc_init_reserved
tail_ok = nibble_tail_ok


@njit(cache=True)
def _bitmap(S, order):
    """Index in S of bitmap ``order`` (see side_words())."""
    npb = S[C_OFF_PBZ] - S[C_OFF_PB]
    b = S[C_OFF_SIDE] + SIDE_STATS
    for k in range(order):
        b += (((npb + 1) << 9) >> k >> 6) + 1
    return b


@njit(cache=True)
def _wi(S, pfn):
    return pfn * S[C_W] + S[C_F_MD]


@njit(cache=True)
def _kind(w):
    return np.int64((w >> np.uint64(4)) & U4)


@njit(cache=True)
def _head_of(S, w, gz):
    """The global list head named by word ``w``'s list field."""
    return gz * S[C_HPZ] + np.int64((w >> _LIST_SH) & _M12)


# ---- the page word ---------------------------------------------------------------------------

@njit(cache=True)
def link_get(mem, S, node, which, gz, order):
    """next of ``node`` (``-1 - head`` at the end of its list); there is no prev link."""
    if which:
        raise ValueError("slist keeps no prev link")
    i = _wi(S, node)
    w = mem[i]
    v = np.int64(w >> _NEXT_SH)
    to = v - 1 if v else -1 - _head_of(S, w, gz)
    acc_link(S, i, to)
    return to


@njit(cache=True)
def link_set(mem, S, node, which, to, gz, order):
    """Set next of ``node`` (``to`` < 0: the list ends); prev is not kept."""
    if which:
        return
    i = _wi(S, node)
    v = np.uint64(to + 1) if to >= 0 else np.uint64(0)
    stm(mem, S, i, (ldm(mem, S, i) & _LOW20) | (v << _NEXT_SH))


@njit(cache=True)
def _set_list(mem, S, node, loc, to):
    """Put ``node`` on zone-local list ``loc`` with next ``to``, keeping type and kind."""
    i = _wi(S, node)
    v = np.uint64(to + 1) if to >= 0 else np.uint64(0)
    stm(mem, S, i, (ldm(mem, S, i) & np.uint64(0xFF)) | (np.uint64(loc) << _LIST_SH)
        | (v << _NEXT_SH))


@njit(cache=True)
def buddy_order_of(mem, S, pfn):
    """PageBuddy (type Buddy, kind head) and the order whose bitmap has the block's bit."""
    w = ldm(mem, S, _wi(S, pfn))
    if np.int64(w & U4) != S[C_BUDDY] or _kind(w) != KIND_HEAD:
        return -1
    for o in range(NR_PAGE_ORDERS):
        if pfn & ((np.int64(1) << o) - 1):
            break
        if bit_test(S, _bitmap(S, o), pfn >> o):
            return o
    return -1


@njit(cache=True)
def set_buddy_order(mem, S, pfn, order):
    i = _wi(S, pfn)
    stm(mem, S, i, (ldm(mem, S, i) & ~np.uint64(0xFF)) | np.uint64(S[C_BUDDY])
        | np.uint64(KIND_HEAD << 4))
    bit_assign(S, _bitmap(S, order), pfn >> order, True)


@njit(cache=True)
def clear_buddy(mem, S, pfn):
    o = buddy_order_of(mem, S, pfn)
    if o >= 0:
        bit_assign(S, _bitmap(S, o), pfn >> o, False)
    free_state(mem, S, pfn)




# ---- the free lists --------------------------------------------------------------------------

@njit(cache=True)
def fl_owns(mem, S, node, h, gz):
    """Every list (buddy and pcp) is singly linked."""
    return True


# the head keeps first and last (the kernel's list_head pair): O(1) first, last, empty
fl_empty, fl_first, fl_last = head_empty, head_first, head_last


@njit(cache=True)
def fl_next(mem, S, node, h, gz, order):
    if node < 0:
        return list_first(S, h)
    return link_get(mem, S, node, 0, gz, order)


@njit(cache=True)
def fl_linked_ok(mem, S, node, prev, h, gz, order):
    """The element's list field names list ``h`` (there is no prev link to check)."""
    w = ldm(mem, S, _wi(S, node))
    return _head_of(S, w, gz) == h


@njit(cache=True)
def fl_add(mem, S, node, h, gz, order, tail):
    """list_add()/list_add_tail() without a prev link: O(1) either way."""
    head = -1 - h
    loc = local_head(S, h, gz)
    first = list_first(S, h)
    if first == head:
        _set_list(mem, S, node, loc, -1)
        head_set(S, h, 0, node)
        head_set(S, h, 1, node)
    elif tail:
        last = list_last(S, h)
        _set_list(mem, S, node, loc, -1)
        link_set(mem, S, last, 0, node, gz, order)
        head_set(S, h, 1, node)
    else:
        _set_list(mem, S, node, loc, first)
        head_set(S, h, 0, node)


@njit(cache=True)
def fl_del(mem, S, node, h, gz, order):
    """list_del(): the first element is O(1); any other walks from the head to its
    predecessor, one step per element before it (counted)."""
    if h < 0:
        h = _head_of(S, ldm(mem, S, _wi(S, node)), gz)
    head = -1 - h
    nxt = link_get(mem, S, node, 0, gz, order)
    prev = list_first(S, h)
    steps = 0
    if prev == node:
        head_set(S, h, 0, nxt)
    else:
        steps = 1
        while True:
            n = link_get(mem, S, prev, 0, gz, order)
            if n == node:
                break
            if n < 0:
                raise ValueError("slist: list_del() of a block not on its list")
            prev = n
            steps += 1
        link_set(mem, S, prev, 0, nxt, gz, order)
    if nxt == head:
        head_set(S, h, 1, prev if steps else head)
    record_walk(S, steps)


@njit(cache=True)
def fl_move(mem, S, node, h, nh, gz, order):
    """list_move_tail(): a removal (walk) and an add at the tail."""
    fl_del(mem, S, node, h, gz, order)
    fl_add(mem, S, node, nh, gz, order, True)
