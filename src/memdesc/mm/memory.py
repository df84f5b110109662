"""Anonymous memory of processes: faults, MADV_DONTNEED, fork and exit.

Mirrors mm/memory.c (do_anonymous_page(), __handle_mm_fault()'s table allocation,
zap_pte_range()/zap_huge_pmd(), free_pgtables()), mm/huge_memory.c
(do_huge_pmd_anonymous_page(): a PMD-mapped order-9 folio plus a deposited PTE table;
VM_FAULT_FALLBACK to small pages when the huge folio cannot be had) and the parts of
kernel/fork.c that allocate a process's kernel objects (task_struct, mm_struct with its PGD,
a VMA, an anon_vma with its chain, a vmalloc'd kernel stack).

Each process's anonymous memory is one VMA that grows upward from MMAP_BASE; a ``fault``
call maps 2^order-page folios one after another (order 9 = THP, PMD-mapped). The units
mapped are kept in small numpy arrays per process (virtual address, order, folio) so that
"free half" can unmap every other one, as MADV_DONTNEED of alternating ranges would.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

from memdesc.mm import gfp as _gfp
from memdesc.mm.folio import (
    folio_add_lru,
    folio_add_new_anon_rmap,
    folio_alloc_nb,
    folio_pfn,
    folio_put_refs,
    folio_remove_rmap,
    page_folio,
)
from memdesc.mm.kmem import BATCH, M_TOP, M_USED, TAG_ANON, WORDS_PER_PAGE, fill_tags
from memdesc.mm.lookups import readback_anon_e
from memdesc.mm.memdesc_alloc import (
    E_DATA,
    E_KMETA,
    E_SLOT,
    E_SP,
    E_TAGS,
    SP_T_ANON,
    borrow,
)
from memdesc.mm.pgtable import (
    _PAGE_PSE,
    GFP_PGTABLE_USER,
    HPAGE_PMD_ORDER,
    LEVEL_PMD,
    LEVEL_PTE,
    PGD_ALLOCATION_ORDER,
    PMD_ANON_HUGE,
    PMD_SHIFT,
    PT_GROW,
    PTE_ANON,
    PTRS_PER_TABLE,
    _entry_word,
    _walk,
    collect_tables_kernel,
    ensure_tables,
    pagetable_alloc_nb,
    pagetable_free_nb,
    pgtable_trans_huge_deposit,
    pgtable_trans_huge_withdraw,
    zap_kernel,
)
from memdesc.mm.slab import _GROW
from memdesc.stages import PAGE_SHIFT

#: Where each process's anonymous VMA starts: below the x86-64 mmap_base, 1 GiB aligned [I].
MMAP_BASE = 0x7F0000000000
#: THREAD_SIZE with KASAN off: 16 KiB, vmalloc'd (CONFIG_VMAP_STACK=y) [S + M: kernel-config].
THREAD_SIZE = 16 << 10
#: Object sizes of the per-process caches on the fixture machine [M: slabinfo objsize].
PROCESS_CACHES = {"task_struct": 5888, "mm_struct": 1600, "vm_area_struct": 192,
                  "anon_vma": 104, "anon_vma_chain": 64}
#: The THP fault gfp with defrag=madvise for a VMA without MADV_HUGEPAGE:
#: GFP_TRANSHUGE_LIGHT (no direct reclaim) [S: mm/huge_memory.c vma_thp_gfp_mask();
#: M: fixtures thp-settings "defrag: madvise"].
GFP_THP = _gfp.GFP_TRANSHUGE_LIGHT
GFP_ANON = _gfp.GFP_HIGHUSER_MOVABLE

# kernel statuses
F_DONE, F_GROW, F_FALLBACK = 0, 1, 2
_RESERVE_SLOTS = 32          # content-store room one fault may need (tables + slabs)


@njit(cache=True)
def anon_fault_nb(E, pgd, va0, order, pmd_mapped, anon_vma, owner, gfpflags, out, start):
    """Fault in ``out.shape[0]`` folios of 2^order pages at va0, va0 + 2^order pages, ...
    Mirrors __handle_mm_fault() (page tables first, __pud_alloc/__pmd_alloc/__pte_alloc) then
    do_anonymous_page() (vma_alloc_folio(), folio_add_new_anon_rmap(), set_ptes()) or
    do_huge_pmd_anonymous_page() (folio, then pte_alloc_one() for the deposit, set_pmd_at()).
    out[i] = folio address, 0 when the fault failed (VM_FAULT_OOM).
    Returns (i, F_DONE | F_GROW | F_FALLBACK); F_FALLBACK: a large folio could not be had,
    the caller maps unit i with small folios."""
    E = borrow(E)
    n = out.shape[0]
    t_anon = E[E_SP][SP_T_ANON]
    for i in range(start, n):
        meta = E[E_KMETA]
        if meta[M_TOP] + E[E_DATA].shape[0] // WORDS_PER_PAGE - meta[M_USED] < _RESERVE_SLOTS:
            return i, F_GROW
        va = va0 + (np.uint64(i) << np.uint64(order + PAGE_SHIFT))
        table = ensure_tables(E, pgd, va, LEVEL_PMD if pmd_mapped else LEVEL_PTE, 0)
        if table == PT_GROW:
            return i, F_GROW
        if table < 0:
            out[i] = 0
            continue
        folio = folio_alloc_nb(E, gfpflags, order, t_anon, 0)
        if folio == _GROW:
            return i, F_GROW
        if folio == 0:
            if order > 0:
                return i, F_FALLBACK
            out[i] = 0
            continue
        pfn = folio_pfn(E, folio)
        nr = np.int64(1) << order
        vpn = np.int64(va >> np.uint64(PAGE_SHIFT))
        slot, data = E[E_SLOT], E[E_DATA]
        if pmd_mapped:
            dep = pagetable_alloc_nb(E, GFP_PGTABLE_USER, 0, 0)
            if dep < 0:
                folio_put_refs(E, folio, 1)
                out[i] = 0
                continue
            slot, data = E[E_SLOT], E[E_DATA]
            folio_add_new_anon_rmap(E, folio, anon_vma, vpn, True)
            w = _entry_word(slot, table,
                            (va >> np.uint64(PMD_SHIFT)) & np.uint64(PTRS_PER_TABLE - 1))
            data[w] = (np.uint64(pfn) << np.uint64(PAGE_SHIFT)) | np.uint64(PMD_ANON_HUGE)
            pgtable_trans_huge_deposit(E, table, dep)
        else:
            folio_add_new_anon_rmap(E, folio, anon_vma, vpn, False)
            base = _entry_word(slot, table, (va >> np.uint64(PAGE_SHIFT))
                               & np.uint64(PTRS_PER_TABLE - 1))
            for k in range(nr):
                data[base + k] = (np.uint64(pfn + k) << np.uint64(PAGE_SHIFT)) | np.uint64(PTE_ANON)
        folio_add_lru(E, folio)         # folio_add_lru_vma() after the new anon rmap
        fill_tags(E[E_TAGS], pfn, nr, TAG_ANON, owner, vpn)
        out[i] = folio
    return n, F_DONE


@njit(cache=True)
def zap_units_nb(E, pgd, vas, orders, pmds, folios, which):
    """Unmap the units selected by ``which`` (MADV_DONTNEED / exit's unmap_vmas()): clear the
    entries (zap_pte_range()/zap_huge_pmd(), the latter withdrawing and freeing the deposited
    table), drop the rmap and the mapping's folio reference. Frees only. Returns the count."""
    E = borrow(E)
    out_pfns = np.zeros(512, np.int64)
    out_huge = np.zeros(512, np.bool_)
    done = 0
    for i in range(vas.shape[0]):
        if not which[i] or folios[i] == 0:
            continue
        nr = np.int64(1) << orders[i]
        slot, data = E[E_SLOT], E[E_DATA]
        cleared = zap_kernel(slot, data, pgd, vas[i], nr, out_pfns, out_huge)
        if cleared == 0:
            raise AssertionError("zap: unit was not mapped")
        folio = folios[i]
        if page_folio(E, out_pfns[0]) != folio:
            raise AssertionError("zap: the page table maps another folio")
        if pmds[i]:
            pmd_table, _ = _walk(E[E_SLOT], E[E_DATA], pgd, vas[i], LEVEL_PMD)
            pagetable_free_nb(E, pgtable_trans_huge_withdraw(E, pmd_table))
        folio_remove_rmap(E, folio, pmds[i])
        folio_put_refs(E, folio, 1)
        folios[i] = 0
        done += 1
    return done


@njit(cache=True)
def free_pgtables_nb(E, pgd):
    """free_pgtables() over the whole user range, then pgd_free(). Frees only."""
    E = borrow(E)
    out_pfns = np.zeros(1 << 16, np.int64)
    out_level = np.zeros(1 << 16, np.int8)
    n = collect_tables_kernel(E[E_SLOT], E[E_DATA], pgd, out_pfns, out_level)
    if n < 0:
        raise AssertionError("free_pgtables: a huge mapping is still present")
    for k in range(n):
        pagetable_free_nb(E, out_pfns[k])
    pagetable_free_nb(E, pgd)
    return n


@njit(cache=True)
def count_tables_nb(slot, data, pgd):
    """Page-table pages below the PGD (mm_pgtables_bytes() / PAGE_SIZE, minus the PGD)."""
    n = 0
    pbase = _entry_word(slot, pgd, 0)
    for a in range(PTRS_PER_TABLE):
        pe = data[pbase + a]
        if pe == 0:
            continue
        n += 1
        pud = np.int64((pe >> np.uint64(PAGE_SHIFT)) & np.uint64((1 << 40) - 1))
        ubase = _entry_word(slot, pud, 0)
        for b in range(PTRS_PER_TABLE):
            ue = data[ubase + b]
            if ue == 0:
                continue
            n += 1
            pmd = np.int64((ue >> np.uint64(PAGE_SHIFT)) & np.uint64((1 << 40) - 1))
            mbase = _entry_word(slot, pmd, 0)
            for c in range(PTRS_PER_TABLE):
                me = data[mbase + c]
                if me != 0 and not (me & np.uint64(_PAGE_PSE)):
                    n += 1
    return n


@dataclass
class Process:
    """A process's memory: PGD, one anonymous VMA, its kernel objects, the mapped units."""

    name: str
    pid: int
    pgd: int
    objects: dict[str, int]
    stack: object                 # vmalloc.VmArea of the kernel stack
    end: int = MMAP_BASE          # end of the VMA so far
    vas: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    orders: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pmds: np.ndarray = field(default_factory=lambda: np.zeros(0, np.bool_))
    folios: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    failed: int = 0

    def add_units(self, vas, orders, pmds, folios) -> None:
        self.vas = np.concatenate([self.vas, vas.astype(np.uint64)])
        self.orders = np.concatenate([self.orders, orders.astype(np.int64)])
        self.pmds = np.concatenate([self.pmds, pmds.astype(np.bool_)])
        self.folios = np.concatenate([self.folios, folios.astype(np.uint64)])

    @property
    def mapped(self) -> np.ndarray:
        return self.folios != 0


class AnonMemory:
    """All processes of one kernel (kernel/fork.c + mm/memory.c as the scenario drives them)."""

    def __init__(self, kernel, vmalloc):
        self.k = kernel
        self.vmalloc = vmalloc
        self.procs: dict[str, Process] = {}
        self._next_pid = 1
        slub = kernel.slub
        self.caches = {name: slub.by_name.get(name) or slub.kmem_cache_create(
            name, size, flags=0) for name, size in PROCESS_CACHES.items()}

    # ---- fork / exit -------------------------------------------------------------------
    def fork(self, name: str) -> Process | None:
        """copy_process() + mm_init(): task_struct, mm_struct and its PGD (pgd_alloc(), order
        PGD_ALLOCATION_ORDER with PTI), the VMA, anon_vma + anon_vma_chain, a vmalloc'd
        kernel stack. None (everything undone) when an allocation fails, as fork() fails."""
        if name in self.procs:
            raise ValueError(f"process {name!r} exists")
        slub = self.k.slub
        got: dict[str, int] = {}
        for cname, kc in self.caches.items():
            addr = slub.kmem_cache_alloc(kc, _gfp.GFP_KERNEL)
            if addr == 0:
                self._undo(got, None, -1)
                return None
            got[cname] = addr
        stack = self.vmalloc.vmalloc(THREAD_SIZE, _gfp.GFP_KERNEL, tag=0)
        if stack is None:
            self._undo(got, None, -1)
            return None
        while True:
            pgd = int(pagetable_alloc_nb(self.k.E, GFP_PGTABLE_USER, PGD_ALLOCATION_ORDER, 0))
            if pgd != PT_GROW:
                break
            self.k.grow()
        if pgd < 0:
            self._undo(got, stack, -1)
            return None
        p = Process(name, self._next_pid, pgd, got, stack)
        self._next_pid += 1
        self.procs[name] = p
        return p

    def _undo(self, got: dict[str, int], stack, pgd: int) -> None:
        for cname, addr in got.items():
            self.k.slub.kmem_cache_free(self.caches[cname], addr)
        if stack is not None:
            self.vmalloc.vfree(stack)
        if pgd >= 0:
            pagetable_free_nb(self.k.E, pgd)

    def exit(self, name: str) -> None:
        """exit_mmap(): unmap everything, free_pgtables(), pgd_free(), then the objects."""
        p = self.procs.pop(name)
        zap_units_nb(self.k.E, p.pgd, p.vas, p.orders, p.pmds, p.folios,
                     np.ones(p.vas.shape[0], np.bool_))
        free_pgtables_nb(self.k.E, p.pgd)
        self._undo(p.objects, p.stack, -1)

    # ---- faults and unmapping ----------------------------------------------------------
    def fault(self, p: Process, nr_pages: int, order: int) -> dict[str, int]:
        """Touch ``nr_pages`` more pages at the end of the VMA in folios of ``order``
        (9: THP), falling back to order 0 where a large folio fails. Returns the folios of
        ``order`` mapped, the units that fell back and the folios that failed (units of
        ``order``, or order-0 folios of a fallback unit)."""
        size = 1 << order
        start = (p.end + (size << PAGE_SHIFT) - 1) & ~((size << PAGE_SHIFT) - 1)
        units = -(-nr_pages // size)
        anon_vma = p.objects["anon_vma"]
        pmd = order == HPAGE_PMD_ORDER
        gfpflags = GFP_THP if pmd else GFP_ANON
        out = np.zeros(units, np.uint64)
        i = 0
        fallback_units: list[int] = []
        while i < units:                        # in BATCHes: Ctrl-C between them
            i, status = anon_fault_nb(self.k.E, p.pgd, np.uint64(start), order, pmd, anon_vma,
                                      p.pid, gfpflags, out[:i + BATCH], i)
            if status == F_GROW:
                self.k.grow()
            elif status == F_FALLBACK:
                fallback_units.append(i)
                i += 1
        vas = np.uint64(start) + (np.arange(units, dtype=np.uint64) << np.uint64(order + 12))
        keep = np.ones(units, np.bool_)
        keep[fallback_units] = False
        p.add_units(vas[keep], np.full(int(keep.sum()), order), np.full(int(keep.sum()), pmd),
                    out[keep])
        small_failed = 0
        for u in fallback_units:                 # VM_FAULT_FALLBACK: small folios
            small = np.zeros(size, np.uint64)
            j = 0
            while j < size:
                j, status = anon_fault_nb(self.k.E, p.pgd, np.uint64(vas[u]), 0, False, anon_vma,
                                          p.pid, GFP_ANON, small, j)
                if status == F_GROW:
                    self.k.grow()
            p.add_units(np.uint64(vas[u]) + (np.arange(size, dtype=np.uint64) << np.uint64(12)),
                        np.zeros(size), np.zeros(size, np.bool_), small)
            small_failed += int((small == 0).sum())
        p.end = start + (units * size << PAGE_SHIFT)
        failed = int((out[keep] == 0).sum()) + small_failed
        p.failed += failed
        return {"folios": int((out[keep] != 0).sum()), "fallback": len(fallback_units),
                "failed": failed}

    def madvise_dontneed(self, p: Process, fraction: float) -> int:
        """Unmap ``fraction`` of the process's mapped units: every other one for 1/2, the
        oldest first otherwise (alternating MADV_DONTNEED ranges; page tables stay)."""
        idx = np.flatnonzero(p.mapped)
        which = np.zeros(p.vas.shape[0], np.bool_)
        which[pick_fraction(idx, fraction)] = True
        return int(zap_units_nb(self.k.E, p.pgd, p.vas, p.orders, p.pmds, p.folios, which))

    # ---- what a user could observe -----------------------------------------------------
    def observe(self, p: Process) -> dict[str, object]:
        """Read the process's memory back through its page tables (a digest of virtual page
        -> data), and how many pages hold the data their address says."""
        nr = (p.end - MMAP_BASE) >> PAGE_SHIFT
        h, mapped, correct = readback_anon_e(self.k.E, p.pgd, np.uint64(MMAP_BASE), nr, p.pid)
        orders = np.bincount(p.orders[p.mapped], minlength=11)
        return {"digest": f"{int(h):016x}", "mapped_pages": int(mapped),
                "pages_with_right_data": int(correct),
                "folio_orders": [int(x) for x in orders],
                "page_tables": int(count_tables_nb(self.k.E[E_SLOT], self.k.E[E_DATA], p.pgd))}


def pick_fraction(idx: np.ndarray, fraction: float) -> np.ndarray:
    """Which of the candidate indices ``idx`` a "free FRACTION" frees: every other one for
    1/2 (a patchwork, as reclaim or MADV_DONTNEED of alternating ranges leaves), all for 1,
    otherwise the first ``fraction`` of them (oldest first)."""
    if fraction >= 1.0:
        return idx
    if fraction == 0.5:
        return idx[::2]
    return idx[: int(round(len(idx) * fraction))]
