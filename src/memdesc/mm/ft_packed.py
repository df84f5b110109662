"""Free-page tracking ``packed`` (page8): our own encoding, research §8.3 (a) [I], not
Wilcox's.

One word = type:4 | order:4 | next:28 | prev:28; next/prev are block indices
(pfn - zone base) >> order, the top 4096 index values name list heads of the zone. Tails:
type Buddy, order nibble NIB_TAIL; pcp pages: NIB_PCP. Limits: a zone spans at most
MAX_PACKED_BLOCKS pages, and at most (4096 - 55) // 14 = 288 CPUs name pcp list heads.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.mm.ft_common import (
    C_BUDDY,
    C_F_MD,
    C_HPZ,
    C_W,
    HEADS_FREE,
    NR_PCP_LISTS,
    U4,
    Z_BASE,
    acc_link,
    ldm,
    misc_init_reserved,
    misc_word,
    nibble_tail_ok,
    stm,
    zx,
)
from memdesc.mm.memdesc import MISC_SUBTYPE_ALLOC_PAGES
from memdesc.mm.mmzone import MAX_PAGE_ORDER

NAME = "packed"

NIB_PCP, NIB_TAIL = 0xE, 0xF
_MASK28 = np.uint64((1 << 28) - 1)
#: list heads of a zone are named by the top 4096 values of the 28-bit index [I]
PACKED_HEADS = 1 << 12
HEADV0 = (1 << 28) - PACKED_HEADS       # index values >= HEADV0 are list heads
MAX_PACKED_BLOCKS = HEADV0
#: a zone may span at most this many pages (28-bit block index)
MAX_ZONE_PAGES = MAX_PACKED_BLOCKS


def max_cpus() -> int:
    """CPUs whose pcp list heads 12 bits can name: (4096 - 55 buddy heads) // 14 = 288."""
    return (PACKED_HEADS - HEADS_FREE) // NR_PCP_LISTS


def configure(stage, cfg: np.ndarray) -> None:
    """Nothing beyond the layout slots."""


# FreeTracking ops this encoding shares with others (mm/ft_common.py)
init_reserved = misc_init_reserved
tail_ok = nibble_tail_ok


@njit(cache=True)
def link_get(mem, S, node, which, gz, order):
    i = node * S[C_W] + S[C_F_MD]
    v = np.int64((mem[i] >> np.uint64(8 + 28 * which)) & _MASK28)
    if v >= HEADV0:
        to = -1 - (gz * S[C_HPZ] + (v - HEADV0))
    else:
        to = S[zx(S, gz) + Z_BASE] + (v << order)
    acc_link(S, i, to)
    return to


@njit(cache=True)
def link_set(mem, S, node, which, to, gz, order):
    if to >= 0:
        v = np.uint64((to - S[zx(S, gz) + Z_BASE]) >> order)
    else:
        v = np.uint64(HEADV0 + (-1 - to) - gz * S[C_HPZ])
    sh = np.uint64(8 + 28 * which)
    i = node * S[C_W] + S[C_F_MD]
    stm(mem, S, i, (ldm(mem, S, i) & ~(_MASK28 << sh)) | (v << sh))


@njit(cache=True)
def buddy_order_of(mem, S, pfn):
    w = ldm(mem, S, pfn * S[C_W] + S[C_F_MD])
    if np.int64(w & U4) != S[C_BUDDY]:
        return -1
    o = np.int64((w >> np.uint64(4)) & U4)
    return o if o <= MAX_PAGE_ORDER else -1


@njit(cache=True)
def set_buddy_order(mem, S, pfn, order):
    i = pfn * S[C_W] + S[C_F_MD]
    stm(mem, S, i, (ldm(mem, S, i) & ~np.uint64(0xFF)) | np.uint64(S[C_BUDDY]) | (np.uint64(order))
                                                                    << np.uint64(4))


@njit(cache=True)
def clear_buddy(mem, S, pfn):
    free_state(mem, S, pfn)


@njit(cache=True)
def mark_pcp(mem, S, pfn):
    i = pfn * S[C_W] + S[C_F_MD]
    stm(mem, S, i, (ldm(mem, S, i) & ~np.uint64(0xF0)) | np.uint64(NIB_PCP << 4))


@njit(cache=True)
def is_pcp_page(mem, S, pfn):
    w = ldm(mem, S, pfn * S[C_W] + S[C_F_MD])
    return 1 if (np.int64(w & U4) == S[C_BUDDY]
                 and np.int64((w >> np.uint64(4)) & U4) == NIB_PCP) else 0


@njit(cache=True)
def free_state(mem, S, pfn):
    free_range(mem, S, pfn, 1)


@njit(cache=True)
def free_range(mem, S, pfn, n):
    """free_state() of pages [pfn, pfn + n) (S read once: mem stores may alias it)."""
    w, md = S[C_W], S[C_F_MD]
    v = np.uint64(S[C_BUDDY]) | np.uint64(NIB_TAIL << 4)
    for i in range(pfn * w + md, (pfn + n) * w + md, w):
        stm(mem, S, i, v)


@njit(cache=True)
def prep_new_page(mem, S, pfn, order, comp, gz):
    w, md = S[C_W], S[C_F_MD]
    word = misc_word(S, MISC_SUBTYPE_ALLOC_PAGES, order, gz)
    for i in range(pfn * w + md, (pfn + (np.int64(1) << order)) * w + md, w):
        stm(mem, S, i, word)
