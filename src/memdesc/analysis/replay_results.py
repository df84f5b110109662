"""A replay's results: the checks against the kernel, the census of each sample and the
per-stage series (metadata bytes, fragmentation) of memdesc.analysis.replay."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from memdesc.analysis import fragmentation as frag
from memdesc.analysis import trace_types as tt
from memdesc.analysis.census import CLASSES, NR_UNIT_ORDERS, Census
from memdesc.analysis.cost import stage_cost
from memdesc.analysis.descriptors import DescriptorTable, load_descriptors
from memdesc.analysis.replay_checks import compare
from memdesc.mm.mmzone import NR_PAGE_ORDERS, Machine

if TYPE_CHECKING:
    from memdesc.analysis.replay import ReplayInput, StageRun

def zone_names(machine: Machine) -> list[str]:
    """Name of each emulated zone row (node * NR_ZONES + zone type)."""
    return [f"{z.node}/{z.name}" for z in machine.zones]


def check_rows(inp: ReplayInput, run: StageRun) -> list[dict]:
    """The emulated free lists against the kernel's at every check point (start, inner
    snapshots, end): one row per check point and zone (memdesc.analysis.replay_checks)."""
    rows = []
    fit = {r["zone"]: r["free_pages_off_after_repair"] for r in inp.start.rule}
    for point, got in zip(inp.checkpoints, run.at_checks, strict=True):
        k = int(np.searchsorted(run.samples_pos, point.event))
        if not got or k >= len(run.samples_pos) or run.samples_pos[k] != point.event:
            continue
        counters = {c: v for c, v in got["counters"].items() if v}
        rows += compare(point, run.nr_free[k], got["free_mt"], run.pcp[k], counters, fit)
    return rows


def census_at(inp: ReplayInput, units: np.ndarray, nr_free: np.ndarray,
              pcp_pages: int) -> Census:
    """A Census of the emulated state for the cost model: allocation units by class and
    order from the replay (``flags0`` snapshot pages count as untyped, as the survey's
    classification would), free blocks from the buddy lists, pcp pages as untyped, and the
    classes the trace never changes (holes, never-initialised) from the snapshot's census."""
    base = inp.base_census
    u = {c: units[i].copy() for i, c in enumerate(CLASSES)}
    # flags==0 pages are order-0 units; the never-initialised ones (never touched by a trace)
    # are the snapshot census's own class
    u["untyped"] = u["untyped"] + units[tt.FLAG0]
    u["untyped"][0] += pcp_pages - base.pages_by_class["uninitialised"]
    u["untyped"][0] = max(0, int(u["untyped"][0]))
    free = np.zeros(NR_UNIT_ORDERS, np.int64)
    free[:NR_PAGE_ORDERS] = nr_free.sum(axis=0)
    u["free"] = free
    u["hole"] = base.units_by_class["hole"].copy()
    u["uninitialised"] = base.units_by_class["uninitialised"].copy()
    sizes = 1 << np.arange(NR_UNIT_ORDERS, dtype=np.int64)
    pages = {c: int((u[c] * sizes).sum()) for c in CLASSES}
    return Census(source=f"replay of {inp.trace.path}", pfns=base.pfns, pages_by_class=pages,
                  units_by_class=u, memmap_pages=base.memmap_pages, ram_pages=base.ram_pages,
                  kernel=base.kernel, nr_cpus=base.nr_cpus)


@dataclass
class StageSeries:
    """Per-sample results of one stage."""

    name: str
    struct_page_bytes: np.ndarray     # int64[samples]
    descriptor_bytes: np.ndarray
    total_bytes: np.ndarray
    by_type: dict[str, np.ndarray]
    unusable: np.ndarray              # int64[samples, zones, orders] (thousandths)
    extfrag: np.ndarray
    free_2m_blocks: np.ndarray        # int64[samples] (all zones)
    free_huge_percent: np.ndarray     # float[samples] (all zones)
    free_pages: np.ndarray            # int64[samples] buddy free pages (all zones)


def stage_series(inp: ReplayInput, run: StageRun,
                 table: DescriptorTable | None = None) -> StageSeries:
    """Metadata bytes (cost model on the census of each sample) and fragmentation."""
    table = table or load_descriptors()
    ns = len(run.samples_pos)
    sp = np.zeros(ns, np.int64)
    desc = np.zeros(ns, np.int64)
    by_type: dict[str, np.ndarray] = {}
    cache: dict[bytes, object] = {}
    # one census per distinct sample state, shared by every stage (inp.cache)
    censuses = inp.cache.setdefault("census_at", {})
    for k in range(ns):
        key = run.units[k].tobytes() + run.pcp[k].tobytes()
        cost = cache.get(key)
        if cost is None:
            ckey = key + run.nr_free[k].tobytes()
            census = censuses.get(ckey)
            if census is None:
                census = censuses[ckey] = census_at(inp, run.units[k], run.nr_free[k],
                                                    int(run.pcp[k].sum()))
            cost = cache[key] = stage_cost(census, run.stage, table)
        sp[k] = cost.struct_page_bytes
        desc[k] = cost.descriptor_bytes
        for t, v in cost.by_type.items():
            by_type.setdefault(t, np.zeros(ns, np.int64))[k] = v
    populated = [gz for gz, z in enumerate(inp.machine.zones) if z.managed]
    nf = run.nr_free[:, populated]
    total = nf.sum(axis=1)
    return StageSeries(run.name, sp, desc, sp + desc, by_type,
                       frag.unusable_free_index(nf), frag.fragmentation_index(nf),
                       frag.free_pageblocks(nf).sum(axis=1), frag.free_huge_score(total),
                       frag.contig_arrays(nf, 0)[0].sum(axis=1))
