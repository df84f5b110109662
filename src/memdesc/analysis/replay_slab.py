"""The trace's slab events as slab operations of the replay's access accounting (issue 9):
``kmem:kmem_cache_alloc`` / ``kmem_cache_free`` / ``kmalloc`` / ``kfree`` of a ``--slab``
recording run through the emulated SLUB of the stage's kernel-memory arena
(memdesc.analysis.replay_arena), in trace order, between the replay's allocator operations
(the side operations of memdesc.analysis.replay_side).

What each event becomes (mm/slub.c of Linux 6.18):

* ``kmem_cache_alloc`` (slab_alloc_node()): one object of the cache the event names, created in
  the arena by kmem_cache_create() (memdesc.mm.slab_caches) with ``size`` = the event's
  ``bytes_alloc`` (the kernel's s->size, alignment included), the trace's gfp;
* ``kmalloc`` (__kmalloc_noprof() -> kmalloc_slab(), or ___kmalloc_large_node() above
  KMALLOC_MAX_CACHE_SIZE): the arena's kmalloc-<n> cache for ``bytes_req``
  (memdesc.mm.kmalloc.kmalloc_nb(), which also does kmalloc_large), the trace's gfp;
* ``kmem_cache_free`` (slab_free(): virt_to_slab(), then the object back to its slab) and
  ``kfree`` (kfree(): virt_to_slab() and slab->slab_cache, or free_large_kmalloc()) of the
  object the matching allocation got: memdesc.mm.slub._kfree_one().

Both are counted as one operation of class kmem_cache_alloc / kmem_cache_free (kmalloc as
kmem_cache_alloc, kfree as kmem_cache_free: memdesc.mm.access "kmalloc counts as
kmem_cache_alloc").

Pairing (vectorised, :func:`pair_slab_events`): a free is paired with the last allocation
of the same ``ptr`` before it (a stable sort by (ptr, event index): the row just before the
free in that order). Skipped and counted: kfree(NULL)/kmem_cache_free(NULL) and failed
allocations (``is_null``), a free whose previous row with that ptr is a free (a lost
allocation event), a kfree() of an object allocated before the trace (the event has no cache
and no size). A kmem_cache_free() of an object allocated before the trace (drop_caches frees
many dentries and inodes) is replayed: the object is allocated in the arena at the start,
before accounting starts (the start state of the slab; bulk per cache, so such objects sit in
few slabs -- the real ones were spread over the uptime). Its size: the cache's ``bytes_alloc``
in the trace, else the pre-snapshot's slabinfo ``objsize``, else it is skipped and counted.

Not modelled [I]: the cache flags the trace does not show (SLAB_RECLAIM_ACCOUNT, SLAB_ACCOUNT,
SLAB_HWCACHE_ALIGN, SLAB_TYPESAFE_BY_RCU, constructors: every trace cache is created with
flags 0 and size = bytes_alloc), cache merging (each name is its own cache), the kmalloc
cache types other than KMALLOC_NORMAL (kmalloc-cg-*, kmalloc-rcl-*, dma-kmalloc-*: every
kmalloc() is served by kmalloc-<n>), the per-CPU freelists and sheaves (one modelled CPU,
memdesc.mm.slub), __GFP_ZERO's memset of the object (object data, not metadata).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

from memdesc.ingest.trace_events import EVENT_CODE, Trace
from memdesc.mm.access_core import OP_KMEM_ALLOC, OP_KMEM_FREE, op_begin, op_end
from memdesc.mm.free_tracking import unmanaged
from memdesc.mm.kmalloc import kmalloc_nb
from memdesc.mm.memdesc_alloc import E_S, E_STATS, ST_IN_FREE
from memdesc.mm.slab import _GROW
from memdesc.mm.slub import _alloc_obj, _kfree_one

KMEM_CACHE_ALLOC, KMEM_CACHE_FREE = EVENT_CODE["kmem_cache_alloc"], EVENT_CODE["kmem_cache_free"]
KMALLOC, KFREE = EVENT_CODE["kmalloc"], EVENT_CODE["kfree"]
_ALLOCS = (KMEM_CACHE_ALLOC, KMALLOC)
_FREES = (KMEM_CACHE_FREE, KFREE)
#: slab_op() counters (``stats`` of the stage's context)
SL_ALLOC_FAILED, SL_BAD_FREE, SL_FREE_OF_FAILED = range(3)
NR_SL = 3
_U0 = np.uint64(0)


# ---- the operation (numba; called by replay_side's side-operation dispatcher) -----------------

@njit(cache=True)
def slab_op(AE, sl, cls, sub, obj):
    """One slab operation of object ``obj`` in the arena ``AE``: ``cls`` kmem_cache_alloc
    (``sub`` = the gfp; object cache -1: kmalloc() of its size) or kmem_cache_free (``sub``
    1: kfree(), 0: kmem_cache_free() of the object's cache). ``sl`` = (object cache, object
    size, object address, kmalloc caches, kmalloc size_index, counters). Mirrors
    slab_alloc_node() / __kmalloc_noprof() and slab_free() / kfree() (module doc)."""
    obj_cache, obj_size, obj_addr, kmc, size_index, st = sl
    S = AE[E_S]
    op_begin(S, cls)
    if cls == OP_KMEM_ALLOC:
        c = obj_cache[obj]
        if c >= 0:
            a = _alloc_obj(AE, c, np.int64(sub), 0)
        else:
            kmalloc_nb(AE, kmc, size_index, obj_size[obj:obj + 1], np.int64(sub), 0,
                       obj_addr[obj:obj + 1], 0)
            a = obj_addr[obj]
        if a <= _GROW:                        # failed (the arena is pre-grown: never _GROW)
            st[SL_ALLOC_FAILED] += 1
            a = _U0
        obj_addr[obj] = a
    else:
        a = obj_addr[obj]
        if a == 0:
            st[SL_FREE_OF_FAILED] += 1
        else:
            stats = AE[E_STATS]
            stats[ST_IN_FREE] += 1
            if not _kfree_one(AE, np.int64(-1) if sub else obj_cache[obj], a):
                st[SL_BAD_FREE] += 1
            stats[ST_IN_FREE] -= 1
            obj_addr[obj] = _U0
    op_end(S)


@njit(cache=True)
def borrow_ctx(sl):
    """slab_op()'s ``sl`` with borrowed arrays (memdesc.mm.memdesc_alloc.borrow(): the
    caller keeps them alive; no reference counting per call)."""
    return (unmanaged(sl[0]), unmanaged(sl[1]), unmanaged(sl[2]), unmanaged(sl[3]),
            unmanaged(sl[4]), unmanaged(sl[5]))


def empty_ctx() -> tuple:
    """The ``sl`` tuple of slab_op() for a replay without slab operations (same types)."""
    return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint64),
            np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(NR_SL, np.int64))


# ---- the trace's events -> objects and operations (numpy) --------------------------------------

def pair_slab_events(code: np.ndarray, ptr: np.ndarray, is_null: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(rows, pair) of the slab events in ``code``: ``rows`` the non-NULL slab event rows in
    trace order; ``pair[i]`` for a free row the position in ``rows`` of its allocation (the
    last allocation of the same ptr before it), -1 when that ptr has no earlier row (allocated
    before the trace), -2 when its previous row is a free; -1 for allocations."""
    slab = np.isin(code, _ALLOCS + _FREES) & ~is_null
    rows = np.flatnonzero(slab)
    p = ptr[rows]
    srt = np.lexsort((np.arange(len(rows)), p))          # by (ptr, trace order), stable
    prev = np.full(len(rows), -1, np.int64)
    same = np.zeros(len(rows), bool)
    if len(rows) > 1:
        same[1:] = p[srt[1:]] == p[srt[:-1]]
        prev[srt[1:]] = np.where(same[1:], srt[:-1], -1)
    is_free = np.isin(code[rows], _FREES)
    pair = np.full(len(rows), -1, np.int64)
    has = is_free & (prev >= 0)
    prev_is_alloc = np.zeros(len(rows), bool)
    prev_is_alloc[has] = ~is_free[prev[has]]
    pair[has] = np.where(prev_is_alloc[has], prev[has], -2)
    return rows, pair


