"""The buddy allocator and pcp lists against hand-worked kernel examples, at every stage.

Most examples use a small Normal zone [4096, 6144) (two order-10 blocks, four pageblocks)
with the boot pageset's pcp sizes (batch 1, high 0: every free passes straight through to the
buddy, as before setup_per_cpu_pageset()) and no watermarks, so the buddy behaviour is exact.
"""

from __future__ import annotations

import numpy as np
import pytest

from memdesc.mm import page_alloc as pa
from memdesc.mm.gfp import (
    GFP,
    GFP_ATOMIC,
    GFP_DMA,
    GFP_DMA32,
    GFP_HIGHUSER_MOVABLE,
    GFP_KERNEL,
    MIGRATE_ISOLATE,
    MIGRATE_MOVABLE,
    MIGRATE_RECLAIMABLE,
    MIGRATE_UNMOVABLE,
)
from memdesc.mm.kmem import PAGE_OFFSET, VMEMMAP_START, PageContents
from memdesc.mm.memdesc import memdesc_decode, memdesc_ptr
from memdesc.mm.mm_types import FOLIO_V6_18, FieldAbsent, flags_node_zone, layout_dtype
from memdesc.mm.mmzone import Machine, ZoneSpec
from memdesc.stages import STAGE_IDS, TRACKING, get_stage, tracking_variants

#: every stage with every registered free-page tracking option, plus a type-table case
_DEFAULTS = [get_stage(s) for s in STAGE_IDS]
ALL = list(STAGE_IDS) + [v for v in tracking_variants()
                         if get_stage(v) not in _DEFAULTS] + ["page16@rev-a"]
MOVABLE = GFP_HIGHUSER_MOVABLE
NORMAL = 2


def tiny(managed=2048, start=4096, **tun) -> Machine:
    tun = {"min": 0, "low": 0, "high": 0, "batch": 1, "high_min": 0, "high_max": 0} | tun
    return Machine.from_zones([ZoneSpec(0, "Normal", start, managed, managed, managed, **tun)],
                              [(start, start + managed)], nr_cpus=1)


def lists(mm, kind="free", zone=NORMAL):
    """{(order, mt): [pfns]} of one zone's free lists (or {(cpu, pindex): ...} pcp lists)."""
    return {k[3:]: v for k, v in pa.free_lists(mm).items() if k[0] == kind and k[2] == zone}


def pb_type(mm, pfn):
    return int(mm.pb[pfn >> 9]) & 7


@pytest.fixture(params=ALL)
def stage(request):
    return request.param


def test_boot_frees_max_order_blocks_to_the_tail(stage):
    mm = pa.MemMap(tiny(), stage)
    assert lists(mm) == {(10, MIGRATE_MOVABLE): [4096, 5120]}
    assert pa.zone_free_pages(mm)[NORMAL] == 2048


def test_split_as_expand(stage):
    """alloc order 3 from an order-10 block: upper halves of order 9..3 go back (expand())."""
    mm = pa.MemMap(tiny(), stage)
    assert pa.alloc_pages(mm, MOVABLE, 3) == 4096
    want = {(o, MIGRATE_MOVABLE): [4096 + (1 << o)] for o in range(3, 10)}
    want[(10, MIGRATE_MOVABLE)] = [5120]
    assert lists(mm) == want
    assert pa.zone_free_pages(mm)[NORMAL] == 2048 - 8
    pa.free_pages(mm, 4096, 3)                       # __free_one_page() merges back to 10
    assert lists(mm) == {(10, MIGRATE_MOVABLE): [4096, 5120]}


def test_merge_and_tail_insertion(stage):
    """__free_one_page(): buddy_pfn = pfn ^ (1 << order); a block whose order+1 buddy is free
    goes to the tail (buddy_merge_likely())."""
    mm = pa.MemMap(tiny(), stage)
    pfns = [pa.alloc_pages(mm, MOVABLE, 0) for _ in range(8)]
    assert pfns == list(range(4096, 4104))
    pa.free_pages(mm, 4102)              # buddy 4103 in use, 4100-4101 in use: head
    pa.free_pages(mm, 4096)
    pa.free_pages(mm, 4097)              # merges with 4096 into an order-1 block
    assert lists(mm)[(1, MIGRATE_MOVABLE)] == [4096]
    pa.free_pages(mm, 4098)              # its order-1 buddy (4096) is free: tail
    in_order = TRACKING[get_stage(stage).free_tracking].keeps_list_order
    assert lists(mm)[(0, MIGRATE_MOVABLE)] == ([4102, 4098] if in_order else [4098, 4102])
    pa.free_pages(mm, 4099)              # 4098+4099 -> order 1, + 4096 -> order 2
    assert lists(mm)[(2, MIGRATE_MOVABLE)] == [4096]


