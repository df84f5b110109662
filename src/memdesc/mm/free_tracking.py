"""How each stage's struct page bytes hold free-page state: the FreeTracking interface.

The buddy allocator (mm/page_alloc.py) runs one policy at every stage; everything that depends
on the layout goes through the small numba accessors here, selected by an integer encoding id:

===================  =========================================================================
encoding             free block head / tail / pcp page
===================  =========================================================================
``ENC_PAGE_TYPE``    v6.18, folio, dynamic (64 B): PageBuddy = PGTY_buddy << 24 in page_type
                     (offset 48), order in private (40), links in buddy_list/pcp_list (8) as
                     struct page addresses [S: mm/page_alloc.c set_buddy_order(),
                     include/linux/page-flags.h PAGE_TYPE_OPS]. Tails and pcp pages:
                     page_type UINT_MAX, private 0.
``ENC_FLAGS_BIT``    page32 with rev A/B tables: PageBuddy = flags bit 24 [I], order in private
                     (24), links in buddy_list (8, overlapping the memdesc word).
``ENC_TYPE_ALIAS``   page32 with the Path-2025 table: the link pointer in the memdesc word makes
                     the type 0/4/8/12 = Buddy [S: Memdescs/Path 2025]; a head has its order in
                     private, tails and pcp pages an out-of-range private (PRIV_TAIL/PRIV_PCP) [I].
``ENC_OPTION1``      page16, BuddyAllocator Option 1 [S: Wilcox, linux-mm msg369183]:
                     word0 = next | Buddy type, word1 = prev | order nibble; links point at the
                     neighbour's 16-byte struct page. Tails: null pointers, nibble NIB_TAIL;
                     pcp pages: nibble NIB_PCP [I].
``ENC_PACKED``       page8, research §8.3 (a) [I]: one word = type:4 | order:4 | next:28 |
                     prev:28; next/prev are block indices (pfn - zone base) >> order, the top
                     4096 index values name list heads of the zone.
===================  =========================================================================

List elements are "nodes": a PFN (>= 0) or a list head (``-1 - head index``). List heads live
in ``heads[h] = (next, prev)`` (struct zone's free_area[order].free_list[mt] and
per_cpu_pages.lists[]); struct zone is not laid out byte-exact, but a head has an emulated
address (HEADS_BASE + 16 h, in the unused hole below vmemmap) so a link word tells a page from
a head by pointer value, as in the kernel.

Another page8 option (a bitmap, research §8.3 b) plugs in as a new encoding id here plus an
entry in :data:`ENCODINGS`; the allocator does not change.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.core import cgutils
from numba.extending import intrinsic

from memdesc.mm.kmem import VMEMMAP_START
from memdesc.mm.memdesc import (
    MISC_ORDER_SHIFT,
    MISC_SUBTYPE_ALLOC_PAGES,
    MISC_SUBTYPE_RESERVED,
    MISC_SUBTYPE_SHIFT,
)
from memdesc.mm.mm_types import (
    NODES_PGSHIFT,
    PAGE_TYPE_NONE,
    TAIL_MAPPING,
    ZONES_PGSHIFT,
    PG_buddy_page32,
    PG_head,
    PG_reserved,
    PGTY_buddy,
)
from memdesc.mm.mmzone import MAX_PAGE_ORDER, NR_ZONES
from memdesc.stages import Stage, type_code

ENC_PAGE_TYPE, ENC_FLAGS_BIT, ENC_TYPE_ALIAS, ENC_OPTION1, ENC_PACKED = 0, 1, 2, 3, 4
#: free_tracking name (memdesc.stages) -> encoding id
ENCODINGS: dict[str, int] = {
    "page_type": ENC_PAGE_TYPE, "flags_bit": ENC_FLAGS_BIT, "type_alias": ENC_TYPE_ALIAS,
    "option1": ENC_OPTION1, "packed": ENC_PACKED,
}

# The allocator's int64 state is one array S (a few arrays passed to every numba call cost more
# than the work: numba flattens each array into ~7 scalar arguments). S[0:NCFG] is the config
# below; the regions (list heads, zones, pcp, pageblocks, zonelists) start at S[C_OFF_*].
C_ENC, C_W, C_SHIFT, C_BUDDY, C_MISC, C_NCPU, C_NNODE, C_HPZ = 0, 1, 2, 3, 4, 5, 6, 7
C_DYNAMIC, C_MOVMASK, C_NZ, C_LINKOFF, C_BUDDYMASK = 8, 9, 10, 11, 12
C_OFF_HEADS, C_OFF_ZS, C_OFF_PCP, C_OFF_PB, C_OFF_PBZ, C_OFF_ZL, C_NZL = 16, 17, 18, 19, 20, 21, 22
NCFG = 32
#: columns of a zone row and a per_cpu_pages row (see memdesc.mm.page_alloc Z_*, P_*)
NZCOL, NPCOL = 40, 8
Z_BASE = 0

HEADS_BASE = 0xFFFFE90000000000         # [I] unused hole below vmemmap (x86-64 mm.rst)
_VMEMMAP = np.uint64(VMEMMAP_START)
_HEADS = np.uint64(HEADS_BASE)
_U4 = np.uint64(0xF)
_U32 = np.uint64(0xFFFFFFFF)
_PT_NONE = np.uint64(PAGE_TYPE_NONE)
_PT_BUDDY = np.uint64(PGTY_buddy << 24)
_PG_BUDDY32 = np.uint64(1 << PG_buddy_page32)
_PG_HEAD = np.uint64(1 << PG_head)
_PG_RESERVED = np.uint64(1 << PG_reserved)
_KEEP_NODEZONE = np.uint64(~((1 << ZONES_PGSHIFT) - 1) & 0xFFFFFFFFFFFFFFFF)
_TAIL_MAPPING = np.uint64(TAIL_MAPPING)

NIB_PCP, NIB_TAIL = 0xE, 0xF            # order-nibble values of non-head free pages [I]
PRIV_PCP, PRIV_TAIL = 0xFFFFFFFFFFFFFFFE, 0xFFFFFFFFFFFFFFFF   # page32 type_alias [I]
_PRIV_PCP, _PRIV_TAIL = np.uint64(PRIV_PCP), np.uint64(PRIV_TAIL)
_MASK28 = np.uint64((1 << 28) - 1)
HEADV0 = (1 << 28) - 4096               # packed: index values >= HEADV0 are list heads
MAX_PACKED_BLOCKS = HEADV0

NR_PCP_LISTS = 14                       # [M] per_cpu_pages.lists[14]
MIGRATE_TYPES = 5
HEADS_FREE = (MAX_PAGE_ORDER + 1) * MIGRATE_TYPES


#: packed (page8) numbers a zone's list heads in the top 4096 values of its 28-bit index [I]
PACKED_HEADS = 1 << 12


def heads_per_zone(nr_cpus: int) -> int:
    return HEADS_FREE + nr_cpus * NR_PCP_LISTS


def max_cpus(stage: Stage) -> int | None:
    """CPUs whose pcp list heads the stage's free tracking can name (None: no limit of its
    own). packed: (4096 - 55 buddy heads) // 14 pcp lists = 288."""
    if ENCODINGS[stage.free_tracking] == ENC_PACKED:
        return (PACKED_HEADS - HEADS_FREE) // NR_PCP_LISTS
    return None


