"""Page allocator speed and memory at every stage of the Path.

* order-0 alloc/free pairs and a mixed-order churn on a 64 GiB machine, batch mode (one numba
  call per sequence: memdesc.mm.page_alloc.run_ops), per stage. An "op" is one allocation or
  one free. Targets: >= 10 M ops/s for order-0 pairs, >= 5 M ops/s for the churn.
* the one-call Python API (alloc_pages + free_pages) per call.
* process RSS against mem_map bytes emulating a 256 GiB machine at v6.18 and a 1 TiB machine
  at page16 (each in a fresh subprocess). Target: RSS <= 1.2 x mem_map + 300 MB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
from numba import njit

from memdesc.mm import page_alloc as pa
from memdesc.mm.gfp import GFP, GFP_HIGHUSER_MOVABLE, GFP_KERNEL
from memdesc.mm.mmzone import Machine

STAGES = ("v6.18", "folio", "dynamic", "page32", "page32@path-2025", "page16", "page8",
          "page8/inpage")
N_PAIRS = 2_000_000          # pairs -> 4 M ops
N_CHURN = 4_000_000
CHURN_SLOTS = 200_000        # live allocations at steady state (~ a quarter of the machine)
#: order mix of the churn: the mm_page_alloc order histogram of the two fixture traces
#: (trace-pagecache + trace-slab: 118737 x 0, 1373 x 1, 2962 x 2, 8 x 3, 131 x 4, 1 x 5,
#: 32 x 6, 2056 x 8, 1009 x 9) [M], plus a little order 10 so every order is exercised.
ORDERS = np.array([0, 1, 2, 3, 4, 5, 6, 8, 9, 10])
WEIGHTS = np.array([118737, 1373, 2962, 8, 131, 1, 32, 2056, 1009, 13], float)
WEIGHTS /= WEIGHTS.sum()
GFPS = np.array([GFP_HIGHUSER_MOVABLE, GFP_KERNEL, GFP_KERNEL | GFP.RECLAIMABLE,
                 GFP_KERNEL | GFP.COMP])


@njit(cache=True)
def _churn_sequence(n, nslots, orders, gfps, seed):
    """A valid alloc/free sequence: allocations go to empty slots, frees empty a random live
    slot; alloc and free equally likely once the slots are half full."""
    np.random.seed(seed)
    kinds = np.empty(n, np.int64)
    slot = np.empty(n, np.int64)
    order = np.zeros(n, np.int64)
    gfp = np.zeros(n, np.int64)
    free_slots = np.arange(nslots)[::-1].copy()
    nfree = nslots
    live = np.empty(nslots, np.int64)
    pos = np.full(nslots, -1, np.int64)
    nlive = 0
    for i in range(n):
        want_alloc = np.random.random() < (0.75 if nlive < nslots // 2 else 0.5)
        if (want_alloc and nfree > 0) or nlive == 0:
            nfree -= 1
            s = free_slots[nfree]
            kinds[i] = 0
            slot[i] = s
            order[i] = orders[i]
            gfp[i] = gfps[i]
            live[nlive] = s
            pos[s] = nlive
            nlive += 1
        else:
            k = np.random.randint(0, nlive)
            s = live[k]
            nlive -= 1
            live[k] = live[nlive]
            pos[live[k]] = k
            free_slots[nfree] = s
            nfree += 1
            kinds[i] = 1
            slot[i] = s
    return kinds, gfp, order, slot


def _rate(n_ops: int, seconds: float) -> str:
    return f"{n_ops / seconds / 1e6:.1f} Mops/s"


def bench_throughput() -> None:
    machine = Machine.from_spec("64G")
    pair_kinds = np.tile(np.array([0, 1], np.int64), N_PAIRS)
    pair_slots = np.zeros(2 * N_PAIRS, np.int64)
    rng = np.random.default_rng(1)
    orders = rng.choice(ORDERS, N_CHURN, p=WEIGHTS)
    gfps = rng.choice(GFPS, N_CHURN, p=[0.6, 0.25, 0.1, 0.05])
    gfps = np.where((gfps & GFP.COMP) & (orders == 0), GFP_KERNEL, gfps)
    kinds, gfp, order, slot = _churn_sequence(N_CHURN, CHURN_SLOTS, orders, gfps, 7)
    warm = pa.MemMap(machine, "v6.18", debug=False)          # page faults, caches, clocks
    pa.run_ops(warm, pair_kinds, GFP_KERNEL, 0, pair_slots, 1)
    pa.run_ops(warm, kinds, gfp, order, slot, CHURN_SLOTS)
    del warm
    for stage in STAGES:
        mm = pa.MemMap(machine, stage, debug=False)
        t = time.perf_counter()
        out, _ = pa.run_ops(mm, pair_kinds, GFP_KERNEL, 0, pair_slots, 1)
        dt = time.perf_counter() - t
        assert (out >= 0).all()
        print(f"bench: page_alloc.order0_pairs[{stage}] = {_rate(out.size, dt)}", flush=True)
        t = time.perf_counter()
        out, _ = pa.run_ops(mm, kinds, gfp, order, slot, CHURN_SLOTS)
        dt = time.perf_counter() - t
        fails = int(((out < 0) & (kinds == 0)).sum())
        print(f"bench: page_alloc.mixed_churn[{stage}] = {_rate(out.size, dt)}", flush=True)
        if fails:
            print(f"bench: page_alloc.mixed_churn_failed_allocs[{stage}] = {fails} allocs")


def bench_python_api() -> None:
    machine = Machine.from_spec("64G")
    for stage in ("v6.18", "page16"):
        mm = pa.MemMap(machine, stage, debug=False)
        n = 100_000
        pa.free_pages(mm, pa.alloc_pages(mm, GFP_KERNEL, 0))
        t = time.perf_counter()
        for _ in range(n):
            pa.free_pages(mm, pa.alloc_pages(mm, GFP_KERNEL, 0))
        dt = time.perf_counter() - t
        print(f"bench: page_alloc.python_call[{stage}] = {dt / (2 * n) * 1e6:.2f} us/call",
              flush=True)


_RSS_CHILD = """
import json, resource, sys, time
import numpy as np
from memdesc.mm import page_alloc as pa
from memdesc.mm.gfp import GFP_KERNEL, GFP_HIGHUSER_MOVABLE
from memdesc.mm.mmzone import Machine
spec, stage = sys.argv[1], sys.argv[2]
t = time.perf_counter()
mm = pa.MemMap(Machine.from_spec(spec), stage, debug=False)
boot = time.perf_counter() - t
pfns = pa.alloc_pages_bulk(mm, GFP_HIGHUSER_MOVABLE, np.zeros(1_000_000, np.int64))
pa.alloc_pages_bulk(mm, GFP_KERNEL, np.full(1000, 9))
pa.free_pages_bulk(mm, pfns[::2], 0)
with open("/proc/self/status") as f:
    st = dict(l.split(":", 1) for l in f)
