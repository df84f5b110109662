"""Access accounting (memdesc.mm.access): hand-worked kernel operations at v6.18, page16, page8."""

from __future__ import annotations

import numpy as np
import pytest

from access_ops import (  # noqa: F401 -- test_access_props imports check_against_stream here
    LD,
    ST,
    D,
    P,
    check_against_stream,
    class_ops,
    counts,
    ops_stream,
)
from memdesc.mm import access
from memdesc.mm import folio as fo
from memdesc.mm import page_alloc as pa
from memdesc.mm.access import OP_CLASS_ID, AccessStream, chain_levels
from memdesc.mm.ft_common import HEADS_BASE
from memdesc.mm.gfp import GFP_HIGHUSER_MOVABLE, GFP_KERNEL, MIGRATE_UNMOVABLE
from memdesc.mm.kmem import PAGE_OFFSET, VMEMMAP_START
from memdesc.mm.mm_init import Kernel
from memdesc.mm.mmzone import Machine
from memdesc.mm.zone_state import (
    P_COUNT,
    P_FREE_COUNT,
    Z_BOOST,
    Z_FLAGS,
    Z_FREE,
    Z_FREE_HA,
    Z_LOWRES,
    Z_PGALLOC,
    Z_WMARK,
    pcp_head,
)
from memdesc.stages import get_stage

WMARK_HIGH = 2


@pytest.fixture(scope="module")
def machine():
    return Machine.from_spec("64M")


def _page(mm, pfn: int, word: int) -> int:
    return VMEMMAP_START + pfn * mm.stage.page.size + 8 * word


def _s(mm, i: int) -> int:
    """Emulated address of S word i (memdesc.mm.ft_common.s_addr)."""
    return HEADS_BASE + 8 * (i - int(mm.S[pa.ft.C_OFF_HEADS]))


def _zone(mm, gz: int, col: int) -> int:
    return _s(mm, int(mm.S[pa.ft.C_OFF_ZS]) + gz * pa.NZCOL + col)


def _pcp(mm, gz: int, col: int, cpu: int = 0) -> int:
    return _s(mm, int(mm.S[pa.ft.C_OFF_PCP]) + (gz * int(mm.S[pa.C_NCPU]) + cpu) * pa.NPCOL + col)


def _head(h: int, which: int) -> int:
    return HEADS_BASE + 16 * h + 8 * which


# ---- page_zone(), page_folio() -----------------------------------------------------------------

@pytest.mark.parametrize("stage,chain", [("v6.18", 1), ("page16", 2), ("page8", 2)])
def test_page_zone_of_an_allocated_folio_page(machine, stage, chain):
    """The issue's statement: for an allocated folio page, page_zone() has 1 dependent load
    at v6.18 (page->flags) and 2 at page16 and page8 (the memdesc word, then the folio's
    memdesc_flags_t, the first word of the descriptor)."""
    k = Kernel(machine, stage, debug=False)
    folio = fo.folio_alloc(k, GFP_HIGHUSER_MOVABLE, 2)
    pfn = int(fo.folio_pfn(k.E, np.uint64(folio)))
    access.enable(k, 1000)
    for p in (pfn, pfn + 3):
        assert access.page_zone_e(k.E, p) == pa.page_zone(k.mm, p).node * 4 + \
            pa.page_zonenum(k.mm, p)
    s = access.drain(k)
    md = k.mm.stage.page.field("memdesc")
    want = ([[(_page(k.mm, p, 0), LD)] for p in (pfn, pfn + 3)] if stage == "v6.18" else
            [[(VMEMMAP_START + p * k.mm.stage.page.size + md.offset, P), (folio, D)]
             for p in (pfn, pfn + 3)])
    assert class_ops(s, "page_zone") == want
    assert chain_levels(s).tolist() == [chain, chain]
    c = counts(access.counters(k)[OP_CLASS_ID["page_zone"]])
    assert (c.ops, c.loads, c.stores, c.chain_sum, c.chain_max) == \
        (2, 2 * chain, 0, 2 * chain, chain)


