"""Memdesc types for the pages of a replayed trace, from the best evidence the trace has.

A page-allocator event says *where* (pfn, order) and *how* (gfp, migratetype) but not *what
for*. The replay needs a census class (analysis/census.py: file, anon, slab, pagetable, ...)
for every allocation unit alive at a sample point, because the cost of a stage depends on how
many units of each type and order exist. The evidence, strongest first:

1. **slab objects** (``kmem_cache_alloc``/``kmalloc`` with ``bytes_alloc`` <=
   KMALLOC_MAX_CACHE_SIZE): the object's ``ptr`` is a direct-map address, ``pfn = (ptr -
   PAGE_OFFSET) >> PAGE_SHIFT`` (PAGE_OFFSET 0xffff888000000000, the default base this
   machine booted with [M: fixtures README item 12]). The page allocation whose block holds
   that pfn at that moment is a slab (rule ``slab-object``).
2. **large kmalloc** (``kmalloc`` with ``bytes_alloc`` > KMALLOC_MAX_CACHE_SIZE = 8 KiB
   [S: include/linux/slab.h, SLUB: KMALLOC_SHIFT_HIGH = PAGE_SHIFT + 1]): the object *is* the
   page block (___kmalloc_large_node() calls alloc_pages), a Misc ``kmalloc_large`` page:
   class ``untyped`` (rule ``kmalloc-large``).
3. **gfp flags** of the mm_page_alloc event (:data:`GFP_RULES`, first match wins; the gfp
   masks are the ones the 6.18 allocation sites pass [S: mm/slub.c allocate_slab(),
   mm/filemap.c, mm/readahead.c, mm/memory.c, include/asm-generic/pgalloc.h,
   include/linux/gfp_types.h]; rules marked [I] were checked against the pre-snapshot of the
   fixture traces, see :func:`check_against_snapshot`).
4. **the snapshot** for pages allocated before the trace: the survey's classification of the
   pre-snapshot's kpageflags (analysis/classify.py), per PFN (:func:`snapshot_units`).

Allocations no rule recognises are counted as ``untyped`` with rule ``unknown``; the unknown
share (pages and units) is reported, never hidden. ``untyped`` is also what the survey
calls Misc memory, so the cost model treats both alike (no descriptor).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from memdesc.analysis import classify
from memdesc.analysis.census import CLASS_INDEX, CLASSES, NR_UNIT_ORDERS
from memdesc.analysis.classify import Layout
from memdesc.ingest.snapshot import Snapshot
from memdesc.ingest.trace_events import PAGE_OFFSET_BASE, Trace
from memdesc.mm.gfp import (
    __GFP_ACCOUNT,
    __GFP_COMP,
    __GFP_MOVABLE,
    __GFP_NOFAIL,
    __GFP_NORETRY,
    __GFP_NOWARN,
    __GFP_ZERO,
    GFP,
    GFP_HIGHUSER,
    GFP_HIGHUSER_MOVABLE,
    GFP_KERNEL_ACCOUNT,
    GFP_NOWAIT,
    GFP_TRANSHUGE_LIGHT,
)
from memdesc.stages import PAGE_SHIFT

__GFP_WRITE = GFP.WRITE

#: Provisional class of ``flags == 0`` pages in a snapshot (pcp-free, untyped or never
#: initialised; the census splits them later, the replay keeps them apart).
FLAG0 = classify.FLAG0
#: Class names including the provisional one, indexed like the int8 class arrays below.
CLASS_NAMES: tuple[str, ...] = (*CLASSES, "flags0")
FREE, FILE, ANON, SLAB, PAGETABLE, UNTYPED, UNINIT, HOLE = (
    CLASS_INDEX[c] for c in ("free", "file", "anon", "slab", "pagetable", "untyped",
                             "uninitialised", "hole"))
NO_UNIT = -1

#: KMALLOC_MAX_CACHE_SIZE with SLUB and 4 KiB pages: 1 << (PAGE_SHIFT + 1)
#: [S: include/linux/slab.h KMALLOC_SHIFT_HIGH].
KMALLOC_MAX_CACHE_SIZE = 1 << (PAGE_SHIFT + 1)

# --- the gfp rules ---------------------------------------------------------------------------

#: Slab pages: allocate_slab() in mm/slub.c always adds __GFP_NOWARN|__GFP_NORETRY to the
#: first attempt (and __GFP_COMP for order > 0 via s->allocflags) [S]; page-cache readahead
#: adds the same two bits but is __GFP_MOVABLE, so the rule requires non-movable.
_SLAB_BITS = __GFP_NOWARN | __GFP_NORETRY


@dataclass(frozen=True)
class GfpRule:
    """One inference rule: events with ``gfp & mask == value`` (and the order test) get
    ``cls``. ``why`` cites the allocation site; [I] marks rules checked against snapshots
    rather than read off the source."""

    name: str
    cls: str
    mask: int
    value: int
    why: str
    min_order: int = 0


#: Every gfp bit this kernel has (___GFP_LAST_BIT 25 [M]): a mask for exact matches.
_ALL = (1 << 25) - 1

#: First match wins. Evaluated on mm_page_alloc events without slab-object evidence.
GFP_RULES: tuple[GfpRule, ...] = (
    GfpRule("anon-thp", "anon", GFP_TRANSHUGE_LIGHT | __GFP_ZERO | __GFP_WRITE | __GFP_NOFAIL,
            GFP_TRANSHUGE_LIGHT,
            "vma_thp_gfp_mask(): GFP_TRANSHUGE_LIGHT bits (+ reclaim, __GFP_NORETRY by defrag "
            "mode); __GFP_NOMEMALLOC tells it from readahead [S: mm/huge_memory.c]",
            min_order=1),
    GfpRule("anon-zeroed", "anon", __GFP_MOVABLE | __GFP_ZERO, __GFP_MOVABLE | __GFP_ZERO,
            "vma_alloc_zeroed_movable_folio(): GFP_HIGHUSER_MOVABLE|__GFP_ZERO, anonymous "
            "faults [S: include/linux/highmem.h]; the page cache never asks for zeroed pages"),
    GfpRule("file-write", "file", __GFP_MOVABLE | __GFP_WRITE, __GFP_MOVABLE | __GFP_WRITE,
            "__filemap_get_folio(FGP_WRITE) adds __GFP_WRITE: page cache being written "
            "[S: mm/filemap.c]"),
    GfpRule("file-readahead", "file", __GFP_MOVABLE | _SLAB_BITS, __GFP_MOVABLE | _SLAB_BITS,
            "readahead_gfp_mask(): mapping gfp | __GFP_NORETRY | __GFP_NOWARN [S: "
            "include/linux/pagemap.h]"),
    GfpRule("file-nofail", "file", __GFP_NOFAIL, __GFP_NOFAIL,
            "grow_dev_folio(): block-device page cache for buffer heads, __GFP_NOFAIL "
            "[S: fs/buffer.c]"),
    GfpRule("anon-copy", "anon", GFP_HIGHUSER_MOVABLE | __GFP_WRITE | _SLAB_BITS
            | __GFP_NOFAIL | __GFP_ZERO, GFP_HIGHUSER_MOVABLE,
            "wp_page_copy()/do_cow_fault(): plain GFP_HIGHUSER_MOVABLE (with __GFP_FS, which "
            "ext4's page cache masks off) [S: mm/memory.c] [I: 410 of 412 such pages alive "
            "in the fixture pre-snapshots are anon]"),
    GfpRule("movable-other", "file", __GFP_MOVABLE, __GFP_MOVABLE,
            "other movable folios: page cache of mappings without __GFP_FS read without "
            "readahead [I]"),
    GfpRule("slab-gfp", "slab", __GFP_MOVABLE | __GFP_ZERO | __GFP_NORETRY | __GFP_COMP,
            __GFP_NORETRY | __GFP_COMP,
            "allocate_slab(): __GFP_NORETRY (and __GFP_NOWARN) on the first try, __GFP_COMP "
            "from folio allocation; never movable, never zeroed [S: mm/slub.c] [I: every "
            "page with slab-object evidence in trace-slab matches]"),
    GfpRule("file-nowait", "file", _ALL, GFP_NOWAIT | __GFP_COMP,
            "__filemap_get_folio(FGP_NOWAIT) of a GFP_NOFS mapping: gfp & ~GFP_KERNEL | "
            "GFP_NOWAIT [S: mm/filemap.c] [I: pre-snapshot pages LRU|ACTIVE|PRIVATE]"),
    GfpRule("pagetable", "pagetable", GFP_KERNEL_ACCOUNT | __GFP_ZERO | _SLAB_BITS
            | __GFP_MOVABLE, GFP_KERNEL_ACCOUNT | __GFP_ZERO,
            "pagetable_alloc(GFP_PGTABLE_USER = GFP_KERNEL_ACCOUNT|__GFP_ZERO) [S: "
            "include/asm-generic/pgalloc.h] [I: kernel stacks and vmalloc use other masks]"),
    GfpRule("pipe-buffer", "untyped", _ALL, GFP_HIGHUSER | __GFP_ACCOUNT,
            "anon_pipe_get_page(): alloc_page(GFP_HIGHUSER | __GFP_ACCOUNT), a Misc page "
            "[S: fs/pipe.c] [I: flags 0 in the pre-snapshots]"),
)
RULE_NAMES: tuple[str, ...] = ("slab-object", "kmalloc-large", *(r.name for r in GFP_RULES),
                               "unknown")
RULE_INDEX = {n: i for i, n in enumerate(RULE_NAMES)}
R_SLAB_OBJECT, R_KMALLOC_LARGE, R_UNKNOWN = (RULE_INDEX["slab-object"],
                                             RULE_INDEX["kmalloc-large"], RULE_INDEX["unknown"])

def gfp_class(gfp: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class index, rule index) per allocation from its gfp mask and order alone."""
    gfp = np.asarray(gfp, np.int64)
    order = np.asarray(order, np.int64)
    cls = np.full(len(gfp), UNTYPED, np.int8)
    rule = np.full(len(gfp), R_UNKNOWN, np.int8)
    todo = np.ones(len(gfp), bool)
    for r in GFP_RULES:
        hit = todo & ((gfp & r.mask) == r.value) & (order >= r.min_order)
        cls[hit] = CLASS_INDEX[r.cls]
        rule[hit] = RULE_INDEX[r.name]
        todo &= ~hit
    return cls, rule


