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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from memdesc.analysis import fragmentation as frag
from memdesc.analysis import trace_types as tt
from memdesc.analysis.census import CLASSES, NR_UNIT_ORDERS, Census
from memdesc.analysis.classify import Layout
from memdesc.analysis.cost import stage_cost
from memdesc.analysis.descriptors import DescriptorTable, load_descriptors
from memdesc.analysis.machine_from_snapshot import zone_specs
from memdesc.analysis.replay_checks import MT_NAMES, CheckPoint, check_points, compare
from memdesc.analysis.replay_lookups import ReplayLookups, lookups_from_trace
from memdesc.analysis.replay_loops import (
    _placement_loop,
    _policy_loop,
    _policy_release_pcp,
    _sample,
    unit_counts_nb,
)
from memdesc.analysis.replay_memmap import (
    MemMapPrefault,
    mem_map_buffer,
    release_in_background,
)
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
from memdesc.analysis.replay_start import StartState, start_state
from memdesc.analysis.survey import layout_of, nr_cpus_of
from memdesc.errors import InputError
from memdesc.ingest import procfs
from memdesc.ingest.snapshot import Snapshot, open_snapshot
from memdesc.ingest.trace_events import LOOKUP_EVENTS, Trace
from memdesc.mm import access
from memdesc.mm import free_tracking as ft
from memdesc.mm import page_alloc as pa
from memdesc.mm.gfp import MIGRATE_TYPES
from memdesc.mm.mmzone import NR_PAGE_ORDERS, PAGES_PER_SECTION, Machine
from memdesc.mm.start_state import set_start_state
from memdesc.mm.vmstat import STAT_INTERVAL_NS
from memdesc.stages import Stage, variant_name

MODES = ("placement", "policy")

# ---- the start state ---------------------------------------------------------------------------

def _ranges(mask: np.ndarray, base: int = 0) -> list[tuple[int, int]]:
    """[start, end) runs of True in ``mask``."""
    m = np.concatenate(([False], mask, [False]))
    d = np.flatnonzero(m[1:] != m[:-1])
    return [(base + int(a), base + int(b)) for a, b in zip(d[::2], d[1::2], strict=True)]


def _last_true(mask: np.ndarray) -> int:
    """Index of the last True in ``mask``, -1 when there is none (without the int64 index
    array np.flatnonzero() would make: 44 MB for a 24 GiB zone)."""
    if not len(mask):
        return -1
    k = int(np.argmax(mask[::-1]))
    return -1 if not mask[-1 - k] else len(mask) - 1 - k


def _last_n(mask: np.ndarray, n: int) -> np.ndarray:
    """bool like ``mask``: its last ``n`` True elements (all of them when it has fewer)."""
    out = np.zeros_like(mask)
    if mask.all():                                  # the usual case: one run to the end
        out[max(0, len(mask) - n):] = True
        return out
    run = np.flatnonzero(mask)
    out[run[-n:] if n <= len(run) else run] = True
    return out


