"""SLUB: slab caches over the emulated page allocator (the hot paths, boot, checks).

The sizing rules (calculate_sizes()/calculate_order() of mm/slub.c) live in
memdesc.mm.slub_sizing and are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from memdesc.mm import gfp as _gfp
from memdesc.mm.access_core import OP_KMEM_ALLOC, OP_KMEM_FREE, op_begin, op_end
from memdesc.mm.fault_inject import FA_DESC, FA_FAILSLAB, should_fail_nb
from memdesc.mm.free_tracking import C_BUDDYMASK, misc_word, nodezone_bits, page_zone_index
from memdesc.mm.kmem import (
    BATCH,
    M_TOP,
    M_USED,
    PAGE_OFFSET,
    START_KERNEL_MAP,
    VMEMMAP_START,
    WORDS_PER_PAGE,
    attach_nb,
    detach_nb,
    kread32_a,
    kread_a,
    kwrite32_a,
    kwrite_a,
)
from memdesc.mm.memdesc import MISC_ORDER_SHIFT, MISC_SUBTYPE, MISC_SUBTYPE_SHIFT
from memdesc.mm.memdesc_alloc import (
    E_CACHES,
    E_DATA,
    E_FA,
    E_FSTACK,
    E_GEO,
    E_KMETA,
    E_MEM,
    E_REC,
    E_S,
    E_SLOT,
    E_SP,
    E_STATS,
    SP_C_BASE,
    SP_C_MAX,
    SP_DEBUG,
    SP_DYNAMIC,
    SP_MEMDESC_OFF,
    SP_ORDER_OFF,
    SP_PAGE_BYTES,
    SP_PFN_OFF,
    SP_SLABDESC,
    SP_T_ANON,
    SP_T_FILE,
    SP_T_MISC,
    SP_T_MOVABLE,
    SP_T_NETPOOL,
    SP_T_PGTABLE,
    SP_T_SLAB,
    SP_TYPE_CACHES,
    ST_DESC_FAIL_UNWIND,
    ST_IN_FREE,
    alloc_page_desc_nb,
    alloc_pages_e,
    borrow,
    free_pages_e,
)
from memdesc.mm.mm_types import PG_head
from memdesc.mm.mmzone import NR_ZONES
from memdesc.mm.page_alloc import VMBug, set_memdesc_nb
from memdesc.mm.slab_common import (
    KMALLOC_INFO_SIZES,
    KMALLOC_MAX_CACHE_SIZE,
    KMALLOC_SHIFT_HIGH,
    KMALLOC_SIZE_INDEX,
    kmalloc_cache_name,
)
from memdesc.mm.slub_sizing import (  # noqa: F401  (re-exported: the allocator's API)
    MAX_OBJS_PER_PAGE,
    MAX_PAGE_ORDER,
    MAX_PARTIAL,
    MIN_PARTIAL,
    OO_MASK,
    OO_SHIFT,
    PAGE_ALLOC_COSTLY_ORDER,
    SLAB_ACCOUNT,
    SLAB_CACHE_DMA,
    SLAB_CACHE_DMA32,
    SLAB_HWCACHE_ALIGN,
    SLAB_KMALLOC,
    SLAB_NO_MERGE,
    SLAB_PANIC,
    SLAB_RECLAIM_ACCOUNT,
    SLAB_TYPESAFE_BY_RCU,
    SLUB_MAX_ORDER,
    CacheGeometry,
    calc_slab_order,
    calculate_order,
    calculate_sizes,
    default_min_objects,
    min_partial_for,
    oo_make,
    oo_objects,
    oo_order,
    order_objects,
)
from memdesc.stages import PAGE_SIZE, type_code

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


@njit(cache=True)
def _setup_slab(E, c, pfn, order, objects, slab, first):
    """allocate_slab() after the pages: struct slab fields, the free pointer chain (objects
    before ``first`` already taken), frozen as the new cpu slab. Mirrors allocate_slab() and
    alloc_slab_page() (__folio_set_slab() at the overlay stages)."""
    sp = E[E_SP]
    geo = E[E_GEO]
    attach_nb(E[E_SLOT], E[E_DATA], E[E_FSTACK], E[E_KMETA], pfn, np.int64(1) << order)
    if sp[SP_DYNAMIC]:
        _kw(E, slab + np.uint64(SLAB_FLAGS), _nodezone_of(E, pfn))
        _kw(E, slab + np.uint64(SLAB_PFN), np.uint64(pfn))
        _kw(E, slab + np.uint64(SLAB_OBJ_EXTS), _U64_0)
    else:
        _kw32(E, slab + np.uint64(SLAB_PAGE_TYPE),
                 np.uint32(PGTY_SLAB << 24))
    _kw(E, slab + np.uint64(SLAB_CACHE), E[E_CACHES][c, CS_CACHE])
    base = np.uint64(PAGE_OFFSET) + (np.uint64(pfn) << np.uint64(12))
    size = np.uint64(geo[c, G_SIZE])
    off = np.uint64(geo[c, G_OFFSET])
    head = _U64_0
    for k in range(objects - 1, first - 1, -1):
        obj = base + np.uint64(k) * size
        _kw(E, obj + off, head)
        head = obj
    _kw(E, slab + np.uint64(SLAB_FREELIST), head)
    _kw(E, slab + np.uint64(SLAB_COUNTERS),
        np.uint64(first) | (np.uint64(objects) << np.uint64(16)) | _FROZEN)
    geo[c, G_PAGES] += np.int64(1) << order
    geo[c, G_SLABS] += 1
    geo[c, G_TOTAL_OBJS] += objects


@njit(cache=True)
def _take_obj(E, c):
    """An object from the cpu slab or, refilling it, from a node partial list (get_partial(),
    local node first); 0 if there is none. Mirrors slab_alloc_node()'s fast path and
    ___slab_alloc() up to new_slab(); the per-CPU freelist and cpu-partial lists are folded into
    the slab's own freelist (one modelled CPU)."""
    caches = E[E_CACHES]
    geo = E[E_GEO]
    off = np.uint64(geo[c, G_OFFSET])
    while True:
        slab = caches[c, CS_CPU_SLAB]
        if slab != 0:
            obj = _krp(E, slab + np.uint64(SLAB_FREELIST))
            if obj != 0:
                _kw(E, slab + np.uint64(SLAB_FREELIST), _krp(E, obj + off))
                cnt = _kr(E, slab + np.uint64(SLAB_COUNTERS))
                _kw(E, slab + np.uint64(SLAB_COUNTERS), cnt + np.uint64(1))
                caches[c, CS_LIVE] += np.uint64(1)
                caches[c, CS_ALLOCS] += np.uint64(1)
                return obj
            # deactivate_slab(): an exhausted cpu slab is full and joins no list
            cnt = _kr(E, slab + np.uint64(SLAB_COUNTERS))
            _kw(E, slab + np.uint64(SLAB_COUNTERS), cnt & ~_FROZEN)
            caches[c, CS_CPU_SLAB] = 0
        got = _U64_0
        for k in range(np.int64(caches[c, CS_NR_NODES])):
            node = caches[c, CS_NODE + k]
            nr = _kr(E, node + np.uint64(KCN_NR_PARTIAL))
            if nr > 0:
                entry = _krp(E, node + np.uint64(KCN_PARTIAL))
                _list_del(E, entry)
                _kw(E, node + np.uint64(KCN_NR_PARTIAL), nr - np.uint64(1))
                got = entry - np.uint64(SLAB_LIST)
                break
        if got == 0:
            return _U64_0
        cnt = _kr(E, got + np.uint64(SLAB_COUNTERS))
        _kw(E, got + np.uint64(SLAB_COUNTERS), cnt | _FROZEN)
        caches[c, CS_CPU_SLAB] = got


