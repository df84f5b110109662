"""Free-page tracking ``page_type`` (v6.18, folio, dynamic; 64-byte struct page).

PageBuddy = PGTY_buddy << 24 in page_type, order in private, links in buddy_list/pcp_list
as struct page addresses [S: mm/page_alloc.c set_buddy_order(), include/linux/page-flags.h
PAGE_TYPE_OPS]. Tails and pcp pages: page_type UINT_MAX, private 0. Word indices come from
the layout (S[C_F_*], memdesc.mm.ft_common.layout_cfg); the folio fields of page 1 and 2 that
prep_compound_head() writes are struct folio's (6.18, fixtures/btf/pahole), named below.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.mm.ft_common import (
    C_BUDDY,
    C_DYNAMIC,
    C_F_FLAGS,
    C_F_LINK,
    C_F_MAPPING,
    C_F_PRIV,
    C_F_PTYPE,
    C_REF_SHIFT,
    C_SHIFT,
    C_W,
    KEEP_NODEZONE,
    U32,
    VMEMMAP,
    addr_of,
    ldm,
    misc_word,
    pointer_link_get,
    pointer_link_set,
    stm,
)
from memdesc.mm.memdesc import MISC_SUBTYPE_ALLOC_PAGES, MISC_SUBTYPE_RESERVED
from memdesc.mm.mm_types import PAGE_TYPE_NONE, TAIL_MAPPING, PG_head, PGTY_buddy

NAME = "page_type"

_PT_NONE = np.uint64(PAGE_TYPE_NONE)
_PT_BUDDY = np.uint64(PGTY_buddy << 24)
_PG_HEAD = np.uint64(1 << PG_head)
_KEEP_NODEZONE = KEEP_NODEZONE
_TAIL_MAPPING = np.uint64(TAIL_MAPPING)
# struct folio (6.18) words of page 1 written by prep_compound_head(), relative to page 1
F1_FLAGS_1, F1_LARGE_MAPCOUNT, F1_ENTIRE_MAPCOUNT, F1_MM_ID_MAPCOUNT, F1_MM_IDS = 0, 2, 3, 4, 5
F1_NR_PAGES = 7
F2_DEFERRED_LIST = 2        # &folio->_deferred_list: page 2, word 2 (offset 144)


def configure(stage, cfg: np.ndarray) -> None:
    """Nothing beyond the layout slots."""


# FreeTracking ops this encoding shares with others (mm/ft_common.py)
link_get = pointer_link_get
link_set = pointer_link_set


@njit(cache=True)
def buddy_order_of(mem, S, pfn):
    b = pfn * S[C_W]
    if (ldm(mem, S, b + S[C_F_PTYPE]) & U32) >> np.uint64(24) != np.uint64(PGTY_buddy):
        return -1
    return np.int64(ldm(mem, S, b + S[C_F_PRIV]))


@njit(cache=True)
def set_buddy_order(mem, S, pfn, order):
    b = pfn * S[C_W]
    i = b + S[C_F_PTYPE]
    stm(mem, S, i, (ldm(mem, S, i) & ~U32) | _PT_BUDDY)
    stm(mem, S, b + S[C_F_PRIV], np.uint64(order))


@njit(cache=True)
def clear_buddy(mem, S, pfn):
    b = pfn * S[C_W]
    i = b + S[C_F_PTYPE]
    stm(mem, S, i, (ldm(mem, S, i) & ~U32) | _PT_NONE)
    stm(mem, S, b + S[C_F_PRIV], 0)
    if S[C_DYNAMIC]:                      # the links sat in the memdesc word
        stm(mem, S, b + S[C_F_LINK], np.uint64(S[C_BUDDY]))
        stm(mem, S, b + S[C_F_LINK] + 1, 0)


@njit(cache=True)
def mark_pcp(mem, S, pfn):
    pass                                  # 6.18 keeps no pcp mark


@njit(cache=True)
def is_pcp_page(mem, S, pfn):
    return -1


@njit(cache=True)
def tail_ok(mem, S, pfn):
    if S[C_DYNAMIC]:
        return np.int64(ldm(mem, S, pfn * S[C_W] + S[C_F_LINK]) & np.uint64(15)) == S[C_BUDDY]
    return True


@njit(cache=True)
def init_reserved(mem, S, pfn, gz):
    b = pfn * S[C_W]
    if S[C_DYNAMIC]:
        stm(mem, S, b + S[C_F_LINK], misc_word(S, MISC_SUBTYPE_RESERVED, 0, gz))
        stm(mem, S, b + S[C_F_LINK] + 1, 0)
    else:                                 # INIT_LIST_HEAD(&page->lru)
        stm(mem, S, b + S[C_F_LINK], addr_of(S, pfn))
        stm(mem, S, b + S[C_F_LINK] + 1, addr_of(S, pfn))
    stm(mem, S, b + S[C_F_PTYPE], _PT_NONE | (np.uint64(1) << np.uint64(S[C_REF_SHIFT])))


@njit(cache=True)
def free_state(mem, S, pfn):
    free_range(mem, S, pfn, 1)


@njit(cache=True)
def free_range(mem, S, pfn, n):
    """free_state() of pages [pfn, pfn + n): every word but flags cleared (node/zone kept),
    self-linked lru (or type Buddy in the memdesc word), page_type UINT_MAX. S is read once
    (mem stores may alias it)."""
    w, fl, lk, pt = S[C_W], S[C_F_FLAGS], S[C_F_LINK], S[C_F_PTYPE]
    dyn, buddy = S[C_DYNAMIC], np.uint64(S[C_BUDDY])
    a = addr_of(S, pfn)
    step = np.uint64(1) << np.uint64(S[C_SHIFT])
    for b in range(pfn * w, (pfn + n) * w, w):
        f = ldm(mem, S, b + fl) & _KEEP_NODEZONE
        for k in range(w):
            stm(mem, S, b + k, 0)
        stm(mem, S, b + fl, f)
        if dyn:
            stm(mem, S, b + lk, buddy)
        else:
            stm(mem, S, b + lk, a)
            stm(mem, S, b + lk + 1, a)
        a += step
        stm(mem, S, b + pt, _PT_NONE)


@njit(cache=True)
def prep_new_page(mem, S, pfn, order, comp, gz):
    w = S[C_W]
    b = pfn * w
    n = np.int64(1) << order
    pt = b + S[C_F_PTYPE]
    ref1 = np.uint64(1) << np.uint64(S[C_REF_SHIFT])
    stm(mem, S, pt, (ldm(mem, S, pt) & U32) | ref1)          # refcount 1
    link = S[C_F_LINK]
    if S[C_DYNAMIC]:
        word = misc_word(S, MISC_SUBTYPE_ALLOC_PAGES, order, gz)
        for i in range(n):
            stm(mem, S, (pfn + i) * w + link, word)
        return
    if comp and order > 0:
        head = VMEMMAP + (np.uint64(pfn) << np.uint64(S[C_SHIFT]))
        stm(mem, S, b + S[C_F_FLAGS], ldm(mem, S, b + S[C_F_FLAGS]) | (_PG_HEAD))
        for i in range(1, n):
            t = (pfn + i) * w
            stm(mem, S, t + S[C_F_MAPPING], _TAIL_MAPPING)
            stm(mem, S, t + link, head | np.uint64(1))          # compound_head
            stm(mem, S, t + S[C_F_PRIV], 0)
        p1 = b + w
        f1 = (ldm(mem, S, p1 + F1_FLAGS_1) & ~np.uint64(0xFF)) | np.uint64(order)
        stm(mem, S, p1 + F1_FLAGS_1, f1)
        stm(mem, S, p1 + F1_LARGE_MAPCOUNT, U32)       # _large_mapcount -1, _nr_pages_mapped 0
        stm(mem, S, p1 + F1_ENTIRE_MAPCOUNT, U32)      # _entire_mapcount -1, _pincount 0
        stm(mem, S, p1 + F1_MM_ID_MAPCOUNT, ~np.uint64(0))   # _mm_id_mapcount[2] = -1, -1
        stm(mem, S, p1 + F1_MM_IDS, 0)
        stm(mem, S, p1 + F1_NR_PAGES, np.uint64(n))
        if order > 1:
            d = head + np.uint64((2 * w + F2_DEFERRED_LIST) * 8)
            stm(mem, S, b + 2 * w + F2_DEFERRED_LIST, d)
            stm(mem, S, b + 2 * w + F2_DEFERRED_LIST + 1, d)
