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

Whether a type's descriptor is a slab object or the struct page itself is decided per type
from the stage's ``separate`` row (memdesc_alloc.stage_params(): sp[SP_SEPARATE + t]):
:func:`memdesc_alloc_node_nb` mirrors the allocation the plan sketches for every descriptor,
``memdesc_alloc_node(gfp, order, nid, sizeof(struct ioptdesc))`` [S: "[PATCH v3 14/23]
iommu/pages: Move from struct page to struct ioptdesc and folio"], and serves v6.18 (every type
overlays: plain pages, the head struct page is the descriptor), the 2026 transition
(``ptdesc-first``: page tables separate; ``ptdesc-slab``: slab too) and ``dynamic`` on (every
type separate). Page tables, zsmalloc, page_pool and folios allocate through it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.mm.free_tracking import nodezone_bits, page_zone_index
from memdesc.mm.kmem import VMEMMAP_START, kread, kwrite
from memdesc.mm.memdesc_alloc import (
    E_DATA,
    E_GEO,
    E_MEM,
    E_S,
    E_SLOT,
    E_SP,
    E_STATS,
    SP_ORDER_OFF,
    SP_PAGE_BYTES,
    SP_PFN_OFF,
    SP_SEPARATE,
    ST_DESC_FAIL_UNWIND,
    ST_IN_FREE,
    alloc_page_desc_nb,
    alloc_pages_e,
    free_pages_e,
)
from memdesc.mm.mmzone import NR_ZONES
from memdesc.mm.slab import _GROW, G_SIZE, _kr
from memdesc.mm.slub import _alloc_obj, kmem_cache_free_one_nb


@njit(cache=True)
def desc_alloc_nb(E, slot, type_code, gfpflags, order, nid):
    """alloc_page_desc() for any descriptor type of stages.DESCRIPTOR_TYPES (a separate type):
    memdesc_alloc_node_nb()'s descriptor. Returns the descriptor address, 0, or _GROW."""
    return memdesc_alloc_node_nb(E, slot, type_code, gfpflags, order, nid)[0]


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
    memdesc_free_nb(E, desc, type_code, pfn, order)
    stats[ST_IN_FREE] -= 1


_U0 = np.uint64(0)


@njit(cache=True)
def page_address_of(E, pfn):
    """The struct page of ``pfn`` (pfn_to_page())."""
    return np.uint64(VMEMMAP_START) + np.uint64(pfn) * np.uint64(E[E_SP][SP_PAGE_BYTES])


@njit(cache=True)
def _init_standalone(E, c, desc, type_code, pfn, order):
    """kmem_cache_zalloc() semantics, then what a standalone descriptor keeps that the struct
    page kept before: memdesc_flags_t (node/zone, first word) and the pfn/order members its
    stages.DESCRIPTOR_TYPES row names (sp[SP_PFN_OFF + t], sp[SP_ORDER_OFF + t])."""
    m, d, s = E[E_MEM], E[E_DATA], E[E_SLOT]
    sp = E[E_SP]
    for off in range(0, E[E_GEO][c, G_SIZE], 8):
        kwrite(m, d, s, desc + np.uint64(off), _U0)
    zi = page_zone_index(E[E_MEM], E[E_S], pfn)
    kwrite(m, d, s, desc, nodezone_bits(zi // NR_ZONES, zi % NR_ZONES))
    kwrite(m, d, s, desc + np.uint64(sp[SP_PFN_OFF + type_code]), np.uint64(pfn))
    oo = sp[SP_ORDER_OFF + type_code]
    if oo >= 0:
        a = desc + np.uint64(oo & ~7)
        sh = np.uint64(8 * (oo & 7))
        kwrite(m, d, s, a, (kread(m, d, s, a) & ~(np.uint64(0xFF) << sh))
               | (np.uint64(order) << sh))


@njit(cache=True)
def memdesc_alloc_node_nb(E, slot, type_code, gfpflags, order, nid):
    """Pages of ``order`` on ``nid`` with their descriptor of memdesc type ``type_code``
    (cache index in sp[slot]). Returns (descriptor address, first PFN): while the type
    overlays struct page the descriptor is the head struct page (page_ptdesc(),
    page_zpdesc(), pp_page_to_nmdesc() are casts); once it is separate, a zeroed slab object
    holding node/zone, pfn and order. (0, -1) when either allocation fails, (_GROW, -1) when
    the content store must grow first (nothing allocated)."""
    sp = E[E_SP]
    if not sp[SP_SEPARATE + type_code]:
        pfn = alloc_pages_e(E, gfpflags, order, nid)
        if pfn < 0:
            return _U0, np.int64(-1)
        return page_address_of(E, pfn), pfn
    c = sp[slot]
    desc, pfn = desc_then_pages_nb(E, c, type_code, gfpflags, order, nid)
    if pfn >= 0:
        _init_standalone(E, c, desc, type_code, pfn, order)
    return desc, pfn


@njit(cache=True)
def desc_then_pages_nb(E, c, type_code, gfpflags, order, nid):
    """FolioAlloc's order: a descriptor from cache ``c``, then the pages with ``desc | type``;
    the descriptor is freed again (ST_DESC_FAIL_UNWIND) when the pages cannot be had.
    Returns (desc, pfn), (0, -1) or (_GROW, -1)."""
    desc = _alloc_obj(E, c, gfpflags, nid)
    if desc <= _GROW:
        return desc, np.int64(-1)
    pfn = alloc_page_desc_nb(E, gfpflags, order, desc, type_code, nid)
    if pfn < 0:
        stats = E[E_STATS]
        stats[ST_DESC_FAIL_UNWIND] += 1
        stats[ST_IN_FREE] += 1
        kmem_cache_free_one_nb(E, desc)
        stats[ST_IN_FREE] -= 1
        return _U0, np.int64(-1)
    return desc, pfn


@njit(cache=True)
def memdesc_free_nb(E, desc, type_code, pfn, order):
    """The pages back to the allocator, then (a separate type) the descriptor to its cache.
    Frees only; the caller has undone its own fields."""
    free_pages_e(E, pfn, order)
    if E[E_SP][SP_SEPARATE + type_code]:
        kmem_cache_free_one_nb(E, desc)
