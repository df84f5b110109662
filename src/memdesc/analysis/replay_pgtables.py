"""Page tables and page-cache xarrays for the replay of a recording's lookups
(``memdesc record --lookups``; analysis/replay_lookups.py), so its pt_walk and
pagecache_lookup operations make real accesses, as the scenarios' do.

Built once per stage, at set-up, in the replay's kernel-memory arena (analysis/replay_arena.py:
the emulated Kernel whose slab serves the replay's descriptors and slab objects; its pages
are not the replayed memory, so the replay's placement stays the same at every stage; where
the replay has no arena -- an overlay stage of a replay without slab events -- in a small
Kernel of their own at the stage, TABLES_ARENA), before accounting starts (not counted):

* **page tables, one tree per pid** (the trace's ``pid`` column, common_pid): pgd_alloc()
  (pagetable_alloc() of order PGD_ALLOCATION_ORDER, as memdesc.mm.memory fork() does), then
  __pud_alloc()/__pmd_alloc()/__pte_alloc() (mm/pgtable.py ensure_tables()) for every user
  address the trace faults (page_fault_user, and page_fault_kernel on a user address: the
  kernel-mode fault of copy_to_user() and co. walks the current task's mm, the same pid's).
  The tables are real page-table pages of the stage: pagetable_alloc() pages with their
  ptdesc (the struct page while ptdesc overlays it, a descriptor from the ptdesc cache from
  ``ptdesc-first`` on), so the walk's ptlock is where the stage keeps it.
  Faults on kernel addresses (do_kern_addr_fault(): init_mm's tables, no ptlock) get no
  table: their pt_walk stays an operation without accesses (the recording of this machine
  has none).
* **what each PTE maps**: the page the trace says the fault mapped -- when the same pid's
  next fault, page-cache or order-0 movable mm_page_alloc event after the fault is an
  order-0 movable mm_page_alloc (do_anonymous_page() -> vma_alloc_folio(), or
  wp_page_copy(): the page the PTE then maps) or a mm_filemap_fault whose page the trace's
  page-cache events resolve (finish_fault() maps the faulting index's page). A fault
  followed by another fault, fault-around (mm_filemap_map_pages) or a read() of that pid
  first said nothing the replay can use: its PTE stays none (pte_none(): the walk reads
  all four levels and the ptlock, and finds no page). Departures [I]: the PTEs are written once,
  at set-up, so a fault's walk already finds the page its fault is about to map (the walk
  then ends at that page's struct page, as the set_pte_at()/rmap after the fault would
  touch it); the PFN is the trace's, not where a policy replay put that allocation; the
  tables never lose entries (no munmap/exit in the trace's events); fault-around
  (filemap_map_pages' ranges) maps no PTE.
* **xarray nodes, per mapping** (the trace's (dev, ino), as replay_lookups.resolve_pages
  keys it): an inode from "inode_cache" (mapping = its i_data) and the radix_tree_node
  objects (mm/filemap.py xa_nodes_needed()) of the union of the mapping's entries over the
  trace -- every folio the trace added (index, order) and every index it looked up (order
  0) -- with the height of its largest index, as memdesc.mm.filemap.PageCache builds a
  scenario file's. Departure [I]: the node set is the trace's union, built once; the kernel's
  tree grows and shrinks with the cache.

:class:`ReplayTables` holds them and gives each lookup row its payload (pgd, mapping,
order); :func:`side_table_op` runs one row (the replay's dispatcher,
replay_side._side_op, calls it).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.analysis.replay_arena import arena_kernel
from memdesc.errors import MemdescError
from memdesc.ingest.trace_events import EVENT_CODE, Trace
from memdesc.mm import access
from memdesc.mm import gfp as _gfp
from memdesc.mm.access_core import OP_PT_WALK
from memdesc.mm.filemap import PageCache, xa_nodes_needed
from memdesc.mm.folio import page_folio
from memdesc.mm.lookups import pagecache_lookup_at_e, pt_walk_te
from memdesc.mm.memdesc_alloc import E_DATA, E_SLOT
from memdesc.mm.pgtable import (
    GFP_PGTABLE_USER,
    LEVEL_PTE,
    PGD_ALLOCATION_ORDER,
    PMD_SHIFT,
    TASK_SIZE,
    ensure_tables,
    pagetable_alloc_nb,
    set_ptes_kernel,
)

FAULT_EVENTS = (EVENT_CODE["page_fault_user"], EVENT_CODE["page_fault_kernel"])


def fault_pages(tr: Trace, lk) -> np.ndarray:
    """Per trace event, the PFN a fault event maps (-1: unknown, or not a fault): the
    module doc's rule (the same pid's next fault, page-cache or movable order-0 allocation
    event is a movable order-0 mm_page_alloc, or a mm_filemap_fault with a resolved page).
    ``lk``: the trace's replay_lookups.Lookups (for the filemap_fault pages)."""
    ev = tr.events
    code = ev["event"]
    n = len(code)
    fault = np.isin(code, FAULT_EVENTS)
    alloc = ((code == EVENT_CODE["mm_page_alloc"]) & (ev["order"] == 0) & (ev["pfn"] >= 0)
             & ((ev["gfp"] & np.uint32(_gfp.__GFP_MOVABLE)) != 0))
    page = np.where(alloc, ev["pfn"], -1)
    ff = np.flatnonzero((code[lk.event] == EVENT_CODE["mm_filemap_fault"]) & (lk.pfn >= 0)
                        & (lk.mapping >= 0))
    page[lk.event[ff]] = lk.pfn[ff] + lk.sub[ff]
    filemap = np.isin(code, [c for n, c in EVENT_CODE.items() if n.startswith("mm_filemap")])
    cand = np.flatnonzero(fault | (page >= 0) | filemap)
    srt = cand[np.lexsort((cand, ev["pid"][cand]))]          # by pid, then trace order
    out = np.full(n, -1, np.int64)
    nxt_same = np.zeros(len(srt), bool)
    nxt_same[:-1] = ev["pid"][srt[1:]] == ev["pid"][srt[:-1]]
    is_f = fault[srt]
    take = is_f.copy()
    take[:-1] &= nxt_same[:-1]
    take[-1:] = False
    out[srt[take]] = page[srt[np.flatnonzero(take) + 1]]
    return out


