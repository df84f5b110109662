"""page8/bitmap (LLFree-style) and page8/slist (singly linked + per-order bitmaps): hand-worked
kernel examples, the walks they count, and their side memory in the cost model and in
``memdesc stages``."""

from __future__ import annotations

import numpy as np
import pytest

from memdesc.analysis.cost import stage_cost
from memdesc.mm import free_tracking as ft
from memdesc.mm import page_alloc as pa
from memdesc.mm import zone_state
from memdesc.mm.gfp import GFP_KERNEL, MIGRATE_MOVABLE
from memdesc.mm.mmzone import Machine
from memdesc.stages import TRACKING, get_stage
from test_cost import TABLE, hand_census

MACHINE = Machine.from_spec("64M", hole_start="32M", dma32_end="40M")
B = 4096                                   # DMA32 starts here (zone 1), RAM up to 8192
NEW = ("page8/bitmap", "page8/slist")


def _empty(stage: str) -> tuple[pa.MemMap, int]:
    """A MemMap of ``stage`` with empty free lists; the DMA32 order-0 MOVABLE list head."""
    mm = pa.MemMap(MACHINE, stage, debug=False, free_all=False)
    return mm, zone_state.free_head(mm.S, 1, 0, MIGRATE_MOVABLE)


def _add(mm, h, pfns, tail=True):
    for p in pfns:
        ft.set_buddy_order(mm.mem, mm.S, p, 0)
        ft.fl_add(mm.mem, mm.S, p, h, 1, 0, tail)


def _walk(mm, h) -> list[int]:
    out, node = [], ft.fl_next(mm.mem, mm.S, -1 - h, h, 1, 0)
    while node >= 0:
        out.append(node)
        node = ft.fl_next(mm.mem, mm.S, node, h, 1, 0)
    return out


def test_zone_row_columns_agree():
    from memdesc.mm import ft_common
    assert (ft_common.Z_START, ft_common.Z_END) == (zone_state.Z_START, zone_state.Z_END)


def test_slist_removal_from_the_middle_walks_from_the_head():
    """List 100 -> 200 -> 300 -> 400 (added at the tail): removing 300 reads the next link of
    100 and of 200 (2 steps); removing the first (100) walks nothing; the last stays right."""
    mm, h = _empty("page8/slist")
    _add(mm, h, [B + 100, B + 200, B + 300, B + 400])
    assert _walk(mm, h) == [B + 100, B + 200, B + 300, B + 400]
    ft.fl_del(mm.mem, mm.S, B + 300, h, 1, 0)
    assert ft.walk_stats(mm.S) == (1, 2, 2, 1)
    ft.fl_del(mm.mem, mm.S, B + 100, -1, 1, 0)          # the head found from the word
    assert ft.walk_stats(mm.S) == (1, 2, 2, 2)
    assert _walk(mm, h) == [B + 200, B + 400]
    ft.fl_del(mm.mem, mm.S, B + 400, h, 1, 0)            # the last: 1 step, tail moves back
    assert ft.walk_stats(mm.S) == (2, 3, 2, 3)
    assert ft.fl_last(mm.mem, mm.S, h, 1, 0) == B + 200
    assert ft.fl_first(mm.mem, mm.S, h, 1, 0) == B + 200


def test_slist_keeps_head_insertion_order():
    mm, h = _empty("page8/slist")
    _add(mm, h, [B + 8, B + 16], tail=False)
    _add(mm, h, [B + 24], tail=True)
    assert _walk(mm, h) == [B + 16, B + 8, B + 24]
    assert ft.fl_last(mm.mem, mm.S, h, 1, 0) == B + 24


def test_bitmap_takes_the_lowest_address_and_counts_its_search():
    """Blocks added at 3000, 1000, 2000 (past the zone start 4096): the first is 1000,
    found in 3 steps (its pageblock's counter, its bitmap word, its struct page). After
    1000 is gone the search starts at the cursor (1000): pageblock 9's counter (0), 10's
    (0), 11's (1), the 8 bitmap words of pageblock 11 up to bit 2000 and the struct page of
    2000: 12 steps."""
    mm, h = _empty("page8/bitmap")
    _add(mm, h, [B + 3000, B + 1000, B + 2000])
    assert not ft.fl_empty(mm.mem, mm.S, h, 1, 0)
    assert ft.fl_first(mm.mem, mm.S, h, 1, 0) == B + 1000
    assert ft.walk_stats(mm.S) == (1, 3, 3, 1)
    ft.fl_del(mm.mem, mm.S, B + 1000, -1, 1, 0)
    assert ft.fl_first(mm.mem, mm.S, h, 1, 0) == B + 2000
    assert ft.walk_stats(mm.S) == (2, 15, 12, 2)
    assert _walk(mm, h) == [B + 2000, B + 3000]
    ft.fl_del(mm.mem, mm.S, B + 2000, h, 1, 0)
    ft.fl_del(mm.mem, mm.S, B + 3000, h, 1, 0)
    assert ft.fl_empty(mm.mem, mm.S, h, 1, 0)