@pytest.mark.parametrize("stage", ["v6.18", "page16", "page8"])
def test_page_folio_of_a_tail_page(machine, stage):
    """page_folio() of a tail page: compound_head (page + 8, a pointer: head | 1) at v6.18,
    the memdesc word (a pointer to the descriptor) from dynamic on; a head page at v6.18
    reads compound_head too, but its result does not come from the value (not a pointer)."""
    k = Kernel(machine, stage, debug=False)
    folio = fo.folio_alloc(k, GFP_HIGHUSER_MOVABLE, 2)
    pfn = int(fo.folio_pfn(k.E, np.uint64(folio)))
    access.enable(k, 1000)
    assert access.page_folio_e(k.E, pfn + 1) == folio
    assert access.page_folio_e(k.E, pfn) == folio
    got = class_ops(access.drain(k), "page_folio")
    # the same on a bare (mem, S), as the trace replay has it
    assert access.page_folio_ms(k.mm.mem, k.mm.S, pfn + 1) == folio
    assert access.page_folio_ms(k.mm.mem, k.mm.S, pfn) == folio
    assert class_ops(access.drain(k), "page_folio") == got
    if stage == "v6.18":
        assert got == [[(_page(k.mm, pfn + 1, 1), P)], [(_page(k.mm, pfn, 1), LD)]]
    else:
        off = k.mm.stage.page.field("memdesc").offset
        size = k.mm.stage.page.size
        assert got == [[(VMEMMAP_START + (pfn + 1) * size + off, P)],
                       [(VMEMMAP_START + pfn * size + off, P)]]


# ---- an order-0 allocation from a non-empty pcp list --------------------------------------------

def _pcp_hit(machine, stage):
    """Allocate twice (the first refills the pcp list), account the second: (mm, pfn, its
    accesses, the zone and the pcp list head)."""
    mm = pa.MemMap(machine, stage, debug=False)
    access.enable(mm, 10000)
    first = pa.alloc_pages(mm, GFP_KERNEL, 0)
    access.drain(mm)
    pfn = pa.alloc_pages(mm, GFP_KERNEL, 0)
    s = access.drain(mm)
    gz = mm.zone_index(0, "Normal") if pa.page_zone(mm, pfn).name == "Normal" else \
        mm.zone_index(0, "DMA32")
    h = pcp_head(mm.S, gz, 0, MIGRATE_UNMOVABLE)          # order 0, unmovable
    assert pfn == first + 1
    assert s.nr_ops == 1 and s.op_class[0] == OP_CLASS_ID["alloc_pages.pcp"]
    return mm, pfn, class_ops(s, "alloc_pages.pcp")[0], gz, h


def _alloc_common_head(mm, gz):
    """__alloc_pages() up to rmqueue_pcplist() (mm/page_alloc.c): the zonelist's first
    zoneref twice (first_zones_zonelist() in prepare_alloc_pages(), then the zonelist walk
    of get_page_from_freelist()), zone->flags (ZONE_BELOW_HIGH), zone_watermark_fast():
    wmark_pages(WMARK_HIGH) = _watermark[high] + watermark_boost, NR_FREE_PAGES,
    nr_free_highatomic (__zone_watermark_unusable_free()), lowmem_reserve[highest_zoneidx];
    then rmqueue_pcplist()'s pcp->free_count >>= 1."""
    zl = _s(mm, int(mm.S[pa.C_OFF_ZL]))
    highest = 2                                           # gfp_zone(GFP_KERNEL): ZONE_NORMAL
    return [(zl, LD), (zl, LD), (_zone(mm, gz, Z_FLAGS), LD),
            (_zone(mm, gz, Z_WMARK + WMARK_HIGH), LD), (_zone(mm, gz, Z_BOOST), LD),
            (_zone(mm, gz, Z_FREE), LD), (_zone(mm, gz, Z_FREE_HA), LD),
            (_zone(mm, gz, Z_LOWRES + highest), LD),
            (_pcp(mm, gz, P_FREE_COUNT), LD), (_pcp(mm, gz, P_FREE_COUNT), ST)]


def _alloc_common_tail(mm, gz):
    """pcp->count -= 1, then the PGALLOC event (a zone word here)."""
    return [(_pcp(mm, gz, P_COUNT), LD), (_pcp(mm, gz, P_COUNT), ST)], \
        [(_zone(mm, gz, Z_PGALLOC), LD), (_zone(mm, gz, Z_PGALLOC), ST)]


def test_alloc_from_a_nonempty_pcp_list_v618(machine):
    """v6.18, worked from mm/page_alloc.c __rmqueue_pcplist(): list_empty(list) and
    list_first_entry() load list->next (the page: a pointer); list_del(&page->pcp_list)
    loads page->lru.prev and page->lru.next (both computed from list->next: dependent; next
    is the pointer later stores use), stores next->prev = prev and prev->next = next (prev is
    the list head: the page was first); pcp->count -= 1; then prep_new_page()'s
    set_page_refcounted() (page_type/_refcount word) and PGALLOC."""
    mm, pfn, got, gz, h = _pcp_hit(machine, "v6.18")
    count, pgalloc = _alloc_common_tail(mm, gz)
    want = _alloc_common_head(mm, gz) + [
        (_head(h, 0), P), (_head(h, 0), P),
        (_page(mm, pfn, 2), LD | D), (_page(mm, pfn, 1), P | D),
        (_page(mm, pfn + 1, 2), ST | D), (_head(h, 0), ST),
    ] + count + [(_page(mm, pfn, 6), LD), (_page(mm, pfn, 6), ST)] + pgalloc
    assert got == want
    s = ops_stream([(0, got)])
    assert chain_levels(s).tolist() == [2]


