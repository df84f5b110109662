"""What every free-page tracking encoding (memdesc.mm.ft_*) shares: the config slots of the
allocator's state array S, emulated link addresses and the node/zone/Misc words.

The encodings never hard-code a word index: :func:`layout_cfg` derives the word index of
each struct page member they use from the stage's :class:`memdesc.stages.StructLayout` into
``S[C_F_*]`` (-1 when the layout has no such member), so a new stage with another layout
reuses an encoding by data alone.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.mm.access_core import (  # noqa: F401 -- acc_noptr re-exported
    C_ACC,
    KIND_PTR,
    KIND_STORE,
    NONODE,
    acc,
    acc_mw,
    acc_noptr,
    acc_on,
)
from memdesc.mm.kmem import PAGE_OFFSET, VMEMMAP_START
from memdesc.mm.memdesc import (
    MISC_ORDER_SHIFT,
    MISC_SUBTYPE_ALLOC_PAGES,
    MISC_SUBTYPE_RESERVED,
    MISC_SUBTYPE_SHIFT,
)
from memdesc.mm.mm_types import NODES_PGSHIFT, ZONES_PGSHIFT
from memdesc.mm.mmzone import MAX_PAGE_ORDER, NR_ZONES
from memdesc.stages import StructLayout

# The allocator's int64 state is one array S (a few arrays passed to every numba call cost more
# than the work: numba flattens each array into ~7 scalar arguments). S[0:NCFG] is the config
# below; the regions (list heads, zones, pcp, pageblocks, zonelists) start at S[C_OFF_*].
C_ENC, C_W, C_SHIFT, C_BUDDY, C_MISC, C_NCPU, C_NNODE, C_HPZ = 0, 1, 2, 3, 4, 5, 6, 7
C_DYNAMIC, C_MOVMASK, C_NZ, C_LINKOFF, C_BUDDYMASK = 8, 9, 10, 11, 12
C_OFF_HEADS, C_OFF_ZS, C_OFF_PCP, C_OFF_PB, C_OFF_PBZ, C_OFF_ZL, C_NZL = 16, 17, 18, 19, 20, 21, 22
# word indices inside one struct page, derived from the stage's layout (-1: no such member)
C_F_FLAGS, C_F_LINK, C_F_PRIV = 13, 14, 15
C_F_PTYPE, C_F_MD, C_F_MAPPING, C_REF_SHIFT = 23, 24, 25, 26
# encoding-specific flag bits and values (filled by the encoding's configure())
C_BIT_BUDDY, C_X0, C_X1 = 27, 28, 29
# region of S an option keeps beside the allocator state (side memory, or free-page contents)
C_OFF_SIDE = 30
#: the first words of the side region of an option that walks (WALKS = True): walks, total
#: steps, longest walk, operations (emulator instrumentation, not kernel memory)
SIDE_STATS = 4
# the address of the access accounting block (memdesc.mm.access_core), 0: off
assert C_ACC == 31
NCFG = 32

NR_PCP_LISTS = 14                       # [M] per_cpu_pages.lists[14]
MIGRATE_TYPES = 5
HEADS_FREE = (MAX_PAGE_ORDER + 1) * MIGRATE_TYPES
#: columns of a zone row and a per_cpu_pages row (see memdesc.mm.page_alloc Z_*, P_*)
NZCOL, NPCOL = 40, 8
Z_BASE = 0
#: zone row columns an option's search reads (memdesc.mm.zone_state defines the row; a test
#: checks they agree)
Z_START, Z_END = 1, 2

HEADS_BASE = 0xFFFFE90000000000         # [I] unused hole below vmemmap (x86-64 mm.rst)
VMEMMAP = np.uint64(VMEMMAP_START)
HEADS = np.uint64(HEADS_BASE)
U4 = np.uint64(0xF)
U32 = np.uint64(0xFFFFFFFF)

#: layout member -> config slot holding its word index
LAYOUT_SLOTS: dict[str, int] = {
    "flags": C_F_FLAGS, "buddy_list": C_F_LINK, "private": C_F_PRIV, "page_type": C_F_PTYPE,
    "memdesc": C_F_MD,
}


def word_of(layout: StructLayout, name: str) -> int:
    """Word (8-byte) index of member ``name`` in ``layout``, -1 when it has none."""
    f = layout.field(name)
    return -1 if f is None else f.offset // 8


def layout_cfg(cfg: np.ndarray, layout: StructLayout, dynamic: bool) -> None:
    """Fill the C_F_* slots, C_W, C_SHIFT and C_LINKOFF of ``cfg`` from ``layout``.
    C_F_MD names a memdesc word on *every* page (``dynamic`` and later): at a partial stage
    of the 2026 transition only a separated descriptor's pages carry one, which the
    allocator never reads, so it sees an overlay page (-1)."""
    size = layout.size
    cfg[C_W] = size // 8
    cfg[C_SHIFT] = size.bit_length() - 1
    for name, slot in LAYOUT_SLOTS.items():
        cfg[slot] = word_of(layout, name)
    if not dynamic:
        cfg[C_F_MD] = -1
    mapping = layout.field("mapping") or layout.field("__folio_mapping")
    cfg[C_F_MAPPING] = -1 if mapping is None else mapping.offset // 8
    link = layout.field("buddy_list")
    cfg[C_LINKOFF] = 0 if link is None else link.offset
    pt, ref = layout.field("page_type"), layout.field("_refcount")
    cfg[C_REF_SHIFT] = 8 * (ref.offset - pt.offset) if pt and ref else -1


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


# ---- access accounting of struct page words, free pages and S words ------------------------
# (memdesc.mm.access_core; every helper is one load of S[C_ACC] and a branch when off)

_PAGE_OFFSET = np.uint64(PAGE_OFFSET)


@njit(cache=True)
def ldm(mem, S, i):
    """mem[i], counted as a load of that struct page word in the vmemmap."""
    v = mem[i]
    acc_mw(S, i, 0, NONODE)
    return v


@njit(cache=True)
def stm(mem, S, i, v):
    """mem[i] = v, counted as a store to that struct page word."""
    mem[i] = v
    acc_mw(S, i, KIND_STORE, NONODE)


@njit(cache=True)
def acc_link(S, i, to):
    """Count the load of link word mem[i]: a pointer naming node ``to``."""
    acc_mw(S, i, KIND_PTR, to)


@njit(cache=True)
def acc_inpage(S, pfn, which, to, store):
    """Count a load (naming ``to``) or store of word ``which`` of free page ``pfn`` itself
    (the direct map: links kept inside free memory)."""
    if acc_on(S):
        a = _PAGE_OFFSET + (np.uint64(pfn) << np.uint64(12)) + np.uint64(8 * which)
        acc(S, a, KIND_STORE if store else KIND_PTR, pfn, to)


@njit(cache=True)
def s_addr(S, i):
    """Emulated address of S word ``i`` of the heads/zones/pcp/pageblock regions: the
    regions are laid out from HEADS_BASE in S order, so list head h is at HEADS_BASE + 16 h."""
    return HEADS + (np.uint64(i - S[C_OFF_HEADS]) << np.uint64(3))


@njit(cache=True)
def lds(S, i):
    """S[i] counted as a load of a zone / per_cpu_pages / pageblock word."""
    v = S[i]
    if acc_on(S):
        acc(S, s_addr(S, i), 0, NONODE, NONODE)
    return v


@njit(cache=True)
def sts(S, i, v):
    """S[i] = v counted as a store."""
    S[i] = v
    if acc_on(S):
        acc(S, s_addr(S, i), KIND_STORE, NONODE, NONODE)


@njit(cache=True)
def sadd(S, i, d):
    """S[i] += d counted as a load and a store (zone and pcp counters)."""
    S[i] += d
    if acc_on(S):
        a = s_addr(S, i)
        acc(S, a, 0, NONODE, NONODE)
        acc(S, a, KIND_STORE, NONODE, NONODE)


@njit(cache=True)
def acc_head(S, h, which, store, to):
    """Count a load (a pointer naming ``to``) or store of list head ``h``'s next/prev."""
    if acc_on(S):
        a = HEADS + (np.uint64(h) << np.uint64(4)) + np.uint64(8 * which)
        acc(S, a, KIND_STORE if store else KIND_PTR, -1 - h, to)


