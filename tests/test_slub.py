"""SLUB sizing against the real /proc/slabinfo of the 6.18 fixture machine, and the allocator."""

from __future__ import annotations

import pytest

from conftest import fixture_dir
from memdesc.ingest.procfs import parse_slabinfo
from memdesc.mm import slab as mslab
from memdesc.mm import slab_common as sc
from memdesc.mm import slub, slub_sizing


def _slabinfo():
    path = fixture_dir("snapshot-idle") / "slabinfo.txt"
    return parse_slabinfo(path.read_text())


def _cpus() -> int:
    return int((fixture_dir("snapshot-idle") / "nproc.txt").read_text().split()[0])


def test_kmalloc_rows_match_calculate_order():
    """kmalloc-8 .. kmalloc-8k incl. 96 and 192: objperslab and pagesperslab as SLUB computes."""
    rows = {r.name: r for r in _slabinfo()}
    nr_cpus = _cpus()
    seen = 0
    for index, size in sc.KMALLOC_INFO_SIZES.items():
        for kind in sc.KMALLOC_TYPES:
            name = sc.kmalloc_cache_name(index, kind)
            assert name in rows, f"{name} missing from the real slabinfo"
            row = rows[name]
            geo = slub_sizing.calculate_sizes(size, slub_sizing.SLAB_KMALLOC, nr_cpus=nr_cpus)
            assert (row.objsize, row.objperslab, row.pagesperslab) == (
                geo.size, geo.objects, 1 << geo.order), name
            seen += 1
    assert seen == 13 * 4


def test_every_slabinfo_row_matches_calculate_order():
    """slabinfo prints s->size; calculate_order(s->size) must reproduce every cache's slab shape."""
    nr_cpus = _cpus()
    rows = _slabinfo()
    assert len(rows) > 200
    for r in rows:
        order = slub_sizing.calculate_order(r.objsize, nr_cpus)
        assert (1 << order, slub_sizing.order_objects(order, r.objsize)) == (
            r.pagesperslab, r.objperslab), r.name


def test_kmalloc_index_table():
    assert [sc.kmalloc_index(s) for s in (1, 8, 9, 16, 17, 32, 33, 64, 65, 96, 97, 128, 129,
                                          192, 193, 256, 257, 4096, 4097, 8192)] == [
        3, 3, 4, 4, 5, 5, 6, 6, 1, 1, 7, 7, 2, 2, 8, 8, 9, 12, 13, 13]
    assert sc.kmalloc_size_roundup(100) == 128
    assert sc.kmalloc_size_roundup(8193) == 16384
    assert sc.KMALLOC_MAX_CACHE_SIZE == 8192
    with pytest.raises(ValueError):
        sc.kmalloc_index(8193)


def test_min_objects_and_rcu_free_pointer():
    assert slub_sizing.default_min_objects(2) == 12
    assert slub_sizing.default_min_objects(64) == 32
    # A TYPESAFE_BY_RCU cache keeps its free pointer outside the object unless it names a
    # word inside it (kmem_cache_args.freeptr_offset): 80 -> 96 vs 80 with 16-byte alignment.
    outside = slub_sizing.calculate_sizes(80, slub_sizing.SLAB_TYPESAFE_BY_RCU, 16)
    inside = slub_sizing.calculate_sizes(80, slub_sizing.SLAB_TYPESAFE_BY_RCU, 16, freeptr_offset=8)
    assert (outside.size, outside.offset) == (96, 80)
    assert (inside.size, inside.offset) == (80, 8)
    assert inside.objects == 51 and inside.order == 0
    # kmalloc-8k: 4 objects in an order-3 slab, min (fallback) order 1 holds one object.
    k8 = slub_sizing.calculate_sizes(8192)
    assert (k8.order, k8.objects) == (3, 4)
    assert (slub_sizing.oo_order(k8.min), slub_sizing.oo_objects(k8.min)) == (1, 1)


# ---- the allocator ----------------------------------------------------------------------------

import numpy as np  # noqa: E402

from memdesc.mm import gfp  # noqa: E402
from memdesc.mm import page_alloc as pa  # noqa: E402
from memdesc.mm.fault_inject import FaultAttr, FaultInjection  # noqa: E402
from memdesc.mm.kmem import PAGE_OFFSET  # noqa: E402
from memdesc.mm.memdesc_alloc import ST_DESC_FAIL_UNWIND, ST_PAGE_ALLOCS  # noqa: E402
from memdesc.mm.mm_init import Kernel  # noqa: E402
from memdesc.mm.mmzone import Machine  # noqa: E402
from memdesc.stages import STAGE_IDS  # noqa: E402