def test_no_merge_across_zones(stage):
    """The order-10 block [4096, 5120) straddles DMA32 | Normal: its halves never merge."""
    m = Machine.from_zones(
        [ZoneSpec(0, "DMA32", 4096, 512, 512, 512, 0, 0, 0, None, 1, 0, 0),
         ZoneSpec(0, "Normal", 4608, 1536, 1536, 1536, 0, 0, 0, None, 1, 0, 0)],
        [(4096, 6144)], nr_cpus=1)
    mm = pa.MemMap(m, stage)
    assert lists(mm, zone=1) == {(9, MIGRATE_MOVABLE): [4096]}
    assert lists(mm, zone=2) == {(9, MIGRATE_MOVABLE): [4608], (10, MIGRATE_MOVABLE): [5120]}
    p = pa.alloc_pages(mm, MOVABLE, 9, 0)
    assert p == 4608
    pa.free_pages(mm, p, 9)
    assert lists(mm, zone=1) == {(9, MIGRATE_MOVABLE): [4096]}
    assert pa.page_zone(mm, 4607).name == "DMA32" and pa.page_zone(mm, 4608).name == "Normal"


def test_isolated_pageblock_does_not_merge(stage):
    """At pageblock_order, an isolated buddy stops the merge; unisolating merges them."""
    mm = pa.MemMap(tiny(), stage)
    a, b = pa.alloc_pages(mm, MOVABLE, 9), pa.alloc_pages(mm, MOVABLE, 9)
    assert (a, b) == (4096, 4608)
    assert pa.set_pageblock_isolate(mm, b)
    pa.free_pages(mm, b, 9)
    pa.free_pages(mm, a, 9)
    assert lists(mm) == {(9, MIGRATE_MOVABLE): [4096], (9, MIGRATE_ISOLATE): [4608],
                         (10, MIGRATE_MOVABLE): [5120]}
    assert pa.zone_free_pages(mm)[NORMAL] == 2048 - 512          # isolated is not free
    assert pa.clear_pageblock_isolate(mm, b)
    assert lists(mm) == {(10, MIGRATE_MOVABLE): [4096, 5120]}


def test_isolating_inside_a_larger_free_block_splits_it(stage):
    mm = pa.MemMap(tiny(), stage)
    assert pa.set_pageblock_isolate(mm, 4608)
    assert lists(mm) == {(9, MIGRATE_MOVABLE): [4096], (9, MIGRATE_ISOLATE): [4608],
                         (10, MIGRATE_MOVABLE): [5120]}
    assert not pa.set_pageblock_isolate(mm, 4700)                # already isolated
    assert pa.alloc_pages(mm, MOVABLE, 10) == 5120               # never from the isolated one


def test_claim_whole_block_for_unmovable(stage):
    """UNMOVABLE with no UNMOVABLE blocks: __rmqueue_claim() takes the largest MOVABLE block
    (order 10 >= pageblock_order: try_to_claim_block() converts both pageblocks)."""
    mm = pa.MemMap(tiny(), stage)
    assert pa.alloc_pages(mm, GFP_KERNEL, 0) == 4096
    assert pb_type(mm, 4096) == pb_type(mm, 4608) == MIGRATE_UNMOVABLE
    assert pb_type(mm, 5120) == MIGRATE_MOVABLE
    got = lists(mm)
    assert got[(0, MIGRATE_UNMOVABLE)] == [4097] and got[(9, MIGRATE_UNMOVABLE)] == [4608]
    assert got[(10, MIGRATE_MOVABLE)] == [5120]
    assert mm.zs[NORMAL, pa.Z_EXTFRAG] == 1