# --- the snapshot, per PFN ---------------------------------------------------------------------

@dataclass
class SnapshotUnits:
    """The pre-snapshot per PFN: ``pclass[pfn]`` is the census class of the page (FLAG0 for
    ``flags == 0``), ``ucls[pfn]``/``uord[pfn]`` the class and order of the allocation unit
    whose first page is ``pfn`` (NO_UNIT elsewhere: tails, free pages, holes). Units follow
    the survey's rules exactly (a compound head and its tail run; flags==0 pages one by one).
    """

    pfn_count: int
    pclass: np.ndarray   # int8[pfn_count]
    ucls: np.ndarray     # int8[pfn_count]
    uord: np.ndarray     # int8[pfn_count]

    def units_by_class(self) -> np.ndarray:
        """int64[len(CLASS_NAMES), NR_UNIT_ORDERS]: units per class and order."""
        out = np.zeros((len(CLASS_NAMES), NR_UNIT_ORDERS), np.int64)
        m = self.ucls >= 0
        np.add.at(out, (self.ucls[m].astype(np.int64), self.uord[m].astype(np.int64)), 1)
        return out


@njit(cache=True, nogil=True)
def _unit_heads(flags, pclass, ucls, uord):
    """Allocation units of one chunk, cut as classify._classify_chunk() cuts them: a compound
    head with its KPF_COMPOUND_TAIL run, split into power-of-two units when irregular; every
    other allocated page is an order-0 unit; free pages and holes are no unit."""
    n = flags.shape[0]
    i = 0
    while i < n:
        c = pclass[i]
        if c in (FREE, HOLE, UNINIT):
            i += 1
            continue
        m = 1
        f = flags[i]
        if c != FLAG0 and (f & classify.B_COMPOUND) != classify.U0:
            while i + m < n and (flags[i + m] & classify.B_COMPOUND) == classify.B_TAIL:
                m += 1
        p = i
        rem = m
        while rem > 0:
            o = 0
            while o < NR_UNIT_ORDERS - 1 and (2 << o) <= rem:
                o += 1
            ucls[p] = c
            uord[p] = o
            p += 1 << o
            rem -= 1 << o
        i += m


