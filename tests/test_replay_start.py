"""The replay's start state: mm.start_state sets up a running kernel's free lists directly,
and the pageblock migratetypes follow pagetypeinfo's counts (hand-worked examples)."""

from __future__ import annotations

import numpy as np
import pytest

from memdesc.analysis import replay_start as rs
from memdesc.mm import page_alloc as pa
from memdesc.mm.debug import check_memmap
from memdesc.mm.gfp import MIGRATE_MOVABLE, MIGRATE_RECLAIMABLE, MIGRATE_UNMOVABLE
from memdesc.mm.mmzone import Machine
from memdesc.mm.start_state import free_blocks, set_start_state


def test_free_blocks_are_the_maximal_aligned_blocks():
    busy = np.zeros(4096, np.uint8)
    busy[5] = 1                                  # free: [0,5) and [6, 4096)
    pfn, order = free_blocks(busy, [(0, 4096)])
    got = list(zip(pfn.tolist(), order.tolist(), strict=True))
    assert got[:4] == [(0, 2), (4, 0), (6, 1), (8, 3)]
    assert got[-2:] == [(2048, 10), (3072, 10)]
    assert sum(1 << o for _, o in got) == 4095


@pytest.mark.parametrize("stage", ["v6.18", "page32", "page8"])
def test_set_start_state_equals_freeing_and_taking(stage):
    """The direct start state has the free blocks the boot-then-take route leaves, on the
    lists of their pageblocks' types, and passes the allocator's invariant check."""
    m = Machine.from_spec("64M", hole_start="48M", dma32_end="64M")
    mm = pa.MemMap(m, stage, debug=False, free_all=False)
    managed = rs.managed_map(m)
    busy = ~managed.astype(bool)
    units = [(4096, 0), (4100, 2), (8192, 9)]
    for p, o in units:
        busy[p:p + (1 << o)] = True
    ranges = [r for z in m.zones for r in m.managed_ranges(z)]
    fpfn, ford = free_blocks(busy.view(np.uint8), ranges)
    mt = np.full(m.nr_pfns >> 9, MIGRATE_MOVABLE, np.int8)
    mt[8] = MIGRATE_UNMOVABLE               # pfn 4096..4607
    mt[16] = MIGRATE_RECLAIMABLE            # the order-9 unit's pageblock
    set_start_state(mm, mt, fpfn, ford, np.array([u[0] for u in units]),
                    np.array([u[1] for u in units], np.int8))
    check_memmap(mm)
    lists = pa.free_lists(mm)
    # pfn 4097 (order 0), 4098 (order 1) are free, on the Unmovable lists of pageblock 8
    assert 4097 in lists[("free", 0, 1, 0, MIGRATE_UNMOVABLE)]
    assert 4098 in lists[("free", 0, 1, 1, MIGRATE_UNMOVABLE)]
    ref = pa.MemMap(m, stage, debug=False)             # the boot route: all managed free
    free_pages = int(mm.zs[:, pa.Z_FREE].sum())
    assert free_pages == int(ref.zs[:, pa.Z_FREE].sum()) - (1 + 4 + 512)
    with pytest.raises(ValueError, match="empty free lists"):
        set_start_state(mm, mt, fpfn, ford, np.zeros(0, np.int64), np.zeros(0, np.int8))


def test_repair_moves_free_blocks_to_the_kernels_lists():
    """Two Unmovable-scored items, one with a free order-3 block: pagetypeinfo puts the
    order-3 block on Movable, so the repair swaps the free-holding item out of Unmovable."""
    typ = np.array([MIGRATE_UNMOVABLE, MIGRATE_MOVABLE, MIGRATE_MOVABLE], np.int64)
    Fi = np.zeros((3, 11), np.int64)
    Fi[0, 3] = 1
    kfree = np.zeros((5, 11), np.int64)
    kfree[MIGRATE_MOVABLE, 3] = 1
    rs._repair_nb(typ, Fi, np.ones(3, np.int64), kfree)
    assert typ[0] == MIGRATE_MOVABLE and (typ == MIGRATE_UNMOVABLE).sum() == 1
    assert rs._cost(typ, Fi, kfree) == 0
