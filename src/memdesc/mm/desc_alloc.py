"""memdesc_alloc_node(): one allocation path for every descriptor type, decided per type.

Mirrors the allocation the plan sketches for every descriptor, ``memdesc_alloc_node(gfp,
order, nid, sizeof(struct ioptdesc))`` [S: "[PATCH v3 14/23] iommu/pages: Move from struct
page to struct ioptdesc and folio", research/turn2-frontier.md], and FolioAlloc's order
[S: kernelnewbies.org/MatthewWilcox/FolioAlloc]: the descriptor from its slab cache first,
then the pages with ``desc | type`` in their memdesc word; if the pages cannot be had the
descriptor is freed again.

Whether a type's descriptor is a slab object or the struct page itself is *data*: the
stage's ``separate_types`` row (stages.py), turned into sp[SP_SEPARATE + type] by
memdesc_alloc.stage_params(). So the same call serves v6.18 (every type overlays struct
page: plain pages, the descriptor is the head struct page), the 2026 transition stages
(``ptdesc-first``: page-table descriptors separate, everything else overlays;
``ptdesc-slab``: slab too) and ``dynamic`` on (every type separate). Page tables, zsmalloc
and page_pool allocate through here; mm/slub.py's struct slab keeps its own self-hosted
path (its recursion is broken there).
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
from memdesc.mm.slub import _GROW, G_SIZE, _alloc_obj, kmem_cache_free_one_nb

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