def snapshot_units(snapshot: Snapshot, layout: Layout,
                   progress: Callable[[int], None] | None = None,
                   chunk_pfns: int = 1 << 18) -> SnapshotUnits:
    """Classify every PFN of ``snapshot`` with the survey's kernel and cut allocation units.

    The survey's per-chunk kernel (classify._classify_chunk) runs on each chunk with one map
    cell per PFN, so the class of every page is exactly the survey's (FLAG0 stays provisional).
    ``chunk_pfns`` must be a multiple of MAX_ORDER_NR_PAGES so no block straddles chunks.
    """
    n = snapshot.pfn_count
    pclass = np.empty(n, np.int8)
    ucls = np.full(n, NO_UNIT, np.int8)
    uord = np.full(n, NO_UNIT, np.int8)
    nr = layout.nregions
    for start, arrays in snapshot.chunks(("kpageflags",), chunk_pfns=chunk_pfns):
        flags = arrays["kpageflags"]
        k = len(flags)
        pc = pclass[start:start + k]          # the kernel's map, one cell (class) per PFN
        pc.fill(0)
        classify._classify_chunk(
            flags, 0, layout.bounds - start, layout.seg_region, layout.seg_ram,
            np.zeros((nr, classify.NCLS), np.int64), np.zeros(nr, np.int64),
            np.zeros((classify.NCLS, NR_UNIT_ORDERS), np.int64),
            np.zeros((nr, classify.NR_PAGE_ORDERS), np.int64), pc, 0,
            np.full(nr, -1, np.int64), np.zeros((k >> classify.SECTION_SHIFT) + 2, np.uint8),
            np.zeros(len(classify.ANOMALIES), np.int64))
        _unit_heads(flags, pc, ucls[start:start + k], uord[start:start + k])
        if progress:
            progress(k)
    return SnapshotUnits(n, pclass, ucls, uord)