@dataclass
class SlabPlan:
    """The slab operations of a trace, stage independent (:func:`slab_plan`).

    Objects: ids ``0 .. n_alloc-1`` are the trace's allocations in trace order, then the
    objects allocated before the trace (``pre``). Per object: ``tcache`` (row of ``caches``,
    -1: a kmalloc object), ``size`` (kmalloc: bytes_req; else the cache's size), ``gfp``.
    Operations in trace order: ``event`` (trace row), ``op_class``, ``sub`` (alloc: gfp;
    free: 1 for kfree), ``obj``."""

    caches: list[tuple[str, int]]
    tcache: np.ndarray
    size: np.ndarray
    n_alloc: int
    pre_cache: np.ndarray            # per pre-trace object: row of ``caches``
    event: np.ndarray
    op_class: np.ndarray
    sub: np.ndarray
    obj: np.ndarray
    peak_bytes: int
    counts: dict[str, int] = field(default_factory=dict)

    def rows(self) -> tuple[np.ndarray, ...]:
        """(event, op class, pfn, sub, arg) of replay_side.SideRows: pfn -1, arg the
        object id."""
        return (self.event, self.op_class.astype(np.int64), np.full(len(self.event), -1,
                                                                      np.int64),
                self.sub, self.obj)

    def start(self, kernel) -> StageSlab:
        """The plan in the arena ``kernel`` (memdesc.mm.mm_init.Kernel): its caches and the
        objects allocated before the trace (before accounting is attached)."""
        return StageSlab(self, kernel)


