"""The snapshot half of a replay's input: the emulated machine of a pre-snapshot, with the RAM
the buddy never got placed where the snapshot shows it, its classification, census and start
state (memdesc.analysis.replay; nothing here depends on the trace)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from memdesc.analysis import trace_types as tt
from memdesc.analysis.census import Census
from memdesc.analysis.classify import Layout
from memdesc.analysis.machine_from_snapshot import zone_specs
from memdesc.analysis.replay_memmap import MemMapPrefault
from memdesc.analysis.replay_start import StartState, start_state
from memdesc.analysis.survey import layout_of, nr_cpus_of
from memdesc.errors import InputError
from memdesc.ingest import procfs
from memdesc.ingest.snapshot import Snapshot, open_snapshot
from memdesc.mm.mmzone import PAGES_PER_SECTION, Machine
from memdesc.stages import Stage


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