TINY = dict(hole_start="32M", dma32_end="40M")


def _kernel(stage: str, fault=None) -> Kernel:
    return Kernel(Machine.from_spec("64M", **TINY), stage, fault=fault)


def _allocated_pages(k: Kernel) -> int:
    managed = sum(z.managed for z in k.machine.zones)
    return managed - int(pa.zone_free_pages(k.mm).sum()) - int(pa.pcp_count(k.mm).sum())


def _slab_pages(k: Kernel) -> int:
    return sum(k.slub.pages(kc) for kc in k.slub.cache_list)


def test_struct_slab_and_kmem_cache_node_offsets_match_pahole():
    text = (fixture_dir("btf") / "pahole" / "slab.txt").read_text()
    for name, off in (("slab_cache", mslab.SLAB_CACHE), ("freelist", mslab.SLAB_FREELIST),
                      ("counters", mslab.SLAB_COUNTERS), ("__page_type", mslab.SLAB_PAGE_TYPE),
                      ("obj_exts", mslab.SLAB_OBJ_EXTS)):
        line = next(ln for ln in text.splitlines() if f" {name};" in ln)
        assert f"/*    {off:>2} " in line or f"/* {off:>5} " in line, (name, line)
    assert "slab_list; /*    16" in text
    kcn = (fixture_dir("btf") / "pahole" / "extra.kmem_cache_node.txt").read_text()
    assert "nr_partial;           /*     8" in kcn and "partial;              /*    16" in kcn
    assert "size: 72" in kcn