def test_fallback_order(stage):
    """fallbacks[RECLAIMABLE] = {UNMOVABLE, MOVABLE}: with both at order 9, UNMOVABLE wins."""
    mm = pa.MemMap(tiny(), stage)
    pa.alloc_pages(mm, GFP_KERNEL, 0)                 # UNMOVABLE claims [4096, 5120)
    assert pa.alloc_pages(mm, MOVABLE, 9) == 5120     # MOVABLE keeps an order-9 at 5632
    assert lists(mm)[(9, MIGRATE_MOVABLE)] == [5632]
    assert pa.alloc_pages(mm, GFP_KERNEL | GFP.RECLAIMABLE, 0) == 4608
    assert pb_type(mm, 4608) == MIGRATE_RECLAIMABLE and pb_type(mm, 5632) == MIGRATE_MOVABLE


def test_fallback_order_for_movable(stage):
    """fallbacks[MOVABLE] = {RECLAIMABLE, UNMOVABLE} (mm/page_alloc.c): with an order-9
    block free on each and none MOVABLE, __rmqueue_claim() takes the RECLAIMABLE one."""
    mm = pa.MemMap(tiny(), stage)
    assert pa.alloc_pages(mm, GFP_KERNEL, 0) == 4096           # UNMOVABLE claims [4096, 5120)
    assert pa.alloc_pages(mm, GFP_KERNEL | GFP.RECLAIMABLE, 9) == 5120   # claims [5120, 6144)
    got = lists(mm)
    assert got[(9, MIGRATE_UNMOVABLE)] == [4608] and got[(9, MIGRATE_RECLAIMABLE)] == [5632]
    assert not any(mt == MIGRATE_MOVABLE for _, mt in got)
    assert pa.alloc_pages(mm, MOVABLE, 9) == 5632
    assert pb_type(mm, 5632) == MIGRATE_MOVABLE and pb_type(mm, 4608) == MIGRATE_UNMOVABLE


def test_fallback_order_for_unmovable(stage):
    """fallbacks[UNMOVABLE] = {RECLAIMABLE, MOVABLE} (mm/page_alloc.c): with an order-9
    block free on each of those lists, none UNMOVABLE and nothing bigger, __rmqueue_claim()
    takes the RECLAIMABLE one whole and converts its pageblock."""
    mm = pa.MemMap(tiny(), stage)
    # RECLAIMABLE claims the whole order-10 block at 4096 (fallbacks[RECLAIMABLE] reaches
    # MOVABLE) and keeps 4608; MOVABLE then splits 5120 and keeps 5632
    assert pa.alloc_pages(mm, GFP_KERNEL | GFP.RECLAIMABLE, 9) == 4096
    assert pa.alloc_pages(mm, MOVABLE, 9) == 5120
    assert lists(mm) == {(9, MIGRATE_RECLAIMABLE): [4608], (9, MIGRATE_MOVABLE): [5632]}
    assert pa.alloc_pages(mm, GFP_KERNEL, 9) == 4608
    assert pb_type(mm, 4608) == MIGRATE_UNMOVABLE and pb_type(mm, 5632) == MIGRATE_MOVABLE


def test_steal_without_claim_for_small_movable(stage):
    """A small MOVABLE allocation does not claim (should_try_claim_block() is false below
    order 4): __rmqueue_steal() takes the smallest fallback block, the pageblock stays."""
    mm = pa.MemMap(tiny(managed=1024), stage)
    pa.alloc_pages(mm, GFP_KERNEL, 0)                 # all unmovable now
    for o in range(9, 3, -1):
        pa.alloc_pages(mm, GFP_KERNEL, o)
    assert set(lists(mm)) == {(o, MIGRATE_UNMOVABLE) for o in range(4)}
    assert pa.alloc_pages(mm, MOVABLE, 0) == 4097
    assert pa.alloc_pages(mm, MOVABLE, 1) == 4098
    assert pb_type(mm, 4096) == MIGRATE_UNMOVABLE
    assert mm.zs[NORMAL, pa.Z_EXTFRAG] == 3


def test_partial_pageblock_claim_needs_half_free(stage):
    """try_to_claim_block() below pageblock_order converts the pageblock only when free +
    compatible pages reach half of it (here 256 free pages of 512, order 8 fallback)."""
    mm = pa.MemMap(tiny(managed=1024), stage)
    a = pa.alloc_pages(mm, MOVABLE, 9)                         # 4096..4607 movable, in use
    b = pa.alloc_pages(mm, MOVABLE, 8)                         # 4608..4863 in use
    assert (a, b) == (4096, 4608)
    # UNMOVABLE order 0: claim finds MOVABLE order 8 at 4864 in pageblock 4608: free 256,
    # alike = 512 - (256 free + 0 movable) = 256 -> 512 >= 256: claimed
    assert pa.alloc_pages(mm, GFP_KERNEL, 0) == 4864
    assert pb_type(mm, 4608) == MIGRATE_UNMOVABLE and pb_type(mm, 4096) == MIGRATE_MOVABLE


