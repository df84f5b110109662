"""The trace's slab events as slab operations (memdesc.analysis.replay_slab) in the kernel-memory
arena (memdesc.analysis.replay_arena), run through the replay's side-operation dispatcher
(memdesc.analysis.replay_lookups), on the real recording in tests/data/trace-small (507 events
of `memdesc record --slab`: 259 kmem_cache_alloc, 77 kmem_cache_free, 39 kmalloc, 49 kfree),
and in a whole replay of the trace-slab fixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import fixture_dir
from memdesc.analysis import replay as rp
from memdesc.analysis.replay_arena import StageArena
from memdesc.analysis.replay_side import NO_PT, SideRows, _run_due
from memdesc.analysis.replay_slab import pair_slab_events, slab_plan
from memdesc.ingest.ftrace import read_trace
from memdesc.mm import access
from memdesc.mm import page_alloc as pa
from memdesc.mm.access import CT_OPS, KIND_DEP, KIND_PTR, OP_CLASS_ID, chain_levels
from memdesc.mm.kmem import PAGE_OFFSET, VMEMMAP_START
from memdesc.mm.mmzone import Machine
from memdesc.stages import get_stage

TRACE = Path(__file__).parent / "data" / "trace-small"


@pytest.fixture(scope="module")
def trace():
    return read_trace(TRACE)


@pytest.fixture(scope="module")
def plan(trace):
    return slab_plan(trace)


def _replay(plan, stage: str):
    """The plan's operations in a fresh arena of ``stage`` with accounting on, through the
    dispatcher (_run_due: every row due before op 0); (arena, access stream, counters)."""
    mm = pa.MemMap(Machine.from_spec("64M"), get_stage(stage), debug=False)
    arena = StageArena(mm, 0, folios=False, slab=plan)
    access.enable(mm, 1 << 20)
    arena.account_with(mm)
    r = SideRows(*plan.rows())
    n = len(r)
    k, _ = _run_due(arena.HE, arena.AE, (arena.slab.ctx, NO_PT), r.op_class, r.pfn, r.sub,
                    r.arg, np.zeros(n, np.int64), 0, mm.nr_pfns, 0, 0,
                    np.full(n, -1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert k == n
    return arena, access.drain(mm), access.counters(mm)


@pytest.fixture(scope="module", params=["v6.18", "page16"])
def run(request, plan):
    return request.param, *_replay(plan, request.param)


def test_a_free_pairs_with_the_last_alloc_of_its_ptr(trace):
    """names_cache object 0xffff88810087d000: allocated at event 2, freed at 5, allocated
    again at 8, freed at 14 -- the free at 14 is the allocation at 8's, not 2's."""
    ev = trace.events
    rows, pair = pair_slab_events(ev["event"], ev["ptr"], ev["is_null"])
    pos = {int(r): i for i, r in enumerate(rows)}
    assert int(ev["ptr"][14]) == int(ev["ptr"][2]) == 0xFFFF88810087D000
    assert rows[pair[pos[5]]] == 2
    assert rows[pair[pos[14]]] == 8
    # kfree() of a kmalloc() object: 0xffff888118bc8510 (kmalloc-16) at 11, kfree at 17
    assert rows[pair[pos[17]]] == 11 and trace.event_names[ev["event"][11]] == "kmalloc"
    assert (pair[np.isin(ev["event"][rows], (5, 7))] == -1).all()   # allocations


def test_null_frees_are_skipped_and_counted(trace, plan):
    ev = trace.events
    null = np.flatnonzero(np.isin(ev["event"], (5, 6, 7, 8)) & ev["is_null"])
    assert len(null) == 18 and (ev["ptr"][null] == 0).all()
    assert plan.counts["null_skipped"] == 18
    assert not np.isin(plan.event, null).any()
    # what is run: every non-NULL allocation, every paired free, the 2 pre-trace frees
    assert plan.n_alloc == 259 + 39
    assert len(plan.event) == plan.n_alloc + plan.counts["frees_paired"] + 2


def test_objects_allocated_before_the_trace(trace, plan):
    """Two kmem_cache_free() events free ptrs the trace never allocated: their objects are
    allocated in the arena at the start (in the cache the event names), not counted."""
    assert plan.counts["pre_trace_objects"] == 2
    mm = pa.MemMap(Machine.from_spec("64M"), get_stage("v6.18"), debug=False)
    arena = StageArena(mm, 0, folios=False, slab=plan)
    pre = np.arange(plan.n_alloc, plan.n_alloc + 2)
    addr = arena.slab.obj_addr[pre]
    assert (addr >= PAGE_OFFSET).all()
    sl = arena.arena.slub
    for i in pre:
        name, size = plan.caches[plan.tcache[i]]
        assert sl.live(sl.by_name[name]) >= 1 and plan.size[i] == size
    frees = plan.event[np.isin(plan.obj, pre)]
    assert len(frees) == 2 and set(trace.event_names[ev] for ev in
                                   trace.events["event"][frees]) == {"kmem_cache_free"}


def test_every_live_object_is_in_the_arena(run, plan):
    """Leak check: objects live in the emulated caches at the end == allocations - frees +
    pre-trace objects - their frees; no allocation failed, no free went astray."""
    _, arena, _, _ = run
    s = arena.slab.summary()
    assert (s["alloc_failed"], s["bad_free"], s["free_of_failed"]) == (0, 0, 0)
    want = plan.n_alloc - plan.counts["frees_paired"]          # each pre object freed once
    assert s["live_at_end"] == want == 298 - 106
    assert arena.slab.live_objects() == want                   # no kmalloc_large here


def _frees(stream) -> list[tuple[int, int]]:
    """(first, end) access of each kmem_cache_free operation of ``stream``."""
    c = OP_CLASS_ID["kmem_cache_free"]
    return [(int(stream.op_first[i]), int(stream.op_first[i + 1]))
            for i in range(stream.nr_ops) if stream.op_class[i] == c]


def test_kmem_cache_free_reads_the_slab_descriptor_through_the_memdesc_word(run, plan):
    """virt_to_slab() + slab->slab_cache in kmem_cache_free()/kfree(). At v6.18 the struct
    page is the struct slab: compound_head (a pointer), PageSlab's page_type, slab_cache (the
    same word as compound_head), all level 1, then the struct kmem_cache slab_cache names
    (level 2): chain 2 (an object on a tail page of a multi-page slab: one more, the head
    page that compound_head names). At page16 the memdesc word of the object's page (a
    pointer, level 1), then slab->slab_cache in the struct slab descriptor in slab memory
    (dependent: level 2), then the struct kmem_cache (level 3): chain 3."""
    stage, arena, s, c = run
    pb = get_stage(stage).page.size
    levels = chain_levels(s)
    frees = _frees(s)
    for a, _ in frees[:20]:
        page = VMEMMAP_START + (int(s.addr[a]) - VMEMMAP_START) // pb * pb
        got = [(int(s.addr[a + j]), int(s.kind[a + j])) for j in range(4)]
        if stage == "v6.18":
            assert got[0] == (page + 8, KIND_PTR)
            if got[1][0] == page + 48:           # a head page: it is the struct slab
                assert got[1:3] == [(page + 48, 0), (page + 8, KIND_PTR)]
                assert got[3][0] >= PAGE_OFFSET and got[3][1] == KIND_DEP  # the kmem_cache
            else:                                # a tail page: compound_head names the head
                head = got[1][0] - 48
                assert got[1:3] == [(head + 48, KIND_DEP), (head + 8, KIND_PTR | KIND_DEP)]
        else:
            md = get_stage(stage).page.field("memdesc").offset
            assert got[0] == (page + md, KIND_PTR)
            assert got[1][0] >= PAGE_OFFSET and got[1][1] == KIND_PTR | KIND_DEP
            assert got[2][0] >= PAGE_OFFSET and got[2][1] == KIND_DEP
    chains = levels[np.asarray(s.op_class) == OP_CLASS_ID["kmem_cache_free"]]
    assert np.median(chains) == (2 if stage == "v6.18" else 3)
    assert c[OP_CLASS_ID["kmem_cache_free"], CT_OPS] == plan.counts["frees_paired"] + 2


def test_counts_identical_between_two_runs(run, plan):
    stage, _, _, c = run
    _, _, again = _replay(plan, stage)
    assert np.array_equal(c, again)
    assert c[OP_CLASS_ID["kmem_cache_alloc"], CT_OPS] == plan.n_alloc


def test_a_replay_runs_the_slab_events_and_observes_the_same():
    """trace-slab, placement mode, v6.18 and page16: with accounting every slab event runs
    (726,801 allocations: 469,335 kmem_cache_alloc + 257,466 kmalloc; every paired free
    and the 3,694 frees of objects allocated before the trace), nothing fails, what is
    live at the end is what the pairing says; and the replay observes what it observes
    without accounting (the slab operations live in the arena, not the replayed memory)."""
    inp = rp.load_replay_input(read_trace(fixture_dir("trace-slab")))
    stages = [get_stage("v6.18"), get_stage("page16")]
    got = {}

    def sink(stage_id, mm):
        got[stage_id] = access.counters(mm)

    counted = rp.replay(inp, stages, "placement", 10, access_sink=sink)
    plain = rp.replay(inp, stages, "placement", 10)
    p = rp._slab_plan(inp)
    assert p.n_alloc == 469_335 + 257_466 and p.counts["pre_trace_objects"] == 3_694
    for r, q in zip(counted.runs, plain.runs, strict=True):
        assert np.array_equal(r.nr_free, q.nr_free) and np.array_equal(r.units, q.units)
        c = got[r.stage.id]
        assert c[OP_CLASS_ID["kmem_cache_alloc"], CT_OPS] == p.n_alloc
        assert c[OP_CLASS_ID["kmem_cache_free"], CT_OPS] == p.counts["frees_paired"] + 3_694
        sl = r.start["slab"]
        assert (sl["alloc_failed"], sl["bad_free"], sl["pre_trace_alloc_failed"]) == (0, 0, 0)
        assert sl["live_at_end"] == p.n_alloc - p.counts["frees_paired"] - sl["free_of_failed"]
        assert "slab" not in q.start
