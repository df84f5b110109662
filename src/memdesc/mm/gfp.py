"""GFP flags: the bits that matter to the page allocator, gfp_zone(), gfp_migratetype() and
gfp_to_alloc_flags().

Bit numbers are this kernel's ___GFP_*_BIT enum [M: fixtures/btf/btf-enums-selected.txt];
compound masks are include/linux/gfp_types.h [S]; ALLOC_* are mm/internal.h [S].
"""

from __future__ import annotations

from numba import njit

# ---- ___GFP_*_BIT [M] ---------------------------------------------------------------------------
GFP_BITS: dict[str, int] = {
    "DMA": 0, "HIGHMEM": 1, "DMA32": 2, "MOVABLE": 3, "RECLAIMABLE": 4, "HIGH": 5, "IO": 6,
    "FS": 7, "ZERO": 8, "UNUSED": 9, "DIRECT_RECLAIM": 10, "KSWAPD_RECLAIM": 11, "WRITE": 12,
    "NOWARN": 13, "RETRY_MAYFAIL": 14, "NOFAIL": 15, "NORETRY": 16, "MEMALLOC": 17, "COMP": 18,
    "NOMEMALLOC": 19, "HARDWALL": 20, "THISNODE": 21, "ACCOUNT": 22, "ZEROTAGS": 23,
    "NO_OBJ_EXT": 24,
}
___GFP_LAST_BIT = 25

__GFP_DMA = 1 << GFP_BITS["DMA"]
__GFP_HIGHMEM = 1 << GFP_BITS["HIGHMEM"]
__GFP_DMA32 = 1 << GFP_BITS["DMA32"]
__GFP_MOVABLE = 1 << GFP_BITS["MOVABLE"]
__GFP_RECLAIMABLE = 1 << GFP_BITS["RECLAIMABLE"]
__GFP_HIGH = 1 << GFP_BITS["HIGH"]
__GFP_IO = 1 << GFP_BITS["IO"]
__GFP_FS = 1 << GFP_BITS["FS"]
__GFP_ZERO = 1 << GFP_BITS["ZERO"]
__GFP_DIRECT_RECLAIM = 1 << GFP_BITS["DIRECT_RECLAIM"]
__GFP_KSWAPD_RECLAIM = 1 << GFP_BITS["KSWAPD_RECLAIM"]
__GFP_NOWARN = 1 << GFP_BITS["NOWARN"]
__GFP_RETRY_MAYFAIL = 1 << GFP_BITS["RETRY_MAYFAIL"]
__GFP_NOFAIL = 1 << GFP_BITS["NOFAIL"]
__GFP_NORETRY = 1 << GFP_BITS["NORETRY"]
__GFP_MEMALLOC = 1 << GFP_BITS["MEMALLOC"]
__GFP_COMP = 1 << GFP_BITS["COMP"]
__GFP_NOMEMALLOC = 1 << GFP_BITS["NOMEMALLOC"]
__GFP_HARDWALL = 1 << GFP_BITS["HARDWALL"]
__GFP_THISNODE = 1 << GFP_BITS["THISNODE"]
__GFP_ACCOUNT = 1 << GFP_BITS["ACCOUNT"]

__GFP_RECLAIM = __GFP_DIRECT_RECLAIM | __GFP_KSWAPD_RECLAIM
GFP_ZONEMASK = __GFP_DMA | __GFP_HIGHMEM | __GFP_DMA32 | __GFP_MOVABLE
GFP_MOVABLE_MASK = __GFP_RECLAIMABLE | __GFP_MOVABLE
GFP_MOVABLE_SHIFT = 3

# ---- the usual combinations [S: include/linux/gfp_types.h, 6.18] ------------------------------
GFP_ATOMIC = __GFP_HIGH | __GFP_KSWAPD_RECLAIM
GFP_KERNEL = __GFP_RECLAIM | __GFP_IO | __GFP_FS
GFP_KERNEL_ACCOUNT = GFP_KERNEL | __GFP_ACCOUNT
GFP_NOWAIT = __GFP_KSWAPD_RECLAIM | __GFP_NOWARN
GFP_NOIO = __GFP_RECLAIM
GFP_NOFS = __GFP_RECLAIM | __GFP_IO
GFP_USER = __GFP_RECLAIM | __GFP_IO | __GFP_FS | __GFP_HARDWALL
GFP_DMA = __GFP_DMA
GFP_DMA32 = __GFP_DMA32
GFP_HIGHUSER = GFP_USER | __GFP_HIGHMEM
GFP_HIGHUSER_MOVABLE = GFP_HIGHUSER | __GFP_MOVABLE      # __GFP_SKIP_KASAN is 0 (no KASAN)
GFP_TRANSHUGE_LIGHT = ((GFP_HIGHUSER_MOVABLE | __GFP_COMP | __GFP_NOMEMALLOC | __GFP_NOWARN)
                       & ~__GFP_RECLAIM)
