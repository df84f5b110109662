"""In-use costs, the per-class split and break-even orders (analysis/in_use.py)."""

from __future__ import annotations

import json

import pytest

from conftest import fixture_dir
from memdesc.analysis.cost import survey_costs
from memdesc.analysis.descriptors import load_descriptors
from memdesc.analysis.in_use import BY_CLASS, break_even_orders, class_pages, in_use_pages
from memdesc.analysis.survey import run_survey
from memdesc.cli import main
from memdesc.ingest.snapshot import open_snapshot
from memdesc.stages import STAGES, get_stage
from test_cost import hand_census

TABLE = load_descriptors()


def _stage(costs, sid):
    return next(c for c in costs if c.id == sid)


def test_100_order0_anon_pages_cost_more_at_page16():
    """1,024 PFNs, 100 order-0 anon folios, the rest free. In use = 100 pages.
    page16: 100 × 16 B = 1,600 B of struct pages; 100 folios of 80 B, 51 per order-0 slab ->
    2 slabs = 8,192 B; struct slab: n = 2 + ceil(n / 64) = 3 objects -> 1 page = 4,096 B.
    In use: 1,600 + 12,288 = 13,888 B against v6.18's 100 × 64 = 6,400 B: -7,488 B (-117 %).
    Free: 924 × 16 = 14,784 B. Whole machine: 1,024 × 16 + 12,288 = 28,672 vs 65,536 (+56 %)."""
    c = hand_census(1024, anon={0: 100})
    costs = survey_costs(c, [get_stage("v6.18"), get_stage("page16")], TABLE)
    ref, p16 = costs
    assert in_use_pages(c) == 100
    assert ref.in_use.total_bytes == 6_400 and ref.in_use.saving_bytes == 0
    assert p16.in_use.struct_page_bytes == 1_600 and p16.in_use.descriptor_bytes == 12_288
    assert p16.in_use.total_bytes == 13_888
    assert p16.in_use.saving_bytes == -7_488
    assert p16.in_use.saving_percent == pytest.approx(-117.0)
    assert p16.by_class["anon"] == 13_888 and p16.by_class["free"] == 14_784
    assert p16.saving_percent == pytest.approx(100 * (65_536 - 28_672) / 65_536)
    assert p16.by_class_change["anon"] == 13_888 - 6_400
    assert p16.by_class_change["free"] == 14_784 - 924 * 64
    # projection: the in-use mix over all 1,024 struct pages
    assert p16.in_use.projected_bytes == round(13_888 * 1024 / 100)
    assert ref.in_use.projected_bytes == ref.total_bytes


def test_shared_cache_pages_split_by_objects():
    """51 order-0 anon + 51 order-0 file folios: one folio cache of 2 slabs (8,192 B), half
    each; the struct slab page (4,096 B) split by the slabs each class causes (1 and 1).
    anon at page16 = 51 × 16 + 4,096 + 2,048 = 6,960 B, file the same."""
    c = hand_census(1024, anon={0: 51}, file={0: 51})
    p16 = survey_costs(c, [get_stage("page16")], TABLE)[0]
    assert p16.by_class["anon"] == p16.by_class["file"] == 6_960


def test_by_class_adds_up_on_real_snapshots(snapshot_dir):
    r = run_survey(open_snapshot(snapshot_dir))
    pages = class_pages(r.census)
    assert sum(pages.values()) == r.census.memmap_pages
    for c in r.costs:
        assert set(c.by_class) == set(BY_CLASS)
        assert sum(c.by_class.values()) == c.total_bytes
        assert c.in_use.total_bytes == c.in_use.struct_page_bytes + c.descriptor_bytes
        assert c.in_use.struct_page_bytes == c.struct_page_size * in_use_pages(r.census)
    ref = _stage(r.costs, "v6.18")
    assert ref.in_use.total_bytes == 64 * in_use_pages(r.census)


def test_order0_anon_machine_loses_at_page16_in_use():
    """m04-anon4k-3g holds 3 GiB of order-0 anon: at page16 a page costs 16 + 80 B instead of
    64, so in-use memory costs more than today while the whole machine saves."""
    r = run_survey(open_snapshot(fixture_dir("fleet/ours/m04-anon4k-3g")))
    p16 = _stage(r.costs, "page16")
    assert p16.in_use.saving_percent < -20 < 40 < p16.saving_percent
    assert p16.by_class_change["anon"] > 0 > p16.by_class_change["free"]


def test_break_even_orders_by_hand():
    """page16 folio: 16 + 80 > 64; 2·16 + 128 > 128; 4·16 + 128 = 192 < 256 -> order 2.
    page32 folio: 4·32 + 128 = 256 is not < 256; 8·32 + 128 < 512 -> order 3.
    page16 slab (64 B): 16 + 64 > 64; 32 + 64 = 96 < 128 -> order 1. dynamic: never."""
    be = break_even_orders(list(STAGES), TABLE, 2)
    assert be["page16"]["folio"] == 2 and be["page32"]["folio"] == 3
    assert be["page16"]["slab"] == 1 and be["page32"]["slab"] == 2
    assert be["dynamic"]["folio"] is None and be["v6.18"]["folio"] is None


def test_json_carries_in_use(capsys):
    rc = main(["survey", "--snapshot", str(fixture_dir("snapshot-idle-early")), "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["in_use_pages"] > 0
    for s in d["stages"]:
        assert {"total_bytes", "saving_percent", "by_class"} <= set(s["in_use"])
        assert sum(s["by_class"].values()) == s["total_bytes"]
    assert d["break_even_orders"]["page16"]["folio"] == 2
