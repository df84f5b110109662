"""Fragmentation metrics: the kernel's integer formulas (mm/vmstat.c), checked by hand on a real
buddyinfo, plus free 2 MiB blocks and LLFree's free-huge/optimal score."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import fixture_dir
from memdesc.analysis import fragmentation as fr
from memdesc.ingest.procfs import parse_buddyinfo


def test_dma32_of_trace_pagecache_by_hand():
    """DMA32 of trace-pagecache/pre-snapshot/buddyinfo.before, computed by hand below."""
    bi = parse_buddyinfo((fixture_dir("trace-pagecache") / "pre-snapshot" / "buddyinfo.before")
                         .read_text())
    counts = bi[(0, "DMA32")]
    assert counts == [1, 2, 4, 2, 5, 4, 3, 3, 4, 2, 752]
    # free pages: 1 + 2*2 + 4*4 + 2*8 + 5*16 + 4*32 + 3*64 + 3*128 + 4*256 + 2*512 + 752*1024
    free = 1 + 4 + 16 + 16 + 80 + 128 + 192 + 384 + 1024 + 1024 + 770048
    assert free == 772917                    # = managed: the zone is entirely free (README)
    z = fr.zone_fragmentation(0, "DMA32", counts)
    assert z.free_pages == free
    # order 9: suitable = 2 + 752*2 = 1506 blocks; unusable = (772917 - 1506*512) * 1000 / free
    assert z.unusable_index[9] == (free - 1506 * 512) * 1000 // free == 2
    # order 10: suitable = 752; (772917 - 770048) * 1000 / 772917 = 3.71 -> 3
    assert z.unusable_index[10] == 3
    # order 0: every free page is usable
    assert z.unusable_index[0] == 0
    # a block of every order exists: the fragmentation index is -1000 everywhere
    assert z.extfrag_index == [-1000] * 11
    assert z.free_2m_blocks == 1506
    assert z.free_huge_percent == pytest.approx(100.0 * 1506 / (free >> 9))
    text = fr.debugfs_text([z], "unusable")
    assert text == ("Node 0, zone    DMA32 0.000 0.000 0.000 0.000 0.000 0.000 0.000 0.000 "
                    "0.001 0.002 0.003 \n")


def test_extfrag_when_allocations_would_fail():
    counts = [10, 5] + [0] * 9                  # 20 free pages in 15 blocks, nothing >= order 2
    ext = fr.fragmentation_index(counts)
    assert ext[0] == ext[1] == -1000            # those orders would succeed
    assert ext[2] == 1000 - (1000 + 20 * 1000 // 4) // 15 == 600
    assert ext[10] == 1000 - (1000 + 20 * 1000 // 1024) // 15 == 933
    assert fr.unusable_free_index(counts)[2] == 1000   # none of the free memory is usable
    assert fr.format_index(-1000, 2) == "-1.000"
    assert fr.format_index(933, 2) == " 0.933"
    assert fr.format_index(5) == "0.005"


def test_empty_zone_and_vectorised_shapes():
    empty = [0] * 11
    assert fr.unusable_free_index(empty).tolist() == [1000] * 11
    assert fr.fragmentation_index(empty).tolist() == [0] * 11
    assert np.isnan(fr.free_huge_score(empty))
    many = np.array([[empty, [0] * 10 + [1]], [[1] * 11, [3] + [0] * 10]])
    assert fr.unusable_free_index(many).shape == (2, 2, 11)
    assert fr.free_pageblocks(many).tolist() == [[0, 2], [3, 0]]
    with pytest.raises(ValueError):
        fr.unusable_free_index([1, 2, 3])


@given(st.lists(st.integers(0, 5000), min_size=11, max_size=11))
def test_indices_stay_in_range(counts):
    u = fr.unusable_free_index(counts)
    e = fr.fragmentation_index(counts)
    assert ((u >= 0) & (u <= 1000)).all()
    # __fragmentation_index() is 1000 - (1000 + 1000 * free / 2^order) / blocks: below 0 when
    # few free blocks hold much of the request, never below -1000
    # (-1000 itself means a suitable block exists).
    assert ((e >= -1000) & (e <= 1000)).all()
    suitable = np.array([sum(counts[k] for k in range(o, 11)) for o in range(11)])
    assert ((e == -1000) == (suitable > 0)).all()
    # unusable index never decreases with the order (fewer blocks are large enough)
    assert (np.diff(u) >= 0).all()


def test_fragmentation_index_goes_negative_like_the_kernel():
    """One free order-9 block, asked for order 10: 1000 - (1000 + 512000 / 1024) / 1 = -500,
    which the kernel's integer formula returns too (mm/vmstat.c __fragmentation_index())."""
    counts = [0] * 9 + [1, 0]
    assert fr.fragmentation_index(counts)[10] == -500