GFP_TRANSHUGE = GFP_TRANSHUGE_LIGHT | __GFP_DIRECT_RECLAIM


class GFP:
    """The single-bit __GFP_* flags without the leading underscores (``GFP.COMP`` is
    ``__GFP_COMP``): names starting with two underscores are mangled inside a class body, so
    code in classes should use these."""


for _name, _bit in GFP_BITS.items():
    setattr(GFP, _name, 1 << _bit)
GFP.RECLAIM = __GFP_RECLAIM

#: Names accepted by :func:`parse_gfp` ("GFP_KERNEL|__GFP_ZERO").
GFP_NAMES: dict[str, int] = {
    **{f"__GFP_{k}": 1 << v for k, v in GFP_BITS.items()},
    "__GFP_RECLAIM": __GFP_RECLAIM,
    "GFP_ATOMIC": GFP_ATOMIC, "GFP_KERNEL": GFP_KERNEL, "GFP_KERNEL_ACCOUNT": GFP_KERNEL_ACCOUNT,
    "GFP_NOWAIT": GFP_NOWAIT, "GFP_NOIO": GFP_NOIO, "GFP_NOFS": GFP_NOFS, "GFP_USER": GFP_USER,
    "GFP_DMA": GFP_DMA, "GFP_DMA32": GFP_DMA32, "GFP_HIGHUSER": GFP_HIGHUSER,
    "GFP_HIGHUSER_MOVABLE": GFP_HIGHUSER_MOVABLE, "GFP_TRANSHUGE_LIGHT": GFP_TRANSHUGE_LIGHT,
    "GFP_TRANSHUGE": GFP_TRANSHUGE,
}


def parse_gfp(text: str) -> int:
    """``"GFP_KERNEL|__GFP_ZERO"`` -> bits; ValueError naming an unknown flag."""
    bits = 0
    for part in text.replace(" ", "").split("|"):
        if part in GFP_NAMES:
            bits |= GFP_NAMES[part]
        else:
            try:
                bits |= int(part, 0)
            except ValueError:
                raise ValueError(f"unknown GFP flag {part!r}") from None
    return bits


# ---- zones and migratetypes ---------------------------------------------------------------------
ZONE_DMA, ZONE_DMA32, ZONE_NORMAL, ZONE_MOVABLE, ZONE_DEVICE = 0, 1, 2, 3, 4   # [M] zone_type
MIGRATE_UNMOVABLE, MIGRATE_MOVABLE, MIGRATE_RECLAIMABLE = 0, 1, 2              # [M] migratetype
MIGRATE_PCPTYPES = MIGRATE_HIGHATOMIC = 3
MIGRATE_ISOLATE, MIGRATE_TYPES = 4, 5

#: GFP_ZONES_SHIFT is 2 with ZONE_DEVICE and MAX_NR_ZONES-1 <= 4 [S: include/linux/gfp.h].
GFP_ZONES_SHIFT = 2
OPT_ZONE_DMA, OPT_ZONE_DMA32, OPT_ZONE_HIGHMEM = ZONE_DMA, ZONE_DMA32, ZONE_NORMAL
_D, _H, _D32, _M = __GFP_DMA, __GFP_HIGHMEM, __GFP_DMA32, __GFP_MOVABLE
#: GFP_ZONE_TABLE and GFP_ZONE_BAD, built as include/linux/gfp.h builds them [S].
GFP_ZONE_TABLE = (
    (ZONE_NORMAL << 0 * GFP_ZONES_SHIFT)
    | (OPT_ZONE_DMA << _D * GFP_ZONES_SHIFT)
    | (OPT_ZONE_HIGHMEM << _H * GFP_ZONES_SHIFT)
    | (OPT_ZONE_DMA32 << _D32 * GFP_ZONES_SHIFT)
    | (ZONE_NORMAL << _M * GFP_ZONES_SHIFT)
    | (OPT_ZONE_DMA << (_M | _D) * GFP_ZONES_SHIFT)
    | (ZONE_MOVABLE << (_M | _H) * GFP_ZONES_SHIFT)
    | (OPT_ZONE_DMA32 << (_M | _D32) * GFP_ZONES_SHIFT)
)
GFP_ZONE_BAD = (
    1 << (_D | _H) | 1 << (_D | _D32) | 1 << (_D32 | _H) | 1 << (_D | _D32 | _H)
    | 1 << (_M | _H | _D) | 1 << (_M | _D32 | _D) | 1 << (_M | _D32 | _H)
    | 1 << (_M | _D32 | _D | _H)
)


