"""The policy replay's folios (memdesc.analysis.replay_folios) on a real trace: file/anon
units are folios at every stage -- descriptors from ``dynamic`` on, PG_lru at the overlay
stages, movable for claim/steal everywhere -- with the same observables at every stage, no
descriptor leaked, and page_zone() of a folio page 1 dependent load at v6.18, 2 at page16 and
page8."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import fixture_dir
from memdesc.analysis import replay as rp
from memdesc.analysis.census import CLASS_INDEX
from memdesc.analysis.replay_folios import CLS_ANON, CLS_FILE
from memdesc.ingest.ftrace import read_trace
from memdesc.mm import access
from memdesc.mm.access import CT_CHAIN_MAX, CT_LOADS, CT_OPS, OP_CLASS_ID
from memdesc.mm.free_tracking import memdesc_slot, page_is_movable, page_zone_index
from memdesc.mm.ft_common import C_F_FLAGS, C_W
from memdesc.mm.lookups import page_zone_ms
from memdesc.mm.mm_types import PG_lru
from memdesc.stages import get_stage, type_code

STAGES = ("v6.18", "folio", "dynamic", "page32", "page16", "page8")
FOLIO_CLASSES = [CLASS_INDEX[c] for c in ("file", "anon", "shmem")]


@pytest.fixture(scope="module")
def runs() -> tuple[rp.ReplayInput, dict[str, rp.StageRun]]:
    inp = rp.load_replay_input(read_trace(fixture_dir("trace-pagecache")))
    return inp, {s: rp.replay_stage(inp, get_stage(s), "policy", samples=10,
                                    keep_memmap=True) for s in STAGES}


def _live_folios(inp: rp.ReplayInput) -> tuple[int, int]:
    """Folios (and their pages) alive at the end, from the ops alone: applied file/anon
    allocations whose paired free is not applied (frees by identity)."""
    ops = inp.ops
    cls = np.asarray(ops.cls)
    alloc = (ops.kind == rp.OP_ALLOC) & ops.applies & ((cls == CLS_FILE) | (cls == CLS_ANON))
    freed = np.zeros(len(ops), bool)
    f = (ops.kind == rp.OP_FREE) & ops.applies & (ops.pair >= 0)
    freed[ops.pair[f]] = True
    live = alloc & ~freed
    return int(live.sum()), int((1 << ops.order[live].astype(np.int64)).sum())


def _live_start_folios(inp: rp.ReplayInput, made: int) -> tuple[int, int]:
    """Start folios (replay_start_folios(): units of class file/anon/shmem the snapshot holds)
    alive at the end, and their pages, from the input alone: the units the policy start
    does not free as snapshot pcp pages (an alloc/drain that is the first event at a unit's
    pfn), less those a free of an allocation older than the trace releases."""
    ops, s0, u = inp.ops, inp.start, inp.units
    heads = s0.unit_pfn[np.isin(u.ucls[s0.unit_pfn], FOLIO_CLASSES)
                        & (s0.managed[s0.unit_pfn] != 0)]
    is_unit = np.zeros(len(s0.managed), bool)
    is_unit[s0.unit_pfn] = True
    rel = ops.applies & ops.first & np.isin(ops.kind, (rp.OP_ALLOC, rp.OP_DRAIN)) & (
        ops.pfn >= 0) & (ops.pfn < len(s0.managed))
    rel[rel] &= is_unit[ops.pfn[rel]]
    gone = np.zeros(len(s0.managed), bool)
    for p, o in zip(ops.pfn[rel].tolist(), ops.order[rel].tolist(), strict=True):
        gone[p:p + (1 << o)] = True
    heads = heads[~gone[heads]]
    assert len(heads) == made
    pair = np.asarray(ops.pair)
    old = (ops.kind == rp.OP_FREE) & ops.applies & ((pair < 0) | ~ops.applies[np.maximum(
        pair, 0)])
    live = heads[~np.isin(heads, ops.pfn[old])]
    return len(live), int((1 << u.uord[live].astype(np.int64)).sum())


def _live_at_end(inp: rp.ReplayInput, run: rp.StageRun) -> tuple[int, int]:
    """Every folio alive at the end (trace and start folios) and their pages."""
    n, pages = _live_folios(inp)
    sn, spages = _live_start_folios(inp, run.start["start_folios"])
    assert sn > 1000
    return n + sn, pages + spages


def page_zone_counts(mm, pfns) -> tuple[int, int, int]:
    """page_zone() of each of ``pfns`` with access accounting on: (operations, loads, longest
    dependent chain); the zones must equal page_zone_index()'s (the uncounted reading)."""
    zones = [page_zone_index(mm.mem, mm.S, int(p)) for p in pfns]
    access.enable(mm, 0)
    try:
        assert [page_zone_ms(mm.mem, mm.S, int(p)) for p in pfns] == zones
        c = access.counters(mm)[OP_CLASS_ID["page_zone"]]
    finally:
        access.disable(mm)
    return int(c[CT_OPS]), int(c[CT_LOADS]), int(c[CT_CHAIN_MAX])