def make_cfg(stage: Stage, nr_cpus: int, nr_nodes: int) -> np.ndarray:
    """The int64 config array the numba kernels read (encoding id, sizes, type codes)."""
    enc = ENCODINGS[stage.free_tracking]
    size = stage.struct_page_bytes
    cfg = np.zeros(NCFG, np.int64)
    cfg[C_ENC] = enc
    cfg[C_W] = size // 8
    cfg[C_SHIFT] = size.bit_length() - 1
    cfg[C_BUDDY] = type_code(stage, "Buddy")
    cfg[C_MISC] = type_code(stage, "Misc")
    cfg[C_NCPU] = nr_cpus
    cfg[C_NNODE] = nr_nodes
    cfg[C_HPZ] = heads_per_zone(nr_cpus)
    cfg[C_DYNAMIC] = int(stage.dynamic)
    mov = 0
    for name in ("File", "Anon", "KSM", "Movable"):     # page_has_movable_ops() or an LRU folio
        for code, n in stage.types.items():
            if n == name:
                mov |= 1 << code
    cfg[C_MOVMASK] = mov
    cfg[C_BUDDYMASK] = sum(1 << c for c, n in stage.types.items() if n == "Buddy")
    cfg[C_NZ] = nr_nodes * NR_ZONES
    cfg[C_LINKOFF] = 0 if enc == ENC_OPTION1 else 8
    limit = max_cpus(stage)
    if limit is not None and nr_cpus > limit:
        raise ValueError(f"page8/packed names list heads with 12 bits: at most {limit} CPUs")
    return cfg


