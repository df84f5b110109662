"""page_pool: network receive buffers, whose pages are described by struct netmem_desc.

Mirrors net/core/page_pool.c (6.18): __page_pool_alloc_page_order() allocates
``alloc_pages_node(nid, gfp | __GFP_COMP, pool->p.order)`` from NAPI context (GFP_ATOMIC |
__GFP_NOWARN) and page_pool_set_pp_info() stamps pp_magic = PP_SIGNATURE, pp = the pool,
dma_addr and pp_ref_count; page_pool_return_page() clears them and frees the page. At the
overlay stages these fields overlay the head struct page (netmem_desc was split out of struct
page in 6.17 but still overlays it [M: pahole netmem_desc.txt]); from ``dynamic`` on a
netmem_desc is allocated from its cache first, then the pages through alloc_page_desc()
(type NetPool).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.mm import gfp as _gfp
from memdesc.mm.kmem import (
    BATCH,
    TAG_NETMEM,
    content_tag,
    fill_tags,
    kread,
    kwrite,
)
from memdesc.mm.memdesc_alloc import (
    E_DATA,
    E_MEM,
    E_SLOT,
    E_SP,
    E_STATS,
    E_TAGS,
    SP_C_NETMEM,
    SP_T_NETPOOL,
    ST_IN_FREE,
    borrow,
    desc_separate,
    numa_node_id,
    page_desc,
)
from memdesc.mm.mm_types import POISON_POINTER_DELTA
from memdesc.mm.page_desc import memdesc_alloc_node_nb, memdesc_free_nb

#: struct netmem_desc [M: fixtures/btf/pahole/netmem_desc.txt]: _flags @0, pp_magic @8, pp @16,
#: _pp_mapping_pad @24 (the dynamic descriptor's PFN [I]), dma_addr @32, pp_ref_count @40.
NM_FLAGS, NM_MAGIC, NM_PP, NM_PFN, NM_DMA, NM_REF = 0, 8, 16, 24, 32, 40
#: PP_SIGNATURE = 0x40 + POISON_POINTER_DELTA [S: include/net/netmem.h].
PP_SIGNATURE = 0x40 + POISON_POINTER_DELTA
#: sizeof(struct page_pool) rounded to its kmalloc class [I: a ~1.5 KiB structure].
PAGE_POOL_STRUCT_BYTES = 1536
GFP_NAPI = _gfp.GFP_ATOMIC | _gfp.__GFP_NOWARN


@njit(cache=True)
def _netmem_of(E, pfn):
    return page_desc(E, pfn, E[E_SP][SP_T_NETPOOL])


@njit(cache=True)
def page_pool_alloc_nb(E, pool, pool_id, order, gfpflags, seq0, out):
    """page_pool_alloc_pages() for each out[i]: PFN, or -1 when the allocation failed.
    Returns the number allocated."""
    E = borrow(E)
    sp = E[E_SP]
    ok = 0
    nr = np.int64(1) << order
    t = sp[SP_T_NETPOOL]
    for i in range(out.shape[0]):
        nm, pfn = memdesc_alloc_node_nb(E, SP_C_NETMEM, t, gfpflags | _gfp.__GFP_COMP, order,
                                        numa_node_id(E))
        if pfn < 0:
            out[i] = -1
            continue
        m, d, s = E[E_MEM], E[E_DATA], E[E_SLOT]
        kwrite(m, d, s, nm + np.uint64(NM_MAGIC), np.uint64(PP_SIGNATURE))
        kwrite(m, d, s, nm + np.uint64(NM_PP), np.uint64(pool))
        kwrite(m, d, s, nm + np.uint64(NM_DMA), np.uint64(pfn) << np.uint64(12))
        kwrite(m, d, s, nm + np.uint64(NM_REF), np.uint64(1))
        fill_tags(E[E_TAGS], pfn, nr, TAG_NETMEM, pool_id, (seq0 + i) * nr)
        out[i] = pfn
        ok += 1
    return ok


@njit(cache=True)
def page_pool_return_nb(E, pfns, order):
    """page_pool_return_page(): clear the pp fields (page_pool_clear_pp_info()), free the
    pages, then the netmem_desc. Frees only."""
    E = borrow(E)
    t = E[E_SP][SP_T_NETPOOL]
    E[E_STATS][ST_IN_FREE] += 1
    for i in range(pfns.shape[0]):
        pfn = pfns[i]
        nm = _netmem_of(E, pfn)
        m, d, s = E[E_MEM], E[E_DATA], E[E_SLOT]
        if kread(m, d, s, nm + np.uint64(NM_MAGIC)) != np.uint64(PP_SIGNATURE):
            raise AssertionError("page_pool: returning a page that is not a pp page")
        if not desc_separate(E, t):
            for off in (NM_MAGIC, NM_PP, NM_DMA, NM_REF):
                kwrite(m, d, s, nm + np.uint64(off), np.uint64(0))
        memdesc_free_nb(E, nm, t, pfn, order)
    E[E_STATS][ST_IN_FREE] -= 1


@njit(cache=True)
def readback_pool_nb(E, pfns, seqs, order, pool, pool_id):
    """Through each page's netmem: check pp_magic and pp, fold the data tags."""
    E = borrow(E)
    h = np.uint64(0xCBF29CE484222325)
    right = 0
    nr = np.int64(1) << order
    m, d, s = E[E_MEM], E[E_DATA], E[E_SLOT]
    for i in range(pfns.shape[0]):
        nm = _netmem_of(E, pfns[i])
        if kread(m, d, s, nm + np.uint64(NM_MAGIC)) != np.uint64(PP_SIGNATURE) or \
                kread(m, d, s, nm + np.uint64(NM_PP)) != np.uint64(pool):
            continue
        for k in range(nr):
            t = E[E_TAGS][pfns[i] + k]
            if t == content_tag(TAG_NETMEM, pool_id, seqs[i] * nr + k):
                right += 1
            h = (h ^ (np.uint64(t) + (np.uint64(seqs[i]) << np.uint64(32)))) * np.uint64(
                0x100000001B3)
    return h, right


