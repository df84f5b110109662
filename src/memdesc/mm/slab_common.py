"""kmalloc size classes and cache alignment, as mm/slab_common.c and include/linux/slab.h have them.

Linux 6.18, x86-64, this machine's config [M: fixtures/system-info/kernel-config.gz]:
CONFIG_SLUB, CONFIG_ZONE_DMA, CONFIG_MEMCG, no CONFIG_RANDOM_KMALLOC_CACHES, no SLUB_TINY, so the
kmalloc types are KMALLOC_NORMAL, KMALLOC_RECLAIM ("kmalloc-rcl-"), KMALLOC_DMA ("dma-kmalloc-")
and KMALLOC_CGROUP ("kmalloc-cg-"); their caches appear in fixtures/snapshot-idle/slabinfo.txt.

Pure arithmetic, no state: mm/slub.py builds the caches from these tables.
"""

from __future__ import annotations

from memdesc.stages import PAGE_SHIFT, PAGE_SIZE

#: x86-64 ARCH_KMALLOC_MINALIGN = ARCH_DMA_MINALIGN = 8 -> KMALLOC_MIN_SIZE 8, KMALLOC_SHIFT_LOW 3
#: [S: include/linux/slab.h].
KMALLOC_SHIFT_LOW = 3
KMALLOC_MIN_SIZE = 1 << KMALLOC_SHIFT_LOW
#: SLUB: KMALLOC_SHIFT_HIGH = PAGE_SHIFT + 1, so the largest kmalloc cache is 2 * PAGE_SIZE
#: (kmalloc-8k); larger requests go straight to the page allocator [S: include/linux/slab.h].
KMALLOC_SHIFT_HIGH = PAGE_SHIFT + 1
KMALLOC_MAX_CACHE_SIZE = 1 << KMALLOC_SHIFT_HIGH
#: MAX_PAGE_ORDER 10 bounds kmalloc_large(): KMALLOC_MAX_SIZE = 1 << (MAX_PAGE_ORDER + PAGE_SHIFT).
KMALLOC_MAX_SIZE = 1 << (10 + PAGE_SHIFT)

#: kmalloc_size_index[] of mm/slab_common.c: (size - 1) / 8 -> kmalloc cache index for
#: sizes up to 192, needed because 96 and 192 are not powers of two [S].
KMALLOC_SIZE_INDEX: tuple[int, ...] = (
    3, 4, 5, 5, 6, 6, 6, 6,      # 8, 16, 24, 32, 40, 48, 56, 64
    1, 1, 1, 1, 7, 7, 7, 7,      # 72 .. 96 -> kmalloc-96, 104 .. 128 -> kmalloc-128
    2, 2, 2, 2, 2, 2, 2, 2,      # 136 .. 192 -> kmalloc-192
)

#: kmalloc_info[]: index -> object size. Index 0 is unused; 1 and 2 are the odd sizes [S].
KMALLOC_INFO_SIZES: dict[int, int] = {1: 96, 2: 192} | {
    i: 1 << i for i in range(KMALLOC_SHIFT_LOW, KMALLOC_SHIFT_HIGH + 1)
}

#: enum kmalloc_cache_type and each type's cache-name prefix on this config [S + M slabinfo].
KMALLOC_TYPES: dict[str, str] = {
    "normal": "kmalloc-",
    "reclaim": "kmalloc-rcl-",
    "dma": "dma-kmalloc-",
    "cgroup": "kmalloc-cg-",
}

#: cache_line_size() on x86-64 ("SLUB: HWalign=64" in dmesg) [M: fixtures/system-info/dmesg.txt].
CACHE_LINE_SIZE = 64
#: arch_slab_minalign() = __alignof__(unsigned long long) on x86-64 [S: include/linux/slab.h].
ARCH_SLAB_MINALIGN = 8
SIZEOF_VOID_P = 8


def fls(x: int) -> int:
    """Most significant set bit, 1-based; fls(0) == 0. Mirrors fls() in
    include/asm-generic/bitops/fls.h."""
    return int(x).bit_length()


def get_order(size: int) -> int:
    """Smallest order whose block holds ``size`` bytes. Mirrors get_order() in
    include/asm-generic/getorder.h (undefined for 0; we return 0)."""
    if size <= 0:
        return 0
    return max(0, fls((size - 1) >> PAGE_SHIFT))


def align(x: int, a: int) -> int:
    """ALIGN(x, a) for a power-of-two ``a``."""
    return (x + a - 1) & ~(a - 1)


def kmalloc_index(size: int) -> int:
    """Index of the kmalloc cache serving ``size`` bytes (1..KMALLOC_SHIFT_HIGH).

    Mirrors kmalloc_slab() in mm/slab.h: the size_index table for sizes up to 192, then
    fls(size - 1). ``size`` must be in 1..KMALLOC_MAX_CACHE_SIZE (the caller checks, as in
    the kernel).
    """
    if not 0 < size <= KMALLOC_MAX_CACHE_SIZE:
        raise ValueError(f"kmalloc_index({size}): size must be 1..{KMALLOC_MAX_CACHE_SIZE}")
    if size <= 192:
        return KMALLOC_SIZE_INDEX[(size - 1) // 8]
    return fls(size - 1)


def kmalloc_cache_name(index: int, kind: str = "normal") -> str:
    """Cache name as /proc/slabinfo shows it: kmalloc-8 .. kmalloc-8k, kmalloc-cg-96, ..."""
    size = KMALLOC_INFO_SIZES[index]
    label = f"{size >> 10}k" if size >= 1024 else str(size)
    return KMALLOC_TYPES[kind] + label


def kmalloc_size_roundup(size: int) -> int:
    """Bytes actually reserved for kmalloc(size). Mirrors kmalloc_size_roundup() in
    mm/slab_common.c: the cache's object size, or whole pages above KMALLOC_MAX_CACHE_SIZE."""
    if size <= 0:
        return 0
    if size <= KMALLOC_MAX_CACHE_SIZE:
        return KMALLOC_INFO_SIZES[kmalloc_index(size)]
    if size <= KMALLOC_MAX_SIZE:
        return PAGE_SIZE << get_order(size)
    return size


def calculate_alignment(hwcache_align: bool, align_req: int, size: int) -> int:
    """Object alignment of a new cache. Mirrors calculate_alignment() in mm/slab_common.c:
    SLAB_HWCACHE_ALIGN halves the cache line while the object fits in half of it, then at least
    arch_slab_minalign(), rounded to a word."""
    a = align_req
    if hwcache_align:
        ralign = CACHE_LINE_SIZE
        while size <= ralign // 2:
            ralign //= 2
        a = max(a, ralign)
    a = max(a, ARCH_SLAB_MINALIGN)
    return align(a, SIZEOF_VOID_P)
