"""Folios at every stage: folio_alloc(), folio_put(), references and mappings.

A folio is named by its address, as the kernel names it by a pointer: the head struct page in
the mem_map (vmemmap) at ``v6.18``/``folio``, where struct folio overlays four struct pages
[M: fixtures/btf/pahole/folio.txt]; a slab object of the "folio" (order 0) or "folio_large"
cache from ``dynamic`` on, the 80-byte folio of the Path (2025) [S: Memdescs/Path] followed,
for large folios, by what 6.18 keeps in the first tail pages (mapcounts, mm ids, deferred
list: 44 bytes, 124 -> 128 with the 16-byte rounding [M: folio.txt; descriptors.toml]).

Allocation mirrors folio_alloc() of the FolioAlloc plan [S: kernelnewbies.org/MatthewWilcox/
FolioAlloc] at the dynamic stages (descriptor from slab with the caller's gfp, then the pages
through alloc_page_desc(); if the pages fail the descriptor is freed) and
folio_alloc_noprof() -> __folio_alloc() with __GFP_COMP at the overlay stages
(prep_compound_page() done by the page allocator). Reference and mapping counts follow
include/linux/mm.h and mm/rmap.c (6.18): _refcount starts at 1; _mapcount/_large_mapcount/
_entire_mapcount start at -1 (unmapped); folio_put() at zero frees pages then descriptor.

All hot paths are numba kernels over the environment tuple of memdesc.mm.memdesc_alloc.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.mm import gfp as _gfp
from memdesc.mm.access_core import (
    ADDRNODE,
    KIND_PTR,
    OP_FOLIO_ALLOC,
    OP_FOLIO_PUT,
    OP_FOLIO_PUT_REF,
    acc,
    op_begin,
    op_end,
    op_refine,
)
from memdesc.mm.free_tracking import nodezone_bits, page_zone_index
from memdesc.mm.kmem import (
    VMEMMAP_START,
    acc_stores,
    dm_index,
    kread,
    kread32_a,
    kread_a,
    kwrite32_a,
    kwrite_a,
)
from memdesc.mm.memdesc_alloc import (
    E_DATA,
    E_MEM,
    E_S,
    E_SLOT,
    E_SP,
    E_STATS,
    SP_C_FOLIO,
    SP_C_FOLIO_LARGE,
    SP_DYNAMIC,
    SP_MEMDESC_OFF,
    SP_PAGE_BYTES,
    SP_T_ANON,
    SP_T_FILE,
    ST_IN_FREE,
    alloc_pages_e,
    borrow,
    desc_separate,
    free_pages_e,
)
from memdesc.mm.mm_types import FOLIO_PATH_2025, FOLIO_V6_18, PG_head, PG_lru
from memdesc.mm.mmzone import NR_ZONES
from memdesc.mm.page_alloc import alloc_pages_nb, free_pages_nb, set_memdesc_nb
from memdesc.mm.page_desc import desc_then_pages_nb
from memdesc.mm.slab import _GROW
from memdesc.mm.slub import _alloc_obj, kmem_cache_free_one_nb
from memdesc.stages import _layout

#: Large-folio part of the dynamic folio: the 6.18 members of __page_1/__page_2 a large folio
#: still needs [I from M: folio.txt], after the 80-byte Path folio.
FOLIO_LARGE_PATH = _layout(
    "folio_large", 128,
    *[(f.name, f.offset, f.size, f.note) for f in FOLIO_PATH_2025.fields],
    ("_large_mapcount", 80, 4), ("_nr_pages_mapped", 84, 4), ("_entire_mapcount", 88, 4),
    ("_mm_id_mapcount", 92, 8), ("_mm_ids", 100, 8), ("_deferred_list", 112, 16),
)

# Field ids of the offset table FO[layout, field] (layout 0: v6.18 overlay, 1: dynamic).
F_FLAGS, F_LRU, F_MAPPING, F_INDEX, F_PRIVATE, F_MAPCOUNT, F_REFCOUNT = range(7)
F_LARGE_MAPCOUNT, F_NR_PAGES_MAPPED, F_ENTIRE_MAPCOUNT, F_PINCOUNT, F_ORDER = range(7, 12)
F_PFN, F_MEMCG, F_DEFERRED = 12, 13, 14
NR_F = 15
_NAMES = {
    F_FLAGS: "flags", F_LRU: "lru", F_MAPPING: "mapping", F_INDEX: "index",
    F_PRIVATE: "private", F_MAPCOUNT: "_mapcount", F_REFCOUNT: "_refcount",
    F_LARGE_MAPCOUNT: "_large_mapcount", F_NR_PAGES_MAPPED: "_nr_pages_mapped",
    F_ENTIRE_MAPCOUNT: "_entire_mapcount", F_DEFERRED: "_deferred_list",
}


def _offsets() -> np.ndarray:
    fo = np.full((2, NR_F), -1, np.int64)
    for row, layout in ((0, FOLIO_V6_18), (1, FOLIO_LARGE_PATH)):
        for fid, name in _NAMES.items():
            fo[row, fid] = layout.field(name).offset
    fo[0, F_PINCOUNT] = FOLIO_V6_18.field("_pincount").offset
    fo[1, F_PINCOUNT] = FOLIO_PATH_2025.field("pincount").offset
    fo[0, F_ORDER] = FOLIO_V6_18.field("_flags_1").offset      # low byte: folio_order()
    fo[1, F_ORDER] = FOLIO_PATH_2025.field("order").offset
    fo[1, F_PFN] = FOLIO_PATH_2025.field("pfn").offset
    fo[0, F_MEMCG] = FOLIO_V6_18.field("memcg_data").offset
    fo[1, F_MEMCG] = FOLIO_PATH_2025.field("memcg").offset
    return fo


#: FO[layout, field]: byte offset inside struct folio (-1: the layout has no such member).
FO = _offsets()
#: PAGE_MAPPING_ANON: bit 0 of folio->mapping marks an anon_vma [S: include/linux/page-flags.h].
PAGE_MAPPING_ANON = 1

_U32 = np.uint64(0xFFFFFFFF)
_PG_LRU = np.uint64(1 << PG_lru)


@njit(cache=True)
def _lay(E):
    """1 when the folio is a separate descriptor at this stage (its type's ``separate`` row:
    ``dynamic`` on; folios go last in the 2026 order), 0 while it overlays struct page: the
    row of FO to read members from."""
    return np.int64(desc_separate(E, E[E_SP][SP_T_FILE]))


@njit(cache=True)
def fget(E, folio, fid):
    """A 64-bit folio member."""
    return kread_a(E[E_S], E[E_MEM], E[E_DATA], E[E_SLOT], folio + np.uint64(FO[_lay(E), fid]),
                   False)


@njit(cache=True)
def fset(E, folio, fid, value):
    kwrite_a(E[E_S], E[E_MEM], E[E_DATA], E[E_SLOT], folio + np.uint64(FO[_lay(E), fid]),
             np.uint64(value))


@njit(cache=True)
def fget32(E, folio, fid):
    """A 32-bit (atomic_t) folio member, signed."""
    return np.int32(kread32_a(E[E_S], E[E_MEM], E[E_DATA], E[E_SLOT],
                              folio + np.uint64(FO[_lay(E), fid])))


@njit(cache=True)
def fset32(E, folio, fid, value):
    kwrite32_a(E[E_S], E[E_MEM], E[E_DATA], E[E_SLOT], folio + np.uint64(FO[_lay(E), fid]),
               np.uint32(np.int64(value) & 0xFFFFFFFF))


@njit(cache=True)
def folio_order(E, folio):
    """Mirrors folio_order(): the _flags_1 low byte of a large folio at the overlay stages
    (0 without PG_head), the order byte of the descriptor from ``dynamic`` on."""
    if _lay(E):
        return np.int64(kread32_a(E[E_S], E[E_MEM], E[E_DATA], E[E_SLOT],
                                  folio + np.uint64(FO[1, F_ORDER])) & np.uint32(0xFF))
    if fget(E, folio, F_FLAGS) & np.uint64(1 << PG_head):
        return np.int64(fget(E, folio, F_ORDER) & np.uint64(0xFF))
    return 0


@njit(cache=True)
def folio_pfn(E, folio):
    """Mirrors folio_pfn(): vmemmap arithmetic at the overlay stages, folio->pfn after."""
    sp = E[E_SP]
    if _lay(E):
        return np.int64(fget(E, folio, F_PFN))
    return np.int64((folio - np.uint64(VMEMMAP_START)) // np.uint64(sp[SP_PAGE_BYTES]))


@njit(cache=True)
def page_folio(E, pfn):
    """Mirrors page_folio(): the head through compound_head at the overlay stages; from
    ``dynamic`` on the memdesc word, and 0 (NULL) for a page that is not part of a folio
    [S: Path: "page_folio() on a non-folio page returns NULL"]."""
    sp = E[E_SP]
    page = np.uint64(VMEMMAP_START) + np.uint64(pfn) * np.uint64(sp[SP_PAGE_BYTES])
    if _lay(E):
        w = kread_a(E[E_S], E[E_MEM], E[E_DATA], E[E_SLOT], page + np.uint64(sp[SP_MEMDESC_OFF]),
                    True)
        t = np.int64(w & np.uint64(15))
        if t != sp[SP_T_FILE] and t != sp[SP_T_ANON]:
            return np.uint64(0)
        return w & ~np.uint64(15)
    head = kread(E[E_MEM], E[E_DATA], E[E_SLOT], page + np.uint64(8))
    # _compound_head(): the value is a pointer only on a tail page (a head page's address
    # does not come from it)
    acc(E[E_S], page + np.uint64(8), KIND_PTR if head & np.uint64(1) else 0, ADDRNODE,
        np.int64(head - np.uint64(1)))
    if head & np.uint64(1):
        return head - np.uint64(1)
    return page


# ---- allocation and freeing -------------------------------------------------------------------

@njit(cache=True)
def _init_desc(E, folio, pfn, order):
    """The descriptor fields folio_alloc() sets [S: FolioAlloc]: pfn, order, flags =
    pfn_flags(pfn) (node/zone), empty lru, no mapping/private, _mapcount -1, refcount 1; a
    large folio's mapcounts start at -1 as prep_compound_head() sets them in 6.18. The words
    are stored directly (descriptor caches have order-0 slabs: an object never straddles a
    page) in the dynamic layout of FOLIO_LARGE_PATH."""
    zi = page_zone_index(E[E_MEM], E[E_S], pfn)
    w = dm_index(E[E_SLOT], folio)
    d = E[E_DATA]
    d[w] = nodezone_bits(zi // NR_ZONES, zi % NR_ZONES)      # flags
    d[w + 1] = folio + np.uint64(8)                          # lru.next = &lru
    d[w + 2] = folio + np.uint64(8)                          # lru.prev
    d[w + 3] = 0                                             # mapping
    d[w + 4] = 0                                             # index
    d[w + 5] = 0                                             # private
    d[w + 6] = np.uint64(1) | (np.uint64(0xFFFFFFFF) << np.uint64(32))  # _refcount 1, _mapcount-1
    d[w + 7] = np.uint64(order) << np.uint64(32)             # pincount 0, order
    d[w + 8] = np.uint64(pfn)
    d[w + 9] = 0                                             # memcg
    if order > 0:
        d[w + 10] = np.uint64(0xFFFFFFFF)     # _large_mapcount -1, _nr_pages_mapped 0
        d[w + 11] = ~np.uint64(0)             # _entire_mapcount -1, _mm_id_mapcount[0] -1
        d[w + 12] = np.uint64(0xFFFFFFFF)     # _mm_id_mapcount[1] -1, _mm_ids (low half) 0
        d[w + 13] = 0                         # _mm_ids (high half)
        d[w + 14] = folio + np.uint64(112)                   # _deferred_list (self)
        d[w + 15] = folio + np.uint64(112)
    acc_stores(E[E_S], folio, 16 if order > 0 else 10)


@njit(cache=True)
def folio_alloc_nb(E, gfpflags, order, type_code, nid):
    """folio_alloc(gfp, order) for a folio of memdesc type ``type_code`` (File or Anon).

    Dynamic stages: ``kmem_cache_alloc(folio_slab, gfp)`` first, then
    ``alloc_page_desc(gfp, order, type, folio)``; if the pages fail, the descriptor goes back
    (``kmem_cache_free()``) and the call fails. Overlay stages: a __GFP_COMP allocation whose
    head struct page is the folio. Returns the folio address, 0, or slub._GROW. One counted
    folio_alloc operation (memdesc.mm.access)."""
    S = E[E_S]
    op_begin(S, OP_FOLIO_ALLOC)
    f = _folio_alloc(E, gfpflags, order, type_code, nid)
    op_end(S)
    return f


@njit(cache=True)
def _folio_alloc(E, gfpflags, order, type_code, nid):
    sp = E[E_SP]
    if _lay(E):
        c = sp[SP_C_FOLIO] if order == 0 else sp[SP_C_FOLIO_LARGE]
        desc, pfn = desc_then_pages_nb(E, c, type_code, gfpflags, order, nid)
        if pfn < 0:
            return desc
        _init_desc(E, desc, pfn, order)
        return desc
    pfn = alloc_pages_e(E, gfpflags | _gfp.__GFP_COMP, order, nid)
    if pfn < 0:
        return np.uint64(0)
    return np.uint64(VMEMMAP_START) + np.uint64(pfn) * np.uint64(sp[SP_PAGE_BYTES])


@njit(cache=True)
def folio_ref_count(E, folio):
    return np.int64(fget32(E, folio, F_REFCOUNT))


@njit(cache=True)
def folio_ref_add(E, folio, nr):
    """Mirrors folio_ref_add()."""
    fset32(E, folio, F_REFCOUNT, folio_ref_count(E, folio) + nr)


@njit(cache=True)
def folio_mapcount(E, folio):
    """Mirrors folio_mapcount(): _mapcount + 1 for a small folio, _large_mapcount + 1."""
    if folio_order(E, folio) == 0:
        return np.int64(fget32(E, folio, F_MAPCOUNT)) + 1
    return np.int64(fget32(E, folio, F_LARGE_MAPCOUNT)) + 1


@njit(cache=True)
def folio_add_lru(E, folio):
    """Mirrors folio_add_lru() -> lru_add(): folio_set_lru() (PG_lru in folio->flags, the
    head struct page's flags at the overlay stages, the descriptor's memdesc_flags_t from
    ``dynamic`` on). The per-CPU folio_batch is drained at once [I: the emulator has no
    lruvec lists; what it needs is PG_lru, which prep_move_freepages_block() counts]."""
    if fget(E, folio, F_FLAGS) & _PG_LRU:
        raise AssertionError("folio_add_lru: folio already on an LRU")
    fset(E, folio, F_FLAGS, fget(E, folio, F_FLAGS) | _PG_LRU)


@njit(cache=True)
def folio_test_lru(E, folio):
    """Mirrors folio_test_lru()."""
    return fget(E, folio, F_FLAGS) & _PG_LRU != 0


@njit(cache=True)
def __page_cache_release(E, folio):
    """Mirrors __page_cache_release(): an LRU folio leaves its lruvec (lruvec_del_folio())
    and loses PG_lru (__folio_clear_lru()) before its pages are freed."""
    if folio_test_lru(E, folio):
        fset(E, folio, F_FLAGS, fget(E, folio, F_FLAGS) & ~_PG_LRU)


@njit(cache=True)
def __folio_put(E, folio):
    """Mirrors __folio_put() -> __page_cache_release(), free_frozen_pages() and, from
    ``dynamic`` on, the descriptor back to its cache after the pages (no page refers to it
    any more). Frees only."""
    if folio_mapcount(E, folio) != 0:
        raise AssertionError("freeing a mapped folio (bad_page)")
    stats = E[E_STATS]
    stats[ST_IN_FREE] += 1
    __page_cache_release(E, folio)
    pfn = folio_pfn(E, folio)
    order = folio_order(E, folio)
    if not E[E_SP][SP_DYNAMIC]:
        fset(E, folio, F_MAPPING, 0)           # free_pages_prepare() wants no mapping
    free_pages_e(E, pfn, order)
    if _lay(E):
        kmem_cache_free_one_nb(E, folio)
    stats[ST_IN_FREE] -= 1


@njit(cache=True)
def folio_put_refs(E, folio, nr):
    """Mirrors folio_put_refs(): drop ``nr`` references; the last one frees the folio.
    Returns True if it was freed. One counted operation: folio_put.ref, or folio_put when it
    drops the last reference."""
    S = E[E_S]
    op_begin(S, OP_FOLIO_PUT_REF)
    r = folio_ref_count(E, folio) - nr
    if r < 0:
        raise AssertionError("folio refcount underflow")
    fset32(E, folio, F_REFCOUNT, r)
    if r == 0:
        op_refine(S, OP_FOLIO_PUT_REF, OP_FOLIO_PUT_REF, OP_FOLIO_PUT)
        __folio_put(E, folio)
    op_end(S)
    return r == 0


# ---- anonymous rmap ---------------------------------------------------------------------------

#: ENTIRELY_MAPPED: _nr_pages_mapped bias of a PMD mapping [S: mm/internal.h].
ENTIRELY_MAPPED = 0x800000


@njit(cache=True)
def folio_add_new_anon_rmap(E, folio, anon_vma, index, pmd_mapped):
    """Mirrors folio_add_new_anon_rmap() (6.18): mapcounts from -1 to mapped once, then
    __folio_set_anon() (mapping = anon_vma | PAGE_MAPPING_ANON, index). Per-page _mapcount
    is kept while struct page has it (CONFIG_PAGE_MAPCOUNT, the v6.18/folio layouts); from
    ``dynamic`` on the model runs as CONFIG_NO_PAGE_MAPCOUNT (6.15) does [I]."""
    order = folio_order(E, folio)
    sp = E[E_SP]
    if order == 0:
        fset32(E, folio, F_MAPCOUNT, 0)
    elif not pmd_mapped:
        nr = np.int64(1) << order
        if not sp[SP_DYNAMIC]:
            for i in range(nr):
                kwrite32_a(E[E_S], E[E_MEM], E[E_DATA], E[E_SLOT],
                           folio + np.uint64(i * sp[SP_PAGE_BYTES] + 48), np.uint32(0))
            fset32(E, folio, F_NR_PAGES_MAPPED, nr)
        fset32(E, folio, F_LARGE_MAPCOUNT, nr - 1)
    else:
        fset32(E, folio, F_ENTIRE_MAPCOUNT, 0)
        fset32(E, folio, F_LARGE_MAPCOUNT, 0)
        if not sp[SP_DYNAMIC]:
            fset32(E, folio, F_NR_PAGES_MAPPED, ENTIRELY_MAPPED)
    fset(E, folio, F_MAPPING, anon_vma | np.uint64(PAGE_MAPPING_ANON))
    fset(E, folio, F_INDEX, index)


@njit(cache=True)
def folio_remove_rmap(E, folio, pmd_mapped):
    """Mirrors folio_remove_rmap_ptes(folio, page, nr)/folio_remove_rmap_pmd() for a whole
    folio mapped once: the mapcounts return to -1 (the folio keeps ->mapping until freed)."""
    order = folio_order(E, folio)
    sp = E[E_SP]
    if order == 0:
        fset32(E, folio, F_MAPCOUNT, fget32(E, folio, F_MAPCOUNT) - 1)
        return
    nr = np.int64(1) << order
    if pmd_mapped:
        fset32(E, folio, F_ENTIRE_MAPCOUNT, fget32(E, folio, F_ENTIRE_MAPCOUNT) - 1)
        fset32(E, folio, F_LARGE_MAPCOUNT, fget32(E, folio, F_LARGE_MAPCOUNT) - 1)
        if not sp[SP_DYNAMIC]:
            fset32(E, folio, F_NR_PAGES_MAPPED,
                   fget32(E, folio, F_NR_PAGES_MAPPED) - ENTIRELY_MAPPED)
        return
    if not sp[SP_DYNAMIC]:
        for i in range(nr):
            a = folio + np.uint64(i * sp[SP_PAGE_BYTES] + 48)
            v = np.int32(kread32_a(E[E_S], E[E_MEM], E[E_DATA], E[E_SLOT], a))
            kwrite32_a(E[E_S], E[E_MEM], E[E_DATA], E[E_SLOT], a,
                       np.uint32(np.int64(v - 1) & 0xFFFFFFFF))
        fset32(E, folio, F_NR_PAGES_MAPPED, fget32(E, folio, F_NR_PAGES_MAPPED) - nr)
    fset32(E, folio, F_LARGE_MAPCOUNT, fget32(E, folio, F_LARGE_MAPCOUNT) - nr)


@njit(cache=True)
def folio_alloc_bulk_nb(E, gfpflags, order, type_code, out, start):
    """folio_alloc() for out[start:] (0 where one failed). Returns (index, done?); a False
    means the kernel-memory store must grow before the call is repeated from index."""
    E = borrow(E)
    for i in range(start, out.shape[0]):
        f = folio_alloc_nb(E, gfpflags, order, type_code, 0)
        if f == _GROW:
            return i, False
        out[i] = f
    return out.shape[0], True


@njit(cache=True)
def folio_put_bulk_nb(E, folios):
    """folio_put() of each non-zero entry (the last reference: each is freed)."""
    E = borrow(E)
    for i in range(folios.shape[0]):
        if folios[i] != 0:
            folio_put_refs(E, folios[i], 1)


# ---- folios whose descriptors another kernel's slab serves (two environments) ---------------
# ``HE`` holds the pages (and, with the arena's kernel memory borrowed, reads the descriptors);
# ``AE`` is the kernel-memory arena whose "folio"/"folio_large" caches serve the descriptors.
# Departure [I]: the kernel takes the descriptors' slab pages from the same buddy allocator;
# here they come from AE so that the pages' placement in HE is the same at every stage (the
# policy replay, memdesc.analysis.replay_folios). With HE is AE it is the kernel's own path.

@njit(cache=True)
def _folio_desc_alloc(AE, gfpflags, order):
    """folio_alloc()'s first step from ``dynamic`` on [S: FolioAlloc]: kmem_cache_alloc() of
    the descriptor from AE's "folio" (order 0) or "folio_large" cache with the caller's gfp.
    A full kernel-memory store or a failed slab page is an error (AE is sized beforehand)."""
    asp = AE[E_SP]
    desc = _alloc_obj(AE, asp[SP_C_FOLIO] if order == 0 else asp[SP_C_FOLIO_LARGE],
                      gfpflags, 0)
    if desc == _GROW:
        raise AssertionError("folio descriptor arena: kernel memory store full")
    if desc == 0:
        raise AssertionError("folio descriptor arena: out of memory")
    return desc


@njit(cache=True)
def _folio_lru_prep(HE, pfn, order, anon, desc):
    """The pages [pfn, pfn + 2^order), allocated with __GFP_COMP, become a folio on the LRU:
    from ``dynamic`` on ``desc | File/Anon`` into every memdesc word (alloc_page_desc()'s
    last step) and the descriptor's fields (_init_desc()); at the overlay stages the head
    struct page is the folio (prep_compound_page() done by the page allocator). Then
    folio_add_lru() [S: mm/swap.c]. ``anon``: the Anon memdesc type, else File (shmem is a
    File folio: the tmpfs mapping's page cache). Returns the folio."""
    mem, S, sp = HE[E_MEM], HE[E_S], HE[E_SP]
    if sp[SP_DYNAMIC]:
        t = sp[SP_T_ANON] if anon else sp[SP_T_FILE]
        set_memdesc_nb(mem, S, pfn, order, desc | np.uint64(t))
        _init_desc(HE, desc, pfn, order)
        folio = desc
    else:
        folio = np.uint64(VMEMMAP_START) + np.uint64(pfn) * np.uint64(sp[SP_PAGE_BYTES])
    folio_add_lru(HE, folio)
    return folio


@njit(cache=True)
def folio_alloc_lru_nb(HE, AE, gfpflags, order, cpu, anon):
    """Mirrors filemap_alloc_folio() / vma_alloc_folio() -> folio_alloc() [mm/filemap.c,
    mm/mempolicy.c], then folio_add_lru() [mm/swap.c]: from ``dynamic`` on the descriptor
    first (_folio_desc_alloc() from AE), then the pages on ``cpu``'s pcp (__GFP_COMP); if
    the pages fail the descriptor goes back (kmem_cache_free()); then _folio_lru_prep().
    Returns the head PFN, or -1. One counted folio_alloc operation. Departure: the two
    environments (section comment)."""
    mem, S = HE[E_MEM], HE[E_S]
    dyn = HE[E_SP][SP_DYNAMIC]
    op_begin(S, OP_FOLIO_ALLOC)
    desc = np.uint64(0)
    if dyn:
        desc = _folio_desc_alloc(AE, gfpflags, order)
    pfn = alloc_pages_nb(mem, S, gfpflags | _gfp.__GFP_COMP, order, 0, cpu)
    if pfn < 0:
        if dyn:
            kmem_cache_free_one_nb(AE, desc)
        op_end(S)
        return pfn
    _folio_lru_prep(HE, pfn, order, anon, desc)
    op_end(S)
    return pfn


@njit(cache=True)
def folio_lru_from_pages_nb(HE, AE, gfpflags, pfn, order, anon):
    """Pages [pfn, pfn + 2^order) already allocated as __GFP_COMP (prep_new_page(),
    prep_compound_page() when order > 0) become the folio folio_alloc_lru_nb() would have
    left there: from ``dynamic`` on the descriptor from AE (kmem_cache_alloc(), ``gfpflags``),
    then the memdesc words, the descriptor's fields and folio_add_lru() (_folio_lru_prep()).
    No operation is counted. Returns the folio. Departure: the two environments (section
    comment), and the descriptor after the pages (folio_alloc() takes it first)."""
    desc = np.uint64(0)
    if HE[E_SP][SP_DYNAMIC]:
        desc = _folio_desc_alloc(AE, gfpflags, order)
    return _folio_lru_prep(HE, pfn, order, anon, desc)


@njit(cache=True)
def _folio_desc_free(HE, AE, folio):
    """__folio_put()'s last step from ``dynamic`` on: the descriptor back to AE's cache."""
    if HE[E_SP][SP_DYNAMIC] and not kmem_cache_free_one_nb(AE, folio):
        raise AssertionError("folio_put: descriptor not a slab object")


@njit(cache=True)
def folio_release_desc_nb(HE, AE, pfn):
    """The folio of the page at ``pfn`` (page_folio()) leaves the LRU (__page_cache_release())
    and, from ``dynamic`` on, its descriptor goes back to AE's cache: __folio_put() without
    freeing the pages (the caller frees them). Returns the folio."""
    folio = page_folio(HE, pfn)
    __page_cache_release(HE, folio)
    _folio_desc_free(HE, AE, folio)
    return folio


@njit(cache=True)
def folio_put_last_nb(HE, AE, pfn, order, cpu):
    """Mirrors the last folio_put() -> __folio_put() [mm/swap.c] of the folio at ``pfn`` of
    ``order``: page_folio(), __page_cache_release() (PG_lru cleared), the pages freed on
    ``cpu``'s pcp, then (``dynamic`` on) the descriptor back to AE's cache (no page refers to
    it any more). One counted folio_put operation. Departure: the two environments (section
    comment); the pages are freed before the descriptor as in __folio_put(), both here at
    once."""
    mem, S = HE[E_MEM], HE[E_S]
    op_begin(S, OP_FOLIO_PUT)
    folio = page_folio(HE, pfn)
    __page_cache_release(HE, folio)
    free_pages_nb(mem, S, pfn, order, cpu)
    _folio_desc_free(HE, AE, folio)
    op_end(S)


def folio_alloc_bulk(kernel, gfpflags: int, order: int, n: int, kind: str = "File"):
    """``n`` folio_alloc() calls in one numba loop; uint64 folio addresses (0: failed)."""
    from memdesc.mm.memdesc_alloc import SP_T_ANON, SP_T_FILE

    tcode = int(kernel.slub.sp[SP_T_FILE if kind == "File" else SP_T_ANON])
    out = np.zeros(n, np.uint64)
    i = 0
    while True:
        i, done = folio_alloc_bulk_nb(kernel.E, gfpflags, order, tcode, out, i)
        if done:
            return out
        kernel.grow()


def folio_alloc(kernel, gfpflags: int, order: int, kind: str = "File") -> int:
    """folio_alloc(gfp, order) from Python: the folio's address, or 0."""
    got = folio_alloc_bulk(kernel, gfpflags, order, 1, kind)
    return int(got[0])


def folio_put(kernel, folio: int) -> bool:
    """folio_put(): drop one reference; True if that freed the folio."""
    return bool(folio_put_refs(kernel.E, np.uint64(folio), 1))
