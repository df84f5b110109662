"""The units the start snapshot holds become folios at the policy replay's start
(memdesc.analysis.replay_folios.replay_start_folios), on a real trace's start state
(trace-pagecache: 7,272 file, 4,629 anon and 2,214 shmem units, one of them order 1):
PG_lru on the head at the overlay stages, File/Anon memdesc words pointing to a live
descriptor with the unit's pfn and order from ``dynamic`` on, and so the same movable pages
per pageblock (prep_move_freepages_block()'s count) at every stage the replay runs."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from conftest import fixture_dir
from memdesc.analysis import replay as rp
from memdesc.analysis.census import CLASS_INDEX
from memdesc.analysis.replay_arena import StageArena
from memdesc.analysis.replay_folios import (
    CLS_FILE,
    release_start_folios_in,
    replay_folio_alloc,
    replay_start_folios,
)
from memdesc.ingest.ftrace import read_trace
from memdesc.mm import page_alloc as pa
from memdesc.mm.buddy import prep_move_freepages_block
from memdesc.mm.folio import F_FLAGS, fget, folio_order, folio_pfn, folio_ref_count, page_folio
from memdesc.mm.free_tracking import memdesc_slot, page_is_movable, page_zone_index
from memdesc.mm.ft_common import C_F_FLAGS, C_F_LINK, C_W
from memdesc.mm.gfp import GFP_HIGHUSER_MOVABLE
from memdesc.mm.kmem import VMEMMAP_START
from memdesc.mm.mm_types import PG_lru
from memdesc.mm.mmzone import pageblock_order
from memdesc.stages import EMULATED_STAGE_IDS, get_stage, tracking_variants, type_code
from test_replay_folios import page_zone_counts

#: every stage and free-page tracking variant the replay runs (derived from the registry)
REPLAYED = list(dict.fromkeys([*EMULATED_STAGE_IDS, *tracking_variants()]))
FOLIO_CLASSES = [CLASS_INDEX[c] for c in ("file", "anon", "shmem")]


@pytest.fixture(scope="module")
def inp() -> rp.ReplayInput:
    return rp.load_replay_input(read_trace(fixture_dir("trace-pagecache")))


def _expected(inp: rp.ReplayInput) -> tuple[np.ndarray, np.ndarray]:
    """Heads and orders of the start units of class file/anon/shmem in managed memory (the
    hand count: every one becomes a folio)."""
    p = inp.start.unit_pfn
    c = inp.units.ucls[p]
    keep = np.isin(c, FOLIO_CLASSES) & (inp.start.managed[p] != 0)
    return p[keep], inp.units.uord[p][keep].astype(np.int64)


def _start(inp: rp.ReplayInput, sid: str, units: list | None = None
           ) -> tuple[pa.MemMap, StageArena, int]:
    """``sid``'s emulated memory in the start state with the start folios made; ``units``
    receives the per-PFN state, class and order arrays."""
    mm = rp.setup_stage(inp, get_stage(sid))
    st, _, ucls, uord, _ = rp._start_units(inp, mm.nr_pfns)
    folios = StageArena(mm, rp._peak_live_folios(inp))
    made = replay_start_folios(folios.HE, folios.AE, inp.start.unit_pfn, inp.start.managed,
                               st, ucls, uord)
    if units is not None:
        units += [st, ucls, uord]
    return mm, folios, int(made)


@njit(cache=True)
def _movable_per_pageblock(mem, S, managed):
    """prep_move_freepages_block()'s movable count of every pageblock (-1: not spanned)."""
    nb = managed.shape[0] >> pageblock_order
    out = np.full(nb, -1, np.int64)
    counts = np.zeros(2, np.int64)
    for b in range(nb):
        p = b << pageblock_order
        if not managed[p]:
            continue
        if prep_move_freepages_block(mem, S, page_zone_index(mem, S, p), p, counts) >= 0:
            out[b] = counts[1]
    return out


def test_movable_pages_per_pageblock_identical_at_every_stage(inp):
    """The start's movable pages per pageblock are the start folios' pages, at every stage
    and free-page tracking option the replay runs; from ``dynamic`` on the arena holds one
    descriptor per start folio."""
    heads, orders = _expected(inp)
    assert len(heads) > 10_000 and (orders > 0).any()
    want = np.zeros(len(inp.start.managed) >> pageblock_order, np.int64)
    np.add.at(want, heads >> pageblock_order, np.int64(1) << orders)
    ref = None
    for sid in REPLAYED:
        mm, folios, made = _start(inp, sid)
        assert made == len(heads), sid
        got = _movable_per_pageblock(mm.mem, mm.S, inp.start.managed)
        spanned = got >= 0
        assert np.array_equal(got[spanned], want[spanned]), sid
        if ref is None:
            ref = got
        assert np.array_equal(got, ref), sid
        assert folios.live_descriptors() == (made if mm.stage.dynamic else 0), sid
        del mm, folios


