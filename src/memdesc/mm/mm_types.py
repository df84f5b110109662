"""struct page and its overlays as bytes: constants, descriptor layouts, numpy dtypes, and the
rule that a field absent at a stage is absent.

Mirrors include/linux/mm_types.h, page-flags.h and page-flags-layout.h of Linux 6.18 as built
on the fixture machine. The struct page layouts of every stage live in :mod:`memdesc.stages`;
this module adds the descriptor overlays of ``v6.18`` (struct folio spanning four struct pages,
struct slab, struct ptdesc) [M: fixtures/btf/pahole/*.txt], the 80-byte folio of the Path (2025)
used from ``dynamic`` on [S: Memdescs/Path], and a numpy structured dtype per layout so one
contiguous mem_map array can be read field by field without per-page Python objects.
"""

from __future__ import annotations

import numpy as np

from memdesc.mm.kmem import VMEMMAP_START
from memdesc.stages import Stage, StructLayout, _layout

# ---- page->flags word (memdesc_flags_t.f) of this config [M: btf enums; I: research §4.5] ------

#: enum pageflags, bits 0..23 [M: fixtures/btf/btf-enums-selected.txt].
PG: dict[str, int] = {
    "locked": 0, "writeback": 1, "referenced": 2, "uptodate": 3, "dirty": 4, "lru": 5,
    "head": 6, "waiters": 7, "active": 8, "workingset": 9, "owner_priv_1": 10, "owner_2": 11,
    "arch_1": 12, "reserved": 13, "private": 14, "private_2": 15, "reclaim": 16,
    "swapbacked": 17, "unevictable": 18, "dropbehind": 19, "mlocked": 20, "young": 21,
    "idle": 22, "arch_2": 23,
}
NR_PAGEFLAGS = 24                      # __NR_PAGEFLAGS [M]
PG_locked, PG_lru, PG_head, PG_reserved = PG["locked"], PG["lru"], PG["head"], PG["reserved"]
PG_movable_ops = 3                     # alias of PG_uptodate for non-folio pages [M]
#: PAGE_FLAGS_CHECK_AT_PREP: every PG_* bit (no __PG_HWPOISON on this config) [S: page-flags.h].
PAGE_FLAGS_CHECK_AT_PREP = (1 << NR_PAGEFLAGS) - 1
#: page32 with a Rev A/B type table marks a free block head with a flag bit, the first of the
#: NR_UNUSED_PAGEFLAG_BITS above the PG_* bits (PG_buddy was a page flag until 2.6.37) [I].
PG_buddy_page32 = NR_PAGEFLAGS

#: Field widths/shifts: SECTIONS_WIDTH 0 (vmemmap), NODES_SHIFT 10, ZONES_SHIFT 3
#: [M: CONFIG_NODES_SHIFT=10, __MAX_NR_ZONES=5; I: page-flags-layout.h arithmetic, §4.5].
NODES_WIDTH, NODES_PGSHIFT = 10, 54
ZONES_WIDTH, ZONES_PGSHIFT = 3, 51
NODES_MASK = (1 << NODES_WIDTH) - 1
ZONES_MASK = (1 << ZONES_WIDTH) - 1
ZONEID_PGSHIFT = ZONES_PGSHIFT         # node:zone together, page_zone_id()
ZONEID_MASK = (1 << (NODES_WIDTH + ZONES_WIDTH)) - 1

# ---- page->page_type (top byte) [M: enum pagetype] ---------------------------------------------
PGTY: dict[str, int] = {
    "buddy": 0xF0, "offline": 0xF1, "table": 0xF2, "guard": 0xF3, "hugetlb": 0xF4,
    "slab": 0xF5, "zsmalloc": 0xF6, "unaccepted": 0xF7, "large_kmalloc": 0xF8,
    "mapcount_underflow": 0xFF,
}
PGTY_buddy = PGTY["buddy"]
#: An untyped page: page_type == UINT_MAX, i.e. _mapcount == -1 [S: page-flags.h].
PAGE_TYPE_NONE = 0xFFFFFFFF