def table_payload(tr: Trace, lk) -> dict[str, np.ndarray]:
    """The per-row payload of ``lk`` (replay_lookups.Lookups) the tables need, from the
    trace: ``pid`` (common_pid of the row's event), ``pte_pfn`` (a fault row: the PFN its
    PTE maps, :func:`fault_pages`; else -1) and ``order`` (a page-cache row: the order of
    the folio at the index -- the add/delete event's own, else the latest add of the
    row's head PFN before it; 0 when unknown)."""
    ev = tr.events
    code = ev["event"]
    e = lk.event
    pte_pfn = np.where(np.isin(code[e], FAULT_EVENTS), fault_pages(tr, lk)[e], -1)
    order = np.zeros(len(lk), np.int64)
    add_code = EVENT_CODE["mm_filemap_add_to_page_cache"]
    own = np.isin(code[e], [add_code, EVENT_CODE["mm_filemap_delete_from_page_cache"]])
    order[own] = np.maximum(ev["order"][e[own]], 0)
    add = np.flatnonzero((code == add_code) & (ev["pfn"] >= 0))
    q = np.flatnonzero(~own & (lk.mapping >= 0) & (lk.pfn >= 0))
    if len(add) and len(q):                # the latest add of the head PFN before the row
        span = np.int64(len(code) + 1)
        keys = ev["pfn"][add] * span + add
        hk = np.argsort(keys)
        j = np.searchsorted(keys[hk], lk.pfn[q] * span + e[q], "left") - 1
        ok = (j >= 0) & (ev["pfn"][add][hk][np.maximum(j, 0)] == lk.pfn[q])
        order[q[ok]] = np.maximum(ev["order"][add][hk][j[ok]], 0)
    return {"pid": ev["pid"][e].astype(np.int64), "pte_pfn": pte_pfn.astype(np.int64),
            "order": order}


