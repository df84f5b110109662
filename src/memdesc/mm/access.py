"""Metadata access accounting: what each kernel operation reads and writes, at each stage.

The contract every consumer (the cache model, the native measurement, ``memdesc timing``)
builds on. The emulator records, per kernel operation, the 8-byte words of metadata it loads
and stores at the stage's real emulated kernel addresses:

* struct pages in the vmemmap: ``VMEMMAP_START + pfn * sizeof(struct page)`` + member offset
  (memdesc.mm.kmem);
* descriptors and other slab objects, page-table pages: the direct map,
  ``PAGE_OFFSET + (pfn << PAGE_SHIFT)`` + offset (memdesc.mm.kmem);
* struct zone, free_area[] list heads and per_cpu_pages: emulated addresses from
  ``HEADS_BASE`` up (memdesc.mm.ft_common), in the unused hole below the vmemmap; so is a
  free-page tracking option's side memory (bitmaps, counters: the last region of S).

An operation is one call of a kernel entry point of one :data:`OP_CLASSES` row (nested calls
are part of the outermost operation: the pages folio_alloc() takes from the buddy allocator
are folio_alloc()'s accesses).

Dependent loads: ``KIND_PTR`` marks a load whose value is a pointer (or a PFN) that later
accesses of the same operation are computed from; ``KIND_DEP`` marks an access whose address
is computed from the value of the latest earlier ``KIND_PTR`` load of the operation. The
chain level of a load is 1 without ``KIND_DEP``, else the level of that PTR load + 1; an
operation's dependent-load chain is the largest level of its loads. Example, page_zone() of
an allocated folio page: v6.18 loads page->flags (level 1): chain 1; page16 loads the
memdesc word (PTR, level 1) then the folio's flags (DEP, level 2): chain 2.

Recording (memdesc.mm.access_core holds the numba core): ``S[C_ACC]`` (config slot 31 of the
allocator's state array) holds the address of an int64 accounting block, 0 when off, so every
numba function with S (or the environment tuple E, E[E_S]) counts without new arguments, and
an access site costs one load and one predictable branch when off. :func:`enable` allocates
the block and keeps it alive on the MemMap (``mm.access_block``). Only accesses inside an
operation are counted (boot, debug walks and Python-side readers are not).

Addresses: struct page words ``VMEMMAP_START + 8 i`` of mem_map word i; zone rows, per_cpu_pages
rows, list heads, pageblock flags and zonelists are S words laid out from ``HEADS_BASE`` in S
order (list head h at HEADS_BASE + 16 h, as memdesc.mm.free_tracking names it), one 8-byte word
per S word (the zone row is 40 words, a per_cpu_pages row 8 words: not the kernel's byte
layout); descriptors, slab objects and page tables through the direct map. Accesses narrower
than 8 bytes are logged as their aligned 8-byte word (the log packs the kind in the low bits).

Dependence: struct page / free page / list head accesses name their node (a PFN or a head);
an access is DEP when its node is the one the latest PTR load named (see access_core for the
list_del() ordering that keeps the "latest PTR" rule exact there). Accesses of kernel memory
by address (descriptors, slab objects and struct slab, through kmem.kread_a/kwrite_a) are DEP
when they lie within [-128, +256) bytes of the latest PTR load's value (a member of the object
it points to); page-table entries and the lookups' first loads carry explicit kinds
(memdesc.mm.lookups). A single "latest pointer" cannot say that two accesses depend on two
different earlier pointers: such an access is marked by the latest one, or not at all (an
under-count of the chain, never an over-count, except by the address window heuristic).

Operations (who opens them): alloc_pages_nb() and free_pages_nb() (memdesc.mm.page_alloc,
refined by path: pcp hit / refill / buddy, pcp / drain / buddy), folio_alloc_nb() and
folio_put_refs() (memdesc.mm.folio; folio_put.ref when a reference is dropped without
freeing), slab_alloc_node() and the kmem_cache_free()/kfree() of one object (memdesc.mm.slub;
kmalloc counts as kmem_cache_alloc), and the lookups of memdesc.mm.lookups, which the
scenarios' readbacks call (pt_walk per mapped virtual page, pagecache_lookup per cached index).
Not counted (no class, or outside every operation): boot, the start state, drain_all_pages()
called from Python, vmstat's decay_pcp_high(), and the zsmalloc/page_pool/vmalloc/page-table
descriptor writes made outside the allocations they call. Counters per class:
operations, loads, stores, distinct 64-byte lines per operation (summed; exact up to
access_core.LT_FILL distinct lines in one operation), the sum and max of the dependent-load
chain. The log keeps whole operations; when it is full further operations are counted but not
logged (:func:`dropped` tells).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from memdesc.mm import access_core as core
from memdesc.mm.access_core import (  # noqa: F401 -- the counter columns are part of the API
    CT_CHAIN_MAX,
    CT_CHAIN_SUM,
    CT_LINES,
    CT_LOADS,
    CT_OPS,
    CT_STORES,
    NCOUNT,
)
from memdesc.mm.ft_common import C_W
from memdesc.mm.kmem import VMEMMAP_START

#: access kind bits (AccessStream.kind)
KIND_STORE = 1          # a store (else a load)
KIND_DEP = 2            # address computed from the latest earlier KIND_PTR load of the op
KIND_PTR = 4            # a load whose value later accesses of the op are computed from

LINE_BYTES = 64


class OpClass(NamedTuple):
    """One class of kernel operation the accounting counts apart."""

    name: str
    kernel: str         # the kernel function(s) it mirrors
    doc: str


#: operation classes; the class id is the index (AccessStream.op_class)
OP_CLASSES: tuple[OpClass, ...] = (
    OpClass("alloc_pages.pcp", "rmqueue_pcplist()", "order-0..3 page from a non-empty pcp list"),
    OpClass("alloc_pages.refill", "rmqueue_bulk()", "pcp list empty: refilled from the buddy"),
    OpClass("alloc_pages.buddy", "rmqueue_buddy()", "order not pcp-allowed: straight from buddy"),
    OpClass("free_pages.pcp", "free_frozen_page_commit()", "onto a pcp list, no drain"),
    OpClass("free_pages.drain", "free_pcppages_bulk()", "pcp over high: a batch back to buddy"),
    OpClass("free_pages.buddy", "__free_one_page()", "order not pcp-allowed: merged into buddy"),
    OpClass("folio_alloc", "folio_alloc()", "descriptor (dynamic stages) + pages + prep"),
    OpClass("folio_put", "folio_put()", "last reference: descriptor and pages freed"),
    OpClass("kmem_cache_alloc", "kmem_cache_alloc()", "one slab object"),
    OpClass("kmem_cache_free", "kmem_cache_free()", "one slab object (virt_to_slab included)"),
    OpClass("page_folio", "page_folio()", "page -> its folio"),
    OpClass("folio_page", "folio_page()", "folio, n -> its n-th page"),
    OpClass("page_zone", "page_zone()", "page -> struct zone"),
    OpClass("page_to_nid", "page_to_nid()", "page -> node id"),
    OpClass("page_flag_test", "PageFoo() / folio_test_foo()", "one page-flag test"),
    OpClass("pt_walk", "follow_page_pte()", "va -> pte -> pfn -> page -> folio"),
    OpClass("pagecache_lookup", "filemap_get_folio()", "mapping, index -> xarray -> folio"),
    OpClass("folio_put.ref", "folio_put()", "a reference dropped, not the last one"),
)
#: class name -> id
OP_CLASS_ID: dict[str, int] = {c.name: i for i, c in enumerate(OP_CLASSES)}


def op_class_id(name: str) -> int:
    """The id of operation class ``name``; an unknown name is an error."""
    try:
        return OP_CLASS_ID[name]
    except KeyError:
        raise KeyError(f"unknown operation class {name!r}; known: "
                       f"{', '.join(OP_CLASS_ID)}") from None


class AccessStream(NamedTuple):
    """The metadata accesses of a run of operations, in program order.

    The accesses of operation ``i`` are ``[op_first[i], op_first[i + 1])``; every access is
    one naturally aligned word of at most 8 bytes (so it lies inside one 64-byte line).
    """

    addr: np.ndarray        # uint64: emulated kernel virtual address of each access
    kind: np.ndarray        # uint8: KIND_* bits of each access
    op_class: np.ndarray    # uint8: OP_CLASSES id of each operation
    op_first: np.ndarray    # int64, len(op_class) + 1: first access of each operation

    @property
    def nr_ops(self) -> int:
        return len(self.op_class)

    @property
    def nr_accesses(self) -> int:
        return len(self.addr)


def chain_levels(stream: AccessStream) -> np.ndarray:
    """Dependent-load chain length of every operation of ``stream`` (see the module doc).

    The reference definition in plain Python, for tests and small streams; the
    emulator's counters compute the same thing inline.
    """
    out = np.zeros(stream.nr_ops, dtype=np.int64)
    for i in range(stream.nr_ops):
        ptr_level, best = 0, 0
        for a in range(int(stream.op_first[i]), int(stream.op_first[i + 1])):
            k = int(stream.kind[a])
            level = ptr_level + 1 if k & KIND_DEP else 1
            if not k & KIND_STORE:
                best = max(best, level)
                if k & KIND_PTR:
                    ptr_level = level
        out[i] = best
    return out


# ---- recording API -------------------------------------------------------------------------

#: counter column names, in order
COUNTER_NAMES = ("ops", "loads", "stores", "lines", "chain_sum", "chain_max")
assert len(COUNTER_NAMES) == NCOUNT
# the ids the numba code opens are the rows of OP_CLASSES
assert list(range(len(OP_CLASSES))) == [
        core.OP_ALLOC_PCP, core.OP_ALLOC_REFILL, core.OP_ALLOC_BUDDY, core.OP_FREE_PCP,
        core.OP_FREE_DRAIN, core.OP_FREE_BUDDY, core.OP_FOLIO_ALLOC, core.OP_FOLIO_PUT,
        core.OP_KMEM_ALLOC, core.OP_KMEM_FREE, core.OP_PAGE_FOLIO, core.OP_FOLIO_PAGE,
        core.OP_PAGE_ZONE, core.OP_PAGE_TO_NID, core.OP_PAGE_FLAG, core.OP_PT_WALK,
        core.OP_PAGECACHE, core.OP_FOLIO_PUT_REF]


def _memmap(k):
    """The MemMap of a Kernel (``k.mm``) or a MemMap itself."""
    return getattr(k, "mm", k)


def enable(k, log_capacity: int = 0) -> None:
    """Turn accounting on for one emulated kernel (a Kernel or a MemMap): counters always,
    and a log of up to ``log_capacity`` accesses when > 0. Counters start at zero."""
    mm = _memmap(k)
    if log_capacity < 0:
        raise ValueError("log_capacity must be >= 0")
    ops = max(1024, log_capacity // 2) if log_capacity else 0
    n = core.block_words(len(OP_CLASSES), log_capacity, ops)
    A = np.zeros(n, np.int64)
    A[core.A_SIZE] = n
    A[core.A_NCLASS] = len(OP_CLASSES)
    fn = core.callbacks()
    A[core.A_FN_RECORD], A[core.A_FN_BEGIN], A[core.A_FN_END] = (
        fn["record"], fn["begin"], fn["end"])
    A[core.A_FN_NOPTR], A[core.A_FN_REFINE] = fn["noptr"], fn["refine"]
    # KIND_MEMWORD sites: mem index -> vmemmap address and PFN
    A[core.A_MEMBASE] = np.uint64(VMEMMAP_START).astype(np.int64)
    A[core.A_W] = mm.S[C_W]
    A[core.A_OFF_CT] = core.NHDR
    A[core.A_OFF_LT] = core.NHDR + len(OP_CLASSES) * NCOUNT
    A[core.A_OFF_LOG] = A[core.A_OFF_LT] + 2 * core.LT_SIZE
    A[core.A_LOGCAP] = log_capacity
    A[core.A_OFF_OPS] = A[core.A_OFF_LOG] + log_capacity
    A[core.A_OPCAP] = ops
    lt = A[A[core.A_OFF_LT]:A[core.A_OFF_LOG]]
    lt[1::2] = -1                                 # no line belongs to an operation yet
    mm.access_block = A
    mm.S[core.C_ACC] = A.ctypes.data


def disable(k) -> None:
    """Turn accounting off (the counters and log are dropped)."""
    mm = _memmap(k)
    mm.S[core.C_ACC] = 0
    mm.access_block = None


def share_accounting(dst, src) -> None:
    """Record ``dst``'s accesses into ``src``'s accounting (each a Kernel or a MemMap): the
    accounting word of ``dst`` (``S[C_ACC]``) points at ``src``'s block, so ``dst``'s
    accesses land in ``src``'s counters and log, inside ``src``'s operations; with ``src``'s
    accounting off, ``dst``'s is off too. [I: the kernel has one accounting per machine; two
    emulated kernels make one machine's memory (the replay's descriptor arena,
    memdesc.analysis.replay_arena).] ``dst`` keeps no block of its own: enable(),
    counters() and drain() belong to ``src``."""
    _memmap(dst).S[core.C_ACC] = _memmap(src).S[core.C_ACC]


def enabled(k) -> bool:
    return bool(_memmap(k).S[core.C_ACC] != 0)


def _block(k) -> np.ndarray:
    mm = _memmap(k)
    A = getattr(mm, "access_block", None)
    if A is None or mm.S[core.C_ACC] != A.ctypes.data:
        raise ValueError("access accounting is not enabled on this kernel (access.enable())")
    return A


def counters(k) -> np.ndarray:
    """Per class (rows of OP_CLASSES) the counters CT_OPS, CT_LOADS, CT_STORES, CT_LINES,
    CT_CHAIN_SUM, CT_CHAIN_MAX (a copy)."""
    A = _block(k)
    o = int(A[core.A_OFF_CT])
    return A[o:o + len(OP_CLASSES) * NCOUNT].reshape(len(OP_CLASSES), NCOUNT).copy()


def dropped(k) -> bool:
    """True when the log filled up since the last drain (later operations were not logged)."""
    return bool(_block(k)[core.A_DROPPED])


def drain(k) -> AccessStream:
    """The log so far as an AccessStream, then emptied (the counters are kept)."""
    A = _block(k)
    if A[core.A_DEPTH] != 0:
        raise RuntimeError("access log drained inside an operation")
    n, nops = int(A[core.A_LOGN]), int(A[core.A_OPN])
    log = A[A[core.A_OFF_LOG]:A[core.A_OFF_LOG] + n].view(np.uint64)
    ops = A[A[core.A_OFF_OPS]:A[core.A_OFF_OPS] + nops]
    first = np.empty(nops + 1, np.int64)
    first[:nops] = ops >> 8
    first[nops] = n
    out = AccessStream(log & ~np.uint64(7), (log & np.uint64(7)).astype(np.uint8),
                       (ops & 0xFF).astype(np.uint8), first)
    A[core.A_LOGN] = A[core.A_OPN] = A[core.A_DROPPED] = 0
    return out


def concat(streams: list[AccessStream]) -> AccessStream:
    """One stream of the operations of ``streams`` in order (e.g. the drains of a run)."""
    if not streams:
        return AccessStream(np.zeros(0, np.uint64), np.zeros(0, np.uint8),
                            np.zeros(0, np.uint8), np.zeros(1, np.int64))
    base = np.cumsum([0] + [x.nr_accesses for x in streams[:-1]])
    first = [x.op_first[:-1] + b for x, b in zip(streams, base, strict=True)]
    first.append(np.array([base[-1] + streams[-1].nr_accesses], np.int64))
    return AccessStream(np.concatenate([x.addr for x in streams]),
                        np.concatenate([x.kind for x in streams]),
                        np.concatenate([x.op_class for x in streams]),
                        np.concatenate(first).astype(np.int64))


#: accesses per operation the log is sized for when a sink sets its blocks (the pcp paths take
#: 20-60; a refill or drain moving a batch takes more, and dropped() tells when one overflowed)
ACCESSES_PER_OP = 64


def attach_sink(k, sink, block: int) -> int:
    """Turn accounting on for a run that calls ``sink(stage_id, k)`` after each block (the
    ``access_sink`` of analysis.replay.replay() and analysis.scenario.run_stage()). The sink's
    optional ``log_capacity`` attribute sizes the log (0 or absent: counters only); with a
    log, a replay's blocks shrink to ``log_capacity // ACCESSES_PER_OP`` operations so a
    block's accesses fit. A sink whose ``counting`` attribute is False leaves accounting off:
    the run does the accounted run's work (a replay's side operations) uncounted, the
    baseline the access bench compares against. Returns the block size to use."""
    cap = int(getattr(sink, "log_capacity", 0) or 0)
    if getattr(sink, "counting", True) is False:
        return block
    enable(k, cap)
    if cap and block:
        return max(1, min(block, cap // ACCESSES_PER_OP))
    return block


# ---- the lookup entry points (numba, on the environment tuple E) --------------------------
from memdesc.mm.lookups import (  # noqa: E402, F401 -- re-exported: part of this API
    folio_page_e,
    page_flag_test_e,
    page_folio_e,
    page_folio_ms,
    page_to_nid_e,
    page_to_nid_ms,
    page_zone_e,
    page_zone_ms,
    pagecache_lookup_e,
    pt_walk_e,
    readback_anon_e,
    readback_file_e,
)