# ---- calling convention ----------------------------------------------------------------------

@intrinsic
def unmanaged(typingctx, arr):
    """The same array with a NULL meminfo: a borrowed view the callees need not refcount.

    Every numba function that takes an array increfs and decrefs it (atomic calls that
    LLVM's refcount pruning rarely removes in branchy code), which costs tens of ns per call.
    Entry kernels called from Python (which keeps the arrays alive for the call) rebind their
    arrays through this once; everything below then passes plain views.
    """
    def codegen(context, builder, signature, args):
        ary = context.make_array(arr)(context, builder, value=args[0])
        ary.meminfo = cgutils.get_null_value(ary.meminfo.type)
        return ary._getvalue()

    return arr(arr), codegen


# ---- regions of S ----------------------------------------------------------------------------

@njit(cache=True)
def zx(S, gz):
    """Index in S of zone ``gz``'s row (columns Z_* of memdesc.mm.page_alloc)."""
    return S[C_OFF_ZS] + gz * NZCOL


@njit(cache=True)
def px(S, gz, cpu):
    """Index in S of per_cpu_pages of ``cpu`` in zone ``gz`` (columns P_*)."""
    return S[C_OFF_PCP] + (gz * S[C_NCPU] + cpu) * NPCOL


@njit(cache=True)
def hx(S, h):
    """Index in S of list head ``h`` (next; prev follows)."""
    return S[C_OFF_HEADS] + 2 * h


# ---- links ---------------------------------------------------------------------------------

@njit(cache=True)
def _addr_of(S, node):
    """Emulated address a link word holds for ``node`` (enc 0-3)."""
    if node >= 0:
        return (_VMEMMAP + (np.uint64(node) << np.uint64(S[C_SHIFT]))
                + np.uint64(S[C_LINKOFF]))
    return _HEADS + (np.uint64(-1 - node) << np.uint64(4))


@njit(cache=True)
def _node_of(S, addr):
    if addr >= _VMEMMAP:
        return np.int64((addr - _VMEMMAP - np.uint64(S[C_LINKOFF])) >> np.uint64(S[C_SHIFT]))
    return -1 - np.int64((addr - _HEADS) >> np.uint64(4))


@njit(cache=True)
def link_get(mem, S, node, which, gz, order):
    """next (which=0) or prev (1) of ``node`` on a list of blocks of ``order`` in zone ``gz``."""
    if node < 0:
        return S[hx(S, -1 - node) + which]
    enc = S[C_ENC]
    if enc == ENC_PACKED:
        v = np.int64((mem[node] >> np.uint64(8 + 28 * which)) & _MASK28)
        if v >= HEADV0:
            return -1 - (gz * S[C_HPZ] + (v - HEADV0))
        return S[zx(S, gz) + Z_BASE] + (v << order)          # Z_BASE is column 0
    if enc == ENC_OPTION1:
        return _node_of(S, mem[node * 2 + which] & ~_U4)
    return _node_of(S, mem[node * S[C_W] + 1 + which])


@njit(cache=True)
def link_set(mem, S, node, which, to, gz, order):
    """Set next/prev of ``node`` to ``to``, keeping the type/order nibbles that share the word."""
    if node < 0:
        S[hx(S, -1 - node) + which] = to
        return
    enc = S[C_ENC]
    if enc == ENC_PACKED:
        if to >= 0:
            v = np.uint64((to - S[zx(S, gz) + Z_BASE]) >> order)
        else:
            v = np.uint64(HEADV0 + (-1 - to) - gz * S[C_HPZ])
        sh = np.uint64(8 + 28 * which)
        mem[node] = (mem[node] & ~(_MASK28 << sh)) | (v << sh)
        return
    if enc == ENC_OPTION1:
        i = node * 2 + which
        mem[i] = _addr_of(S, to) | (mem[i] & _U4)
        return
    mem[node * S[C_W] + 1 + which] = _addr_of(S, to)


