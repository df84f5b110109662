"""Speed of `memdesc simulate` steps, per stage: what memdesc.analysis.scenario_limits assumes.

One World (the emulated kernel and its users) on an 8 GiB machine at v6.18 and page16, each
step timed once after a small warm-up step of the same kind (compiled kernels):

* ``pagecache_pages_per_s`` / ``anon_pages_per_s``: order-0 page cache reads and anon faults;
* ``forks_per_s``: fork of a process that touches 64 KiB;
* ``kmalloc_per_s`` / ``churn_ops_per_s``: kmalloc() of 8..1024 bytes, and kmalloc churn.

The limits (PAGES_PER_S, FORKS_PER_S, KMALLOCS_PER_S, CHURN_OPS_PER_S) are set at or below
the slower stage here, so the "would run for hours" estimate is not optimistic.
"""

from __future__ import annotations

import time

from memdesc.analysis.scenario import World, parse_scenario
from memdesc.stages import get_stage

STAGES = ("v6.18", "page16")
#: (figure, warm-up step, timed step, units the timed step does)
STEPS = (
    ("pagecache_pages_per_s", "pagecache 4M file=w", "pagecache 2G file=a", 2 << 18),
    ("anon_pages_per_s", "anon 4M proc=w", "anon 1G proc=p", 1 << 18),
    ("forks_per_s", "fork 5 touch=64K proc=w", "fork 2000 touch=64K proc=f", 2000),
    ("kmalloc_per_s", "kmalloc 1000 size=8-1024 tag=w", "kmalloc 2000000 size=8-1024",
     2_000_000),
    ("churn_ops_per_s", "kmalloc churn count=1000 sizes=8-512 live=100 tag=w",
     "kmalloc churn count=2000000 sizes=8-512 live=20000", 2_000_000),
)


def measure(stage: str) -> dict[str, float]:
    text = "machine 8G\n" + "\n".join(f"{w}\n{t}" for _, w, t, _ in STEPS) + "\n"
    sc = parse_scenario(text, "bench")
    world = World(sc, get_stage(stage))
    out = {}
    for i, (name, _, _, units) in enumerate(STEPS):
        world.run(sc.steps[2 * i])
        t = time.perf_counter()
        world.run(sc.steps[2 * i + 1])
        out[name] = units / (time.perf_counter() - t)
    return out


def main() -> None:
    for stage in STAGES:
        for name, value in measure(stage).items():
            print(f"bench: simulate.{stage}.{name} = {value:,.0f} /s")


if __name__ == "__main__":
    main()