class ReplayTables:
    """Per-pid page tables and per-mapping xarray nodes of a trace's lookups ``lk``
    (replay_lookups.Lookups with its :func:`table_payload` columns), built in ``arena`` (a
    memdesc.mm.mm_init.Kernel at the replay's stage) -- see the module doc. Build it before
    the arena's accesses are counted.

    :attr:`ctx` is the dispatcher's context (:func:`side_table_op`): per lookup row ``pgd``
    (the pid's PGD PFN, -1: no table), ``va``, ``mapping``, ``index``, ``order``; per
    mapping id ``map_addr`` (address_space), ``map_size`` (indices), ``node_lo``/``node_hi``
    into ``nodes`` (radix_tree_node addresses)."""

    def __init__(self, arena, lk):
        self.k = arena
        E = arena.E
        fault = np.flatnonzero(lk.op_class == OP_PT_WALK)
        pid, va = lk.pid[fault], lk.va[fault]
        user = (va < np.uint64(TASK_SIZE)) & (pid >= 0)
        self.pgd_of: dict[int, int] = {}
        for p in np.unique(pid[user]).tolist():
            self.pgd_of[p] = self._alloc(pagetable_alloc_nb, E, GFP_PGTABLE_USER,
                                         PGD_ALLOCATION_ORDER, 0)
        pgds = np.array([self.pgd_of.get(p, -1) for p in pid.tolist()], np.int64)
        pgds[~user] = -1
        self.pgd = np.full(len(lk), -1, np.int64)
        self.pgd[fault] = pgds
        regions = np.unique(np.stack([pgds[user], (va[user] >> np.uint64(PMD_SHIFT)
                                                   ).astype(np.int64)], 1), axis=0)
        for g, r in regions.tolist():
            self._alloc(ensure_tables, E, g, np.uint64(r << PMD_SHIFT), LEVEL_PTE, 0)
        E = arena.E
        self.ptes = int(set_ptes_kernel(E[E_SLOT], E[E_DATA], pgds, va, lk.pte_pfn[fault]))
        self.tables = len(self.pgd_of) + len(regions)
        self._xarrays(lk)
        self.ctx = (self.pgd, lk.va.astype(np.uint64), lk.mapping.astype(np.int64),
                    lk.index.astype(np.int64), lk.order.astype(np.int64), self.map_addr,
                    self.map_size, self.node_lo, self.node_hi, self.nodes)

    @staticmethod
    def _alloc(fn, E, *args) -> int:
        got = int(fn(E, *args))
        if got < 0:
            raise MemdescError("replay page tables: the kernel-memory arena is full "
                               f"({fn.__name__} returned {got})")
        return got

    def _xarrays(self, lk) -> None:
        """The inode and radix_tree_node objects of every mapping (module doc)."""
        pc = np.flatnonzero((lk.mapping >= 0) & (lk.index >= 0))
        pcache = PageCache(self.k)
        n = len(lk.mappings)
        self.map_addr = np.zeros(n, np.uint64)
        self.map_size = np.zeros(n, np.int64)
        self.node_lo = np.zeros(n, np.int64)
        self.node_hi = np.zeros(n, np.int64)
        nodes: list[np.ndarray] = []
        at = 0
        by_map = pc[np.argsort(lk.mapping[pc], kind="stable")]
        bounds = np.searchsorted(lk.mapping[by_map], np.arange(n + 1))
        for m in range(n):
            a = pcache.file(f"{int(lk.mappings[m, 0])}:{int(lk.mappings[m, 1])}")
            if a is None:
                raise MemdescError("replay xarrays: the kernel-memory arena is full")
            mine = by_map[bounds[m]:bounds[m + 1]]
            orders = np.clip(lk.order[mine], 0, 30)
            starts = lk.index[mine] & ~((np.int64(1) << orders) - 1)
            self.map_addr[m] = a.mapping
            self.map_size[m] = int((starts + (np.int64(1) << orders)).max(initial=1))
            need = xa_nodes_needed(starts, orders)
            got = pcache.k.slub.kmem_cache_alloc_bulk(pcache.xa_cache, _gfp.GFP_KERNEL, need)
            if (got == 0).any():
                raise MemdescError("replay xarrays: the kernel-memory arena is full")
            nodes.append(got)
            self.node_lo[m], self.node_hi[m] = at, at + need
            at += need
        self.nodes = np.concatenate(nodes) if nodes else np.zeros(0, np.uint64)