def test_bitmap_move_changes_the_list_not_the_bits():
    mm, h = _empty("page8/bitmap")
    nh = zone_state.free_head(mm.S, 1, 0, 0)
    _add(mm, h, [B + 5, B + 9])
    ft.fl_move(mm.mem, mm.S, B + 5, h, nh, 1, 0)
    assert _walk(mm, h) == [B + 9] and _walk(mm, nh) == [B + 5]


def _four_order4(stage: str) -> tuple[pa.MemMap, list[int]]:
    """GFP_KERNEL claims the Normal zone's first order-10 block (10240) and splits it: the
    order-4 blocks A..D are 10240, 10256, 10272, 10288."""
    mm = pa.MemMap(MACHINE, stage)
    return mm, [pa.alloc_pages(mm, GFP_KERNEL, 4) for _ in range(4)]


@pytest.mark.parametrize("stage", ("page8", *NEW))
def test_which_free_block_is_taken_and_merging(stage):
    """Free A then D (neither buddy free: no merge, each goes to the head of the order-4
    list): the list options take D (the last freed), bitmap takes A (the lowest address).
    Give it back, free B: it merges with A at 10240 (order 5) and stops at C; free C: it
    merges with D, then with 10240's order-5 block and the rest up to order 10 at 10240."""
    mm, (a, b, c, d) = _four_order4(stage)
    assert (a, b, c, d) == (10240, 10256, 10272, 10288)
    pa.free_pages(mm, a, 4)
    pa.free_pages(mm, d, 4)
    got = pa.alloc_pages(mm, GFP_KERNEL, 4)
    assert got == (a if stage == "page8/bitmap" else d)
    pa.free_pages(mm, got, 4)
    pa.free_pages(mm, b, 4)
    assert ft.buddy_order_of(mm.mem, mm.S, a) == 5
    assert ft.buddy_order_of(mm.mem, mm.S, b) == -1
    assert ft.buddy_order_of(mm.mem, mm.S, d) == 4
    pa.free_pages(mm, c, 4)
    assert ft.buddy_order_of(mm.mem, mm.S, a) == 10
    mm.check()


def test_list_options_count_no_walks():
    mm, _ = _four_order4("page8")
    assert ft.walk_stats(mm.S) is None


@pytest.mark.parametrize("name,side", [("bitmap", 66), ("slist", 128)])
def test_side_memory_is_charged(name, side):
    """512 pages: bitmap 512 × (1/8 + 2/512) = 66 B, slist 2 bits per page = 128 B."""
    c = hand_census(512, anon={9: 1})
    cost = stage_cost(c, get_stage(f"page8/{name}"), TABLE)
    assert cost.by_type["free_tracking_side"] == side


def test_stages_say_bitmap_is_not_in_list_order():
    from memdesc.cli.stages import tracking_lines
    lines = "\n".join(tracking_lines(get_stage("page8/bitmap")))
    assert "NOT the kernel's" in lines and "0.128906 B per 4 KiB page" in lines
    assert "NOT" not in "\n".join(tracking_lines(get_stage("page8/slist")))
    assert not TRACKING["bitmap"].keeps_list_order and TRACKING["slist"].keeps_list_order


def test_side_region_fits_the_bitmaps():
    """The last bit of every bitmap lies inside the side region (no write past S)."""
    for stage in NEW:
        mm, _ = _empty(stage)
        assert mm.S.shape[0] - mm.cfg[ft.C_OFF_SIDE] == ft.side_words(mm.stage, mm.nr_pfns)
    assert np.all(mm.S[mm.cfg[ft.C_OFF_SIDE]:] == 0)


@pytest.mark.parametrize("stage", NEW)
def test_side_memory_accesses_are_counted(stage):
    """A buddy allocation and free (order 4: no pcp list) read and write the option's side
    memory (bitmaps, counters): addresses of the side region, from HEADS_BASE in S order
    (memdesc.mm.access)."""
    from memdesc.mm import access
    from memdesc.mm.ft_common import HEADS_BASE

    mm = pa.MemMap(MACHINE, stage, debug=False)
    access.enable(mm, 100_000)
    pfn = pa.alloc_pages(mm, GFP_KERNEL, 4)
    pa.free_pages(mm, pfn, 4)
    s = access.drain(mm)
    side = HEADS_BASE + 8 * (int(mm.cfg[ft.C_OFF_SIDE]) - int(mm.cfg[ft.C_OFF_HEADS]))
    top = HEADS_BASE + 8 * (len(mm.S) - int(mm.cfg[ft.C_OFF_HEADS]))
    inside = (s.addr >= np.uint64(side)) & (s.addr < np.uint64(top))
    assert s.nr_ops == 2 and inside.sum() > 0
    stores = inside & ((s.kind & access.KIND_STORE) != 0)
    assert stores.sum() > 0