@njit(cache=True)
def list_empty(S, h):
    return S[hx(S, h)] == -1 - h


@njit(cache=True)
def list_first(S, h):
    return S[hx(S, h)]


@njit(cache=True)
def list_last(S, h):
    return S[hx(S, h) + 1]


@njit(cache=True)
def list_add(mem, S, node, h, gz, order):
    """Mirrors list_add(): insert after the head."""
    head = -1 - h
    nxt = S[hx(S, h)]
    link_set(mem, S, node, 0, nxt, gz, order)
    link_set(mem, S, node, 1, head, gz, order)
    link_set(mem, S, nxt, 1, node, gz, order)
    S[hx(S, h)] = node


@njit(cache=True)
def list_add_tail(mem, S, node, h, gz, order):
    """Mirrors list_add_tail(): insert before the head."""
    head = -1 - h
    prev = S[hx(S, h) + 1]
    link_set(mem, S, node, 0, head, gz, order)
    link_set(mem, S, node, 1, prev, gz, order)
    link_set(mem, S, prev, 0, node, gz, order)
    S[hx(S, h) + 1] = node


@njit(cache=True)
def list_del(mem, S, node, gz, order):
    """Mirrors list_del() (without LIST_POISON: the caller rewrites the words next)."""
    nxt = link_get(mem, S, node, 0, gz, order)
    prev = link_get(mem, S, node, 1, gz, order)
    link_set(mem, S, prev, 0, nxt, gz, order)
    link_set(mem, S, nxt, 1, prev, gz, order)


# ---- PageBuddy and the order ----------------------------------------------------------------

@njit(cache=True)
def buddy_order_of(mem, S, pfn):
    """buddy_order(page) if PageBuddy(page) (a free block head on a free list), else -1."""
    enc = S[C_ENC]
    if enc == ENC_PAGE_TYPE:
        w6 = mem[pfn * 8 + 6]
        if (w6 & _U32) >> np.uint64(24) != np.uint64(PGTY_buddy):
            return -1
        return np.int64(mem[pfn * 8 + 5])
    if enc == ENC_FLAGS_BIT:
        if mem[pfn * 4] & _PG_BUDDY32:
            return np.int64(mem[pfn * 4 + 3])
        return -1
    if enc == ENC_TYPE_ALIAS:
        p = mem[pfn * 4 + 3]
        if (mem[pfn * 4 + 1] & np.uint64(3)) == 0 and p <= np.uint64(MAX_PAGE_ORDER):
            return np.int64(p)
        return -1
    if enc == ENC_OPTION1:
        if np.int64(mem[pfn * 2] & _U4) != S[C_BUDDY]:
            return -1
        o = np.int64(mem[pfn * 2 + 1] & _U4)
        return o if o <= MAX_PAGE_ORDER else -1
    w = mem[pfn]
    if np.int64(w & _U4) != S[C_BUDDY]:
        return -1
    o = np.int64((w >> np.uint64(4)) & _U4)
    return o if o <= MAX_PAGE_ORDER else -1


@njit(cache=True)
def set_buddy_order(mem, S, pfn, order):
    """Mirrors set_buddy_order(): set_page_private(page, order); __SetPageBuddy(page)."""
    enc = S[C_ENC]
    o = np.uint64(order)
    if enc == ENC_PAGE_TYPE:
        i = pfn * 8 + 6
        mem[i] = (mem[i] & ~_U32) | _PT_BUDDY
        mem[pfn * 8 + 5] = o
    elif enc == ENC_FLAGS_BIT:
        mem[pfn * 4] |= _PG_BUDDY32
        mem[pfn * 4 + 3] = o
    elif enc == ENC_TYPE_ALIAS:
        mem[pfn * 4 + 3] = o
    elif enc == ENC_OPTION1:
        b = np.uint64(S[C_BUDDY])
        mem[pfn * 2] = (mem[pfn * 2] & ~_U4) | b
        mem[pfn * 2 + 1] = (mem[pfn * 2 + 1] & ~_U4) | o
    else:
        w = mem[pfn] & ~np.uint64(0xFF)
        mem[pfn] = w | np.uint64(S[C_BUDDY]) | (o << np.uint64(4))