def _slabinfo_sizes(snapshot) -> dict[str, int]:
    """objsize per cache name from the pre-snapshot's slabinfo (empty without one)."""
    from memdesc.ingest.procfs import parse_slabinfo

    text = snapshot.text("slabinfo") if snapshot is not None else None
    return {c.name: c.objsize for c in parse_slabinfo(text)} if text else {}


def slab_plan(tr: Trace, snapshot=None) -> SlabPlan | None:
    """The plan of ``tr``'s slab events (module doc), None without any."""
    ev = tr.events
    code = ev["event"]
    null = np.isin(code, _ALLOCS + _FREES) & ev["is_null"]
    rows, pair = pair_slab_events(code, ev["ptr"], ev["is_null"])
    if not len(rows) and not null.any():
        return None
    c = code[rows]
    is_alloc = np.isin(c, _ALLOCS)
    alloc_pos = np.flatnonzero(is_alloc)
    n_alloc = len(alloc_pos)
    obj_of_pos = np.full(len(rows), -1, np.int64)
    obj_of_pos[alloc_pos] = np.arange(n_alloc)
    names = ev["cache"][rows]
    balloc = ev["bytes_alloc"][rows]
    # caches: names of kmem_cache_alloc events (size: bytes_alloc), then pre-trace-only names
    kca = c == KMEM_CACHE_ALLOC
    sizes: dict[int, int] = {}
    for nid, b in zip(*_max_by(names[kca], balloc[kca]), strict=True):
        sizes[int(nid)] = int(b)
    pre_free = (c == KMEM_CACHE_FREE) & (pair == -1)
    slabinfo = _slabinfo_sizes(snapshot) if (pre_free & ~np.isin(names, list(sizes))).any() \
        else {}
    for nid in np.unique(names[pre_free]).tolist():
        if nid not in sizes and nid >= 0 and tr.strings[nid] in slabinfo:
            sizes[nid] = slabinfo[tr.strings[nid]]
    order = sorted(sizes)
    caches = [(tr.strings[n], sizes[n]) for n in order]
    row_of_name = np.full(max(order, default=-1) + 2, -1, np.int64)
    row_of_name[np.asarray(order, np.int64)] = np.arange(len(order))

    def cache_row(n: np.ndarray) -> np.ndarray:
        return np.where((n >= 0) & (n < len(row_of_name) - 1),
                        row_of_name[np.clip(n, 0, len(row_of_name) - 1)], -1)

    pre_ok = pre_free & (cache_row(names) >= 0)
    pre_pos = np.flatnonzero(pre_ok)
    tcache = np.concatenate([np.where(kca[alloc_pos], cache_row(names[alloc_pos]), -1),
                             cache_row(names[pre_pos])])
    cache_size = np.array([sz for _, sz in caches] + [0], np.int64)
    size = np.concatenate([np.where(kca[alloc_pos], balloc[alloc_pos],
                                    ev["bytes_req"][rows][alloc_pos]),
                           cache_size[cache_row(names[pre_pos])]]).astype(np.int64)
    obj_of_pos[pre_pos] = n_alloc + np.arange(len(pre_pos))
    paired = ~is_alloc & (pair >= 0)
    free_obj = np.full(len(rows), -1, np.int64)
    free_obj[paired] = obj_of_pos[pair[paired]]
    free_obj[pre_ok] = obj_of_pos[pre_ok]
    run = is_alloc | (free_obj >= 0)
    obj = np.where(is_alloc, obj_of_pos, free_obj)[run]
    op_class = np.where(is_alloc, OP_KMEM_ALLOC, OP_KMEM_FREE)[run].astype(np.uint8)
    sub = np.where(is_alloc, ev["gfp"][rows].astype(np.int64), (c == KFREE).astype(np.int64))
    # live bytes over the trace (the pre-trace objects live from the start)
    obj_bytes = np.concatenate([balloc[alloc_pos], size[n_alloc:]]).astype(np.int64)
    delta = np.where(is_alloc[run], obj_bytes[obj], -obj_bytes[obj])
    start_bytes = int(obj_bytes[n_alloc:].sum())
    peak = start_bytes + int(np.cumsum(delta).max(initial=0))
    counts = {
        "kmem_cache_alloc": int((c == KMEM_CACHE_ALLOC).sum()),
        "kmalloc": int((c == KMALLOC).sum()),
        "kmem_cache_free": int((c == KMEM_CACHE_FREE).sum()),
        "kfree": int((c == KFREE).sum()),
        "null_skipped": int(null.sum()),
        "frees_paired": int(paired.sum()),
        "pre_trace_objects": len(pre_pos),
        "kfree_of_pre_trace_skipped": int(((c == KFREE) & (pair == -1)).sum()),
        "pre_trace_without_size_skipped": int((pre_free & ~pre_ok).sum()),
        "free_after_free_skipped": int((pair == -2).sum()),
        "caches": len(caches),
    }
    return SlabPlan(caches, tcache.astype(np.int64), size, n_alloc,
                    tcache[n_alloc:].astype(np.int64), rows[run].astype(np.int64), op_class,
                    sub[run].astype(np.int64), obj.astype(np.int64), peak, counts)


