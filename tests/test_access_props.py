"""Access accounting properties over every stage and free-page tracking option: it changes
no result, its counters agree with its log, and every address lies in a region the stage has."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import examples
from memdesc.analysis.scenario import load_scenario, run_stage
from memdesc.mm import access
from memdesc.mm import page_alloc as pa
from memdesc.mm.access import CT_OPS, OP_CLASS_ID
from memdesc.mm.gfp import GFP_ATOMIC, GFP_HIGHUSER_MOVABLE, GFP_KERNEL
from memdesc.mm.mmzone import Machine
from memdesc.stages import STAGE_IDS, get_stage, tracking_variants
from test_access import check_against_stream, check_regions

_DEFAULTS = [get_stage(s) for s in STAGE_IDS]
ALL = list(STAGE_IDS) + [v for v in tracking_variants() if get_stage(v) not in _DEFAULTS]
GFPS = (GFP_KERNEL, GFP_HIGHUSER_MOVABLE, GFP_ATOMIC)
MACHINE = Machine.from_spec("64M", nr_cpus=2)

ops_st = st.lists(st.tuples(st.integers(0, 2), st.sampled_from([0, 0, 0, 1, 2, 3, 9, 10]),
                            st.integers(0, 2), st.integers(0, 15)), min_size=1, max_size=120)


def _run(stage: str, ops, log: int):
    mm = pa.MemMap(MACHINE, stage, debug=False)
    if log >= 0:
        access.enable(mm, log)
    kinds = np.array([1 if k == 2 else 0 for k, _, _, _ in ops])
    gfps = np.array([GFPS[g] for _, _, g, _ in ops])
    orders = np.array([o for _, o, _, _ in ops])
    slots = np.array([s for _, _, _, s in ops])
    out, _ = pa.run_ops(mm, kinds, gfps, orders, slots, 16)
    return mm, out


@pytest.mark.parametrize("stage", ALL)
@settings(max_examples=examples(8), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops_st)
def test_accounting_changes_nothing_and_agrees_with_its_log(stage, ops):
    off, out_off = _run(stage, ops, -1)
    on, out_on = _run(stage, ops, 1 << 20)
    np.testing.assert_array_equal(out_on, out_off)
    np.testing.assert_array_equal(on.mem, off.mem)
    keep = np.ones(len(on.S), bool)
    keep[access.core.C_ACC] = False
    np.testing.assert_array_equal(on.S[keep], off.S[keep])
    s = access.drain(on)
    c = access.counters(on)
    check_against_stream(c, s)
    check_regions(on, s)
    n_alloc = sum(1 for k, *_ in ops if k != 2)
    assert c[[OP_CLASS_ID[n] for n in ("alloc_pages.pcp", "alloc_pages.refill",
                                       "alloc_pages.buddy")], CT_OPS].sum() == n_alloc
    assert (s.kind < 8).all() and (s.addr % 8 == 0).all()


class Sink:
    """Keeps every drained stream of a run (the access_sink protocol)."""

    log_capacity = 1 << 23

    def __init__(self):
        self.streams, self.k = [], None

    def __call__(self, stage_id, k):
        assert not access.dropped(k)
        self.streams.append(access.drain(k))
        self.k = k


@pytest.mark.parametrize("stage", ["v6.18", "page16", "page8"])
def test_mixed_scenario_with_accounting(stage):
    """Every step kind of the mixed scenario: the same observables with accounting on, the
    counters agree with the streams the sink drained after each step, every address in a
    region, and the real workload exercises every operation class."""
    from pathlib import Path

    sc = load_scenario(Path(__file__).resolve().parents[1] / "examples" / "mixed.scenario")
    plain = run_stage(sc, stage)
    sink = Sink()
    counted = run_stage(sc, stage, access_sink=sink)
    assert counted.observables() == plain.observables()
    assert counted.final_state == plain.final_state
    sink(stage, sink.k)                     # what the final observe() read after the last step
    s = access.concat(sink.streams)
    check_against_stream(access.counters(sink.k), s)
    check_regions(sink.k.mm, s)
    c = access.counters(sink.k)
    for name in ("alloc_pages.pcp", "alloc_pages.refill", "alloc_pages.buddy",
                 "free_pages.pcp", "folio_alloc", "folio_put", "folio_put.ref",
                 "kmem_cache_alloc", "kmem_cache_free", "pt_walk", "pagecache_lookup"):
        assert c[OP_CLASS_ID[name], CT_OPS] > 0, name


def test_trace_slab_policy_replay_with_an_access_sink():
    """The real trace-slab replay (policy mode) with accounting on: the same allocations
    (digest of the emulated PFNs), the sink drained after every block (small blocks: the log
    holds log_capacity // 64 operations' worth), counters == the streams, regions."""
    from conftest import fixture_dir
    from memdesc.analysis import replay as rp
    from memdesc.ingest.ftrace import read_trace

    inp = rp.load_replay_input(read_trace(fixture_dir("trace-slab")))
    st = get_stage("page8")
    plain = rp.replay_stage(inp, st, "policy", samples=2, keep_memmap=True)

    class Small(Sink):
        log_capacity = 1 << 21

    sink = Small()
    run = rp.replay_stage(inp, st, "policy", samples=2, keep_memmap=True, access_sink=sink)
    assert run.alloc_pfn_digest == plain.alloc_pfn_digest != ""
    assert run.mismatches == plain.mismatches and run.final_buddyinfo == plain.final_buddyinfo
    assert len(sink.streams) >= len(inp.ops) // (Small.log_capacity // 64)
    s = access.concat(sink.streams)
    c = access.counters(run.memmap)
    check_against_stream(c, s)
    check_regions(run.memmap, s)
    # alloc_pages.* and free_pages.*, and the file/anon units' folio_alloc/folio_put (their
    # descriptor's kmem_cache_alloc/free counts for the enclosing folio operation), and the
    # trace's slab events (analysis.replay_slab: 469,335 kmem_cache_alloc + 257,466 kmalloc;
    # 613,618 paired frees + 3,694 of objects allocated before the trace)
    folio = [OP_CLASS_ID["folio_alloc"], OP_CLASS_ID["folio_put"]]
    slab = [OP_CLASS_ID["kmem_cache_alloc"], OP_CLASS_ID["kmem_cache_free"]]
    assert c[slab, CT_OPS].tolist() == [726_801, 617_312]
    assert c[:6, CT_OPS].sum() + c[folio, CT_OPS].sum() + c[slab, CT_OPS].sum() == \
        s.nr_ops > 100_000
    assert c[folio, CT_OPS].min() > 10_000
