"""SLUB: slab caches over the emulated page allocator.

This module holds the sizing rules (how big an object slot is, which page order a slab has, how
many objects fit), mirroring calculate_sizes()/calculate_order()/calc_slab_order() of
mm/slub.c in Linux 6.7+ (the form after Vlastimil Babka's 2023 rework, unchanged in 6.18 [S:
mm/slub.c, torvalds/linux]); checked against every row of this machine's /proc/slabinfo
(tests/test_slub.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from memdesc.mm.kmem import PAGE_OFFSET, VMEMMAP_START, kread, kread32, kwrite
from memdesc.mm.slab_common import (
    SIZEOF_VOID_P,
    align,
    calculate_alignment,
    fls,
    get_order,
)
from memdesc.stages import PAGE_SIZE

# ---- constants ---------------------------------------------------------------------------

#: PAGE_ALLOC_COSTLY_ORDER; slub_max_order defaults to it ("SLUB: ... Order=0-3" in dmesg)
#: [S: mm/slub.c; M: fixtures/system-info/dmesg.txt].
PAGE_ALLOC_COSTLY_ORDER = 3
SLUB_MAX_ORDER = PAGE_ALLOC_COSTLY_ORDER
MAX_PAGE_ORDER = 10
#: slab->objects is a 15-bit field [M: fixtures/btf/pahole/slab.txt `objects:15`].
MAX_OBJS_PER_PAGE = 32767
#: OO_SHIFT/OO_MASK: kmem_cache_order_objects packs order << 16 | objects [S: mm/slub.c].
OO_SHIFT = 16
OO_MASK = (1 << OO_SHIFT) - 1
#: MIN_PARTIAL/MAX_PARTIAL bound kmem_cache->min_partial [S: mm/slub.c].
MIN_PARTIAL = 5
MAX_PARTIAL = 10

# Cache creation flags we model (names from include/linux/slab.h; the bit values are this
# model's own, not the kernel's ABI [I]).
SLAB_HWCACHE_ALIGN = 1 << 0
SLAB_CACHE_DMA = 1 << 1
SLAB_CACHE_DMA32 = 1 << 2
SLAB_TYPESAFE_BY_RCU = 1 << 3
SLAB_RECLAIM_ACCOUNT = 1 << 4
SLAB_ACCOUNT = 1 << 5
SLAB_KMALLOC = 1 << 6
SLAB_NO_MERGE = 1 << 7
SLAB_PANIC = 1 << 8


# ---- order/objects arithmetic --------------------------------------------------------------

def order_objects(order: int, size: int) -> int:
    """Objects of ``size`` bytes in a slab of ``order``. Mirrors order_objects() in mm/slub.c."""
    return (PAGE_SIZE << order) // size


def oo_make(order: int, size: int) -> int:
    """Pack (order, objects) as struct kmem_cache_order_objects. Mirrors oo_make()."""
    return (order << OO_SHIFT) + order_objects(order, size)


def oo_order(x: int) -> int:
    """Mirrors oo_order() in mm/slub.c."""
    return x >> OO_SHIFT


def oo_objects(x: int) -> int:
    """Mirrors oo_objects() in mm/slub.c."""
    return x & OO_MASK


def default_min_objects(nr_cpus: int) -> int:
    """slub_min_objects when not set on the command line: 4 * (fls(nr_cpus) + 1), as in
    calculate_order() (num_present_cpus(), or nr_cpu_ids when that reads 1)."""
    return 4 * (fls(nr_cpus) + 1)


def calc_slab_order(size: int, min_order: int, max_order: int, fract_leftover: int) -> int:
    """Smallest order in [min_order, max_order] wasting at most 1/fract_leftover of the slab;
    max_order + 1 if none does. Mirrors calc_slab_order() in mm/slub.c (6.7+)."""
    order = min_order
    while order <= max_order:
        slab_size = PAGE_SIZE << order
        if slab_size % size <= slab_size // fract_leftover:
            break
        order += 1
    return order


def calculate_order(size: int, nr_cpus: int = 2, *, slub_min_objects: int = 0,
                    slub_min_order: int = 0, slub_max_order: int = SLUB_MAX_ORDER) -> int:
    """Page order of a slab of objects ``size`` bytes apart, or -1 (-ENOSYS) if it cannot be
    placed. Mirrors calculate_order() in mm/slub.c (6.7+): min_objects from the CPU count,
    clamped to what fits at slub_max_order; then waste fractions 1/16, 1/8, 1/4, 1/2; then one
    object per slab."""
    min_objects = slub_min_objects or default_min_objects(nr_cpus)
    max_objects = max(order_objects(slub_max_order, size), 1)
    min_objects = min(min_objects, max_objects)
    min_order = max(slub_min_order, get_order(min_objects * size))
    if order_objects(min_order, size) > MAX_OBJS_PER_PAGE:
        return get_order(size * MAX_OBJS_PER_PAGE) - 1
    fraction = 16
    while fraction > 1:
        order = calc_slab_order(size, min_order, slub_max_order, fraction)
        if order <= slub_max_order:
            return order
        fraction //= 2
    order = get_order(size)
    return order if order <= MAX_PAGE_ORDER else -1


def min_partial_for(size: int) -> int:
    """kmem_cache->min_partial: ilog2(size) / 2 clamped to [MIN_PARTIAL, MAX_PARTIAL].
    Mirrors set_min_partial() as called from kmem_cache_open() in mm/slub.c."""
    return max(MIN_PARTIAL, min(MAX_PARTIAL, (fls(size) - 1) // 2))


@dataclass(frozen=True)
class CacheGeometry:
    """What calculate_sizes() decides for a cache (kmem_cache fields of the same names)."""

    object_size: int
    size: int          # distance between objects (s->size)
    align: int
    inuse: int         # bytes of the object proper, before a relocated free pointer
    offset: int        # where the free pointer lives inside the slot
    oo: int            # preferred (order, objects)
    min: int           # fallback (order, objects) when the preferred order fails
    min_partial: int

    @property
    def order(self) -> int:
        return oo_order(self.oo)

    @property
    def objects(self) -> int:
        return oo_objects(self.oo)

    @property
    def slab_bytes(self) -> int:
        return PAGE_SIZE << self.order


def calculate_sizes(object_size: int, flags: int = 0, align_req: int = 0, *,
                    freeptr_offset: int | None = None, has_ctor: bool = False,
                    nr_cpus: int = 2) -> CacheGeometry:
    """Slot size, free-pointer placement and slab order of a new cache (no debug options).

    Mirrors calculate_sizes() in mm/slub.c (6.18): the object is word-aligned; the free
    pointer is relocated after the object for SLAB_TYPESAFE_BY_RCU caches without a
    ``freeptr_offset`` (kmem_cache_args.use_freeptr_offset, 6.13+) and for caches with a
    constructor, otherwise it sits in the middle of the object; the slot is rounded to the
    alignment from calculate_alignment().
    """
    if object_size <= 0:
        raise ValueError("object_size must be positive")
    a = calculate_alignment(bool(flags & SLAB_HWCACHE_ALIGN), align_req, object_size)
    size = align(object_size, SIZEOF_VOID_P)
    inuse = size
    rcu = bool(flags & SLAB_TYPESAFE_BY_RCU)
    if (rcu and freeptr_offset is None) or has_ctor:
        offset = size
        size += SIZEOF_VOID_P
    elif rcu:
        if freeptr_offset % SIZEOF_VOID_P or freeptr_offset + SIZEOF_VOID_P > object_size:
            raise ValueError(f"freeptr_offset {freeptr_offset} is not a word inside the object")
        offset = freeptr_offset
    else:
        offset = (object_size // 2) & ~(SIZEOF_VOID_P - 1)
    size = align(size, a)
    order = calculate_order(size, nr_cpus)
    if order < 0:
        raise ValueError(f"objects of {object_size} bytes cannot be placed in a slab")
    return CacheGeometry(object_size, size, a, inuse, offset, oo_make(order, size),
                         oo_make(get_order(size), size), min_partial_for(size))


# ---- the allocator's hot paths (numba over emulated memory) --------------------------------
#
# struct slab, wherever it lives (overlaying the head struct page at v6.18/folio, or a
# descriptor object from `dynamic` on), has the 6.18 layout [M: fixtures/btf/pahole/slab.txt];
# at the dynamic stages the 8 bytes of __page_type/__page_refcount (meaningless once the
# type is in the memdesc word) hold the slab's first PFN instead, which slab_address() needs
# when struct slab no longer overlays the page [I].
SLAB_FLAGS = 0
SLAB_CACHE = 8
SLAB_LIST = 16          # list_head: next @16, prev @24
SLAB_FREELIST = 32
SLAB_COUNTERS = 40      # inuse:16 | objects:15 | frozen:1
SLAB_PAGE_TYPE = 48     # overlay: __page_type (PGTY_slab << 24)
SLAB_PFN = 48           # dynamic: first PFN of the slab [I]
SLAB_OBJ_EXTS = 56
SLAB_DESC_BYTES = 64
#: struct kmem_cache_node [M: fixtures/btf/pahole/extra.kmem_cache_node.txt].
KCN_NR_PARTIAL = 8
KCN_PARTIAL = 16
KCN_NR_SLABS = 32
KCN_TOTAL_OBJECTS = 40
KCN_BYTES = 72
#: enum pagetype: PGTY_slab = 245, kept in the top byte of page_type [M: pahole-enums.txt].
PGTY_SLAB = 245

# Cache state words (one uint64 array per cache, read and written by the kernels).
CS_CPU_SLAB = 0         # struct slab address of the (single modelled) CPU's slab, 0 if none
CS_CACHE = 1            # address of this cache's struct kmem_cache
CS_OFFSET = 2           # free pointer offset inside an object
CS_SIZE = 3
CS_MIN_PARTIAL = 4
CS_EMPTY_INUSE = 5      # 1 for a self-hosted cache (object 0 describes the slab), else 0
CS_LIVE = 6             # objects handed out
CS_ALLOCS = 7
CS_FREES = 8
CS_NR_NODES = 9
CS_NODE = 10            # kmem_cache_node address of node 0, 1, ... (up to 8 nodes)
CS_WORDS = 18

# Stage parameters (int64 array).
SP_DYNAMIC = 0          # 0: struct slab overlays struct page; 1: memdesc word -> descriptor
SP_PAGE_BYTES = 1       # sizeof(struct page)
SP_MEMDESC_OFF = 2      # offset of the memdesc word in struct page (dynamic stages)
SP_SLAB_TYPE = 3        # memdesc type code of Slab in the stage's type table
SP_WORDS = 4

# Kernel return codes.
DONE = 0
NEED_SLAB = 1           # no object left on the cpu slab or any partial slab: call new_slab()
DISCARD = 2             # a slab became empty beyond min_partial: Python frees it
BAD_FREE = 3            # the object does not belong to this cache (kmem_cache_free BUG)

_INUSE_MASK = np.uint64(0xFFFF)
_FROZEN = np.uint64(1 << 31)


@njit(cache=True)
def _list_add_tail(mm, data, sop, entry, head):
    prev = kread(mm, data, sop, head + np.uint64(8))
    kwrite(mm, data, sop, entry, head)
    kwrite(mm, data, sop, entry + np.uint64(8), prev)
    kwrite(mm, data, sop, prev, entry)
    kwrite(mm, data, sop, head + np.uint64(8), entry)


@njit(cache=True)
def _list_del(mm, data, sop, entry):
    nxt = kread(mm, data, sop, entry)
    prev = kread(mm, data, sop, entry + np.uint64(8))
    kwrite(mm, data, sop, prev, nxt)
    kwrite(mm, data, sop, nxt + np.uint64(8), prev)
    # LIST_POISON1/2 as list_del() leaves them [S: include/linux/poison.h]
    kwrite(mm, data, sop, entry, np.uint64(0xDEAD000000000100))
    kwrite(mm, data, sop, entry + np.uint64(8), np.uint64(0xDEAD000000000122))


@njit(cache=True)
def _node_of(node_start, pfn):
    nid = 0
    for k in range(1, node_start.shape[0]):
        if pfn >= node_start[k]:
            nid = k
    return nid


@njit(cache=True)
def virt_to_slab(mm, data, sop, sp, addr):
    """struct slab address of the slab holding direct-map address ``addr`` (0 if the page is
    not a slab page). Mirrors virt_to_slab(): page_folio()+folio_slab() through compound_head
    at the overlay stages, the memdesc word (type Slab) from ``dynamic`` on."""
    pfn = (addr - np.uint64(PAGE_OFFSET)) >> np.uint64(12)
    page = np.uint64(VMEMMAP_START) + pfn * np.uint64(sp[SP_PAGE_BYTES])
    if sp[SP_DYNAMIC]:
        word = kread(mm, data, sop, page + np.uint64(sp[SP_MEMDESC_OFF]))
        if np.int64(word & np.uint64(15)) != sp[SP_SLAB_TYPE]:
            return np.uint64(0)
        return word & ~np.uint64(15)
    head = kread(mm, data, sop, page + np.uint64(8))
    if head & np.uint64(1):
        page = head - np.uint64(1)
    pt = kread32(mm, data, sop, page + np.uint64(SLAB_PAGE_TYPE))
    if (pt >> np.uint32(24)) != np.uint32(PGTY_SLAB):
        return np.uint64(0)
    return page


@njit(cache=True)
def slab_alloc_kernel(mm, data, sop, cs, out, start):
    """Hand out objects into ``out[start:]``. Mirrors slab_alloc_node()'s fast path and
    ___slab_alloc()'s refill from the node partial lists (get_partial(): local node first);
    the per-CPU freelist and cpu-partial lists are folded into the slab's own freelist (one
    modelled CPU). Returns (next_index, DONE | NEED_SLAB)."""
    off = cs[CS_OFFSET]
    n = out.shape[0]
    i = start
    while i < n:
        slab = cs[CS_CPU_SLAB]
        if slab != 0:
            obj = kread(mm, data, sop, slab + np.uint64(SLAB_FREELIST))
            if obj != 0:
                kwrite(mm, data, sop, slab + np.uint64(SLAB_FREELIST),
                       kread(mm, data, sop, obj + off))
                c = kread(mm, data, sop, slab + np.uint64(SLAB_COUNTERS))
                kwrite(mm, data, sop, slab + np.uint64(SLAB_COUNTERS), c + np.uint64(1))
                out[i] = obj
                i += 1
                continue
            # deactivate_slab(): the exhausted cpu slab is full, so it joins no list
            c = kread(mm, data, sop, slab + np.uint64(SLAB_COUNTERS))
            kwrite(mm, data, sop, slab + np.uint64(SLAB_COUNTERS), c & ~_FROZEN)
            cs[CS_CPU_SLAB] = 0
        got = np.uint64(0)
        for k in range(np.int64(cs[CS_NR_NODES])):
            node = cs[CS_NODE + k]
            nr = kread(mm, data, sop, node + np.uint64(KCN_NR_PARTIAL))
            if nr > 0:
                entry = kread(mm, data, sop, node + np.uint64(KCN_PARTIAL))
                _list_del(mm, data, sop, entry)
                kwrite(mm, data, sop, node + np.uint64(KCN_NR_PARTIAL), nr - np.uint64(1))
                got = entry - np.uint64(SLAB_LIST)
                break
        if got == 0:
            cs[CS_LIVE] += np.uint64(i - start)
            cs[CS_ALLOCS] += np.uint64(i - start)
            return i, NEED_SLAB
        c = kread(mm, data, sop, got + np.uint64(SLAB_COUNTERS))
        kwrite(mm, data, sop, got + np.uint64(SLAB_COUNTERS), c | _FROZEN)
        cs[CS_CPU_SLAB] = got
    cs[CS_LIVE] += np.uint64(n - start)
    cs[CS_ALLOCS] += np.uint64(n - start)
    return n, DONE


@njit(cache=True)
def slab_free_kernel(mm, data, sop, sp, node_start, cs, objs, start):
    """Return ``objs[start:]`` to their slabs. Mirrors __slab_free(): the object goes on its
    slab's freelist; a full slab joins the node partial list (tail); a slab left empty while
    the node already keeps min_partial slabs is taken off and reported for discard_slab().
    Returns (next_index, DONE | DISCARD | BAD_FREE, slab address for DISCARD/BAD_FREE)."""
    off = cs[CS_OFFSET]
    n = objs.shape[0]
    for i in range(start, n):
        obj = objs[i]
        slab = virt_to_slab(mm, data, sop, sp, obj)
        if slab == 0 or kread(mm, data, sop, slab + np.uint64(SLAB_CACHE)) != cs[CS_CACHE]:
            return i, BAD_FREE, slab
        prior = kread(mm, data, sop, slab + np.uint64(SLAB_FREELIST))
        kwrite(mm, data, sop, obj + off, prior)
        kwrite(mm, data, sop, slab + np.uint64(SLAB_FREELIST), obj)
        c = kread(mm, data, sop, slab + np.uint64(SLAB_COUNTERS)) - np.uint64(1)
        kwrite(mm, data, sop, slab + np.uint64(SLAB_COUNTERS), c)
        cs[CS_LIVE] -= np.uint64(1)
        cs[CS_FREES] += np.uint64(1)
        if c & _FROZEN:
            continue
        pfn = (obj - np.uint64(PAGE_OFFSET)) >> np.uint64(12)
        node = cs[CS_NODE + _node_of(node_start, np.int64(pfn))]
        nr = kread(mm, data, sop, node + np.uint64(KCN_NR_PARTIAL))
        if (c & _INUSE_MASK) == cs[CS_EMPTY_INUSE] and nr >= cs[CS_MIN_PARTIAL]:
            if prior != 0:           # it was on the partial list
                _list_del(mm, data, sop, slab + np.uint64(SLAB_LIST))
                kwrite(mm, data, sop, node + np.uint64(KCN_NR_PARTIAL), nr - np.uint64(1))
            return i + 1, DISCARD, slab
        if prior == 0:               # was full: add_partial(n, slab, DEACTIVATE_TO_TAIL)
            _list_add_tail(mm, data, sop, slab + np.uint64(SLAB_LIST),
                           node + np.uint64(KCN_PARTIAL))
            kwrite(mm, data, sop, node + np.uint64(KCN_NR_PARTIAL), nr + np.uint64(1))
    return n, DONE, np.uint64(0)


@njit(cache=True)
def init_slab_freelist(mm, data, sop, slab, base, objects, size, off, first):
    """Thread the free pointers of a new slab: object k points to object k+1, the last to
    NULL; objects before ``first`` are taken already (a self-hosted slab's own descriptor).
    Mirrors allocate_slab() without CONFIG_SLAB_FREELIST_RANDOM's shuffle (the fixture
    kernel has it; an in-order freelist keeps runs reproducible) and without
    FREELIST_HARDENED's pointer obfuscation [I]."""
    head = np.uint64(0)
    for k in range(objects - 1, first - 1, -1):
        obj = base + np.uint64(k) * size
        kwrite(mm, data, sop, obj + off, head)
        head = obj
    kwrite(mm, data, sop, slab + np.uint64(SLAB_FREELIST), head)
    counters = np.uint64(first) | (np.uint64(objects) << np.uint64(16))
    kwrite(mm, data, sop, slab + np.uint64(SLAB_COUNTERS), counters)
