"""struct page and overlay layouts against the real kernel's BTF (pahole), the page-flags and
GFP numbers against the BTF enums, the memdesc word, and absent fields."""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import fixture_dir
from memdesc.mm import gfp as g
from memdesc.mm.memdesc import memdesc_decode, memdesc_misc, memdesc_ptr
from memdesc.mm.mm_types import (
    FOLIO_PATH_2025,
    FOLIO_V6_18,
    PG,
    PGTY,
    PTDESC_V6_18,
    SLAB_V6_18,
    FieldAbsent,
    flags_node_zone,
    layout_dtype,
    memdesc_nid,
    memdesc_zonenum,
    page_dtype,
    page_member,
)
from memdesc.stages import PAGE_V6_18, STAGES, get_stage

_LEAF = re.compile(r"^\s*(?P<decl>[^;{}]*?\b(?P<name>\w+))(?:\[\d+\])?(?::\d+)?;\s*"
                   r"/\*\s*(?P<off>\d+)(?::\s*\d+)?\s+(?P<size>\d+)\s*\*/")
_SIZE = re.compile(r"/\*\s*size:\s*(\d+)")


def parse_pahole(text: str) -> tuple[int, dict[str, set[tuple[int, int]]]]:
    """(struct size, {member name: {(offset, size), ...}}) for every leaf member pahole prints
    (offsets are absolute within the outer struct, union members share offsets)."""
    members: dict[str, set[tuple[int, int]]] = {}
    size = None
    for line in text.splitlines():
        m = _LEAF.match(line)
        if m:
            members.setdefault(m["name"], set()).add((int(m["off"]), int(m["size"])))
        s = _SIZE.search(line)
        if s and size is None and line.strip().startswith("/* size:"):
            size = int(s[1])
    assert size is not None, "pahole output without a size line"
    return size, members


@pytest.mark.parametrize("layout, fname", [
    (PAGE_V6_18, "page.txt"), (FOLIO_V6_18, "folio.txt"), (SLAB_V6_18, "slab.txt"),
    (PTDESC_V6_18, "ptdesc.txt"),
])
def test_v6_18_layouts_match_pahole(layout, fname):
    text = (fixture_dir("btf") / "pahole" / fname).read_text()
    size, members = parse_pahole(text)
    assert layout.size == size
    for f in layout.fields:
        assert f.name in members, f"{layout.name}.{f.name} is not in {fname}"
        assert (f.offset, f.size) in members[f.name], (
            f"{layout.name}.{f.name}: ours {f.offset}/{f.size}, BTF {sorted(members[f.name])}")


def test_pahole_parser_sees_unions_and_nesting():
    size, members = parse_pahole((fixture_dir("btf") / "pahole" / "folio.txt").read_text())
    assert size == 256
    assert members["_nr_pages"] == {(120, 4)}
    assert members["_deferred_list"] == {(144, 16)}
    assert (64, 64) in members["__page_1"]
    assert members["_flags_1"] == {(64, 8)} and members["_head_1"] == {(72, 8)}


def test_folio_tail_words_line_up_with_struct_page():
    page = {f.name: f for f in PAGE_V6_18.fields}
    folio = {f.name: f for f in FOLIO_V6_18.fields}
    # FOLIO_MATCH(compound_head, _head_1) etc.: each tail's words sit where struct page has them
    for i in (1, 2, 3):
        assert folio[f"_flags_{i}"].offset == 64 * i + page["flags"].offset
        assert folio[f"_head_{i}"].offset == 64 * i + page["compound_head"].offset
    assert folio["_mapcount_1"].offset == 64 + page["_mapcount"].offset
    assert folio["_refcount_1"].offset == 64 + page["_refcount"].offset


def test_every_stage_layout_is_legal():
    for stage in STAGES:
        assert stage.struct_page_bytes in (64, 32, 16, 8)
        assert 4096 % stage.struct_page_bytes == 0
        dt = page_dtype(stage)
        assert dt.itemsize == stage.struct_page_bytes
        for f in stage.page.fields:
            assert f.offset + f.size <= stage.page.size
    assert FOLIO_PATH_2025.size % 16 == 0


def test_dtype_reads_the_bytes_where_the_kernel_has_them():
    words = np.zeros(8, np.uint64)
    page = words.view(page_dtype(get_stage("v6.18")))[0]
    words[6] = np.uint64((7 << 32) | 0xF0000000)        # _refcount 7, page_type PGTY_buddy
    words[5] = 3
    assert page["_refcount"] == 7 and page["page_type"] >> 24 == PGTY["buddy"]
    assert page["private"] == 3
    assert layout_dtype(FOLIO_V6_18).itemsize == 256


def _enum(text: str, name: str) -> dict[str, int]:
    block = re.search(r"enum " + re.escape(name) + r" \{(.*?)\};", text, re.S)
    return {m[1]: int(m[2]) for m in re.finditer(r"(\w+)\s*=\s*(\d+)", block[1])}


def test_page_flags_and_types_match_btf():
    text = (fixture_dir("btf") / "btf-enums-selected.txt").read_text()
    pf = _enum(text, "pageflags")
    for name, bit in PG.items():
        assert pf[f"PG_{name}"] == bit
    assert pf["__NR_PAGEFLAGS"] == 24
    pt = _enum(text, "pagetype")
    for name, v in PGTY.items():
        assert pt[f"PGTY_{name}"] == v


