"""Replay a kernel allocation trace through the emulated page allocator, at every stage.

Two modes (``memdesc replay --mode``):

``placement``
    The trace's own PFNs and orders drive the emulator's buddy and pcp lists, starting from the
    trace's pre-snapshot, so the emulated free lists follow the real kernel's. Each page event
    has the meaning it has in Linux 6.18's mm/page_alloc.c:

    * ``mm_page_alloc_zone_locked`` (__rmqueue_smallest() and the fallbacks, under zone->lock):
      the block leaves the buddy lists. It goes onto the emitting CPU's pcp list (a refill by
      rmqueue_bulk()) when its order may live there (pcp_allowed_order()); a direct
      rmqueue_buddy() allocation follows at once as an ``mm_page_alloc`` of the same pfn and
      takes it off again. (``percpu_refill`` is printed as ``pcp_allowed_order(order) &&
      migratetype < MIGRATE_PCPTYPES``, not as "this was a refill", so it cannot tell them
      apart; it is kept for the statistics.)
    * ``mm_page_alloc``: the block is handed out (from the pcp list, or right after its
      zone_locked event); prep_new_page().
    * ``mm_page_free`` (free_pages_prepare(); ``mm_page_free_batched`` rows flagged
      ``dup_of_prev_free`` are the same free and are skipped): pcp-allowed orders go onto the
      emitting CPU's pcp list (free_frozen_page_commit()), others straight to the buddy
      (__free_pages_ok() -> split_large_buddy()).
    * ``mm_page_pcpu_drain`` (free_pcppages_bulk()): the block leaves its pcp list for the
      buddy (__free_one_page(), merging). Its migratetype is the pageblock's at that moment;
      when the emulated pageblock says otherwise the pageblock is moved (move_freepages_block())
      -- the kernel changed it where no event shows it (counted as ``pageblock_mt_learned``).

    The emulator's own pcp batch/high logic is not used in this mode: the trace says when the
    kernel refilled and drained. What no event shows is counted, never hidden
    (:data:`MISMATCHES`): the kernel's frees that bypass the pcp lists when the pcp lock is
    contended, free-page reporting and compaction taking free pages off and back without kmem
    events, and the fuzz of the snapshot itself.

``policy``
    Only the requests are replayed: each ``mm_page_alloc`` becomes alloc_pages(gfp, order) on
    the emitting CPU, each free frees the emulator's block that the same trace allocation got
    ("frees by identity"; frees of allocations older than the trace free the snapshot's block
    at the same pfn). The emulator's allocator (pcp lists, fallbacks, claiming) chooses the
    placement, so stages and free-tracking options compare on fragmentation.

Start state (both modes, memdesc.analysis.replay_start and memdesc.mm.start_state): the
emulated machine is built from the pre-snapshot's zoneinfo and iomem
(analysis/machine_from_snapshot.py) with the RAM the buddy never got taken from the snapshot
itself (PG_reserved pages, never-initialised pages at the top of a zone); every allocation
unit the snapshot shows (trace_types.snapshot_units) is prepared as allocated, the rest of
the managed memory is on the free lists as the snapshot's KPF_BUDDY runs; pageblock
migratetypes take pagetypeinfo's per-zone counts, the pageblocks chosen by their contents
and the free lists (replay_start.assign_pageblock_mt).

Checks (memdesc.analysis.replay_checks): at the start, at every inner snapshot and at the
end, the emulated free lists per zone, order and migratetype against buddyinfo and
pagetypeinfo read at that point of the trace.

Snapshot timing: the pre-snapshot reads kpageflags chunk by chunk *while the trace runs*; the
chunk markers (``FIXTURE snapshot ... chunk start_pfn=0x.. npfn=N`` written before each chunk,
``memdesc snapshot chunk ...`` written after it) say when. An event is applied only if it
comes after the read of the chunk holding its pfn (:func:`snapshot_gates`); earlier events
are already in the snapshot.

The hot loops are numba kernels over the columns and the emulator's arrays (one call per block
of ~1 M operations, so progress can be shown). Results are sampled along the trace; the
metrics per sample (fragmentation, metadata per stage) are computed afterwards, vectorised.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memdesc.analysis import trace_types as tt
from memdesc.analysis.census import NR_UNIT_ORDERS, Census
from memdesc.analysis.classify import Layout
from memdesc.analysis.descriptors import DescriptorTable, load_descriptors
from memdesc.analysis.replay_arena import StageArena
from memdesc.analysis.replay_checks import MT_NAMES, CheckPoint, check_points
from memdesc.analysis.replay_folios import (
    peak_live_folios,
    replay_start_folios,
    start_folio_units,
)
from memdesc.analysis.replay_lookups import lookups_from_trace
from memdesc.analysis.replay_loops import (
    MISM_COUNT,
    MISM_FIRST,
    MISM_LAST,
    VM_FREED,
    VM_INTERVALS,
    VM_NEXT,
    _placement_loop,
    _policy_loop,
    _policy_release_pcp,
    _sample,
    unit_counts_nb,
)
from memdesc.analysis.replay_memmap import mem_map_buffer, release_in_background
from memdesc.analysis.replay_ops import (  # noqa: F401 (the replay's public names)
    _CHUNK,
    EXPECTED,
    MISMATCHES,
    NCLS,
    OP_ALLOC,
    OP_DRAIN,
    OP_FREE,
    OP_NAMES,
    OP_TAKE,
    ST_NONE,
    ST_SNAP,
    ChunkGates,
    M,
    ReplayOps,
    prepare_ops,
    snapshot_gates,
)
from memdesc.analysis.replay_results import (  # noqa: F401 (the replay's public names)
    StageSeries,
    census_at,
    check_rows,
    stage_series,
    zone_names,
)
from memdesc.analysis.replay_side import ReplayLookups, SideRows
from memdesc.analysis.replay_slab import SlabPlan, slab_plan
from memdesc.analysis.replay_snapshot import (  # noqa: F401 (the replay's public names)
    SnapshotStart,
    load_snapshot_start,
    machine_for_replay,
)
from memdesc.analysis.replay_start import StartState
from memdesc.errors import InputError
from memdesc.ingest import procfs
from memdesc.ingest.snapshot import Snapshot
from memdesc.ingest.trace_events import LOOKUP_EVENTS, SLAB_EVENTS, Trace
from memdesc.mm import access
from memdesc.mm import free_tracking as ft
from memdesc.mm import page_alloc as pa
from memdesc.mm.gfp import MIGRATE_TYPES
from memdesc.mm.mmzone import NR_PAGE_ORDERS, Machine
from memdesc.mm.start_state import set_start_state
from memdesc.mm.vmstat import STAT_INTERVAL_NS, zone_managed_pages
from memdesc.stages import Stage, variant_name

MODES = ("placement", "policy")

# ---- the driver -------------------------------------------------------------------------------

@dataclass
class ReplayInput:
    """Everything a replay needs, prepared once and shared by every stage."""

    trace: Trace
    snapshot: Snapshot
    layout: Layout
    zoneinfo: list[procfs.ZoneInfo]
    units: tt.SnapshotUnits
    types: tt.TypeInference
    gates: ChunkGates
    ops: ReplayOps
    machine: Machine
    start: StartState
    base_census: Census
    notes: list[str]
    prep_seconds: float
    #: the type rules checked against the snapshot (trace_types.check_against_snapshot())
    type_check: dict = field(default_factory=dict)
    #: where the kernel's free lists were read inside the trace (replay_checks)
    checkpoints: list[CheckPoint] = field(default_factory=list)
    #: stage-independent results computed once (unit counts)
    cache: dict = field(default_factory=dict)
    #: the trace's lookups (record --lookups), run when accounting is on (access_sink)
    lookups: ReplayLookups | None = None

    @property
    def pageblock_mt(self) -> np.ndarray:
        return self.start.pageblock_mt


def load_replay_input(tr: Trace, snapshot_dir: Path | None = None,
                      progress: Callable[[int], None] | None = None,
                      stages: list[Stage] | None = None,
                      snapshot: Snapshot | None = None) -> ReplayInput:
    """Snapshot, type inference, gates, operations, start state and check points of a trace
    (stage independent). With ``stages`` the mem_map storage replay() will use for them is
    faulted in meanwhile, in a background thread (MemMapPrefault). ``snapshot``: the one at
    ``snapshot_dir``, when the caller has opened it already."""
    t0 = time.monotonic()
    snapshot_dir = snapshot_dir or tr.snapshot_dir
    if snapshot_dir is None:
        raise InputError(f"{tr.path}: no pre-snapshot beside this trace; the replay starts "
                         "from one (record with `memdesc record` without --no-snapshot, or "
                         "pass --snapshot DIR)")
    ss = load_snapshot_start(snapshot_dir, progress, stages, snapshot)
    types = tt.infer_types(tr)
    gates = snapshot_gates(tr, snapshot_dir)
    ops = prepare_ops(tr, types, gates)
    notes = list(ss.notes)
    if gates.style == "none":
        notes.append("no snapshot chunk markers or capture steps in the trace: every event is "
                     "applied on top of the snapshot (events before it are counted twice)")
    gate_of_event = np.full(len(tr), gates.default_gate, np.int64)
    ev_pfn = tr.events["pfn"]
    gate_of_event[ev_pfn >= 0] = gates.of(ev_pfn[ev_pfn >= 0])
    check = tt.check_against_snapshot(tr, types, ss.units, gate_of_event)
    points = check_points(tr, ss.snapshot, gates.steps, len(tr))
    seconds = time.monotonic() - t0
    inp = ReplayInput(tr, ss.snapshot, ss.layout, ss.zoneinfo, ss.units, types, gates, ops,
                      ss.machine, ss.start, ss.base_census, notes, seconds, check, points)
    if ss.prefault is not None:
        inp.cache["mem_map_prefault"] = ss.prefault
    if (tr.events["event"] >= LOOKUP_EVENTS[0]).any():      # recorded with --lookups
        inp.lookups = ReplayLookups(lookups_from_trace(tr), ops)
    return inp


@dataclass
class StageRun:
    """One stage's replay: samples, counters, timing, final buddyinfo, the emulated free
    lists per migratetype at each check point."""

    stage: Stage
    mode: str
    seconds: float
    setup_seconds: float
    samples_pos: np.ndarray        # event index of each sample
    nr_free: np.ndarray            # int64[samples, zones, orders]
    pcp: np.ndarray                # int64[samples, zones]
    units: np.ndarray              # int64[samples, classes, unit orders]
    mismatches: dict[str, int]
    start: dict
    final_buddyinfo: str
    alloc_pfn_digest: str = ""
    #: per mismatch with a non-zero count: (first, last) trace event index
    mismatch_where: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: the emulated memory at the end (only with replay_stage(keep_memmap=True))
    memmap: pa.MemMap | None = None
    #: per check point (inp.checkpoints): free_mt int64[zones, MIGRATE_TYPES, orders],
    #: nr_free, pcp and the counters up to it
    at_checks: list[dict] = field(default_factory=list)
    #: the walks the free-page tracking option counted (free_tracking.walk_stats) or None
    walks: tuple[int, int, int, int] | None = None

    @property
    def name(self) -> str:
        return variant_name(self.stage)


def sample_positions(inp: ReplayInput, samples: int) -> np.ndarray:
    """Event indices where state is sampled: evenly from the end of the snapshot reads to the
    end of the trace, plus the check points and the trace markers after the snapshot
    (workload phases; at most 1000)."""
    start = min(inp.gates.last, inp.ops.n_events)
    pos = np.linspace(start, inp.ops.n_events, max(2, samples)).astype(np.int64)
    extra = [c.event for c in inp.checkpoints]
    return np.unique(np.concatenate([pos, np.array(extra, np.int64),
                                     marker_positions(inp)[0][:1000]]))


def marker_positions(inp: ReplayInput) -> tuple[np.ndarray, list[str]]:
    """Event indices and texts of the trace markers after the snapshot reads (chunk markers
    excluded)."""
    m = inp.trace.markers or {}
    idx = np.asarray(m.get("index", []), np.int64)
    texts = list(m.get("text", []))
    keep = [i for i, t in enumerate(texts)
            if idx[i] >= inp.gates.last and not _CHUNK.match(t)]
    return idx[keep], [texts[i] for i in keep]


def _digest(a: np.ndarray) -> str:
    import hashlib
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


#: ops per numba call: small enough that Ctrl-C (checked between calls) stops within a second
BLOCK_OPS = 1 << 18


class _LogSizer:
    """Blocks of a replay with an access log (memdesc.mm.access), sized so that one block's
    accesses fit the log between two drains: ``capacity // (8 * per_op)`` operations, where
    ``per_op`` is the most accesses per replay operation any block so far made (its lookups
    included), never less than MIN_PER_OP (a block of ops the snapshot gate skips makes
    none; trace-pagecache's policy replay makes ~280 per applied op, and 4 times that in its
    busiest blocks: hence the factor 8). A block that still
    overflows the log is reported by the sink (access.dropped(): ``log_dropped`` in memdesc
    timing's output), and the blocks after it shrink to what it measured."""

    MIN_PER_OP = 256

    def __init__(self, mm: pa.MemMap, capacity: int, block: int):
        self.mm, self.capacity, self.block = mm, capacity, block
        self.per_op = self.MIN_PER_OP
        self.seen = self._accesses()

    def _accesses(self) -> int:
        c = access.counters(self.mm)
        return int(c[:, access.CT_LOADS].sum() + c[:, access.CT_STORES].sum())

    def step(self) -> int:
        """Operations of the next block."""
        if not self.capacity:
            return self.block
        return max(1, min(self.block, self.capacity // (8 * self.per_op)))

    def measured(self, nops: int) -> None:
        """After a block of ``nops`` operations (before its drain)."""
        now = self._accesses()
        self.per_op = max(self.per_op, -(-(now - self.seen) // max(1, nops)))
        self.seen = now


def _boundaries(inp: ReplayInput, block: int) -> tuple[np.ndarray, list[int]]:
    """Op indices where the loop stops: every ``block`` ops and at each check point (the first
    op at or past its event), so the state there can be read."""
    ev = inp.ops.evidx
    at = [int(np.searchsorted(ev, c.event, side="left")) for c in inp.checkpoints]
    b = np.unique(np.concatenate([np.arange(0, len(ev), block), at, [len(ev)]]))
    return b.astype(np.int64), at


def start_memmap(machine: Machine, s: StartState, stage: Stage,
                 buffer: np.ndarray | None = None,
                 booted: pa.MemMap | None = None) -> pa.MemMap:
    """The emulated memory of ``stage`` in the start state ``s`` (memdesc.mm.start_state),
    in ``buffer`` when given (see MemMap), from ``booted`` (a MemMap of ``stage`` built
    with ``free_all=False``, untouched since) when given."""
    mm = booted or pa.MemMap(machine, stage, debug=False, free_all=False, buffer=buffer)
    set_start_state(mm, s.pageblock_mt, s.free_pfn, s.free_order, s.unit_pfn, s.unit_order)
    return mm


def setup_stage(inp: ReplayInput, stage: Stage, buffer: np.ndarray | None = None,
                booted: pa.MemMap | None = None) -> pa.MemMap:
    """The emulated memory of ``stage`` in the snapshot's state, in ``buffer`` when given
    (from ``booted`` when given: see start_memmap())."""
    return start_memmap(inp.machine, inp.start, stage, buffer, booted)


def _free_mt(mm: pa.MemMap) -> np.ndarray:
    nz = int(mm.S[pa.C_NZ])
    out = np.zeros((nz, MIGRATE_TYPES, NR_PAGE_ORDERS), np.int64)
    managed = zone_managed_pages(mm)
    for gz in range(nz):
        if managed[gz] and not pa.pagetypeinfo_free_nb(mm.mem, mm.S, gz, out[gz]):
            raise pa.VMBug(f"zone {gz}: a free list of the emulated memory is corrupt "
                           f"(stage {variant_name(mm.stage)})")
    return out


def replay_stage(inp: ReplayInput, stage: Stage, mode: str = "placement",
                 samples: int = 100, block: int = BLOCK_OPS,
                 progress: Callable[[int], None] | None = None,
                 keep_memmap: bool = False, vmstat: bool = True,
                 buffer: np.ndarray | None = None, booted: pa.MemMap | None = None,
                 access_sink: Callable | None = None) -> StageRun:
    """Replay ``inp`` at ``stage`` in ``mode``; ``progress(n)`` after each block of ops.
    In policy mode ``vmstat`` runs the pcp->high decay each second of trace time
    (memdesc.mm.vmstat); placement follows the trace's own drains instead. ``buffer``
    holds the emulated mem_map (reused across stages by replay()); ``booted`` is that
    mem_map already booted for ``stage`` (MemMapPrefault.booted())."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    t0 = time.monotonic()
    mm = setup_stage(inp, stage, None if keep_memmap else buffer,
                     None if keep_memmap else booted)
    n = mm.nr_pfns
    s0 = inp.start
    managed = s0.managed
    pcpu = np.zeros(n, np.int16)
    st, blk, ucls, uord, units = _start_units(inp, n)
    ops = inp.ops
    start = {"units_placed": len(s0.unit_pfn), "free_blocks": len(s0.free_pfn),
             "pageblocks_by_type": {MT_NAMES[t]: int((s0.pageblock_mt == t).sum())
                                    for t in range(MIGRATE_TYPES)},
             "pageblock_rule": s0.rule, "buddyinfo": pa.buddyinfo(mm)}
    # kernel memory (replay_arena): policy mode's folio descriptors; with access accounting
    # the trace's slab operations (replay_slab), run as side operations with the lookups
    slab = _slab_plan(inp) if access_sink is not None else None
    arena = None
    if mode == "policy" or slab is not None:
        arena = StageArena(mm, _peak_live_folios(inp) if mode == "policy" else 0,
                           mode == "policy", slab)
    if mode == "policy":
        start["snapshot_pcp_pages_freed"] = int(_policy_release_pcp(
            mm.mem, mm.S, ops.kind, ops.pfn, ops.order, ops.applies, ops.first, managed, st,
            ucls, uord, units))
        start["start_folios"] = int(replay_start_folios(arena.HE, arena.AE, s0.unit_pfn,
                                                        managed, st, ucls, uord))
    setup = time.monotonic() - t0
    spos = sample_positions(inp, samples)
    ns = len(spos)
    nz = int(mm.S[pa.C_NZ])
    nr_free = np.zeros((ns, nz, NR_PAGE_ORDERS), np.int64)
    pcp = np.zeros((ns, nz), np.int64)
    units_s = np.zeros((ns, NCLS, NR_UNIT_ORDERS), np.int64)
    mism = np.zeros((len(MISMATCHES), MISM_LAST + 1), np.int64)
    # the emulator's pfn per trace allocation: policy mode only
    emu = np.full(len(ops) if mode == "policy" else 0, -1, np.int64)
    nxt = 0
    lookups = None
    if access_sink is not None:                  # memdesc.mm.access: counted from here on
        access.attach_sink(mm, access_sink, block)
        if arena is not None:
            arena.account_with(mm)
        side = _side_ops(inp)
        lookups = side.start(mm, arena) if side is not None else None
    bounds, check_at = _boundaries(inp, block)
    t_ops = ops.time if ops.time is not None else np.zeros(len(ops), np.int64)
    first_t = int(t_ops[0]) if len(t_ops) else 0
    vm = np.zeros(VM_INTERVALS + 1, np.int64)
    vm[VM_NEXT] = first_t + STAT_INTERVAL_NS if vmstat and mode == "policy" else -1
    at_checks: list[dict | None] = [None] * len(check_at)
    t1 = time.monotonic()
    sizer = _LogSizer(mm, int(getattr(access_sink, "log_capacity", 0) or 0), block) \
        if access_sink is not None and access.enabled(mm) else None
    for lo, end in zip(bounds[:-1].tolist() + [len(ops)], bounds[1:].tolist() + [len(ops)],
                       strict=True):
        for j, c in enumerate(check_at):
            if c == lo and at_checks[j] is None:
                at_checks[j] = {"free_mt": _free_mt(mm), "counters": dict(zip(
                    MISMATCHES, mism[:, MISM_COUNT].tolist(), strict=True))}
        if mode == "placement":
            loop, mid, post = _placement_loop, (
                ops.kind, ops.pfn, ops.order, ops.mt, ops.cpu, ops.cls, ops.evidx,
                ops.applies, ops.first, managed, st, blk, pcpu, ucls, uord, units, mism,
                spos), (nr_free, pcp, units_s)
        else:
            loop, mid, post = _policy_loop, (
                ops.kind, ops.pfn, ops.order, ops.cpu, ops.gfp, ops.cls, ops.evidx,
                ops.applies, ops.pair, managed, st, blk, ucls, uord, units, emu, mism,
                spos), (nr_free, pcp, units_s, t_ops, vm, arena.HE, arena.AE)
        while lo < end:
            hi = min(end, lo + sizer.step()) if sizer is not None else end
            if lookups is None:
                nxt = loop(mm.mem, mm.S, lo, hi, *mid, nxt, *post)
            else:                                 # the trace's lookups between the ops
                nxt = lookups.run(loop, lo, hi, mid, nxt, post,
                                  emu if mode == "policy" else None)
            if progress:
                progress(hi - lo)
            if sizer is not None:
                sizer.measured(hi - lo)
            if access_sink is not None:
                access_sink(stage.id, mm)
            lo = hi
    while nxt < ns:                                   # samples at or past the last op
        _sample(mm.S, units, nxt, nr_free, pcp, units_s)
        nxt += 1
    seconds = time.monotonic() - t1
    digest = _digest(emu) if mode == "policy" else ""
    if mode == "policy":
        start["folio_descriptors_live_at_end"] = arena.live_descriptors()
    if arena is not None and arena.slab is not None:
        start["slab"] = arena.slab.summary()
    if mode == "policy":
        start["vmstat"] = {"decay_pcp_high": bool(vmstat), "intervals": int(vm[VM_INTERVALS]),
                           "pages_freed_by_decay": int(vm[VM_FREED])}
    where = {name: (int(ops.evidx[mism[j, MISM_FIRST]]), int(ops.evidx[mism[j, MISM_LAST]]))
             for j, name in enumerate(MISMATCHES) if mism[j, MISM_COUNT]}
    return StageRun(stage, mode, seconds, setup, spos, nr_free, pcp, units_s,
                    {name: int(v) for name, v in zip(MISMATCHES, mism[:, MISM_COUNT], strict=True)},
                    start, pa.buddyinfo(mm), digest, where, mm if keep_memmap else None,
                    [c or {} for c in at_checks], ft.walk_stats(mm.S))


def _peak_live_folios(inp: ReplayInput) -> int:
    """replay_folios.peak_live_folios() of the input's ops, computed once."""
    if "peak_live_folios" not in inp.cache:
        inp.cache["peak_live_folios"] = (peak_live_folios(inp.ops)
                                         + start_folio_units(inp.units, inp.start))
    return inp.cache["peak_live_folios"]


def _slab_plan(inp: ReplayInput) -> SlabPlan | None:
    """replay_slab.slab_plan() of the trace (None without slab events), computed once."""
    if "slab_plan" not in inp.cache:
        ev = inp.trace.events["event"]
        inp.cache["slab_plan"] = (slab_plan(inp.trace, inp.snapshot)
                                  if np.isin(ev, SLAB_EVENTS).any() else None)
    return inp.cache["slab_plan"]


def _side_ops(inp: ReplayInput) -> ReplayLookups | None:
    """The side operations of an accounted replay: the lookups and the slab operations
    (replay_side.ReplayLookups), None without either; computed once."""
    if "side_ops" not in inp.cache:
        plan = _slab_plan(inp)
        inp.cache["side_ops"] = inp.lookups if plan is None else ReplayLookups(
            inp.lookups.lookups if inp.lookups is not None else None, inp.ops,
            SideRows(*plan.rows()))
    return inp.cache["side_ops"]


def _start_units(inp: ReplayInput, n: int) -> tuple[np.ndarray, ...]:
    """Fresh per-PFN arrays of the start: replay state (ST_SNAP on the snapshot's units),
    block order, unit class and order of the snapshot, and the unit counts (units outside
    managed RAM -- reserved, holes -- stay counted but are never touched). Built once per
    input and copied for each stage."""
    key = ("start_units", n)
    if key not in inp.cache:
        s0 = inp.start
        st = np.zeros(n, np.int8)
        blk = np.zeros(n, np.int8)
        st[s0.unit_pfn] = ST_SNAP
        blk[s0.unit_pfn] = s0.unit_order
        ucls = np.full(n, -1, np.int8)
        uord = np.full(n, -1, np.int8)
        k = min(n, inp.units.pfn_count)
        ucls[:k] = inp.units.ucls[:k]
        uord[:k] = inp.units.uord[:k]
        inp.cache[key] = st, blk, ucls, uord, _unit_counts(ucls, uord)
    return tuple(a.copy() for a in inp.cache[key])


def _unit_counts(ucls: np.ndarray, uord: np.ndarray) -> np.ndarray:
    """int64[classes, unit orders]: allocation units by class and order."""
    out = np.zeros((NCLS, NR_UNIT_ORDERS), np.int64)
    bad = unit_counts_nb(ucls, uord, out)
    if bad >= 0:
        raise ValueError(f"pfn {bad}: unit class {ucls[bad]} order {uord[bad]} out of range")
    return out


@dataclass
class ReplayResult:
    inp: ReplayInput
    mode: str
    runs: list[StageRun]
    series: list[StageSeries]
    #: per stage: replay_checks rows (every check point and zone)
    checks: list[list[dict]]

    def identical_observables(self) -> bool:
        """Every stage left the same free lists at every sample (and, in policy mode, handed
        out the same PFNs): the bisectable property."""
        a = self.runs[0]
        return all(np.array_equal(r.nr_free, a.nr_free) and np.array_equal(r.pcp, a.pcp)
                   and np.array_equal(r.units, a.units)
                   and r.alloc_pfn_digest == a.alloc_pfn_digest for r in self.runs[1:])


def replay(inp: ReplayInput, stages: list[Stage], mode: str = "placement",
           samples: int = 100, progress: Callable[[int], None] | None = None,
           table: DescriptorTable | None = None, access_sink: Callable | None = None
           ) -> ReplayResult:
    """Replay ``inp`` at each stage; series and the checks against the kernel per stage."""
    runs, series, checks = [], [], []
    table = table or load_descriptors()
    pre = inp.cache.pop("mem_map_prefault", None)
    buffer = pre.get(stages) if pre is not None else mem_map_buffer(inp.machine, stages)
    for s in stages:
        booted = pre.booted(s, buffer) if pre is not None else None
        pre = None                            # only the first stage was booted ahead
        run = replay_stage(inp, s, mode, samples, progress=progress, buffer=buffer,
                           booted=booted, access_sink=access_sink)
        booted = None
        runs.append(run)
        series.append(stage_series(inp, run, table))
        checks.append(check_rows(inp, run))
    box = [buffer]
    del buffer                                # the box holds the last reference
    release_in_background(box)
    return ReplayResult(inp, mode, runs, series, checks)