@njit(cache=True)
def clear_buddy(mem, S, pfn):
    """__ClearPageBuddy(page); set_page_private(page, 0): the page becomes a free tail (or is
    about to be handed out). At the descriptor stages the word keeps type Buddy, no order."""
    enc = S[C_ENC]
    if enc == ENC_PAGE_TYPE:
        i = pfn * 8 + 6
        mem[i] = (mem[i] & ~_U32) | _PT_NONE
        mem[pfn * 8 + 5] = 0
        if S[C_DYNAMIC]:                      # the links sat in the memdesc word
            mem[pfn * 8 + 1] = np.uint64(S[C_BUDDY])
            mem[pfn * 8 + 2] = 0
    elif enc == ENC_FLAGS_BIT:
        mem[pfn * 4] &= ~_PG_BUDDY32
        mem[pfn * 4 + 1] = np.uint64(S[C_BUDDY])
        mem[pfn * 4 + 3] = 0
    elif enc == ENC_TYPE_ALIAS:
        mem[pfn * 4 + 1] = 0
        mem[pfn * 4 + 3] = _PRIV_TAIL
    elif enc == ENC_OPTION1:
        mem[pfn * 2] = np.uint64(S[C_BUDDY])
        mem[pfn * 2 + 1] = np.uint64(NIB_TAIL)
    else:
        mem[pfn] = np.uint64(S[C_BUDDY]) | np.uint64(NIB_TAIL << 4)


@njit(cache=True)
def mark_pcp(mem, S, pfn):
    """A page going onto a pcp list: not PageBuddy, but linked (its order is the list's)."""
    enc = S[C_ENC]
    if enc == ENC_TYPE_ALIAS:
        mem[pfn * 4 + 3] = _PRIV_PCP
    elif enc == ENC_OPTION1:
        mem[pfn * 2 + 1] = (mem[pfn * 2 + 1] & ~_U4) | np.uint64(NIB_PCP)
    elif enc == ENC_PACKED:
        mem[pfn] = (mem[pfn] & ~np.uint64(0xF0)) | np.uint64(NIB_PCP << 4)


@njit(cache=True)
def is_pcp_page(mem, S, pfn):
    """True when the page carries the pcp mark (descriptor stages only; -1 if the stage keeps
    no such mark, as 6.18 does not)."""
    enc = S[C_ENC]
    if enc == ENC_TYPE_ALIAS:
        return 1 if mem[pfn * 4 + 3] == _PRIV_PCP else 0
    if enc == ENC_OPTION1:
        return 1 if (np.int64(mem[pfn * 2] & _U4) == S[C_BUDDY]
                     and np.int64(mem[pfn * 2 + 1] & _U4) == NIB_PCP) else 0
    if enc == ENC_PACKED:
        w = mem[pfn]
        return 1 if (np.int64(w & _U4) == S[C_BUDDY]
                     and np.int64((w >> np.uint64(4)) & _U4) == NIB_PCP) else 0
    return -1


# ---- node / zone ----------------------------------------------------------------------------

@njit(cache=True)
def nodezone_bits(nid, zone_type):
    return (np.uint64(nid) << np.uint64(NODES_PGSHIFT)) | (np.uint64(zone_type)
                                                          << np.uint64(ZONES_PGSHIFT))


@njit(cache=True)
def page_zone_index(mem, S, pfn):
    """Global zone index (nid * NR_ZONES + zone type) of ``pfn`` the way the stage's page
    allocator finds it: page->flags while flags live in struct page (memdesc_nid()/
    memdesc_zonenum()), else the PFN table ("reconstruct the node/zone from the PFN")."""
    enc = S[C_ENC]
    if enc <= ENC_TYPE_ALIAS:
        f = mem[pfn * S[C_W]]
        return (np.int64(f >> np.uint64(NODES_PGSHIFT)) * NR_ZONES
                + np.int64((f >> np.uint64(ZONES_PGSHIFT)) & np.uint64(7)))
    return np.int64(S[S[C_OFF_PBZ] + (pfn >> 9)])


