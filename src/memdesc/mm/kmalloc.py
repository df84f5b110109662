"""kmalloc() and kfree() sequences over the kmalloc caches.

Mirrors __kmalloc_noprof() -> kmalloc_slab() (kmalloc_index() through the size_index table
of mm/slab_common.c for sizes up to 192, fls() above) and, above KMALLOC_MAX_CACHE_SIZE,
__kmalloc_large_node() (mm/slub.c): a compound page allocation marked PGTY_large_kmalloc at
the overlay stages, a Misc kmalloc_large memdesc word from ``dynamic`` on. kfree() is
memdesc.mm.slub's kmem_cache_free_nb() with no cache (free_large_kmalloc() for large ones).
The kmalloc size tables are pure data in memdesc.mm.slab_common (the cost model reads them
without importing the allocator).

Invariant: an object kmalloc() returns is an object of kmalloc-<n> with n the smallest
kmalloc size >= the request, or the first byte of a page-aligned kmalloc_large allocation.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.mm.free_tracking import misc_word, page_zone_index
from memdesc.mm.kmem import PAGE_OFFSET
from memdesc.mm.memdesc_alloc import (
    E_MEM,
    E_S,
    E_SP,
    SP_DYNAMIC,
    alloc_pages_e,
    borrow,
)
from memdesc.mm.page_alloc import set_memdesc_nb
from memdesc.mm.slab import (
    _GCOMP,
    _OPS_FAILED,
    DONE,
    MISC_KMALLOC_LARGE,
    NEED_GROW,
    PAGE_TYPE_OFF,
    PGTY_LARGE_KMALLOC,
    _kw32,
    _page_addr,
)
from memdesc.mm.slab_common import KMALLOC_MAX_CACHE_SIZE
from memdesc.mm.slub import (
    alloc_bulk_slot,
    kmem_cache_free_nb,
)
from memdesc.stages import PAGE_SIZE


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
                _kw32(E, _page_addr(E, pfn) + np.uint64(PAGE_TYPE_OFF),
                         np.uint32(PGTY_LARGE_KMALLOC << 24))
            out[i] = np.uint64(PAGE_OFFSET) + (np.uint64(pfn) << np.uint64(12))
            continue
        if not alloc_bulk_slot(E, kmc[_kmalloc_index_nb(size, size_index)], gfpflags, nid,
                               out, i):
            return i, NEED_GROW
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
