"""SLUB's hot paths over the emulated page allocator: slab allocation and freeing, new and
discarded slabs, free_large_kmalloc().

Mirrors mm/slub.c of Linux 6.18: slab_alloc_node() / ___slab_alloc() (cpu slab, node partial
lists local node first, new_slab() -> allocate_slab()), do_slab_free() / __slab_free() (an
emptied slab beyond min_partial is discarded: discard_slab() -> free_slab()),
deactivate_slab(), free_large_kmalloc(); from ``dynamic`` on the struct slab is itself a slab
object of the self-hosted "memdesc_slab" cache (see memdesc.mm.slab_caches.Slub for how the
recursion ends).
Departure: one modelled CPU, whose per-CPU freelist and cpu-partial list are folded into the
slab's own freelist.

The layout rows live in memdesc.mm.slab (mm/slab.h), the sizing rules in
memdesc.mm.slub_sizing (calculate_sizes()/calculate_order()), kmalloc() in memdesc.mm.kmalloc,
alloc_page_desc() in memdesc.mm.page_desc, the caches and boot in memdesc.mm.slab_caches, the
invariant checks in memdesc.mm.slub_debug.

Invariants: objects in use of a slab (counters.inuse) plus its freelist length equal
counters.objects; the cpu slab is frozen, and a slab on a node's partial list is neither
frozen nor full (nr_partial counts them); G_PAGES/G_SLABS/G_TOTAL_OBJS and CS_LIVE
count what the slabs hold (memdesc.mm.slub_debug.check_slabs verifies all of it).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.mm.access_core import OP_KMEM_ALLOC, OP_KMEM_FREE, op_begin, op_end
from memdesc.mm.fault_inject import FA_DESC, FA_FAILSLAB, should_fail_nb
from memdesc.mm.free_tracking import page_zone_index
from memdesc.mm.kmem import (
    PAGE_OFFSET,
    START_KERNEL_MAP,
    attach_nb,
    detach_nb,
)
from memdesc.mm.memdesc import MISC_ORDER_SHIFT, MISC_SUBTYPE_SHIFT
from memdesc.mm.memdesc_alloc import (
    E_CACHES,
    E_DATA,
    E_FA,
    E_FSTACK,
    E_GEO,
    E_KMETA,
    E_MEM,
    E_S,
    E_SLOT,
    E_SP,
    E_STATS,
    SP_DYNAMIC,
    SP_MEMDESC_OFF,
    SP_SLABDESC,
    SP_T_MISC,
    SP_T_SLAB,
    ST_DESC_FAIL_UNWIND,
    ST_IN_FREE,
    alloc_page_desc_nb,
    alloc_pages_e,
    borrow,
    free_pages_e,
    set_page_memdesc,
)
from memdesc.mm.mm_types import PG_head
from memdesc.mm.mmzone import NR_ZONES
from memdesc.mm.slab import (
    _FROZEN,
    _GDIRECT_RECLAIM,
    _GNOFAIL,
    _GNOMEMALLOC,
    _GNORETRY,
    _GNOWARN,
    _GRECLAIM,
    _GROW,
    _INUSE_MASK,
    _SLAB_GFP_KEEP,
    _U64_0,
    BAD_FREE,
    CS_ALLOCS,
    CS_CACHE,
    CS_CPU_SLAB,
    CS_EMPTY_INUSE,
    CS_FREES,
    CS_LIVE,
    CS_MIN_PARTIAL,
    CS_NODE,
    CS_NR_NODES,
    DONE,
    FOLIO_FLAGS_1,
    G_ALLOC_FAILS,
    G_ALLOCFLAGS,
    G_DESC,
    G_MIN_OBJECTS,
    G_MIN_ORDER,
    G_OBJECTS,
    G_OFFSET,
    G_ORDER,
    G_PAGES,
    G_SELF,
    G_SIZE,
    G_SLABS,
    G_TOTAL_OBJS,
    KCN_NR_PARTIAL,
    KCN_PARTIAL,
    KMEM_CACHE_INDEX_OFF,
    MISC_KMALLOC_LARGE,
    NEED_GROW,
    PAGE_COMPOUND_HEAD,
    PAGE_TYPE_NONE,
    PAGE_TYPE_OFF,
    PGTY_LARGE_KMALLOC,
    PGTY_SLAB,
    SLAB_CACHE,
    SLAB_COUNTERS,
    SLAB_FLAGS,
    SLAB_FREELIST,
    SLAB_LIST,
    SLAB_OBJ_EXTS,
    SLAB_PAGE_TYPE,
    SLAB_PFN,
    _free_slots,
    _kr,
    _kr32,
    _krp,
    _kw,
    _kw32,
    _list_add,
    _list_del,
    _nodezone_of,
    _page_addr,
    _slab_pfn_order,
    _slab_sep,
    virt_to_slab,
)


@njit(cache=True)
def _setup_slab(E, c, pfn, order, objects, slab, first):
    """allocate_slab() after the pages: struct slab fields, the free pointer chain (objects
    before ``first`` already taken), frozen as the new cpu slab. Mirrors allocate_slab() and
    alloc_slab_page() (__folio_set_slab() at the overlay stages)."""
    sp = E[E_SP]
    geo = E[E_GEO]
    attach_nb(E[E_SLOT], E[E_DATA], E[E_FSTACK], E[E_KMETA], pfn, np.int64(1) << order)
    if _slab_sep(E):
        _kw(E, slab + np.uint64(SLAB_FLAGS), _nodezone_of(E, pfn))
        _kw(E, slab + np.uint64(SLAB_PFN), np.uint64(pfn))
        _kw(E, slab + np.uint64(SLAB_OBJ_EXTS), _U64_0)
    if not sp[SP_DYNAMIC]:      # PageSlab on the head page while struct page is 64 bytes
        _kw32(E, _page_addr(E, pfn) + np.uint64(SLAB_PAGE_TYPE),
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
    set_page_memdesc(E, pfn, order, slab | np.uint64(sp[SP_T_SLAB]))
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
    if _slab_sep(E):
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
    slab = desc if _slab_sep(E) else _page_addr(E, pfn)
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
        _kw32(E, _page_addr(E, pfn) + np.uint64(SLAB_PAGE_TYPE),
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
    if _slab_sep(E) and E[E_GEO][c, G_SELF] == 0:
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
def alloc_bulk_slot(E, c, gfpflags, nid, out, i):
    """One slot of a bulk allocation: out[i] = an object of cache ``c`` (0 if it failed).
    Mirrors the body of __kmem_cache_alloc_bulk()'s loop (``p[i] = ...`` in mm/slub.c),
    shared by kmem_cache_alloc_nb() and memdesc.mm.kmalloc's kmalloc_nb(). Returns False,
    leaving out[i] unset, when the cache must grow first (the caller returns NEED_GROW at i
    and is called again from i)."""
    obj = _alloc_obj(E, c, gfpflags, nid)
    if obj == _GROW:
        return False
    out[i] = obj
    return True


@njit(cache=True)
def kmem_cache_alloc_nb(E, c, gfpflags, nid, out, start):
    """kmem_cache_alloc() for out[start:] (0 where an allocation failed; the next call is
    independent, as separate kernel calls are). Returns (next index, DONE | NEED_GROW)."""
    E = borrow(E)
    n = out.shape[0]
    for i in range(start, n):
        if not alloc_bulk_slot(E, c, gfpflags, nid, out, i):
            return i, NEED_GROW
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
    if _krp(E, page + np.uint64(PAGE_COMPOUND_HEAD)) & np.uint64(1):   # a tail: not the start
        return -1
    pt = _kr32(E, page + np.uint64(PAGE_TYPE_OFF))
    if (pt >> np.uint32(24)) != np.uint32(PGTY_LARGE_KMALLOC):
        return -1
    if _kr(E, page) & np.uint64(1 << PG_head):
        return np.int64(_kr(E, page + np.uint64(FOLIO_FLAGS_1)) & np.uint64(0xFF))
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
        _kw32(E, _page_addr(E, pfn) + np.uint64(PAGE_TYPE_OFF),
                 np.uint32(PAGE_TYPE_NONE))
    free_pages_e(E, pfn, order)
    return True


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
