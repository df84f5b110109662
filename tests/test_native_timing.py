"""The native measurement: address translation, the compiled replay, sampling, the result.

No timing thresholds here (speed targets live in bench/bench_timing.py): the tests check
what runs and where, with hand-worked streams.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import examples
from memdesc.analysis import cycles
from memdesc.analysis import native_timing as nt
from memdesc.errors import MemdescError
from memdesc.mm.access import KIND_DEP, KIND_PTR, KIND_STORE, OP_CLASS_ID, OP_CLASSES, AccessStream
from memdesc.mm.ft_common import HEADS_BASE
from memdesc.mm.kmem import PAGE_OFFSET, VMEMMAP_START
from memdesc.stages import get_stage

VM, DM = VMEMMAP_START, PAGE_OFFSET
ZONE, FOLIO, PZ = OP_CLASS_ID["page_zone"], OP_CLASS_ID["page_folio"], OP_CLASS_ID["pt_walk"]


def stream(ops: list[tuple[int, list[tuple[int, int]]]]) -> AccessStream:
    """[(op class, [(addr, kind), ...]), ...] -> AccessStream."""
    addr = [a for _, acc in ops for a, _ in acc]
    kind = [k for _, acc in ops for _, k in acc]
    first = np.cumsum([0] + [len(acc) for _, acc in ops])
    return AccessStream(np.array(addr, np.uint64), np.array(kind, np.uint8),
                        np.array([c for c, _ in ops], np.uint8), first.astype(np.int64))


def page_zone_ops(page_bytes: int, pfns, desc_page: int) -> list:
    """page_zone() of folio pages: v6.18 (64 B) loads page->flags; smaller pages load the
    memdesc word (PTR) then the descriptor's flags (DEP) in a direct-map slab page."""
    out = []
    for p in map(int, pfns):
        page = VM + p * page_bytes
        if page_bytes == 64:
            out.append((ZONE, [(page, 0)]))
        else:
            out.append((ZONE, [(page, KIND_PTR), (DM + (desc_page << 12) + 8 * (p % 64),
                                                  KIND_DEP)]))
    return out


# ---- translation --------------------------------------------------------------------------

def test_vmemmap_word_of_pfn_at_stage_stride():
    addr = np.array([VM + 5 * 16 + 8, VM + 0, VM + 4095 * 16], np.uint64)
    off, lay = nt.translate(addr, nr_pfns=4096, page_bytes=16)
    assert off.tolist() == [88, 0, 4095 * 16]
    assert lay.vmemmap_bytes == 4096 * 16 and lay.compact_base == nt.HUGE
    assert len(lay.pages) == 0


def test_compaction_keeps_in_page_offsets_and_address_order():
    addr = np.array([DM + (900 << 12) + 0x7F8, HEADS_BASE + 0x40, DM + (3 << 12) + 8,
                     DM + (900 << 12) + 16], np.uint64)
    off, lay = nt.translate(addr, nr_pfns=1000, page_bytes=64)
    base = nt._align(1000 * 64)
    # distinct pages in address order: DM pfn 3 < DM pfn 900 < the HEADS_BASE page
    assert off.tolist() == [base + 4096 + 0x7F8, base + 2 * 4096 + 0x40, base + 8,
                            base + 4096 + 16]
    assert lay.total_bytes == nt._align(base + 3 * 4096)


def test_address_past_the_mem_map_is_an_error():
    with pytest.raises(ValueError, match="past the mem_map"):
        nt.translate(np.array([VM + 1000 * 8], np.uint64), nr_pfns=1000, page_bytes=8)


@settings(max_examples=examples(50), deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 999), st.integers(0, 511)),
                min_size=1, max_size=60))
def test_translation_is_one_to_one_and_keeps_lines(acc):
    addr = np.array([(VM + p * 32 + (w % 4) * 8) if vm else (DM + (p << 12) + w * 8)
                     for vm, p, w in acc], np.uint64)
    off, lay = nt.translate(addr, nr_pfns=1000, page_bytes=32)
    uniq_a, uniq_o = np.unique(addr), np.unique(off)
    assert len(uniq_a) == len(uniq_o)                       # distinct words stay distinct
    assert ((off & 4095) == (addr & np.uint64(4095)).astype(np.int64)).all()
    assert (off < lay.total_bytes).all() and (off >= 0).all()