def machine_for_replay(snapshot: Snapshot, layout: Layout, units: tt.SnapshotUnits,
                       zoneinfo: list[procfs.ZoneInfo]) -> tuple[Machine, list[str]]:
    """The emulated machine of the snapshot, with the non-managed RAM placed where the
    snapshot shows it: PG_reserved pages and the never-initialised run at the top of a zone
    (as many as zoneinfo's present - managed leaves). Where the two disagree the snapshot
    wins and the difference is noted."""
    notes = []
    specs = {(s.node, s.name): s for s in zone_specs(zoneinfo)}
    ram = layout.ram or [(z.start_pfn, z.end_pfn) for z in layout.zones]
    in_ram = np.zeros(snapshot.pfn_count, bool)
    for a, b in ram:
        in_ram[a:min(b, snapshot.pfn_count)] = True
    reserved: list[tuple[int, int]] = []
    new_specs = []
    for z in layout.zones:
        lo, hi = z.start_pfn, min(z.end_pfn, snapshot.pfn_count)
        pc = units.pclass[lo:hi]
        ram_z = in_ram[lo:hi]
        res = (pc == tt.CLASS_INDEX["reserved"]) & ram_z
        need = z.present - z.managed - int(res.sum())
        last = _last_true(ram_z & (pc != tt.FLAG0))
        top = hi - lo if last < 0 else last + 1
        f0_top = np.zeros_like(res)
        if need > 0:
            f0_top[top:] = _last_n(ram_z[top:], need)  # flags==0 RAM at the top of the zone
        managed_mask = ram_z & ~res & ~f0_top
        managed = int(managed_mask.sum())
        if managed != z.managed:
            notes.append(f"zone {z.name}: zoneinfo says managed {z.managed:,}, the snapshot "
                         f"leaves {managed:,} (PG_reserved and never-initialised pages "
                         "counted from kpageflags); the emulator uses the snapshot's")
        reserved += _ranges(ram_z & ~managed_mask, lo)
        s = specs[(z.node, z.name)]
        new_specs.append(replace(s, managed=managed))
    others = [s for k, s in specs.items() if k not in {(z.node, z.name) for z in layout.zones}]
    nr_cpus = nr_cpus_of(zoneinfo) or 1
    machine = Machine.from_zones(new_specs + others, ram, nr_cpus=nr_cpus,
                                 reserved=reserved, name=str(snapshot.source))
    return machine, notes


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


@dataclass
class SnapshotStart:
    """The trace-independent half of a replay's input: the snapshot, its classification,
    census, emulated machine and start state (load_snapshot_start())."""

    snapshot: Snapshot
    layout: Layout
    zoneinfo: list[procfs.ZoneInfo]
    units: tt.SnapshotUnits
    base_census: Census
    machine: Machine
    start: StartState
    notes: list[str]
    seconds: float
    #: the mem_map storage being faulted in (load_snapshot_start(stages=...))
    prefault: MemMapPrefault | None = None


def load_snapshot_start(snapshot_dir: Path,
                        progress: Callable[[int], None] | None = None,
                        stages: list[Stage] | None = None,
                        snapshot: Snapshot | None = None) -> SnapshotStart:
    """Snapshot, classification, census, emulated machine and start state of the folder
    ``snapshot_dir`` (nothing here depends on the trace). With ``stages``, the mem_map
    storage for them is faulted in from the moment the zones are known, and the first
    stage booted in it from the moment the machine is (MemMapPrefault). ``snapshot``: the
    one at ``snapshot_dir``, when the caller has opened it already."""
    from memdesc.analysis.classify import build_census, classify_chunks

    t0 = time.monotonic()
    snapshot = snapshot or open_snapshot(snapshot_dir)
    layout, zoneinfo = layout_of(snapshot)
    if not zoneinfo or not layout.zones:
        raise InputError(f"{snapshot_dir}: the snapshot has no zoneinfo; the emulated "
                         "machine is built from it")
    prefault = MemMapPrefault(_mem_map_pfns(layout), stages) if stages else None
    units = tt.snapshot_units(snapshot, layout, progress=progress)
    tally = classify_chunks(((s, a["kpageflags"]) for s, a in
                             snapshot.chunks(("kpageflags",))), layout)
    base = build_census(tally, str(snapshot.source), snapshot.kernel, nr_cpus_of(zoneinfo))
    machine, notes = machine_for_replay(snapshot, layout, units, zoneinfo)
    if prefault is not None:
        prefault.set_machine(machine)
    pti_text = snapshot.text("pagetypeinfo", "before") or snapshot.text("pagetypeinfo", "after")
    start = start_state(units, machine, procfs.parse_pagetypeinfo(pti_text) if pti_text
                        else None)
    return SnapshotStart(snapshot, layout, zoneinfo, units, base, machine, start,
                         notes + start.notes, time.monotonic() - t0, prefault)