@njit(cache=True)
def _slab_gfps(E, c, gfpflags):
    """(first try, fallback) gfp of allocate_slab(): the preferred order may not reclaim and
    must not warn; the minimum order is tried with the caller's flags."""
    flags = (gfpflags & _SLAB_GFP_KEEP) | E[E_GEO][c, G_ALLOCFLAGS]
    first = (flags | _GNOWARN | _GNORETRY) & ~_GNOFAIL
    if (first & _GDIRECT_RECLAIM) and E[E_GEO][c, G_ORDER] > E[E_GEO][c, G_MIN_ORDER]:
        first = (first | _GNOMEMALLOC) & ~_GRECLAIM
    return first, flags


@njit(cache=True)
def _new_slab_self(E, c, gfpflags, nid):
    """new_slab() of the self-hosted slab descriptor cache: pages only; object 0 of the new
    slab is its own struct slab (so no descriptor is needed to describe descriptors)."""
    geo = E[E_GEO]
    sp = E[E_SP]
    if _free_slots(E) < (np.int64(1) << geo[c, G_ORDER]):
        return _GROW
    first_gfp, flags = _slab_gfps(E, c, gfpflags)
    order, objects = geo[c, G_ORDER], geo[c, G_OBJECTS]
    pfn = alloc_pages_e(E, first_gfp, order, nid)
    if pfn < 0 and order > geo[c, G_MIN_ORDER]:
        order, objects = geo[c, G_MIN_ORDER], geo[c, G_MIN_OBJECTS]
        pfn = alloc_pages_e(E, flags, order, nid)
    if pfn < 0:
        geo[c, G_ALLOC_FAILS] += 1
        return _U64_0
    slab = np.uint64(PAGE_OFFSET) + (np.uint64(pfn) << np.uint64(12))
    set_memdesc_nb(E[E_MEM], E[E_S], pfn, order,
                   slab | np.uint64(sp[SP_T_SLAB]))
    _setup_slab(E, c, pfn, order, objects, slab, 1)
    return slab


@njit(cache=True)
def _alloc_obj_self(E, c, gfpflags, nid):
    """slab_alloc() for the self-hosted descriptor cache (never recurses)."""
    obj = _take_obj(E, c)
    if obj != 0:
        return obj
    slab = _new_slab_self(E, c, gfpflags, nid)
    if slab <= _GROW:
        return slab
    E[E_CACHES][c, CS_CPU_SLAB] = slab
    return _take_obj(E, c)


@njit(cache=True)
def _new_slab(E, c, gfpflags, nid):
    """new_slab() -> allocate_slab(): the preferred order with __GFP_NORETRY (no reclaim when
    a smaller order would do), then s->min; at the dynamic stages descriptor first (a struct
    slab from the slab descriptor cache), memory second (alloc_page_desc), descriptor freed
    if the memory cannot be had. Returns the struct slab address, 0 on failure, or _GROW."""
    geo = E[E_GEO]
    sp = E[E_SP]
    order, objects = geo[c, G_ORDER], geo[c, G_OBJECTS]
    if _free_slots(E) < (np.int64(1) << order) + 1:
        return _GROW
    first_gfp, flags = _slab_gfps(E, c, gfpflags)
    desc = _U64_0
    if sp[SP_DYNAMIC]:
        d = sp[SP_SLABDESC]
        if should_fail_nb(E[E_FA], FA_FAILSLAB, flags, 0) or should_fail_nb(
                E[E_FA], FA_DESC, flags, 0):
            geo[d, G_ALLOC_FAILS] += 1
            return _U64_0
        desc = _alloc_obj_self(E, d, flags, nid)
        if desc <= _GROW:
            return desc
    tcode = sp[SP_T_SLAB]
    pfn = alloc_page_desc_nb(E, first_gfp, order, desc, tcode, nid)
    if pfn < 0 and order > geo[c, G_MIN_ORDER]:
        order, objects = geo[c, G_MIN_ORDER], geo[c, G_MIN_OBJECTS]
        pfn = alloc_page_desc_nb(E, flags, order, desc, tcode, nid)
    if pfn < 0:
        geo[c, G_ALLOC_FAILS] += 1
        if desc != 0:
            E[E_STATS][ST_DESC_FAIL_UNWIND] += 1
            _free_obj_self(E, sp[SP_SLABDESC], desc)
        return _U64_0
    slab = desc if sp[SP_DYNAMIC] else _page_addr(E, pfn)
    _setup_slab(E, c, pfn, order, objects, slab, 0)
    return slab


@njit(cache=True)
def _alloc_obj(E, c, gfpflags, nid):
    """slab_alloc_node(): 0 when the allocation fails, _GROW when the content store is full.
    One counted kmem_cache_alloc operation (part of an enclosing folio_alloc())."""
    S = E[E_S]
    op_begin(S, OP_KMEM_ALLOC)
    obj = _slab_alloc_node(E, c, gfpflags, nid)
    op_end(S)
    return obj


@njit(cache=True)
def _slab_alloc_node(E, c, gfpflags, nid):
    fa = E[E_FA]
    if should_fail_nb(fa, FA_FAILSLAB, gfpflags, 0) or (
            E[E_GEO][c, G_DESC] and should_fail_nb(fa, FA_DESC, gfpflags, 0)):
        E[E_GEO][c, G_ALLOC_FAILS] += 1
        return _U64_0
    obj = _take_obj(E, c)
    if obj != 0:
        return obj
    if E[E_GEO][c, G_SELF]:
        slab = _new_slab_self(E, c, gfpflags, nid)
    else:
        slab = _new_slab(E, c, gfpflags, nid)
    if slab <= _GROW:
        return slab
    E[E_CACHES][c, CS_CPU_SLAB] = slab
    return _take_obj(E, c)


