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
    addr_of,
    misc_word,
    node_of,
)
from memdesc.mm.memdesc import MISC_SUBTYPE_ALLOC_PAGES, MISC_SUBTYPE_RESERVED
from memdesc.mm.mm_types import ZONES_PGSHIFT
from memdesc.mm.mmzone import MAX_PAGE_ORDER

NAME = "type_alias"

PRIV_PCP, PRIV_TAIL = 0xFFFFFFFFFFFFFFFE, 0xFFFFFFFFFFFFFFFF   # [I]
_PRIV_PCP, _PRIV_TAIL = np.uint64(PRIV_PCP), np.uint64(PRIV_TAIL)
_KEEP_NODEZONE = np.uint64(~((1 << ZONES_PGSHIFT) - 1) & 0xFFFFFFFFFFFFFFFF)


def configure(stage, cfg: np.ndarray) -> None:
    """Nothing beyond the layout slots."""


@njit(cache=True)
def link_get(mem, S, node, which, gz, order):
    return node_of(S, mem[node * S[C_W] + S[C_F_LINK] + which])


@njit(cache=True)
def link_set(mem, S, node, which, to, gz, order):
    mem[node * S[C_W] + S[C_F_LINK] + which] = addr_of(S, to)


@njit(cache=True)
def buddy_order_of(mem, S, pfn):
    b = pfn * S[C_W]
    p = mem[b + S[C_F_PRIV]]
    if (mem[b + S[C_F_MD]] & np.uint64(3)) == 0 and p <= np.uint64(MAX_PAGE_ORDER):
        return np.int64(p)
    return -1


@njit(cache=True)
def set_buddy_order(mem, S, pfn, order):
    mem[pfn * S[C_W] + S[C_F_PRIV]] = np.uint64(order)


@njit(cache=True)
def clear_buddy(mem, S, pfn):
    b = pfn * S[C_W]
    mem[b + S[C_F_MD]] = 0
    mem[b + S[C_F_PRIV]] = _PRIV_TAIL


@njit(cache=True)
def mark_pcp(mem, S, pfn):
    mem[pfn * S[C_W] + S[C_F_PRIV]] = _PRIV_PCP


@njit(cache=True)
def is_pcp_page(mem, S, pfn):
    return 1 if mem[pfn * S[C_W] + S[C_F_PRIV]] == _PRIV_PCP else 0


@njit(cache=True)
def tail_ok(mem, S, pfn):
    return (mem[pfn * S[C_W] + S[C_F_MD]] & np.uint64(3)) == 0


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
    md, pvv = np.uint64(0), _PRIV_TAIL
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