def test_pcp_lists_hold_pages_until_high():
    """With real pcp sizes freed pages wait on the pcp list (not PageBuddy, not in
    NR_FREE_PAGES) until pcp->count reaches pcp->high, then free_pcppages_bulk()."""
    mm = pa.MemMap(tiny(batch=4, high_min=16, high_max=16), "v6.18")
    pfns = [pa.alloc_pages(mm, MOVABLE, 0) for _ in range(4)]
    pcp = mm.pcp[NORMAL, 0]
    # nr_pcp_alloc(): batch << alloc_factor... rmqueue_bulk() brought in a batch of 4
    assert pfns == [4096, 4097, 4098, 4099] and pcp[pa.P_COUNT] == 0
    assert pa.alloc_pages(mm, MOVABLE, 0) == 4100
    assert pcp[pa.P_COUNT] == 7               # alloc_factor doubled the next batch to 8
    for p in pfns:
        pa.free_pages(mm, p)
    assert pcp[pa.P_COUNT] == 11
    assert lists(mm, "pcp")[(0, 1)][:4] == [4099, 4098, 4097, 4096]   # list_add: newest first
    assert pa.zone_free_pages(mm)[NORMAL] == 2048 - 12
    pa.drain_all_pages(mm)
    assert pcp[pa.P_COUNT] == 0 and pa.zone_free_pages(mm)[NORMAL] == 2047
    assert not lists(mm, "pcp")


def test_order_to_pindex():
    assert pa.order_to_pindex(MIGRATE_UNMOVABLE, 0) == 0
    assert pa.order_to_pindex(MIGRATE_RECLAIMABLE, 3) == 11
    assert pa.order_to_pindex(MIGRATE_MOVABLE, 9) == 13
    assert pa.order_to_pindex(MIGRATE_UNMOVABLE, 9) == 12
    assert [pa.pindex_to_order(i) for i in range(14)] == [0] * 3 + [1] * 3 + [2] * 3 + \
        [3] * 3 + [9, 9]


def test_watermarks_and_reserves(stage):
    """GFP_KERNEL stops at the min watermark; GFP_ATOMIC (ALLOC_MIN_RESERVE|ALLOC_NON_BLOCK)
    may take min - min/2 - (min/2)/4; __GFP_MEMALLOC ignores watermarks."""
    mm = pa.MemMap(tiny(managed=1024, min=100, low=150, high=200), stage)
    n = 0
    while pa.alloc_pages(mm, MOVABLE, 0) >= 0:
        n += 1
    assert n == 1024 - 100
    m = 0
    while pa.alloc_pages(mm, GFP_ATOMIC | GFP.MOVABLE, 0) >= 0:
        m += 1
    assert m == 100 - 38
    k = 0
    while pa.alloc_pages(mm, GFP_ATOMIC | GFP.MEMALLOC, 0) >= 0:
        k += 1
    assert k == 38 and pa.zone_free_pages(mm)[NORMAL] == 0


def test_zone_selection_by_gfp():
    m = Machine.from_spec("8G", movable="2G")
    mm = pa.MemMap(m, "page16", debug=False)
    zone = lambda gfp: pa.page_zone(mm, pa.alloc_pages(mm, gfp, 0)).name  # noqa: E731
    assert zone(GFP_DMA) == "DMA"
    assert zone(GFP_DMA32) == "DMA32"
    assert zone(GFP_KERNEL) == "Normal"
    assert zone(GFP_KERNEL | GFP.MOVABLE) == "Normal"
    assert zone(GFP_HIGHUSER_MOVABLE) == "Movable"


def test_lower_zone_fallback_respects_lowmem_reserve():
    m = Machine.from_spec("64M", hole_start="32M", dma32_end="40M")
    mm = pa.MemMap(m, "v6.18", debug=False)
    zones = []
    while (p := pa.alloc_pages(mm, GFP_KERNEL, 0)) >= 0:
        zones.append(pa.page_zone(mm, p).name)
    assert zones[0] == "Normal" and "DMA32" in zones and "DMA" in zones
    # DMA keeps lowmem_reserve[Normal] + min free for GFP_KERNEL callers
    p = m.params(0, 0)
    assert pa.zone_free_pages(mm)[0] <= p.min + p.lowmem_reserve[2] + 1
    assert pa.alloc_pages(mm, GFP_DMA, 0) >= 0       # DMA's own allocations still succeed