class PagePool:
    """One page_pool (a NIC receive queue): its struct page_pool and the pages it holds."""

    def __init__(self, kernel, name: str, pool_id: int, order: int):
        self.k, self.name, self.pool_id, self.order = kernel, name, pool_id, order
        self.struct = int(kernel.slub.kmalloc(PAGE_POOL_STRUCT_BYTES, _gfp.GFP_KERNEL)[0])
        if self.struct == 0:
            raise MemoryError("page_pool_create(): no memory for struct page_pool")
        self.pfns = np.zeros(0, np.int64)
        self.seqs = np.zeros(0, np.int64)
        self._seq = 0
        self.failed = 0

    def alloc(self, nr_pages: int, gfpflags: int = GFP_NAPI) -> int:
        n = -(-nr_pages // (1 << self.order))
        out = np.zeros(n, np.int64)
        ok = 0
        for s in range(0, n, BATCH):                 # Ctrl-C between batches
            while self.k.contents.capacity - self.k.contents.attached_pages < 64:
                self.k.grow()
            ok += page_pool_alloc_nb(self.k.E, np.uint64(self.struct), self.pool_id,
                                     self.order, gfpflags, self._seq + s, out[s:s + BATCH])
        seqs = self._seq + np.arange(n, dtype=np.int64)
        self._seq += n
        good = out >= 0
        self.pfns = np.concatenate([self.pfns, out[good]])
        self.seqs = np.concatenate([self.seqs, seqs[good]])
        self.failed += n - int(ok)
        return int(ok)

    def release(self, fraction: float) -> int:
        from memdesc.mm.memory import pick_fraction

        doomed = pick_fraction(np.arange(self.pfns.shape[0]), fraction)
        page_pool_return_nb(self.k.E, self.pfns[doomed], self.order)
        keep = np.ones(self.pfns.shape[0], np.bool_)
        keep[doomed] = False
        self.pfns, self.seqs = self.pfns[keep], self.seqs[keep]
        return int(doomed.size)

    def observe(self) -> dict[str, object]:
        h, right = readback_pool_nb(self.k.E, self.pfns, self.seqs, self.order,
                                    np.uint64(self.struct), self.pool_id)
        return {"buffers": int(self.pfns.shape[0]), "pages_with_right_data": int(right),
                "digest": f"{int(h):016x}"}
