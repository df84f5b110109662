"""Placement replay (the default mode) of a real trace at every page8 free-page tracking
option (tests/data/record-lookups: `memdesc record --lookups` on the test machine, 196,453
events). The options come from the registry (``--stages 'page8/*'``), not a hand-written list.

In placement the trace's own PFNs move on and off the free lists: no allocation chooses a
block, so even ``bitmap`` (which chooses the lowest-addressed block where the kernel takes
the list's first) has nothing to choose, and every option leaves the same free lists. The
tests hold each option to that: the list-order options to identical observables, and every
option to the kernel's order-independent state (free pages per zone, order and migratetype at
each check point, the kernel's buddyinfo at the start, mm/debug.py's invariants)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from memdesc.analysis import ft_compare
from memdesc.analysis import replay as rp
from memdesc.analysis.descriptors import load_descriptors
from memdesc.ingest.ftrace import read_trace
from memdesc.mm.debug import check_memmap
from memdesc.stages import FREE_TRACKING_OPTIONS, TRACKING, parse_stages, variant_name

DATA = Path(__file__).parent / "data" / "record-lookups"
VARIANTS = parse_stages("page8/*")


@pytest.fixture(scope="module")
def result() -> rp.ReplayResult:
    inp = rp.load_replay_input(read_trace(DATA))
    runs = [rp.replay_stage(inp, s, "placement", samples=20, keep_memmap=True)
            for s in VARIANTS]
    table = load_descriptors()
    return rp.ReplayResult(inp, "placement", runs,
                           [rp.stage_series(inp, r, table) for r in runs],
                           [rp.check_rows(inp, r) for r in runs])


def _ref(result: rp.ReplayResult) -> rp.StageRun:
    return next(r for r in result.runs if r.stage.free_tracking == ft_compare.REFERENCE)


def test_every_page8_option_runs():
    assert [s.free_tracking for s in VARIANTS] == list(FREE_TRACKING_OPTIONS["page8"])
    assert len(VARIANTS) >= 4


def test_list_order_options_have_the_observables_of_packed(result):
    ref = _ref(result)
    for run in result.runs:
        if not TRACKING[run.stage.free_tracking].keeps_list_order:
            continue
        name = variant_name(run.stage)
        assert np.array_equal(run.nr_free, ref.nr_free), name
        assert np.array_equal(run.pcp, ref.pcp), name
        assert np.array_equal(run.units, ref.units), name
        assert run.mismatches == ref.mismatches, name
        assert run.final_buddyinfo == ref.final_buddyinfo, name


def test_every_option_keeps_the_kernels_order_independent_state(result):
    """Free pages per zone, order and migratetype at every check point (the start, the end
    state) equal packed's; the start's buddyinfo is the kernel's, order for order; the
    allocator's invariants (mm/debug.py) hold at the end."""
    ref = _ref(result)
    assert len(ref.at_checks) == len(result.inp.checkpoints) >= 2
    for run, rows in zip(result.runs, result.checks, strict=True):
        name = variant_name(run.stage)
        for a, b in zip(run.at_checks, ref.at_checks, strict=True):
            assert np.array_equal(a["free_mt"], b["free_mt"]), name
        start = [r for r in rows if r["at"] == "start"]
        assert start and all(r["exact_by_order"] for r in start), name
        check_memmap(run.memmap)


def test_the_comparison_reports_each_option(result):
    """memdesc replay's side-by-side table (analysis.ft_compare) on the same runs: every
    option named, bitmap included, with its observables compared with packed's."""
    cmp = ft_compare.compare(result)
    rows = {r.option: r for r in cmp.rows}
    assert set(rows) == set(FREE_TRACKING_OPTIONS["page8"])
    for r in cmp.rows:
        assert r.identical, r.name            # placement chooses no block (module doc)
        assert r.first_difference is None
    assert rows["slist"].walks[0] > 0
    assert rows["bitmap"].walks[0] == 0       # no search for a block in placement