def check_gfp(gfp: int) -> None:
    """ValueError for masks the kernel rejects: a bad zone-modifier combination (gfp_zone()'s
    VM_BUG_ON) or __GFP_MOVABLE|__GFP_RECLAIMABLE together (gfp_migratetype()'s VM_WARN_ON)."""
    if (GFP_ZONE_BAD >> (gfp & GFP_ZONEMASK)) & 1:
        raise ValueError(f"gfp {gfp:#x}: invalid zone modifier combination (GFP_ZONE_BAD)")
    if gfp & GFP_MOVABLE_MASK == GFP_MOVABLE_MASK:
        raise ValueError(f"gfp {gfp:#x}: __GFP_MOVABLE and __GFP_RECLAIMABLE together")
    if gfp >> ___GFP_LAST_BIT:
        raise ValueError(f"gfp {gfp:#x}: bits above ___GFP_LAST_BIT")


@njit(cache=True)
def gfp_zone(gfp):
    """Highest zone an allocation may use. Mirrors gfp_zone() in include/linux/gfp.h."""
    bit = gfp & GFP_ZONEMASK
    return (GFP_ZONE_TABLE >> (bit * GFP_ZONES_SHIFT)) & ((1 << GFP_ZONES_SHIFT) - 1)


@njit(cache=True)
def gfp_migratetype(gfp):
    """Mirrors gfp_migratetype() (page_group_by_mobility_disabled is false)."""
    return (gfp & GFP_MOVABLE_MASK) >> GFP_MOVABLE_SHIFT


# ---- alloc_flags [S: mm/internal.h, 6.18] -------------------------------------------------------
WMARK_MIN, WMARK_LOW, WMARK_HIGH, WMARK_PROMO = 0, 1, 2, 3
ALLOC_WMARK_MIN, ALLOC_WMARK_LOW, ALLOC_WMARK_HIGH = WMARK_MIN, WMARK_LOW, WMARK_HIGH
ALLOC_NO_WATERMARKS = 0x04
ALLOC_WMARK_MASK = ALLOC_NO_WATERMARKS - 1
ALLOC_OOM = 0x08
ALLOC_NON_BLOCK = 0x10
ALLOC_MIN_RESERVE = 0x20
ALLOC_CPUSET = 0x40
ALLOC_CMA = 0x80
ALLOC_NOFRAGMENT = 0x100
ALLOC_HIGHATOMIC = 0x200
ALLOC_TRYLOCK = 0x400
ALLOC_KSWAPD = 0x800
ALLOC_RESERVES = ALLOC_NON_BLOCK | ALLOC_MIN_RESERVE | ALLOC_HIGHATOMIC | ALLOC_OOM


@njit(cache=True)
def gfp_to_alloc_flags(gfp, order):
    """alloc_flags of the slow path. Mirrors gfp_to_alloc_flags() in mm/page_alloc.c
    (no cpusets, no RT tasks, no CMA): __GFP_HIGH is ALLOC_MIN_RESERVE and
    __GFP_KSWAPD_RECLAIM is ALLOC_KSWAPD bit for bit; callers that cannot reclaim get
    ALLOC_NON_BLOCK, and with __GFP_HIGH and order > 0 ALLOC_HIGHATOMIC."""
    alloc_flags = ALLOC_WMARK_MIN | ALLOC_CPUSET
    alloc_flags |= gfp & (__GFP_HIGH | __GFP_KSWAPD_RECLAIM)
    if not (gfp & __GFP_DIRECT_RECLAIM):
        if not (gfp & __GFP_NOMEMALLOC):
            alloc_flags |= ALLOC_NON_BLOCK
            if order > 0 and (alloc_flags & ALLOC_MIN_RESERVE):
                alloc_flags |= ALLOC_HIGHATOMIC
        if alloc_flags & ALLOC_MIN_RESERVE:
            alloc_flags &= ~ALLOC_CPUSET
    return alloc_flags
