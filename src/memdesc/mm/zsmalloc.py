"""zsmalloc: compressed objects packed into zspages of order-0 pages (zpdesc).

Sizing mirrors mm/zsmalloc.c (6.18) [S]: 255 size classes 16 bytes apart from 32 to 4096,
each object carrying its handle (ZS_HANDLE_SIZE) in front, zspage chains of up to
CONFIG_ZSMALLOC_CHAIN_SIZE = 8 pages [M: kernel-config] chosen by
calculate_zspage_chain_size(), and classes with the same (pages, objects) merged.

Each zspage is ``class->pages_per_zspage`` separate order-0 pages (alloc_zspage() calls
alloc_page() per component), plus a ``struct zspage`` from the "zspage" cache; each stored
object also has a handle from the "zs_handle" cache. The component pages are zpdescs: an
overlay of struct page (PGTY_zsmalloc) at v6.18/folio, a descriptor from the zpdesc cache
from ``dynamic`` on (memdesc_alloc.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from memdesc.mm import gfp as _gfp
from memdesc.mm.kmem import (
    TAG_ZSMALLOC,
    VMEMMAP_START,
    content_tag,
    fill_tags,
    kread,
    kwrite,
    kwrite32,
)
from memdesc.mm.memdesc_alloc import (
    E_DATA,
    E_MEM,
    E_SLOT,
    E_SP,
    E_STATS,
    E_TAGS,
    SP_C_ZPDESC,
    SP_PAGE_BYTES,
    SP_T_MOVABLE,
    ST_IN_FREE,
    borrow,
    desc_separate,
    numa_node_id,
    page_desc,
)
from memdesc.mm.mm_types import PG_movable_ops
from memdesc.mm.page_desc import memdesc_alloc_node_nb, memdesc_free_nb
from memdesc.stages import PAGE_SIZE

ZS_ALIGN = 8
ZS_HANDLE_SIZE = 8
#: CONFIG_ZSMALLOC_CHAIN_SIZE=8 [M: fixtures/system-info/kernel-config.gz].
ZS_MAX_PAGES_PER_ZSPAGE = 8
#: MAX(32, ZS_MAX_PAGES_PER_ZSPAGE << PAGE_SHIFT >> OBJ_INDEX_BITS); OBJ_INDEX_BITS is 24 on
#: x86-64 (MAX_POSSIBLE_PHYSMEM_BITS 52), so the second term is 0 [S].
ZS_MIN_ALLOC_SIZE = 32
ZS_MAX_ALLOC_SIZE = PAGE_SIZE
CLASS_BITS = 8
ZS_SIZE_CLASS_DELTA = PAGE_SIZE >> CLASS_BITS
ZS_SIZE_CLASSES = -(-(ZS_MAX_ALLOC_SIZE - ZS_MIN_ALLOC_SIZE) // ZS_SIZE_CLASS_DELTA) + 1
#: sizeof(struct zspage): bitfields 4 + inuse 4 + freeobj 4 + hole 4 + first_zpdesc 8 +
#: list 16 + pool 8 + zspage_lock 8 = 56 [I: mm/zsmalloc.c 6.18 struct zspage].
ZSPAGE_STRUCT_BYTES = 56


def calculate_zspage_chain_size(class_size: int) -> int:
    """Pages per zspage for a class: 1 for power-of-two sizes, else the chain length (1..8)
    with the least waste. Mirrors calculate_zspage_chain_size() in mm/zsmalloc.c."""
    if class_size & (class_size - 1) == 0:
        return 1
    best, min_waste = 1, None
    for i in range(1, ZS_MAX_PAGES_PER_ZSPAGE + 1):
        waste = (i * PAGE_SIZE) % class_size
        if min_waste is None or waste < min_waste:
            min_waste, best = waste, i
    return best


def get_size_class_index(size: int) -> int:
    """Mirrors get_size_class_index() in mm/zsmalloc.c."""
    idx = 0
    if size > ZS_MIN_ALLOC_SIZE:
        idx = -(-(size - ZS_MIN_ALLOC_SIZE) // ZS_SIZE_CLASS_DELTA)
    return min(ZS_SIZE_CLASSES - 1, idx)


@dataclass(frozen=True)
class SizeClass:
    index: int          # the class's own index (merged classes point at the larger one)
    size: int
    pages_per_zspage: int
    objs_per_zspage: int


def size_classes() -> list[SizeClass]:
    """pool->size_class[] for every index. Mirrors the loop of zs_create_pool(): from the
    largest class down, a class with the same pages_per_zspage and objs_per_zspage as the
    previous (larger) one is merged into it (can_merge())."""
    table: list[SizeClass | None] = [None] * ZS_SIZE_CLASSES
    prev: SizeClass | None = None
    for i in range(ZS_SIZE_CLASSES - 1, -1, -1):
        size = min(ZS_MIN_ALLOC_SIZE + i * ZS_SIZE_CLASS_DELTA, ZS_MAX_ALLOC_SIZE)
        pages = calculate_zspage_chain_size(size)
        objs = pages * PAGE_SIZE // size
        # huge classes (one object per single-page zspage) are never merged [S]
        huge = pages == 1 and objs == 1
        if prev is not None and not huge and (prev.pages_per_zspage, prev.objs_per_zspage) == (
                pages, objs):
            table[i] = prev
            continue
        prev = SizeClass(i, size, pages, objs)
        table[i] = prev
    return [c for c in table if c is not None]


def class_for(stored_bytes: int, classes: list[SizeClass]) -> SizeClass:
    """The size class zs_malloc() uses for a compressed object of ``stored_bytes`` (the
    handle is stored with the object, so it adds ZS_HANDLE_SIZE)."""
    return classes[get_size_class_index(stored_bytes + ZS_HANDLE_SIZE)]


# ---- zspages in emulated memory -------------------------------------------------------------
#
# struct zpdesc [M: fixtures/btf/pahole/zpdesc.txt]: flags @0, lru @8, movable_ops @24,
# next/handle @32, zspage @40, first_obj_offset @48 (in page_type's low 24 bits at the overlay
# stages, with PGTY_zsmalloc in the top byte), _refcount @52; the dynamic descriptor keeps its
# PFN in the 8 bytes 56 is rounded up to (memdesc_alloc.DESC_PFN_ORDER) [I].
ZP_LRU, ZP_NEXT, ZP_ZSPAGE, ZP_FIRST_OBJ, ZP_PFN = 8, 32, 40, 48, 56
PGTY_ZSMALLOC = 0xF6
_PG_MOVABLE_OPS = np.uint64(1 << PG_movable_ops)
#: zram's zs_malloc() gfp on the write path: GFP_NOIO | __GFP_HIGHMEM | __GFP_MOVABLE [S:
#: drivers/block/zram/zram_drv.c]; the zspage pages get exactly this.
GFP_ZSMALLOC = _gfp.GFP_NOIO | _gfp.__GFP_HIGHMEM | _gfp.__GFP_MOVABLE


@njit(cache=True)
def _zpdesc_of(E, pfn):
    return page_desc(E, pfn, E[E_SP][SP_T_MOVABLE])


@njit(cache=True)
def _free_zpdesc_page(E, pfn):
    sp = E[E_SP]
    t = sp[SP_T_MOVABLE]
    zp = _zpdesc_of(E, pfn)
    if not desc_separate(E, t):
        kwrite32(E[E_MEM], E[E_DATA], E[E_SLOT], zp + np.uint64(ZP_FIRST_OBJ),
                 np.uint32(0xFFFFFFFF))
        kwrite(E[E_MEM], E[E_DATA], E[E_SLOT], zp + np.uint64(ZP_ZSPAGE), np.uint64(0))
        kwrite(E[E_MEM], E[E_DATA], E[E_SLOT], zp + np.uint64(ZP_NEXT), np.uint64(0))
    memdesc_free_nb(E, zp, t, pfn, 0)


@njit(cache=True)
def alloc_zspage_nb(E, nr_pages, gfpflags, zspage, class_size, pool, seq, out):
    """alloc_zspage(): ``nr_pages`` order-0 pages, each a zpdesc through
    memdesc_alloc_node() (descriptor first, page second once zpdesc is separate, from
    ``dynamic`` on; PGTY_zsmalloc while it overlays struct page), chained through
    zpdesc->next and pointing at ``zspage``, with first_obj_offset as create_page_chain()/
    init_zspage() compute it. All or nothing. Returns True on success."""
    E = borrow(E)
    sp = E[E_SP]
    stats = E[E_STATS]
    t = sp[SP_T_MOVABLE]
    for k in range(nr_pages):
        zp, pfn = memdesc_alloc_node_nb(E, SP_C_ZPDESC, t, gfpflags, 0, numa_node_id(E))
        if pfn < 0:
            stats[ST_IN_FREE] += 1
            for j in range(k):
                _free_zpdesc_page(E, out[j])
            stats[ST_IN_FREE] -= 1
            return False
        out[k] = pfn
        m, d, s = E[E_MEM], E[E_DATA], E[E_SLOT]
        first_obj = (k * PAGE_SIZE + class_size - 1) // class_size * class_size - k * PAGE_SIZE
        if desc_separate(E, t):
            kwrite32(m, d, s, zp + np.uint64(ZP_FIRST_OBJ), np.uint32(first_obj))
        else:
            kwrite32(m, d, s, zp + np.uint64(ZP_FIRST_OBJ),
                     np.uint32((PGTY_ZSMALLOC << 24) | first_obj))
        kwrite(m, d, s, zp + np.uint64(ZP_ZSPAGE), np.uint64(zspage))
        if k > 0:
            kwrite(m, d, s, _zpdesc_of(E, out[k - 1]) + np.uint64(ZP_NEXT), zp)
    for k in range(nr_pages):
        fill_tags(E[E_TAGS], out[k], 1, TAG_ZSMALLOC, pool, seq * ZS_MAX_PAGES_PER_ZSPAGE + k)
    SetZsPageMovable(E, out, nr_pages)
    return True


@njit(cache=True)
def SetZsPageMovable(E, pfns, nr_pages):
    """Mirrors SetZsPageMovable() (zs_malloc() right after alloc_zspage()): every component
    page gets PG_movable_ops (zpdesc_set_movable() -> SetPageMovableOps(), 6.17+: the bit
    aliases PG_uptodate and page_has_movable_ops() also wants PageZsmalloc). The flag lives in
    the zpdesc's flags word: the struct page at the overlay stages, the zpdesc from
    ``dynamic`` on. It is cleared only when the page is freed (free_pages_prepare())."""
    m, d, s = E[E_MEM], E[E_DATA], E[E_SLOT]
    for k in range(nr_pages):
        zp = _zpdesc_of(E, pfns[k])
        kwrite(m, d, s, zp, kread(m, d, s, zp) | _PG_MOVABLE_OPS)


@njit(cache=True)
def free_zspage_nb(E, pfns, nr_pages):
    """free_zspage() -> __free_zspage(): every component page (and its zpdesc). Frees only."""
    E = borrow(E)
    E[E_STATS][ST_IN_FREE] += 1
    for k in range(nr_pages):
        _free_zpdesc_page(E, pfns[k])
    E[E_STATS][ST_IN_FREE] -= 1


@njit(cache=True)
def readback_zspages_nb(E, pfns, nrs, zspages, seqs, pool):
    """Walk each zspage from its first page through zpdesc->next, check every zpdesc points
    at its zspage, and fold the data tags. Returns (digest, pages, pages with right data)."""
    E = borrow(E)
    h = np.uint64(0xCBF29CE484222325)
    pages = 0
    right = 0
    tags = E[E_TAGS]
    sp = E[E_SP]
    m, d, s = E[E_MEM], E[E_DATA], E[E_SLOT]
    for z in range(pfns.shape[0]):
        zp = _zpdesc_of(E, pfns[z, 0])
        for k in range(nrs[z]):
            if kread(m, d, s, zp + np.uint64(ZP_ZSPAGE)) != zspages[z]:
                break
            if desc_separate(E, sp[SP_T_MOVABLE]):
                pfn = np.int64(kread(m, d, s, zp + np.uint64(ZP_PFN)))
            else:
                pfn = np.int64((zp - np.uint64(VMEMMAP_START)) // np.uint64(sp[SP_PAGE_BYTES]))
            t = tags[pfn]
            pages += 1
            if t == content_tag(TAG_ZSMALLOC, pool, seqs[z] * ZS_MAX_PAGES_PER_ZSPAGE + k):
                right += 1
            h = (h ^ (np.uint64(t) + (np.uint64(seqs[z]) << np.uint64(32)))) * np.uint64(
                0x100000001B3)
            zp = kread(m, d, s, zp + np.uint64(ZP_NEXT))
    return h, pages, right


def create_caches(slub):
    """create_cache() of zs_create_pool(): the "zs_handle" and "zspage" caches (shared by
    the model's pools; the kernel creates a pair per pool)."""
    handle = slub.by_name.get("zs_handle") or slub.kmem_cache_create("zs_handle",
                                                                     ZS_HANDLE_SIZE)
    zspage = slub.by_name.get("zspage") or slub.kmem_cache_create("zspage", ZSPAGE_STRUCT_BYTES)
    return handle, zspage


class ZsPool:
    """A zs_pool: size classes, zspages, objects with their handles (zs_create_pool(),
    zs_malloc(), zs_free()). Objects fill the class's newest zspage; an emptied zspage is
    freed at once, as zs_free() does (no compaction is modelled)."""

    def __init__(self, kernel, name: str, pool_id: int):
        self.k, self.name, self.pool_id = kernel, name, pool_id
        self.handle_cache, self.zspage_cache = create_caches(kernel.slub)
        self.classes = size_classes()
        # zspages: rows of (class index, zspage object, inuse, seq) and their PFNs
        self.zs_class: list[int] = []
        self.zs_obj: list[int] = []
        self.zs_inuse: list[int] = []
        self.zs_pfns: list[np.ndarray] = []
        self.zs_seq: list[int] = []
        self.live_zs: set[int] = set()
        self.current: dict[int, int] = {}     # class index -> zspage still filling
        # objects: (zspage row, handle)
        self.obj_zs: list[int] = []
        self.obj_handle: list[int] = []
        self.obj_live: list[bool] = []
        self._seq = 0
        self.failed = 0

    def _new_zspage(self, cls: SizeClass, gfpflags: int) -> int:
        slub = self.k.slub
        zspage = slub.kmem_cache_alloc(self.zspage_cache, gfpflags & ~(
            _gfp.GFP.HIGHMEM | _gfp.GFP.MOVABLE))
        if zspage == 0:
            return -1
        pfns = np.zeros(ZS_MAX_PAGES_PER_ZSPAGE, np.int64)
        while self.k.contents.capacity - self.k.contents.attached_pages < 64:
            self.k.grow()
        if not alloc_zspage_nb(self.k.E, cls.pages_per_zspage, gfpflags, np.uint64(zspage),
                               cls.size, self.pool_id, self._seq, pfns):
            slub.kmem_cache_free(self.zspage_cache, zspage)
            return -1
        row = len(self.zs_class)
        self.zs_class.append(cls.index)
        self.zs_obj.append(zspage)
        self.zs_inuse.append(0)
        self.zs_pfns.append(pfns)
        self.zs_seq.append(self._seq)
        self.live_zs.add(row)
        self._seq += 1
        return row

    def store(self, sizes: np.ndarray, gfpflags: int = GFP_ZSMALLOC) -> int:
        """zs_malloc() of compressed objects of these sizes; returns how many were stored."""
        cls_idx = np.array([class_for(int(s), self.classes).index for s in sizes], np.int64)
        handles = self.k.slub.kmem_cache_alloc_bulk(self.handle_cache, gfpflags & ~(
            _gfp.GFP.HIGHMEM | _gfp.GFP.MOVABLE), len(sizes))
        stored = 0
        by_index = {c.index: c for c in self.classes}
        for i in range(len(sizes)):
            if handles[i] == 0:
                self.failed += 1
                continue
            cls = by_index[int(cls_idx[i])]
            row = self.current.get(cls.index, -1)
            if row < 0 or self.zs_inuse[row] >= cls.objs_per_zspage:
                row = self._new_zspage(cls, gfpflags)
                if row < 0:
                    self.k.slub.kmem_cache_free(self.handle_cache, int(handles[i]))
                    self.failed += 1
                    continue
                self.current[cls.index] = row
            self.zs_inuse[row] += 1
            self.obj_zs.append(row)
            self.obj_handle.append(int(handles[i]))
            self.obj_live.append(True)
            stored += 1
        return stored

    def free(self, fraction: float) -> int:
        """zs_free() of a share of the live objects (every other one for a half)."""
        from memdesc.mm.memory import pick_fraction

        live = np.flatnonzero(np.array(self.obj_live, np.bool_))
        doomed = pick_fraction(live, fraction)
        handles = np.array([self.obj_handle[i] for i in doomed], np.uint64)
        self.k.slub.kmem_cache_free(self.handle_cache, handles)
        for i in doomed.tolist():
            self.obj_live[i] = False
            row = self.obj_zs[i]
            self.zs_inuse[row] -= 1
            if self.zs_inuse[row] == 0:
                cls = self.classes[self.zs_class[row]]
                free_zspage_nb(self.k.E, self.zs_pfns[row], cls.pages_per_zspage)
                self.k.slub.kmem_cache_free(self.zspage_cache, self.zs_obj[row])
                self.live_zs.discard(row)
                if self.current.get(cls.index) == row:
                    del self.current[cls.index]
        return int(doomed.size)

    def observe(self) -> dict[str, object]:
        rows = sorted(self.live_zs, key=lambda r: self.zs_seq[r])
        if rows:
            pfns = np.stack([self.zs_pfns[r] for r in rows])
            nrs = np.array([self.classes[self.zs_class[r]].pages_per_zspage for r in rows])
            objs = np.array([self.zs_obj[r] for r in rows], np.uint64)
            seqs = np.array([self.zs_seq[r] for r in rows], np.int64)
            h, pages, right = readback_zspages_nb(self.k.E, pfns, nrs, objs, seqs, self.pool_id)
        else:
            h, pages, right = 0, 0, 0
        return {"objects": int(sum(self.obj_live)), "zspages": len(rows), "pages": int(pages),
                "pages_with_right_data": int(right), "digest": f"{int(h):016x}"}