def test_alloc_from_a_nonempty_pcp_list_page8(machine):
    """page8 (packed): the same operation; next and prev are 28-bit block indices in the one
    memdesc word, so list_del() loads that word twice (prev, then next) and next->prev = prev
    is a read-modify-write of the next page's word; prep_new_page() writes the Misc
    alloc_pages word (no refcount in struct page)."""
    mm, pfn, got, gz, h = _pcp_hit(machine, "page8")
    count, pgalloc = _alloc_common_tail(mm, gz)
    want = _alloc_common_head(mm, gz) + [
        (_head(h, 0), P), (_head(h, 0), P),
        (_page(mm, pfn, 0), LD | D), (_page(mm, pfn, 0), P | D),
        (_page(mm, pfn + 1, 0), LD | D), (_page(mm, pfn + 1, 0), ST | D), (_head(h, 0), ST),
    ] + count + [(_page(mm, pfn, 0), ST)] + pgalloc
    assert got == want


# ---- counters, stream and regions ---------------------------------------------------------------

def check_regions(mm, s: AccessStream) -> None:
    """Every address lies in a region the stage has: the vmemmap within the mem_map, the
    direct map within RAM, the HEADS_BASE region within S's heads..zonelist words."""
    a = s.addr
    vm = a >= np.uint64(VMEMMAP_START)
    assert (a[vm] < np.uint64(VMEMMAP_START + mm.mem.nbytes)).all()
    dm = (a >= np.uint64(PAGE_OFFSET)) & (a < np.uint64(HEADS_BASE))
    assert (a[dm] < np.uint64(PAGE_OFFSET + (mm.nr_pfns << 12))).all()
    hd = (a >= np.uint64(HEADS_BASE)) & ~vm
    top = HEADS_BASE + 8 * (len(mm.S) - int(mm.S[pa.ft.C_OFF_HEADS]))
    assert (a[hd] < np.uint64(top)).all()
    assert vm.sum() + dm.sum() + hd.sum() == len(a)


def test_disable_and_drain_errors(machine):
    mm = pa.MemMap(machine, "v6.18", debug=False)
    with pytest.raises(ValueError, match="not enabled"):
        access.counters(mm)
    access.enable(mm)
    pa.alloc_pages(mm, GFP_KERNEL, 0)
    assert counts(access.counters(mm)[OP_CLASS_ID["alloc_pages.refill"]]).ops == 1
    assert access.drain(mm).nr_ops == 0                  # no log asked for
    access.disable(mm)
    assert not access.enabled(mm)


def test_share_accounting_records_one_kernel_into_another(machine):
    """share_accounting(dst, src): dst's allocation counts in src's counters (dst has none
    of its own); src's accounting off turns dst's off too."""
    src = pa.MemMap(machine, "v6.18", debug=False)
    dst = pa.MemMap(machine, "v6.18", debug=False)
    access.enable(src)
    access.share_accounting(dst, src)
    assert access.enabled(dst)
    pa.alloc_pages(dst, GFP_KERNEL, 0)
    assert counts(access.counters(src)[OP_CLASS_ID["alloc_pages.refill"]]).ops == 1
    with pytest.raises(ValueError, match="not enabled"):
        access.counters(dst)
    access.disable(src)
    access.share_accounting(dst, src)
    assert not access.enabled(dst)


def test_full_log_keeps_whole_operations(machine):
    """A log too small for an operation drops it whole (and every later one until the next
    drain), says so, and the counters still count them."""
    mm = pa.MemMap(machine, "v6.18", debug=False)
    access.enable(mm, 200)
    pa.alloc_pages(mm, GFP_KERNEL, 0)                      # the refill: > 200 accesses
    pa.alloc_pages(mm, GFP_KERNEL, 0)                      # fits, but after a drop
    assert access.dropped(mm)
    s = access.drain(mm)
    assert sum(counts(r).ops for r in access.counters(mm)) == 2
    assert s.nr_ops == 0 and s.nr_accesses == 0 and not access.dropped(mm)
    pa.alloc_pages(mm, GFP_KERNEL, 0)                      # a pcp hit fits
    s = access.drain(mm)
    assert s.nr_ops == 1 and 0 < s.nr_accesses == s.op_first[1] <= 200


def test_stage_zone_lookup_rule_matches_the_layout():
    """lookups.zone_of_page() picks page->flags exactly when memdesc stages says
    zone_lookup = page_flags (the layout has a flags word)."""
    for sid in ("v6.18", "folio", "dynamic", "page32", "page16", "page8"):
        st = get_stage(sid)
        assert (st.page.field("flags") is not None) == (st.zone_lookup == "page_flags")


