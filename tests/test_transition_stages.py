"""The 2026 transition order as stages: ptdesc-first, ptdesc-slab, and the 32-byte page with
the 2026-01 page-flag split (Wilcox, <aWF3xg-72SV4tmLk@casper.infradead.org>)."""

from __future__ import annotations

import numpy as np
import pytest

from memdesc.analysis.scenario import World, compare_runs, parse_scenario, run_stage
from memdesc.mm.mm_types import PG, PG_buddy_page32
from memdesc.stages import (
    PAGE_FLAGS_FOLIO_ONLY_2026,
    PAGE_FLAGS_GONE_2026,
    TRANSITION_IDS,
    get_stage,
    parse_stages,
)

SCENARIO = """machine 64M cpus=2
seed 3
pagecache 300K file=f0 order=2
anon 200K proc=p1 order=0
fork 2 touch=40K proc=w order=9
kmalloc 100 size=10-9000 tag=t gfp=kernel
zsmalloc 100K pool=z
netpool 64K pool=n1 order=1
vmalloc 100K tag=v
free half pagecache
"""


def test_path_order_puts_the_transition_between_folio_and_dynamic():
    got = [s.id for s in parse_stages("page8,dynamic,ptdesc-slab,v6.18,ptdesc-first,"
                                      "page32-2026,page32")]
    assert got == ["v6.18", "ptdesc-first", "ptdesc-slab", "dynamic", "page32", "page32-2026",
                   "page8"]
    assert get_stage("ptdesc-first").separate_types == ("ptdesc",)
    assert get_stage("ptdesc-slab").separate_types == ("ptdesc", "slab")
    assert get_stage("v6.18").separate_types == ()
    assert "folio" in get_stage("dynamic").separate_types
    with pytest.raises(ValueError, match="ptdesc-first"):
        get_stage("ptdesc-third")


def test_separation_is_per_type_from_the_stage_row():
    """stage_params(): sp[SP_SEPARATE + t] for the memdesc types of the row's descriptor
    types, nothing else; the memdesc word beside compound_head (PAGE_TRANSITION) only where
    a type is separate."""
    from memdesc.mm.memdesc_alloc import SP_MEMDESC_OFF, SP_SEPARATE, stage_params
    from memdesc.stages import STAGES, type_code

    def separate(stage_id):
        st = get_stage(stage_id)
        sp = stage_params(st, 1, False)
        return {st.types[t] for t in range(16) if sp[SP_SEPARATE + t]}, int(sp[SP_MEMDESC_OFF])

    assert separate("v6.18") == (set(), 0)
    assert separate("ptdesc-first") == ({"PageTable"}, 16)
    assert separate("ptdesc-slab") == ({"PageTable", "Slab"}, 16)
    got, off = separate("dynamic")
    assert got >= {"File", "Anon", "KSM", "PageTable", "Movable", "NetPool", "Slab"}
    assert off == 8 and "Misc" not in got and "Buddy" not in got
    assert all(type_code(s, "PageTable") < 16 for s in STAGES)


def _world(stage: str) -> World:
    sc = parse_scenario(SCENARIO, "t")
    w = World(sc, stage, check=True)
    for step in sc.steps:
        w.run(step)
    return w