def test_two_nodes_prefer_the_local_node():
    m = Machine.from_zones([ZoneSpec(0, "Normal", 32768, 1024, 1024, 1024),
                            ZoneSpec(1, "Normal", 65536, 1024, 1024, 1024)],
                           [(32768, 33792), (65536, 66560)], nr_cpus=2)
    mm = pa.MemMap(m, "page8")
    assert pa.page_to_nid(mm, pa.alloc_pages(mm, GFP_KERNEL, 0, nid=1, cpu=1)) == 1
    assert pa.page_to_nid(mm, pa.alloc_pages(mm, GFP_KERNEL, 0, nid=0)) == 0
    while pa.alloc_pages(mm, GFP_KERNEL | GFP.THISNODE, 5, nid=1) >= 0:
        pass
    assert pa.page_to_nid(mm, pa.alloc_pages(mm, GFP_KERNEL, 5, nid=1)) == 0   # falls back


def test_highatomic_reserve(stage):
    """A high-order atomic allocation that needed the slow path (below the low watermark)
    reserves its pageblock (reserve_highatomic_pageblock()); ordinary allocations cannot use
    the reserve."""
    mm = pa.MemMap(tiny(managed=65536, start=65536, min=1000, low=65536, high=65536), stage)
    p = pa.alloc_pages(mm, GFP_ATOMIC, 2)
    assert pb_type(mm, p) == 3 and mm.zs[NORMAL, pa.Z_RES_HA] == 512
    free_ha = mm.zs[NORMAL, pa.Z_FREE_HA]
    assert free_ha == 512 - 4
    q = pa.alloc_pages(mm, MOVABLE, 2)
    assert q >> 9 != p >> 9


def test_compound_page_bytes_at_v6_18():
    mm = pa.MemMap(tiny(), "v6.18")
    p = pa.alloc_pages(mm, GFP_KERNEL | GFP.COMP, 2)
    head_addr = VMEMMAP_START + p * 64
    assert pa.page_field(mm, p, "flags") >> 6 & 1                         # PG_head
    assert pa.page_field(mm, p, "_refcount") == 1
    for i in (1, 2, 3):
        assert pa.page_field(mm, p + i, "compound_head") == head_addr | 1
        assert pa.page_field(mm, p + i, "_refcount") == 0
    folio = mm.mem[p * 8:(p + 4) * 8].view(layout_dtype(FOLIO_V6_18))[0]
    assert folio["_flags_1"] & 0xFF == 2 and folio["_nr_pages"] == 4
    assert folio["_entire_mapcount"] == -1 and folio["_large_mapcount"] == -1
    assert tuple(folio["_deferred_list"]) == (head_addr + 144, head_addr + 144)
    assert (folio["_flags_1"] >> 51) == (pa.page_field(mm, p, "flags") >> 51)   # node/zone
    pa.free_pages(mm, p, 2)
    assert pa.page_field(mm, p + 1, "compound_head") & 1 == 0


@pytest.mark.parametrize("stage", ["dynamic", "page32", "page16", "page8"])
def test_plain_pages_get_a_misc_memdesc(stage):
    mm = pa.MemMap(tiny(), stage)
    p = pa.alloc_pages(mm, GFP_KERNEL, 3)
    words = {int(mm.pages["memdesc"][p + i]) for i in range(8)}
    assert len(words) == 1
    md = memdesc_decode(mm.stage, words.pop())
    assert (md.type_name, md.subtype, md.order, md.nid, md.zone) == ("Misc", "unknown", 3, 0,
                                                                     NORMAL)


