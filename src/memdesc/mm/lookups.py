"""Kernel lookups as counted operations (memdesc.mm.access): page_zone(), page_to_nid(),
page_folio(), folio_page(), a page-flag test, the page-table walk and the page-cache lookup.

Each entry point (``*_e``, numba, on the environment tuple E of memdesc.mm.memdesc_alloc) is
one operation of its OP_CLASSES row, with the loads the stage's kernel does, in order:

* page_zone()/page_to_nid() mirror ``memdesc stages``' rule: page->flags while the layout has
  a flags word (v6.18, folio, dynamic, page32: 1 load); from page16 on the memdesc word (a
  pointer) then the descriptor's memdesc_flags_t (a dependent load: chain 2), the Misc
  word's own bits (1 load), or for a free page the PFN-indexed table (2 loads, chain 1).
* page_folio(): compound_head (a pointer only on a tail page) at the overlay stages, the
  memdesc word from ``dynamic`` on (memdesc.mm.folio.page_folio()).
* folio_page(): &folio->page + n at the overlay stages (no load), pfn_to_page(folio->pfn +
  n) after (one load).
* a page-flag test: PF_HEAD policy, PageFoo(page) = test_bit(PG_foo, &page_folio(page)->flags).
* pt_walk: follow_page_pte() of one address: the PGD, PUD and PMD entries (each a pointer
  computed from the previous one), then pte_offset_map_lock() (include/linux/mm.h ->
  __pte_offset_map_lock(), mm/pgtable-generic.c): pte_lockptr() = ptlock_ptr(page_ptdesc(
  pmd_page(pmdval))) and spin_lock() of that ptdesc's ``ptl`` (split PTE ptlocks; on x86-64
  without lockdep ALLOC_SPLIT_PTLOCKS is false, so the spinlock is embedded in the ptdesc:
  ptl @40, mm/pgtable.py), the pmd_same() recheck of the PMD entry, the PTE entry, then
  page_folio() of the mapped page (its address is computed from the PTE) and, at the end
  (pte_unmap_unlock()), spin_unlock(). page_ptdesc() is a cast while ptdesc overlays struct
  page (v6.18, folio: the lock is in the PTE table page's own struct page, ``private``'s
  word) and the memdesc word of that page once ptdesc is separate (``ptdesc-first`` on: one
  more dependent load, page -> memdesc word -> ptdesc). spin_lock() is queued_spin_lock()'s
  LOCK CMPXCHG (a load and a store of the lock word), spin_unlock() a store; the lock word
  is not changed in memory (lock and unlock cancel). A PMD-mapped page stops at the PMD:
  follow_pmd_mask() takes pmd_lock() instead, the ptlock of the PMD table's ptdesc
  (pmd_ptdesc(), split PMD ptlocks), and rereads the entry under it.
  Departure [I]: the chain counts ordering, not only addresses: the x86 locked instruction
  orders every later load after it, so the recheck and the PTE load (and what follows from
  them) are counted as dependent on the lock word's load (chain: PGD 1, PUD 2, PMD 3,
  [memdesc word 4,] ptl 4|5, PTE 5|6, page 6|7). The kernel's address dependence alone
  would give the PTE 4; in time the PTE load waits for the lock.
* pagecache_lookup: filemap_get_folio(): xa_load() from mapping->i_pages.xa_head down the
  xa_nodes to the entry, folio_try_get() and the reader's folio_put() (loads and stores of
  _refcount, dependent), and the reader's folio->index and folio->mapping checks.
  Departure [I]: the emulator keeps the xarray as an index array; the walk's nodes are the
  file's real radix_tree_node objects, picked by (level, index prefix), not laid out as the
  kernel's tree would be.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.mm.access_core import (
    ADDRNODE,
    KIND_DEP,
    KIND_PTR,
    KIND_STORE,
    NONODE,
    OP_FOLIO_PAGE,
    OP_PAGE_FLAG,
    OP_PAGE_FOLIO,
    OP_PAGE_TO_NID,
    OP_PAGE_ZONE,
    OP_PAGECACHE,
    OP_PT_WALK,
    acc,
    op_begin,
    op_end,
)
from memdesc.mm.folio import (
    F_FLAGS,
    F_INDEX,
    F_MAPPING,
    F_REFCOUNT,
    fget,
    fget32,
    folio_pfn,
    fset32,
    page_folio,
)
from memdesc.mm.ft_common import (
    C_BUDDY,
    C_F_FLAGS,
    C_F_MD,
    C_MISC,
    C_OFF_PBZ,
    C_W,
    ldm,
    lds,
)
from memdesc.mm.kmem import (
    PAGE_OFFSET,
    TAG_ANON,
    TAG_FILE,
    VMEMMAP_START,
    content_tag,
    kread,
)
from memdesc.mm.memdesc_alloc import (
    E_DATA,
    E_MEM,
    E_S,
    E_SLOT,
    E_SP,
    E_TAGS,
    SP_MEMDESC_OFF,
    SP_PAGE_BYTES,
    SP_T_PGTABLE,
    borrow,
    desc_separate,
)
from memdesc.mm.mm_types import NODES_PGSHIFT, ZONES_PGSHIFT
from memdesc.mm.mmzone import NR_ZONES
from memdesc.mm.pgtable import (
    PGDIR_SHIFT,
    PMD_SHIFT,
    PT_PTL,
    PTE_PFN_MASK,
    PTRS_PER_TABLE,
    PUD_SHIFT,
)

_PSE = np.uint64(1 << 7)
_DM = np.uint64(PAGE_OFFSET)
_VM = np.uint64(VMEMMAP_START)
#: struct xa_node: slots[] at byte 40; address_space: i_pages.xa_head at byte 16 [S: 6.18]
XA_SLOTS_OFF, XA_HEAD_OFF, XA_CHUNK_SHIFT = 40, 16, 6


@njit(cache=True)
def _nodezone(f):
    """Global zone index from node/zone bits (memdesc_nid()/memdesc_zonenum())."""
    return (np.int64(f >> np.uint64(NODES_PGSHIFT)) * NR_ZONES
            + np.int64((f >> np.uint64(ZONES_PGSHIFT)) & np.uint64(7)))


@njit(cache=True)
def zone_of_page(mem, S, pfn):
    """The global zone index the stage's page_zone() finds, counted as the kernel reads it
    (see the module doc). The descriptor load is counted at its address; the value returned
    is the same zone either way (the PFN table of free pages, which the allocator keeps for
    every page, read uncounted), so a bare MemMap without kernel memory (the trace replay)
    counts page_zone() as a kernel with descriptors would."""
    fl = S[C_F_FLAGS]
    if fl >= 0:
        return _nodezone(ldm(mem, S, pfn * S[C_W] + fl))
    i = pfn * S[C_W] + S[C_F_MD]
    w = mem[i]
    desc = w & ~np.uint64(15)
    acc(S, _VM + (np.uint64(i) << np.uint64(3)), KIND_PTR, NONODE, np.int64(desc))
    t = np.int64(w & np.uint64(15))
    if t == S[C_MISC]:
        return _nodezone(w)
    if t == S[C_BUDDY]:
        return np.int64(lds(S, S[C_OFF_PBZ] + (pfn >> 9)))
    acc(S, desc, 0, ADDRNODE, NONODE)                  # the descriptor's memdesc_flags_t
    return np.int64(S[S[C_OFF_PBZ] + (pfn >> 9)])


@njit(cache=True)
def page_zone_ms(mem, S, pfn):
    """Mirrors page_zone() on (mem, S): the global zone index (nid * NR_ZONES + type)."""
    op_begin(S, OP_PAGE_ZONE)
    gz = zone_of_page(mem, S, pfn)
    op_end(S)
    return gz


@njit(cache=True)
def page_to_nid_ms(mem, S, pfn):
    """Mirrors page_to_nid() on (mem, S)."""
    op_begin(S, OP_PAGE_TO_NID)
    nid = zone_of_page(mem, S, pfn) // NR_ZONES
    op_end(S)
    return nid


@njit(cache=True)
def page_zone_e(E, pfn):
    """page_zone_ms() on the environment tuple."""
    return page_zone_ms(E[E_MEM], E[E_S], pfn)


@njit(cache=True)
def page_to_nid_e(E, pfn):
    """page_to_nid_ms() on the environment tuple."""
    return page_to_nid_ms(E[E_MEM], E[E_S], pfn)


@njit(cache=True)
def page_folio_ms(mem, S, pfn):
    """Mirrors page_folio() on (mem, S), counted as memdesc.mm.folio.page_folio() counts it:
    compound_head (a pointer on a tail page) at the overlay stages, the memdesc word after.
    Returns the head page's or the descriptor's address (no type check: see
    folio.page_folio() for NULL on non-folio pages)."""
    op_begin(S, OP_PAGE_FOLIO)
    i = pfn * S[C_W]
    page = _VM + (np.uint64(i) << np.uint64(3))
    md = S[C_F_MD]
    if md >= 0:
        w = mem[i + md]
        f = w & ~np.uint64(15)
        acc(S, page + np.uint64(8 * md), KIND_PTR, NONODE, np.int64(f))
    else:
        head = mem[i + 1]
        f = head - np.uint64(1) if head & np.uint64(1) else page
        acc(S, page + np.uint64(8), KIND_PTR if head & np.uint64(1) else 0, ADDRNODE,
            np.int64(f))
    op_end(S)
    return f


@njit(cache=True)
def page_folio_e(E, pfn):
    """Mirrors page_folio() (memdesc.mm.folio.page_folio): the folio address or 0."""
    S = E[E_S]
    op_begin(S, OP_PAGE_FOLIO)
    f = page_folio(E, pfn)
    op_end(S)
    return f


@njit(cache=True)
def folio_page_e(E, folio, n):
    """Mirrors folio_page(folio, n): the PFN of the folio's n-th page."""
    S = E[E_S]
    op_begin(S, OP_FOLIO_PAGE)
    pfn = folio_pfn(E, folio) + n
    op_end(S)
    return pfn


