"""Misc memory: vmalloc() areas and reserved pages, the allocations that need no descriptor.

vmalloc mirrors __vmalloc_node_range() -> __vmalloc_area_node() of mm/vmalloc.c: a vmap_area
and a vm_struct, the array of page pointers (kmalloc'd up to PAGE_SIZE, itself vmalloc'd
beyond, as the kernel does), then order-0 pages, all or nothing. The pages are untyped plain
pages at the overlay stages and carry a Misc memdesc of subtype vmalloc from ``dynamic`` on
[S: Memdescs rev B, Misc subtypes]. The kernel page tables mapping the area are not modelled.

Reserved pages mirror a driver's alloc_pages() + SetPageReserved(): PG_reserved at the
overlay stages, a Misc memdesc of subtype reserved from ``dynamic`` on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from memdesc.mm.free_tracking import misc_word, page_zone_index
from memdesc.mm.gfp import GFP_KERNEL
from memdesc.mm.kmem import (
    BATCH,
    TAG_RESERVED,
    TAG_VMALLOC,
    VMEMMAP_START,
    fill_tags,
    kread,
    kwrite,
)
from memdesc.mm.memdesc import MISC_SUBTYPE
from memdesc.mm.memdesc_alloc import (
    E_DATA,
    E_MEM,
    E_S,
    E_SLOT,
    E_SP,
    E_STATS,
    E_TAGS,
    SP_DYNAMIC,
    SP_PAGE_BYTES,
    ST_IN_FREE,
    alloc_pages_e,
    borrow,
    free_pages_e,
    numa_node_id,
)
from memdesc.mm.mm_types import PG_reserved
from memdesc.mm.page_alloc import set_memdesc_nb
from memdesc.stages import PAGE_SHIFT, PAGE_SIZE

MISC_VMALLOC = MISC_SUBTYPE["vmalloc"]
MISC_RESERVED = MISC_SUBTYPE["reserved"]
MISC_ZERO = MISC_SUBTYPE["zero"]
#: sizeof(struct vmap_area) = 64 and sizeof(struct vm_struct) = 72 on x86-64 [I: 6.18
#: include/linux/vmalloc.h member lists].
VMAP_AREA_BYTES = 64
VM_STRUCT_BYTES = 72


@njit(cache=True)
def misc_pages_nb(E, n, gfpflags, subtype, tag_kind, owner, seq0, out):
    """n order-0 pages marked Misc ``subtype`` (vmalloc, reserved or zero) with their data tags;
    all or nothing: on a failure the pages got so far are freed and False returned."""
    E = borrow(E)
    sp = E[E_SP]
    for i in range(n):
        pfn = alloc_pages_e(E, gfpflags, 0, numa_node_id(E))
        if pfn < 0:
            for j in range(i):
                _unmark(E, out[j], subtype)
                free_pages_e(E, out[j], 0)
            return False
        if sp[SP_DYNAMIC]:
            gz = page_zone_index(E[E_MEM], E[E_S], pfn)
            set_memdesc_nb(E[E_MEM], E[E_S], pfn, 0, misc_word(E[E_S], subtype, 0, gz))
        elif subtype in (MISC_RESERVED, MISC_ZERO):
            page = np.uint64(VMEMMAP_START) + np.uint64(pfn) * np.uint64(sp[SP_PAGE_BYTES])
            f = kread(E[E_MEM], E[E_DATA], E[E_SLOT], page)
            kwrite(E[E_MEM], E[E_DATA], E[E_SLOT], page, f | np.uint64(1 << PG_reserved))
        out[i] = pfn
    fill_tags_list(E[E_TAGS], out, tag_kind, owner, seq0)
    return True


@njit(cache=True)
def fill_tags_list(tags, pfns, kind, owner, seq0):
    for i in range(pfns.shape[0]):
        fill_tags(tags, pfns[i], 1, kind, owner, seq0 + i)


@njit(cache=True)
def _unmark(E, pfn, subtype):
    sp = E[E_SP]
    if not sp[SP_DYNAMIC] and (subtype in (MISC_RESERVED, MISC_ZERO)):
        page = np.uint64(VMEMMAP_START) + np.uint64(pfn) * np.uint64(sp[SP_PAGE_BYTES])
        f = kread(E[E_MEM], E[E_DATA], E[E_SLOT], page)
        kwrite(E[E_MEM], E[E_DATA], E[E_SLOT], page, f & ~np.uint64(1 << PG_reserved))


@njit(cache=True)
def free_misc_pages_nb(E, pfns, subtype):
    """__free_page() of each (ClearPageReserved() first for reserved pages). Frees only."""
    E = borrow(E)
    E[E_STATS][ST_IN_FREE] += 1
    for i in range(pfns.shape[0]):
        _unmark(E, pfns[i], subtype)
        free_pages_e(E, pfns[i], 0)
    E[E_STATS][ST_IN_FREE] -= 1


@dataclass
class VmArea:
    """One vmalloc() area: its pages and the kernel objects that describe it."""

    size: int
    pages: np.ndarray
    vm_struct: int
    vmap_area: int
    array: object          # kmalloc address (int) or a nested VmArea
    tag: int


class Vmalloc:
    """vmalloc()/vfree() and reserved pages of one kernel."""

    def __init__(self, kernel):
        self.k = kernel
        slub = kernel.slub
        self.vmap_area_cache = slub.by_name.get("vmap_area") or slub.kmem_cache_create(
            "vmap_area", VMAP_AREA_BYTES)
        self._seq = 0

    def vmalloc(self, size: int, gfpflags: int, tag: int) -> VmArea | None:
        """Mirrors __vmalloc_node_range(): None (nothing left allocated) on failure."""
        slub = self.k.slub
        n = -(-size // PAGE_SIZE)
        va = slub.kmem_cache_alloc(self.vmap_area_cache, gfpflags)
        if va == 0:
            return None
        vm = int(slub.kmalloc(VM_STRUCT_BYTES, gfpflags)[0])
        if vm == 0:
            slub.kmem_cache_free(self.vmap_area_cache, va)
            return None
        array_size = n * 8
        if array_size > PAGE_SIZE:
            array: object = self.vmalloc(array_size, gfpflags, tag)
        else:
            array = int(slub.kmalloc(array_size, gfpflags)[0]) or None
        if array is None:
            slub.kfree(vm)
            slub.kmem_cache_free(self.vmap_area_cache, va)
            return None
        pages = self._misc_pages(n, gfpflags, MISC_VMALLOC, TAG_VMALLOC, tag, self._seq)
        if pages is None:
            self._free_array(array)
            slub.kfree(vm)
            slub.kmem_cache_free(self.vmap_area_cache, va)
            return None
        self._seq += n
        return VmArea(size, pages, vm, va, array, tag)

    def _free_array(self, array) -> None:
        if isinstance(array, VmArea):
            self.vfree(array)
        else:
            self.k.slub.kfree(array)

    def vfree(self, area: VmArea) -> None:
        """Mirrors vfree(): the pages, the page array, vm_struct, vmap_area. Frees only."""
        free_misc_pages_nb(self.k.E, area.pages, MISC_VMALLOC)
        self._free_array(area.array)
        self.k.slub.kfree(area.vm_struct)
        self.k.slub.kmem_cache_free(self.vmap_area_cache, area.vmap_area)

    def reserve(self, nr_pages: int, gfpflags: int, owner: int) -> np.ndarray | None:
        """alloc_page() + SetPageReserved() per page, all or nothing."""
        return self._misc_pages(nr_pages, gfpflags, MISC_RESERVED, TAG_RESERVED, owner, 0)

    def _misc_pages(self, n: int, gfpflags: int, subtype: int, tag_kind: int, owner: int,
                    seq0: int) -> np.ndarray | None:
        """misc_pages_nb() in BATCHes (Ctrl-C between them), still all or nothing: when a
        batch fails (it undoes itself), the batches before it are freed too."""
        pages = np.zeros(n, np.int64)
        for s in range(0, n, BATCH):
            chunk = pages[s:s + BATCH]
            if not misc_pages_nb(self.k.E, chunk.shape[0], gfpflags, subtype, tag_kind, owner,
                                 seq0 + s, chunk):
                free_misc_pages_nb(self.k.E, pages[:s], subtype)
                return None
        return pages

    def zero_page(self) -> int:
        """The shared zero page: x86's empty_zero_page is a PG_reserved page of the kernel
        image (kpageflags: zero_page,reserved); from ``dynamic`` on it is Misc subtype zero
        [S: Memdescs rev B]. Allocated once at boot; never freed. Returns its PFN (-1 if none)."""
        page = np.zeros(1, np.int64)
        if not misc_pages_nb(self.k.E, 1, GFP_KERNEL, MISC_ZERO, TAG_RESERVED, 0, 0, page):
            return -1
        return int(page[0])

    def unreserve(self, pages: np.ndarray) -> None:
        free_misc_pages_nb(self.k.E, pages, MISC_RESERVED)


def area_bytes(area: VmArea) -> int:
    return area.pages.shape[0] << PAGE_SHIFT


@njit(cache=True)
def _fold_tags(tags, pfns, h):
    for i in range(pfns.shape[0]):
        h = (h ^ (np.uint64(tags[pfns[i]]) + (np.uint64(i) << np.uint64(32)))) * np.uint64(
            0x100000001B3)
    return h


def readback_pages(kernel, page_lists: list[np.ndarray]) -> dict[str, object]:
    """Data tags of Misc pages (vmalloc areas, reserved runs), in order, as a digest."""
    h = np.uint64(0xCBF29CE484222325)
    n = 0
    for pages in page_lists:
        h = np.uint64(_fold_tags(kernel.tags, pages, h))
        n += int(pages.shape[0])
    return {"areas": len(page_lists), "pages": n, "digest": f"{int(h):016x}"}
