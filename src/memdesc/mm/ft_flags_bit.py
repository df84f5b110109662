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
    KEEP_NODEZONE,
    ldm,
    misc_init_reserved,
    misc_prep_new_page,
    pointer_link_get,
    pointer_link_set,
    stm,
)
from memdesc.mm.mm_types import PG_buddy_page32

NAME = "flags_bit"

_KEEP_NODEZONE = KEEP_NODEZONE


def configure(stage, cfg: np.ndarray) -> None:
    cfg[C_BIT_BUDDY] = PG_buddy_page32


# FreeTracking ops this encoding shares with others (mm/ft_common.py)
link_get = pointer_link_get
link_set = pointer_link_set
init_reserved = misc_init_reserved
prep_new_page = misc_prep_new_page


@njit(cache=True)
def buddy_order_of(mem, S, pfn):
    b = pfn * S[C_W]
    if ldm(mem, S, b + S[C_F_FLAGS]) & (np.uint64(1) << np.uint64(S[C_BIT_BUDDY])):
        return np.int64(ldm(mem, S, b + S[C_F_PRIV]))
    return -1


@njit(cache=True)
def set_buddy_order(mem, S, pfn, order):
    b = pfn * S[C_W]
    bit = np.uint64(1) << np.uint64(S[C_BIT_BUDDY])
    stm(mem, S, b + S[C_F_FLAGS], ldm(mem, S, b + S[C_F_FLAGS]) | bit)
    stm(mem, S, b + S[C_F_PRIV], np.uint64(order))


@njit(cache=True)
def clear_buddy(mem, S, pfn):
    b = pfn * S[C_W]
    bit = np.uint64(1) << np.uint64(S[C_BIT_BUDDY])
    stm(mem, S, b + S[C_F_FLAGS], ldm(mem, S, b + S[C_F_FLAGS]) & ~bit)
    stm(mem, S, b + S[C_F_MD], np.uint64(S[C_BUDDY]))
    stm(mem, S, b + S[C_F_PRIV], 0)


@njit(cache=True)
def mark_pcp(mem, S, pfn):
    pass


@njit(cache=True)
def is_pcp_page(mem, S, pfn):
    return -1


@njit(cache=True)
def tail_ok(mem, S, pfn):
    return np.int64(ldm(mem, S, pfn * S[C_W] + S[C_F_MD]) & np.uint64(15)) == S[C_BUDDY]


@njit(cache=True)
def free_state(mem, S, pfn):
    free_range(mem, S, pfn, 1)


@njit(cache=True)
def free_range(mem, S, pfn, n):
    """free_state() of pages [pfn, pfn + n) (S read once: mem stores may alias it)."""
    w, fl, lk, pv = S[C_W], S[C_F_FLAGS], S[C_F_LINK], S[C_F_PRIV]
    md, pvv = np.uint64(S[C_BUDDY]), np.uint64(0)
    for i in range(pfn * w, (pfn + n) * w, w):
        stm(mem, S, i + fl, ldm(mem, S, i + fl) & (_KEEP_NODEZONE))
        stm(mem, S, i + lk, md)
        stm(mem, S, i + lk + 1, 0)
        stm(mem, S, i + pv, pvv)

