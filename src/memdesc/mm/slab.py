"""struct slab, struct kmem_cache(_node) and the slab model's state rows, with the counted
kernel-memory accessors the SLUB paths use.

Mirrors what mm/slab.h holds for SLUB in Linux 6.18: the struct slab layout (SLAB_*: flags,
slab_cache, slab_list, freelist, counters = inuse:16 | objects:15 | frozen:1, obj_exts; pahole
of 6.18 in fixtures/btf/pahole/slab.txt), struct kmem_cache_node (KCN_*), virt_to_slab()
(page_folio() + folio_slab() at the overlay stages, the memdesc word of type Slab from
``dynamic`` on) and slab_address()/slab_order() (_slab_pfn_order()). The model's own rows:
cache state words (CS_*, uint64 caches[c, :]), geometry and counters (G_*, int64 geo[c, :])
and the return codes of the batch kernels (DONE, NEED_GROW, BAD_FREE).

Invariants: a struct slab is either the head struct page of the slab (overlay stages, page
type PGTY_slab) or a slab object whose SLAB_PFN word holds the slab's first PFN (dynamic
stages, our own encoding [I]: the 8 bytes of __page_type/__page_refcount); every load and
store of emulated kernel memory here is a counted access (memdesc.mm.access).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.mm import gfp as _gfp
from memdesc.mm.free_tracking import nodezone_bits, page_zone_index
from memdesc.mm.kmem import (
    M_TOP,
    M_USED,
    PAGE_OFFSET,
    VMEMMAP_START,
    WORDS_PER_PAGE,
    kread32_a,
    kread_a,
    kwrite32_a,
    kwrite_a,
)
from memdesc.mm.memdesc import MISC_SUBTYPE
from memdesc.mm.memdesc_alloc import (
    E_DATA,
    E_GEO,
    E_KMETA,
    E_MEM,
    E_S,
    E_SLOT,
    E_SP,
    SP_DYNAMIC,
    SP_MEMDESC_OFF,
    SP_PAGE_BYTES,
    SP_T_SLAB,
)
from memdesc.mm.mmzone import NR_ZONES

# ---- the allocator's hot paths: numba over emulated memory ---------------------------------
#
# struct slab, wherever it lives (overlaying the head struct page at v6.18/folio, or a slab
# object from `dynamic` on), has the 6.18 layout [M: fixtures/btf/pahole/slab.txt]. At the
# dynamic stages the 8 bytes of __page_type/__page_refcount (meaningless once the type is in
# the memdesc word) hold the slab's first PFN, which slab_address() needs once struct slab no
# longer overlays the page [I].
SLAB_FLAGS = 0
SLAB_CACHE = 8
SLAB_LIST = 16          # list_head: next @16, prev @24
SLAB_FREELIST = 32
SLAB_COUNTERS = 40      # inuse:16 | objects:15 | frozen:1
SLAB_PAGE_TYPE = 48     # overlay: __page_type (PGTY_slab << 24)
SLAB_PFN = 48           # dynamic: first PFN of the slab [I]
SLAB_OBJ_EXTS = 56
#: struct kmem_cache_node [M: fixtures/btf/pahole/extra.kmem_cache_node.txt].
KCN_NR_PARTIAL = 8
KCN_PARTIAL = 16
KCN_NR_SLABS = 32
KCN_TOTAL_OBJECTS = 40
KCN_BYTES = 72
#: sizeof(struct kmem_cache) for nr_node_ids nodes: offsetof(node) 224 + 8 per node
#: [M: fixtures/btf/pahole/kmem_cache.txt; S: kmem_cache_init()].
KMEM_CACHE_NODE_OFF = 224
#: Where the model keeps its cache-table index inside struct kmem_cache: the cpu_slab word,
#: a per-cpu pointer the model does not need (one modelled CPU) [I].
KMEM_CACHE_INDEX_OFF = 0
#: enum pagetype [M: pahole-enums.txt]: PGTY_slab, PGTY_large_kmalloc.
PGTY_SLAB = 0xF5
PGTY_LARGE_KMALLOC = 0xF8
PAGE_TYPE_NONE = 0xFFFFFFFF

# Cache state words (uint64 caches[c, :]).
CS_CPU_SLAB = 0         # struct slab of the (single modelled) CPU's slab, 0 if none
CS_CACHE = 1            # address of this cache's struct kmem_cache
CS_MIN_PARTIAL = 2
CS_EMPTY_INUSE = 3      # 1 for the self-hosted slab descriptor cache (object 0 = itself)
CS_LIVE = 4             # objects handed out
CS_ALLOCS = 5
CS_FREES = 6
CS_NR_NODES = 7         # kmem_cache_node structs in place (0 during early boot)
CS_NODE = 8             # kmem_cache_node address of node 0, 1, ...
MAX_NODES = 8
CS_WORDS = CS_NODE + MAX_NODES

# Geometry and counters (int64 geo[c, :]).
G_ORDER, G_OBJECTS, G_MIN_ORDER, G_MIN_OBJECTS, G_SIZE, G_OFFSET = range(6)
G_ALLOCFLAGS = 6        # s->allocflags: __GFP_COMP (+ __GFP_RECLAIMABLE, DMA zones)
G_SELF = 7              # self-hosted: the slab's struct slab is its own object 0
G_DESC = 8              # a memdesc descriptor cache (fail_desc applies)
G_PAGES = 9             # pages in slabs now
G_SLABS = 10
G_ALLOC_FAILS = 11
G_TOTAL_OBJS = 12       # objects in all slabs (slabinfo num_objs)
G_WORDS = 16

# Kernel return codes.
DONE = 0
NEED_GROW = 1           # the PageContents store is full: grow it and call again
BAD_FREE = 2            # the object is not from this cache / not a slab object
_GROW = np.uint64(1)    # sentinel "slab address" meaning NEED_GROW
OPS_FAILED = 1          # kmalloc_ops_nb: the slot's kmalloc() failed (no object is at 1)
_OPS_FAILED = np.uint64(OPS_FAILED)
MISC_KMALLOC_LARGE = MISC_SUBTYPE["kmalloc_large"]
_GNOWARN, _GNORETRY, _GNOFAIL = _gfp.__GFP_NOWARN, _gfp.__GFP_NORETRY, _gfp.__GFP_NOFAIL
_GDIRECT_RECLAIM, _GNOMEMALLOC = _gfp.__GFP_DIRECT_RECLAIM, _gfp.__GFP_NOMEMALLOC
_GRECLAIM, _GCOMP = _gfp.__GFP_RECLAIM, _gfp.__GFP_COMP

_INUSE_MASK = np.uint64(0xFFFF)
_FROZEN = np.uint64(1 << 31)
_U64_0 = np.uint64(0)
#: GFP_RECLAIM_MASK | GFP_CONSTRAINT_MASK of new_slab(): what a slab allocation keeps of the
#: caller's gfp [S: mm/internal.h]; the zone/migratetype bits come from s->allocflags.
_SLAB_GFP_KEEP = (_gfp.__GFP_RECLAIM | _gfp.__GFP_HIGH | _gfp.__GFP_IO | _gfp.__GFP_FS
                  | _gfp.__GFP_NOWARN | _gfp.__GFP_RETRY_MAYFAIL | _gfp.__GFP_NOFAIL
                  | _gfp.__GFP_NORETRY | _gfp.__GFP_MEMALLOC | _gfp.__GFP_NOMEMALLOC
                  | _gfp.__GFP_HARDWALL | _gfp.__GFP_THISNODE)


@njit(cache=True)
def _kr(E, addr):
    """A counted load of kernel memory (memdesc.mm.access) that is not a pointer."""
    return kread_a(E[E_S], E[E_MEM], E[E_DATA], E[E_SLOT], addr, False)


@njit(cache=True)
def _krp(E, addr):
    """A counted load of a pointer (freelist, list link, slab->slab_cache, compound_head,
    memdesc word): later accesses near its value depend on it."""
    return kread_a(E[E_S], E[E_MEM], E[E_DATA], E[E_SLOT], addr, True)


@njit(cache=True)
def _kr32(E, addr):
    return kread32_a(E[E_S], E[E_MEM], E[E_DATA], E[E_SLOT], addr)


@njit(cache=True)
def _kw32(E, addr, value):
    kwrite32_a(E[E_S], E[E_MEM], E[E_DATA], E[E_SLOT], addr, value)


@njit(cache=True)
def _kw(E, addr, value):
    kwrite_a(E[E_S], E[E_MEM], E[E_DATA], E[E_SLOT], addr, value)


@njit(cache=True)
def _list_add(E, entry, head, tail):
    """list_add()/list_add_tail() on emulated list_heads."""
    if tail:
        prev = _krp(E, head + np.uint64(8))
        nxt = head
    else:
        prev = head
        nxt = _krp(E, head)
    _kw(E, entry, nxt)
    _kw(E, entry + np.uint64(8), prev)
    _kw(E, prev, entry)
    _kw(E, nxt + np.uint64(8), entry)


@njit(cache=True)
def _list_del(E, entry):
    """list_del(): unlink and poison (LIST_POISON1/2) [S: include/linux/poison.h]."""
    nxt = _krp(E, entry)
    prev = _krp(E, entry + np.uint64(8))
    _kw(E, prev, nxt)
    _kw(E, nxt + np.uint64(8), prev)
    _kw(E, entry, np.uint64(0xDEAD000000000100))
    _kw(E, entry + np.uint64(8), np.uint64(0xDEAD000000000122))


@njit(cache=True)
def _page_addr(E, pfn):
    return np.uint64(VMEMMAP_START) + np.uint64(pfn) * np.uint64(E[E_SP][SP_PAGE_BYTES])


@njit(cache=True)
def virt_to_slab(E, addr):
    """struct slab of the slab holding direct-map address ``addr``, 0 if the page is not a
    slab page. Mirrors virt_to_slab(): page_folio() + folio_slab() through compound_head and
    PageSlab() at the overlay stages; the memdesc word (type Slab) from ``dynamic`` on."""
    sp = E[E_SP]
    pfn = np.int64((addr - np.uint64(PAGE_OFFSET)) >> np.uint64(12))
    if pfn < 0 or pfn >= E[E_SLOT].shape[0]:
        return _U64_0
    page = _page_addr(E, pfn)
    if sp[SP_DYNAMIC]:
        word = _krp(E, page + np.uint64(sp[SP_MEMDESC_OFF]))
        if np.int64(word & np.uint64(15)) != sp[SP_T_SLAB]:
            return _U64_0
        return word & ~np.uint64(15)
    head = _krp(E, page + np.uint64(8))
    if head & np.uint64(1):
        page = head - np.uint64(1)
    pt = _kr32(E, page + np.uint64(SLAB_PAGE_TYPE))
    if (pt >> np.uint32(24)) != np.uint32(PGTY_SLAB):
        return _U64_0
    return page


@njit(cache=True)
def _slab_pfn_order(E, c, slab):
    """(first PFN, order) of a slab: slab_address() and slab_order()."""
    sp = E[E_SP]
    geo = E[E_GEO]
    if sp[SP_DYNAMIC]:
        pfn = np.int64(_kr(E, slab + np.uint64(SLAB_PFN)))
    else:
        pfn = np.int64((slab - np.uint64(VMEMMAP_START)) // np.uint64(sp[SP_PAGE_BYTES]))
    objects = np.int64((_kr(E, slab + np.uint64(SLAB_COUNTERS)) >> np.uint64(16))
                       & np.uint64(0x7FFF))
    order = geo[c, G_ORDER] if objects == geo[c, G_OBJECTS] else geo[c, G_MIN_ORDER]
    return pfn, order


@njit(cache=True)
def _free_slots(E):
    meta = E[E_KMETA]
    return meta[M_TOP] + E[E_DATA].shape[0] // WORDS_PER_PAGE - meta[M_USED]


@njit(cache=True)
def _nodezone_of(E, pfn):
    gz = page_zone_index(E[E_MEM], E[E_S], pfn)
    return nodezone_bits(gz // NR_ZONES, gz % NR_ZONES)