def test_page_zone_through_a_descriptor_at_page16():
    """page16 has no page->flags: an allocated page's zone comes from its descriptor's
    memdesc_flags_t, a Misc page's from the inline bits, a free page's from the PFN table."""
    m = Machine.from_spec("64M", hole_start="32M", dma32_end="40M")
    mm = pa.MemMap(m, "page16")
    mm.contents = PageContents(mm.nr_pfns)
    d = pa.alloc_pages(mm, GFP_DMA, 0)                 # a page to hold the descriptor
    mm.contents.attach(d)
    desc = PAGE_OFFSET + d * 4096 + 64
    folio = pa.alloc_pages(mm, GFP_KERNEL, 2)
    mm.contents.write64(desc, flags_node_zone(0, NORMAL))       # folio->flags = pfn_flags()
    pa.set_page_memdesc(mm, folio, 2, memdesc_ptr(mm.stage, "File", desc))
    assert pa.page_zone(mm, folio + 3).name == "Normal"
    assert pa.folio_nid(mm, desc) == 0
    assert pa.page_zone(mm, d).name == "DMA"            # Misc inline bits
    free = next(iter(pa.free_lists(mm).values()))[0]
    assert pa.page_zonenum(mm, free) == int(mm.pbz[free >> 9]) % 4
    with pytest.raises(FieldAbsent, match="page16"):
        pa.page_field(mm, folio, "flags")


def test_page_zone_is_the_same_at_every_stage():
    m = Machine.from_spec("64M", hole_start="32M", dma32_end="40M")
    pfns = np.arange(0, m.max_pfn, 37)
    seen = None
    for stage in ALL:
        mm = pa.MemMap(m, stage, debug=False)
        pa.alloc_pages_bulk(mm, GFP_KERNEL, np.arange(8) % 4)
        got = [(pa.page_to_nid(mm, int(p)), pa.page_zonenum(mm, int(p))) for p in pfns]
        assert seen is None or got == seen, stage
        seen = got


def test_set_page_memdesc_needs_a_memdesc_word():
    mm = pa.MemMap(tiny(), "v6.18")
    p = pa.alloc_pages(mm, GFP_KERNEL, 0)
    with pytest.raises(FieldAbsent, match="v6.18"):
        pa.set_page_memdesc(mm, p, 0, 0x5)
    with pytest.raises(FieldAbsent, match="folio"):
        pa.page_field(pa.MemMap(tiny(), "folio"), p, "mapping")


def test_bad_frees_and_corruption_are_caught():
    mm = pa.MemMap(tiny(), "page16")
    p = pa.alloc_pages(mm, GFP_KERNEL, 1)
    with pytest.raises(pa.VMBug, match="allocated at order 1"):
        pa.free_pages(mm, p, 0)
    pa.free_pages(mm, p, 1)
    with pytest.raises(pa.VMBug, match="not allocated"):
        pa.free_pages(mm, p, 1)
    head = pa.free_lists(mm)[("free", 0, NORMAL, 10, MIGRATE_MOVABLE)][0]
    mm.mem[head * 2 + 1] ^= np.uint64(0x10)            # corrupt a prev link
    with pytest.raises(pa.VMBug, match="link"):
        mm.check()


def test_bulk_api_matches_one_call_api(stage):
    orders = np.array([0, 3, 1, 9, 0, 2, 10, 4])
    a = pa.MemMap(tiny(managed=8192, start=8192), stage)
    b = pa.MemMap(tiny(managed=8192, start=8192), stage)
    got = pa.alloc_pages_bulk(a, MOVABLE, orders)
    assert got.tolist() == [pa.alloc_pages(b, MOVABLE, int(o)) for o in orders]
    pa.free_pages_bulk(a, got[::2], orders[::2])
    for p, o in zip(got[::2], orders[::2], strict=True):
        pa.free_pages(b, int(p), int(o))
    assert pa.free_lists(a) == pa.free_lists(b)
    kinds = np.array([0, 0, 1, 0, 1, 1])
    out, slots = pa.run_ops(a, kinds, MOVABLE, [0, 5, 0, 2, 0, 0], [0, 1, 0, 2, 1, 2], 3)
    assert (out >= 0).all() and (slots == -1).all()


def test_stage_is_validated():
    with pytest.raises(ValueError, match="unknown stage"):
        pa.MemMap(tiny(), "page4")
    assert get_stage("page8/packed").free_tracking == "packed"


def test_checker_sees_a_broken_compound_page():
    mm = pa.MemMap(tiny(), "v6.18")
    p = pa.alloc_pages(mm, GFP_KERNEL | GFP.COMP, 3)
    mm.check()
    pa.set_page_field(mm, p + 5, "compound_head", VMEMMAP_START + 64 * (p + 1) + 1)
    with pytest.raises(pa.VMBug, match="compound_head"):
        mm.check()


