"""alloc_page_desc() and free_page_desc() for every descriptor type of the dynamic stages:
a typed descriptor as an object of its slab cache, plus the pages whose memdesc word points
at it.

Mirrors the memdesc plan (Matthew Wilcox, "Memdescs" and FolioAlloc on kernelnewbies; linux-mm
2025-11-17): allocate the descriptor first, then the pages with ``desc | type`` in their
memdesc word, then fill the standalone descriptor's pfn/order members from its
stages.DESCRIPTOR_TYPES row; if the pages fail the descriptor is freed again. Freeing runs the
other way (pages, then descriptor) and never allocates. No kernel file holds this yet (the
plan is not merged); the descriptor caches and their recursion are in memdesc.mm.slab_caches.

Invariant: every live descriptor is an object of the cache its memdesc type needs, and its
pfn/order cover exactly the pages that point to it (memdesc.mm.slub_debug check 12).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.mm.memdesc_alloc import (
    E_SP,
    E_STATS,
    SP_ORDER_OFF,
    SP_PFN_OFF,
    ST_DESC_FAIL_UNWIND,
    ST_IN_FREE,
    alloc_page_desc_nb,
    free_pages_e,
)
from memdesc.mm.slab import _GROW, _kr, _kw
from memdesc.mm.slub import _alloc_obj, kmem_cache_free_one_nb


@njit(cache=True)
def desc_alloc_nb(E, slot, type_code, gfpflags, order, nid):
    """alloc_page_desc() for any descriptor type of stages.DESCRIPTOR_TYPES (dynamic stages):
    the descriptor from the cache in sp[slot], then the pages with ``desc | type``, then the
    standalone descriptor's pfn/order members from the type's table row (sp[SP_PFN_OFF + t],
    sp[SP_ORDER_OFF + t]). If the pages fail the descriptor is freed again [S: FolioAlloc].
    Returns the descriptor address, 0, or _GROW."""
    sp = E[E_SP]
    desc = _alloc_obj(E, sp[slot], gfpflags, nid)
    if desc <= _GROW:
        return desc
    pfn = alloc_page_desc_nb(E, gfpflags, order, desc, type_code, nid)
    stats = E[E_STATS]
    if pfn < 0:
        stats[ST_DESC_FAIL_UNWIND] += 1
        stats[ST_IN_FREE] += 1
        kmem_cache_free_one_nb(E, desc)
        stats[ST_IN_FREE] -= 1
        return np.uint64(0)
    _kw(E, desc + np.uint64(sp[SP_PFN_OFF + type_code]), np.uint64(pfn))
    oo = sp[SP_ORDER_OFF + type_code]
    if oo >= 0:
        a = desc + np.uint64(oo & ~7)
        sh = np.uint64(8 * (oo & 7))
        _kw(E, a, (_kr(E, a) & ~(np.uint64(0xFF) << sh)) | (np.uint64(order) << sh))
    return desc


@njit(cache=True)
def desc_pfn_order_nb(E, desc, type_code):
    """(first PFN, order) a standalone descriptor of memdesc type ``type_code`` records, at
    the members its stages.DESCRIPTOR_TYPES row names (order 0 when it has none)."""
    sp = E[E_SP]
    pfn = np.int64(_kr(E, desc + np.uint64(sp[SP_PFN_OFF + type_code])))
    oo = sp[SP_ORDER_OFF + type_code]
    if oo < 0:
        return pfn, np.int64(0)
    w = _kr(E, desc + np.uint64(oo & ~7))
    return pfn, np.int64((w >> np.uint64(8 * (oo & 7))) & np.uint64(0xFF))


@njit(cache=True)
def desc_free_nb(E, desc, type_code):
    """The pages of ``desc`` (pfn/order from its table row), then the descriptor back to its
    cache. Frees only."""
    stats = E[E_STATS]
    stats[ST_IN_FREE] += 1
    pfn, order = desc_pfn_order_nb(E, desc, type_code)
    free_pages_e(E, pfn, order)
    kmem_cache_free_one_nb(E, desc)
    stats[ST_IN_FREE] -= 1