#: POISON_POINTER_DELTA (CONFIG_ILLEGAL_POINTER_VALUE on x86-64) and TAIL_MAPPING, written to
#: ->mapping of compound tail pages by prep_compound_tail() [S: include/linux/poison.h].
POISON_POINTER_DELTA = 0xDEAD000000000000
TAIL_MAPPING = POISON_POINTER_DELTA + 0x400



def pfn_to_page(stage: Stage, pfn: int) -> int:
    """Emulated address of the struct page of ``pfn``. Mirrors __pfn_to_page() with
    SPARSEMEM_VMEMMAP: vmemmap + pfn (pointer arithmetic in units of sizeof(struct page))."""
    return VMEMMAP_START + int(pfn) * stage.struct_page_bytes


def page_to_pfn(stage: Stage, addr: int) -> int:
    """Mirrors __page_to_pfn() with SPARSEMEM_VMEMMAP: page - vmemmap."""
    return (int(addr) - VMEMMAP_START) // stage.struct_page_bytes


def flags_node_zone(nid: int, zone: int) -> int:
    """The node/zone bits set_page_links() puts in page->flags. Mirrors set_page_zone() and
    set_page_node() in include/linux/mm.h."""
    return ((nid & NODES_MASK) << NODES_PGSHIFT) | ((zone & ZONES_MASK) << ZONES_PGSHIFT)


def memdesc_zonenum(flags: int) -> int:
    """Mirrors memdesc_zonenum() in include/linux/mmzone.h."""
    return (flags >> ZONES_PGSHIFT) & ZONES_MASK


def memdesc_nid(flags: int) -> int:
    """Mirrors memdesc_nid() in include/linux/mm.h."""
    return (flags >> NODES_PGSHIFT) & NODES_MASK


# ---- descriptor overlays of v6.18 [M: fixtures/btf/pahole/{folio,slab,ptdesc}.txt] ------------

#: struct folio: four struct pages; members of __page_1..3 named as in BTF.
FOLIO_V6_18 = _layout(
    "folio", 256,
    ("flags", 0, 8), ("lru", 8, 16), ("mapping", 24, 8), ("index", 32, 8),
    ("private", 40, 8), ("_mapcount", 48, 4), ("_refcount", 52, 4), ("memcg_data", 56, 8),
    ("_flags_1", 64, 8, "low byte: folio_order()"), ("_head_1", 72, 8, "compound_head of page 1"),
    ("_large_mapcount", 80, 4), ("_nr_pages_mapped", 84, 4), ("_entire_mapcount", 88, 4),
    ("_pincount", 92, 4), ("_mm_id_mapcount", 96, 8), ("_mm_ids", 104, 8),
    ("_mapcount_1", 112, 4), ("_refcount_1", 116, 4), ("_nr_pages", 120, 4),
    ("_flags_2", 128, 8), ("_head_2", 136, 8), ("_deferred_list", 144, 16),
    ("_flags_3", 192, 8), ("_head_3", 200, 8), ("_hugetlb_subpool", 208, 8),
    ("_hugetlb_cgroup", 216, 8), ("_hugetlb_cgroup_rsvd", 224, 8), ("_hugetlb_hwpoison", 232, 8),
)
SLAB_V6_18 = _layout(
    "slab", 64,
    ("flags", 0, 8), ("slab_cache", 8, 8), ("slab_list", 16, 16), ("freelist", 32, 8),
    ("counters", 40, 8, "inuse:16 objects:15 frozen:1"), ("__page_type", 48, 4),
    ("__page_refcount", 52, 4), ("obj_exts", 56, 8),
)
PTDESC_V6_18 = _layout(
    "ptdesc", 64,
    ("pt_flags", 0, 8), ("pt_list", 8, 16), ("pmd_huge_pte", 16, 8), ("__page_mapping", 24, 8),
    ("pt_index", 32, 8), ("ptl", 40, 4), ("__page_type", 48, 4), ("__page_refcount", 52, 4),
    ("pt_memcg_data", 56, 8),
)
#: struct folio of the Path (2025, variant P2): 80 bytes, a slab object from `dynamic` on
#: [S: Memdescs/Path?highlight=PageTable; sizes I, research §2.1].
FOLIO_PATH_2025 = _layout(
    "folio", 80,
    ("flags", 0, 8, "memdesc_flags_t: node/zone high bits = pfn_flags(pfn)"), ("lru", 8, 16),
    ("mapping", 24, 8), ("index", 32, 8), ("private", 40, 8), ("_refcount", 48, 4),
    ("_mapcount", 52, 4), ("pincount", 56, 4), ("order", 60, 1), ("pfn", 64, 8),
    ("memcg", 72, 8),
)
OVERLAYS_V6_18: tuple[StructLayout, ...] = (FOLIO_V6_18, SLAB_V6_18, PTDESC_V6_18)