def test_decay_pcp_high_by_an_eighth_per_interval():
    """decay_pcp_high() (mm: tune PCP high automatically, 6.7): high = max3(count - (batch <<
    5), high - high / 8, high_min) and the pages above it go back to the buddy. Normal of
    the 64M machine: batch 1, high_min 124; 223 pages on cpu0's list (220 freed + the 3 left
    of the last refill)."""
    from memdesc.mm.vmstat import decay_pcp_high_mm, vmstat_update_until

    m = Machine.from_spec("64M", hole_start="48M", dma32_end="64M")
    mm = pa.MemMap(m, "v6.18", debug=False)
    pfns = [pa.alloc_pages(mm, GFP_KERNEL, 0) for _ in range(220)]
    for p in pfns:
        pa.free_pages(mm, p, 0)
    pcp = mm.pcp[2, 0]
    assert pcp[pa.P_COUNT] == 223 and pcp[pa.P_HIGH_MIN] == 124 and pcp[pa.P_BATCH] == 1
    pcp[pa.P_HIGH] = 200
    free_before = int(mm.zs[2, pa.Z_FREE])
    # max3(223 - 32, 200 - 25, 124) = 191: at most batch << 5 pages per interval
    assert decay_pcp_high_mm(mm) == 32
    assert pcp[pa.P_HIGH] == 191 and pcp[pa.P_COUNT] == 191
    assert mm.zs[2, pa.Z_FREE] == free_before + 32
    assert decay_pcp_high_mm(mm) == 23                     # max3(159, 191 - 23, 124) = 168
    # three intervals up to t = 3.5 s: 168 -> 147 -> 129 -> 124 (high_min)
    nxt, freed = vmstat_update_until(mm.mem, mm.S, 3_500_000_000, 1_000_000_000)
    assert nxt == 4_000_000_000 and pcp[pa.P_HIGH] == 124 and freed == 168 - 124
    mm.check()


@pytest.mark.parametrize("stage", STAGE_IDS)
def test_init_range_fast_path_equals_page_init(stage):
    """init_range_nb() writes a run of struct pages as a line from the first three; every
    word must equal what page_init() writes page by page (free and reserved runs)."""
    from numba import njit

    from memdesc.mm.free_tracking import page_init

    @njit
    def per_page(mem, S, lo, hi, gz, reserved):
        for pfn in range(lo, hi):
            page_init(mem, S, pfn, gz, reserved)

    m = Machine.from_spec("64M", hole_start="48M", dma32_end="64M")
    mm = pa.MemMap(m, get_stage(stage), debug=False, free_all=False)
    for lo, hi, gz, reserved in ((4096, 9000, 1, False), (0, 256, 0, True),
                                 (9000, 9005, 1, False), (12288, 16384, 2, True)):
        fast, slow = mm.mem.copy(), mm.mem.copy()
        fast[:] = 0
        slow[:] = 0
        pa.init_range_nb(fast, mm.S, lo, hi, gz, reserved)
        per_page(slow, mm.S, lo, hi, gz, reserved)
        assert np.array_equal(fast, slow), (stage, lo, hi)
    # a reused storage full of junk boots to the same mem_map as a fresh one
    junk = np.full(mm.mem.size + 100, 0xDEADBEEF, np.uint64)
    again = pa.MemMap(m, get_stage(stage), debug=False, buffer=junk)
    fresh = pa.MemMap(m, get_stage(stage), debug=False)
    assert np.array_equal(again.mem, fresh.mem) and np.shares_memory(again.mem, junk)
    again.check()


def test_isolation_outside_ram_is_an_error():
    """start_isolate_page_range() only sees PFNs of a zone: a PFN past the memory map, or in
    a hole no zone spans, is refused before the kernels index the pageblock tables."""
    m = Machine.from_spec("64M", hole_start="32M", dma32_end="40M")
    mm = pa.MemMap(m, "page8")
    end = max(z.end_pfn for z in m.zones)               # RAM ends before the memory map
    assert (end, m.nr_pfns) == (18432, 32768)
    for pfn in (-1, end, m.nr_pfns, 1 << 40):
        with pytest.raises(ValueError, match="outside the memory map"):
            pa.set_pageblock_isolate(mm, pfn)
        with pytest.raises(ValueError, match="outside the memory map"):
            pa.clear_pageblock_isolate(mm, pfn)
    assert pa.set_pageblock_isolate(mm, end - 1)
    assert pa.clear_pageblock_isolate(mm, end - 1)