@njit(cache=True)
def page_flag_test_e(E, pfn, bit):
    """Mirrors PageFoo(page) of a PF_HEAD flag (PageLRU, PageDirty ...): bit ``bit`` of the
    folio's flags; False for a page outside any folio (page_folio() NULL from ``dynamic``)."""
    S = E[E_S]
    op_begin(S, OP_PAGE_FLAG)
    f = page_folio(E, pfn)
    r = False
    if f != 0:
        r = (fget(E, f, F_FLAGS) >> np.uint64(bit)) & np.uint64(1) == 1
    op_end(S)
    return r


@njit(cache=True)
def _entry(E, table, idx):
    """Page-table entry ``idx`` of table page ``table`` (0 when it has no contents)."""
    slot = E[E_SLOT]
    if table < 0 or table >= slot.shape[0] or slot[table] < 0:
        return np.uint64(0)
    return E[E_DATA][np.int64(slot[table]) * 512 + idx]


@njit(cache=True)
def _count_entry(E, table, idx, level, page):
    """Count the load of entry ``idx`` of ``table``: a pointer, dependent on the previous
    level's entry (or on the lock: see the module doc); the last one names the struct page
    ``page`` (pfn_to_page(pte_pfn()))."""
    a = _DM + (np.uint64(table) << np.uint64(12)) + np.uint64(8 * idx)
    acc(E[E_S], a, KIND_PTR | (KIND_DEP if level > 1 else 0), NONODE, page)