@pytest.mark.parametrize("stage", STAGE_IDS)
def test_alloc_free_every_stage(stage):
    k = _kernel(stage)
    kc = k.slub.cache("kmalloc-64")
    objs = k.slub.kmem_cache_alloc_bulk(kc, gfp.GFP_KERNEL, 3000)
    assert (objs != 0).all() and len(set(objs.tolist())) == 3000
    assert ((objs - np.uint64(PAGE_OFFSET)) % np.uint64(64) == 0).all()
    assert k.slub.live(kc) == 3000 and k.slub.slabs(kc) == -(-3000 // 64)
    k.check()
    # every object maps back to its slab through the stage's struct page / memdesc word
    slabs = {int(mslab.virt_to_slab(k.E, o)) for o in objs[::97]}
    assert 0 not in slabs
    k.slub.kmem_cache_free(kc, objs[::2])
    k.check()
    k.slub.kmem_cache_free(kc, objs[1::2])
    k.check()
    assert k.slub.live(kc) == 0
    # emptied slabs went back to the page allocator except min_partial (5) and the cpu slab
    assert k.slub.slabs(kc) <= slub_sizing.MIN_PARTIAL + 1
    assert _allocated_pages(k) == _slab_pages(k)


@pytest.mark.parametrize("stage", ["v6.18", "dynamic", "page8"])
def test_kmalloc_classes_and_large(stage):
    k = _kernel(stage)
    sizes = [1, 8, 9, 96, 100, 192, 200, 4096, 8192, 8193, 20000]
    addrs = k.slub.kmalloc(sizes, gfp.GFP_KERNEL)
    assert (addrs != 0).all()
    names = {}
    for s, a in zip(sizes, addrs, strict=True):
        slab = int(mslab.virt_to_slab(k.E, a))
        if s > 8192:
            assert slab == 0 and int(a) % 4096 == 0        # kmalloc_large: whole pages
        else:
            names[s] = k.slub.cache_list[int(slub._cache_of_slab(k.E, np.uint64(slab)))].name
    assert names == {1: "kmalloc-8", 8: "kmalloc-8", 9: "kmalloc-16", 96: "kmalloc-96",
                     100: "kmalloc-128", 192: "kmalloc-192", 200: "kmalloc-256",
                     4096: "kmalloc-4k", 8192: "kmalloc-8k"}
    before = _allocated_pages(k)
    k.slub.kfree(addrs)
    k.check()
    assert _allocated_pages(k) == before - 4 - 8          # orders 2 and 3 went straight back
    with pytest.raises(pa.VMBug):
        k.slub.kmem_cache_free(k.slub.cache("kmalloc-64"), addrs[:1])   # not its cache


def test_slab_descriptors_are_self_hosted_at_dynamic():
    k = _kernel("page16")
    sd = k.slub.cache("memdesc_slab")
    kc = k.slub.cache("kmalloc-4k")              # order-3 slabs, 8 objects each
    objs = k.slub.kmem_cache_alloc_bulk(kc, gfp.GFP_KERNEL, 80)
    # one struct slab per kmalloc-4k slab (plus the other caches' slabs) lives in memdesc_slab
    assert k.slub.live(sd) >= k.slub.slabs(kc)
    for o in objs[::8]:
        slab = int(mslab.virt_to_slab(k.E, o))
        assert mslab.virt_to_slab(k.E, np.uint64(slab)) != 0          # a slab object itself
        owner = int(mslab.virt_to_slab(k.E, np.uint64(slab)))
        # the descriptor's own slab describes itself: object 0 at the page start
        assert owner % 4096 == 0 and int(mslab.virt_to_slab(k.E, np.uint64(owner))) == owner
    geo = {r[0]: r[3] for r in k.slub.slabinfo()}
    assert (geo["folio"], geo["folio_large"], geo["memdesc_slab"], geo["ptdesc"],
            geo["zpdesc"], geo["netmem_desc"]) == (80, 128, 64, 64, 64, 48)
    k.slub.kmem_cache_free(kc, objs)
    k.check()


@pytest.mark.parametrize("stage", ["v6.18", "dynamic", "page16"])
def test_free_never_allocates(stage):
    k = _kernel(stage)
    kc = k.slub.cache("kmalloc-512")
    objs = k.slub.kmem_cache_alloc_bulk(kc, gfp.GFP_KERNEL, 2000)
    allocs = int(k.stats[ST_PAGE_ALLOCS])
    k.slub.kmem_cache_free(kc, objs)
    assert int(k.stats[ST_PAGE_ALLOCS]) == allocs


@pytest.mark.parametrize("stage", ["v6.18", "dynamic", "page8"])
def test_injected_page_failures_unwind_descriptors(stage):
    fault = FaultInjection(page=FaultAttr(probability=30, context="any", seed=3))
    k = _kernel(stage, fault)
    kc = k.slub.cache("kmalloc-2k")
    objs = k.slub.kmem_cache_alloc_bulk(kc, gfp.GFP_KERNEL, 400)
    failed = int((objs == 0).sum())
    assert failed > 0 and fault.failures("page") > 0
    k.check()
    if k.stage.dynamic:     # each failed slab allocation had its struct slab freed again
        assert int(k.stats[ST_DESC_FAIL_UNWIND]) > 0
    else:
        assert int(k.stats[ST_DESC_FAIL_UNWIND]) == 0
    k.slub.kmem_cache_free(kc, objs[objs != 0])
    k.check()
    assert _allocated_pages(k) == _slab_pages(k)      # nothing leaked


def test_nth_descriptor_failure():
    fault = FaultInjection(desc=FaultAttr.nth(3, context="any"))
    k = _kernel("dynamic", fault)
    kc = k.slub.cache("kmalloc-8k")              # a new slab (and struct slab) every 4 objects
    objs = k.slub.kmem_cache_alloc_bulk(kc, gfp.GFP_KERNEL, 40)
    assert fault.failures("desc") == 1 and int((objs == 0).sum()) == 1
    k.check()
    k.slub.kmem_cache_free(kc, objs[objs != 0])
    k.check()


def test_fault_attr_semantics():
    """should_fail_ex() order: space passes calls, interval picks every Nth, times caps."""
    from memdesc.mm.gfp import GFP_ATOMIC, GFP_KERNEL

    fi = FaultInjection(page=FaultAttr(probability=100, interval=3, times=2, space=2))
    got = [fi.should_fail("page", GFP_ATOMIC) for _ in range(12)]
    # two calls pass (space), then calls 3 and 6 of the counted ones fail, then times is spent
    assert [i for i, g in enumerate(got) if g] == [4, 7]
    # the default context is "atomic" (ignore-gfp-wait=Y): a caller that may reclaim passes
    fi = FaultInjection(failslab=FaultAttr(probability=100))
    assert not fi.should_fail("failslab", GFP_KERNEL) and fi.should_fail("failslab", GFP_ATOMIC)
    fi = FaultInjection(page=FaultAttr(probability=100, context="reclaim", min_order=2))
    assert not fi.should_fail("page", GFP_ATOMIC, 3) and not fi.should_fail("page", GFP_KERNEL)
    assert fi.should_fail("page", GFP_KERNEL, 2)
    fi = FaultInjection(page=FaultAttr(probability=25, context="any", seed=9))
    frac = sum(fi.should_fail("page", GFP_KERNEL) for _ in range(4000)) / 4000
    assert 0.2 < frac < 0.3
