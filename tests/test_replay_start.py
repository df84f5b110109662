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


def test_placement_forgets_blocks_inside_a_freed_block():
    """The snapshot shows four order-0 units at 8192..8195; the trace frees an order-2 block
    at 8192 (onto a pcp list), then drains 8194 (its first event: a snapshot pcp page, as
    far as the replay knows) and then the order-2 block. The unit at 8194 was forgotten
    when the larger block was freed, so its drain only learns the pageblock type: freeing
    it again would put a page of a pcp block on the buddy lists (corrupt lists)."""
    from memdesc.analysis import replay_loops as rl
    from memdesc.analysis.replay_ops import MISMATCHES, OP_DRAIN, OP_FREE, ST_SNAP

    m = Machine.from_spec("64M", hole_start="48M", dma32_end="64M")
    mm = pa.MemMap(m, "page8", debug=False, free_all=False)
    managed = rs.managed_map(m)
    busy = ~managed.astype(bool)
    heads = np.arange(8192, 8196)
    busy[heads] = True
    ranges = [r for z in m.zones for r in m.managed_ranges(z)]
    fpfn, ford = free_blocks(busy.view(np.uint8), ranges)
    set_start_state(mm, np.full(m.nr_pfns >> 9, MIGRATE_MOVABLE, np.int8), fpfn, ford, heads,
                    np.zeros(4, np.int8))
    n = m.nr_pfns
    st, blk, pcpu = np.zeros(n, np.int8), np.zeros(n, np.int8), np.zeros(n, np.int16)
    st[heads] = ST_SNAP
    ucls, uord = np.full(n, -1, np.int8), np.full(n, -1, np.int8)
    ucls[heads], uord[heads] = 0, 0
    units = np.zeros((16, 12), np.int64)
    units[0, 0] = 4
    kind = np.array([OP_FREE, OP_DRAIN, OP_DRAIN], np.int8)
    pfn = np.array([8192, 8194, 8192], np.int64)
    order = np.array([2, 0, 2], np.int8)
    mt = np.full(3, MIGRATE_MOVABLE, np.int64)
    ones = np.ones(3, np.uint8)
    first = np.array([1, 1, 0], np.uint8)
    mism = np.zeros((len(MISMATCHES), 3), np.int64)
    spos = np.array([10], np.int64)
    nr_free, pcp = np.zeros((1, 4, 11), np.int64), np.zeros((1, 4), np.int64)
    units_s = np.zeros((1, 16, 12), np.int64)
    rl._placement_loop(mm.mem, mm.S, 0, 3, kind, pfn, order, mt, np.zeros(3, np.int64),
                       np.zeros(3, np.int8), np.arange(3), ones.astype(bool), first, managed,
                       st, blk, pcpu, ucls, uord, units, mism, spos, 0, nr_free, pcp, units_s)
    counts = dict(zip(MISMATCHES, mism[:, 0].tolist(), strict=True))
    assert counts["drain_claimed_untraced"] == 1 and counts["drain_snapshot_pcp"] == 0
    assert int(mm.pcp[:, :, pa.P_COUNT].sum()) == 0 and units.sum() == 0
    check_memmap(mm)
