"""SLUB sizing against the real /proc/slabinfo of the 6.18 fixture machine, and the allocator."""

from __future__ import annotations

import pytest

from conftest import fixture_dir
from memdesc.ingest.procfs import parse_slabinfo
from memdesc.mm import slab_common as sc
from memdesc.mm import slub


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
            geo = slub.calculate_sizes(size, slub.SLAB_KMALLOC, nr_cpus=nr_cpus)
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
        order = slub.calculate_order(r.objsize, nr_cpus)
        assert (1 << order, slub.order_objects(order, r.objsize)) == (
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
    assert slub.default_min_objects(2) == 12
    assert slub.default_min_objects(64) == 32
    # A TYPESAFE_BY_RCU cache keeps its free pointer outside the object unless it names a
    # word inside it (kmem_cache_args.freeptr_offset): 80 -> 96 vs 80 with 16-byte alignment.
    outside = slub.calculate_sizes(80, slub.SLAB_TYPESAFE_BY_RCU, 16)
    inside = slub.calculate_sizes(80, slub.SLAB_TYPESAFE_BY_RCU, 16, freeptr_offset=8)
    assert (outside.size, outside.offset) == (96, 80)
    assert (inside.size, inside.offset) == (80, 8)
    assert inside.objects == 51 and inside.order == 0
    # kmalloc-8k: 4 objects in an order-3 slab, min (fallback) order 1 holds one object.
    k8 = slub.calculate_sizes(8192)
    assert (k8.order, k8.objects, slub.oo_order(k8.min), slub.oo_objects(k8.min)) == (3, 4, 1, 1)
