"""Trace replay: event preparation, type inference, placement against the kernel's buddyinfo,
policy determinism across stages, and the `memdesc replay` command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, fixture_dir
from memdesc.analysis import replay as rp
from memdesc.analysis import trace_types as tt
from memdesc.cli import main
from memdesc.ingest.ftrace import read_trace
from memdesc.mm.debug import check_memmap
from memdesc.stages import get_stage

SMALL = REPO / "tests" / "data" / "trace-small"
BUNDLED = REPO / "src" / "memdesc" / "data" / "snapshot-idle"


@pytest.fixture(scope="module")
def pagecache() -> rp.ReplayInput:
    return rp.load_replay_input(read_trace(fixture_dir("trace-pagecache")))


def test_snapshot_gates_follow_the_chunk_markers(pagecache):
    g = pagecache.gates
    assert g.style == "fixture-before-read"
    assert len(g.starts) == 100 and (g.sizes == 65536).all()      # 6,553,600 PFNs
    assert (np.diff(g.gate) >= 0).all()                # chunks are read in PFN order
    steps = g.steps
    assert steps["kpage_begin"] <= g.gate[0] and g.gate[-1] <= steps["kpage_end"]
    assert g.of(np.array([0, 65536 * 3 + 5, 10**9])).tolist() == [g.gate[0], g.gate[3],
                                                                  g.default_gate]


def test_prepare_ops_counts_each_free_once(pagecache):
    tr = pagecache.trace
    ops = pagecache.ops
    counts = tr.counts()
    s = ops.stats
    assert s["free_batched_dups_skipped"] == tr.quirks["free_batched_dup"] == 24579
    assert s["ops"]["free"] == counts["mm_page_free"] + s["free_batched_orphans"]
    assert s["ops"]["alloc"] == counts["mm_page_alloc"] - tr.quirks["page_alloc_failed"]
    assert s["ops"]["take"] == counts["mm_page_alloc_zone_locked"]
    assert s["ops"]["drain"] == counts["mm_page_pcpu_drain"]
    assert s["frees_of_trace_allocs"] + s["frees_of_older_allocs"] == s["ops"]["free"]
    # every paired free releases the block its allocation got
    f = (ops.kind == rp.OP_FREE) & (ops.pair >= 0)
    assert (ops.pfn[ops.pair[f]] == ops.pfn[f]).all()
    assert (ops.kind[ops.pair[f]] == rp.OP_ALLOC).all()
    assert (ops.pair[f] < np.nonzero(f)[0]).all()
    assert s["applied"] + s["before_snapshot"] == len(ops)


def test_type_rules_agree_with_the_snapshot(pagecache):
    chk = pagecache.type_check
    assert chk["alive_at_snapshot"] > 7000
    assert chk["agree_share"] > 0.99
    summary = pagecache.types.summary(pagecache.trace.events["order"])
    assert summary["unknown_share"] < 0.01
    assert summary["by_class"]["file"]["pages"] > 1_000_000   # 2 GiB written, then read


def test_gfp_rules_on_known_masks():
    from memdesc.mm.gfp import GFP, GFP_HIGHUSER_MOVABLE, GFP_KERNEL, GFP_KERNEL_ACCOUNT
    gfp = np.array([GFP_HIGHUSER_MOVABLE | GFP.ZERO | GFP.COMP,
                    GFP_HIGHUSER_MOVABLE | GFP.WRITE | GFP.COMP,
                    GFP_KERNEL | GFP.NOWARN | GFP.NORETRY | GFP.COMP | GFP.RECLAIMABLE,
                    GFP_KERNEL_ACCOUNT | GFP.ZERO | GFP.COMP, GFP_KERNEL])
    cls, rule = tt.gfp_class(gfp, np.zeros(len(gfp), np.int8))
    assert [tt.CLASS_NAMES[c] for c in cls] == ["anon", "file", "slab", "pagetable", "untyped"]
    assert tt.RULE_NAMES[rule[-1]] == "unknown"


def test_slab_objects_mark_slab_pages():
    tr = read_trace(fixture_dir("trace-slab"))
    types = tt.infer_types(tr)
    s = types.summary(tr.events["order"])
    assert s["slab_events"] and s["by_rule"]["slab-object"]["units"] > 5000
    # a large kmalloc is its own page block (Misc), never a slab
    assert s["by_rule"]["kmalloc-large"]["units"] > 0
    assert (types.cls[types.rule == tt.R_KMALLOC_LARGE] == tt.UNTYPED).all()


def test_placement_matches_the_kernels_buddyinfo(pagecache):
    run = rp.replay_stage(pagecache, get_stage("page8"), "placement", samples=20,
                          keep_memmap=True)
    rows = rp.check_rows(pagecache, run)
    assert [r["zone"] for r in rows] == ["0/DMA", "0/DMA32", "0/Normal"]
    for r in rows:                                # reported per zone, order and migratetype
        assert r["at"] == "start" and r["event"] == pagecache.gates.steps["after_read_begin"]
        assert len(r["by_order"]["kernel"]) == len(r["by_order"]["emulated"]) == 11
        assert set(r["by_migratetype"]) == set(rp.MT_NAMES)
        assert r["exact_by_order"], r
    dma, dma32, normal = rows
    assert dma["exact"] and dma32["exact"]
    # the pageblock types come from pagetypeinfo's counts: under 0.3 % of the free pages sit
    # on another migratetype's list at the check (guessing from contents alone: 5-7 %)
    assert normal["mismatched_pages"] < 0.003 * normal["free_pages"]["kernel"]
    assert normal["causes"] and "start rule" in normal["causes"][0]
    bad = {k: v for k, v in run.mismatches.items() if v and k not in rp.EXPECTED}
    assert not bad
    assert run.mismatches["drain_snapshot_pcp"] > 0      # the snapshot's pcp pages drain
    check_memmap(run.memmap)                             # the allocator's invariants hold


def test_start_state_takes_the_block_counts_of_pagetypeinfo(pagecache):
    rule = {r["zone"]: r for r in pagecache.start.rule}
    for z in ("0/DMA", "0/DMA32", "0/Normal"):
        assert rule[z]["assigned"] == rule[z]["kernel_counts"]
    # the free blocks of the snapshot fit pagetypeinfo.before's free lists after the repair
    n = rule["0/Normal"]
    assert n["free_pages_off_after_repair"] < n["free_pages_off_before_repair"] / 50
    mt = pagecache.pageblock_mt
    assert mt[0] == 0            # DMA's first pageblock: the reserved first MiB, Unmovable


def test_placement_is_the_same_at_v6_18(pagecache):
    a = rp.replay_stage(pagecache, get_stage("v6.18"), "placement", samples=20)
    b = rp.replay_stage(pagecache, get_stage("page32@path-2025"), "placement", samples=20)
    assert np.array_equal(a.nr_free, b.nr_free) and np.array_equal(a.units, b.units)
    assert a.mismatches == b.mismatches


def test_policy_is_deterministic_and_identical_across_stages(pagecache):
    runs = [rp.replay_stage(pagecache, get_stage(s), "policy", samples=10)
            for s in ("page8", "page16", "page8")]
    assert runs[0].alloc_pfn_digest and runs[0].alloc_pfn_digest == runs[1].alloc_pfn_digest \
        == runs[2].alloc_pfn_digest
    for r in runs[1:]:
        assert np.array_equal(r.nr_free, runs[0].nr_free)
        assert np.array_equal(r.units, runs[0].units)
    assert runs[0].mismatches["alloc_failed"] == 0
    assert runs[0].start["snapshot_pcp_pages_freed"] > 0


def test_replay_of_a_trace_without_snapshot_needs_one(tmp_path, capsys):
    assert main(["replay", str(SMALL), "--stages", "page8"]) == 2
    assert "--snapshot" in capsys.readouterr().err


def test_trace_small_placement_reports_what_it_cannot_check(tmp_path, capsys):
    out = tmp_path / "small.json"
    assert main(["replay", str(SMALL), "--snapshot", str(BUNDLED), "--stages", "page8",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "checks against the kernel: none possible" in text
    assert "dropped_events" in text                # the recording's losses are shown
    d = json.loads(out.read_text())
    assert d["checks"] == [] and d["stages"][0]["checks_exact"]
    assert any("not taken inside this recording" in n for n in d["snapshot"]["notes"])


def test_cli_end_to_end(tmp_path, capsys):
    js, png = tmp_path / "r.json", tmp_path / "r.png"
    code = main(["replay", str(fixture_dir("trace-pagecache")), "--stages", "page16,page8",
                 "--json", str(js), "--plot", str(png), "--samples", "12"])
    assert code == 0
    text = capsys.readouterr().out
    assert "check start (event 30,943) 0/Normal: by order exact" in text
    d = json.loads(js.read_text())
    assert {"schema_version", "mode", "trace", "snapshot", "ops", "types", "stages",
            "identical_observables"} <= set(d)
    assert [s["stage"] for s in d["stages"]] == ["page16", "page8"]
    s = d["stages"][1]
    assert {"events_per_s", "realtime_multiple", "mismatches", "checks_exact",
            "samples"} <= set(s)
    assert {(c["at"], c["zone"]) for c in d["checks"]} == {
        ("start", "0/DMA"), ("start", "0/DMA32"), ("start", "0/Normal")}
    assert {"at", "zone", "by_order", "by_migratetype", "mismatched_pages"} <= set(d["checks"][0])
    samples = s["samples"]
    assert len(samples["event_index"]) == len(samples["total_bytes"]) >= 12
    assert len(samples["unusable_index"][0]) == len(samples["zones"]) == 3
    # page8: 8 B per struct page of every section holding RAM (24 GiB + the 1 GiB hole is none)
    assert samples["struct_page_bytes"][0] == 8 * 6_291_456
    assert d["identical_observables"] is True
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rejects_bad_options(tmp_path, capsys):
    assert main(["replay", str(SMALL), "--stages", "nope"]) == 2
    assert main(["replay", str(SMALL), "--plot", str(tmp_path)]) == 2
    assert main(["replay", str(tmp_path / "missing")]) == 2
    assert not list(Path(tmp_path).glob("*.png"))


def test_policy_decays_pcp_high_each_second_of_trace_time(pagecache):
    """vmstat's periodic decay_pcp_high() (memdesc.mm.vmstat) in policy mode: once per second
    of trace time from the first op, on every CPU; the pcp lists end smaller than without it
    and the start check compares them with zoneinfo's pcp counts."""
    on = rp.replay_stage(pagecache, get_stage("page8"), "policy", samples=10)
    off = rp.replay_stage(pagecache, get_stage("page8"), "policy", samples=10, vmstat=False)
    ops_t = pagecache.ops.time
    assert on.start["vmstat"]["intervals"] == (int(ops_t[-1]) - int(ops_t[0])) // 10**9
    assert on.start["vmstat"]["pages_freed_by_decay"] > 0
    assert on.pcp[-1].sum() < off.pcp[-1].sum()
    normal = [r for r in rp.check_rows(pagecache, on) if r["zone"] == "0/Normal"][0]
    assert normal["pcp_pages"]["kernel"] == 39_712        # zoneinfo.after, Σ count


def test_unit_counts_by_class_and_order_hand_worked():
    """_unit_counts(): one count per PFN heading a unit (ucls >= 0), by (class, order)."""
    from memdesc.analysis.census import NR_UNIT_ORDERS

    file, anon = tt.CLASS_INDEX["file"], tt.CLASS_INDEX["anon"]
    ucls = np.array([file, -1, anon, -1, -1, -1, file, file], np.int8)
    uord = np.array([1, -1, 2, -1, -1, -1, 0, 0], np.int8)
    got = rp._unit_counts(ucls, uord)
    want = np.zeros((rp.NCLS, NR_UNIT_ORDERS), np.int64)
    want[file, 1], want[anon, 2], want[file, 0] = 1, 1, 2
    assert np.array_equal(got, want)
    with pytest.raises(ValueError, match="pfn 1: unit class"):
        rp._unit_counts(np.array([anon, anon], np.int8), np.array([0, NR_UNIT_ORDERS], np.int8))