# ---- the compiled replay ------------------------------------------------------------------

def run(buf, s: AccessStream):
    widx = (nt.translate(s.addr, 64, 64)[0] >> 3).astype(np.int64)
    out = np.zeros(s.nr_ops, np.uint64)
    csum = nt.run_ops(buf, widx, s.kind, s.op_first, 0, s.nr_ops, out)
    return int(csum), out


def test_dependent_load_goes_to_offset_plus_pointer_value_and_both_kinds_run():
    buf = np.zeros(64 * 64 // 8, np.uint64)          # 64 pfns of 64 B
    buf[1 * 8] = 64                                   # pfn 1 flags: a "pointer" of 64 bytes
    buf[5 * 8] = 1000                                 # pfn 5: what pfn 4 + 64 B reaches
    buf[4 * 8] = 7                                    # pfn 4: would be read without the DEP
    buf[9 * 8] = 30                                   # pfn 9: an independent load
    s = stream([(FOLIO, [(VM + 64, KIND_PTR), (VM + 4 * 64, KIND_DEP), (VM + 9 * 64, 0)])])
    csum, cyc = run(buf, s)
    assert csum == 1000 + 30
    assert cyc[0] > 0


def test_store_writes_zero_and_dep_chain_resets_per_operation():
    buf = np.zeros(64 * 64 // 8, np.uint64)
    buf[1 * 8] = 64
    buf[2 * 8] = 5
    buf[3 * 8] = 9
    s = stream([(FOLIO, [(VM + 64, KIND_PTR), (VM + 2 * 64, KIND_STORE | KIND_DEP)]),
                (ZONE, [(VM + 2 * 64, KIND_DEP), (VM + 3 * 64, 0)])])
    csum, cyc = run(buf, s)
    # op 0's DEP store hits pfn 3 (pfn 2 + 64 B) and zeroes it; op 1 starts with pointer 0
    assert buf[3 * 8] == 0 and csum == 5
    assert (cyc > 0).all()


def test_interruptions_are_replaced_by_the_ops_median():
    # 3 repeats x 4 ops (ns); op 1 was preempted in repeat 2, op 3 is slow in every repeat
    t = np.array([[100, 120, 50, 9000], [110, 125, 55, 9100], [105, 50_000, 52, 9050]], float)
    got, bad = nt.filter_interruptions(t)
    assert bad == 1 and got[2, 1] == 125 and got[2, 3] == 9050
    assert (got[:2] == t[:2]).all()
    # 4x the median but under median + 2 us: a cache miss, kept
    assert nt.filter_interruptions(np.array([[100.0], [100.0], [900.0]]))[1] == 0


# ---- sampling -------------------------------------------------------------------------------

def test_sampling_keeps_the_same_windows_in_every_stage_and_covers_the_run():
    stages = [nt.StageMemory("v6.18", 64), nt.StageMemory("page16", 16)]
    r = nt.NativeRun(stages, 4096, budget=3000, window=100)
    rng = np.random.default_rng(3)
    pfns = rng.integers(0, 4096, 4000)
    for lo in range(0, 4000, 1000):                     # four blocks, like replay's sink
        r.add("v6.18", stream(page_zone_ops(64, pfns[lo:lo + 1000], 5000)))
        r.add("page16", stream(page_zone_ops(16, pfns[lo:lo + 1000], 5000)))
    a, b = (r._prepare(s) for s in stages)        # what measure() runs
    # page16: 2 accesses/op, 8000 in all; period 2 keeps 4000 > 3000, period 4 keeps 2000
    assert r.period == 4
    assert np.array_equal(a.pos, b.pos)
    assert np.unique(a.pos // 100).tolist() == list(range(0, 40, 4))
    assert len(b.widx) <= 3000
    assert r.samples["v6.18"].ops_seen[ZONE] == r.samples["page16"].ops_seen[ZONE] == 4000


def test_sampling_never_drops_window_zero():
    r = nt.NativeRun([nt.StageMemory("v6.18", 64)], 4096, budget=10, window=100)
    r.add("v6.18", stream(page_zone_ops(64, range(300), 0)))
    assert r.samples["v6.18"].pos.tolist() == list(range(100))


def test_rare_class_is_kept_when_its_window_is_dropped():
    """A class seen only in a window that a later doubling of the period drops (window 1 at
    period 1) is still measured: the first RESERVE_OPS operations of every class are kept
    (trace-slab's three pcp drains at v6.18 had no native ns before)."""
    r = nt.NativeRun([nt.StageMemory("v6.18", 64)], 4096, budget=500, window=100)
    ops = page_zone_ops(64, range(150), 0)
    ops[120] = (FOLIO, [(VM + 7 * 64 + 8, KIND_PTR)])             # one op of a rare class
    r.add("v6.18", stream(ops))
    r.add("v6.18", stream(page_zone_ops(64, range(2000), 0)))     # the period doubles
    smp = r.samples["v6.18"]
    assert r.period > 1
    assert (smp.op_class == FOLIO).sum() == 1 and 120 in smp.pos.tolist()
    assert smp.reserved[FOLIO] == 1 and smp.reserved[ZONE] == nt.RESERVE_OPS


# ---- the measurement ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def result():
    stages = [get_stage(s) for s in ("v6.18", "page16", "page8")]
    r = nt.NativeRun(stages, 8192, window=64)
    rng = np.random.default_rng(7)
    pfns = rng.integers(0, 8192, 3000)
    for st_ in stages:
        b = st_.struct_page_bytes
        ops = page_zone_ops(b, pfns, 9000) + [(FOLIO, [(VM + int(p) * b, KIND_PTR)])
                                              for p in pfns[:500]]
        r.add(st_.id, stream(ops[:1700]))
        r.add(st_.id, stream(ops[1700:]))
    return r.measure(repeats=3, chunk_ops=256)


def test_result_has_every_stage_and_class(result):
    assert result.stages == ["v6.18", "page16", "page8"]
    assert result.classes == [c.name for c in OP_CLASSES]
    assert result.ns.shape == result.floor_ns.shape == (3, len(OP_CLASSES), 3)
    assert np.isfinite(result.floor_ns[:, [ZONE, FOLIO]]).all()
    assert np.isnan(result.floor_ns[:, PZ]).all()
    assert (result.ops[:, ZONE] == 3000).all() and (result.ops[:, FOLIO] == 500).all()
    assert (result.ops_seen == result.ops).all()
    assert result.accesses.tolist() == [3500, 6500, 6500]
    assert "not a kernel build" in result.what
    # per-class op counts equal the stream's
    assert result.ops[:, PZ].tolist() == [0, 0, 0]


def test_medians_and_spreads_are_well_formed(result):
    med, lo, hi = result.median, result.lo, result.hi
    measured = result.ops > 0
    assert np.isfinite(med[measured]).all()
    assert (lo[measured] <= med[measured]).all() and (med[measured] <= hi[measured]).all()
    assert np.isnan(med[~measured]).all()
    assert len(result.empty_ns) == 3 and (result.empty_ns > 0).all()
    rows = result.rows()
    assert {(r["stage"], r["op"]) for r in rows} == {
        (s, o) for s in result.stages for o in ("page_zone", "page_folio")}
    ref = [r for r in rows if r["stage"] == "v6.18"]
    assert all(r["ratio"] == 1.0 for r in ref if r["native_ns"] > 0)


def test_result_memory_is_the_full_mem_map_plus_compacted_pages(result):
    # 8192 PFNs x 64/16/8 B, each rounded up to 2 MiB; page16/page8 also touch one
    # direct-map descriptor page, compacted after the mem_map (another 2 MiB)
    assert result.memory_bytes.tolist() == [nt.HUGE, 2 * nt.HUGE, 2 * nt.HUGE]
    assert result.checksum == 0       # zero-filled memory, stores of zero


def test_wall_clock_fallback_gives_the_same_shape(result):
    stages = [nt.StageMemory("v6.18", 64), nt.StageMemory("page8", 8)]
    r = nt.NativeRun(stages, 4096, window=32)
    for st_ in stages:
        r.add(st_.id, stream(page_zone_ops(st_.page_bytes, range(0, 4096, 7), 5000)))
    got = r.measure(repeats=2, chunk_ops=64, tsc=False)
    assert not got.tsc_invariant and got.ns.shape == (2, len(OP_CLASSES), 2)
    assert np.isfinite(got.median[:, ZONE]).all() and got.ops[:, ZONE].tolist() == [586, 586]
    summary = got.summary()
    assert summary["repeats"] == 2 and len(summary["ops"]) == 2
    assert "not a kernel build" in summary["what"]


def test_interrupt_between_repeats_releases_the_memory(monkeypatch):
    r = nt.NativeRun([nt.StageMemory("v6.18", 64)], 4096, window=32)
    r.add("v6.18", stream(page_zone_ops(64, range(100), 0)))
    opened, real = [], nt._Buffer.__init__

    def spy(self, nbytes):
        real(self, nbytes)
        opened.append(self)

    def stop(done, total):
        raise KeyboardInterrupt

    monkeypatch.setattr(nt._Buffer, "__init__", spy)
    with pytest.raises(KeyboardInterrupt):
        r.measure(repeats=3, progress=stop)
    assert len(opened) == 1 and opened[0].map.closed


SMALL_SCENARIO = """machine 64M cpus=2
seed 3
pagecache 4M file=a order=0
pagecache 4M file=b order=4
anon 2M proc=p
kmalloc 400 size=8-512 tag=o
free half kmalloc tag=o
free half pagecache file=a
"""


def test_real_emulator_streams_through_the_sink(tmp_path):
    """A scenario run by the emulator at three stages, its access logs drained by the sink:
    the measured op counts are the accounting's counters, every class it counted is timed."""
    from memdesc.analysis.scenario import load_scenario, run_stage
    from memdesc.mm import access
    from memdesc.mm.mmzone import Machine

    f = tmp_path / "small.scenario"
    f.write_text(SMALL_SCENARIO)
    sc = load_scenario(f)
    stages = [get_stage(s) for s in ("v6.18", "page16", "page8")]
    run = nt.NativeRun(stages, Machine.from_spec(sc.machine, nr_cpus=sc.cpus).nr_pfns)
    sink = run.sink()
    for st_ in stages:
        run_stage(sc, st_, access_sink=sink)
    sink.flush()
    res = run.measure(repeats=2)
    assert res.dropped_blocks == 0
    for s, st_ in enumerate(stages):
        counted = access.counters(sink.kernels[st_.id])[:, access.CT_OPS]
        assert res.ops_seen[s].tolist() == counted.tolist()
        assert res.ops[s].tolist() == counted.tolist()        # budget not reached: all of it
        assert np.isfinite(res.median[s][counted > 0]).all()
    assert res.ops[0, OP_CLASS_ID["kmem_cache_alloc"]] > 0
    assert res.ops[0, OP_CLASS_ID["alloc_pages.pcp"]] > 0


def test_a_run_without_operations_gives_an_empty_result():
    r = nt.NativeRun([nt.StageMemory("v6.18", 64), nt.StageMemory("page8", 8)], 4096)
    r.add("page8", stream([]))
    res = r.measure(repeats=2)
    assert res.rows() == [] and np.isnan(res.median).all() and (res.ops == 0).all()
    assert np.isfinite(res.empty_ns).all()


def test_memory_too_large_is_refused_in_one_line():
    with pytest.raises(MemdescError) as e:
        nt.NativeRun([get_stage("v6.18")], nr_pfns=1 << 40)
    msg = str(e.value)
    assert "\n" not in msg and "MemAvailable" in msg and "MiB" in msg


def test_meminfo_reading(tmp_path):
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       24684092 kB\nMemAvailable:    2048 kB\n")
    assert nt.mem_available(f) == 2048 * 1024
    with pytest.raises(MemdescError):
        nt.check_memory(1, "x", f)          # 1 byte + headroom > 2 MiB
    assert nt.mem_available(tmp_path / "missing") is None
    nt.check_memory(1 << 50, "x", tmp_path / "missing")     # unknown: not refused


def test_tsc_invariance_from_cpuinfo_flags(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nflags\t\t: fpu tsc constant_tsc nonstop_tsc rdtscp\n")
    assert cycles.tsc_invariant(f) == cycles.X86
    f.write_text("processor\t: 0\nflags\t\t: fpu tsc constant_tsc\n")
    assert not cycles.tsc_invariant(f)
