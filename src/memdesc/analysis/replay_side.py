"""Side operations: what runs between a replay's allocator operations, inside its numba
loops, when access accounting is on -- the trace's lookups (memdesc.analysis.replay_lookups)
and its slab events (memdesc.analysis.replay_slab), in one trace order (:class:`SideRows`),
each run by one dispatcher (:func:`_side_op`) just before the replay operation that follows
it in the trace (replay_lookups.schedule()).

Where they run: lookups on the replayed memory's mem_map (the environment ``E``: the
replay's, with the kernel-memory arena's descriptors in policy mode), slab operations and
the page tables / page-cache xarrays in the stage's kernel-memory arena (``AE``,
memdesc.analysis.replay_arena, memdesc.analysis.replay_pgtables). Numba hazard: the drivers
call the replay's loops (analysis/replay_loops.py); after editing those, delete the numba
cache (a cached driver keeps the old loop).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from memdesc.analysis.replay_arena import _unbooted
from memdesc.analysis.replay_lookups import (
    OP_CLASS_ID_PAGE_FLAG,
    OP_CLASS_ID_PAGE_FOLIO,
    OP_CLASS_ID_PAGE_TO_NID,
    OP_CLASS_ID_PAGE_ZONE,
    OP_CLASS_ID_PAGECACHE,
    OP_CLASS_ID_PT_WALK,
    Lookups,
    schedule,
)
from memdesc.analysis.replay_loops import _placement_loop, _policy_loop
from memdesc.analysis.replay_ops import OP_ALLOC, OP_FREE
from memdesc.analysis.replay_pgtables import (
    NO_TABLES,
    side_table_op,
    stage_tables,
)
from memdesc.analysis.replay_slab import borrow_ctx, empty_ctx, slab_op
from memdesc.mm.access import (
    folio_page_e,
    page_flag_test_e,
    page_folio_e,
    page_to_nid_e,
    page_zone_e,
)
from memdesc.mm.access_core import OP_KMEM_ALLOC, OP_KMEM_FREE, op_begin, op_end
from memdesc.mm.folio import page_folio
from memdesc.mm.memdesc_alloc import E_S, borrow
from memdesc.mm.mm_types import PG_lru

# ---- side operations: what runs between the replay's operations ------------------------------

class SideRows(NamedTuple):
    """Side operations in trace order, one row per operation, run between the replay's
    allocator operations: the lookups (:func:`lookup_rows`) and the trace's slab operations
    (memdesc.analysis.replay_slab.SlabPlan.rows()). ``arg`` is the row's payload: a lookup's
    row in its Lookups (its va, mapping, index), a slab operation's object id."""

    event: np.ndarray       # int64: trace event index
    op_class: np.ndarray    # int64: memdesc.mm.access OP_CLASSES id
    pfn: np.ndarray         # int64: the page (lookups), -1 unknown or none
    sub: np.ndarray         # int64: folio_page's page in the folio; slab: gfp / kfree
    arg: np.ndarray         # int64: payload (above)

    def __len__(self) -> int:
        return len(self.event)


def lookup_rows(lk: Lookups) -> SideRows:
    """The lookups as side-operation rows (``arg``: the row in ``lk``)."""
    return SideRows(lk.event.astype(np.int64), lk.op_class.astype(np.int64),
                    lk.pfn.astype(np.int64), lk.sub.astype(np.int64),
                    np.arange(len(lk), dtype=np.int64))


def merge_rows(*parts: SideRows) -> SideRows:
    """Rows of several sources in one trace order (stable: a source's own order is kept)."""
    cat = SideRows(*(np.concatenate([getattr(p, f) for p in parts]).astype(np.int64)
                     for f in SideRows._fields))
    srt = np.argsort(cat.event, kind="stable")
    return SideRows(*(a[srt] for a in cat))


# ---- running them inside a replay (memdesc.analysis.replay) -----------------------------------

def replay_env(mm) -> tuple:
    """The environment tuple E of the lookup entry points (memdesc.mm.access ``*_e``) for a
    replay's MemMap without kernel memory: its mem_map and allocator state, no slab or
    descriptor layer, so nothing is allocated from the replayed memory (a replay with a
    kernel-memory arena passes its own, replay_arena.StageArena.HE)."""
    from memdesc.mm.kmem import PageContents

    return _unbooted(mm, PageContents(1, 1))


#: the context slot of the page-table walks and page-cache lookups (``ctx[1]``) without
#: tables (replay_pgtables.ReplayTables.ctx with them)
NO_PT = NO_TABLES


@njit(cache=True)
def _no_access(S, cls):
    """An operation counted without accesses."""
    op_begin(S, cls)
    op_end(S)