@njit(cache=True)
def ptlock_addr(E, table):
    """ptlock_ptr(page_ptdesc(pfn_to_page(table))): the address of the split ptlock of page
    table page ``table``, ``&ptdesc->ptl`` (ALLOC_SPLIT_PTLOCKS false: embedded). Counts
    page_ptdesc()'s load of the memdesc word when ptdesc is separate (a pointer, dependent on
    the PMD entry that named the page); overlaying it is a cast of the struct page."""
    sp = E[E_SP]
    page = _VM + np.uint64(table) * np.uint64(sp[SP_PAGE_BYTES])
    if not desc_separate(E, sp[SP_T_PGTABLE]):
        return page + np.uint64(PT_PTL)
    a = page + np.uint64(sp[SP_MEMDESC_OFF])
    pt = kread(E[E_MEM], E[E_DATA], E[E_SLOT], a) & ~np.uint64(15)
    acc(E[E_S], a, KIND_PTR | KIND_DEP, NONODE, NONODE)
    return pt + np.uint64(PT_PTL)


@njit(cache=True)
def _spin_lock(E, table):
    """spin_lock(ptlock_ptr(...)) of table page ``table``: queued_spin_lock()'s LOCK CMPXCHG,
    a load (dependent on where the lock is; later loads wait for it) and a store."""
    ptl = ptlock_addr(E, table)
    S = E[E_S]
    acc(S, ptl, KIND_PTR | KIND_DEP, NONODE, NONODE)
    acc(S, ptl, KIND_STORE, NONODE, NONODE)
    return ptl