# ---- the page-table walk and the page-cache lookup ---------------------------------------------

@pytest.mark.parametrize("stage", ["v6.18", "ptdesc-first", "page16"])
def test_pt_walk_and_pagecache_lookup(stage):
    """follow_page_pte() of a mapped anon page, hand-worked: the PGD, PUD and PMD entries
    in the page-table pages (direct map), each computed from the previous one; then
    pte_offset_map_lock(): the ptlock of the PTE table page, ptdesc->ptl at byte 40 (v6.18:
    the table page's own struct page, no load to find it; ptdesc-first and page16: the
    table page's memdesc word first, one more dependent load, then the ptl in the ptdesc),
    the LOCK CMPXCHG (load + store), the pmd_same() recheck of the PMD entry, the PTE entry,
    page_folio() of the struct page the PTE names and spin_unlock() (a store).
    v6.18: 7 loads, 2 stores, chain PGD 1 PUD 2 PMD 3 ptl 4 recheck/PTE 5 page 6;
    ptdesc-first and page16: 8 loads, chain 7 (the memdesc word is 4, ptl 5).
    The counted readbacks give the scenario's digests (pgtable.readback_kernel /
    filemap.readback_file_nb, uncounted)."""
    from memdesc.analysis.scenario import World, parse_scenario
    from memdesc.mm.filemap import readback_file_nb
    from memdesc.mm.memdesc_alloc import E_DATA, E_SLOT, E_SP, SP_MEMDESC_OFF
    from memdesc.mm.memory import MMAP_BASE
    from memdesc.mm.pgtable import LEVEL_PTE, _walk, readback_kernel

    sc = parse_scenario("machine 256M\nanon 1M proc=a order=0\npagecache 1M file=f order=2\n")
    w = World(sc, stage)
    for step in sc.steps:
        w.run(step)
    k, p = w.k, w.anon.procs["a"]
    access.enable(k, 1 << 16)
    pfn, folio = access.pt_walk_e(k.E, p.pgd, np.uint64(MMAP_BASE))
    assert folio == p.folios[0] and pfn == int(fo.folio_pfn(k.E, np.uint64(folio)))
    (walk,) = class_ops(access.drain(k), "pt_walk")
    pte_table, _ = _walk(k.E[E_SLOT], k.E[E_DATA], p.pgd, np.uint64(MMAP_BASE), LEVEL_PTE)
    sep = stage != "v6.18"
    table_page = VMEMMAP_START + pte_table * k.mm.stage.page.size
    md_off = int(k.E[E_SP][SP_MEMDESC_OFF])                 # the memdesc word's offset
    assert md_off == (16 if stage == "ptdesc-first" else md_off)
    ptdesc = int(k.mm.mem[(table_page - VMEMMAP_START + md_off) // 8]) & ~15 if sep \
        else table_page
    ptl = ptdesc + 40
    want = [P, P | D, P | D] + ([P | D] if sep else []) + [
        P | D, ST, D, P | D, D | (P if stage == "page16" else LD), ST]
    assert [kind for _, kind in walk] == want
    addrs = [a for a, _ in walk]
    assert all(PAGE_OFFSET <= a < VMEMMAP_START for a in addrs[:3])
    if sep:
        assert addrs[3] == table_page + md_off and addrs[4] == ptl
        assert PAGE_OFFSET <= ptdesc < VMEMMAP_START          # the ptdesc is slab memory
    assert addrs[-6] == addrs[-5] == addrs[-1] == ptl
    assert addrs[-4] == addrs[2]                             # the recheck: the PMD entry
    assert addrs[-2] == _page(k.mm, pfn, 1) or stage == "page16"
    c = counts(access.counters(k)[OP_CLASS_ID["pt_walk"]])
    assert (c.ops, c.loads, c.stores, c.chain_max) == (1, 8 if sep else 7, 2, 7 if sep else 6)
    nr = (p.end - MMAP_BASE) >> 12
    assert access.readback_anon_e(k.E, p.pgd, np.uint64(MMAP_BASE), nr, p.pid) == \
        readback_kernel(k.E[E_SLOT], k.E[E_DATA], k.tags, p.pgd, np.uint64(MMAP_BASE), nr,
                        p.pid)
    a = w.pc.files["f"]
    got = w.pc.observe(a)
    ref = readback_file_nb(k.E, a.index_map, np.uint64(a.mapping), a.file_id)
    assert got["digest"] == f"{int(ref[0]):016x}" and got["pages"] == ref[1] == 256
    c = access.counters(k)
    walks = counts(c[OP_CLASS_ID["pt_walk"]])
    assert (walks.ops, walks.chain_max) == (1 + nr, 7 if sep else 6)
    assert counts(c[OP_CLASS_ID["pagecache_lookup"]]).ops == 256
