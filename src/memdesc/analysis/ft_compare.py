"""Free-page tracking options side by side, from one replay of a trace at several of them.

Each option of a stage (``--stages 'page8/*'``) replays the same trace; the comparison puts
next to each other what each costs and what it changes: side memory (the cost model's
``free_tracking_side``), replay speed (page operations per second of the replay loop, best of
two runs: see :func:`loop_seconds`), the
walks an option counts (``slist``: predecessor walks of removals; ``bitmap``: the searches
for the lowest-addressed block; memdesc.mm.free_tracking.walk_stats), and fragmentation at the
end (free blocks per order, free 2 MiB blocks, the unusable free space index at order 9 of the
largest zone). Each option's observables (free lists per zone and order at every sample, pcp
counts, unit census and, in policy mode, the PFN of every allocation) are compared with the
reference option (``packed`` when it ran): identical for options that keep the kernel's
free-list order, and where they are not, the first differing sample is named and the
differences are in the table, never hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from memdesc.analysis.replay import ReplayResult, StageRun, replay_stage
from memdesc.stages import TRACKING, Stage, variant_name

#: the option the others are compared with, when it ran
REFERENCE = "packed"
#: the order whose unusable free space index the table shows (pageblock_order)
UNUSABLE_ORDER = 9


class Walks(NamedTuple):
    """The walks an option counted (memdesc.mm.free_tracking.walk_stats(), in its order)."""

    walks: int                     # operations that walked
    steps: int                     # steps of every walk
    longest: int                   # the longest walk, in steps
    ops: int                       # operations counted (removals, searches)


@dataclass(frozen=True)
class OptionResult:
    """One free-page tracking option's replay, summarised."""

    name: str                      # variant name (page8/bitmap)
    option: str                    # tracking option (bitmap)
    keeps_list_order: bool
    side_bytes: int                # cost model, at the end of the trace
    total_bytes: int               # struct pages + descriptors + side memory, at the end
    ops_per_s: float               # page operations (allocs + frees) per loop second
    seconds: float                 # the loop's wall-clock seconds, best of two (loop_seconds())
    walks: Walks | None            # None: the option never walks
    free_blocks: np.ndarray        # int64[orders], all zones, at the end
    free_2m_blocks: int
    unusable: float                # unusable free space index at UNUSABLE_ORDER, main zone
    identical: bool                # observables equal to the reference option's
    same_pfns: bool                # policy mode: every allocation got the same PFN
    first_difference: int | None   # trace event index of the first sample whose free
    #                                lists, pcp counts or unit census differ (None: none)


@dataclass(frozen=True)
class FtComparison:
    trace: str
    mode: str
    stage: str
    events: int
    ops: int
    zone: str                      # the zone of the unusable index
    reference: str
    rows: list[OptionResult]


def _same(a: StageRun, b: StageRun) -> np.ndarray:
    """Per sample: the free lists per zone and order, pcp counts and unit census of ``a``
    and ``b`` agree."""
    return ((a.nr_free == b.nr_free).all(axis=(1, 2)) & (a.pcp == b.pcp).all(axis=1)
            & (a.units == b.units).all(axis=(1, 2)))


def _walks(run: StageRun) -> Walks | None:
    w = getattr(run, "walks", None)
    return None if w is None else Walks(*w)


def _main_zone(result: ReplayResult) -> tuple[int, str]:
    """(index among populated zones, name) of the zone with the most managed pages."""
    zones = [z for z in result.inp.machine.zones if z.managed]
    i = int(np.argmax([z.managed for z in zones]))
    return i, f"{zones[i].node}/{zones[i].name}"


def loop_seconds(result: ReplayResult, i: int) -> float:
    """Wall-clock seconds of run ``i``'s replay loop, the better of two runs.

    A StageRun's ``seconds`` cover its loop only (set-up excluded), but the first stage of a
    replay also pays, inside its loop, for loading the compiled kernels on their first call
    and for cold caches, and on a shared machine any loop may lose the CPU for a while. So
    each option's stage is replayed once more here (same input, stage and mode, a mem_map of
    its own) and the shorter of the two loops is kept: every option is then timed alike,
    warm, with the least interference two runs saw. Still wall clock, not CPU time."""
    run = result.runs[i]
    again = replay_stage(result.inp, run.stage, result.mode, samples=len(run.samples_pos))
    return min(run.seconds, again.seconds)


def groups(stages: list[Stage]) -> dict[str, list[int]]:
    """Stage id -> indices (in ``stages``) of its variants, for the stages present with two
    or more free-page tracking options."""
    by: dict[str, list[int]] = {}
    for i, st in enumerate(stages):
        by.setdefault(st.id, []).append(i)
    return {sid: ix for sid, ix in by.items()
            if len({stages[i].free_tracking for i in ix}) > 1}


def groups_of(stages: list[Stage]) -> str | None:
    """The first stage id of ``stages`` present with two or more tracking options."""
    return next(iter(groups(stages)), None)


def compare(result: ReplayResult, stage_id: str | None = None) -> FtComparison | None:
    """The comparison of the tracking options of ``stage_id`` (default: the first stage
    replayed at two or more options); None when no stage was."""
    g = groups([r.stage for r in result.runs])
    if not g or (stage_id is not None and stage_id not in g):
        return None
    sid = stage_id or next(iter(g))
    ix = g[sid]
    runs = [result.runs[i] for i in ix]
    ref_i = next((k for k, r in enumerate(runs) if r.stage.free_tracking == REFERENCE), 0)
    ref = runs[ref_i]
    zi, zname = _main_zone(result)
    rows = []
    for i, run in zip(ix, runs, strict=True):
        ser = result.series[i]
        seconds = loop_seconds(result, i)
        same = _same(run, ref)
        bad = np.flatnonzero(~same)
        nops = len(result.inp.ops)
        opt = TRACKING[run.stage.free_tracking]
        side = ser.by_type.get("free_tracking_side")
        rows.append(OptionResult(
            variant_name(run.stage), opt.name, opt.keeps_list_order,
            int(side[-1]) if side is not None else 0, int(ser.total_bytes[-1]),
            nops / seconds if seconds > 0 else float("inf"), seconds,
            _walks(run), run.nr_free[-1].sum(axis=0),
            int(ser.free_2m_blocks[-1]), float(ser.unusable[-1, zi, UNUSABLE_ORDER]) / 1000,
            not len(bad) and run.alloc_pfn_digest == ref.alloc_pfn_digest,
            run.alloc_pfn_digest == ref.alloc_pfn_digest,
            int(run.samples_pos[bad[0]]) if len(bad) else None))
    tr = result.inp.trace
    return FtComparison(str(tr.path), result.mode, sid, len(tr), len(result.inp.ops), zname,
                        variant_name(ref.stage), rows)
