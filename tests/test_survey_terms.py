"""Cost-model terms (analysis/cost_terms.py): HVO, memcg of Misc, slab occupancy, free pointer;
and what classification counts for them (kpagecgroup, 16/64 KiB base pages)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import fixture_dir
from memdesc.analysis.classify import Layout, build_census, classify_chunks
from memdesc.analysis.cost import explain, freeptr_delta, survey_costs
from memdesc.analysis.cost_terms import (
    CostTerms,
    parse_sysctl_value,
    slab_occupancy,
)
from memdesc.analysis.descriptors import load_descriptors
from memdesc.ingest import kpageflags as kpf
from memdesc.ingest.procfs import parse_slabinfo
from memdesc.stages import get_stage
from test_cost import hand_census

TABLE = load_descriptors()


def B(*bits: int) -> int:
    return sum(1 << b for b in bits)


def _costs(census, *ids, terms=None):
    return {c.id: c for c in survey_costs(census, [get_stage(i) for i in ids], TABLE,
                                          terms=terms)}


def test_hvo_keeps_one_vmemmap_page_per_hugetlb_folio():
    """Two order-9 hugetlb folios. v6.18: 512 × 64 B = 8 vmemmap pages each, one kept:
    7 × 4,096 = 28,672 B freed each (dmesg: "28 KiB vmemmap can be freed for a 2.00 MiB
    page"), 57,344 B in all. page16: 2 pages each, 1 freed: 8,192 B. page8: 1 page, none."""
    c = hand_census(2048, hugetlb={9: 2})
    on = _costs(c, "v6.18", "page16", "page8", terms=CostTerms(hvo_sysctl=1))
    assert on["v6.18"].by_type["hvo"] == -57_344
    assert on["v6.18"].total_bytes == 2048 * 64 - 57_344
    assert on["page16"].by_type["hvo"] == -8_192
    assert "hvo" not in on["page8"].by_type
    assert on["v6.18"].by_class["hugetlb"] == 1024 * 64 - 57_344
    assert sum(on["v6.18"].by_class.values()) == on["v6.18"].total_bytes
    off = _costs(c, "v6.18", terms=CostTerms(hvo_sysctl=0))
    assert off["v6.18"].total_bytes == 2048 * 64
    assert CostTerms().hvo                                 # not captured: assumed on


def test_memcg_of_charged_misc_needs_a_descriptor_once_struct_page_loses_memcg_data():
    """3 charged untyped units: none at v6.18/dynamic (memcg_data in struct page); at page32
    one 16-byte-stride cache of 3 objects, one slab page, plus its struct slab."""
    c = hand_census(1024, untyped={0: 3})
    c.extras["accounted_misc"] = {"units_by_order": [3] + [0] * 18, "pages": 3}
    costs = _costs(c, "v6.18", "dynamic", "page32", terms=CostTerms(hvo_sysctl=0))
    assert all(x.name != "memcg_misc" for x in costs["dynamic"].caches)
    cache = next(x for x in costs["page32"].caches if x.name == "memcg_misc")
    assert (cache.objects, cache.geometry.stride, cache.pages) == (3, 16, 1)
    assert costs["page32"].by_class["misc"] == 3 * 32 + costs["page32"].descriptor_bytes
    assert _costs(c, "page32")["page32"].descriptor_bytes == 0     # bare model: no term


def test_occupancy_divides_the_objects_per_slab():
    """100 order-0 folios, 51 per slab: 2 slabs packed perfectly; at 50 % occupancy
    ceil(100 / 25.5) = 4 slabs; struct slab n = 4 + ceil(n / 32) -> 5, one page."""
    c = hand_census(1024, anon={0: 100})
    half = _costs(c, "page16", terms=CostTerms(hvo_sysctl=0, occupancy=0.5))["page16"]
    folio = next(x for x in half.caches if x.name == "folio")
    assert folio.slabs == 4
    assert half.descriptor_bytes == 5 * 4096


def test_outside_free_pointer_delta():
    """100 folios: 80 B stride, 51 per slab -> 2 slabs; outside pointer: 96 B stride, 42 per
    slab -> 3 slabs; struct slab still one page: +4,096 B."""
    c = hand_census(1024, anon={0: 100})
    assert freeptr_delta(c, get_stage("page16"), TABLE, 2, None) == 4_096
    assert freeptr_delta(c, get_stage("v6.18"), TABLE, 2, None) is None


def test_explain_names_every_term():
    c = hand_census(2048, hugetlb={9: 1}, anon={0: 10})
    terms = CostTerms(hvo_sysctl=1, occupancy=0.8, occupancy_caches=["kmalloc-64"],
                      occupancy_objects=(80, 100))
    cost = _costs(c, "page16", terms=terms)["page16"]
    text = "\n".join(explain(cost, c, TABLE, terms=terms))
    for word in ("HVO on", "frees 4,096 B", "memcg of Misc: no kpagecgroup",
                 "slab occupancy 80.0 %", "SLUB free pointer", "ceil(10 / (51 × 0.800))"):
        assert word in text, word


def test_terms_from_the_real_capture():
    d = fixture_dir("snapshot-idle")
    assert parse_sysctl_value((d / "sysctl-vm.txt").read_text(),
                              "hugetlb_optimize_vmemmap") == 0
    occ, names, (active, total) = slab_occupancy(parse_slabinfo((d / "slabinfo.txt")
                                                                .read_text()))
    assert 0.5 < occ < 1.0 and "kmalloc-64" in names and active < total
    assert parse_sysctl_value("1\n", "hugetlb_optimize_vmemmap") == 1


def _census(flags, cgroup=None):
    flags = np.asarray(flags, np.uint64)
    chunk = (0, flags) if cgroup is None else (0, flags, np.asarray(cgroup, np.uint64))
    return build_census(classify_chunks([chunk], Layout(len(flags), [], None), cell_pfns=16),
                        "test")


def test_kpagecgroup_marks_charged_untyped_units():
    """An order-2 untyped compound unit charged to memcg 5, a flags==0 page charged to 7, one
    uncharged flags==0 page, and a charged anon page (it has a folio: not counted)."""
    head, tail = B(kpf.KPF_COMPOUND_HEAD), B(kpf.KPF_COMPOUND_TAIL)
    anon = B(kpf.KPF_ANON, kpf.KPF_LRU)
    c = _census([head, tail, tail, tail, 0, 0, anon, 0], [5, 5, 5, 5, 7, 0, 9, 0])
    assert c.extras["accounted_misc"]["units_by_order"][:3] == [1, 0, 1]
    assert c.extras["accounted_misc"]["pages"] == 5
    assert "accounted_misc" not in _census([head, tail, tail, tail]).extras


def test_base_pages_count_a_block_in_use_when_any_page_is():
    """64 PFNs: PFN 0 anon, 1-15 free, 16-31 one order-4 anon folio, 32-47 free, 48 a slab
    page, 52 a flags==0 page, the rest free. 16 KiB pages: blocks 0 (anon), 4-7 (the folio as
    one order-2 unit), 12 (slab), 13 (flags 0: untyped). 64 KiB: blocks 0 (anon), 1 (folio),
    3 (slab first; the flags==0 page shares it)."""
    free = B(kpf.KPF_BUDDY)
    anon = B(kpf.KPF_ANON, kpf.KPF_LRU)
    flags = [free] * 64
    flags[0] = anon
    flags[16] = anon | B(kpf.KPF_COMPOUND_HEAD)
    for p in range(17, 32):
        flags[p] = anon | B(kpf.KPF_COMPOUND_TAIL)
    flags[48] = B(kpf.KPF_SLAB)
    flags[52] = 0
    bp = _census(flags).extras["base_pages"]
    k16, k64 = bp["16384"]["units_by_class"], bp["65536"]["units_by_class"]
    assert k16["anon"][:3] == [1, 0, 1] and k16["slab"][0] == 1 and k16["untyped"][0] == 1
    assert k64["anon"][:2] == [2, 0] and k64["slab"][0] == 1 and k64["untyped"][0] == 0


@pytest.mark.parametrize("name", ["snapshot-idle", "fleet/ours/m10-fragmented"])
def test_base_pages_never_hold_less_than_the_4k_census(name):
    from memdesc.analysis.survey import run_survey
    from memdesc.ingest.snapshot import open_snapshot

    r = run_survey(open_snapshot(fixture_dir(name)))
    c = r.census
    used = c.pfns - sum(c.pages_by_class[k] for k in ("free", "uninitialised", "hole"))
    for size, b in c.extras["base_pages"].items():
        sh = b["shift"]
        blocks = sum(sum(n << o for o, n in enumerate(v)) for v in b["units_by_class"].values())
        assert used >> sh <= blocks <= used, size
