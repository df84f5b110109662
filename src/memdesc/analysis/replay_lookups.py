"""The lookups of a recording (``memdesc record --lookups``) as operations of the access
accounting (memdesc.mm.access OP_CLASSES), in trace order, scheduled between the replay's
allocator operations.

Each lookup event stands for a kernel path whose page lookups are known from its source
(Linux 6.18; docs/replay.md "Lookups" has the table with the reasons). :data:`LOOKUP_OPS`
lists, per event, the operations it becomes: which class, how many, and per what unit --
the event itself, each folio of the event's page-cache range, or each page of it:

* ``mm_filemap_get_pages`` (filemap_get_pages() -> filemap_get_read_batch()): a page-cache
  lookup and two flag tests per folio of [index, last_index], at most PAGEVEC_SIZE (31) folios
  per call (the batch; filemap_read() calls again for the rest, and that call is its own
  event), plus folio_mark_accessed()'s test of the first folio;
* ``mm_filemap_map_pages`` (filemap_map_pages() -> next_uptodate_folio()): a lookup, six
  flag tests and a folio_page() per folio of the fault-around range, PageHWPoison() per page;
* ``mm_filemap_fault`` (filemap_fault()): filemap_get_folio(), two flag tests, folio_file_page();
* page-cache add/delete: the xarray store, flag tests and the node (lruvec statistics);
* LRU insertion/activation: page_to_nid() (folio_lruvec()), flag tests, page_zone()
  (update_lru_size() -> folio_zonenum());
* a page fault (user or kernel mode): one page-table walk of the address.

Folios of a page-cache range: the trace's own ``mm_filemap_add_to_page_cache`` /
``delete`` events say which folio (head pfn, order) holds each (mapping, index) at each moment,
so a large folio is one lookup and the pfn is known. An empty index of a mapping the trace has
seen pages added to is a hole (:data:`HOLES`: a read batch ends there, fault-around skips it);
indices of other mappings count as order-0 folios of unknown pfn (-1), cached before the trace
(an upper bound where the read goes past the end of the file).

:func:`lookups_from_trace` builds :class:`Lookups`; :func:`schedule` places each before the
replay operation that follows it in the trace (the replay runs ``lk[before_op == k]`` just
before its operation ``k``). :class:`ReplayLookups` runs them inside a replay with access
accounting on, through the lookup entry points of memdesc.mm.access on the replayed mem_map
(docs/replay.md "In the replay" for what that can and cannot count), together with the
other **side operations** (:class:`SideRows`, one dispatcher :func:`_side_op`): the trace's
slab events as kmem_cache_alloc/kmem_cache_free in the kernel-memory arena
(memdesc.analysis.replay_slab, memdesc.analysis.replay_arena). Numba hazard: the
drivers call the replay's loops (analysis/replay_loops.py); after editing those, delete the
numba cache (a cached driver keeps the old loop).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from memdesc.analysis.replay_arena import _unbooted
from memdesc.analysis.replay_loops import _placement_loop, _policy_loop
from memdesc.analysis.replay_ops import OP_ALLOC, OP_FREE
from memdesc.analysis.replay_pgtables import (
    NO_TABLES,
    side_table_op,
    stage_tables,
    table_payload,
)
from memdesc.analysis.replay_slab import borrow_ctx, empty_ctx, slab_op
from memdesc.ingest.trace_events import EVENT_CODE, Trace
from memdesc.mm.access import (
    OP_CLASSES,
    folio_page_e,
    op_class_id,
    page_flag_test_e,
    page_folio_e,
    page_to_nid_e,
    page_zone_e,
)
from memdesc.mm.access_core import OP_KMEM_ALLOC, OP_KMEM_FREE, op_begin, op_end
from memdesc.mm.folio import page_folio
from memdesc.mm.memdesc_alloc import E_S, borrow
from memdesc.mm.mm_types import PG_lru

#: units an operation is counted per
PER_EVENT, PER_FOLIO, PER_PAGE = 0, 1, 2


class OpSpec(NamedTuple):
    """``count`` operations of class ``op`` per ``per`` unit of one event; ``why`` names the
    kernel code (6.18) that does them."""

    op: str
    per: int
    count: int
    why: str


#: event -> the operations it becomes, in the kernel's order
LOOKUP_OPS: dict[str, tuple[OpSpec, ...]] = {
    "mm_filemap_add_to_page_cache": (
        OpSpec("page_flag_test", PER_EVENT, 1, "__filemap_add_folio(): folio_test_hugetlb()"),
        OpSpec("pagecache_lookup", PER_EVENT, 1,
               "__filemap_add_folio(): xas_for_each_conflict() + xas_store() at index"),
        OpSpec("page_to_nid", PER_EVENT, 1,
               "__lruvec_stat_mod_folio(NR_FILE_PAGES) -> folio_pgdat()"),
    ),
    "mm_filemap_delete_from_page_cache": (
        OpSpec("page_flag_test", PER_EVENT, 1, "filemap_unaccount_folio(): folio_test_hugetlb()"),
        OpSpec("page_to_nid", PER_EVENT, 1,
               "filemap_unaccount_folio(): __lruvec_stat_mod_folio() -> folio_pgdat()"),
        OpSpec("page_flag_test", PER_EVENT, 2,
               "filemap_unaccount_folio(): folio_test_swapbacked(), folio_test_dirty()"),
        OpSpec("pagecache_lookup", PER_EVENT, 1, "page_cache_delete(): xas_store(NULL)"),
    ),
    "mm_filemap_get_pages": (
        OpSpec("pagecache_lookup", PER_FOLIO, 1, "filemap_get_read_batch(): xas_load/xas_next"),
        OpSpec("page_flag_test", PER_FOLIO, 2,
               "filemap_get_read_batch(): folio_test_uptodate(), folio_test_readahead()"),
        OpSpec("page_flag_test", PER_EVENT, 1,
               "filemap_read() -> folio_mark_accessed(): folio_test_referenced() (1st folio)"),
    ),
    "mm_filemap_map_pages": (
        OpSpec("pagecache_lookup", PER_FOLIO, 1, "next_uptodate_folio(): xas_next_entry()"),
        OpSpec("page_flag_test", PER_FOLIO, 6,
               "next_uptodate_folio(): locked, uptodate, readahead, trylock, uptodate; "
               "folio_test_large()"),
        OpSpec("folio_page", PER_FOLIO, 1, "filemap_map_folio_range(): folio_page(folio, start)"),
        OpSpec("page_flag_test", PER_PAGE, 1, "filemap_map_folio_range(): PageHWPoison()"),
    ),
    "mm_filemap_fault": (
        OpSpec("pagecache_lookup", PER_FOLIO, 1, "filemap_fault(): filemap_get_folio()"),
        OpSpec("page_flag_test", PER_FOLIO, 2,
               "lock_folio_maybe_drop_mmap(): folio_trylock(); folio_test_uptodate()"),
        OpSpec("folio_page", PER_FOLIO, 1, "filemap_fault(): folio_file_page(folio, index)"),
    ),
    "mm_lru_insertion": (
        OpSpec("page_flag_test", PER_EVENT, 1,
               "__folio_batch_add_and_move(): folio_may_be_lru_cached() (folio_test_large)"),
        OpSpec("page_to_nid", PER_EVENT, 1,
               "folio_batch_move_lru(): folio_lruvec_relock_irqsave() -> folio_pgdat()"),
        OpSpec("page_flag_test", PER_EVENT, 4,
               "lru_add(): folio_test_clear_unevictable(); folio_evictable() -> folio_mapping()"
               " (slab, swapcache), folio_test_mlocked()"),
        OpSpec("page_flag_test", PER_EVENT, 3,
               "lruvec_add_folio() -> folio_lru_list(): unevictable, swapbacked, active"),
        OpSpec("page_zone", PER_EVENT, 1, "lruvec_add_folio(): update_lru_size(folio_zonenum())"),
    ),
    "mm_lru_activate": (
        OpSpec("page_flag_test", PER_EVENT, 3,
               "folio_activate(): folio_test_active/unevictable/lru()"),
        OpSpec("page_to_nid", PER_EVENT, 1,
               "folio_batch_move_lru(): folio_lruvec_relock_irqsave() -> folio_pgdat()"),
        OpSpec("page_flag_test", PER_EVENT, 5,
               "lru_activate(): active, unevictable; lruvec_del_folio() -> folio_lru_list()"),
        OpSpec("page_zone", PER_EVENT, 1, "lruvec_del_folio(): update_lru_size(folio_zonenum())"),
        OpSpec("page_flag_test", PER_EVENT, 3, "lruvec_add_folio() -> folio_lru_list()"),
        OpSpec("page_zone", PER_EVENT, 1, "lruvec_add_folio(): update_lru_size(folio_zonenum())"),
    ),
    "page_fault_user": (
        OpSpec("pt_walk", PER_EVENT, 1,
               "do_user_addr_fault() -> handle_mm_fault(): pgd..pmd -> pte of the address"),
    ),
    "page_fault_kernel": (
        OpSpec("pt_walk", PER_EVENT, 1,
               "do_user_addr_fault() (copy_to_user and co.) / do_kern_addr_fault(): the walk"),
    ),
}
#: folios looked up per event at most: filemap_get_read_batch() fills one folio_batch
#: (PAGEVEC_SIZE 31, include/linux/pagevec.h); fault-around maps within one page table
#: (PTRS_PER_PTE 512); a fault is one index
MAX_FOLIOS = {"mm_filemap_get_pages": 31, "mm_filemap_map_pages": 512, "mm_filemap_fault": 1}
#: an index of a mapping the trace has seen pages added to (before the event) but that holds
#: no folio then is a hole: filemap_get_read_batch() stops at it (its xas_next() loop ends at
#: the first empty slot), next_uptodate_folio() skips it (xas_next_entry()), filemap_fault()
#: looks it up anyway (trace_mm_filemap_fault() comes before filemap_get_folio()). Indices of
#: other mappings count as order-0 folios cached before the trace.
HOLES = {"mm_filemap_get_pages": "stop", "mm_filemap_map_pages": "skip",
         "mm_filemap_fault": "keep"}
RANGE_EVENTS = tuple(MAX_FOLIOS)
(OP_CLASS_ID_PAGE_ZONE, OP_CLASS_ID_PAGE_TO_NID, OP_CLASS_ID_PAGE_FOLIO, OP_CLASS_ID_PAGE_FLAG,
 OP_CLASS_ID_PT_WALK, OP_CLASS_ID_PAGECACHE) = (
    op_class_id(n) for n in ("page_zone", "page_to_nid", "page_folio", "page_flag_test",
                             "pt_walk", "pagecache_lookup"))


class Lookups(NamedTuple):
    """Lookup operations in trace order (one row per operation)."""

    event: np.ndarray       # int64: trace event index that implies the operation
    op_class: np.ndarray    # uint8: memdesc.mm.access OP_CLASSES id
    pfn: np.ndarray         # int64: the page; for folio operations the folio's head; -1
    #                         unknown (a page-cache index the trace never saw added)
    sub: np.ndarray         # int64: folio operations: the looked-up index's page within the
    #                         folio (folio_page(folio, sub)), else 0
    mapping: np.ndarray     # int64: row of ``mappings`` (page-cache events), else -1
    index: np.ndarray       # int64: page index in the mapping, else -1
    va: np.ndarray          # uint64: virtual address (page faults), else 0
    mappings: np.ndarray    # uint64 [n, 2]: (dev, ino) of each mapping id
    # the page tables' and xarrays' payload (replay_pgtables.table_payload()): common_pid
    # of the row's event; a fault's PTE page (-1 none); a page-cache row's folio order
    pid: np.ndarray | None = None
    pte_pfn: np.ndarray | None = None
    order: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.event)

    def counts(self) -> dict[str, int]:
        """Operations per class name (every class, zeros included)."""
        n = np.bincount(self.op_class.astype(np.int64), minlength=len(OP_CLASSES))
        return {c.name: int(n[i]) for i, c in enumerate(OP_CLASSES)}


def _mapping_ids(ev: dict[str, np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(id per row, the (dev, ino) table) for the page-cache events at ``rows``."""
    pairs = np.stack([ev["dev"][rows].astype(np.uint64), ev["ino"][rows]], axis=1)
    if not len(rows):
        return np.empty(0, np.int64), np.empty((0, 2), np.uint64)
    table, ids = np.unique(pairs, axis=0, return_inverse=True)
    return ids.reshape(-1).astype(np.int64), table


