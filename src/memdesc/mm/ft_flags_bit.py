"""Free-page tracking ``flags_bit`` (page32 with the rev A/B type tables).

PageBuddy = a page->flags bit (PG_buddy_page32, the first unused bit above __NR_PAGEFLAGS
[I]), order in private, links in buddy_list (overlapping the memdesc word). Word indices
come from the layout (S[C_F_*]).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.mm.ft_common import (
    C_BIT_BUDDY,
    C_BUDDY,
    C_F_FLAGS,
    C_F_LINK,
    C_F_MD,
    C_F_PRIV,
    C_W,
    addr_of,
    misc_word,
    node_of,
)
from memdesc.mm.memdesc import MISC_SUBTYPE_ALLOC_PAGES, MISC_SUBTYPE_RESERVED
from memdesc.mm.mm_types import ZONES_PGSHIFT, PG_buddy_page32

NAME = "flags_bit"

_KEEP_NODEZONE = np.uint64(~((1 << ZONES_PGSHIFT) - 1) & 0xFFFFFFFFFFFFFFFF)


def configure(stage, cfg: np.ndarray) -> None:
    cfg[C_BIT_BUDDY] = PG_buddy_page32


@njit(cache=True)
def link_get(mem, S, node, which, gz, order):
    return node_of(S, mem[node * S[C_W] + S[C_F_LINK] + which])


@njit(cache=True)
def link_set(mem, S, node, which, to, gz, order):
    mem[node * S[C_W] + S[C_F_LINK] + which] = addr_of(S, to)


@njit(cache=True)
def buddy_order_of(mem, S, pfn):
    b = pfn * S[C_W]
    if mem[b + S[C_F_FLAGS]] & (np.uint64(1) << np.uint64(S[C_BIT_BUDDY])):
        return np.int64(mem[b + S[C_F_PRIV]])
    return -1


@njit(cache=True)
def set_buddy_order(mem, S, pfn, order):
    b = pfn * S[C_W]
    mem[b + S[C_F_FLAGS]] |= np.uint64(1) << np.uint64(S[C_BIT_BUDDY])
    mem[b + S[C_F_PRIV]] = np.uint64(order)


@njit(cache=True)
def clear_buddy(mem, S, pfn):
    b = pfn * S[C_W]
    mem[b + S[C_F_FLAGS]] &= ~(np.uint64(1) << np.uint64(S[C_BIT_BUDDY]))
    mem[b + S[C_F_MD]] = np.uint64(S[C_BUDDY])
    mem[b + S[C_F_PRIV]] = 0


@njit(cache=True)
def mark_pcp(mem, S, pfn):
    pass


@njit(cache=True)
def is_pcp_page(mem, S, pfn):
    return -1


@njit(cache=True)
def tail_ok(mem, S, pfn):
    return np.int64(mem[pfn * S[C_W] + S[C_F_MD]] & np.uint64(15)) == S[C_BUDDY]


@njit(cache=True)
def init_reserved(mem, S, pfn, gz):
    mem[pfn * S[C_W] + S[C_F_MD]] = misc_word(S, MISC_SUBTYPE_RESERVED, 0, gz)


@njit(cache=True)
def free_state(mem, S, pfn):
    free_range(mem, S, pfn, 1)


@njit(cache=True)
def free_range(mem, S, pfn, n):
    """free_state() of pages [pfn, pfn + n) (S read once: mem stores may alias it)."""
    w, fl, lk, pv = S[C_W], S[C_F_FLAGS], S[C_F_LINK], S[C_F_PRIV]
    md, pvv = np.uint64(S[C_BUDDY]), np.uint64(0)
    for i in range(pfn * w, (pfn + n) * w, w):
        mem[i + fl] &= _KEEP_NODEZONE
        mem[i + lk] = md
        mem[i + lk + 1] = 0
        mem[i + pv] = pvv


@njit(cache=True)
def prep_new_page(mem, S, pfn, order, comp, gz):
    w, md, pv = S[C_W], S[C_F_MD], S[C_F_PRIV]
    word = misc_word(S, MISC_SUBTYPE_ALLOC_PAGES, order, gz)
    for i in range(pfn * w, (pfn + (np.int64(1) << order)) * w, w):
        mem[i + md] = word
        mem[i + pv] = 0
