"""Movability means the same at every stage (issue 8 item 4).

prep_move_freepages_block() counts a page movable when PageLRU(page) ||
page_has_movable_ops(page). The kernel sets PG_lru in folio_add_lru() (filemap_add_folio(),
folio_add_lru_vma() after a new anon rmap) and clears it in __page_cache_release(); zsmalloc
sets PG_movable_ops in SetZsPageMovable(). The counts that decide claim/steal must be the same
at every stage of the Path for the same workload.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from memdesc.analysis.scenario import World, parse_scenario
from memdesc.mm import folio as F
from memdesc.mm import gfp
from memdesc.mm.free_tracking import buddy_order_of, page_is_movable
from memdesc.mm.memdesc_alloc import SP_T_FILE
from memdesc.mm.mmzone import pageblock_nr_pages
from memdesc.stages import EMULATED_STAGE_IDS as STAGE_IDS


@njit(cache=True)
def _movable_per_block(mem, S, nr_pfns):
    """Movable pages per pageblock, as prep_move_freepages_block() counts them."""
    out = np.zeros(nr_pfns // pageblock_nr_pages + 1, np.int64)
    p = 0
    while p < nr_pfns:
        o = buddy_order_of(mem, S, p)
        if o >= 0:
            p += np.int64(1) << o
            continue
        if page_is_movable(mem, S, p):
            out[p // pageblock_nr_pages] += 1
        p += 1
    return out


def _blocks(world: World) -> np.ndarray:
    mem, S = world.k.mm.st
    return _movable_per_block(mem, S, world.k.mm.nr_pfns)


def _world(text: str, stage: str) -> World:
    sc = parse_scenario("machine 64M cpus=2\nseed 3\n" + text, "movability")
    w = World(sc, stage, check=True)
    for step in sc.steps:
        w.run(step)
    return w


# hand-worked: 64 KiB of page cache in order-0 folios = 16 pages, 32 KiB of anon in order-2
# folios = 8 pages, and the zspages that hold 40 KiB of compressed objects
WORKLOAD = """pagecache 64K file=f order=0
anon 32K proc=p order=2
zsmalloc 40K pool=z
kmalloc 50 size=100-900 tag=t
vmalloc 64K tag=v
"""


def _zs_pages(world: World) -> int:
    return sum(int(p.observe()["pages"]) for p in world.zs.values())


@pytest.mark.parametrize("stage", STAGE_IDS)
def test_lru_folios_and_zspages_are_the_movable_pages(stage):
    w = _world(WORKLOAD, stage)
    zs = _zs_pages(w)
    assert zs > 0
    # slab, vmalloc and page-table pages are never movable; LRU folios and zspages are
    assert int(_blocks(w).sum()) == 16 + 8 + zs


def test_movable_pages_per_pageblock_identical_at_every_stage():
    text = WORKLOAD + "pagecache 3000K file=g order=2\nfree half pagecache\nfree 25% zsmalloc\n"
    ref = None
    for stage in STAGE_IDS:
        w = _world(text, stage)
        per_block = _blocks(w)
        assert per_block.sum() > 0
        if ref is None:
            ref = per_block
        assert np.array_equal(per_block, ref), stage


@pytest.mark.parametrize("stage", STAGE_IDS)
def test_freed_folio_and_zspage_are_no_longer_movable(stage):
    w = _world(WORKLOAD + "free all pagecache\nexit all proc=p\nfree all zsmalloc\n", stage)
    assert int(_blocks(w).sum()) == 0


@pytest.mark.parametrize("stage", ("v6.18", "folio"))
def test_pg_lru_set_by_folio_add_lru_and_cleared_by_final_put(stage):
    w = _world("kmalloc 1 size=8 tag=t\n", stage)
    k = w.k
    f = F.folio_alloc_nb(k.E, gfp.GFP_HIGHUSER_MOVABLE, 2, int(k.slub.sp[SP_T_FILE]), 0)
    mem, S = k.mm.st
    pfn = F.folio_pfn(k.E, f)
    # not on an LRU yet: the kernel would not count it (folio_alloc() sets no PG_lru)
    assert not any(page_is_movable(mem, S, pfn + i) for i in range(4))
    F.folio_add_lru(k.E, f)
    assert F.folio_test_lru(k.E, f)
    assert all(page_is_movable(mem, S, pfn + i) for i in range(4))   # tails via the head
    with pytest.raises(AssertionError):
        F.folio_add_lru(k.E, f)                                       # VM_BUG_ON_FOLIO
    assert F.folio_put_refs(k.E, f, 1)
    assert not any(page_is_movable(mem, S, pfn + i) for i in range(4))