@njit(cache=True)
def misc_word(S, subtype, order, gz):
    """The Misc memdesc word with its inline bits (memdesc.memdesc_misc())."""
    return (np.uint64(S[C_MISC]) | (np.uint64(subtype) << np.uint64(MISC_SUBTYPE_SHIFT))
            | (np.uint64(order) << np.uint64(MISC_ORDER_SHIFT))
            | nodezone_bits(gz // NR_ZONES, gz % NR_ZONES))


# ---- whole-page states --------------------------------------------------------------------

@njit(cache=True)
def page_init(mem, S, pfn, gz, reserved):
    """The state memmap_init() leaves: __init_single_page() (node/zone links, refcount 1,
    _mapcount -1, INIT_LIST_HEAD(lru)) with PG_reserved for RAM the buddy never gets
    (``reserved``), or the free-tail state for pages about to be freed by
    memblock_free_all()/__free_pages_core()."""
    enc = S[C_ENC]
    nz = nodezone_bits(gz // NR_ZONES, gz % NR_ZONES)
    if enc <= ENC_TYPE_ALIAS:
        mem[pfn * S[C_W]] = nz | (_PG_RESERVED if reserved else np.uint64(0))
    if reserved:
        if enc == ENC_PAGE_TYPE:
            b = pfn * 8
            if S[C_DYNAMIC]:
                mem[b + 1] = misc_word(S, MISC_SUBTYPE_RESERVED, 0, gz)
                mem[b + 2] = 0
            else:
                mem[b + 1] = _addr_of(S, pfn)
                mem[b + 2] = _addr_of(S, pfn)
            mem[b + 6] = _PT_NONE | (np.uint64(1) << np.uint64(32))   # _refcount 1
        elif enc in (ENC_FLAGS_BIT, ENC_TYPE_ALIAS):
            mem[pfn * 4 + 1] = misc_word(S, MISC_SUBTYPE_RESERVED, 0, gz)
        elif enc == ENC_OPTION1:
            mem[pfn * 2] = misc_word(S, MISC_SUBTYPE_RESERVED, 0, gz)
        else:
            mem[pfn] = misc_word(S, MISC_SUBTYPE_RESERVED, 0, gz)
    else:
        free_state(mem, S, pfn)


@njit(cache=True)
def free_state(mem, S, pfn):
    """Reset one page to the free-tail state, keeping node/zone. Mirrors what
    free_pages_prepare() guarantees (PAGE_FLAGS_CHECK_AT_PREP cleared, no mapping, no
    compound metadata, refcount 0, _mapcount -1) and, at the descriptor stages, drops the
    memdesc word of the freed allocation (type Buddy, no order)."""
    enc = S[C_ENC]
    if enc == ENC_PAGE_TYPE:
        b = pfn * 8
        mem[b] &= _KEEP_NODEZONE
        if S[C_DYNAMIC]:
            mem[b + 1] = np.uint64(S[C_BUDDY])
            mem[b + 2] = 0
        else:
            a = _addr_of(S, pfn)
            mem[b + 1] = a
            mem[b + 2] = a
        mem[b + 3] = 0
        mem[b + 4] = 0
        mem[b + 5] = 0
        mem[b + 6] = _PT_NONE
        mem[b + 7] = 0
    elif enc == ENC_FLAGS_BIT:
        b = pfn * 4
        mem[b] &= _KEEP_NODEZONE
        mem[b + 1] = np.uint64(S[C_BUDDY])
        mem[b + 2] = 0
        mem[b + 3] = 0
    elif enc == ENC_TYPE_ALIAS:
        b = pfn * 4
        mem[b] &= _KEEP_NODEZONE
        mem[b + 1] = 0
        mem[b + 2] = 0
        mem[b + 3] = _PRIV_TAIL
    elif enc == ENC_OPTION1:
        mem[pfn * 2] = np.uint64(S[C_BUDDY])
        mem[pfn * 2 + 1] = np.uint64(NIB_TAIL)
    else:
        mem[pfn] = np.uint64(S[C_BUDDY]) | np.uint64(NIB_TAIL << 4)


@njit(cache=True)
def prep_new_page(mem, S, pfn, order, comp, gz):
    """The page state of a fresh allocation. Mirrors post_alloc_hook()/prep_new_page() and,
    with __GFP_COMP at the overlay stages, prep_compound_page(): PG_head, compound_head =
    head | 1 and TAIL_MAPPING on tails, folio order/_nr_pages/mapcounts in page 1 and
    _deferred_list in page 2 (prep_compound_head()). From ``dynamic`` on there is no compound
    page: every page gets the Misc memdesc word (subtype unknown, order, node, zone) until a
    descriptor layer calls set_page_memdesc()."""
    enc = S[C_ENC]
    n = np.int64(1) << order
    if enc == ENC_PAGE_TYPE:
        b = pfn * 8
        mem[b + 6] = (mem[b + 6] & _U32) | (np.uint64(1) << np.uint64(32))   # refcount 1
        if S[C_DYNAMIC]:
            w = misc_word(S, MISC_SUBTYPE_ALLOC_PAGES, order, gz)
            for i in range(n):
                mem[(pfn + i) * 8 + 1] = w
            return
        if comp and order > 0:
            head = _VMEMMAP + (np.uint64(pfn) << np.uint64(6))
            mem[b] |= _PG_HEAD
            for i in range(1, n):
                t = (pfn + i) * 8
                mem[t + 3] = _TAIL_MAPPING
                mem[t + 1] = head | np.uint64(1)
                mem[t + 5] = 0
            p1 = b + 8
            mem[p1] = (mem[p1] & ~np.uint64(0xFF)) | np.uint64(order)        # _flags_1
            mem[p1 + 2] = _U32                      # _large_mapcount -1, _nr_pages_mapped 0
            mem[p1 + 3] = _U32                      # _entire_mapcount -1, _pincount 0
            mem[p1 + 4] = ~np.uint64(0)             # _mm_id_mapcount[2] = -1, -1
            mem[p1 + 5] = 0                         # _mm_ids
            mem[p1 + 7] = np.uint64(n)              # _nr_pages
            if order > 1:
                d = head + np.uint64(128 + 16)      # &folio->_deferred_list
                mem[b + 16 + 2] = d
                mem[b + 16 + 3] = d
        return
    w = misc_word(S, MISC_SUBTYPE_ALLOC_PAGES, order, gz)
    if enc in (ENC_FLAGS_BIT, ENC_TYPE_ALIAS):
        for i in range(n):
            mem[(pfn + i) * 4 + 1] = w
            mem[(pfn + i) * 4 + 3] = 0
    elif enc == ENC_OPTION1:
        for i in range(n):
            mem[(pfn + i) * 2] = w
            mem[(pfn + i) * 2 + 1] = 0
    else:
        for i in range(n):
            mem[pfn + i] = w


@njit(cache=True)
def memdesc_slot(S):
    """Word index inside struct page of the memdesc word, -1 when the stage has none."""
    enc = S[C_ENC]
    if enc == ENC_PAGE_TYPE:
        return 1 if S[C_DYNAMIC] else -1
    if enc in (ENC_FLAGS_BIT, ENC_TYPE_ALIAS):
        return 1
    return 0


@njit(cache=True)
def page_is_movable(mem, S, pfn):
    """PageLRU(page) || page_has_movable_ops(page), as prep_move_freepages_block() counts
    movable pages. Overlay stages: the head's PG_lru (set by folio_add_lru(), cleared by
    __page_cache_release()), or the page's own PG_movable_ops with a page type that may carry
    it (page_has_movable_ops(): PageZsmalloc || PageOffline; the bit aliases PG_uptodate).
    From ``dynamic`` on PG_lru lives in the descriptor, which the buddy allocator does not
    read here: the memdesc type stands for it (File/Anon/KSM folios, Movable = movable_ops).
    Departure [I]: a folio between folio_alloc() and folio_add_lru() counts as movable from
    ``dynamic`` on and not before (the emulator allocates nothing in that window except the
    deposited page table of a PMD-mapped anon folio)."""
    slot = memdesc_slot(S)
    if slot < 0:
        b = pfn * 8
        pty = (mem[b + 6] >> np.uint64(24)) & np.uint64(0xFF)
        if (mem[b] >> np.uint64(3)) & np.uint64(1) and (pty == 0xF6 or pty == 0xF1):
            return True                            # PG_movable_ops on zsmalloc/offline
        ch = mem[b + 1]
        if ch & np.uint64(1):                      # tail: look at the head
            b = np.int64((ch - np.uint64(1) - _VMEMMAP) >> np.uint64(6)) * 8
        f = mem[b]
        return (f >> np.uint64(5)) & np.uint64(1) == 1   # PG_lru
    w = mem[pfn * S[C_W] + slot]
    t = np.int64(w & _U4)
    return (S[C_MOVMASK] >> t) & 1 == 1
