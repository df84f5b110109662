"""Slab and folio throughput at v6.18 and page16, and what a dynamic descriptor costs.

Batch paths (one numba call per batch), debug records and invariant checks off, on a 16 GiB
machine. For each stage:

* ``slab_alloc`` / ``slab_free``: kmem_cache_alloc()/kmem_cache_free() of 2 M kmalloc-64
  objects; ``slab_ops`` counts both directions together;
* ``folio_alloc_oN`` / ``folio_put_oN``: folio_alloc() of file folios of order N (0, 2, 4, 9)
  and their final folio_put().

``descriptor_cost_oN`` is the page16 / v6.18 time ratio of folio_alloc() in the same run, and
``descriptor_ns_oN`` the extra nanoseconds per allocation: the price of allocating a
struct folio from slab before the pages (and freeing it after them).
Targets: >= 3 M slab ops/s and >= 2 M order-0 folio allocations/s at page16.
"""

from __future__ import annotations

import time

import numpy as np

from memdesc.mm import gfp
from memdesc.mm.folio import folio_alloc_bulk, folio_put_bulk_nb
from memdesc.mm.mm_init import Kernel
from memdesc.mm.mmzone import Machine

STAGES = ("v6.18", "page16")
SLAB_OBJECTS = 2_000_000
FOLIOS = {0: 1_000_000, 2: 300_000, 4: 80_000, 9: 3_000}
REPEATS = 3


def _best(fn) -> float:
    """Best of REPEATS wall times of ``fn()`` (which must leave the kernel as it found it)."""
    best = float("inf")
    for _ in range(REPEATS):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure(stage: str) -> dict[str, float]:
    k = Kernel(Machine.from_spec("16G"), stage, debug=False)
    out: dict[str, float] = {}
    kc = k.slub.cache("kmalloc-64")
    # warm up (compile, and let the caches reach their steady size)
    k.slub.kmem_cache_free(kc, k.slub.kmem_cache_alloc_bulk(kc, gfp.GFP_KERNEL, 1000))
    times = {"alloc": [], "free": []}
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        objs = k.slub.kmem_cache_alloc_bulk(kc, gfp.GFP_KERNEL, SLAB_OBJECTS)
        t1 = time.perf_counter()
        k.slub.kmem_cache_free(kc, objs)
        t2 = time.perf_counter()
        assert (objs != 0).all()
        times["alloc"].append(t1 - t0)
        times["free"].append(t2 - t1)
    ta, tf = min(times["alloc"]), min(times["free"])
    out["slab_alloc"] = SLAB_OBJECTS / ta
    out["slab_free"] = SLAB_OBJECTS / tf
    out["slab_ops"] = 2 * SLAB_OBJECTS / (ta + tf)
    for order, n in FOLIOS.items():
        folio_put_bulk_nb(k.E, folio_alloc_bulk(k, gfp.GFP_HIGHUSER_MOVABLE, order, 64))
        ta_l, tp_l = [], []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            fs = folio_alloc_bulk(k, gfp.GFP_HIGHUSER_MOVABLE, order, n)
            t1 = time.perf_counter()
            folio_put_bulk_nb(k.E, fs)
            t2 = time.perf_counter()
            assert int(np.count_nonzero(fs)) == n
            ta_l.append(t1 - t0)
            tp_l.append(t2 - t1)
        out[f"folio_alloc_o{order}"] = n / min(ta_l)
        out[f"folio_put_o{order}"] = n / min(tp_l)
    return out


def main() -> None:
    res = {s: measure(s) for s in STAGES}
    for s in STAGES:
        r = res[s]
        for key in ("slab_alloc", "slab_free", "slab_ops"):
            print(f"bench: descriptors.{key}_{s} = {r[key] / 1e6:.2f} M ops/s", flush=True)
        for order in FOLIOS:
            print(f"bench: descriptors.folio_alloc_o{order}_{s} = "
                  f"{r[f'folio_alloc_o{order}'] / 1e6:.2f} M/s", flush=True)
            print(f"bench: descriptors.folio_put_o{order}_{s} = "
                  f"{r[f'folio_put_o{order}'] / 1e6:.2f} M/s", flush=True)
    base, dyn = res["v6.18"], res["page16"]
    for order in FOLIOS:
        a, b = base[f"folio_alloc_o{order}"], dyn[f"folio_alloc_o{order}"]
        print(f"bench: descriptors.descriptor_cost_o{order} = {a / b:.2f} x (page16 / v6.18 "
              f"folio_alloc time)", flush=True)
        print(f"bench: descriptors.descriptor_ns_o{order} = {1e9 / b - 1e9 / a:.0f} ns per "
              f"folio_alloc", flush=True)


if __name__ == "__main__":
    main()
