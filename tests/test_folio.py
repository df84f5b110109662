"""Folios at every stage: allocation with descriptors, references, mapcounts, page_folio()."""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import fixture_dir
from memdesc.mm import folio as F
from memdesc.mm import gfp
from memdesc.mm import page_alloc as pa
from memdesc.mm.fault_inject import FaultAttr, FaultInjection
from memdesc.mm.memdesc import memdesc_decode
from memdesc.mm.memdesc_alloc import SP_T_ANON, SP_T_FILE, ST_DESC_FAIL_UNWIND
from memdesc.mm.mm_init import Kernel
from memdesc.mm.mmzone import Machine
from memdesc.stages import STAGE_IDS

TINY = dict(hole_start="32M", dma32_end="40M")
ORDERS = (0, 1, 2, 4, 9)


def _kernel(stage, fault=None):
    return Kernel(Machine.from_spec("64M", **TINY), stage, fault=fault)


def _allocated(k):
    managed = sum(z.managed for z in k.machine.zones)
    return managed - int(pa.zone_free_pages(k.mm).sum()) - int(pa.pcp_count(k.mm).sum())


def _slab_pages(k):
    return sum(k.slub.pages(kc) for kc in k.slub.cache_list)


def test_overlay_offsets_are_the_pahole_ones():
    text = (fixture_dir("btf") / "pahole" / "folio.txt").read_text()
    pahole = {m[1]: int(m[2]) for m in re.finditer(r"\b(\w+);\s*/\*\s*(\d+)\s+\d+\s*\*/", text)}
    for fid, name in F._NAMES.items():
        assert pahole[name] == F.FO[0, fid], name
    assert pahole["_flags_1"] == F.FO[0, F.F_ORDER] and pahole["_pincount"] == F.FO[0, F.F_PINCOUNT]
    # the dynamic folio: 80 bytes, the large part after it, 128 with the 16-byte rounding
    assert F.FOLIO_LARGE_PATH.size == 128 and F.FO[1, F.F_DEFERRED] == 112
    assert F.FO[1, F.F_PFN] == 64 and F.FO[1, F.F_ORDER] == 60


@pytest.mark.parametrize("stage", STAGE_IDS)
def test_folio_alloc_put_every_order(stage):
    k = _kernel(stage)
    base = _allocated(k)
    E = k.E
    tfile = int(k.slub.sp[SP_T_FILE])
    folios = []
    for order in ORDERS:
        for _ in range(3):
            f = F.folio_alloc_nb(E, gfp.GFP_HIGHUSER_MOVABLE, order, tfile, 0)
            assert f > 1
            folios.append((f, order))
    k.check()
    for f, order in folios:
        assert F.folio_order(E, f) == order
        assert F.folio_ref_count(E, f) == 1 and F.folio_mapcount(E, f) == 0
        pfn = F.folio_pfn(E, f)
        assert pfn % (1 << order) == 0
        for i in range(1 << order):                  # every page leads back to the folio
            assert F.page_folio(E, pfn + i) == f
        zone = pa.page_zone(k.mm, pfn + (1 << order) - 1)
        assert zone.start_pfn <= pfn < zone.end_pfn  # page_zone() through the descriptor
        if k.stage.dynamic:
            md = memdesc_decode(k.stage, int(k.mm.pages["memdesc"][pfn]))
            assert (md.type_name, md.pointer) == ("File", int(f))
    for f, _ in folios:
        F.folio_ref_add(E, f, 2)
        assert not F.folio_put_refs(E, f, 2)
        assert F.folio_put_refs(E, f, 1)
    k.check()
    assert _allocated(k) == _slab_pages(k)          # only slabs remain: nothing leaked
    del base


@pytest.mark.parametrize("stage", ["v6.18", "dynamic", "page16"])
def test_anon_rmap_mapcounts(stage):
    k = _kernel(stage)
    E = k.E
    tanon = int(k.slub.sp[SP_T_ANON])
    anon_vma = np.uint64(0xFFFF888000123400)
    for order, pmd in ((0, False), (2, False), (9, True)):
        f = F.folio_alloc_nb(E, gfp.GFP_HIGHUSER_MOVABLE, order, tanon, 0)
        F.folio_add_new_anon_rmap(E, f, anon_vma, 0x7F0000000, pmd)
        # folio_mapcount() counts page table mappings: each PTE, or one PMD
        assert F.folio_mapcount(E, f) == (1 if pmd else 1 << order)
        assert F.fget(E, f, F.F_MAPPING) == int(anon_vma) | F.PAGE_MAPPING_ANON
        with pytest.raises(AssertionError):
            F.folio_put_refs(E, f, 1)                # freeing a mapped folio is a bad page
        F.fset32(E, f, F.F_REFCOUNT, 1)
        F.folio_remove_rmap(E, f, pmd)
        assert F.folio_mapcount(E, f) == 0
        assert F.folio_put_refs(E, f, 1)
    k.check()


@pytest.mark.parametrize("stage", ["dynamic", "page32", "page8"])
def test_descriptor_first_memory_second(stage):
    # pages fail: the descriptor that was allocated first goes back, nothing leaks
    fault = FaultInjection(page=FaultAttr(probability=100, context="any", times=5))
    k = _kernel(stage, fault)
    before = _allocated(k)
    E = k.E
    tfile = int(k.slub.sp[SP_T_FILE])
    got = [F.folio_alloc_nb(E, gfp.GFP_HIGHUSER_MOVABLE, 0, tfile, 0) for _ in range(8)]
    assert [g == 0 for g in got] == [True] * 5 + [False] * 3
    assert int(k.stats[ST_DESC_FAIL_UNWIND]) == 5
    folio_cache = k.slub.cache("folio")
    assert k.slub.live(folio_cache) == 3
    for g in got[5:]:
        F.folio_put_refs(E, g, 1)
    k.check()
    assert k.slub.live(folio_cache) == 0
    assert _allocated(k) == _slab_pages(k)
    del before


def test_descriptor_failure_allocates_no_pages():
    fault = FaultInjection(desc=FaultAttr(probability=100, context="any", times=1))
    k = _kernel("page16", fault)
    allocs = int(k.stats[0])
    f = F.folio_alloc_nb(k.E, gfp.GFP_HIGHUSER_MOVABLE, 4, int(k.slub.sp[SP_T_FILE]), 0)
    assert f == 0 and int(k.stats[0]) == allocs and fault.failures("desc") == 1