# --- slab-object evidence ----------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _slab_evidence(event, pfn, order, ptr, bytes_alloc, head_event, head_order,
                   page_offset, max_cache, evidence, outside, outside_pfn):
    """Walk the events in order keeping the live trace allocations by head PFN; each slab
    object pointer marks the live allocation holding it (evidence[alloc event] = 1 slab,
    2 kmalloc_large). Objects in no live trace allocation (slabs from before the trace) are
    listed in ``outside_pfn`` (count in outside[0])."""
    n = event.shape[0]
    npfn = head_event.shape[0]
    for i in range(n):
        e = event[i]
        if e == 0:                                       # mm_page_alloc
            p = pfn[i]
            if 0 <= p < npfn:
                head_event[p] = i
                head_order[p] = order[i]
        elif e == 1:                                     # mm_page_free (batched dups skipped)
            p = pfn[i]
            if 0 <= p < npfn:
                head_event[p] = -1
        elif (e == 5 or e == 7) and ptr[i] != 0:         # kmem_cache_alloc, kmalloc
            q = np.int64((ptr[i] - page_offset) >> np.uint64(PAGE_SHIFT))
            if q < 0 or q >= npfn:
                continue
            found = -1
            for o in range(11):
                h = q & ~((1 << o) - 1)
                j = head_event[h]
                if j >= 0 and head_order[h] >= o:
                    found = j
                    break
            if found >= 0:
                big = e == 7 and bytes_alloc[i] > max_cache
                evidence[found] = 2 if big else 1
            else:
                k = outside[0]
                if k < outside_pfn.shape[0]:
                    outside_pfn[k] = q
                outside[0] = k + 1


@dataclass
class TypeInference:
    """A class and the rule that gave it for every mm_page_alloc event of a trace."""

    cls: np.ndarray          # int8 per event (NO_UNIT for non-alloc events)
    rule: np.ndarray         # int8 per event (-1 for non-alloc events)
    #: slab object pointers that fall on pages allocated before the trace
    outside_pfns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    outside_total: int = 0
    has_slab_events: bool = False

    def summary(self, order: np.ndarray) -> dict:
        """Units and pages per rule and per class, and the unknown share."""
        a = self.rule >= 0
        pages = np.int64(1) << order[a].astype(np.int64)
        rules = self.rule[a].astype(np.int64)
        classes = self.cls[a].astype(np.int64)
        by_rule = {}
        for r, name in enumerate(RULE_NAMES):
            m = rules == r
            if m.any():
                by_rule[name] = {"units": int(m.sum()), "pages": int(pages[m].sum())}
        by_class = {}
        for c in np.unique(classes):
            m = classes == c
            by_class[CLASS_NAMES[c]] = {"units": int(m.sum()), "pages": int(pages[m].sum())}
        unk = rules == R_UNKNOWN
        total_pages = int(pages.sum())
        return {
            "by_rule": by_rule, "by_class": by_class,
            "units": int(a.sum()), "pages": total_pages,
            "unknown_units": int(unk.sum()), "unknown_pages": int(pages[unk].sum()),
            "unknown_share": float(pages[unk].sum() / total_pages) if total_pages else 0.0,
            "slab_events": self.has_slab_events,
            "slab_objects_on_pre_trace_pages": self.outside_total,
        }