@njit(cache=True)
def _walk_pfn(E, pgd_pfn, va):
    """follow_page_pte()'s walk (follow_pmd_mask() for a huge PMD): (the PFN mapped at
    ``va`` or -1, the address of the ptlock taken or 0), counted as the module doc says."""
    table = pgd_pfn
    shifts = (PGDIR_SHIFT, PUD_SHIFT, PMD_SHIFT, 12)
    size = np.uint64(E[E_SP][SP_PAGE_BYTES])
    S = E[E_S]
    ptl = np.uint64(0)
    pmd_at = np.uint64(0)
    for level in range(1, 5):
        idx = np.int64((va >> np.uint64(shifts[level - 1])) & np.uint64(511))
        if level == 4:                    # pte_offset_map_lock(): the PTE table's ptlock,
            ptl = _spin_lock(E, table)    # then pmd_same(pmdval, pmdp_get_lockless(pmd))
            acc(S, pmd_at, KIND_DEP, NONODE, NONODE)
        e = _entry(E, table, idx)
        base = np.int64((e & np.uint64(PTE_PFN_MASK)) >> np.uint64(12))
        huge = level == 3 and e & _PSE != 0
        last = level == 4 or huge
        pfn = base
        if huge:
            pfn = base + np.int64((va >> np.uint64(12)) & np.uint64(PTRS_PER_TABLE - 1))
        page = np.int64(_VM + np.uint64(pfn) * size) if last and e != 0 else NONODE
        _count_entry(E, table, idx, level, NONODE if huge else page)
        if e == 0:
            return np.int64(-1), ptl
        if huge:                          # follow_pmd_mask(): pmd_lock(), pmdval = *pmd
            ptl = _spin_lock(E, table)
            acc(S, _DM + (np.uint64(table) << np.uint64(12)) + np.uint64(8 * idx),
                KIND_PTR | KIND_DEP, NONODE, page)
        if last:
            return pfn, ptl
        pmd_at = _DM + (np.uint64(table) << np.uint64(12)) + np.uint64(8 * idx)
        table = base
    return np.int64(-1), ptl


@njit(cache=True)
def pt_walk_te(TE, HE, pgd_pfn, va):
    """Mirrors follow_page_pte() (mm/gup.c) with pte_offset_map_lock() and
    pte_unmap_unlock(): (PFN mapped at ``va`` or -1, its folio or 0). The page tables (their
    pages, entries and ptdescs) are in ``TE``'s memory, the mapped page in ``HE``'s mem_map
    (the replay's arena and replayed memory: analysis/replay_pgtables.py; the same tuple in
    a scenario). A PFN outside ``HE``'s memory gets no page_folio(). Both state arrays must
    record into the same accounting block."""
    S = HE[E_S]
    op_begin(S, OP_PT_WALK)
    pfn, ptl = _walk_pfn(TE, pgd_pfn, va)
    folio = np.uint64(0)
    if 0 <= pfn < HE[E_MEM].shape[0] // S[C_W]:
        folio = page_folio(HE, pfn)      # its struct page's address came from the PTE
    if ptl != 0:
        acc(TE[E_S], ptl, KIND_STORE, NONODE, NONODE)     # spin_unlock()
    op_end(S)
    return pfn, folio


@njit(cache=True)
def pt_walk_e(E, pgd_pfn, va):
    """pt_walk_te() with the tables and the pages in one kernel's memory."""
    return pt_walk_te(E, E, pgd_pfn, va)


@njit(cache=True)
def _xa_height(size):
    h = 0
    while size > 1 and (size - 1) >> (XA_CHUNK_SHIFT * h):
        h += 1
    return h