def test_observables_identical_with_folios(runs):
    _, r = runs
    a = r["v6.18"]
    assert a.mismatches["alloc_failed"] == 0
    for s in STAGES[1:]:
        assert r[s].alloc_pfn_digest == a.alloc_pfn_digest, s
        assert np.array_equal(r[s].nr_free, a.nr_free), s
        assert np.array_equal(r[s].units, a.units), s
        assert r[s].mismatches == a.mismatches, s


def test_every_live_folio_keeps_one_descriptor(runs):
    """Dynamic stages: the arena's folio/large_folio caches hold exactly one descriptor per
    live folio, the trace's and the start snapshot's (a descriptor not freed at the unit's
    free, or freed twice, shows here)."""
    inp, r = runs
    assert _live_folios(inp)[0] > 500
    for s in STAGES:
        n, _ = _live_at_end(inp, r[s])
        want = n if get_stage(s).dynamic else 0
        assert r[s].start["folio_descriptors_live_at_end"] == want, s


def test_live_folios_are_lru_and_movable(runs):
    """v6.18/folio: PG_lru on the head page of every live folio (start folios included),
    nowhere else; from dynamic
    on every page of a live folio has the File/Anon memdesc type. Either way
    prep_move_freepages_block() counts them movable (free_tracking.page_is_movable())."""
    inp, r = runs
    for s in STAGES:
        n, pages = _live_at_end(inp, r[s])
        mm = r[s].memmap
        w = int(mm.S[C_W])
        if not mm.stage.dynamic:
            flags = mm.mem[int(mm.S[C_F_FLAGS])::w][:mm.nr_pfns]
            lru = np.flatnonzero(flags & np.uint64(1 << PG_lru))
            assert len(lru) == n, s
        else:
            md = mm.mem[int(memdesc_slot(mm.S))::w][:mm.nr_pfns]
            t = (md & np.uint64(15)).astype(np.int64)
            codes = [type_code(mm.stage, "File"), type_code(mm.stage, "Anon")]
            lru = np.flatnonzero(np.isin(t, codes))
            assert len(lru) == pages, s
        assert all(page_is_movable(mm.mem, mm.S, int(p)) for p in lru[::97]), s


@pytest.mark.parametrize("stage,chain", [("v6.18", 1), ("page16", 2), ("page8", 2)])
def test_page_zone_of_a_replayed_folio_page(runs, stage, chain):
    """The issue's statement on a real trace: page_zone() of a page of a folio the replay
    allocated is 1 dependent load at v6.18 (page->flags) and 2 at page16/page8 (the memdesc
    word, then the descriptor's flags)."""
    _, r = runs
    mm = r[stage].memmap
    w = int(mm.S[C_W])
    if stage == "v6.18":
        flags = mm.mem[int(mm.S[C_F_FLAGS])::w][:mm.nr_pfns]
        pfns = np.flatnonzero(flags & np.uint64(1 << PG_lru))[:50]
    else:
        md = mm.mem[int(memdesc_slot(mm.S))::w][:mm.nr_pfns]
        pfns = np.flatnonzero((md & np.uint64(15)) == type_code(mm.stage, "File"))[:50]
    assert len(pfns) == 50
    assert page_zone_counts(mm, pfns) == (50, 50 * chain, chain)
