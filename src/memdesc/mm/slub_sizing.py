"""SLUB sizing rules: how big an object slot is, which page order a slab has, how many objects
fit.

Mirrors calculate_sizes()/calculate_order()/calc_slab_order() of mm/slub.c in Linux 6.7+ (the
form after Vlastimil Babka's 2023 rework, unchanged in 6.18 [S: mm/slub.c, torvalds/linux]);
checked against every row of this machine's /proc/slabinfo (tests/test_slub.py). Pure Python
with no emulator state: the cost model (analysis/cost.py) imports this and not the allocator
(memdesc.mm.slub, the hot paths).
"""

from __future__ import annotations

from dataclasses import dataclass

from memdesc.mm.slab_common import SIZEOF_VOID_P, align, calculate_alignment, fls, get_order
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