@njit(cache=True)
def record_walk(S, steps):
    """Count one operation of a walking option and its ``steps`` (a walk when > 0)."""
    b = S[C_OFF_SIDE]
    S[b + 3] += 1
    if steps > 0:
        S[b] += 1
        S[b + 1] += steps
        if steps > S[b + 2]:
            S[b + 2] = steps


@njit(cache=True)
def local_head(S, h, gz):
    """Index of list head ``h`` inside zone ``gz``'s heads (< HEADS_FREE: free_area)."""
    return h - gz * S[C_HPZ]


@njit(cache=True)
def bit_test(S, base, i):
    """Bit ``i`` of the side bitmap at S[base:], counted as a load of its word."""
    return (lds(S, base + (i >> 6)) >> (i & 63)) & 1


@njit(cache=True)
def bit_assign(S, base, i, on):
    """Set (``on``) or clear bit ``i`` of the side bitmap at S[base:] (a load and a store)."""
    w = lds(S, base + (i >> 6))
    m = np.int64(1) << (i & 63)
    sts(S, base + (i >> 6), (w | m) if on else (w & ~m))


@njit(cache=True)
def list_empty(S, h):
    first = S[hx(S, h)]
    acc_head(S, h, 0, False, first)
    return first == -1 - h


@njit(cache=True)
def list_first(S, h):
    first = S[hx(S, h)]
    acc_head(S, h, 0, False, first)
    return first