_SIGNED = {"_mapcount", "_refcount", "_large_mapcount", "_nr_pages_mapped", "_entire_mapcount",
           "_pincount", "_mapcount_1", "_refcount_1", "__page_refcount", "pincount"}


def layout_dtype(layout: StructLayout) -> np.dtype:
    """A numpy structured dtype with every member of ``layout`` at its offset (union members
    overlap, as in C). 16-byte members (list_head) are two uint64 (next, prev)."""
    names, formats, offsets = [], [], []
    for f in layout.fields:
        if f.size == 16:
            fmt: object = ("<u8", (2,))
        elif f.size in (1, 2, 4, 8):
            fmt = f"<{'i' if f.name in _SIGNED else 'u'}{f.size}"
        else:
            fmt = f"V{f.size}"
        names.append(f.name)
        formats.append(fmt)
        offsets.append(f.offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                     "itemsize": layout.size})


# ---- fields that are absent at a stage ------------------------------------------------------

class FieldAbsent(Exception):
    """Page-level code touched a struct page member that does not exist at this stage."""


#: Why a member is missing, keyed by (stage id, member). Anything else gets a generic reason.
_ABSENT_WHY: dict[tuple[str, str], str] = {
    ("folio", "mapping"): "filesystems are folio-only; struct page keeps only __folio_mapping, "
                          "so use folio->mapping",
    ("folio", "index"): "struct page keeps only __folio_index; use folio->index",
    ("v6.18", "index"): "page->index was renamed __folio_index in 6.16; use folio->index",
    ("v6.18", "memdesc"): "there is no memdesc word before stage dynamic; tails point to the "
                          "head through compound_head",
    ("folio", "memdesc"): "there is no memdesc word before stage dynamic; tails point to the "
                          "head through compound_head",
    ("dynamic", "compound_head"): "the word at offset 8 is the memdesc (descriptor | type) on "
                                  "every page; page_folio() decodes it",
    ("page16", "flags"): "flags left struct page; node/zone come from page_zone() (the "
                         "descriptor's memdesc_flags_t, the Misc inline bits or the PFN table)",
    ("page8", "flags"): "flags left struct page; node/zone come from page_zone() (the "
                        "descriptor's memdesc_flags_t, the Misc inline bits or the PFN table)",
    ("page8", "private"): "page->private is gone; a free block's order lives in the packed "
                          "buddy word",
}


def page_member(stage: Stage, name: str):
    """The struct page member ``name`` at ``stage``; FieldAbsent naming the stage otherwise."""
    f = stage.page.field(name)
    if f is not None:
        return f
    why = _ABSENT_WHY.get((stage.id, name)) or _ABSENT_WHY.get((stage.id, name.lstrip("_")))
    if why is None:
        have = ", ".join(dict.fromkeys(f.name for f in stage.page.fields))
        why = f"struct page ({stage.page.size} bytes) has only {have}"
    raise FieldAbsent(f"page->{name} does not exist at stage {stage.id}: {why}")


def page_dtype(stage: Stage) -> np.dtype:
    """The structured dtype of one struct page at ``stage``."""
    return layout_dtype(stage.page)