@njit(cache=True)
def _put_obj(E, c, slab, obj):
    """__slab_free() of one object whose slab is known. Returns the slab if it must be
    discarded (empty while the node keeps min_partial slabs), else 0."""
    caches = E[E_CACHES]
    off = np.uint64(E[E_GEO][c, G_OFFSET])
    prior = _kr(E, slab + np.uint64(SLAB_FREELIST))
    _kw(E, obj + off, prior)
    _kw(E, slab + np.uint64(SLAB_FREELIST), obj)
    cnt = _kr(E, slab + np.uint64(SLAB_COUNTERS)) - np.uint64(1)
    _kw(E, slab + np.uint64(SLAB_COUNTERS), cnt)
    caches[c, CS_LIVE] -= np.uint64(1)
    caches[c, CS_FREES] += np.uint64(1)
    if cnt & _FROZEN:
        return _U64_0
    pfn = np.int64((obj - np.uint64(PAGE_OFFSET)) >> np.uint64(12))
    nid = page_zone_index(E[E_MEM], E[E_S], pfn) // NR_ZONES
    node = caches[c, CS_NODE + nid]
    nr = _kr(E, node + np.uint64(KCN_NR_PARTIAL))
    if (cnt & _INUSE_MASK) == caches[c, CS_EMPTY_INUSE] and nr >= caches[c, CS_MIN_PARTIAL]:
        if prior != 0:                       # it was on the partial list: remove_partial()
            _list_del(E, slab + np.uint64(SLAB_LIST))
            _kw(E, node + np.uint64(KCN_NR_PARTIAL), nr - np.uint64(1))
        return slab
    if prior == 0:                           # was full: add_partial(n, slab, DEACTIVATE_TO_TAIL)
        _list_add(E, slab + np.uint64(SLAB_LIST), node + np.uint64(KCN_PARTIAL), True)
        _kw(E, node + np.uint64(KCN_NR_PARTIAL), nr + np.uint64(1))
    return _U64_0


@njit(cache=True)
def _release_slab_pages(E, c, slab):
    """free_slab() -> __free_slab(): clear PageSlab at the overlay stages, drop the backing,
    give the pages back. Returns nothing allocated (freeing never allocates)."""
    sp = E[E_SP]
    pfn, order = _slab_pfn_order(E, c, slab)
    objects = np.int64((_kr(E, slab + np.uint64(SLAB_COUNTERS)) >> np.uint64(16))
                       & np.uint64(0x7FFF))
    if not sp[SP_DYNAMIC]:
        _kw32(E, slab + np.uint64(SLAB_PAGE_TYPE),
                 np.uint32(PAGE_TYPE_NONE))
    detach_nb(E[E_SLOT], E[E_DATA], E[E_FSTACK], E[E_KMETA], pfn, np.int64(1) << order)
    free_pages_e(E, pfn, order)
    geo = E[E_GEO]
    geo[c, G_PAGES] -= np.int64(1) << order
    geo[c, G_SLABS] -= 1
    geo[c, G_TOTAL_OBJS] -= objects


@njit(cache=True)
def _free_obj_self(E, c, obj):
    """kmem_cache_free() into the self-hosted descriptor cache; an emptied slab goes back
    to the page allocator with its own descriptor inside it."""
    slab = virt_to_slab(E, obj)
    dead = _put_obj(E, c, slab, obj)
    if dead != 0:
        _release_slab_pages(E, c, dead)


@njit(cache=True)
def _discard_slab(E, c, slab):
    """discard_slab(): the pages first (their memdesc words revert to Buddy), then the struct
    slab descriptor back to its cache (dynamic stages). SLAB_TYPESAFE_BY_RCU caches would
    wait a grace period here; the emulator has no concurrent readers, so it is immediate."""
    sp = E[E_SP]
    _release_slab_pages(E, c, slab)
    if sp[SP_DYNAMIC] and E[E_GEO][c, G_SELF] == 0:
        _free_obj_self(E, sp[SP_SLABDESC], slab)


@njit(cache=True)
def _cache_of_slab(E, slab):
    """Cache index of a slab: slab->slab_cache, then the index the model keeps in struct
    kmem_cache (or a search for boot caches still at their static address)."""
    kc = _krp(E, slab + np.uint64(SLAB_CACHE))
    caches = E[E_CACHES]
    if kc < np.uint64(START_KERNEL_MAP):
        c = np.int64(_kr(E, kc + np.uint64(KMEM_CACHE_INDEX_OFF)))
        if 0 <= c < caches.shape[0] and caches[c, CS_CACHE] == kc:
            return c
    for c in range(caches.shape[0]):
        if caches[c, CS_CACHE] == kc:
            return c
    return -1


@njit(cache=True)
def kmem_cache_free_one_nb(E, obj):
    """kmem_cache_free(virt_to_cache(obj), obj) for a free path that already holds
    ST_IN_FREE; False if ``obj`` is not a slab object. One counted kmem_cache_free operation
    (part of an enclosing folio_put())."""
    S = E[E_S]
    op_begin(S, OP_KMEM_FREE)
    ok = _kmem_cache_free_one(E, obj)
    op_end(S)
    return ok


@njit(cache=True)
def _slab_free(E, cc, slab, obj):
    """Mirrors slab_free() -> __slab_free(): ``obj`` back to its slab of cache ``cc``; a slab
    left empty goes back to the page allocator (discard_slab(); a self-hosted descriptor
    cache's slab releases its own pages)."""
    dead = _put_obj(E, cc, slab, obj)
    if dead != 0:
        if E[E_GEO][cc, G_SELF]:
            _release_slab_pages(E, cc, dead)
        else:
            _discard_slab(E, cc, dead)
    return True


@njit(cache=True)
def _kmem_cache_free_one(E, obj):
    slab = virt_to_slab(E, obj)
    if slab == 0:
        return False
    cc = _cache_of_slab(E, slab)
    if cc < 0:
        return False
    return _slab_free(E, cc, slab, obj)


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


@njit(cache=True)
def kmem_cache_alloc_nb(E, c, gfpflags, nid, out, start):
    """kmem_cache_alloc() for out[start:] (0 where an allocation failed; the next call is
    independent, as separate kernel calls are). Returns (next index, DONE | NEED_GROW)."""
    E = borrow(E)
    n = out.shape[0]
    for i in range(start, n):
        obj = _alloc_obj(E, c, gfpflags, nid)
        if obj == _GROW:
            return i, NEED_GROW
        out[i] = obj
    return n, DONE