def _expand(first: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For runs ``first[i] .. first[i] + n[i] - 1``: (run of each element, element value)."""
    run = np.repeat(np.arange(len(n)), n)
    start = np.cumsum(n) - n
    return run, first[run] + (np.arange(int(n.sum())) - start[run])


def resolve_pages(ev: dict[str, np.ndarray], mapping_of: np.ndarray, q_event: np.ndarray,
                  q_map: np.ndarray, q_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(page pfn, folio head pfn) of each query (mapping, index) at trace event ``q_event``:
    the folio the latest earlier add/delete event covering that index put there; -1 when
    deleted since or never seen. ``mapping_of[i]`` is the mapping id of event row i (-1 for
    events without one). Vectorised: states and queries sorted by (mapping, index, event)."""
    code = ev["event"]
    add, dele = EVENT_CODE["mm_filemap_add_to_page_cache"], \
        EVENT_CODE["mm_filemap_delete_from_page_cache"]
    st = np.flatnonzero(((code == add) | (code == dele)) & (ev["index"] >= 0))
    order = np.clip(ev["order"][st].astype(np.int64), 0, 30)
    run, idx = _expand(ev["index"][st], np.left_shift(1, order))
    srow = st[run]
    is_add = code[srow] == add
    s_head = np.where(is_add, ev["pfn"][srow], -1)
    s_pfn = np.where(is_add, s_head + (idx - ev["index"][srow]), -1)
    n_s = len(srow)
    key_map = np.concatenate([mapping_of[srow], q_map])
    key_idx = np.concatenate([idx, q_index])
    key_ev = np.concatenate([srow, q_event])
    is_state = np.concatenate([np.ones(n_s, bool), np.zeros(len(q_event), bool)])
    # a state at the query's own event is not before it: queries sort first on ties
    srt = np.lexsort((is_state, key_ev, key_idx, key_map))
    pos = np.where(is_state[srt], np.arange(len(srt)), -1)
    last = np.maximum.accumulate(pos) if len(pos) else pos
    valid = last >= 0
    lk = np.where(valid, srt[np.maximum(last, 0)], 0)
    same = valid & (key_map[lk] == key_map[srt]) & (key_idx[lk] == key_idx[srt])
    page = np.where(same & (lk < n_s), np.concatenate([s_pfn, np.full(len(q_event), -1)])[lk],
                    -1)
    head = np.where(same & (lk < n_s), np.concatenate([s_head, np.full(len(q_event), -1)])[lk],
                    -1)
    out_page = np.empty(len(srt), np.int64)
    out_head = np.empty(len(srt), np.int64)
    out_page[srt], out_head[srt] = page, head
    return out_page[n_s:], out_head[n_s:]


class _Units(NamedTuple):
    """The units of the lookup events: one row per (event, unit), ``pos`` orders them."""

    event: np.ndarray
    per: np.ndarray
    pos: np.ndarray
    pfn: np.ndarray
    sub: np.ndarray
    mapping: np.ndarray
    index: np.ndarray


def _event_ranges(ev: dict[str, np.ndarray], mapping_of: np.ndarray, rows: np.ndarray,
                  n: np.ndarray) -> tuple[np.ndarray, ...]:
    """The first ``n[i]`` indices of each event ``rows[i]``'s range, resolved:
    (run, index, page pfn, head pfn)."""
    run, idx = _expand(ev["index"][rows], n)
    q_ev = rows[run]
    page, head = resolve_pages(ev, mapping_of, q_ev, mapping_of[q_ev], idx)
    return run, idx, page, head


def _run_first(run: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row starts a run, the first row of each row's run) for rows grouped by ``run``."""
    new_run = np.ones(len(run), bool)
    new_run[1:] = run[1:] != run[:-1]
    return new_run, np.maximum.accumulate(np.where(new_run, np.arange(len(run)), 0))


def _within_run(run: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """Running count of ``flags`` within each row's run (inclusive)."""
    _, first = _run_first(run)
    cs = np.cumsum(flags)
    return cs - (cs - flags)[first]


def _folio_starts(run: np.ndarray, head: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(is the first index of a folio, folio number within its event from 1): a folio is a
    run of indices with the same known head pfn; an unknown index is an order-0 folio."""
    new_run, _ = _run_first(run)
    start = new_run | (head < 0)
    start[1:] |= head[1:] != head[:-1]
    return start, _within_run(run, start)


def _walk_ranges(ev: dict[str, np.ndarray], mapping_of: np.ndarray, rows: np.ndarray,
                 cap: int, max_order: int) -> tuple[np.ndarray, ...]:
    """The indices of the ranges of events ``rows``, resolved: (run, index, page, head).

    Walked index by index up to ``cap`` indices; an event that met a large folio there and
    has more range left is walked again up to ``cap << max_order`` indices (the largest
    folio order added in the trace), so a large folio is one folio."""
    first = ev["index"][rows]
    span = np.maximum(ev["last_index"][rows], first) - first + 1
    run, idx, page, head = _event_ranges(ev, mapping_of, rows, np.minimum(span, cap))
    start, _ = _folio_starts(run, head)
    nfolios = np.bincount(run, weights=start, minlength=len(rows))
    again = (nfolios < cap) & (span > cap) & (max_order > 0)
    if not again.any():
        return run, idx, page, head
    more = _event_ranges(ev, mapping_of, rows[again], np.minimum(span[again], cap << max_order))
    keep_old = ~again[run]
    run = np.concatenate([run[keep_old], np.flatnonzero(again)[more[0]]])
    srt = np.argsort(run, kind="stable")
    return (run[srt], *(np.concatenate([a[keep_old], b])[srt]
                        for a, b in zip((idx, page, head), more[1:], strict=True)))


def _range_units(ev: dict[str, np.ndarray], mapping_of: np.ndarray) -> list[_Units]:
    """Folio and page units of the page-cache range events (see the module doc): the
    indices of each range, holes handled as HOLES says, at most MAX_FOLIOS folios."""
    code = ev["event"]
    add = np.flatnonzero(code == EVENT_CODE["mm_filemap_add_to_page_cache"])
    max_order = int(ev["order"][add].max(initial=0))
    first_add = np.full(int(mapping_of.max(initial=-1)) + 1, len(code), np.int64)
    np.minimum.at(first_add, mapping_of[add], add)
    out = []
    for name in RANGE_EVENTS:
        rows = np.flatnonzero((code == EVENT_CODE[name]) & (ev["index"] >= 0))
        cap = MAX_FOLIOS[name]
        run, idx, page, head = _walk_ranges(ev, mapping_of, rows, cap, max_order)
        q_ev = rows[run]
        hole = (head < 0) & (first_add[mapping_of[q_ev]] < q_ev)
        first_head = head[_run_first(run)[0]]
        if HOLES[name] == "stop":        # keep the indices before the run's first hole
            hole = _within_run(run, hole) > 0
        if HOLES[name] != "keep":
            run, idx, page, head, q_ev = (a[~hole] for a in (run, idx, page, head, q_ev))
        start, folio_no = _folio_starts(run, head)
        keep = folio_no <= cap
        pos = idx - ev["index"][q_ev]
        f = keep & start
        out.append(_Units(q_ev[f], np.full(int(f.sum()), PER_FOLIO), pos[f], head[f],
                          np.where(head[f] >= 0, page[f] - head[f], 0), mapping_of[q_ev[f]],
                          idx[f]))
        out.append(_Units(q_ev[keep], np.full(int(keep.sum()), PER_PAGE), pos[keep],
                          page[keep], np.zeros(int(keep.sum()), np.int64),
                          mapping_of[q_ev[keep]], idx[keep]))
        # the event's own operations go with its first folio
        out.append(_Units(rows, np.full(len(rows), PER_EVENT), np.zeros(len(rows), np.int64),
                          first_head, np.zeros(len(rows), np.int64), mapping_of[rows],
                          ev["index"][rows]))
    return out


def lookups_from_trace(tr: Trace) -> Lookups:
    """Every lookup operation the trace's lookup events imply (module docstring), in trace
    order; within an event, folio by folio in index order, in LOOKUP_OPS order."""
    ev = tr.events
    code = ev["event"]
    pc_codes = [EVENT_CODE[n] for n in LOOKUP_OPS if n.startswith("mm_filemap")]
    pc_rows = np.flatnonzero(np.isin(code, pc_codes))
    ids, table = _mapping_ids(ev, pc_rows)
    mapping_of = np.full(len(code), -1, np.int64)
    mapping_of[pc_rows] = ids
    units = _range_units(ev, mapping_of)
    others = np.flatnonzero(np.isin(code, [EVENT_CODE[n] for n in LOOKUP_OPS
                                           if n not in MAX_FOLIOS]))
    zeros = np.zeros(len(others), np.int64)
    units.append(_Units(others, np.full(len(others), PER_EVENT), zeros, ev["pfn"][others],
                        zeros, mapping_of[others], ev["index"][others]))
    u = _Units(*(np.concatenate(c) for c in zip(*units, strict=True)))
    parts = []
    for name, specs in LOOKUP_OPS.items():
        of_event = code[u.event] == EVENT_CODE[name]
        for k, spec in enumerate(specs):
            sel = np.flatnonzero(of_event & (u.per == spec.per))
            rep = np.repeat(sel, spec.count)
            parts.append((rep, np.full(len(rep), op_class_id(spec.op), np.uint8),
                          np.full(len(rep), k, np.int64)))
    unit = np.concatenate([p[0] for p in parts])
    cls = np.concatenate([p[1] for p in parts])
    spec_no = np.concatenate([p[2] for p in parts])
    srt = np.lexsort((spec_no, u.pos[unit], u.event[unit]))
    unit, cls = unit[srt], cls[srt]
    e = u.event[unit]
    is_fault = np.isin(code[e], [EVENT_CODE["page_fault_user"], EVENT_CODE["page_fault_kernel"]])
    lk = Lookups(e.astype(np.int64), cls, u.pfn[unit].astype(np.int64),
                 u.sub[unit].astype(np.int64), u.mapping[unit].astype(np.int64),
                 u.index[unit].astype(np.int64),
                 np.where(is_fault, ev["address"][e], np.uint64(0)).astype(np.uint64), table)
    # (not _replace(): __len__ is the number of rows, which namedtuple's _make checks)
    return Lookups(*(getattr(lk, f) for f in Lookups._fields[:8]), **table_payload(tr, lk))


def schedule(lk: Lookups | SideRows, op_event: np.ndarray) -> np.ndarray:
    """For each lookup (or side-operation row), the first replay operation after it:
    ``op_event`` is the (sorted) trace event index of each replay operation
    (memdesc.analysis.replay_ops.ReplayOps.event); the replay runs the rows with
    ``before_op == k`` just before operation ``k`` (and those with ``before_op ==
    len(op_event)`` after the last one)."""
    return np.searchsorted(op_event, lk.event, side="left").astype(np.int64)


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
