"""The cost model: SLUB cache geometry, per-stage arithmetic on hand censuses, descriptor table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from conftest import fixture_dir
from memdesc.analysis.census import CLASSES, NR_UNIT_ORDERS, Census
from memdesc.analysis.cost import (
    descriptor_demand,
    explain,
    slab_geometry,
    stage_cost,
    survey_costs,
)
from memdesc.analysis.descriptors import CachePolicy, load_descriptors
from memdesc.analysis.survey import run_survey
from memdesc.errors import InputError
from memdesc.ingest.snapshot import open_snapshot
from memdesc.stages import STAGES, get_stage

TABLE = load_descriptors()


def hand_census(pfns: int, memmap: int | None = None, **units: dict[int, int]) -> Census:
    """A census with ``units[class] = {order: count}``; the rest of the PFNs are free."""
    u = {c: np.zeros(NR_UNIT_ORDERS, np.int64) for c in CLASSES}
    pages = dict.fromkeys(CLASSES, 0)
    for cls, by_order in units.items():
        for order, n in by_order.items():
            u[cls][order] += n
            pages[cls] += n << order
    pages["free"] = pfns - sum(pages.values())
    u["free"][0] = pages["free"]
    c = Census("hand", pfns, pages, u, memmap_pages=memmap or pfns, ram_pages=pfns, nr_cpus=2)
    c.check()
    return c


# --- SLUB geometry ---------------------------------------------------------------------------

@pytest.mark.parametrize(("size", "objects"), [(64, 64), (80, 51), (128, 32), (160, 25)])
def test_descriptor_caches_are_order_0_on_two_cpus(size, objects):
    """calculate_order(): min_objects = 4 * (fls(2) + 1) = 12; 12 * 160 = 1920 fits one page
    and 4096 % size <= 4096 / 16 for these sizes, so order 0."""
    g = slab_geometry(size, 2, CachePolicy())
    assert (g.order, g.objects, g.stride, g.min_objects, g.fraction) == (0, objects, size, 12, 16)


def test_many_cpus_raise_the_slab_order():
    """64 CPUs: min_objects = 4 * (fls(64) + 1) = 32; 32 * 160 = 5120 B needs order 1, and
    8192 % 160 = 32 <= 8192 / 16, so order 1 with 51 objects."""
    g = slab_geometry(160, 64, CachePolicy())
    assert (g.min_objects, g.min_order, g.order, g.objects) == (32, 1, 1, 51)


def test_free_pointer_outside_the_object_grows_the_stride():
    """SLAB_TYPESAFE_BY_RCU without freeptr_offset: 80 + 8 = 88, aligned to 16 -> 96."""
    g = slab_geometry(80, 2, CachePolicy(use_freeptr_offset=False))
    assert (g.stride, g.objects, g.freeptr_outside) == (96, 42, True)


def test_waste_fraction_backs_off():
    """A 2,100 B object has a 2,112 B stride; 12 of them need 25,344 B (order 3), and
    32768 % 2112 = 1088 <= 32768 / 16, so order 3 with 15 objects."""
    g = slab_geometry(2100, 2, CachePolicy())
    assert (g.stride, g.min_order, g.order, g.objects) == (2112, 3, 3, 15)


# --- per-stage arithmetic ----------------------------------------------------------------------

def test_one_order_9_anon_folio_at_page16():
    """512 struct pages × 16 B = 8,192 B; one 124 B large folio -> 128 B in an order-0 slab
    (one page, 4,096 B); struct slab: 1 descriptor slab + the struct slab cache's own slab ->
    2 objects in one more page (4,096 B). Total 16,384 B, half of v6.18's 512 × 64 = 32,768."""
    c = hand_census(512, anon={9: 1})
    cost = stage_cost(c, get_stage("page16"), TABLE)
    assert cost.struct_page_bytes == 512 * 16
    assert cost.descriptor_bytes == 4096 + 4096
    assert cost.total_bytes == 16384
    assert cost.fixed_point == [1, 2]
    assert cost.by_type == {"memmap": 8192, "folio": 0, "large_folio": 128, "hugetlb_folio": 0,
                            "ksm": 0, "ptdesc": 0, "slab": 0, "slab_overhead": 128,
                            "slack": 8192 - 256}
    ref = stage_cost(c, get_stage("v6.18"), TABLE)
    assert ref.total_bytes == 512 * 64 and ref.descriptor_bytes == 0


def test_order_0_folios_cost_more_than_today_at_page16():
    """design §1: an order-0 folio costs 16 + 80 = 96 B > 64 B. 51 folios fill one slab page."""
    c = hand_census(51, file={0: 51})
    cost = stage_cost(c, get_stage("page16"), TABLE)
    assert cost.by_type["folio"] == 51 * 80
    assert cost.total_bytes == 51 * 16 + 4096 + 4096 > 51 * 64