@njit(cache=True)
def _side_op(E, AE, ctx, cls, pfn, sub, arg, npfn):
    """One side operation of class ``cls`` (the dispatcher). ``E``: the replayed memory's
    environment; ``AE``: the kernel-memory arena's (replay_arena; ``E`` without one);
    ``ctx``: (slab context of replay_slab.slab_op(), page-table/page-cache context).

    * kmem_cache_alloc / kmem_cache_free: the slab operation of object ``arg`` in the arena
      (replay_slab.slab_op(): slab_alloc_node()/kmalloc(), slab_free()/kfree());
    * pt_walk / pagecache_lookup: with the stage's tables (``ctx[1]``, replay_pgtables:
      the pid's page tables and the mapping's xa_nodes in the arena ``AE``) the walk and the
      lookup of the row's va / index (``arg``: the row in the Lookups); without them, or a
      row without a table (a kernel address), counted without accesses;
    * the lookups of page ``pfn`` (memdesc.mm.access entry points); counted without accesses:
      an unknown page, folio_page() of a page in no folio (page_folio() NULL)."""
    S = E[E_S]
    if cls == OP_KMEM_ALLOC or cls == OP_KMEM_FREE:  # noqa: SIM109 (numba)
        slab_op(AE, ctx[0], cls, sub, arg)
    elif cls == OP_CLASS_ID_PT_WALK or cls == OP_CLASS_ID_PAGECACHE:  # noqa: SIM109
        if not side_table_op(E, AE, ctx[1], cls, arg, pfn, npfn):
            _no_access(S, cls)
    elif pfn < 0 or pfn >= npfn:
        _no_access(S, cls)
    elif cls == OP_CLASS_ID_PAGE_ZONE:
        page_zone_e(E, pfn)
    elif cls == OP_CLASS_ID_PAGE_TO_NID:
        page_to_nid_e(E, pfn)
    elif cls == OP_CLASS_ID_PAGE_FOLIO:
        page_folio_e(E, pfn)
    elif cls == OP_CLASS_ID_PAGE_FLAG:
        page_flag_test_e(E, pfn, PG_lru)
    else:                                   # folio_page: the caller holds the folio already
        folio = page_folio(E, pfn)          # (outside an operation: not counted)
        if folio != 0:
            folio_page_e(E, folio, sub)
        else:
            _no_access(S, cls)


@njit(cache=True)
def _owners(kind, pfn, order, before, lpfn, npfn):
    """Per side operation, the trace allocation op holding its page then (-1: none, a page
    the snapshot holds, or no page), walking the ops and the rows in trace order."""
    owner = np.full(npfn, -1, np.int64)
    out = np.full(len(before), -1, np.int64)
    k = 0
    for i in range(len(kind) + 1):
        while k < len(before) and before[k] <= i:
            if 0 <= lpfn[k] < npfn:
                out[k] = owner[lpfn[k]]
            k += 1
        if i == len(kind) or pfn[i] < 0 or pfn[i] >= npfn:
            continue
        end = min(npfn, pfn[i] + (np.int64(1) << np.int64(order[i])))
        if kind[i] == OP_ALLOC:
            owner[pfn[i]:end] = i
        elif kind[i] == OP_FREE:
            owner[pfn[i]:end] = -1
    return out


@njit(cache=True)
def _run_due(E, AE, ctx, cls, pfn, sub, arg, before, k, npfn, i, hi, owner, op_pfn, emu):
    """Run the side operations due before op ``i`` (``before`` is at most the number of ops:
    those after the last op run when ``i`` reaches it); returns the next row and the op where
    the next rows are due (at most ``hi``). With ``emu`` (policy mode: the emulator's pfn of
    each allocation op) a page of a trace allocation is looked up where the emulator put
    that allocation (-1 when it failed or is freed); other pages are the snapshot's own."""
    n = len(before)
    while k < n and before[k] <= i:
        p = pfn[k]
        if len(emu) and owner[k] >= 0:
            q = emu[owner[k]]
            p = q + p - op_pfn[owner[k]] if q >= 0 else np.int64(-1)
        _side_op(E, AE, ctx, cls[k], p, sub[k], arg[k], npfn)
        k += 1
    return k, (hi if k >= n else min(hi, max(before[k], i + 1)))


# One driver per replay loop (a loop passed as an argument would not be cached by numba):
# ops [lo, hi) with ``loop(*pre, lo, hi, *mid, nxt, *post)``, each side operation ``k`` run
# just before op ``before[k]``. Each returns (next sample slot, next row). The environments
# and the slab context are borrowed once (memdesc_alloc.borrow(): Python keeps them alive),
# so the side operations' many small calls do not reference-count 13 arrays each (a slab
# operation cost ~1.5 us with it, ~0.3 us without).