@njit(cache=True)
def pagecache_lookup_at_e(E, xa_nodes, size, mapping, idx, order, f):
    """Mirrors filemap_get_folio(mapping, idx) (see the module doc) in an xarray of ``size``
    indices whose nodes are ``xa_nodes``, its entry at ``idx`` folio ``f`` (0: none, or a
    folio the caller does not know: no reference taken) of 2^``order`` pages."""
    S = E[E_S]
    op_begin(S, OP_PAGECACHE)
    acc(S, mapping + np.uint64(XA_HEAD_OFF), KIND_PTR, NONODE, NONODE)
    h = _xa_height(size)
    nn = xa_nodes.shape[0]
    for level in range(h - 1, order // XA_CHUNK_SHIFT - 1, -1):
        if nn == 0:
            break
        prefix = np.uint64(idx >> (XA_CHUNK_SHIFT * (level + 1)))
        node = xa_nodes[np.int64((prefix * np.uint64(0x9E3779B97F4A7C15) + np.uint64(level))
                                 % np.uint64(nn))]
        off = (idx >> (XA_CHUNK_SHIFT * level)) & 63
        acc(S, node + np.uint64(XA_SLOTS_OFF + 8 * off), KIND_PTR | KIND_DEP, NONODE,
            np.int64(f) if level == order // XA_CHUNK_SHIFT else NONODE)
    if f != 0:
        fset32(E, f, F_REFCOUNT, fget32(E, f, F_REFCOUNT) + 1)     # folio_try_get()
        fset32(E, f, F_REFCOUNT, fget32(E, f, F_REFCOUNT) - 1)     # the reader's folio_put()
    op_end(S)
    return f


@njit(cache=True)
def pagecache_lookup_e(E, index_map, xa_nodes, mapping, idx, order):
    """Mirrors filemap_get_folio(mapping, idx) (see the module doc): the folio or 0."""
    return pagecache_lookup_at_e(E, xa_nodes, index_map.shape[0], mapping, idx, order,
                                 index_map[idx])


@njit(cache=True)
def readback_file_e(E, index_map, xa_nodes, mapping, file_id, orders):
    """memdesc.mm.filemap.readback_file_nb() through counted page-cache lookups: per index one
    pagecache_lookup operation (filemap_get_folio(), then the reader's folio_test_uptodate(),
    folio->index and ->mapping, folio_pfn() + (index - folio->index)). ``orders[idx]`` is the
    order of the folio caching ``idx``."""
    E = borrow(E)
    S = E[E_S]
    h = np.uint64(0xCBF29CE484222325)
    pages = right = wrong_mapping = 0
    tags = E[E_TAGS]
    for idx in range(index_map.shape[0]):
        tag = np.uint64(0)
        op_begin(S, OP_PAGECACHE)
        f = pagecache_lookup_e(E, index_map, xa_nodes, mapping, idx, orders[idx])
        pfn = -1
        if f != 0:
            fget(E, f, F_FLAGS)                 # filemap_read(): folio_test_uptodate()
            first = np.int64(fget(E, f, F_INDEX))
            if idx == first and fget(E, f, F_MAPPING) != mapping:
                wrong_mapping += 1
            pfn = folio_pfn(E, f) + (idx - first)
        op_end(S)
        if pfn >= 0:
            tag = np.uint64(tags[pfn])
            pages += 1
            if tags[pfn] == content_tag(TAG_FILE, file_id, idx):
                right += 1
        h = (h ^ (tag + (np.uint64(idx) << np.uint64(32)))) * np.uint64(0x100000001B3)
    return h, pages, right, wrong_mapping


@njit(cache=True)
def readback_anon_e(E, pgd_pfn, va0, nr_pages, owner):
    """memdesc.mm.pgtable.readback_kernel() through counted page-table walks (one pt_walk
    operation per virtual page). Returns (digest, mapped, correct)."""
    E = borrow(E)
    h = np.uint64(0xCBF29CE484222325)
    mapped = correct = 0
    tags = E[E_TAGS]
    for k in range(nr_pages):
        va = va0 + (np.uint64(k) << np.uint64(12))
        pfn, _ = pt_walk_e(E, pgd_pfn, va)
        tag = np.uint64(0)
        if pfn >= 0:
            mapped += 1
            tag = np.uint64(tags[pfn])
            if tags[pfn] == content_tag(TAG_ANON, owner, va >> np.uint64(12)):
                correct += 1
        h = (h ^ (tag + (np.uint64(k) << np.uint64(32)))) * np.uint64(0x100000001B3)
    return h, mapped, correct
