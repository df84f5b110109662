"""The 2026 transition order as stages: ptdesc-first, ptdesc-slab, and the 32-byte page with
the 2026-01 page-flag split (Wilcox, <aWF3xg-72SV4tmLk@casper.infradead.org>)."""

from __future__ import annotations

import numpy as np
import pytest

from memdesc.analysis.scenario import World, compare_runs, parse_scenario, run_stage
from memdesc.errors import InputError
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


@pytest.mark.parametrize("stage", ["ptdesc-first", "ptdesc-slab"])
def test_emulator_says_plainly_it_does_not_model_partial_separation(stage):
    sc = parse_scenario(SCENARIO, "t")
    with pytest.raises(InputError, match="partial separation"):
        World(sc, stage)


def test_page32_2026_runs_with_the_observables_of_v6_18():
    sc = parse_scenario(SCENARIO, "t")
    runs = [run_stage(sc, s, check=True) for s in ("v6.18", "page32-2026")]
    assert compare_runs(runs)["identical_across_stages"]
    assert runs[1].accounting["total_bytes"] < runs[0].accounting["total_bytes"]


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
    the partial separations marked as modelled by the survey only."""
    from memdesc.cli import main
    from memdesc.stages import PATH_ORDER

    monkeypatch.setenv("COLUMNS", "80")
    assert main(["stages", "--brief"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()
            if line.split() and line.split()[0] in PATH_ORDER]
    assert [r[0] for r in rows] == list(PATH_ORDER)
    assert {r[0] for r in rows if r[-2:] == ["survey", "only"]} == {"ptdesc-first",
                                                                    "ptdesc-slab"}
    assert all(len(line) <= 80 for line in out.splitlines())
