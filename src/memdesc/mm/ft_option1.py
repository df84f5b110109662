"""Free-page tracking ``option1`` (page16): BuddyAllocator Option 1 [S: Wilcox, linux-mm
msg369183].

buddy_list word 0 = next | Buddy type, word 1 = prev | order nibble; links point at the
neighbour's struct page (16-byte aligned, so the low nibbles are free). Tails: null
pointers, nibble NIB_TAIL; pcp pages: nibble NIB_PCP [I]. Word indices come from the layout.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.mm.ft_common import (
    C_BUDDY,
    C_F_LINK,
    C_F_MD,
    C_W,
    U4,
    acc_link,
    addr_of,
    ldm,
    misc_init_reserved,
    misc_word,
    nibble_tail_ok,
    node_of,
    stm,
)
from memdesc.mm.memdesc import MISC_SUBTYPE_ALLOC_PAGES
from memdesc.mm.mmzone import MAX_PAGE_ORDER

NAME = "option1"

NIB_PCP, NIB_TAIL = 0xE, 0xF            # order-nibble values of non-head free pages [I]


def configure(stage, cfg: np.ndarray) -> None:
    """Nothing beyond the layout slots."""


# FreeTracking ops this encoding shares with others (mm/ft_common.py)
init_reserved = misc_init_reserved
tail_ok = nibble_tail_ok


@njit(cache=True)
def link_get(mem, S, node, which, gz, order):
    i = node * S[C_W] + S[C_F_LINK] + which
    to = node_of(S, mem[i] & ~U4)
    acc_link(S, i, to)
    return to


@njit(cache=True)
def link_set(mem, S, node, which, to, gz, order):
    i = node * S[C_W] + S[C_F_LINK] + which
    stm(mem, S, i, addr_of(S, to) | (ldm(mem, S, i) & U4))


@njit(cache=True)
def buddy_order_of(mem, S, pfn):
    i = pfn * S[C_W] + S[C_F_LINK]
    if np.int64(ldm(mem, S, i) & U4) != S[C_BUDDY]:
        return -1
    o = np.int64(ldm(mem, S, i + 1) & U4)
    return o if o <= MAX_PAGE_ORDER else -1


@njit(cache=True)
def set_buddy_order(mem, S, pfn, order):
    i = pfn * S[C_W] + S[C_F_LINK]
    stm(mem, S, i, (ldm(mem, S, i) & ~U4) | np.uint64(S[C_BUDDY]))
    stm(mem, S, i + 1, (ldm(mem, S, i + 1) & ~U4) | np.uint64(order))


@njit(cache=True)
def clear_buddy(mem, S, pfn):
    free_state(mem, S, pfn)


@njit(cache=True)
def mark_pcp(mem, S, pfn):
    i = pfn * S[C_W] + S[C_F_LINK] + 1
    stm(mem, S, i, (ldm(mem, S, i) & ~U4) | np.uint64(NIB_PCP))


@njit(cache=True)
def is_pcp_page(mem, S, pfn):
    i = pfn * S[C_W] + S[C_F_LINK]
    return 1 if (np.int64(ldm(mem, S, i) & U4) == S[C_BUDDY]
                 and np.int64(ldm(mem, S, i + 1) & U4) == NIB_PCP) else 0


@njit(cache=True)
def free_state(mem, S, pfn):
    free_range(mem, S, pfn, 1)


@njit(cache=True)
def free_range(mem, S, pfn, n):
    """free_state() of pages [pfn, pfn + n) (S read once: mem stores may alias it)."""
    w, lk = S[C_W], S[C_F_LINK]
    b = np.uint64(S[C_BUDDY])
    for i in range(pfn * w + lk, (pfn + n) * w + lk, w):
        stm(mem, S, i, b)
        stm(mem, S, i + 1, np.uint64(NIB_TAIL))


@njit(cache=True)
def prep_new_page(mem, S, pfn, order, comp, gz):
    w, md = S[C_W], S[C_F_MD]
    word = misc_word(S, MISC_SUBTYPE_ALLOC_PAGES, order, gz)
    for i in range(pfn * w + md, (pfn + (np.int64(1) << order)) * w + md, w):
        stm(mem, S, i, word)
        stm(mem, S, i + 1, 0)
