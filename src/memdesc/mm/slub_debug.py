"""Invariant checks of the slab allocator and the memdesc descriptors, in the spirit of
CONFIG_SLUB_DEBUG's validate_slab_cache() in mm/slub.c (the kernel keeps them in slub.c; they
are apart here, named for what they hold).

check_slabs(kernel) walks every cache's cpu slab and partial lists and every slab page of the
mem_map and checks what _SLAB_CHECK_MESSAGES lists: each slab names a known cache, has the
cache's preferred or minimum object count, a freelist inside the slab of length objects -
inuse, counters that match the slabs found and the cache's live objects, partial lists that
match nr_partial and hold no frozen or full slab; from ``dynamic`` on every struct slab is an
object of the slab descriptor cache and every page's descriptor is an object of the cache its
memdesc type needs, with a pfn/order that covers the page. A failure raises VMBug.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.mm.free_tracking import C_BUDDYMASK
from memdesc.mm.kmem import (
    PAGE_OFFSET,
    VMEMMAP_START,
)
from memdesc.mm.memdesc_alloc import (
    E_CACHES,
    E_GEO,
    E_REC,
    E_S,
    E_SLOT,
    E_SP,
    SP_DEBUG,
    SP_DYNAMIC,
    SP_MEMDESC_OFF,
    SP_PAGE_BYTES,
    SP_SLABDESC,
    SP_T_MISC,
    SP_T_SLAB,
    SP_TYPE_CACHES,
    borrow,
)
from memdesc.mm.page_alloc import VMBug
from memdesc.mm.page_desc import desc_pfn_order_nb
from memdesc.mm.slab import (
    _FROZEN,
    _INUSE_MASK,
    _U64_0,
    CS_LIVE,
    CS_NODE,
    CS_NR_NODES,
    G_MIN_OBJECTS,
    G_OBJECTS,
    G_OFFSET,
    G_PAGES,
    G_SELF,
    G_SIZE,
    G_SLABS,
    G_TOTAL_OBJS,
    KCN_NR_PARTIAL,
    KCN_PARTIAL,
    PGTY_SLAB,
    SLAB_COUNTERS,
    SLAB_FREELIST,
    SLAB_LIST,
    SLAB_PAGE_TYPE,
    SLAB_PFN,
    _kr,
    _kr32,
    _krp,
    _slab_pfn_order,
    virt_to_slab,
)
from memdesc.mm.slub import (
    _cache_of_slab,
)

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
