"""A Census of an emulated kernel, so a simulation and a snapshot compare side by side.

The survey derives its Census from /proc/kpageflags; here the same classes come from what the
emulator knows exactly: page-cache folios (file), processes' folios (anon), slabs of every
cache (slab; the descriptor caches included, as kpageflags would show them as SLAB), page
tables (pagetable: PGDs of order 1, tables, deposited THP tables), Misc allocations (vmalloc,
kmalloc_large, page_pool and zsmalloc pages: untyped, since kpageflags shows them with no
class flag), reserved pages, free blocks (buddy by order, pcp pages as order-0 units) and
holes. Whatever the page allocator holds that no user accounts for is reported in
``extras["unaccounted_pages"]`` and counted as untyped (it should be 0).
"""

from __future__ import annotations

import numpy as np

from memdesc.analysis.census import CLASSES, NR_UNIT_ORDERS, Census
from memdesc.mm.mmzone import PAGES_PER_SECTION
from memdesc.mm.slab_common import KMALLOC_MAX_CACHE_SIZE, get_order


def _units(orders: np.ndarray) -> np.ndarray:
    return np.bincount(np.asarray(orders, np.int64), minlength=NR_UNIT_ORDERS)[:NR_UNIT_ORDERS]


def census_of_world(world) -> Census:
    """The Census of a scenario World (memdesc.analysis.scenario.World) now."""
    from memdesc.mm import page_alloc as pa
    from memdesc.mm.memory import count_tables_nb
    from memdesc.mm.slab import G_MIN_ORDER, G_ORDER, G_PAGES, G_SLABS

    k = world.k
    m = k.machine
    units = {c: np.zeros(NR_UNIT_ORDERS, np.int64) for c in CLASSES}

    # file folios
    for f in world.pc.files.values():
        _, folios = world.pc.heads(f)
        if folios.size:
            units["file"] += _units(world.pc._orders(folios))
    # anon folios and page tables
    pt_order0 = 0
    pgds = 0
    for p in world.anon.procs.values():
        units["anon"] += _units(p.orders[p.mapped])
        pt_order0 += int(count_tables_nb(k.E[2], k.E[3], p.pgd)) + int((p.pmds & p.mapped).sum())
        pgds += 1
    units["pagetable"][0] += pt_order0
    units["pagetable"][1] += pgds
    # slabs by order (slabs at the fallback order told apart by the page count)
    for kc in k.slub.cache_list:
        g = k.slub.geo[kc.index]
        slabs, pages = int(g[G_SLABS]), int(g[G_PAGES])
        o, mo = int(g[G_ORDER]), int(g[G_MIN_ORDER])
        big = slabs if o == mo else (pages - slabs * (1 << mo)) // ((1 << o) - (1 << mo))
        units["slab"][o] += big
        units["slab"][mo] += slabs - big
    # Misc and other untyped allocations
    untyped = units["untyped"]
    for areas in world.vmalloc.values():
        for ar in areas:
            untyped[0] += _vmalloc_pages(ar)
    for stack_owner in world.anon.procs.values():
        untyped[0] += _vmalloc_pages(stack_owner.stack)
    for chunks in world.kmalloc.values():
        for addrs, sizes in chunks:
            big = (addrs != 0) & (sizes > KMALLOC_MAX_CACHE_SIZE)
            for s in sizes[big].tolist():
                untyped[get_order(int(s))] += 1
    for pool in world.net.values():
        untyped[pool.order] += pool.pfns.shape[0]
    for pool in world.zs.values():
        for row in pool.live_zs:
            untyped[0] += pool.classes[pool.zs_class[row]].pages_per_zspage
    for pages in world.reserved:
        units["reserved"][0] += pages.shape[0]
    units["zero"][0] += int(world.zero_pfn >= 0)

    # free memory: buddy blocks by order, pcp pages as order-0 units
    nr_free = pa.free_area_counts(k.mm).sum(axis=0)
    units["free"][: nr_free.shape[0]] += nr_free
    units["free"][0] += int(pa.pcp_count(k.mm).sum())

    ram = sum(e - s for s, e in m.ram)
    managed = sum(z.managed for z in m.zones)
    units["reserved"][0] += ram - managed
    units["hole"][0] += k.mm.nr_pfns - ram
    orders = 1 << np.arange(NR_UNIT_ORDERS, dtype=np.int64)
    pages = {c: int((units[c] * orders).sum()) for c in CLASSES}
    unaccounted = k.mm.nr_pfns - sum(pages.values())
    if unaccounted > 0:
        units["untyped"][0] += unaccounted
        pages["untyped"] += unaccounted
    census = Census(
        source=f"memdesc simulate {world.scenario.name} @ {k.stage.id}", pfns=k.mm.nr_pfns,
        pages_by_class=pages, units_by_class=units,
        memmap_pages=len(m.sections_present()) * PAGES_PER_SECTION,
        ram_pages=sum(z.present for z in m.zones), nr_cpus=m.nr_cpus,
        extras={"emulated_stage": k.stage.id, "unaccounted_pages": unaccounted})
    census.check()
    return census


def _vmalloc_pages(area) -> int:
    n = area.pages.shape[0]
    if not isinstance(area.array, int):
        n += _vmalloc_pages(area.array)
    return n
