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
before its operation ``k``). memdesc.analysis.replay_side runs them inside a replay with
access accounting on (its ReplayLookups), through the lookup entry points of
memdesc.mm.access on the replayed mem_map (docs/replay.md "In the replay" for what that can
and cannot count), together with the other side operations (the trace's slab events).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from memdesc.analysis.replay_pgtables import table_payload
from memdesc.ingest.trace_events import EVENT_CODE, Trace
from memdesc.mm.access import OP_CLASSES, op_class_id

if TYPE_CHECKING:
    from memdesc.analysis.replay_side import SideRows

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
