"""Cache model throughput (memdesc.analysis.cache_model): accesses per second through this
machine's caches (sysfs, else the default), for a working set that mostly hits L2 and for
one spread over a 400 MiB mem_map (every access misses every level)."""

from __future__ import annotations

import time

import numpy as np

from memdesc.analysis.cache_model import CacheModel, machine_caches
from memdesc.mm.access import OP_CLASSES, AccessStream
from memdesc.mm.kmem import VMEMMAP_START

N = 4_000_000


def stream(lines: int, seed: int = 1) -> AccessStream:
    rng = np.random.default_rng(seed)
    addr = np.uint64(VMEMMAP_START) + (rng.integers(0, lines, N) * 64).astype(np.uint64)
    first = np.arange(0, N + 1, 5, dtype=np.int64)
    return AccessStream(addr, (rng.random(N) < 0.3).astype(np.uint8),
                        rng.integers(0, len(OP_CLASSES), len(first) - 1).astype(np.uint8),
                        first)


def main() -> None:
    for name, lines in (("l2_working_set", 1 << 14), ("memmap_400mib", 6_553_600)):
        s = stream(lines)
        m = CacheModel(machine_caches())
        m.run(AccessStream(s.addr, s.kind, s.op_class[:2], s.op_first[:3]))   # compile
        t = time.perf_counter()
        m.run(s)
        rate = N / (time.perf_counter() - t)
        print(f"bench: cache_model.{name} = {rate / 1e6:.1f} M accesses/s "
              f"({m.config.spec()})", flush=True)


if __name__ == "__main__":
    main()