kib = lambda k: int(st[k].split()[0]) * 1024
print(json.dumps({"rss": kib("VmRSS"), "hwm": kib("VmHWM"), "mem_map": mm.mem.nbytes,
                  "state": mm.S.nbytes, "boot": boot}))
"""


def bench_rss() -> None:
    for spec, stage in (("256G", "v6.18"), ("1T", "page16")):
        r = subprocess.run([sys.executable, "-c", _RSS_CHILD, spec, stage], check=True,
                           capture_output=True, text=True, env=os.environ)
        d = json.loads(r.stdout.strip().splitlines()[-1])
        mm_mb, rss_mb = d["mem_map"] / 1e6, d["hwm"] / 1e6
        limit = 1.2 * mm_mb + 300
        tag = f"{spec}@{stage}"
        print(f"bench: page_alloc.mem_map_bytes[{tag}] = {mm_mb:.0f} MB")
        print(f"bench: page_alloc.peak_rss[{tag}] = {rss_mb:.0f} MB "
              f"(limit 1.2 x mem_map + 300 = {limit:.0f} MB, "
              f"{'ok' if rss_mb <= limit else 'OVER'})")
        print(f"bench: page_alloc.boot_time[{tag}] = {d['boot']:.1f} s", flush=True)


def main() -> None:
    bench_throughput()
    bench_python_api()
    bench_rss()


if __name__ == "__main__":
    main()