@njit(cache=True)
def list_last(S, h):
    last = S[hx(S, h) + 1]
    acc_head(S, h, 1, False, last)
    return last


@njit(cache=True)
def head_empty(mem, S, h, gz, order):
    """fl_empty() of lists whose head keeps (first, last) as the kernel's list_head."""
    return list_empty(S, h)


@njit(cache=True)
def head_first(mem, S, h, gz, order):
    """fl_first() of lists whose head keeps (first, last)."""
    return list_first(S, h)


@njit(cache=True)
def head_last(mem, S, h, gz, order):
    """fl_last() of lists whose head keeps (first, last): O(1)."""
    return list_last(S, h)


@njit(cache=True)
def head_set(S, h, which, to):
    """Set list head ``h``'s next (which=0) or prev (1) to ``to``, counted as a store."""
    S[hx(S, h) + which] = to
    acc_head(S, h, which, True, to)


# ---- links as emulated addresses (encodings that store pointers) ------------------------------

@njit(cache=True)
def addr_of(S, node):
    """Emulated address a link word holds for ``node``: &page->buddy_list of a PFN, or the
    list head's address for a head (``-1 - h``)."""
    if node >= 0:
        return (VMEMMAP + (np.uint64(node) << np.uint64(S[C_SHIFT]))
                + np.uint64(S[C_LINKOFF]))
    return HEADS + (np.uint64(-1 - node) << np.uint64(4))


@njit(cache=True)
def node_of(S, addr):
    """Inverse of :func:`addr_of`."""
    if addr >= VMEMMAP:
        return np.int64((addr - VMEMMAP - np.uint64(S[C_LINKOFF])) >> np.uint64(S[C_SHIFT]))
    return -1 - np.int64((addr - HEADS) >> np.uint64(4))


# ---- node / zone / Misc words ---------------------------------------------------------------

@njit(cache=True)
def nodezone_bits(nid, zone_type):
    return (np.uint64(nid) << np.uint64(NODES_PGSHIFT)) | (np.uint64(zone_type)
                                                          << np.uint64(ZONES_PGSHIFT))


@njit(cache=True)
def misc_word(S, subtype, order, gz):
    """The Misc memdesc word with its inline bits (memdesc.memdesc_misc())."""
    return (np.uint64(S[C_MISC]) | (np.uint64(subtype) << np.uint64(MISC_SUBTYPE_SHIFT))
            | (np.uint64(order) << np.uint64(MISC_ORDER_SHIFT))
            | nodezone_bits(gz // NR_ZONES, gz % NR_ZONES))


#: page->flags bits an encoding keeps when a page turns free: node and zone (page_zonenum()).
KEEP_NODEZONE = np.uint64(~((1 << ZONES_PGSHIFT) - 1) & 0xFFFFFFFFFFFFFFFF)


# ---- shared implementations of FreeTracking ops (an encoding binds them by name) -----------

@njit(cache=True)
def pointer_link_get(mem, S, node, which, gz, order):
    """link_get() of encodings whose link slot holds plain struct page addresses
    (list_head.next/prev in buddy_list, as in the kernel)."""
    i = node * S[C_W] + S[C_F_LINK] + which
    to = node_of(S, mem[i])
    acc_link(S, i, to)
    return to


@njit(cache=True)
def pointer_link_set(mem, S, node, which, to, gz, order):
    """link_set() counterpart of :func:`pointer_link_get`."""
    stm(mem, S, node * S[C_W] + S[C_F_LINK] + which, addr_of(S, to))


@njit(cache=True)
def misc_init_reserved(mem, S, pfn, gz):
    """init_reserved() of encodings with a memdesc word: a reserved page is Misc/reserved."""
    stm(mem, S, pfn * S[C_W] + S[C_F_MD], misc_word(S, MISC_SUBTYPE_RESERVED, 0, gz))


@njit(cache=True)
def misc_prep_new_page(mem, S, pfn, order, comp, gz):
    """prep_new_page() of page32 encodings (memdesc word + private): every page of the block
    gets the Misc alloc_pages word with its order, and private is cleared."""
    w, md, pv = S[C_W], S[C_F_MD], S[C_F_PRIV]
    word = misc_word(S, MISC_SUBTYPE_ALLOC_PAGES, order, gz)
    for i in range(pfn * w, (pfn + (np.int64(1) << order)) * w, w):
        stm(mem, S, i + md, word)
        stm(mem, S, i + pv, 0)


@njit(cache=True)
def nibble_tail_ok(mem, S, pfn):
    """tail_ok() of encodings whose memdesc word keeps the Buddy type in its low nibble."""
    return np.int64(ldm(mem, S, pfn * S[C_W] + S[C_F_MD]) & U4) == S[C_BUDDY]