@njit(cache=True)
def _borrowed(E, AE, ctx):
    return borrow(E), borrow(AE), (borrow_ctx(ctx[0]), ctx[1])


@njit(cache=True)
def _interleave_placement(E, AE, ctx, cls, pfn, sub, arg, before, k, npfn, owner, op_pfn, emu,
                          pre, lo, hi, mid, nxt, post):
    E, AE, ctx = _borrowed(E, AE, ctx)
    i = lo
    while True:
        k, j = _run_due(E, AE, ctx, cls, pfn, sub, arg, before, k, npfn, i, hi, owner, op_pfn,
                        emu)
        if i >= hi:
            return nxt, k
        nxt = _placement_loop(*pre, i, j, *mid, nxt, *post)
        i = j


@njit(cache=True)
def _interleave_policy(E, AE, ctx, cls, pfn, sub, arg, before, k, npfn, owner, op_pfn, emu,
                       pre, lo, hi, mid, nxt, post):
    E, AE, ctx = _borrowed(E, AE, ctx)
    i = lo
    while True:
        k, j = _run_due(E, AE, ctx, cls, pfn, sub, arg, before, k, npfn, i, hi, owner, op_pfn,
                        emu)
        if i >= hi:
            return nxt, k
        nxt = _policy_loop(*pre, i, j, *mid, nxt, *post)
        i = j


_DRIVERS = {"_placement_loop": _interleave_placement, "_policy_loop": _interleave_policy}


class ReplayLookups:
    """A trace's side operations scheduled on its replay operations (:func:`schedule`): its
    lookups (``lookups``, may be empty) and ``more`` rows (the slab operations);
    ``start(mm, arena)`` gives the runner of one stage's replay, whose ``run()`` replaces the
    call of the replay's numba loop for a block of ops."""

    def __init__(self, lk: Lookups | None, ops, more: SideRows | None = None):
        self.lookups = lk
        parts = ([lookup_rows(lk)] if lk is not None else []) + ([more] if more is not None else [])
        self.rows = merge_rows(*parts) if parts else SideRows(*(np.zeros(0, np.int64)
                                                                for _ in SideRows._fields))
        self.before = schedule(self.rows, ops.evidx)
        self.n_ops = len(ops.evidx)
        self.op_pfn = np.asarray(ops.pfn, np.int64)
        r = self.rows
        npfn = int(max(self.op_pfn.max(initial=-1), r.pfn.max(initial=-1))) + 1
        owner = _owners(np.asarray(ops.kind, np.int64), self.op_pfn,
                        np.asarray(ops.order, np.int64), self.before, r.pfn, npfn)
        # an allocation before the snapshot read its pfn is the snapshot's, at that pfn
        self.owner = np.where((owner >= 0) & ~np.asarray(ops.applies, bool)[owner], -1, owner)

    def start(self, mm, arena=None) -> _StageLookups:
        """The runner of one stage; ``arena``: the stage's replay_arena.StageArena (its HE
        holds the folio descriptors, its AE and slab plan the slab operations), else
        the replayed memory without kernel memory (replay_env())."""
        return _StageLookups(self, mm, arena)


class _StageLookups:
    """The side operations of one stage's replay, run between its operations
    (:func:`_run_due`). ``ctx`` = (slab context, ``pt``: the page-table/page-cache
    context, replay_pgtables.stage_tables() built in the arena; NO_PT without one)."""

    def __init__(self, plan: ReplayLookups, mm, arena=None):
        self.plan, self.mm, self.k = plan, mm, 0
        self.E = arena.HE if arena is not None else replay_env(mm)
        slab = arena.slab.ctx if arena is not None and arena.slab is not None else empty_ctx()
        tables = stage_tables(arena, plan.lookups, mm)  # before self.AE: may refresh it
        self.AE = tables.E if tables is not None else arena.AE if arena is not None else self.E
        self.pt = tables.ctx if tables is not None else NO_PT
        self.ctx = (slab, self.pt)

    def run(self, loop, lo: int, hi: int, mid: tuple, nxt: int, post: tuple,
            emu: np.ndarray | None = None) -> int:
        """``loop`` over ops [lo, hi) with the side operations due among them; the next
        sample slot. ``emu``: policy mode's pfn of each allocation op (see _run_due())."""
        p = self.plan
        drive = _DRIVERS[loop.__name__]
        emu = np.zeros(0, np.int64) if emu is None else emu
        r = p.rows
        nxt, self.k = drive(self.E, self.AE, self.ctx, r.op_class, r.pfn, r.sub, r.arg,
                            p.before, self.k, self.mm.nr_pfns, p.owner, p.op_pfn, emu,
                            (self.mm.mem, self.mm.S), lo, hi, mid, nxt, post)
        return nxt
