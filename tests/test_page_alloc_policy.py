"""Allocator policy the kernel applies before fragmenting a zone, worked by hand at every stage.

ALLOC_NOFRAGMENT (alloc_flags_nofragment(), 6bb154504f8b "mm, page_alloc: spread allocations
across zones before introducing fragmentation", 5.0): while the preferred zone is ZONE_NORMAL
and its node has DMA32 memory, an allocation may not steal pages of another migratetype out
of a pageblock (__rmqueue_steal()) nor claim less than a whole pageblock (__rmqueue_claim()
with min_order = pageblock_order); it tries the lower zones first and drops the flag only
when every zone failed (get_page_from_freelist()).

The machine: DMA32 [4096, 4096 + dma32) and Normal [8192, 10240) on one node, no watermarks,
no lowmem reserve, the boot pageset (batch 1, high 0: every free reaches the buddy).
"""

from __future__ import annotations

import pytest

from memdesc.mm import page_alloc as pa
from memdesc.mm.gfp import (
    GFP,
    GFP_DMA32,
    GFP_HIGHUSER_MOVABLE,
    GFP_KERNEL,
    MIGRATE_MOVABLE,
    MIGRATE_RECLAIMABLE,
    MIGRATE_UNMOVABLE,
)
from memdesc.mm.mmzone import Machine, ZoneSpec
from test_page_alloc import ALL, pb_type

DMA32, NORMAL = 1, 2
NORMAL_LO, NORMAL_HI = 8192, 10240
_TUNING = {"min": 0, "low": 0, "high": 0, "batch": 1, "high_min": 0, "high_max": 0,
           "protection": (0, 0, 0, 0)}


def _machine(dma32_pages: int) -> Machine:
    return Machine.from_zones(
        [ZoneSpec(0, "DMA32", 4096, dma32_pages, dma32_pages, dma32_pages, **_TUNING),
         ZoneSpec(0, "Normal", NORMAL_LO, 2048, 2048, 2048, **_TUNING)],
        [(4096, 4096 + dma32_pages), (NORMAL_LO, NORMAL_HI)], nr_cpus=1)


def _fragment_normal(mm: pa.MemMap, keep_free, gfp: int = GFP_HIGHUSER_MOVABLE) -> None:
    """Fill Normal with order-0 pages of ``gfp``, then free those ``keep_free(pfn)`` selects:
    Normal is left with small free blocks only (no free block of order >= 9)."""
    got = [pa.alloc_pages(mm, gfp, 0) for _ in range(2048)]
    assert sorted(got) == list(range(NORMAL_LO, NORMAL_HI))     # the preferred zone first
    for pfn in got:
        if keep_free(pfn):
            pa.free_pages(mm, pfn, 0)


@pytest.fixture(params=ALL)
def stage(request):
    return request.param


def test_nofragment_claims_a_lower_zone_block_before_stealing(stage):
    """GFP_KERNEL (unmovable) order 0, Normal fragmented (3/4 of every movable pageblock
    free, but in blocks of order <= 1): Normal has no unmovable block, no fallback block of
    order >= pageblock_order, and may not steal; DMA32's first free order-10 block (4096,
    freed to the tail at boot) is claimed whole (try_to_claim_block(): current_order >=
    pageblock_order changes both pageblocks) and its first page handed out."""
    mm = pa.MemMap(_machine(2048), stage)
    _fragment_normal(mm, lambda pfn: pfn % 4 != 0)
    assert pa.zone_free_pages(mm)[NORMAL] == 1536
    page = pa.alloc_pages(mm, GFP_KERNEL, 0)
    assert page == 4096
    assert pb_type(mm, 4096) == pb_type(mm, 4608) == MIGRATE_UNMOVABLE
    assert all(pb_type(mm, p) == MIGRATE_MOVABLE for p in range(NORMAL_LO, NORMAL_HI, 512))
    assert mm.zs[DMA32, pa.Z_EXTFRAG] == 1 and mm.zs[NORMAL, pa.Z_EXTFRAG] == 0
    # the next unmovable page comes from the claimed block: unmovable stays grouped
    assert 4096 < pa.alloc_pages(mm, GFP_KERNEL, 0) < 5120


def test_nofragment_is_dropped_only_when_every_zone_failed(stage):
    """DMA32 (one pageblock) is full and Normal's pageblocks are reclaimable (the fill
    claimed them whole), a quarter of each free: every zone fails with ALLOC_NOFRAGMENT, the
    flag is dropped and the preferred zone is retried. There try_to_claim_block() refuses
    (128 free < 256 and, the block not being movable, no alike pages), so __rmqueue_steal()
    takes an order-0 block of the first fallback type (fallbacks[UNMOVABLE] starts with
    RECLAIMABLE) and the pageblock keeps its type."""
    mm = pa.MemMap(_machine(512), stage)
    while pa.alloc_pages(mm, GFP_DMA32, 0) >= 0:
        pass
    assert pa.zone_free_pages(mm)[DMA32] == 0
    _fragment_normal(mm, lambda pfn: pfn % 4 == 1, GFP_KERNEL | GFP.RECLAIMABLE)
    assert all(pb_type(mm, p) == MIGRATE_RECLAIMABLE for p in range(NORMAL_LO, NORMAL_HI, 512))
    steals = mm.zs[NORMAL, pa.Z_EXTFRAG]
    page = pa.alloc_pages(mm, GFP_KERNEL, 0)
    assert NORMAL_LO <= page < NORMAL_HI and page % 4 == 1
    assert pb_type(mm, page) == MIGRATE_RECLAIMABLE
    assert mm.zs[NORMAL, pa.Z_EXTFRAG] == steals + 1
    assert pa.zone_free_pages(mm)[NORMAL] == 512 - 1
