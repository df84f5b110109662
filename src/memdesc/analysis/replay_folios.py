"""Folios of the policy replay: the trace's page-cache and anonymous allocations (units of
class file/anon, memdesc.analysis.trace_types) become folios, as the kernel's
filemap_alloc_folio()/vma_alloc_folio() -> folio_alloc() and lru_add() make them, and are
released as __folio_put() releases them.

At every stage (mm/ code: memdesc.mm.folio.folio_alloc_lru_nb(), folio_put_last_nb(),
folio_lru_from_pages_nb(), on the two environments; this module makes only the replay's
choices: which units are folios, the class's memdesc type, the arena's size):

* ``folio_alloc``: from ``dynamic`` on the descriptor first (``kmem_cache_alloc()`` from the
  "folio" / "folio_large" descriptor cache, the caller's gfp), then the pages; if the pages
  fail, the descriptor goes back; ``desc | File/Anon`` into
  the memdesc word of every page (alloc_page_desc()) and the descriptor's fields
  (folio._init_desc()). At the overlay stages a __GFP_COMP allocation whose head struct page
  is the folio. Then folio_add_lru(): PG_lru in folio->flags (the head struct page's flags at
  v6.18/folio, the descriptor's memdesc_flags_t after). So the folio counts as movable for
  prep_move_freepages_block() at every stage: PageLRU at the overlay stages, the File/Anon
  memdesc type from ``dynamic`` on (free_tracking.page_is_movable()).
* ``folio_put``: page_folio() of the pfn (the caller's folio), __page_cache_release() (PG_lru
  cleared), the pages freed, then (``dynamic`` on) the descriptor back to its cache.

Departures, stated [I]:

* The descriptors' slab pages come from the stage's **kernel-memory arena**
  (memdesc.analysis.replay_arena.StageArena): a separate emulated kernel
  (memdesc.mm.mm_init.Kernel, same stage) whose slab allocator serves the descriptor caches,
  sized for the trace's peak of live folios. The kernel takes them from the same buddy
  allocator; taking them from the replayed memory would move every later allocation at the
  dynamic stages, and the replay's point is that placement is identical at every stage (the
  bisectable property). The arena's direct-map pages are its own PFNs (low, below 64 MiB):
  the descriptor addresses the access log sees are real slab-object addresses, and the
  arena's own metadata accesses (its struct slab, free lists) are recorded in the replay's
  accounting under the enclosing folio_alloc/folio_put, at the arena's addresses (which
  share the vmemmap/zone-head addresses of the replayed machine's first PFNs).
* The units the start snapshot holds (allocated before the trace) of the folio classes
  (START_FOLIO_CLASSES) become folios before the replay's first operation
  (replay_start_folios(): the state folio_alloc() + folio_add_lru() leaves, not counted as
  operations), so movability and lookups are the same for them as for the trace's folios;
  the trace's free of one is its folio_put() at the folio's own order. Other start units
  stay the snapshot's pages.
* Placement mode runs no kernel allocation (the trace's own PFNs move on the free lists),
  so it makes no folios; nothing it runs reads movability (prep_move_freepages_block()'s
  counts are read by try_to_claim_block() only, which placement never calls).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.analysis.census import CLASS_INDEX
from memdesc.analysis.replay_ops import ST_SNAP
from memdesc.analysis.trace_types import CLASS_NAMES
from memdesc.mm import gfp as _gfp
from memdesc.mm.folio import (
    folio_alloc_lru_nb,
    folio_lru_from_pages_nb,
    folio_put_last_nb,
    folio_release_desc_nb,
)
from memdesc.mm.mmzone import MAX_PAGE_ORDER
from memdesc.stages import DESCRIPTOR_TYPES

CLS_FILE = CLASS_INDEX["file"]
CLS_ANON = CLASS_INDEX["anon"]
#: census classes whose start units are folios: those of the folio descriptor types
#: (memdesc.stages.DESCRIPTOR_TYPES "folio"/"large_folio": file, anon, shmem). KSM and
#: hugetlb units have no emulated descriptor (no ksmd, no hugetlbfs) and zsmalloc pages no
#: census class (kpageflags has no zsmalloc bit): they stay the snapshot's pages.
START_FOLIO_CLASSES: tuple[str, ...] = tuple(dict.fromkeys(
    c for t in DESCRIPTOR_TYPES if t.key in ("folio", "large_folio") for c in t.census_classes))
_START_FOLIO = np.array([c in START_FOLIO_CLASSES for c in CLASS_NAMES], np.bool_)


@njit(cache=True)
def is_folio_class(c):
    """A unit of this class is a folio (page cache or anonymous memory)."""
    return c == CLS_FILE or c == CLS_ANON  # noqa: SIM109 (numba)


@njit(cache=True)
def replay_folio_alloc(HE, AE, gfpflags, order, cpu, cls):
    """The trace's allocation of a file/anon unit: memdesc.mm.folio.folio_alloc_lru_nb()
    (folio_alloc() + folio_add_lru()) with the Anon type for class anon, File otherwise (a
    shmem unit is a File folio). The PFN or -1; one counted folio_alloc operation."""
    return folio_alloc_lru_nb(HE, AE, gfpflags, order, cpu, cls == CLS_ANON)


@njit(cache=True)
def replay_folio_put(HE, AE, pfn, order, cpu):
    """The trace's free of a folio: its last folio_put() (memdesc.mm.folio.folio_put_last_nb()).
    One counted folio_put operation."""
    folio_put_last_nb(HE, AE, pfn, order, cpu)


@njit(cache=True)
def is_start_folio(ucls, uord, p):
    """The unit the start snapshot holds at head ``p`` is a folio: a class of the folio
    descriptor types (START_FOLIO_CLASSES: file, anon, shmem) and an order the buddy
    allocator hands out."""
    c = ucls[p]
    return c >= 0 and _START_FOLIO[c] and 0 <= uord[p] <= MAX_PAGE_ORDER


@njit(cache=True)
def replay_start_folios(HE, AE, unit_pfn, managed, st, ucls, uord):
    """The policy replay's start: every start unit that is_start_folio() (still held:
    ``st == ST_SNAP``, managed memory) becomes the folio a traced folio_alloc() +
    folio_add_lru() of its order would have left at its pfn: _start_state_nb() prepared its
    pages as prep_new_page() does for __GFP_COMP (prep_compound_page() when order > 0); here
    from ``dynamic`` on the descriptor (kmem_cache_alloc() from the arena,
    GFP_HIGHUSER_MOVABLE: the gfp of vma_alloc_folio() and of the default mapping_gfp_mask()),
    ``desc | File/Anon`` in every memdesc word and the descriptor's fields, then PG_lru
    (__folio_set_lru()). No operation is counted (the caller runs this before accounting
    starts). Returns the folios made."""
    n = 0
    for i in range(unit_pfn.shape[0]):
        p = unit_pfn[i]
        if not managed[p] or st[p] != ST_SNAP or not is_start_folio(ucls, uord, p):
            continue
        o = np.int64(uord[p])
        folio_lru_from_pages_nb(HE, AE, _gfp.GFP_HIGHUSER_MOVABLE, p, o, ucls[p] == CLS_ANON)
        n += 1
    return n


@njit(cache=True)
def release_start_folios_in(HE, AE, st, ucls, uord, q, order):
    """A trace free of the start unit at ``q`` whose block [q, q + 2^order) holds start
    folios other than its own head (a snapshot that does not fit the trace; none on the
    fixtures): each leaves the LRU (__page_cache_release()) and, from ``dynamic`` on, its
    descriptor goes back to its cache, as folio_put() would; the trace's free then frees the
    pages. Returns the folios released."""
    n = 0
    for r in range(q + 1, q + (np.int64(1) << order)):
        if st[r] != ST_SNAP or not is_start_folio(ucls, uord, r):
            continue
        folio_release_desc_nb(HE, AE, r)
        n += 1
    return n


# ---- sizing the stage's arena (Python; memdesc.analysis.replay_arena) ---------------------------

def peak_live_folios(ops) -> int:
    """The most file/anon trace allocations alive at once (frees by identity)."""
    from memdesc.analysis.replay_ops import OP_ALLOC, OP_FREE

    cls = np.asarray(ops.cls)
    a = (ops.kind == OP_ALLOC) & np.asarray(ops.applies, bool) & ((cls == CLS_FILE)
                                                                  | (cls == CLS_ANON))
    pair = np.asarray(ops.pair)
    f = (ops.kind == OP_FREE) & (pair >= 0)
    f &= a[np.maximum(pair, 0)]
    return int(np.cumsum(a.astype(np.int64) - f.astype(np.int64)).max(initial=0))


def start_folio_units(units, start) -> int:
    """The start units replay_start_folios() can make folios of (an upper bound: the policy
    start frees some first), for the arena's size."""
    p = np.asarray(start.unit_pfn, np.int64)
    p = p[p < units.pfn_count]
    c = units.ucls[p].astype(np.int64)
    o = units.uord[p]
    ok = (c >= 0) & (o >= 0) & (o <= MAX_PAGE_ORDER)
    return int((_START_FOLIO[np.maximum(c, 0)] & ok & (np.asarray(start.managed)[p] != 0)).sum())