def infer_types(tr: Trace, page_offset: int = PAGE_OFFSET_BASE,
                max_outside: int = 1 << 20) -> TypeInference:
    """Class of every mm_page_alloc event from slab objects, large kmallocs and gfp rules."""
    ev = tr.events
    event = ev["event"]
    n = len(event)
    is_alloc = event == 0
    cls = np.full(n, NO_UNIT, np.int8)
    rule = np.full(n, -1, np.int8)
    gcls, grule = gfp_class(ev["gfp"][is_alloc], ev["order"][is_alloc])
    cls[is_alloc] = gcls
    rule[is_alloc] = grule
    has_slab = bool(np.isin(event, (5, 7)).any())
    outside_pfn = np.zeros(max_outside if has_slab else 0, np.int64)
    outside = np.zeros(1, np.int64)
    if has_slab:
        pfn = ev["pfn"]
        npfn = int(max(pfn.max(initial=0), 0)) + 1
        npfn = max(npfn, int((int(ev["ptr"].max()) - page_offset) >> PAGE_SHIFT) + 1
                   if int(ev["ptr"].max()) > page_offset else 0)
        npfn = min(npfn, 1 << 36)
        evidence = np.zeros(n, np.int8)
        _slab_evidence(event, pfn, ev["order"], ev["ptr"], ev["bytes_alloc"],
                       np.full(npfn, -1, np.int64), np.zeros(npfn, np.int8),
                       np.uint64(page_offset), KMALLOC_MAX_CACHE_SIZE, evidence, outside,
                       outside_pfn)
        slab = evidence == 1
        cls[slab] = SLAB
        rule[slab] = R_SLAB_OBJECT
        big = evidence == 2
        cls[big] = UNTYPED
        rule[big] = R_KMALLOC_LARGE
    k = int(min(outside[0], len(outside_pfn)))
    return TypeInference(cls, rule, outside_pfn[:k].copy(), int(outside[0]), has_slab)


# --- checking the rules against the snapshot --------------------------------------------------

@njit(cache=True, nogil=True)
def _alive_at_gate(event, pfn, gate, npfn):
    """Alloc events whose block was still allocated when the snapshot read its PFN."""
    head = np.full(npfn, -1, np.int64)
    for i in range(event.shape[0]):
        p = pfn[i]
        if p < 0 or p >= npfn or i >= gate[i]:
            continue
        if event[i] == 0:
            head[p] = i
        elif event[i] == 1:
            head[p] = -1
    return head[head >= 0]


def check_against_snapshot(tr: Trace, types: TypeInference, units: SnapshotUnits,
                           gate_of_event: np.ndarray) -> dict:
    """How often the inferred class agrees with the snapshot's for allocations the trace made
    before the snapshot read their PFN and that were still allocated then; and where the slab
    objects of pre-trace pages fall. ``gate_of_event[i]`` is the event index from which the
    PFN of event ``i`` is no longer in the snapshot (replay.ChunkGates.of())."""
    ev = tr.events
    npfn = min(units.pfn_count, int(ev["pfn"].max(initial=-1)) + 1)
    idx = _alive_at_gate(ev["event"], ev["pfn"], np.asarray(gate_of_event, np.int64), npfn)
    snap = units.pclass[ev["pfn"][idx]]
    got = types.cls[idx]
    rules = types.rule[idx]
    agree = got == snap
    by_rule = {}
    for r in np.unique(rules):
        m = rules == r
        by_rule[RULE_NAMES[r]] = {"alive": int(m.sum()), "agree": int(agree[m].sum())}
    out = {"alive_at_snapshot": len(idx), "agree": int(agree.sum()),
           "agree_share": float(agree.mean()) if len(idx) else None, "by_rule": by_rule}
    if types.has_slab_events and len(types.outside_pfns):
        op = types.outside_pfns[types.outside_pfns < units.pfn_count]
        on_slab = int((units.pclass[op] == SLAB).sum())
        out["slab_objects_on_pre_trace_pages"] = {
            "checked": len(op), "on_snapshot_slab_pages": on_slab,
            "share": on_slab / len(op) if len(op) else None}
    return out