def test_gfp_bits_match_btf_enum():
    text = (fixture_dir("btf") / "btf-enums-selected.txt").read_text()
    bits = {m[1]: int(m[2]) for m in re.finditer(r"___GFP_(\w+)_BIT\s*=\s*(\d+)", text)}
    assert bits.pop("LAST") == g.___GFP_LAST_BIT
    assert bits == g.GFP_BITS


def test_gfp_zone_and_alloc_flags_follow_the_kernel():
    assert g.gfp_zone(g.GFP_KERNEL) == g.ZONE_NORMAL
    assert g.gfp_zone(g.GFP_DMA) == g.ZONE_DMA
    assert g.gfp_zone(g.GFP_DMA32) == g.ZONE_DMA32
    assert g.gfp_zone(g.GFP_HIGHUSER) == g.ZONE_NORMAL          # no highmem on 64-bit
    assert g.gfp_zone(g.GFP_HIGHUSER_MOVABLE) == g.ZONE_MOVABLE
    assert g.gfp_zone(g.GFP_KERNEL | g.GFP.MOVABLE) == g.ZONE_NORMAL
    assert g.gfp_zone(g.GFP_DMA32 | g.GFP.MOVABLE) == g.ZONE_DMA32
    assert g.gfp_migratetype(g.GFP_HIGHUSER_MOVABLE) == g.MIGRATE_MOVABLE
    assert g.gfp_migratetype(g.GFP_KERNEL | g.GFP.RECLAIMABLE) == g.MIGRATE_RECLAIMABLE
    with pytest.raises(ValueError, match="zone modifier"):
        g.check_gfp(g.GFP_DMA | g.GFP_DMA32)
    with pytest.raises(ValueError, match="together"):
        g.check_gfp(g.GFP.MOVABLE | g.GFP.RECLAIMABLE)
    # "__GFP_HIGH is assumed to be the same as ALLOC_MIN_RESERVE" (mm/page_alloc.c)
    assert g.GFP.HIGH == g.ALLOC_MIN_RESERVE and g.GFP.KSWAPD_RECLAIM == g.ALLOC_KSWAPD
    atomic = g.gfp_to_alloc_flags(g.GFP_ATOMIC, 1)
    assert atomic & g.ALLOC_NON_BLOCK and atomic & g.ALLOC_HIGHATOMIC
    assert not g.gfp_to_alloc_flags(g.GFP_KERNEL, 1) & g.ALLOC_RESERVES
    assert g.parse_gfp("GFP_KERNEL|__GFP_ZERO") == g.GFP_KERNEL | g.GFP.ZERO


def test_flags_word_node_zone_bits():
    f = flags_node_zone(1023, 3)
    assert f >> 54 == 1023 and (f >> 51) & 7 == 3
    assert memdesc_nid(f | 0xFFFFFF) == 1023 and memdesc_zonenum(f) == 3


@pytest.mark.parametrize("table, buddy, misc", [("rev-b", 1, 0), ("rev-a", 5, 0),
                                                ("path-2025", 0, 1)])
def test_memdesc_word_round_trip(table, buddy, misc):
    stage = get_stage(f"page16@{table}") if table != "rev-b" else get_stage("page16")
    w = memdesc_ptr(stage, "Slab", 0xFFFF888012345670)
    d = memdesc_decode(stage, w)
    assert d.type_name == "Slab" and d.pointer == 0xFFFF888012345670
    m = memdesc_misc(stage, "vmalloc", 9, nid=2, zone=1, mappable=True)
    d = memdesc_decode(stage, m)
    assert (d.type, d.subtype, d.order, d.nid, d.zone, d.mappable) == (misc, "vmalloc", 9, 2, 1,
                                                                      True)
    assert memdesc_decode(stage, buddy).type_name == "Buddy"
    with pytest.raises(ValueError, match="aligned"):
        memdesc_ptr(stage, "Slab", 0x1008)


def test_path_2025_aliases_list_pointers_as_buddy():
    stage = get_stage("page32@path-2025")
    for nib in (0, 4, 8, 12):       # any 4-byte aligned pointer in the word reads as Buddy
        assert memdesc_decode(stage, 0xFFFFEA0000001000 | nib).type_name == "Buddy"
    assert memdesc_decode(stage, 0xFFFFEA0000001008).type_name == "Buddy"
    # with rev B the same list pointer would read as NetPool: why page32 needs a flag bit there
    assert memdesc_decode(get_stage("page32"), 0xFFFFEA0000001008).type_name == "NetPool"


@pytest.mark.parametrize("stage, member, words", [
    ("page16", "flags", "does not exist at stage page16"),
    ("page8", "flags", "does not exist at stage page8"),
    ("folio", "mapping", "stage folio: filesystems are folio-only"),
    ("page8", "private", "stage page8"),
    ("v6.18", "memdesc", "no memdesc word before stage dynamic"),
    ("dynamic", "compound_head", "memdesc"),
])
def test_absent_fields_raise_naming_the_stage(stage, member, words):
    with pytest.raises(FieldAbsent, match=re.escape(words)):
        page_member(get_stage(stage), member)
    assert page_member(get_stage("v6.18"), "mapping").offset == 24