def test_struct_slab_fixed_point():
    """10,000 slabs + 157 folio slabs (8,000 folios / 51); n = 10,157 + ceil(n / 64)."""
    c = hand_census(1 << 20, file={0: 8000}, slab={0: 10000})
    cost = stage_cost(c, get_stage("dynamic"), TABLE)
    n = cost.fixed_point[-1]
    assert n == 10157 + -(-n // 64) == 10319
    assert cost.caches[-1].objects == n and cost.caches[-1].slabs == -(-n // 64)


def test_no_descriptors_before_dynamic_and_by_type_adds_up():
    r = run_survey(open_snapshot(fixture_dir("snapshot-idle")))
    for s in r.costs:
        assert sum(s.by_type.values()) == s.total_bytes
        assert s.struct_page_bytes == r.census.memmap_pages * get_stage(s.id).struct_page_bytes
        if not get_stage(s.id).dynamic:
            assert s.descriptor_bytes == 0
    ids = [s.id for s in r.costs]
    assert ids == [s.id for s in STAGES]
    by = {s.id: s for s in r.costs}
    assert by["v6.18"].saving_bytes == 0
    assert by["page8"].total_bytes < by["page16"].total_bytes < by["page32"].total_bytes
    assert by["dynamic"].total_bytes > by["v6.18"].total_bytes


def test_descriptor_demand_by_class_and_order():
    c = hand_census(4096, file={0: 3, 2: 1}, shmem={0: 2}, anon={9: 1}, ksm={0: 4},
                    hugetlb={9: 1}, slab={0: 5, 3: 2}, pagetable={0: 6})
    # zpdesc and netmem_desc: the census cannot see zspages or page_pool pages (0)
    assert descriptor_demand(c) == {"folio": 5, "large_folio": 2, "hugetlb_folio": 1, "ksm": 4,
                                    "ptdesc": 6, "memcg_misc": 0, "slab": 7, "zpdesc": 0,
                                    "netmem_desc": 0}


def test_explain_prints_the_arithmetic():
    c = hand_census(512, anon={9: 1})
    cost = survey_costs(c, [get_stage("page16")], TABLE)[0]
    text = "\n".join(explain(cost, c, TABLE))
    assert "512 struct pages" in text and "× 16 B = 8,192 B" in text
    assert "ceil(1 / 32) = 1 slabs" in text
    assert "n = 1 + ceil(2 / 64) = 2 (stable)" in text
    assert "saving vs v6.18: 16,384 B (+50.00 %)" in text


# --- descriptor table --------------------------------------------------------------------------

def test_bundled_table_has_sources_for_every_size():
    for d in TABLE.descriptors.values():
        assert d.bytes > 0 and d.source.startswith("[")
    assert TABLE.size("large_folio") == 128 and TABLE.size("zpdesc") == 64


def test_override_table_changes_the_cost(tmp_path):
    text = Path(TABLE.path).read_text().replace("[folio]\nbytes = 80", "[folio]\nbytes = 96")
    assert "bytes = 96" in text
    p = tmp_path / "d.toml"
    p.write_text(text)
    t = load_descriptors(p)
    assert t.size("folio") == 96
    c = hand_census(51, file={0: 51})
    assert stage_cost(c, get_stage("page8"), t).by_type["folio"] == 51 * 96


@pytest.mark.parametrize("text", ["[folio\nbytes=1", "schema = 1\n[folio]\nbytes = 80\n",
                                  "[folio]\nbytes = -3\n", "schema = 9\n"])
def test_bad_tables_are_one_line_errors(tmp_path, text):
    p = tmp_path / "d.toml"
    p.write_text(text)
    with pytest.raises(InputError, match="descriptor table"):
        load_descriptors(p)
    with pytest.raises(InputError, match="does not exist"):
        load_descriptors(tmp_path / "absent.toml")


def test_explain_shows_the_min_objects_the_geometry_used():
    """A table that sets slub_min_objects: --explain must not claim 4 × (fls(cpus) + 1)."""
    t = dataclasses.replace(TABLE, cache=dataclasses.replace(TABLE.cache, min_objects=40))
    c = hand_census(512, anon={0: 100})
    cost = survey_costs(c, [get_stage("page16")], t)[0]
    text = "\n".join(explain(cost, c, t))
    assert "min_objects = slub_min_objects 40" in text and "fls(" not in text
    g = cost.caches[0].geometry
    assert g.min_objects == 40 and g.order == 0          # 40 × 80 B still fit one page


def test_cost_model_does_not_import_the_allocator():
    """The cost model needs SLUB's sizing rules only (mm/slub_sizing.py), never the hot
    paths or the page allocator (checked in a fresh interpreter)."""
    import subprocess
    import sys

    code = ("import sys, memdesc.analysis.cost; "
            "print(sorted(m for m in ('memdesc.mm.slub', 'memdesc.mm.slab', 'memdesc.mm.kmalloc', "
            "'memdesc.mm.slab_caches', 'memdesc.mm.page_alloc', 'memdesc.mm.buddy', "
            "'memdesc.mm.pcp', 'memdesc.mm.memmap_init') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_transition_stages_charge_only_the_separated_descriptors():
    """ptdesc-first / ptdesc-slab (LSFMM+BPF 2026 order), hand-worked: 1000 page tables take
    1000 64-byte ptdescs = 16 order-0 slabs (64 per page) = 65536 B; with slab separate too,
    struct slab for the 100 machine slabs + 16 ptdesc slabs + its own 2 slabs (64 per page):
    118 objects in 2 pages = 8192 B. struct page stays 64 bytes."""
    c = hand_census(1 << 16, pagetable={0: 1000}, slab={0: 100}, file={0: 500})
    table = load_descriptors()
    first = stage_cost(c, get_stage("ptdesc-first"), table, 2)
    both = stage_cost(c, get_stage("ptdesc-slab"), table, 2)
    assert [x.name for x in first.caches] == ["ptdesc"]
    assert first.descriptor_bytes == 65536 and first.struct_page_size == 64
    assert [x.name for x in both.caches] == ["ptdesc", "slab"]
    assert both.caches[1].objects == 118 and both.descriptor_bytes == 65536 + 8192
    v618 = stage_cost(c, get_stage("v6.18"), table, 2)
    assert first.total_bytes == v618.total_bytes + 65536
    # folios stay overlaid until `dynamic`
    assert "folio" not in both.by_type and "folio" in stage_cost(
        c, get_stage("dynamic"), table, 2).by_type
