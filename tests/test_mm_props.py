"""Random interleavings of folio, slab, page-table and kmalloc work at every stage.

Hypothesis writes small scenarios (the same language as examples/*.scenario) and runs them on
a 64 MiB machine with every invariant checked after every step (the page allocator's
check_memmap() and the slab/descriptor checks):

* with fault injection (failslab, descriptor caches, page allocator; any gfp context) every
  stage keeps its invariants and, once everything is freed, leaks nothing;
* without injected faults, and with memory kept below exhaustion, all six stages give
  identical observable results.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memdesc.analysis.scenario import compare_runs, parse_scenario, run_stage
from memdesc.mm.fault_inject import FaultAttr, FaultInjection
from memdesc.stages import STAGE_IDS

ORDERS = st.sampled_from([0, 1, 2, 4, 9])
#: Examples per property (a few seconds by default; set MEMDESC_PROP_EXAMPLES for a soak).
EXAMPLES = int(os.environ.get("MEMDESC_PROP_EXAMPLES", "12"))

step = st.one_of(
    st.builds(lambda kb, o, f: f"pagecache {kb}K file=f{f} order={o}",
              st.integers(4, 2048), ORDERS, st.integers(0, 2)),
    st.builds(lambda kb, o, p: f"anon {kb}K proc=p{p} order={o}",
              st.integers(4, 3072), ORDERS, st.integers(0, 2)),
    st.builds(lambda n, kb: f"fork {n} touch={kb}K proc=w", st.integers(1, 4),
              st.integers(4, 256)),
    st.builds(lambda a: f"exit {a} proc=w", st.sampled_from(["all", "half"])),
    st.builds(lambda n, lo, span, g: f"kmalloc {n} size={lo}-{lo + span} tag=t gfp={g}",
              st.integers(1, 400), st.integers(1, 9000), st.integers(0, 8000),
              st.sampled_from(["kernel", "atomic"])),
    st.builds(lambda n, live: f"kmalloc churn count={n} sizes=8-700 live={live}",
              st.integers(10, 3000), st.integers(1, 300)),
    st.builds(lambda kb: f"zsmalloc {kb}K pool=z", st.integers(4, 1024)),
    st.builds(lambda kb, o: f"netpool {kb}K pool=n{o} order={o}", st.integers(4, 512),
              st.sampled_from([0, 1, 3])),
    st.builds(lambda kb: f"vmalloc {kb}K tag=v", st.integers(4, 1024)),
    st.builds(lambda a, k: f"free {a} {k}", st.sampled_from(["all", "half", "25%"]),
              st.sampled_from(["pagecache", "anon", "kmalloc", "zsmalloc", "netpool",
                               "vmalloc"])),
    st.builds(lambda f, kb: f"truncate file=f{f} to={kb}K", st.integers(0, 2),
              st.integers(0, 1024)),
)

#: Frees everything a scenario can hold, so a leak shows as pages still allocated.
FREE_ALL = """
free all pagecache
free all kmalloc
free all zsmalloc
free all netpool
free all vmalloc
exit all
"""


def _scenario(steps: list[str], tail: str = "") -> str:
    return "machine 64M cpus=2\nseed 3\n" + "\n".join(steps) + "\n" + tail


def _allocated_minus_slabs(run) -> int:
    c = run.census
    return c.pages_by_class["file"] + c.pages_by_class["anon"] + c.pages_by_class[
        "pagetable"] + c.pages_by_class["untyped"] + c.extras["unaccounted_pages"]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step, min_size=1, max_size=10),
       attr=st.sampled_from(["failslab", "desc", "page"]),
       prob=st.sampled_from([2.0, 10.0, 40.0]), seed=st.integers(1, 1000))
def test_invariants_and_no_leak_with_fault_injection(steps, attr, prob, seed):
    sc = parse_scenario(_scenario(steps, FREE_ALL), "props")

    def factory():
        return FaultInjection(**{attr: FaultAttr(probability=prob, context="any", seed=seed)})

    for stage in STAGE_IDS:
        run = run_stage(sc, stage, check=True, fault_factory=factory)
        # after freeing everything only slab caches hold pages: nothing leaked
        assert _allocated_minus_slabs(run) == 0, (stage, run.census.pages_by_class)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step, min_size=1, max_size=10))
def test_same_observables_at_every_stage(steps):
    sc = parse_scenario(_scenario(steps), "props")
    runs = [run_stage(sc, stage, check=True) for stage in STAGE_IDS]
    cmp = compare_runs(runs)
    ref = runs[0]
    for r in runs:
        if cmp["divergences"][r.stage]:
            # a stage may differ only where memory ran out (then it is counted by kind)
            assert any(_failed(s["result"]) for s in r.steps + ref.steps)
            assert all(d["kind"] in ("atomic", "reclaim") for d in cmp["divergences"][r.stage])
    if not any(_failed(s["result"]) for r in runs for s in r.steps):
        assert cmp["identical_across_stages"], cmp["divergences"]


def _failed(result: dict) -> bool:
    return any(v for k, v in result.items() if k.startswith("failed") or k == "fallback_units")
