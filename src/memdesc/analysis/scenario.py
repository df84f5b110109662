"""Running a scenario (docs/scenario-format.md) on the emulated kernel at one stage.

:class:`World` is one emulated kernel and the users the steps drive; :func:`run_stage` runs
every step, recording the observable results and the metadata bytes, and
:func:`compare_runs` compares the stages. Parsing lives in
:mod:`memdesc.analysis.scenario_parse` and the limits in
:mod:`memdesc.analysis.scenario_limits`; both are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import njit

from memdesc.analysis.scenario_limits import check_scenario
from memdesc.analysis.scenario_parse import (
    GFP_CONTEXTS,
    VERBS,
    Scenario,
    Step,
    load_scenario,
    parse_scenario,
    parse_size,
)
from memdesc.errors import InputError

__all__ = ["GFP_CONTEXTS", "VERBS", "Scenario", "Step", "World", "StageRun", "check_scenario",
           "compare_runs", "load_scenario", "parse_scenario", "parse_size", "run_stage"]

# ---- running a scenario ---------------------------------------------------------------------

_GFP_OF = {"kernel": "GFP_KERNEL", "atomic": "GFP_ATOMIC", "nowait": "GFP_NOWAIT"}
#: Contexts that may not reclaim: a failure there is the plan's price, not a model artefact.
ATOMIC_CONTEXTS = ("atomic", "nowait")
#: Compressed object sizes zsmalloc steps store (uniform, bytes) [I: ~2.5:1 compression].
ZS_OBJECT_SIZES = (256, 3072)


@njit(cache=True)
def churn_ops(sizes, picks, live_max):
    """The kmalloc/kfree sequence of ``kmalloc churn``: op i allocates sizes[i] into slot i;
    whenever more than ``live_max`` slots are held, the one at position
    int(picks[i] * held) of the held list is swapped to the end and freed. Returns
    (kinds, sizes, slots) of the ops (kind 0 kmalloc, 1 kfree) and the slots held at the
    end, sorted."""
    n = sizes.shape[0]
    kinds = np.zeros(2 * n, np.int64)
    arg = np.zeros(2 * n, np.int64)
    slots = np.zeros(2 * n, np.int64)
    live = np.zeros(min(n, live_max) + 1, np.int64)
    held = 0
    k = 0
    for i in range(n):
        arg[k] = sizes[i]
        slots[k] = i
        k += 1
        live[held] = i
        held += 1
        if held > live_max:
            j = np.int64(picks[i] * held)
            live[j], live[held - 1] = live[held - 1], live[j]
            held -= 1
            kinds[k] = 1
            slots[k] = live[held]
            k += 1
    return kinds[:k], arg[:k], slots[:k], np.sort(live[:held])


def _digest(obj: Any) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


class World:
    """One emulated kernel running a scenario: the kernel and the users the steps drive."""

    def __init__(self, scenario: Scenario, stage, *, debug: bool = False, fault=None,
                 check: bool = False):
        from memdesc.mm.filemap import PageCache
        from memdesc.mm.memory import AnonMemory
        from memdesc.mm.mm_init import Kernel
        from memdesc.mm.mmzone import Machine
        from memdesc.mm.vmalloc import Vmalloc

        try:
            machine = Machine.from_spec(scenario.machine, nr_cpus=scenario.cpus)
        except ValueError as e:
            raise InputError(f"{scenario.name}: machine {scenario.machine}: {e}") from None
        self.scenario = scenario
        self.k = Kernel(machine, stage, debug=debug or check, check_every=0)
        self.check = check
        self.vm = Vmalloc(self.k)
        self.zero_pfn = self.vm.zero_page()
        self.pc = PageCache(self.k)
        self.anon = AnonMemory(self.k, self.vm)
        from memdesc.mm.zsmalloc import create_caches

        create_caches(self.k.slub)
        if fault is not None:
            self.k.arm_faults(fault)
        self.zs: dict[str, Any] = {}
        self.net: dict[str, Any] = {}
        self.kmalloc: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self.vmalloc: dict[str, list[Any]] = {}
        self.reserved: list[np.ndarray] = []
        self.counters: dict[str, int] = {}

    # ---- helpers ---------------------------------------------------------------------------
    def _gfp(self, context: str, thisnode: bool = False) -> int:
        from memdesc.mm import gfp

        return getattr(gfp, _GFP_OF[context]) | (gfp.GFP.THISNODE if thisnode else 0)

    def _rng(self, step: Step) -> np.random.Generator:
        return np.random.default_rng([self.scenario.seed, step.lineno])

    def _new_proc_name(self, prefix: str) -> str:
        n = self.counters.get(prefix, 0)
        self.counters[prefix] = n + 1
        return f"{prefix}.{n}"

    def _procs(self, prefix: str) -> list[str]:
        return [n for n in self.anon.procs if n.startswith(prefix)]

    # ---- steps -------------------------------------------------------------------------------
    def run(self, step: Step) -> dict[str, Any]:
        """Run one step; the observable result of the step itself. ``node=N`` runs the step's
        task on node N (numa_node_id(): every allocation of the step prefers node N and falls
        back along node N's zonelist, as alloc_pages_node() does); without it, node 0."""
        from memdesc.mm.memdesc_alloc import set_numa_node

        a = step.args
        set_numa_node(self.k.slub.sp, a.get("node", 0))
        fn = getattr(self, f"_step_{step.verb}")
        result = fn(step, a)
        if self.check:
            self.k.check()
        return result

    def _step_pagecache(self, step, a):
        f = self.pc.file(a["file"])
        if f is None:
            return {"ok": 0, "failed": 1, "why": "no inode"}
        r = self.pc.read(f, a["size"], a["order"])
        return {"ok": r["folios"], "fallback_units": r["fallback"], "failed_pages": r["failed"]}

    def _step_anon(self, step, a):
        p = self.anon.procs.get(a["proc"]) or self.anon.fork(a["proc"])
        if p is None:
            return {"ok": 0, "failed": 1, "why": "fork failed"}
        r = self.anon.fault(p, a["size"], a["order"])
        return {"ok": r["folios"], "fallback_units": r["fallback"], "failed_units": r["failed"]}

    def _step_fork(self, step, a):
        ok = failed = faults_failed = fallback = 0
        for _ in range(a["count"]):
            p = self.anon.fork(self._new_proc_name(a["proc"]))
            if p is None:
                failed += 1
                continue
            ok += 1
            r = self.anon.fault(p, a["touch"], a["order"])
            faults_failed += r["failed"]
            fallback += r["fallback"]
        return {"ok": ok, "failed": failed, "failed_units": faults_failed,
                "fallback_units": fallback}

    def _step_exit(self, step, a):
        from memdesc.mm.memory import pick_fraction

        names = self._procs(a["proc"])
        chosen = pick_fraction(np.arange(len(names)), a["amount"])
        for i in chosen.tolist():
            self.anon.exit(names[i])
        return {"ok": int(chosen.size)}

    def _step_kmalloc(self, step, a):
        lo, hi = a["size"]
        sizes = self._rng(step).integers(lo, hi + 1, a["count"])
        # kmalloc_node(size, gfp, node); `thisnode` adds __GFP_THISNODE (no fallback)
        addrs = self.k.slub.kmalloc(sizes, self._gfp(a["gfp"], a["thisnode"]), a["node"])
        self.kmalloc.setdefault(a["tag"], []).append((addrs, sizes))
        return {"ok": int((addrs != 0).sum()), "failed": int((addrs == 0).sum())}

    def _step_churn(self, step, a):
        rng = self._rng(step)
        lo, hi = a["sizes"]
        n = a["count"]
        sizes = rng.integers(lo, hi + 1, n)
        kinds, arg, slots, keep = churn_ops(sizes, rng.random(n), a["live"])
        slot_addr, failed = self.k.slub.kmalloc_ops(kinds, arg, slots, n, self._gfp(a["gfp"]),
                                                    a["node"])
        addrs = slot_addr[keep]
        self.kmalloc.setdefault(a["tag"], []).append((addrs, sizes[keep]))
        return {"ok": int(n) - failed, "failed": failed, "live": int((addrs != 0).sum()),
                "failed_live": int((addrs == 0).sum())}

    def _step_zsmalloc(self, step, a):
        from memdesc.mm.zsmalloc import ZsPool

        pool = self.zs.get(a["pool"])
        if pool is None:
            pool = self.zs[a["pool"]] = ZsPool(self.k, a["pool"], len(self.zs) + 1)
        want = a["size"] * 4096
        rng = self._rng(step)
        est = int(want // (sum(ZS_OBJECT_SIZES) / 2) * 1.2) + 16
        sizes = rng.integers(ZS_OBJECT_SIZES[0], ZS_OBJECT_SIZES[1] + 1, est)
        sizes = sizes[: int(np.searchsorted(np.cumsum(sizes), want)) + 1]
        stored = pool.store(sizes)
        return {"ok": stored, "failed": int(len(sizes) - stored)}

    def _step_netpool(self, step, a):
        from memdesc.mm.page_pool import PagePool

        key = a["pool"]
        pool = self.net.get(key)
        n = -(-a["size"] // (1 << a["order"]))
        if pool is None:
            try:
                pool = self.net[key] = PagePool(self.k, key, len(self.net) + 1, a["order"])
            except MemoryError:
                return {"ok": 0, "failed": n, "why": "page_pool_create failed"}
        elif pool.order != a["order"]:
            raise InputError(f"{self.scenario.name}:{step.lineno}: page_pool {key} has order "
                             f"{pool.order}; a pool has one order")
        from memdesc.mm import gfp

        g = self._gfp(a["gfp"]) | gfp.GFP.NOWARN
        ok = pool.alloc(a["size"], g)
        return {"ok": ok, "failed": n - ok}

    def _step_vmalloc(self, step, a):
        from memdesc.mm import gfp

        tag = a["tag"]
        tag_id = 1000 + list(self.vmalloc).index(tag) if tag in self.vmalloc else \
            1000 + len(self.vmalloc)
        area = self.vm.vmalloc(a["size"] * 4096, gfp.GFP_KERNEL, tag_id)
        self.vmalloc.setdefault(tag, [])
        if area is None:
            return {"ok": 0, "failed": 1}
        self.vmalloc[tag].append(area)
        return {"ok": 1, "failed": 0}

    def _step_reserve(self, step, a):
        from memdesc.mm import gfp

        pages = self.vm.reserve(a["size"], gfp.GFP_KERNEL, 1 + len(self.reserved))
        if pages is None:
            return {"ok": 0, "failed": 1}
        self.reserved.append(pages)
        return {"ok": 1, "failed": 0}

    def _step_truncate(self, step, a):
        f = self.pc.files.get(a["file"])
        if f is None:
            return {"ok": 0, "why": "no such file"}
        return {"ok": self.pc.truncate(f, -(-a["to"] // 4096))}

    def _step_free(self, step, a):
        from memdesc.mm.memory import pick_fraction

        kind, frac = a["kind"], a["amount"]
        n = 0
        if kind == "pagecache":
            for name, f in self.pc.files.items():
                if a.get("file") in (None, name):
                    starts, _ = self.pc.heads(f)
                    n += self.pc.evict(f, pick_fraction(starts, frac))
        elif kind == "anon":
            for name in self._procs(a.get("proc", "")):
                n += self.anon.madvise_dontneed(self.anon.procs[name], frac)
        elif kind == "kmalloc":
            for tag, chunks in self.kmalloc.items():
                if a.get("tag") not in (None, tag):
                    continue
                addrs = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros(0)
                sizes = np.concatenate([c[1] for c in chunks]) if chunks else np.zeros(0)
                live = np.flatnonzero(addrs != 0)
                doomed = pick_fraction(live, frac)
                self.k.slub.kfree(addrs[doomed])
                keep = np.ones(addrs.shape[0], np.bool_)
                keep[doomed] = False
                self.kmalloc[tag] = [(addrs[keep], sizes[keep])]
                n += int(doomed.size)
        elif kind == "zsmalloc":
            for name, pool in self.zs.items():
                if a.get("pool") in (None, name):
                    n += pool.free(frac)
        elif kind == "netpool":
            for name, pool in self.net.items():
                if a.get("pool") in (None, name):
                    n += pool.release(frac)
        elif kind == "vmalloc":
            for tag, areas in self.vmalloc.items():
                if a.get("tag") not in (None, tag):
                    continue
                doomed = set(pick_fraction(np.arange(len(areas)), frac).tolist())
                for i in sorted(doomed):
                    self.vm.vfree(areas[i])
                self.vmalloc[tag] = [ar for i, ar in enumerate(areas) if i not in doomed]
                n += len(doomed)
        return {"ok": n}

    # ---- observables -----------------------------------------------------------------------
    def observe(self) -> dict[str, Any]:
        """Everything a user could observe now, read back through the stage's structures
        (never a PFN: the same data may sit elsewhere when descriptors take pages)."""
        from memdesc.mm.vmalloc import readback_pages

        state: dict[str, Any] = {
            "files": {n: self.pc.observe(f) for n, f in sorted(self.pc.files.items())},
            "procs": {n: self.anon.observe(p) for n, p in sorted(self.anon.procs.items())},
            "kmalloc": {t: {"objects": int(sum(int((c[0] != 0).sum()) for c in chunks)),
                            "bytes": int(sum(int(c[1][c[0] != 0].sum()) for c in chunks))}
                        for t, chunks in sorted(self.kmalloc.items())},
            "zsmalloc": {n: p.observe() for n, p in sorted(self.zs.items())},
            "netpool": {n: p.observe() for n, p in sorted(self.net.items())},
            "vmalloc": {t: readback_pages(self.k, [ar.pages for ar in areas])
                        for t, areas in sorted(self.vmalloc.items())},
            "reserved": readback_pages(self.k, self.reserved),
        }
        return state


def _accounting(world: World) -> dict[str, Any]:
    from memdesc.mm.accounting import account

    return account(world.k).to_dict()


@dataclass
class StageRun:
    """What one stage did with the scenario."""

    stage: str
    steps: list[dict[str, Any]]
    final_state: dict[str, Any]
    accounting: dict[str, Any]
    peak_metadata_bytes: int
    census: Any
    stats: dict[str, int]
    seconds: float
    #: (objects in use, slabs) per slab cache right after boot and after the last step
    boot_slab_objects: dict[str, tuple[int, int]] = field(default_factory=dict)
    slab_objects: dict[str, tuple[int, int]] = field(default_factory=dict)

    def observables(self) -> list[tuple[Any, str]]:
        return [(s["result"], s["state_digest"]) for s in self.steps]


def run_stage(scenario: Scenario, stage, *, check: bool = False, fault_factory=None,
              progress=None, access_sink=None) -> StageRun:
    """Run every step of ``scenario`` at ``stage``; record results, state digests, metadata."""
    import time

    from memdesc.analysis.sim_census import census_of_world
    from memdesc.mm.memdesc_alloc import ST_DESC_FAIL_UNWIND, ST_PAGE_FAILS

    t0 = time.perf_counter()
    world = World(scenario, stage, fault=fault_factory() if fault_factory else None,
                  check=check)
    boot_objects = slab_objects(world)
    if access_sink is not None:                  # memdesc.mm.access: counted from here on
        from memdesc.mm import access

        access.attach_sink(world.k, access_sink, 0)
    records = []
    peak = 0
    for step in scenario.steps:
        faults = world.k.fault.failures()
        result = world.run(step)
        faults = world.k.fault.failures() - faults
        state = world.observe()
        acct = _accounting(world)
        peak = max(peak, acct["total_bytes"])
        records.append({"line": step.lineno, "step": step.text, "verb": step.verb,
                        "gfp": step.args.get("gfp", "atomic" if step.verb == "netpool"
                                             else "kernel"),
                        "result": result, "state_digest": _digest(state),
                        "faults_injected": faults,
                        "metadata_bytes": acct["total_bytes"],
                        "descriptor_bytes": acct["descriptor_bytes"]})
        if progress:
            progress(1)
        if access_sink is not None:
            access_sink(world.k.stage.id, world.k)
    state = world.observe()
    stats = {"page_alloc_failures": int(world.k.stats[ST_PAGE_FAILS]),
             "descriptor_unwinds": int(world.k.stats[ST_DESC_FAIL_UNWIND]),
             "faults_injected": world.k.fault.failures()}
    return StageRun(world.k.stage.id, records, state, _accounting(world), peak,
                    census_of_world(world), stats, time.perf_counter() - t0, boot_objects,
                    slab_objects(world))


def slab_objects(world: World) -> dict[str, tuple[int, int]]:
    """(objects in use, slabs) per slab cache (/proc/slabinfo active_objs, num_slabs),
    descriptor caches included: what a leak check compares before and after a scenario."""
    slub = world.k.slub
    return {kc.name: (slub.live(kc), slub.slabs(kc)) for kc in slub.cache_list}


#: Why a step's observables differ from the reference's, in the order the causes are tried.
DIVERGENCE_KINDS = {
    "injected": "faults injected by --fail in this step",
    "atomic": "an allocation that may not reclaim failed (the plan's price)",
    "reclaim": "an allocation failed where the kernel would have reclaimed (not modelled)",
    "earlier": "a consequence of an earlier divergence: the step's own result is the "
               "reference's and only the data differ, or the step only frees",
}
#: Steps that allocate nothing: they cannot fail, only free what earlier steps left.
FREEING_VERBS = ("free", "exit", "truncate")


def divergence_kind(ref: dict[str, Any], this: dict[str, Any], earlier: bool) -> str:
    """Classify one differing step (see DIVERGENCE_KINDS)."""
    if this.get("faults_injected"):
        return "injected"
    if earlier and (ref["result"] == this["result"] or this["verb"] in FREEING_VERBS):
        return "earlier"
    return "atomic" if this["gfp"] in ATOMIC_CONTEXTS else "reclaim"


def compare_runs(runs: list[StageRun], reference: str = "v6.18") -> dict[str, Any]:
    """Compare every stage's observables with the reference stage's, step by step.

    A differing step is a divergence, classified by :func:`divergence_kind`: ``injected``
    when --fail injected a fault in that step; ``earlier`` after an earlier divergence, when
    the step's own result is the reference's and only the data differ, or when the step only
    frees (free, exit, truncate: it frees what the earlier steps left); ``atomic`` in a
    no-reclaim context: the plan's price (the descriptor allocation needed memory the zone
    could not give without reclaim); otherwise ``reclaim``: the kernel would have reclaimed
    there (the emulator models no reclaim)."""
    ref = next((r for r in runs if r.stage == reference), runs[0])
    divergences: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        diffs: list[dict[str, Any]] = []
        for a, b in zip(ref.steps, r.steps, strict=True):
            if (a["result"], a["state_digest"]) != (b["result"], b["state_digest"]):
                diffs.append({"line": b["line"], "step": b["step"],
                              "kind": divergence_kind(a, b, bool(diffs)),
                              "reference": a["result"], "this_stage": b["result"]})
        divergences[r.stage] = diffs
    identical = all(not d for d in divergences.values())
    counts = {s: {k: sum(1 for d in ds if d["kind"] == k) for k in DIVERGENCE_KINDS}
              for s, ds in divergences.items()}
    return {"reference": ref.stage, "identical_across_stages": identical,
            "divergences": divergences, "divergence_counts": counts}