@njit(cache=True)
def kmem_cache_free_nb(E, c, objs, start):
    """kmem_cache_free() (``c`` >= 0) or kfree() (``c`` = -1: the cache is found from the
    object; kmalloc_large pages go back to the page allocator) for objs[start:]; 0 entries
    are skipped (kfree(NULL)). Returns (index, DONE | BAD_FREE)."""
    E = borrow(E)
    n = objs.shape[0]
    S = E[E_S]
    E[E_STATS][ST_IN_FREE] += 1
    for i in range(start, n):
        obj = objs[i]
        if obj == 0:
            continue
        op_begin(S, OP_KMEM_FREE)
        ok = _kfree_one(E, c, obj)
        op_end(S)
        if not ok:
            E[E_STATS][ST_IN_FREE] -= 1
            return i, BAD_FREE
    E[E_STATS][ST_IN_FREE] -= 1
    return n, DONE


@njit(cache=True)
def _kfree_one(E, c, obj):
    """kmem_cache_free(c, obj) (``c`` >= 0) or kfree(obj) of one object; False on a bad
    free."""
    slab = virt_to_slab(E, obj)
    if slab == 0:
        return c < 0 and _free_large_kmalloc(E, obj)
    cc = _cache_of_slab(E, slab)
    if cc < 0 or (c >= 0 and cc != c):
        return False
    return _slab_free(E, cc, slab, obj)


# ---- kmalloc --------------------------------------------------------------------------------

