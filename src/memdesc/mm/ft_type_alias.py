"""Free-page tracking ``type_alias`` (page32 with the Path-2025 type table).

The link pointer in the memdesc word makes the type 0/4/8/12 = Buddy [S: Memdescs/Path
2025]; a head has its order in private, tails and pcp pages an out-of-range private
(PRIV_TAIL/PRIV_PCP) [I]. Word indices come from the layout (S[C_F_*]).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.mm.ft_common import (
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
from memdesc.mm.mmzone import MAX_PAGE_ORDER

NAME = "type_alias"

PRIV_PCP, PRIV_TAIL = 0xFFFFFFFFFFFFFFFE, 0xFFFFFFFFFFFFFFFF   # [I]
_PRIV_PCP, _PRIV_TAIL = np.uint64(PRIV_PCP), np.uint64(PRIV_TAIL)
_KEEP_NODEZONE = KEEP_NODEZONE


def configure(stage, cfg: np.ndarray) -> None:
    """Nothing beyond the layout slots."""


# FreeTracking ops this encoding shares with others (mm/ft_common.py)
link_get = pointer_link_get
link_set = pointer_link_set
init_reserved = misc_init_reserved
prep_new_page = misc_prep_new_page


@njit(cache=True)
def buddy_order_of(mem, S, pfn):
    b = pfn * S[C_W]
    p = ldm(mem, S, b + S[C_F_PRIV])
    if (ldm(mem, S, b + S[C_F_MD]) & np.uint64(3)) == 0 and p <= np.uint64(MAX_PAGE_ORDER):
        return np.int64(p)
    return -1


@njit(cache=True)
def set_buddy_order(mem, S, pfn, order):
    stm(mem, S, pfn * S[C_W] + S[C_F_PRIV], np.uint64(order))


@njit(cache=True)
def clear_buddy(mem, S, pfn):
    b = pfn * S[C_W]
    stm(mem, S, b + S[C_F_MD], 0)
    stm(mem, S, b + S[C_F_PRIV], _PRIV_TAIL)


@njit(cache=True)
def mark_pcp(mem, S, pfn):
    stm(mem, S, pfn * S[C_W] + S[C_F_PRIV], _PRIV_PCP)


@njit(cache=True)
def is_pcp_page(mem, S, pfn):
    return 1 if ldm(mem, S, pfn * S[C_W] + S[C_F_PRIV]) == _PRIV_PCP else 0


@njit(cache=True)
def tail_ok(mem, S, pfn):
    return (ldm(mem, S, pfn * S[C_W] + S[C_F_MD]) & np.uint64(3)) == 0


@njit(cache=True)
def free_state(mem, S, pfn):
    free_range(mem, S, pfn, 1)


@njit(cache=True)
def free_range(mem, S, pfn, n):
    """free_state() of pages [pfn, pfn + n) (S read once: mem stores may alias it)."""
    w, fl, lk, pv = S[C_W], S[C_F_FLAGS], S[C_F_LINK], S[C_F_PRIV]
    md, pvv = np.uint64(0), _PRIV_TAIL
    for i in range(pfn * w, (pfn + n) * w, w):
        stm(mem, S, i + fl, ldm(mem, S, i + fl) & (_KEEP_NODEZONE))
        stm(mem, S, i + lk, md)
        stm(mem, S, i + lk + 1, 0)
        stm(mem, S, i + pv, pvv)

