"""What each stage costs in time (issue 9): metadata accesses, dependent loads, modelled cache
misses and native ns per kernel operation class, for a replayed trace or a scenario.

The source runs at every stage with access accounting on (memdesc.mm.access). After each
block of a replay or step of a scenario the run calls its ``access_sink``
(:meth:`TimingCollector.sink`), which drains the access log into the stage's
:class:`memdesc.analysis.cache_model.CacheModel` (one core's caches, state kept across blocks)
and, when the native measurement runs, into memdesc.analysis.native_timing's NativeRun.
The emulator's counters (operations, loads, stores, distinct lines, dependent-load chains)
are read at the end. :func:`timing_doc` turns it all into the JSON document of
docs/timing.md, which the report (memdesc.report.timing_out) prints.

A trace's operations are the replay's (memdesc.analysis.replay): its allocator operations
(policy mode), its lookups (``--lookups`` recordings) and its slab events (``--slab``
recordings: kmem_cache_alloc/kmem_cache_free in the stage's kernel-memory arena,
memdesc.analysis.replay_slab), the latter two in both modes.

The counters count every operation; the cache model and the native run see the operations
the log held. When the log overflowed between two drains the model saw fewer accesses than
the counters count: the stage says so (``log_dropped``), never silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from memdesc import __version__
from memdesc.analysis.cache_model import CacheConfig, CacheModel
from memdesc.errors import InputError
from memdesc.mm import access
from memdesc.mm.access import (
    CT_CHAIN_MAX,
    CT_CHAIN_SUM,
    CT_LINES,
    CT_LOADS,
    CT_OPS,
    CT_STORES,
    KIND_STORE,
    NCOUNT,
    OP_CLASSES,
    AccessStream,
    chain_levels,
)
from memdesc.stages import REFERENCE, Stage

if TYPE_CHECKING:
    from memdesc.analysis.replay import ReplayInput
    from memdesc.analysis.scenario_parse import Scenario

SCHEMA_VERSION = 1
#: accesses the emulator's log holds between two drains (a replay's blocks shrink to fit it:
#: analysis.replay._LogSizer); 16 M: 128 MB of log + 64 MB of operation table
LOG_CAPACITY = 1 << 24
#: a scenario's log per PFN of its machine (run_scenario_timing())
LOG_PER_PFN = 16


def stream_counters(stream: AccessStream) -> np.ndarray:
    """The counters of access.counters() recomputed from a stream, per class (plain numpy;
    for streams made by hand, and to check the emulator's counters against its own log):
    operations, loads, stores, distinct lines per operation summed, chain sum and max."""
    out = np.zeros((len(OP_CLASSES), NCOUNT), dtype=np.int64)
    n = stream.nr_ops
    if n == 0:
        return out
    first = np.asarray(stream.op_first, np.int64)
    lens = np.diff(first)
    op_of = np.repeat(np.arange(n), lens)
    cls = np.asarray(stream.op_class, np.int64)
    stores = (np.asarray(stream.kind[first[0]:first[-1]]) & KIND_STORE) != 0
    lines = np.asarray(stream.addr[first[0]:first[-1]], np.uint64) >> np.uint64(6)
    distinct = np.unique(np.stack([op_of.astype(np.uint64), lines]), axis=1)[0]
    chains = chain_levels(stream)
    np.add.at(out[:, CT_OPS], cls, 1)
    np.add.at(out[:, CT_STORES], cls[op_of], stores)
    np.add.at(out[:, CT_LOADS], cls[op_of], ~stores)
    np.add.at(out[:, CT_LINES], cls[distinct.astype(np.int64)], 1)
    np.add.at(out[:, CT_CHAIN_SUM], cls, chains)
    np.maximum.at(out[:, CT_CHAIN_MAX], cls, chains)
    return out


def add_counters(total: np.ndarray | None, more: np.ndarray) -> np.ndarray:
    """Counters of two runs of operations together: sums, but the chain maximum's max."""
    if total is None:
        return more.copy()
    out = total + more
    out[:, CT_CHAIN_MAX] = np.maximum(total[:, CT_CHAIN_MAX], more[:, CT_CHAIN_MAX])
    return out


@dataclass
class StageTiming:
    """What one stage's run gave: the emulator's counters and the cache model."""

    id: str
    cache: CacheModel
    counters: np.ndarray | None = None     # [class, NCOUNT], the emulator's, at the end
    blocks: int = 0
    log_dropped: bool = False
    accesses: int = 0                      # accesses the cache model saw


@dataclass
class TimingCollector:
    """The ``access_sink`` of every stage's run (see the module docstring): called as
    ``collector(stage_id, k)``; its ``log_capacity`` sizes the emulator's access log."""

    stages: list[Stage]
    caches: CacheConfig
    native: Any = None          # a native_timing.NativeRun, or None
    #: the access log's size (read by memdesc.mm.access.attach_sink())
    log_capacity: int = LOG_CAPACITY
    runs: dict[str, StageTiming] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.runs = {s.id: StageTiming(s.id, CacheModel(self.caches)) for s in self.stages}

    def add(self, stage_id: str, stream: AccessStream, counters: np.ndarray | None = None,
            dropped: bool = False) -> None:
        """One block of ``stage_id``'s accesses; ``counters`` the emulator's totals so far
        (None: recomputed from the streams, for hand-made streams)."""
        run = self.runs[stage_id]
        run.cache.run(stream)
        if self.native is not None and stream.nr_ops:
            self.native.add(stage_id, stream)
        if counters is None:
            counters = add_counters(run.counters, stream_counters(stream))
        run.counters = np.asarray(counters, np.int64)
        run.blocks += 1
        run.log_dropped |= dropped
        run.accesses += int(stream.op_first[-1] - stream.op_first[0]) if stream.nr_ops else 0

    def sink(self, stage_id: str, k) -> None:
        """``access_sink(stage_id, kernel_or_memmap)``: drain the log of ``k`` into the
        stage's models."""
        dropped = access.dropped(k)
        stream = access.drain(k)
        self.add(stage_id, stream, access.counters(k), dropped)

    __call__ = sink


# ---- running a source ----------------------------------------------------------------------

def source_kind(path: Path) -> str:
    """``"scenario"`` for a ``*.scenario`` file, ``"trace"`` for a recording folder or a trace
    file (what `memdesc replay` reads); a missing path is an error."""
    if not path.exists():
        raise InputError(f"{path}: no such file or folder (give a trace folder, a trace file "
                         "or a .scenario file)")
    return "scenario" if path.is_file() and path.suffix == ".scenario" else "trace"


def load_scenario_source(path: Path, stages: list[Stage]) -> tuple[Scenario, int]:
    """The scenario at ``path``, checked for ``stages`` before any work, and its machine's
    PFN count."""
    from memdesc.analysis.scenario import check_scenario, load_scenario
    from memdesc.mm.mmzone import Machine

    scenario = load_scenario(path)
    check_scenario(scenario, stages)
    return scenario, Machine.from_spec(scenario.machine, nr_cpus=scenario.cpus).nr_pfns


def run_scenario_timing(scenario: Scenario, stages: list[Stage], collector: TimingCollector,
                        nr_pfns: int, progress: Callable[[int], None] | None = None
                        ) -> dict[str, Any]:
    """Run ``scenario`` at every stage with accounting on; the source fields of the document.

    The log is drained after each step, so it must hold a whole step: LOG_PER_PFN accesses
    per PFN of the machine (a step touches at most its RAM; examples/fileserver.scenario's
    largest step, 1 GiB of page cache on 4 GiB, logs 8.0 M accesses, 7.6 per PFN)."""
    from memdesc.analysis.scenario import run_stage

    collector.log_capacity = max(collector.log_capacity, LOG_PER_PFN * nr_pfns)
    for s in stages:
        run_stage(scenario, s, progress=progress, access_sink=collector)
    return {"kind": "scenario", "path": scenario.name, "name": Path(scenario.name).stem,
            "machine": scenario.machine}


def run_trace_timing(inp: ReplayInput, stages: list[Stage], collector: TimingCollector,
                     mode: str, progress: Callable[[int], None] | None = None
                     ) -> dict[str, Any]:
    """Replay ``inp`` (analysis.replay.load_replay_input) at every stage with accounting on;
    the source fields of the document."""
    from memdesc.analysis.replay import replay

    replay(inp, stages, mode, samples=2, progress=progress, access_sink=collector)
    return {"kind": "trace", "path": str(inp.trace.path), "mode": mode,
            "events": len(inp.trace)}


# ---- the document --------------------------------------------------------------------------

def _ops_rows(run: StageTiming, names: tuple[str, ...], native: dict | None) -> list[dict]:
    ct = run.counters if run.counters is not None else np.zeros((len(OP_CLASSES), NCOUNT),
                                                                 np.int64)
    misses = run.cache.misses()
    rows = []
    for c, oc in enumerate(OP_CLASSES):
        n = int(ct[c, CT_OPS])
        if n == 0:
            continue
        nat = (native or {}).get(oc.name, {})
        rows.append({
            "op": oc.name, "kernel": oc.kernel, "count": n,
            "loads": int(ct[c, CT_LOADS]), "stores": int(ct[c, CT_STORES]),
            "lines": int(ct[c, CT_LINES]),
            "dependent_loads": round(ct[c, CT_CHAIN_SUM] / n, 4),
            "dependent_loads_max": int(ct[c, CT_CHAIN_MAX]),
            "misses": {name: int(misses[c, i]) for i, name in enumerate(names)},
            "native_ns": nat.get("native_ns"), "native_ns_range": nat.get("range"),
            "native_floor_ns": nat.get("floor"),
            "native_ratio": nat.get("ratio"),
        })
    return rows


def _totals(rows: list[dict], names: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {k: sum(r[k] for r in rows) for k in ("count", "loads", "stores",
                                                                "lines")}
    out["dependent_loads"] = sum(r["dependent_loads"] * r["count"] for r in rows)
    out["misses"] = {n: sum(r["misses"][n] for r in rows) for n in names}
    ns = [r["native_ns"] * r["count"] for r in rows if r["native_ns"] is not None]
    out["native_ns"] = sum(ns) if ns else None
    return out


def native_by_stage(result) -> dict[str, dict[str, dict]]:
    """stage -> op -> {native_ns, range, ratio} from a native_timing.NativeResult."""
    out: dict[str, dict[str, dict]] = {}
    for r in result.rows():
        out.setdefault(r["stage"], {})[r["op"]] = {
            "native_ns": _finite(r["native_ns"]),
            "range": [_finite(r["ns_min"]), _finite(r["ns_max"])],
            "floor": _finite(r.get("floor_ns")), "ratio": _finite(r["ratio"])}
    return out


def _finite(x: float) -> float | None:
    return round(float(x), 3) if x is not None and np.isfinite(x) else None


def timing_doc(collector: TimingCollector, source: dict[str, Any],
               native=None) -> dict[str, Any]:
    """The JSON document of docs/timing.md."""
    cfg = collector.caches
    names = cfg.names
    nat = native_by_stage(native) if native is not None else {}
    stages = []
    for s in collector.stages:
        run = collector.runs[s.id]
        rows = _ops_rows(run, names, nat.get(s.id))
        stages.append({"id": s.id, "struct_page_bytes": s.struct_page_bytes,
                       "log_dropped": run.log_dropped, "modelled_accesses": run.accesses,
                       "totals": _totals(rows, names), "ops": rows})
    return {
        "schema_version": SCHEMA_VERSION, "tool": f"memdesc {__version__}",
        "source": source, "reference": REFERENCE,
        "caches": {"source": cfg.source, "spec": cfg.spec(),
                   "levels": [{"name": lv.name, "size": lv.size, "ways": lv.ways,
                               "line": lv.line, "sets": lv.sets, "victim": lv.victim,
                               "shared_cpus": lv.shared_cpus} for lv in cfg.levels]},
        "native": ({k: v for k, v in native.summary().items() if k != "ops"}
                   if native is not None else None),
        "stages": stages,
    }