def _mem_map_pfns(layout: Layout) -> int:
    """Struct pages of the machine machine_for_replay() will build from ``layout``
    (Machine.nr_pfns: the highest zone end, a whole section of struct pages at a time)."""
    end = max(z.end_pfn for z in layout.zones)
    return -(-end // PAGES_PER_SECTION) * PAGES_PER_SECTION


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
    for gz in range(nz):
        if mm.zs[gz, pa.Z_MANAGED] and not pa.pagetypeinfo_free_nb(mm.mem, mm.S, gz, out[gz]):
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
    if mode == "policy":
        start["snapshot_pcp_pages_freed"] = int(_policy_release_pcp(
            mm.mem, mm.S, ops.kind, ops.pfn, ops.order, ops.applies, ops.first, managed, st,
            ucls, uord, units))
    setup = time.monotonic() - t0
    spos = sample_positions(inp, samples)
    ns = len(spos)
    nz = int(mm.S[pa.C_NZ])
    nr_free = np.zeros((ns, nz, NR_PAGE_ORDERS), np.int64)
    pcp = np.zeros((ns, nz), np.int64)
    units_s = np.zeros((ns, NCLS, NR_UNIT_ORDERS), np.int64)
    mism = np.zeros((len(MISMATCHES), 3), np.int64)
    # the emulator's pfn per trace allocation: policy mode only
    emu = np.full(len(ops) if mode == "policy" else 0, -1, np.int64)
    nxt = 0
    lookups = None
    if access_sink is not None:                  # memdesc.mm.access: counted from here on
        block = access.attach_sink(mm, access_sink, block)
        lookups = inp.lookups.start(mm) if inp.lookups is not None else None
    bounds, check_at = _boundaries(inp, block)
    t_ops = ops.time if ops.time is not None else np.zeros(len(ops), np.int64)
    first_t = int(t_ops[0]) if len(t_ops) else 0
    vm = np.array([first_t + STAT_INTERVAL_NS if vmstat and mode == "policy" else -1, 0, 0],
                  np.int64)
    at_checks: list[dict | None] = [None] * len(check_at)
    t1 = time.monotonic()
    for lo, hi in zip(bounds[:-1].tolist() + [len(ops)], bounds[1:].tolist() + [len(ops)],
                      strict=True):
        for j, c in enumerate(check_at):
            if c == lo and at_checks[j] is None:
                at_checks[j] = {"free_mt": _free_mt(mm), "counters": dict(zip(
                    MISMATCHES, mism[:, 0].tolist(), strict=True))}
        if hi <= lo:
            continue
        if mode == "placement":
            loop, mid, post = _placement_loop, (
                ops.kind, ops.pfn, ops.order, ops.mt, ops.cpu, ops.cls, ops.evidx,
                ops.applies, ops.first, managed, st, blk, pcpu, ucls, uord, units, mism,
                spos), (nr_free, pcp, units_s)
        else:
            loop, mid, post = _policy_loop, (
                ops.kind, ops.pfn, ops.order, ops.cpu, ops.gfp, ops.cls, ops.evidx,
                ops.applies, ops.pair, managed, st, blk, ucls, uord, units, emu, mism,
                spos), (nr_free, pcp, units_s, t_ops, vm)
        if lookups is None:
            nxt = loop(mm.mem, mm.S, lo, hi, *mid, nxt, *post)
        else:                                     # the trace's lookups between the ops
            nxt = lookups.run(loop, lo, hi, mid, nxt, post, emu if mode == "policy" else None)
        if progress:
            progress(hi - lo)
        if access_sink is not None:
            access_sink(stage.id, mm)
    while nxt < ns:                                   # samples at or past the last op
        _sample(mm.S, units, nxt, nr_free, pcp, units_s)
        nxt += 1
    seconds = time.monotonic() - t1
    digest = _digest(emu) if mode == "policy" else ""
    if mode == "policy":
        start["vmstat"] = {"decay_pcp_high": bool(vmstat), "intervals": int(vm[2]),
                           "pages_freed_by_decay": int(vm[1])}
    where = {name: (int(ops.evidx[mism[j, 1]]), int(ops.evidx[mism[j, 2]]))
             for j, name in enumerate(MISMATCHES) if mism[j, 0]}
    return StageRun(stage, mode, seconds, setup, spos, nr_free, pcp, units_s,
                    {name: int(v) for name, v in zip(MISMATCHES, mism[:, 0], strict=True)},
                    start, pa.buddyinfo(mm), digest, where, mm if keep_memmap else None,
                    [c or {} for c in at_checks], ft.walk_stats(mm.S))


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


# ---- results -----------------------------------------------------------------------------------

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