def _unit(inp: rp.ReplayInput, order: int) -> int:
    heads, orders = _expected(inp)
    files = heads[(inp.units.ucls[heads] == CLS_FILE) & (orders == order)]
    return int(files[0])


@pytest.mark.parametrize("order", [0, 1])
def test_start_file_unit_at_v6_18_is_an_lru_folio(inp, order):
    """v6.18: the head struct page of a start file unit has PG_lru, its tail none; every
    page's page_folio() is the head, and every page counts movable. Its struct pages are
    word for word those of a folio the replay's folio_alloc() makes (compound_head pointers
    taken relative to the head; the head's lru links left out)."""
    mm, folios, _ = _start(inp, "v6.18")
    p = _unit(inp, order)
    w = int(mm.S[C_W])
    head = VMEMMAP_START + p * w * 8
    flags = [int(mm.mem[(p + k) * w + int(mm.S[C_F_FLAGS])]) for k in range(1 << order)]
    assert [(f >> PG_lru) & 1 for f in flags] == [1] + [0] * ((1 << order) - 1)
    for k in range(1 << order):
        assert int(page_folio(folios.HE, p + k)) == head
        assert page_is_movable(mm.mem, mm.S, p + k)
    q = int(replay_folio_alloc(folios.HE, folios.AE, GFP_HIGHUSER_MOVABLE, order, 0, CLS_FILE))
    assert q >= 0 and page_zone_index(mm.mem, mm.S, q) == page_zone_index(mm.mem, mm.S, p)

    link = int(mm.S[C_F_LINK])

    def words(r: int) -> list[int]:
        """The folio's struct pages, the head's lru links left out (stale free-list links
        or the page_init() empty list: the emulator keeps no lruvec lists)."""
        base = VMEMMAP_START + r * w * 8
        x = [v - base if base < v < base + (w * 8 << order) else v
             for v in mm.mem[r * w:(r + (1 << order)) * w].tolist()]
        return x[:link] + x[link + 2:]

    assert words(p) == words(q)


def test_start_file_unit_at_page16_points_to_its_descriptor(inp):
    """page16: every page of start folios carries ``desc | File/Anon`` (shmem: File); the
    descriptor is one of the arena's live objects with the unit's pfn, order, PG_lru and
    refcount 1; page_zone() of such a page is 2 dependent loads (memdesc word, then the
    descriptor's flags)."""
    mm, folios, made = _start(inp, "page16")
    heads, orders = _expected(inp)
    slot = int(memdesc_slot(mm.S))
    w = int(mm.S[C_W])
    anon, file = type_code(mm.stage, "Anon"), type_code(mm.stage, "File")
    descs = set()
    for p, o in zip(heads.tolist(), orders.tolist(), strict=True):
        words = mm.mem[p * w + slot:(p + (1 << o)) * w:w]
        want = anon if inp.units.ucls[p] == CLASS_INDEX["anon"] else file
        assert set((words & np.uint64(15)).tolist()) == {want}, p
        d = words[0] & ~np.uint64(15)
        assert (words == words[0]).all()
        assert int(folio_pfn(folios.HE, d)) == p and int(folio_order(folios.HE, d)) == o
        assert int(fget(folios.HE, d, F_FLAGS)) >> PG_lru & 1
        assert int(folio_ref_count(folios.HE, d)) == 1
        descs.add(int(d))
    assert len(descs) == made == folios.live_descriptors()
    pfns = heads[:50]
    assert page_zone_counts(mm, pfns) == (50, 100, 2)



@pytest.mark.parametrize("sid", ["v6.18", "page16"])
def test_a_free_over_a_start_folio_releases_it(inp, sid):
    """A snapshot free whose block holds another start folio (a snapshot that does not fit
    the trace) takes that folio off the LRU and, from ``dynamic`` on, frees its descriptor:
    release_start_folios_in() over [r - 1, r + 1) for a start folio at odd pfn r."""
    units: list = []
    mm, folios, made = _start(inp, sid, units)
    st, ucls, uord = units
    heads, orders = _expected(inp)
    r = int(heads[(heads & 1 == 1) & (orders == 0)][0])
    folio = page_folio(folios.HE, r)
    assert int(fget(folios.HE, folio, F_FLAGS)) >> PG_lru & 1
    assert release_start_folios_in(folios.HE, folios.AE, st, ucls, uord, r - 1, 1) == 1
    if mm.stage.dynamic:
        assert folios.live_descriptors() == made - 1
    else:
        assert not int(fget(folios.HE, folio, F_FLAGS)) >> PG_lru & 1
        assert not page_is_movable(mm.mem, mm.S, r)
