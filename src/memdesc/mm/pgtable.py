"""x86-64 4-level page tables in emulated memory: walks, map/unmap of a range, freeing tables.

Page-table pages are real emulated pages: allocated through ``pagetable_alloc()`` (a ptdesc,
overlaying struct page at v6.18/folio and a dynamically allocated descriptor of memdesc type
PageTable once ptdesc is separate, ``ptdesc-first`` on; see page_desc.py) and given backing contents
(kmem.PageContents), so every entry a walk reads is a 64-bit word in that page, as on the
real machine. The walks are numba kernels over those words; when a level is missing the
kernel returns to Python, which allocates the table (``__pte_alloc()``/``__pmd_alloc()``/
``__pud_alloc()`` in mm/memory.c) and resumes. p4d is folded into the pgd (4-level paging,
CONFIG_PGTABLE_LEVELS=5 but no la57 on the fixture machine [M]).

Constants: arch/x86/include/asm/pgtable_types.h and pgtable_64_types.h [S].
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.mm import gfp as _gfp
from memdesc.mm.kmem import (
    M_TOP,
    M_USED,
    TAG_ANON,
    VMEMMAP_START,
    WORDS_PER_PAGE,
    attach_nb,
    content_tag,
    detach_nb,
    kread,
    kread32,
    kwrite,
    kwrite32,
)
from memdesc.mm.memdesc_alloc import (
    E_DATA,
    E_FSTACK,
    E_KMETA,
    E_MEM,
    E_SLOT,
    E_SP,
    E_STATS,
    SP_C_PTDESC,
    SP_DYNAMIC,
    SP_PAGE_BYTES,
    SP_T_PGTABLE,
    ST_IN_FREE,
    desc_separate,
    page_desc,
)
from memdesc.mm.mm_types import PG_head
from memdesc.mm.page_desc import memdesc_alloc_node_nb, memdesc_free_nb, page_address_of
from memdesc.mm.slub import _GROW
from memdesc.stages import PAGE_SHIFT

PTRS_PER_TABLE = 512
PMD_SHIFT = 21
PUD_SHIFT = 30
PGDIR_SHIFT = 39
PMD_SIZE = 1 << PMD_SHIFT
PUD_SIZE = 1 << PUD_SHIFT
PGDIR_SIZE = 1 << PGDIR_SHIFT
HPAGE_PMD_ORDER = PMD_SHIFT - PAGE_SHIFT
#: Top of the user address space with 4-level paging (TASK_SIZE_MAX) [S].
TASK_SIZE = 0x00007FFFFFFFF000
#: PGD_ALLOCATION_ORDER is 1 with CONFIG_MITIGATION_PAGE_TABLE_ISOLATION (kernel + user PGD)
#: [S: arch/x86/include/asm/pgalloc.h; M: kernel-config has PTI=y].
PGD_ALLOCATION_ORDER = 1

_PAGE_PRESENT = 1 << 0
_PAGE_RW = 1 << 1
_PAGE_USER = 1 << 2
_PAGE_ACCESSED = 1 << 5
_PAGE_DIRTY = 1 << 6
_PAGE_PSE = 1 << 7
_PAGE_NX = 1 << 63
#: PTE_PFN_MASK: physical address bits 12..51 (__PHYSICAL_MASK_SHIFT 52) [S].
PTE_PFN_MASK = ((1 << 52) - 1) & ~((1 << PAGE_SHIFT) - 1)
#: _PAGE_TABLE: what pmd_populate()/pud_populate() write above a table [S].
_PAGE_TABLE = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY
#: A written anonymous page: PAGE_SHARED_EXEC minus exec, dirty and young (mk_pte + pte_mkdirty).
PTE_ANON = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_NX
PMD_ANON_HUGE = PTE_ANON | _PAGE_PSE

# Levels as the walk kernels report a missing table.
LEVEL_PUD, LEVEL_PMD, LEVEL_PTE = 1, 2, 3


def pgd_index(va: int) -> int:
    return (va >> PGDIR_SHIFT) & (PTRS_PER_TABLE - 1)


def pud_index(va: int) -> int:
    return (va >> PUD_SHIFT) & (PTRS_PER_TABLE - 1)


def pmd_index(va: int) -> int:
    return (va >> PMD_SHIFT) & (PTRS_PER_TABLE - 1)


def pte_index(va: int) -> int:
    return (va >> PAGE_SHIFT) & (PTRS_PER_TABLE - 1)


@njit(cache=True)
def _entry_word(slot_of_pfn, table_pfn, index):
    """Index in PageContents.data of entry ``index`` of the table page ``table_pfn``."""
    slot = slot_of_pfn[table_pfn]
    if slot < 0:
        return -1
    return np.int64(slot) * WORDS_PER_PAGE + index


@njit(cache=True)
def _walk(slot_of_pfn, data, pgd_pfn, va, want):
    """Walk to the table that holds ``va``'s entry at depth ``want`` (LEVEL_PMD: the PMD
    table, LEVEL_PTE: the PTE table). Returns (table_pfn, missing_level): table_pfn >= 0 when
    found; otherwise the level whose table is absent (its parent entry is none), or -level
    when a huge PMD is in the way of a PTE walk."""
    shifts = (PGDIR_SHIFT, PUD_SHIFT, PMD_SHIFT)
    table = pgd_pfn
    for level in range(1, want + 1):
        idx = (va >> shifts[level - 1]) & (PTRS_PER_TABLE - 1)
        w = _entry_word(slot_of_pfn, table, idx)
        e = data[w]
        if e == 0:
            return -1, level
        if level == LEVEL_PTE and (e & np.uint64(_PAGE_PSE)):
            return -1, -level
        table = np.int64((e & np.uint64(PTE_PFN_MASK)) >> np.uint64(PAGE_SHIFT))
    return table, 0


@njit(cache=True)
def map_pages_kernel(slot_of_pfn, data, pgd_pfn, va0, pfns, order, start, pmd_mapped):
    """Install mappings for folios ``pfns[start:]`` of 2^order pages, the i-th at
    va0 + i << (order + PAGE_SHIFT). PTE-mapped unless ``pmd_mapped`` (order 9: one huge PMD).
    Mirrors set_pte_range()/set_pmd_at() after the walk of handle_mm_fault().

    Returns (next_index, missing_level): missing_level 0 when all were mapped; otherwise the
    table level Python must allocate before resuming at next_index.
    """
    n = pfns.shape[0]
    for i in range(start, n):
        va = va0 + (np.uint64(i) << np.uint64(order + PAGE_SHIFT))
        if pmd_mapped:
            table, missing = _walk(slot_of_pfn, data, pgd_pfn, va, LEVEL_PMD)
            if missing:
                return i, missing
            w = _entry_word(slot_of_pfn, table, (va >> PMD_SHIFT) & (PTRS_PER_TABLE - 1))
            data[w] = (np.uint64(pfns[i]) << np.uint64(PAGE_SHIFT)) | np.uint64(PMD_ANON_HUGE)
            continue
        table, missing = _walk(slot_of_pfn, data, pgd_pfn, va, LEVEL_PTE)
        if missing:
            return i, missing
        base = _entry_word(slot_of_pfn, table, (va >> PAGE_SHIFT) & (PTRS_PER_TABLE - 1))
        # a 2^order folio below PMD size never crosses a PTE table (it is naturally aligned)
        for j in range(1 << order):
            data[base + j] = (np.uint64(pfns[i] + j) << np.uint64(PAGE_SHIFT)) | np.uint64(
                PTE_ANON)
    return n, 0


@njit(cache=True)
def zap_kernel(slot_of_pfn, data, pgd_pfn, va0, nr_pages, out_pfns, out_huge):
    """Clear the leaf entries covering [va0, va0 + nr_pages pages). Mirrors zap_pte_range()/
    zap_huge_pmd() of mm/memory.c for MADV_DONTNEED: tables stay. Each cleared mapping's PFN
    goes to ``out_pfns`` (a huge PMD counts once, flagged in ``out_huge``). Returns the
    number of cleared mappings."""
    n = 0
    va = va0
    end = va0 + (np.uint64(nr_pages) << np.uint64(PAGE_SHIFT))
    while va < end:
        table, missing = _walk(slot_of_pfn, data, pgd_pfn, va, LEVEL_PMD)
        if missing:
            # no PMD table: skip to the next PUD (or PGD) boundary
            span = np.uint64(PUD_SIZE) if missing == LEVEL_PMD else np.uint64(PGDIR_SIZE)
            va = (va + span) & ~(span - np.uint64(1))
            continue
        w = _entry_word(slot_of_pfn, table, (va >> PMD_SHIFT) & (PTRS_PER_TABLE - 1))
        e = data[w]
        nxt = (va + np.uint64(PMD_SIZE)) & ~np.uint64(PMD_SIZE - 1)
        if e == 0:
            va = nxt
            continue
        if e & np.uint64(_PAGE_PSE):
            data[w] = 0
            out_pfns[n] = np.int64((e & np.uint64(PTE_PFN_MASK)) >> np.uint64(PAGE_SHIFT))
            out_huge[n] = True
            n += 1
            va = nxt
            continue
        pte_pfn = np.int64((e & np.uint64(PTE_PFN_MASK)) >> np.uint64(PAGE_SHIFT))
        stop = min(nxt, end)
        base = _entry_word(slot_of_pfn, pte_pfn, 0)
        while va < stop:
            k = np.int64((va >> np.uint64(PAGE_SHIFT)) & np.uint64(PTRS_PER_TABLE - 1))
            pe = data[base + k]
            if pe != 0:
                data[base + k] = 0
                out_pfns[n] = np.int64((pe & np.uint64(PTE_PFN_MASK)) >> np.uint64(PAGE_SHIFT))
                out_huge[n] = False
                n += 1
            va += np.uint64(1 << PAGE_SHIFT)
    return n


@njit(cache=True)
def collect_tables_kernel(slot_of_pfn, data, pgd_pfn, out_pfns, out_level):
    """Every table page below the PGD, deepest first (PTE tables, then PMD, then PUD), and
    clear the entries pointing at them. Mirrors free_pgd_range() over the whole user range
    at exit (free_pgtables()); the caller frees the pages (pagetable_free()). Leaves must
    have been zapped first. Returns the count."""
    n = 0
    pgd_base = _entry_word(slot_of_pfn, pgd_pfn, 0)
    for a in range(PTRS_PER_TABLE):
        pe = data[pgd_base + a]
        if pe == 0:
            continue
        pud = np.int64((pe & np.uint64(PTE_PFN_MASK)) >> np.uint64(PAGE_SHIFT))
        pud_base = _entry_word(slot_of_pfn, pud, 0)
        for b in range(PTRS_PER_TABLE):
            ue = data[pud_base + b]
            if ue == 0:
                continue
            pmd = np.int64((ue & np.uint64(PTE_PFN_MASK)) >> np.uint64(PAGE_SHIFT))
            pmd_base = _entry_word(slot_of_pfn, pmd, 0)
            for c in range(PTRS_PER_TABLE):
                me = data[pmd_base + c]
                if me == 0:
                    continue
                if me & np.uint64(_PAGE_PSE):
                    return -1          # a huge mapping is still there: zap first
                out_pfns[n] = np.int64((me & np.uint64(PTE_PFN_MASK)) >> np.uint64(PAGE_SHIFT))
                out_level[n] = LEVEL_PTE
                n += 1
                data[pmd_base + c] = 0
            out_pfns[n] = pmd
            out_level[n] = LEVEL_PMD
            n += 1
            data[pud_base + b] = 0
        out_pfns[n] = pud
        out_level[n] = LEVEL_PUD
        n += 1
        data[pgd_base + a] = 0
    return n


@njit(cache=True)
def readback_kernel(slot_of_pfn, data, tags, pgd_pfn, va0, nr_pages, owner):
    """Walk [va0, va0 + nr_pages) through the page tables and fold (virtual page, content
    tag of the mapped PFN) into a digest; unmapped pages fold as tag 0. Also count mapped
    pages and how many hold the data their address says (tag == content_tag(ANON, owner,
    vpn)). Returns (digest, mapped, correct)."""
    h = np.uint64(0xCBF29CE484222325)
    mapped = 0
    correct = 0
    for k in range(nr_pages):
        va = va0 + (np.uint64(k) << np.uint64(PAGE_SHIFT))
        table, missing = _walk(slot_of_pfn, data, pgd_pfn, va, LEVEL_PMD)
        pfn = np.int64(-1)
        if missing == 0:
            e = data[_entry_word(slot_of_pfn, table, (va >> PMD_SHIFT) & (PTRS_PER_TABLE - 1))]
            if e & np.uint64(_PAGE_PSE):
                pfn = np.int64((e & np.uint64(PTE_PFN_MASK)) >> np.uint64(PAGE_SHIFT)) + np.int64(
                    (va >> np.uint64(PAGE_SHIFT)) & np.uint64(PTRS_PER_TABLE - 1))
            elif e != 0:
                pt = np.int64((e & np.uint64(PTE_PFN_MASK)) >> np.uint64(PAGE_SHIFT))
                pe = data[_entry_word(slot_of_pfn, pt, (va >> PAGE_SHIFT) & (PTRS_PER_TABLE - 1))]
                if pe != 0:
                    pfn = np.int64((pe & np.uint64(PTE_PFN_MASK)) >> np.uint64(PAGE_SHIFT))
        tag = np.uint64(0)
        if pfn >= 0:
            mapped += 1
            tag = np.uint64(tags[pfn])
            vpn = va >> np.uint64(PAGE_SHIFT)
            if tags[pfn] == content_tag(TAG_ANON, owner, vpn):
                correct += 1
        h = (h ^ (tag + (np.uint64(k) << np.uint64(32)))) * np.uint64(0x100000001B3)
    return h, mapped, correct


# ---- page-table pages: ptdesc allocation ----------------------------------------------------
#
# struct ptdesc [M: fixtures/btf/pahole/ptdesc.txt]: pt_flags @0, pt_list @8,
# pmd_huge_pte @16, __page_mapping @24, pt_index @32, ptl @40, __page_type @48. As a dynamic
# descriptor it records its page in __page_mapping and its order in the upper half of
# _pt_pad_2 (memdesc_alloc.DESC_PFN_ORDER) [I].
PT_LIST = 8
PMD_HUGE_PTE = 16
PT_PFN = 24
PT_ORDER = 44
PT_PAGE_TYPE = 48
#: ptdesc->ptl: the split ptlock, embedded (ALLOC_SPLIT_PTLOCKS false on x86-64 without
#: lockdep: sizeof(spinlock_t) 4 <= sizeof(long)) [S: include/linux/mm_types.h, mm.h]
PT_PTL = 40
PGTY_TABLE = 0xF2
#: GFP_PGTABLE_USER = GFP_KERNEL_ACCOUNT | __GFP_ZERO [S: include/asm-generic/pgalloc.h].
GFP_PGTABLE_USER = _gfp.GFP_KERNEL_ACCOUNT | _gfp.__GFP_ZERO
PT_FAIL = -1
PT_GROW = -2


@njit(cache=True)
def ptdesc_of(E, pfn):
    """page_ptdesc(pfn_to_page(pfn)): the struct page itself while ptdesc overlays struct
    page (v6.18, folio), the descriptor the memdesc word points to once it is separate
    (``ptdesc-first`` on)."""
    return page_desc(E, pfn, E[E_SP][SP_T_PGTABLE])


@njit(cache=True)
def pagetable_alloc_nb(E, gfpflags, order, nid):
    """pagetable_alloc() + pagetable_ctor(): a zeroed page-table page through
    memdesc_alloc_node() (page_desc.py: a ptdesc from its cache first once ptdesc is
    separate, freed again if the page cannot be had). Separate: the ptdesc keeps
    __page_type = PGTY_table and pmd_huge_pte = NULL (zeroed); overlaying: the struct page
    does (__pagetable_ctor(), pmd_ptlock_init()). While struct page is 64 bytes
    (``ptdesc-first``, ``ptdesc-slab``) the page keeps PGTY_table too, so PageTable() still
    answers from the page [I: the transition series keep page_type until the page shrinks].
    Returns the PFN, PT_FAIL or PT_GROW (the content store is full)."""
    sp = E[E_SP]
    n = np.int64(1) << order
    meta = E[E_KMETA]
    if meta[M_TOP] + E[E_DATA].shape[0] // WORDS_PER_PAGE - meta[M_USED] < n + 2:
        return PT_GROW
    pt, pfn = memdesc_alloc_node_nb(E, SP_C_PTDESC, sp[SP_T_PGTABLE],
                                    gfpflags | _gfp.__GFP_COMP, order, nid)
    if pfn < 0:
        return PT_GROW if pt == _GROW else PT_FAIL
    m, d, s = E[E_MEM], E[E_DATA], E[E_SLOT]
    if not desc_separate(E, sp[SP_T_PGTABLE]):
        # pmd_ptlock_init(): pmd_huge_pte = NULL; pt_index and the split ptl cleared
        for off in (PMD_HUGE_PTE, 32, PT_PTL):
            kwrite(m, d, s, pt + np.uint64(off), np.uint64(0))
    kwrite32(m, d, s, pt + np.uint64(PT_PAGE_TYPE), np.uint32(PGTY_TABLE << 24))
    if not sp[SP_DYNAMIC]:
        kwrite32(m, d, s, page_address_of(E, pfn) + np.uint64(PT_PAGE_TYPE),
                 np.uint32(PGTY_TABLE << 24))
    attach_nb(E[E_SLOT], E[E_DATA], E[E_FSTACK], E[E_KMETA], pfn, n)
    return pfn


@njit(cache=True)
def pagetable_free_nb(E, pfn):
    """pagetable_dtor() + pagetable_free(): the page (its entries dropped) back to the
    allocator, then, once ptdesc is separate, the ptdesc to its cache. Frees only."""
    sp = E[E_SP]
    stats = E[E_STATS]
    stats[ST_IN_FREE] += 1
    t = sp[SP_T_PGTABLE]
    pt = ptdesc_of(E, pfn)
    m, d, s = E[E_MEM], E[E_DATA], E[E_SLOT]
    if desc_separate(E, t):
        order = np.int64(kread32(m, d, s, pt + np.uint64(PT_ORDER)))
    else:
        order = 0
        if kread(m, d, s, pt) & np.uint64(1 << PG_head):
            order = np.int64(kread(m, d, s, pt + np.uint64(64)) & np.uint64(0xFF))
    if not sp[SP_DYNAMIC]:                       # __ClearPageTable() on the struct page
        kwrite32(m, d, s, page_address_of(E, pfn) + np.uint64(PT_PAGE_TYPE),
                 np.uint32(0xFFFFFFFF))
    detach_nb(E[E_SLOT], E[E_DATA], E[E_FSTACK], E[E_KMETA], pfn, np.int64(1) << order)
    memdesc_free_nb(E, pt, t, pfn, order)
    stats[ST_IN_FREE] -= 1


@njit(cache=True)
def pgtable_trans_huge_deposit(E, pmd_table_pfn, pgtable_pfn):
    """Mirrors pgtable_trans_huge_deposit() (mm/pgtable-generic.c) with split PMD locks: a
    preallocated PTE table is queued on the PMD table's ptdesc->pmd_huge_pte (FIFO through
    pt_list), so a later split of the huge mapping cannot fail for memory."""
    head_pt = ptdesc_of(E, pmd_table_pfn)
    new = ptdesc_of(E, pgtable_pfn)
    m, d, s = E[E_MEM], E[E_DATA], E[E_SLOT]
    cur = kread(m, d, s, head_pt + np.uint64(PMD_HUGE_PTE))
    lst = new + np.uint64(PT_LIST)
    if cur == 0:
        kwrite(m, d, s, lst, lst)
        kwrite(m, d, s, lst + np.uint64(8), lst)
    else:
        head = cur + np.uint64(PT_LIST)                 # list_add(&new->lru, &cur->lru)
        nxt = kread(m, d, s, head)
        kwrite(m, d, s, lst, nxt)
        kwrite(m, d, s, lst + np.uint64(8), head)
        kwrite(m, d, s, nxt + np.uint64(8), lst)
        kwrite(m, d, s, head, lst)
    kwrite(m, d, s, head_pt + np.uint64(PMD_HUGE_PTE), new)


@njit(cache=True)
def pgtable_trans_huge_withdraw(E, pmd_table_pfn):
    """Mirrors pgtable_trans_huge_withdraw(): take a deposited table back; returns its PFN."""
    head_pt = ptdesc_of(E, pmd_table_pfn)
    m, d, s = E[E_MEM], E[E_DATA], E[E_SLOT]
    pg = kread(m, d, s, head_pt + np.uint64(PMD_HUGE_PTE))
    lst = pg + np.uint64(PT_LIST)
    nxt = kread(m, d, s, lst)
    if nxt == lst:
        kwrite(m, d, s, head_pt + np.uint64(PMD_HUGE_PTE), np.uint64(0))
    else:
        kwrite(m, d, s, head_pt + np.uint64(PMD_HUGE_PTE), nxt - np.uint64(PT_LIST))
        prev = kread(m, d, s, lst + np.uint64(8))
        kwrite(m, d, s, prev, nxt)
        kwrite(m, d, s, nxt + np.uint64(8), prev)
    sp = E[E_SP]
    if desc_separate(E, sp[SP_T_PGTABLE]):
        return np.int64(kread(m, d, s, pg + np.uint64(PT_PFN)))
    return np.int64((pg - np.uint64(VMEMMAP_START)) // np.uint64(sp[SP_PAGE_BYTES]))


@njit(cache=True)
def ensure_tables(E, pgd_pfn, va, depth, nid):
    """The allocation part of a fault's walk: __pud_alloc(), __pmd_alloc(), __pte_alloc()
    down to ``depth`` (LEVEL_PMD: the PMD table, LEVEL_PTE: the PTE table). Returns the table
    PFN at that depth, PT_FAIL or PT_GROW. Allocates at most one table per level."""
    slot, data = E[E_SLOT], E[E_DATA]
    while True:
        table, missing = _walk(slot, data, pgd_pfn, va, depth)
        if missing == 0:
            return table
        if missing < 0:
            return PT_FAIL
        new = pagetable_alloc_nb(E, GFP_PGTABLE_USER, 0, nid)
        if new < 0:
            return new
        slot, data = E[E_SLOT], E[E_DATA]
        parent = pgd_pfn
        shifts = (PGDIR_SHIFT, PUD_SHIFT, PMD_SHIFT)
        for lvl in range(1, missing):
            e = data[_entry_word(slot, parent, (va >> shifts[lvl - 1]) & (PTRS_PER_TABLE - 1))]
            parent = np.int64((e & np.uint64(PTE_PFN_MASK)) >> np.uint64(PAGE_SHIFT))
        w = _entry_word(slot, parent, (va >> shifts[missing - 1]) & (PTRS_PER_TABLE - 1))
        data[w] = (np.uint64(new) << np.uint64(PAGE_SHIFT)) | np.uint64(_PAGE_TABLE)


@njit(cache=True)
def set_ptes_kernel(slot_of_pfn, data, pgds, vas, pfns):
    """Write PTE_ANON entries mapping ``pfns[i]`` at ``vas[i]`` in the tables of ``pgds[i]``
    (the PTE tables must exist: ensure_tables()); a negative pgd or pfn is skipped. Mirrors
    the set_pte_at() that ends do_anonymous_page()/finish_fault() (no rmap, no counters).
    Returns the number of entries written."""
    n = 0
    for i in range(pgds.shape[0]):
        if pgds[i] < 0 or pfns[i] < 0:
            continue
        table, missing = _walk(slot_of_pfn, data, pgds[i], vas[i], LEVEL_PTE)
        if missing:
            continue
        w = _entry_word(slot_of_pfn, table, (vas[i] >> PAGE_SHIFT) & (PTRS_PER_TABLE - 1))
        data[w] = (np.uint64(pfns[i]) << np.uint64(PAGE_SHIFT)) | np.uint64(PTE_ANON)
        n += 1
    return n