@njit(cache=True)
def _kmalloc_index_nb(size, size_index):
    if size <= 192:
        return np.int64(size_index[(size - 1) // 8])
    b = 0
    x = size - 1
    while x:
        x >>= 1
        b += 1
    return b


@njit(cache=True)
def _large_kmalloc_order(E, pfn):
    """Order of a kmalloc_large allocation at ``pfn``, -1 if it is not one: PGTY_large_kmalloc
    + folio order at the overlay stages, the Misc subtype kmalloc_large word from dynamic on."""
    sp = E[E_SP]
    page = _page_addr(E, pfn)
    if sp[SP_DYNAMIC]:
        w = _krp(E, page + np.uint64(sp[SP_MEMDESC_OFF]))
        if np.int64(w & np.uint64(15)) != sp[SP_T_MISC]:
            return -1
        if np.int64((w >> np.uint64(MISC_SUBTYPE_SHIFT)) & np.uint64(0x7F)) != MISC_KMALLOC_LARGE:
            return -1
        return np.int64((w >> np.uint64(MISC_ORDER_SHIFT)) & np.uint64(0x3F))
    if _krp(E, page + np.uint64(8)) & np.uint64(1):       # a tail page: not the object start
        return -1
    pt = _kr32(E, page + np.uint64(48))
    if (pt >> np.uint32(24)) != np.uint32(PGTY_LARGE_KMALLOC):
        return -1
    if _kr(E, page) & np.uint64(1 << PG_head):
        return np.int64(_kr(E, page + np.uint64(64)) & np.uint64(0xFF))
    return 0


@njit(cache=True)
def _free_large_kmalloc(E, obj):
    """free_large_kmalloc(): True if ``obj`` was a kmalloc_large allocation (now freed)."""
    if obj & np.uint64(0xFFF):
        return False
    pfn = np.int64((obj - np.uint64(PAGE_OFFSET)) >> np.uint64(12))
    order = _large_kmalloc_order(E, pfn)
    if order < 0:
        return False
    if not E[E_SP][SP_DYNAMIC]:
        _kw32(E, _page_addr(E, pfn) + np.uint64(48),
                 np.uint32(PAGE_TYPE_NONE))
    free_pages_e(E, pfn, order)
    return True


@njit(cache=True)
def kmalloc_nb(E, kmc, size_index, sizes, gfpflags, nid, out, start):
    """kmalloc() for each size in sizes[start:] into out[] (0 on failure). Sizes up to
    KMALLOC_MAX_CACHE_SIZE go to kmalloc-<n> (``kmc`` maps kmalloc index -> cache);
    larger ones to the page allocator as kmalloc_large: PGTY_large_kmalloc at the overlay
    stages, a Misc kmalloc_large memdesc from dynamic on. Returns (index, status)."""
    E = borrow(E)
    sp = E[E_SP]
    n = sizes.shape[0]
    for i in range(start, n):
        size = sizes[i]
        if size > KMALLOC_MAX_CACHE_SIZE:
            order = 0
            while (np.int64(PAGE_SIZE) << order) < size:
                order += 1
            pfn = alloc_pages_e(E, gfpflags | _GCOMP, order, nid)
            if pfn < 0:
                out[i] = 0
                continue
            if sp[SP_DYNAMIC]:
                gz = page_zone_index(E[E_MEM], E[E_S], pfn)
                set_memdesc_nb(E[E_MEM], E[E_S], pfn, order,
                               misc_word(E[E_S], MISC_KMALLOC_LARGE, order, gz))
            else:
                _kw32(E, _page_addr(E, pfn) + np.uint64(48),
                         np.uint32(PGTY_LARGE_KMALLOC << 24))
            out[i] = np.uint64(PAGE_OFFSET) + (np.uint64(pfn) << np.uint64(12))
            continue
        c = kmc[_kmalloc_index_nb(size, size_index)]
        obj = _alloc_obj(E, c, gfpflags, nid)
        if obj == _GROW:
            return i, NEED_GROW
        out[i] = obj
    return n, DONE


@njit(cache=True)
def kmalloc_ops_nb(E, kmc, size_index, kinds, sizes, slots, slot_addr, gfpflags, nid, start):
    """A kmalloc()/kfree() sequence in one call: op i with kinds[i] == 0 is
    kmalloc(sizes[i]) into slot_addr[slots[i]], kinds[i] == 1 kfree()s that slot (kfree(NULL)
    if its allocation failed). A failed kmalloc() leaves OPS_FAILED in its slot, so the caller
    can count failures. Returns (index, DONE | NEED_GROW | BAD_FREE)."""
    E = borrow(E)
    one_size = np.zeros(1, np.int64)
    one = np.zeros(1, np.uint64)
    n = kinds.shape[0]
    for i in range(start, n):
        if kinds[i] == 0:
            one_size[0] = sizes[i]
            _, st = kmalloc_nb(E, kmc, size_index, one_size, gfpflags, nid, one, 0)
            if st != DONE:
                return i, st
            slot_addr[slots[i]] = one[0] if one[0] != 0 else _OPS_FAILED
        else:
            a = slot_addr[slots[i]]
            if a != 0 and a != _OPS_FAILED:
                one[0] = a
                _, st = kmem_cache_free_nb(E, -1, one, 0)
                if st != DONE:
                    return i, st
                slot_addr[slots[i]] = 0
    return n, DONE


@njit(cache=True)
def flush_cpu_slab_nb(E, c):
    """__flush_cpu_slab() -> deactivate_slab(): the cpu slab goes to the head of its node's
    partial list if it has free objects (a full one joins no list)."""
    E = borrow(E)
    caches = E[E_CACHES]
    slab = caches[c, CS_CPU_SLAB]
    if slab == 0:
        return
    caches[c, CS_CPU_SLAB] = 0
    cnt = _kr(E, slab + np.uint64(SLAB_COUNTERS)) & ~_FROZEN
    _kw(E, slab + np.uint64(SLAB_COUNTERS), cnt)
    if _kr(E, slab + np.uint64(SLAB_FREELIST)) == 0 or caches[c, CS_NR_NODES] == 0:
        return
    pfn, _ = _slab_pfn_order(E, c, slab)
    nid = page_zone_index(E[E_MEM], E[E_S], pfn) // NR_ZONES
    node = caches[c, CS_NODE + nid]
    _list_add(E, slab + np.uint64(SLAB_LIST), node + np.uint64(KCN_PARTIAL), False)
    _kw(E, node + np.uint64(KCN_NR_PARTIAL), _kr(E, node + np.uint64(KCN_NR_PARTIAL))
        + np.uint64(1))


@njit(cache=True)
def set_slab_cache_nb(E, c, addr):
    """bootstrap()'s fix-up: every slab of cache ``c`` (the cpu slab and the partial lists)
    now points at the cache's new struct kmem_cache."""
    E = borrow(E)
    caches = E[E_CACHES]
    caches[c, CS_CACHE] = addr
    slab = caches[c, CS_CPU_SLAB]
    if slab != 0:
        _kw(E, slab + np.uint64(SLAB_CACHE), addr)
    for k in range(np.int64(caches[c, CS_NR_NODES])):
        head = caches[c, CS_NODE + k] + np.uint64(KCN_PARTIAL)
        entry = _krp(E, head)
        while entry != head:
            _kw(E, entry - np.uint64(SLAB_LIST) + np.uint64(SLAB_CACHE), addr)
            entry = _krp(E, entry)


# ---- the allocator object -------------------------------------------------------------------

@dataclass
class KmemCache:
    """A cache as the rest of the emulator sees it (its state lives in Slub's arrays)."""

    name: str
    index: int
    geometry: CacheGeometry
    flags: int
    descriptor: str | None = None      # memdesc descriptor key (data/descriptors.toml)


#: Static kernel addresses of the boot caches' struct kmem_cache (__initdata in mm/slub.c,
#: somewhere in the kernel image) before bootstrap() moves them into slab objects [I].
_BOOT_STATIC = START_KERNEL_MAP + 0x3000000


class Slub:
    """SLUB over an emulated MemMap: caches, kmalloc, and (from ``dynamic`` on) the struct
    slab descriptor cache.

    Boot mirrors kmem_cache_init() in mm/slub.c: the kmem_cache_node and kmem_cache caches
    start from static (__initdata) structures, the first kmem_cache_node object comes out of
    that cache's own first slab (early_kmem_cache_node_alloc()), and bootstrap() then moves
    both into objects of the kmem_cache cache and repoints their slabs.

    How the descriptor recursion is broken (dynamic stages and later): every slab needs a
    struct slab descriptor, and descriptors are slab objects. The descriptor cache for struct
    slab ("memdesc_slab") is *self-hosted*: object 0 of each of its slabs is that slab's own
    struct slab, and the memdesc word of its pages points there. Allocating a slab for it
    therefore needs pages only (the buddy allocator keeps its own state in struct page, never
    in a descriptor), so the chain ends after one step: a folio descriptor may need a new
    folio-cache slab, whose struct slab may need a new memdesc_slab slab, which needs only
    pages. memdesc_slab is created first, with a static struct kmem_cache and no node lists
    until the kmem_cache_node cache exists (its first slabs are taken as cpu slabs, which need
    no list). Freeing runs the chain backwards and never allocates: an emptied slab returns
    its pages, then its descriptor to memdesc_slab, which may return a self-hosted slab's
    pages - and stops there.
    """

    def __init__(self, mm, contents, fault, tags: np.ndarray, stats: np.ndarray):
        from memdesc.mm.free_tracking import memdesc_slot
        from memdesc.mm.memdesc_alloc import SP_CPU, SP_NR_NODES, SP_WORDS, desc_pfn_order

        self.mm, self.contents, self.fault = mm, contents, fault
        self.stage = mm.stage
        if self.stage.descriptor_policy not in ("overlay", "dynamic"):
            from memdesc.errors import InputError

            raise InputError(f"stage {self.stage.id}: the emulator does not model a partial "
                             "separation of descriptors yet (the survey does); emulated "
                             "stages: v6.18, folio, dynamic and later")
        self.nr_nodes = mm.machine.nr_nodes
        if self.nr_nodes > MAX_NODES:
            raise ValueError(f"the slab model keeps at most {MAX_NODES} nodes")
        self.nr_cpus = mm.machine.nr_cpus
        sp = np.zeros(SP_WORDS, np.int64)
        sp[SP_DYNAMIC] = int(self.stage.dynamic)
        sp[SP_PAGE_BYTES] = self.stage.struct_page_bytes
        slot = int(memdesc_slot(mm.S))
        sp[SP_MEMDESC_OFF] = max(slot, 0) * 8
        for idx, name in ((SP_T_SLAB, "Slab"), (SP_T_FILE, "File"), (SP_T_ANON, "Anon"),
                          (SP_T_PGTABLE, "PageTable"), (SP_T_NETPOOL, "NetPool"),
                          (SP_T_MOVABLE, "Movable"), (SP_T_MISC, "Misc")):
            sp[idx] = type_code(self.stage, name)
        sp[SP_PFN_OFF:SP_PFN_OFF + 16] = -1
        sp[SP_ORDER_OFF:SP_ORDER_OFF + 16] = -1
        for name, (pfn_off, order_off) in desc_pfn_order().items():
            if name in self.stage.types.values():
                t = type_code(self.stage, name)
                sp[SP_PFN_OFF + t], sp[SP_ORDER_OFF + t] = pfn_off, order_off
        sp[SP_DEBUG] = int(mm._order is not None)
        sp[SP_SLABDESC] = -1
        sp[SP_NR_NODES] = self.nr_nodes
        sp[SP_CPU] = 0
        self.sp = sp
        self.tags, self.stats = tags, stats
        self.caches = np.zeros((16, CS_WORDS), np.uint64)
        self.geo = np.zeros((16, G_WORDS), np.int64)
        self.cache_list: list[KmemCache] = []
        self.by_name: dict[str, KmemCache] = {}
        self._rebuild()
        self.kmalloc_caches = np.full(KMALLOC_SHIFT_HIGH + 1, -1, np.int64)
        self._size_index = np.array(KMALLOC_SIZE_INDEX, np.int64)
        self.boot()

    # ---- plumbing ------------------------------------------------------------------------
    def _rebuild(self) -> None:
        from memdesc.mm.memdesc_alloc import new_env

        self.E = new_env(self.mm, self.contents, self.sp, self.caches, self.geo,
                         self.fault.state, self.tags, self.stats)

    def _grow(self) -> None:
        self.contents.grow()
        self._rebuild()

    def _run(self, fn, *args):
        """Call a batch kernel ``fn(E, *args, start)`` until done, growing the store."""
        start = 0
        while True:
            i, status = fn(self.E, *args, start)
            if status == DONE:
                return
            if status == NEED_GROW:
                self._grow()
                start = i
                continue
            raise VMBug(f"kmem_cache_free: object at index {i} is not an object of the cache "
                        f"(stage {self.stage.id})")

    # ---- caches --------------------------------------------------------------------------
    def _new_cache(self, name: str, object_size: int, flags: int, align_req: int,
                   freeptr_offset: int | None, *, self_hosted: bool = False,
                   descriptor: str | None = None, has_ctor: bool = False) -> KmemCache:
        geo = calculate_sizes(object_size, flags, align_req, freeptr_offset=freeptr_offset,
                              has_ctor=has_ctor, nr_cpus=self.nr_cpus)
        c = len(self.cache_list)
        if c == self.caches.shape[0]:
            self.caches = np.concatenate([self.caches, np.zeros_like(self.caches)])
            self.geo = np.concatenate([self.geo, np.zeros_like(self.geo)])
            self._rebuild()
        g = self.geo[c]
        g[G_ORDER], g[G_OBJECTS] = geo.order, geo.objects
        g[G_MIN_ORDER], g[G_MIN_OBJECTS] = oo_order(geo.min), oo_objects(geo.min)
        g[G_SIZE], g[G_OFFSET] = geo.size, geo.offset
        allocflags = _GCOMP
        if flags & SLAB_RECLAIM_ACCOUNT:
            allocflags |= _gfp.GFP.RECLAIMABLE
        if flags & SLAB_CACHE_DMA:
            allocflags |= _gfp.GFP.DMA
        if flags & SLAB_CACHE_DMA32:
            allocflags |= _gfp.GFP.DMA32
        g[G_ALLOCFLAGS] = allocflags
        g[G_SELF] = int(self_hosted)
        g[G_DESC] = int(descriptor is not None)
        cs = self.caches[c]
        cs[CS_MIN_PARTIAL] = geo.min_partial
        cs[CS_EMPTY_INUSE] = 1 if self_hosted else 0
        cs[CS_CACHE] = _BOOT_STATIC + 0x4000 * c
        kc = KmemCache(name, c, geo, flags, descriptor)
        self.cache_list.append(kc)
        self.by_name[name] = kc
        return kc

    def _node_struct(self, nid: int) -> int:
        """A kmem_cache_node object, initialised (init_kmem_cache_node())."""
        n = self._alloc_one(self.by_name["kmem_cache_node"], _gfp.GFP_KERNEL, nid)
        if n == 0:
            raise MemoryError("no memory for a kmem_cache_node at boot")
        for off in range(0, KCN_BYTES, 8):
            self.contents.write64(n + off, 0)
        self.contents.write64(n + KCN_PARTIAL, n + KCN_PARTIAL)
        self.contents.write64(n + KCN_PARTIAL + 8, n + KCN_PARTIAL)
        return n

    def _init_nodes(self, kc: KmemCache) -> None:
        """init_kmem_cache_nodes(): one kmem_cache_node per node."""
        for nid in range(self.nr_nodes):
            self.caches[kc.index, CS_NODE + nid] = self._node_struct(nid)
        self.caches[kc.index, CS_NR_NODES] = self.nr_nodes

    def _set_struct(self, kc: KmemCache, addr: int) -> None:
        self.contents.write64(addr + KMEM_CACHE_INDEX_OFF, kc.index)
        set_slab_cache_nb(self.E, kc.index, np.uint64(addr))

    def boot(self) -> None:
        """kmem_cache_init() (see the class docstring), then create_kmalloc_caches() and, from
        ``dynamic`` on, the memdesc descriptor caches."""
        from memdesc.mm.memdesc_alloc import (
            SLAB_DESC,
            descriptor_cache_slot,
            descriptor_caches,
            descriptor_slot_bytes,
            use_freeptr_offset,
        )

        inside = use_freeptr_offset()
        boot = []
        if self.stage.dynamic:
            sd = self._new_cache(SLAB_DESC.cache_name, descriptor_slot_bytes("slab"),
                                 SLAB_TYPESAFE_BY_RCU, 16,
                                 SLAB_DESC.freeptr_offset if inside else None,
                                 self_hosted=True, descriptor="slab")
            self.sp[SP_SLABDESC] = sd.index
            boot.append(sd)
        kcn = self._new_cache("kmem_cache_node", KCN_BYTES, SLAB_HWCACHE_ALIGN, 0, None)
        for nid in range(self.nr_nodes):             # early_kmem_cache_node_alloc()
            self.caches[kcn.index, CS_NODE + nid] = self._node_struct(nid)
        self.caches[kcn.index, CS_NR_NODES] = self.nr_nodes
        for kc in boot:
            self._init_nodes(kc)
        kmc = self._new_cache("kmem_cache", KMEM_CACHE_NODE_OFF + 8 * self.nr_nodes,
                              SLAB_HWCACHE_ALIGN, 0, None)
        self._init_nodes(kmc)
        for kc in (kmc, kcn, *boot):                 # bootstrap()
            flush_cpu_slab_nb(self.E, kc.index)
            if int(self.geo[kc.index, G_SLABS]) > self._listed_slabs(kc):
                raise AssertionError(f"bootstrap: {kc.name} has a full slab off the lists")
            self._set_struct(kc, self._alloc_one(kmc, _gfp.GFP_KERNEL))
        for index in KMALLOC_INFO_SIZES:             # create_kmalloc_caches(), KMALLOC_NORMAL
            kc = self.kmem_cache_create(kmalloc_cache_name(index), KMALLOC_INFO_SIZES[index],
                                        flags=SLAB_KMALLOC)
            self.kmalloc_caches[index] = kc.index
        self.sp[SP_C_BASE:SP_C_BASE + SP_C_MAX] = -1
        self.sp[SP_TYPE_CACHES:SP_TYPE_CACHES + 16] = 0
        if self.stage.dynamic:
            self._type_cache(SLAB_DESC, int(self.sp[SP_SLABDESC]))
            for d in descriptor_caches():
                kc = self.kmem_cache_create(d.cache_name, descriptor_slot_bytes(d.key),
                                            align=16, flags=SLAB_TYPESAFE_BY_RCU,
                                            freeptr_offset=d.freeptr_offset if inside else None,
                                            descriptor=d.key)
                self.sp[descriptor_cache_slot(d.key)] = kc.index
                self._type_cache(d, kc.index)

    def _type_cache(self, d, index: int) -> None:
        """Allow descriptors of ``d``'s memdesc types to come from cache ``index``
        (check_slabs_nb() check 11)."""
        if index >= 63:
            raise ValueError("descriptor cache index too high for the type->cache mask")
        for name in d.memdesc_types:
            if name in self.stage.types.values():
                self.sp[SP_TYPE_CACHES + type_code(self.stage, name)] |= 1 << index

    def _listed_slabs(self, kc: KmemCache) -> int:
        n = 0
        for k in range(int(self.caches[kc.index, CS_NR_NODES])):
            node = int(self.caches[kc.index, CS_NODE + k])
            n += self.contents.read64(node + KCN_NR_PARTIAL)
        return n

    def kmem_cache_create(self, name: str, size: int, align: int = 0, flags: int = 0,
                          freeptr_offset: int | None = None,
                          descriptor: str | None = None, has_ctor: bool = False) -> KmemCache:
        """Mirrors kmem_cache_create() -> do_kmem_cache_create() (no merging: each cache is
        its own): struct kmem_cache from the kmem_cache cache, a kmem_cache_node per node."""
        if name in self.by_name:
            raise ValueError(f"kmem_cache {name!r} exists")
        kc = self._new_cache(name, size, flags, align, freeptr_offset, descriptor=descriptor,
                             has_ctor=has_ctor)
        addr = self._alloc_one(self.by_name["kmem_cache"], _gfp.GFP_KERNEL)
        if addr == 0:
            raise MemoryError(f"kmem_cache_create({name}): no memory")
        self.caches[kc.index, CS_CACHE] = addr
        self.contents.write64(addr + KMEM_CACHE_INDEX_OFF, kc.index)
        self._init_nodes(kc)
        return kc

    def cache(self, name: str) -> KmemCache:
        return self.by_name[name]

    # ---- allocation ----------------------------------------------------------------------
    def _alloc_one(self, kc: KmemCache, gfpflags: int, nid: int = 0) -> int:
        out = np.zeros(1, np.uint64)
        self._run(kmem_cache_alloc_nb, kc.index, gfpflags, nid, out)
        return int(out[0])

    def kmem_cache_alloc(self, kc: KmemCache, gfpflags: int) -> int:
        """One object's address, or 0."""
        return self._alloc_one(kc, gfpflags)

    def kmem_cache_alloc_bulk(self, kc: KmemCache, gfpflags: int, n: int,
                              nid: int = 0) -> np.ndarray:
        """``n`` independent kmem_cache_alloc() calls; uint64 addresses, 0 where one failed."""
        out = np.zeros(n, np.uint64)
        for s in range(0, n, BATCH):                     # Ctrl-C between batches
            self._run(kmem_cache_alloc_nb, kc.index, gfpflags, nid, out[s:s + BATCH])
        return out

    def kmem_cache_free(self, kc: KmemCache | None, objs) -> None:
        """kmem_cache_free() of one address or an array (kc None: kfree())."""
        objs = np.atleast_1d(np.asarray(objs, np.uint64))
        for s in range(0, objs.shape[0], BATCH):         # Ctrl-C between batches
            self._run(kmem_cache_free_nb, -1 if kc is None else kc.index, objs[s:s + BATCH])

    def kmalloc(self, sizes, gfpflags: int, nid: int = 0) -> np.ndarray:
        """kmalloc() of each size; uint64 addresses (0 where one failed)."""
        sizes = np.atleast_1d(np.asarray(sizes, np.int64))
        if sizes.size and sizes.min() <= 0:
            raise ValueError("kmalloc sizes must be positive")
        out = np.zeros(sizes.shape[0], np.uint64)
        for s in range(0, sizes.shape[0], BATCH):        # Ctrl-C between batches
            self._run(kmalloc_nb, self.kmalloc_caches, self._size_index, sizes[s:s + BATCH],
                      gfpflags, nid, out[s:s + BATCH])
        return out

    def kmalloc_ops(self, kinds, sizes, slots, nslots: int, gfpflags: int,
                    nid: int = 0) -> tuple[np.ndarray, int]:
        """Run a kmalloc/kfree sequence (see kmalloc_ops_nb); returns the slot addresses
        still allocated at the end (0 for freed or failed slots) and how many of the
        kmalloc() calls failed. Every kmalloc op must have a slot of its own."""
        kinds = np.ascontiguousarray(kinds, np.int64)
        sizes = np.ascontiguousarray(sizes, np.int64)
        slots = np.ascontiguousarray(slots, np.int64)
        slot_addr = np.zeros(nslots, np.uint64)
        for s in range(0, kinds.shape[0], BATCH):        # Ctrl-C between batches
            e = s + BATCH
            self._run(kmalloc_ops_nb, self.kmalloc_caches, self._size_index, kinds[s:e],
                      sizes[s:e], slots[s:e], slot_addr, gfpflags, nid)
        failed = slot_addr == OPS_FAILED
        slot_addr[failed] = 0
        return slot_addr, int(failed.sum())

    def kfree(self, objs) -> None:
        """kfree() of one address or an array (0 entries are kfree(NULL))."""
        self.kmem_cache_free(None, objs)

    # ---- inspection ----------------------------------------------------------------------
    def live(self, kc: KmemCache) -> int:
        return int(self.caches[kc.index, CS_LIVE])

    def pages(self, kc: KmemCache) -> int:
        return int(self.geo[kc.index, G_PAGES])

    def slabs(self, kc: KmemCache) -> int:
        return int(self.geo[kc.index, G_SLABS])

    def slabinfo(self) -> list[tuple[str, int, int, int, int, int, int]]:
        """(name, active_objs, num_objs, objsize, objperslab, pagesperslab, num_slabs) per
        cache, as /proc/slabinfo prints them."""
        rows = []
        for kc in self.cache_list:
            g = self.geo[kc.index]
            rows.append((kc.name, self.live(kc), int(g[G_TOTAL_OBJS]), int(g[G_SIZE]),
                         int(g[G_OBJECTS]), 1 << int(g[G_ORDER]), int(g[G_SLABS])))
        return rows


# ---- invariants (CONFIG_SLUB_DEBUG-style validate_slab_cache(), plus the descriptors) ------

_SLAB_CHECK_MESSAGES = {
    1: "slab page names no known cache (slab->slab_cache)",
    2: "slab->objects is neither the cache's preferred nor its minimum object count",
    3: "free pointer outside the slab or not on an object boundary",
    4: "freelist longer than the slab (cycle)",
    5: "objects - inuse differs from the freelist length",
    6: "per-cache slab/page/object counters differ from the slabs found",
    7: "objects in use differ from the cache's live count",
    8: "partial list length differs from nr_partial",
    9: "slab on a partial list is frozen or full",
    10: "struct slab descriptor is not an object of the slab descriptor cache",
    11: "descriptor of a page is not an object of the cache its memdesc type needs",
    12: "descriptor's pfn/order does not cover the page that points to it",
}


@njit(cache=True)
def _allocated(rec, pfn, have_rec):
    """Whether ``pfn`` lies in a live allocation of the debug record (walks back to the
    start of an aligned block of up to MAX_PAGE_ORDER)."""
    if not have_rec:
        return False
    for order in range(11):
        start = pfn & ~((np.int64(1) << order) - 1)
        o = rec[start]
        if o >= order:
            return True
    return False


@njit(cache=True)
def check_slabs_nb(E, nr_caches):
    """(code, detail, detail) - code 0 when every slab invariant holds."""
    E = borrow(E)
    sp = E[E_SP]
    geo = E[E_GEO]
    caches = E[E_CACHES]
    n = E[E_SLOT].shape[0]
    slabs = np.zeros(nr_caches, np.int64)
    pages = np.zeros(nr_caches, np.int64)
    objs = np.zeros(nr_caches, np.int64)
    inuse_sum = np.zeros(nr_caches, np.int64)
    pb = np.uint64(sp[SP_PAGE_BYTES])
    rec = E[E_REC]
    have_rec = sp[SP_DEBUG] != 0
    for pfn in range(n):
        # only pages of live allocations (the MemMap's record); free and pcp pages at the
        # dynamic stages hold list links where the memdesc word would be
        page = np.uint64(VMEMMAP_START) + np.uint64(pfn) * pb
        slab = _U64_0
        if sp[SP_DYNAMIC] and not _allocated(rec, pfn, have_rec):
            continue
        if sp[SP_DYNAMIC]:
            w = _krp(E, page + np.uint64(sp[SP_MEMDESC_OFF]))
            t = np.int64(w & np.uint64(15))
            if t == sp[SP_T_SLAB]:
                d = w & ~np.uint64(15)
                if np.int64(_kr(E, d + np.uint64(SLAB_PFN))) == pfn:
                    slab = d
                    if geo[sp[SP_SLABDESC], G_SELF] and d != np.uint64(PAGE_OFFSET) + (
                            np.uint64(pfn) << np.uint64(12)):
                        ds = virt_to_slab(E, d)
                        if ds == 0 or _cache_of_slab(E, ds) != sp[SP_SLABDESC]:
                            return 10, pfn, 0
            elif t != sp[SP_T_MISC] and (E[E_S][C_BUDDYMASK] >> t) & 1 == 0:
                d = w & ~np.uint64(15)
                ds = virt_to_slab(E, d)
                cc = _cache_of_slab(E, ds) if ds != 0 else -1
                if cc < 0 or (sp[SP_TYPE_CACHES + t] >> cc) & 1 == 0:
                    return 11, pfn, t
                first, order = desc_pfn_order_nb(E, d, t)
                if not first <= pfn < first + (np.int64(1) << order):
                    return 12, pfn, first
        else:
            if _krp(E, page + np.uint64(8)) & np.uint64(1) == 0:
                pt = _kr32(E, page + np.uint64(SLAB_PAGE_TYPE))
                if (pt >> np.uint32(24)) == np.uint32(PGTY_SLAB):
                    slab = page
        if slab == 0:
            continue
        c = _cache_of_slab(E, slab)
        if c < 0 or c >= nr_caches:
            return 1, pfn, 0
        cnt = _kr(E, slab + np.uint64(SLAB_COUNTERS))
        objects = np.int64((cnt >> np.uint64(16)) & np.uint64(0x7FFF))
        inuse = np.int64(cnt & _INUSE_MASK)
        if objects != geo[c, G_OBJECTS] and objects != geo[c, G_MIN_OBJECTS]:
            return 2, pfn, objects
        first_pfn, order = _slab_pfn_order(E, c, slab)
        base = np.uint64(PAGE_OFFSET) + (np.uint64(first_pfn) << np.uint64(12))
        size = np.uint64(geo[c, G_SIZE])
        off = np.uint64(geo[c, G_OFFSET])
        p = _kr(E, slab + np.uint64(SLAB_FREELIST))
        free = 0
        while p != 0:
            if p < base or p >= base + np.uint64(objects) * size or (p - base) % size:
                return 3, pfn, c
            free += 1
            if free > objects:
                return 4, pfn, c
            p = _kr(E, p + off)
        if objects - inuse != free:
            return 5, pfn, c
        slabs[c] += 1
        pages[c] += np.int64(1) << order
        objs[c] += objects
        inuse_sum[c] += inuse - (1 if geo[c, G_SELF] else 0)
    for c in range(nr_caches):
        if slabs[c] != geo[c, G_SLABS] or pages[c] != geo[c, G_PAGES] or \
                objs[c] != geo[c, G_TOTAL_OBJS]:
            return 6, c, slabs[c]
        if inuse_sum[c] != np.int64(caches[c, CS_LIVE]):
            return 7, c, inuse_sum[c]
        for k in range(np.int64(caches[c, CS_NR_NODES])):
            head = caches[c, CS_NODE + k] + np.uint64(KCN_PARTIAL)
            nr = 0
            e = _kr(E, head)
            while e != head:
                nr += 1
                if nr > slabs[c]:
                    return 8, c, nr
                s = e - np.uint64(SLAB_LIST)
                sc = _kr(E, s + np.uint64(SLAB_COUNTERS))
                if sc & _FROZEN or _kr(E, s + np.uint64(SLAB_FREELIST)) == 0:
                    return 9, c, nr
                e = _kr(E, e)
            if nr != np.int64(_kr(E, caches[c, CS_NODE + k] + np.uint64(KCN_NR_PARTIAL))):
                return 8, c, nr
    return 0, 0, 0


def check_slabs(kernel) -> None:
    """Raise VMBug if a slab or descriptor invariant is broken."""
    code, a, b = check_slabs_nb(kernel.E, len(kernel.slub.cache_list))
    if code:
        raise VMBug(f"SLUB/memdesc check at stage {kernel.stage.id}: "
                    f"{_SLAB_CHECK_MESSAGES.get(int(code), code)} ({int(a)}, {int(b)})")