def _max_by(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct keys, the largest value of each)."""
    if not len(keys):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    u, inv = np.unique(keys, return_inverse=True)
    out = np.full(len(u), np.iinfo(np.int64).min, np.int64)
    np.maximum.at(out, inv, values.astype(np.int64))
    return u, out


class StageSlab:
    """The plan in one stage's arena: ``ctx`` is slab_op()'s ``sl`` tuple; ``obj_addr`` the
    address of every object (0: not allocated, freed, or its allocation failed)."""

    def __init__(self, plan: SlabPlan, kernel):
        from memdesc.mm import gfp as _gfp

        sl = kernel.slub
        self.plan, self.kernel = plan, kernel
        cmap = np.empty(len(plan.caches), np.int64)
        for i, (name, size) in enumerate(plan.caches):
            kc = sl.by_name.get(name) or sl.kmem_cache_create(name, size)
            cmap[i] = kc.index
        self.cache_index = cmap
        obj_cache = np.where(plan.tcache >= 0, cmap[np.maximum(plan.tcache, 0)], -1)
        self.obj_addr = np.zeros(len(plan.tcache), np.uint64)
        self.stats = np.zeros(NR_SL, np.int64)
        self.live_at_start = {kc.index: sl.live(kc) for kc in sl.cache_list}
        pre = np.arange(plan.n_alloc, len(plan.tcache))
        self.pre_failed = 0
        for r in np.unique(plan.pre_cache).tolist():       # the start state, not counted
            ids = pre[plan.pre_cache == r]
            got = sl.kmem_cache_alloc_bulk(sl.cache_list[int(cmap[r])], _gfp.GFP_KERNEL,
                                           len(ids))
            self.obj_addr[ids] = got
            self.pre_failed += int((got == 0).sum())
        self.ctx = (obj_cache.astype(np.int64), plan.size, self.obj_addr,
                    sl.kmalloc_caches, sl._size_index, self.stats)

    def live_objects(self) -> int:
        """Objects the arena's trace and kmalloc caches hold beyond their start (the
        objects of this plan that are allocated now, kmalloc_large ones excluded)."""
        sl = self.kernel.slub
        idx = set(self.cache_index.tolist()) | {int(i) for i in sl.kmalloc_caches if i >= 0}
        return sum(sl.live(sl.cache_list[i]) - self.live_at_start.get(i, 0) for i in idx)

    def summary(self) -> dict[str, int]:
        """The plan's counts and this stage's failures."""
        return {**self.plan.counts, "pre_trace_alloc_failed": self.pre_failed,
                "alloc_failed": int(self.stats[SL_ALLOC_FAILED]),
                "bad_free": int(self.stats[SL_BAD_FREE]),
                "free_of_failed": int(self.stats[SL_FREE_OF_FAILED]),
                "live_at_end": int((self.obj_addr != 0).sum())}