def _memdesc_word(w: World, pfn: int) -> int:
    """The word at byte 16 of pfn's struct page (PAGE_TRANSITION's memdesc)."""
    mem, _ = w.k.mm.st
    return int(mem[pfn * (w.k.stage.struct_page_bytes // 8) + 2])


def _cache_name(w: World, obj: int) -> str:
    """The slab cache holding object ``obj`` (virt_to_slab() -> slab->slab_cache)."""
    from memdesc.mm.slub import _cache_of_slab, virt_to_slab

    c = int(_cache_of_slab(w.k.E, virt_to_slab(w.k.E, np.uint64(obj))))
    return w.k.slub.cache_list[c].name


@pytest.mark.parametrize("stage", ["ptdesc-first", "ptdesc-slab"])
def test_transition_stage_separates_exactly_its_types(stage):
    """ptdesc-first: every page-table page's memdesc word (offset 16) points at an object of
    the "ptdesc" cache, typed PageTable; folios still overlay (page_folio() is the struct page,
    no folio cache exists); struct slab overlays at ptdesc-first and is a "memdesc_slab" object
    at ptdesc-slab."""
    from memdesc.mm.kmem import PAGE_OFFSET, VMEMMAP_START
    from memdesc.mm.slub import virt_to_slab
    from memdesc.stages import type_code

    w = _world(stage)
    st = w.k.stage
    caches = {kc.descriptor for kc in w.k.slub.cache_list if kc.descriptor}
    assert caches == set(st.separate_types)
    ptdesc_cache = w.k.slub.by_name["ptdesc"]
    assert w.k.slub.live(ptdesc_cache) > 0
    pgd = next(iter(w.anon.procs.values())).pgd
    word = _memdesc_word(w, pgd)
    assert word & 15 == type_code(st, "PageTable")
    assert _cache_name(w, word & ~15) == "ptdesc"
    folio = int(next(iter(w.anon.procs.values())).folios[0])
    assert VMEMMAP_START <= folio < VMEMMAP_START + w.k.mm.nr_pfns * 64   # a struct page
    addrs, sizes = w.kmalloc["t"][0]
    small = int(next(a for a, n in zip(addrs, sizes, strict=True) if a and n <= 4096))
    slab = int(virt_to_slab(w.k.E, np.uint64(small)))
    pfn = (small - PAGE_OFFSET) >> 12
    if "slab" in st.separate_types:
        assert _cache_name(w, slab) == "memdesc_slab"
    else:
        head, rest = divmod(slab - VMEMMAP_START, 64)             # the head struct page
        assert rest == 0 and 0 <= pfn - head < 8


@pytest.fixture(scope="module")
def transition_runs():
    sc = parse_scenario(SCENARIO, "t")
    return {s: run_stage(sc, s, check=True)
            for s in ("v6.18", "ptdesc-first", "ptdesc-slab", "dynamic", "page32-2026")}


def test_transition_stages_have_the_observables_of_v6_18(transition_runs):
    runs = list(transition_runs.values())
    assert compare_runs(runs)["identical_across_stages"]
    assert runs[-1].accounting["total_bytes"] < runs[0].accounting["total_bytes"]


def test_transition_stages_pay_for_their_separate_descriptors_only(transition_runs):
    """Descriptor bytes grow along the order: none at v6.18, the ptdesc cache at
    ptdesc-first, plus the struct slab cache at ptdesc-slab, every cache at dynamic."""
    acc = {s: r.accounting for s, r in transition_runs.items()}
    assert acc["v6.18"]["descriptor_bytes"] == 0
    assert set(acc["ptdesc-first"]["descriptor_caches"]) == {"ptdesc"}
    assert set(acc["ptdesc-slab"]["descriptor_caches"]) == {"ptdesc", "memdesc_slab"}
    assert 0 < acc["ptdesc-first"]["descriptor_bytes"] < acc["ptdesc-slab"][
        "descriptor_bytes"] < acc["dynamic"]["descriptor_bytes"]
    # struct page is still 64 bytes: the mem_map costs what v6.18's does
    assert {acc[s]["struct_page_bytes"] for s in ("v6.18", "ptdesc-first", "ptdesc-slab",
                                                  "dynamic")} == {acc["v6.18"][
                                                      "struct_page_bytes"]}


def test_page32_2026_page_flags_hold_only_the_per_page_bits():
    """2026-01 split: Writeback/Referenced/.../LRU/... live only in folio->flags and
    Head/Private/Private2 are gone, so no page's own flags word may hold them."""
    assert set(PAGE_FLAGS_FOLIO_ONLY_2026) | set(PAGE_FLAGS_GONE_2026) <= set(PG)
    sc = parse_scenario(SCENARIO, "t")
    w = World(sc, "page32-2026", check=True)
    for step in sc.steps:
        w.run(step)
    mem, _ = w.k.mm.st
    flags = mem[: w.k.mm.nr_pfns * 4].reshape(-1, 4)[:, 0]
    banned = sum(1 << PG[n] for n in (*PAGE_FLAGS_FOLIO_ONLY_2026, *PAGE_FLAGS_GONE_2026))
    assert int(np.count_nonzero(flags & np.uint64(banned))) == 0
    # the free-page mark is this emulator's page32 encoding (bit 24), not a PG_* flag
    assert PG_buddy_page32 == 24 and all(PG[n] < 24 for n in PG)
    assert set(TRANSITION_IDS) == {"ptdesc-first", "ptdesc-slab", "page32-2026"}


def test_stages_command_opens_with_every_stage_in_path_order(capsys, monkeypatch):
    """`memdesc stages --brief`: one row per stage of PATH_ORDER, transition stages included,
    every one of them emulated (the partial separations too)."""
    from memdesc.cli import main
    from memdesc.stages import PATH_ORDER

    monkeypatch.setenv("COLUMNS", "80")
    assert main(["stages", "--brief"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()
            if line.split() and line.split()[0] in PATH_ORDER]
    assert [r[0] for r in rows] == list(PATH_ORDER)
    assert all(r[-1] == "yes" for r in rows)
    assert all(len(line) <= 80 for line in out.splitlines())


def test_every_registered_stage_is_emulated_and_property_tested():
    """The property tests iterate over stages.EMULATED_STAGE_IDS (derived from the rows'
    descriptor policy): every stage of the registry is in it, the transition ones too."""
    import test_mm_props
    from memdesc.stages import EMULATED_STAGE_IDS, STAGES, TRANSITION_STAGES

    assert set(EMULATED_STAGE_IDS) == {s.id for s in (*STAGES, *TRANSITION_STAGES)}
    assert {"ptdesc-first", "ptdesc-slab"} <= set(test_mm_props.STAGE_IDS)
