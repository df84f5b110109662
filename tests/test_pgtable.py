"""Page tables in emulated memory: faults, THP deposits, MADV_DONTNEED, exit."""

from __future__ import annotations

import numpy as np
import pytest

from memdesc.mm import page_alloc as pa
from memdesc.mm import pgtable as P
from memdesc.mm.fault_inject import FaultAttr, FaultInjection
from memdesc.mm.memdesc import memdesc_decode
from memdesc.mm.memory import MMAP_BASE, AnonMemory, count_tables_nb
from memdesc.mm.mm_init import Kernel
from memdesc.mm.mmzone import Machine
from memdesc.mm.vmalloc import Vmalloc
from memdesc.stages import STAGE_IDS

TINY = dict(hole_start="32M", dma32_end="40M")


def _world(stage):
    k = Kernel(Machine.from_spec("64M", **TINY), stage)
    return k, AnonMemory(k, Vmalloc(k))


def _allocated(k):
    managed = sum(z.managed for z in k.machine.zones)
    return managed - int(pa.zone_free_pages(k.mm).sum()) - int(pa.pcp_count(k.mm).sum())


def test_index_arithmetic():
    va = 0x00007F1234567000
    assert (P.pgd_index(va), P.pud_index(va), P.pmd_index(va), P.pte_index(va)) == (
        (va >> 39) & 511, (va >> 30) & 511, (va >> 21) & 511, (va >> 12) & 511)
    assert P.HPAGE_PMD_ORDER == 9 and P.PGD_ALLOCATION_ORDER == 1


@pytest.mark.parametrize("stage", STAGE_IDS)
def test_fault_walk_and_exit(stage):
    k, anon = _world(stage)
    before = _allocated(k)
    p = anon.fork("p")
    r = anon.fault(p, 1024, 0)                   # 4 MiB of order-0 folios
    assert r == {"folios": 1024, "fallback": 0, "failed": 0}
    # one PUD table, one PMD table, two PTE tables below the order-1 PGD
    assert count_tables_nb(k.E[2], k.E[3], p.pgd) == 4
    obs = anon.observe(p)
    assert obs["mapped_pages"] == 1024 == obs["pages_with_right_data"]
    assert obs["page_tables"] == 4
    if k.stage.dynamic:                          # page-table pages are ptdescs
        md = memdesc_decode(k.stage, int(k.mm.pages["memdesc"][p.pgd]))
        assert md.type_name == "PageTable"
    k.check()
    n = anon.madvise_dontneed(p, 0.5)
    assert n == 512
    obs = anon.observe(p)
    assert obs["mapped_pages"] == 512 and obs["page_tables"] == 4   # tables stay
    k.check()
    anon.exit("p")
    k.check()
    # all tables, folios and the process's objects are gone: only slabs remain allocated
    assert _allocated(k) == sum(k.slub.pages(kc) for kc in k.slub.cache_list)
    assert before == sum(k.slub.pages(kc) for kc in k.slub.cache_list) or before > 0


@pytest.mark.parametrize("stage", ["v6.18", "dynamic", "page8"])
def test_thp_deposits_a_table(stage):
    k, anon = _world(stage)
    p = anon.fork("db")
    r = anon.fault(p, 512 * 3, 9)
    assert r["folios"] == 3 and r["fallback"] == 0
    E = k.E
    table, missing = P._walk(E[2], E[3], p.pgd, np.uint64(MMAP_BASE), P.LEVEL_PMD)
    assert missing == 0
    # three deposited PTE tables hang off the PMD table's ptdesc (pmd_huge_pte)
    got = [P.pgtable_trans_huge_withdraw(E, table) for _ in range(3)]
    assert len(set(got)) == 3
    for g in got:
        P.pgtable_trans_huge_deposit(E, table, g)
    obs = anon.observe(p)
    assert obs["mapped_pages"] == 1536 == obs["pages_with_right_data"]
    assert obs["folio_orders"][9] == 3
    assert obs["page_tables"] == 2                    # PUD + PMD; the huge PMDs map directly
    anon.madvise_dontneed(p, 1.0)                     # withdraws and frees the deposits
    k.check()
    anon.exit("db")
    k.check()
    assert _allocated(k) == sum(k.slub.pages(kc) for kc in k.slub.cache_list)


def test_thp_falls_back_to_small_pages():
    # fail_page_alloc with min-order 9: the huge folio cannot be had, the fault falls back
    fault = FaultInjection(page=FaultAttr(probability=100, min_order=9, times=1, context="any"))
    k = Kernel(Machine.from_spec("64M", **TINY), "page16", fault=fault)
    anon = AnonMemory(k, Vmalloc(k))
    p = anon.fork("p")
    r = anon.fault(p, 1024, 9)
    assert r["fallback"] == 1 and r["failed"] == 0 and r["folios"] == 1
    obs = anon.observe(p)
    assert obs["folio_orders"][0] == 512 and obs["folio_orders"][9] == 1
    assert obs["pages_with_right_data"] == 1024
    k.check()
    anon.exit("p")
    k.check()
