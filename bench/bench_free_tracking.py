"""Free-page tracking options of page8 side by side: speed, walks and side memory.

On a 64 GiB machine, per option of ``page8`` (every registered one: ``--stages 'page8/*'``):

* the mixed-order churn of bench_page_alloc (4 M ops, the fixture traces' order mix; mostly
  pcp hits, as in the kernel);
* buddy allocations and frees: 50,000 order-4 blocks (above PAGE_ALLOC_COSTLY_ORDER, so no
  pcp list hides the free_area structure), allocated in one call and freed in another, in a
  shuffled order (frees merge with buddies in the middle of the lists: slist walks to each
  buddy's predecessor, so its frees cost grows with the list length, quadratic in all);
* the walks the option counts over both (slist: predecessor walks; bitmap: its searches),
  and its side memory for the machine.

Rates are in CPU seconds (time.process_time): the 2-core VM is shared and wall-clock figures
swing by 2x there.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from memdesc.mm import free_tracking as ft
from memdesc.mm import page_alloc as pa
from memdesc.mm.gfp import GFP_KERNEL
from memdesc.mm.mmzone import Machine
from memdesc.stages import TRACKING, get_stage, tracking_variants

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_page_alloc as bpa  # noqa: E402 -- the churn sequence and order mix

N_BUDDY = 50_000


def _rate(n: int, seconds: float) -> str:
    return f"{n / max(seconds, 1e-9) / 1e6:.2f} Mops/s"


def _timed(f, *args):
    t = time.process_time()
    out = f(*args)
    return out, time.process_time() - t


def main() -> None:
    machine = Machine.from_spec("64G")
    rng = np.random.default_rng(1)
    orders = rng.choice(bpa.ORDERS, bpa.N_CHURN, p=bpa.WEIGHTS)
    gfps = rng.choice(bpa.GFPS, bpa.N_CHURN, p=[0.6, 0.25, 0.1, 0.05])
    gfps = np.where((gfps & bpa.GFP.COMP) & (orders == 0), GFP_KERNEL, gfps)
    kinds, gfp, order, slot = bpa._churn_sequence(bpa.N_CHURN, bpa.CHURN_SLOTS, orders, gfps, 7)
    perm = rng.permutation(N_BUDDY)
    fours = np.full(N_BUDDY, 4, np.int64)
    for name in [v for v in tracking_variants() if v.startswith("page8/")]:
        stage = get_stage(name)
        side = TRACKING[stage.free_tracking].side_bytes_per_page * machine.nr_pfns
        print(f"bench: free_tracking.side_bytes[{name}] = {side / 2**20:.1f} MiB", flush=True)
        mm = pa.MemMap(machine, stage, debug=False)               # compiled, pages touched
        pa.run_ops(mm, kinds[:10_000], gfp[:10_000], order[:10_000], slot[:10_000],
                   bpa.CHURN_SLOTS)
        pa.free_pages_bulk(mm, pa.alloc_pages_bulk(mm, GFP_KERNEL, fours[:100]), 4)
        mm = pa.MemMap(machine, stage, debug=False)
        (out, _), dt = _timed(pa.run_ops, mm, kinds, gfp, order, slot, bpa.CHURN_SLOTS)
        print(f"bench: free_tracking.mixed_churn[{name}] = {_rate(out.size, dt)}", flush=True)
        pfns, dt = _timed(pa.alloc_pages_bulk, mm, GFP_KERNEL, fours)
        print(f"bench: free_tracking.buddy_alloc[{name}] = {_rate(N_BUDDY, dt)}", flush=True)
        got = pfns >= 0
        _, dt = _timed(pa.free_pages_bulk, mm, pfns[perm][got[perm]], 4)
        print(f"bench: free_tracking.buddy_free[{name}] = {_rate(int(got.sum()), dt)}",
              flush=True)
        walks = ft.walk_stats(mm.S)
        if walks is not None:
            print(f"bench: free_tracking.longest_walk[{name}] = {walks[2]} steps")
            print(f"bench: free_tracking.walk_steps_per_op[{name}] = "
                  f"{walks[1] / max(walks[3], 1):.2f} steps", flush=True)


if __name__ == "__main__":
    main()
