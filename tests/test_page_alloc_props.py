"""Random alloc/free sequences at every stage of the Path: the invariants hold after every step
(memdesc.mm.debug runs after each call), and every stage whose free-page tracking keeps the
kernel's list order hands out the same PFNs and ends with the same free lists - the
allocator's policy does not depend on the layout of struct page. Options that choose blocks
otherwise (``bitmap``: by address) run the same sequences under the invariant checks and the
drain-to-boot check."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import examples
from memdesc.mm import free_tracking as ft
from memdesc.mm import page_alloc as pa
from memdesc.mm.gfp import (
    GFP,
    GFP_ATOMIC,
    GFP_DMA,
    GFP_DMA32,
    GFP_HIGHUSER_MOVABLE,
    GFP_KERNEL,
    GFP_NOWAIT,
    GFP_TRANSHUGE_LIGHT,
)
from memdesc.mm.mm_types import PG_reserved
from memdesc.mm.mmzone import Machine
from memdesc.stages import FREE_TRACKING_OPTIONS, TRACKING, get_stage, tracking_variants

#: every stage with every registered free-page tracking option (derived from the registry),
#: plus type-table cases whose Buddy/Misc codes differ from the defaults
VARIANTS = ["v6.18"] + tracking_variants()[1:] + ["page16@rev-a", "page8@path-2025"]
#: the variants whose observables must equal v6.18's (their option keeps the list order)
IN_ORDER = [v for v in VARIANTS if TRACKING[get_stage(v).free_tracking].keeps_list_order]
BY_ADDRESS = [v for v in VARIANTS if v not in IN_ORDER]
GFPS = [GFP_KERNEL, GFP_HIGHUSER_MOVABLE, GFP_KERNEL | GFP.RECLAIMABLE, GFP_DMA, GFP_DMA32,
        GFP_ATOMIC, GFP_NOWAIT, GFP_KERNEL | GFP.COMP, GFP_TRANSHUGE_LIGHT]
MACHINE = Machine.from_spec("64M", hole_start="32M", dma32_end="40M")   # 3 zones + a hole
#: Isolation targets: every pageblock of DMA32 and Normal whose pages are all RAM the buddy
#: manages (start_isolate_page_range() is only ever called on such ranges); derived from the
#: machine's managed ranges, so the 8192..10239 hole inside DMA32's span is not a target.
ISOLATE_PFNS = [pfn for z in MACHINE.zones if z.name in ("DMA32", "Normal")
                for s, e in MACHINE.managed_ranges(z)
                for pfn in range(-(-s // 512) * 512, e - 511, 512)]

_order = st.one_of(st.integers(0, 3), st.integers(0, 3), st.integers(0, 10))
_op = st.one_of(
    st.tuples(st.just("alloc"), st.sampled_from(range(len(GFPS))), _order, st.integers(0, 1)),
    st.tuples(st.just("alloc"), st.sampled_from(range(len(GFPS))), _order, st.integers(0, 1)),
    st.tuples(st.just("free"), st.integers(0, 1 << 16), st.just(0), st.integers(0, 1)),
    st.tuples(st.just("drain"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("isolate"), st.integers(0, len(ISOLATE_PFNS) - 1), st.just(0), st.just(0)),
)


def _replay(stage: str, ops) -> tuple[list, pa.MemMap]:
    """Run ``ops`` at ``stage``; the MemMap checks every invariant after each call."""
    mm = pa.MemMap(MACHINE, stage)
    live: list[tuple[int, int]] = []
    isolated: set[int] = set()
    trace = []
    for kind, a, order, cpu in ops:
        if kind == "alloc":
            p = pa.alloc_pages(mm, GFPS[a], order, cpu=cpu)
            if p >= 0:
                live.append((p, order))
            trace.append(p)
        elif kind == "free" and live:
            p, o = live.pop(a % len(live))
            pa.free_pages(mm, p, o, cpu=cpu)
            trace.append(p)
        elif kind == "drain":
            pa.drain_all_pages(mm)
        elif kind == "isolate":
            pfn = ISOLATE_PFNS[a]
            if pfn >> 9 in isolated:
                trace.append(pa.clear_pageblock_isolate(mm, pfn))
                isolated.discard(pfn >> 9)
            else:
                ok = pa.set_pageblock_isolate(mm, pfn)
                trace.append(ok)
                if ok:
                    isolated.add(pfn >> 9)
        trace.append(mm.S[ft.NCFG:mm.cfg[ft.C_OFF_SIDE]].copy())   # zones, pcp, heads, pbs
    return trace, mm


def test_isolation_targets_stay_inside_ram():
    """Hand-worked: DMA32 manages 4096..8191 (8 pageblocks) and Normal 10240..18431 (16);
    8192..10239 is the hole below 40M that DMA32 spans but no RAM backs."""
    assert list(range(4096, 8192, 512)) + list(range(10240, 18432, 512)) == ISOLATE_PFNS
    mm = pa.MemMap(MACHINE, "v6.18", debug=False)
    for pfn in ISOLATE_PFNS:
        assert all(not mm.pages["flags"][pfn + i] & (1 << PG_reserved) for i in range(512))
    assert mm.pages["flags"][8192] & (1 << PG_reserved)      # the hole: reserved struct pages


def test_every_registered_option_is_exercised():
    """Each registered encoding is selectable at some stage and in VARIANTS."""
    used = {ft.encoding(o).NAME
            for opts in FREE_TRACKING_OPTIONS.values() for o in opts}
    assert used == set(ft.ENCODINGS)
    assert {v.split("/")[1].split("@")[0] for v in VARIANTS if "/" in v} | {"page_type"} == used


@settings(max_examples=examples(40))
@given(st.lists(_op, min_size=1, max_size=40))
def test_same_sequence_same_result_at_every_stage(ops):
    ref_trace, ref = _replay(IN_ORDER[0], ops)
    ref_lists = pa.free_lists(ref)
    for stage in IN_ORDER[1:]:
        trace, mm = _replay(stage, ops)
        assert len(trace) == len(ref_trace)
        for a, b in zip(trace, ref_trace, strict=True):
            if isinstance(a, np.ndarray):
                assert np.array_equal(a, b), stage
            else:
                assert a == b, stage
        assert pa.free_lists(mm) == ref_lists, stage


@settings(max_examples=examples(20))
@given(st.lists(_op, min_size=1, max_size=40))
def test_options_not_in_list_order_keep_the_invariants(ops):
    """The same sequences at bitmap & co: every invariant (memdesc.mm.debug) holds after each
    call, and while every allocation succeeds as many pages are allocated as at the
    reference (the same requests hold memory, wherever it was placed)."""
    _, ref = _replay(IN_ORDER[0], ops)
    for stage in BY_ADDRESS:
        _, mm = _replay(stage, ops)
        mm.check()
        if ref.zs[:, pa.Z_FAILED].sum() == 0 and mm.zs[:, pa.Z_FAILED].sum() == 0:
            held = lambda m: int((np.int64(1) << m._order[m._order >= 0]).sum())  # noqa: E731
            assert held(mm) == held(ref), stage


@settings(max_examples=examples(15))
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 2)), min_size=100, max_size=400),
       st.sampled_from(VARIANTS))
def test_churn_to_exhaustion_keeps_every_page_accounted(ops, stage):
    """Allocate until memory runs out and free it all again: every invariant holds on the
    way, and at the end all managed memory is free (buddy + pcp) and merges back after a
    drain to what boot left."""
    mm = pa.MemMap(MACHINE, stage, check_every=25)
    boot = pa.free_lists(mm)
    live = []
    for order, which in ops:
        gfp = (GFP_KERNEL, GFP_HIGHUSER_MOVABLE, GFP_KERNEL | GFP.RECLAIMABLE)[which]
        p = pa.alloc_pages(mm, gfp, order)
        if p >= 0:
            live.append((p, order))
        elif live:
            p, o = live.pop(0)
            pa.free_pages(mm, p, o)
    for p, o in live:
        pa.free_pages(mm, p, o)
    mm.check()
    pa.drain_all_pages(mm)
    managed = sum(z.managed for z in MACHINE.zones)
    assert pa.zone_free_pages(mm).sum() == managed and pa.pcp_count(mm).sum() == 0
    blocks = lambda fl: sorted((v, k[3]) for k, vs in fl.items() for v in vs)  # noqa: E731
    assert blocks(pa.free_lists(mm)) == blocks(boot)       # merged back completely
