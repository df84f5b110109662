"""Folios of the policy replay: the trace's page-cache and anonymous allocations (units of
class file/anon, memdesc.analysis.trace_types) become folios, as the kernel's
filemap_alloc_folio()/vma_alloc_folio() -> folio_alloc() and lru_add() make them, and are
released as __folio_put() releases them.

At every stage (mm/ code, memdesc.mm.folio and memdesc.mm.slub):

* ``folio_alloc``: from ``dynamic`` on the descriptor first (``kmem_cache_alloc()`` from the
  "folio" / "folio_large" descriptor cache, the caller's gfp), then the pages; if the pages
  fail, the descriptor goes back (memdesc.mm.folio._folio_alloc()); ``desc | File/Anon`` into
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
* Units the snapshot holds at the start (allocated before the trace) get no folio: they stay
  the snapshot's pages (docs/replay.md "Limits").
* Placement mode runs no kernel allocation (the trace's own PFNs move on the free lists),
  so it makes no folios.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.analysis.census import CLASS_INDEX
from memdesc.mm import gfp as _gfp
from memdesc.mm import page_alloc as pa
from memdesc.mm.access_core import OP_FOLIO_ALLOC, OP_FOLIO_PUT, op_begin, op_end
from memdesc.mm.folio import (
    __page_cache_release,
    _init_desc,
    folio_add_lru,
    page_folio,
)
from memdesc.mm.kmem import VMEMMAP_START
from memdesc.mm.memdesc_alloc import (
    E_MEM,
    E_S,
    E_SP,
    SP_C_FOLIO,
    SP_C_FOLIO_LARGE,
    SP_DYNAMIC,
    SP_PAGE_BYTES,
    SP_T_ANON,
    SP_T_FILE,
)
from memdesc.mm.slab import _GROW
from memdesc.mm.slub import _alloc_obj, kmem_cache_free_one_nb

CLS_FILE = CLASS_INDEX["file"]
CLS_ANON = CLASS_INDEX["anon"]


@njit(cache=True)
def is_folio_class(c):
    """A unit of this class is a folio (page cache or anonymous memory)."""
    return c == CLS_FILE or c == CLS_ANON  # noqa: SIM109 (numba)


@njit(cache=True)
def replay_folio_alloc(HE, AE, gfpflags, order, cpu, cls):
    """folio_alloc() + folio_add_lru() of a file/anon unit (module doc); the PFN or -1.
    ``HE``: the replayed memory with the arena's kernel memory; ``AE``: the arena. One
    counted folio_alloc operation."""
    mem, S, sp = HE[E_MEM], HE[E_S], HE[E_SP]
    dyn = sp[SP_DYNAMIC]
    op_begin(S, OP_FOLIO_ALLOC)
    desc = np.uint64(0)
    if dyn:
        asp = AE[E_SP]
        desc = _alloc_obj(AE, asp[SP_C_FOLIO] if order == 0 else asp[SP_C_FOLIO_LARGE],
                          gfpflags, 0)
        if desc == _GROW:
            raise AssertionError("replay descriptor arena: kernel memory store full")
        if desc == 0:
            raise AssertionError("replay descriptor arena: out of memory")
    q = pa.alloc_pages_nb(mem, S, gfpflags | _gfp.__GFP_COMP, order, 0, cpu)
    if q < 0:
        if dyn:
            kmem_cache_free_one_nb(AE, desc)
        op_end(S)
        return q
    if dyn:
        t = sp[SP_T_FILE] if cls == CLS_FILE else sp[SP_T_ANON]
        pa.set_memdesc_nb(mem, S, q, order, desc | np.uint64(t))
        _init_desc(HE, desc, q, order)
        folio = desc
    else:
        folio = np.uint64(VMEMMAP_START) + np.uint64(q) * np.uint64(sp[SP_PAGE_BYTES])
    folio_add_lru(HE, folio)
    op_end(S)
    return q


@njit(cache=True)
def replay_folio_put(HE, AE, pfn, order, cpu):
    """The last folio_put() of the folio at ``pfn`` (module doc). One counted folio_put."""
    mem, S = HE[E_MEM], HE[E_S]
    op_begin(S, OP_FOLIO_PUT)
    folio = page_folio(HE, pfn)
    __page_cache_release(HE, folio)
    pa.free_pages_nb(mem, S, pfn, order, cpu)
    if HE[E_SP][SP_DYNAMIC] and not kmem_cache_free_one_nb(AE, folio):
        raise AssertionError("replay folio_put: descriptor not a slab object")
    op_end(S)


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