#: the dispatcher's context without tables (every pt_walk/pagecache_lookup row: no access)
NO_TABLES = (np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.int64),
             np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint64),
             np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
             np.zeros(0, np.uint64))


#: RAM of the kernel that holds the tables when the replay has no arena (overlay stages of
#: a replay without slab events): page tables, inodes and xa_nodes, plus its boot caches
TABLES_ARENA = "32M"


def stage_tables(arena, lk, mm):
    """ReplayTables of ``lk`` for the replay of ``mm`` (None without a Lookups payload),
    built uncounted in the StageArena ``arena``'s kernel: the arena's accounting word is
    cleared while they are built and the arena's environment refreshed (a cache created here
    may have grown its arrays). Without an arena kernel (an overlay stage of a replay without
    slab events), in a kernel of their own (TABLES_ARENA, the stage's layout), recording
    into ``mm``'s accounting as the arena does (StageArena.account_with()). The walks use
    the returned tables' ``E`` as their tables' environment."""
    if lk is None or lk.pid is None:
        return None
    k = arena.arena if arena is not None and arena.arena is not None \
        else arena_kernel(TABLES_ARENA, mm.stage)
    access.disable(k)                      # built uncounted
    try:
        rt = ReplayTables(k, lk)
    finally:
        access.share_accounting(k, mm)
    if arena is not None and arena.arena is k:
        arena.AE = k.E
    rt.E = k.E
    return rt


@njit(cache=True)
def side_table_op(HE, TE, pt, cls, row, pfn, npfn):
    """The dispatcher's pt_walk / pagecache_lookup of lookup row ``row`` with the context
    ``pt`` (ReplayTables.ctx, or NO_TABLES): :func:`side_pt_walk` or
    :func:`side_pagecache_lookup`. False when the row has no table or mapping: the caller
    counts it without accesses."""
    pgd, va, mapping, index, order, map_addr, map_size, node_lo, node_hi, nodes = pt
    if row < 0 or row >= pgd.shape[0]:
        return False
    if cls == OP_PT_WALK:
        return side_pt_walk(TE, HE, pgd[row], va[row])
    m = mapping[row]
    if m < 0 or index[row] < 0:
        return False
    side_pagecache_lookup(HE, nodes[node_lo[m]:node_hi[m]], map_size[m], map_addr[m],
                          index[row], order[row], pfn, npfn)
    return True


@njit(cache=True)
def side_pt_walk(TE, HE, pgd, va):
    """One replayed page fault's walk (memdesc.mm.lookups.pt_walk_te): the pid's tables in
    the arena ``TE``, the mapped page in the replayed memory ``HE``; False when the row has
    no table (a kernel address): the caller counts it without accesses."""
    if pgd < 0:
        return False
    pt_walk_te(TE, HE, pgd, va)
    return True


@njit(cache=True)
def side_pagecache_lookup(HE, nodes, size, mapping, idx, order, pfn, npfn):
    """One replayed page-cache lookup (memdesc.mm.lookups.pagecache_lookup_at_e) in the
    mapping's nodes; its folio is page_folio() of ``pfn`` (uncounted: the xarray slot holds
    it), none when ``pfn`` is unknown (-1) or no folio's."""
    f = np.uint64(0)
    if 0 <= pfn < npfn:
        f = page_folio(HE, pfn)
    pagecache_lookup_at_e(HE, nodes, size, mapping, idx, order, f)
