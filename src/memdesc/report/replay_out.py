"""A replay's results as a table, as JSON (schema in docs/replay.md) and as a plot over time."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

from memdesc import __version__
from memdesc.analysis import fragmentation as frag
from memdesc.analysis import trace_types as tt
from memdesc.analysis.replay import (
    EXPECTED,
    ReplayResult,
    StageRun,
    marker_positions,
    zone_names,
)
from memdesc.report.json_out import write_bytes
from memdesc.report.png import figure_png

SCHEMA_VERSION = 1


def _mib(b: float) -> str:
    return f"{b / 2**20:,.1f}"


def speed(result: ReplayResult, run: StageRun) -> dict[str, float]:
    """Replay speed of one stage: trace events and page operations per second, and the
    speed as a multiple of the trace's own rate (events per second the kernel produced)."""
    tr = result.inp.trace
    n = len(tr)
    ev_s = n / run.seconds if run.seconds > 0 else float("inf")
    kernel_rate = n / (tr.duration_ns / 1e9) if tr.duration_ns else float("nan")
    return {"events_per_s": ev_s,
            "ops_per_s": len(result.inp.ops) / run.seconds if run.seconds > 0 else float("inf"),
            "kernel_events_per_s": kernel_rate,
            "realtime_multiple": ev_s / kernel_rate if kernel_rate == kernel_rate else
            float("nan")}


def disagreements(run: StageRun) -> int:
    """Counters that are not explained kernel behaviour (see analysis/replay.MISMATCHES)."""
    return sum(v for k, v in run.mismatches.items() if k not in EXPECTED)


def _main_zone(result: ReplayResult) -> int:
    """Index (among populated zones) of the zone with the most managed pages."""
    zones = [z for z in result.inp.machine.zones if z.managed]
    return int(np.argmax([z.managed for z in zones]))


def table(result: ReplayResult) -> str:
    """The per-stage table the CLI prints, with the type inference, the checks and the
    counters of what the kernel did without events."""
    inp = result.inp
    tr = inp.trace
    zi = _main_zone(result)
    zname = [n for n, z in zip(zone_names(inp.machine), inp.machine.zones, strict=True)
             if z.managed][zi]
    out = [f"replay: {tr.path} ({tr.source_format}, {len(tr):,} events over "
           f"{tr.duration_ns / 1e9:.3f} s), mode {result.mode}",
           f"start: {inp.snapshot.source} (snapshot read times: {inp.gates.style}; "
           f"{inp.ops.stats['before_snapshot']:,} page events already in it)"]
    out += [f"  note: {n}" for n in inp.notes]
    out += [f"  ! {p}" for p in tr.problems()]
    s = inp.types.summary(tr.events["order"])
    out.append(f"types: {s['units']:,} allocations, {s['pages']:,} pages; unknown "
               f"{s['unknown_units']:,} allocations = {100 * s['unknown_share']:.2f} % of pages "
               "(counted as untyped)")
    out.append("  by rule: " + ", ".join(f"{k} {v['pages']:,}" for k, v in s["by_rule"].items()))
    chk = inp.type_check
    if chk.get("alive_at_snapshot"):
        out.append(f"  checked against the snapshot: {chk['agree']:,} of "
                   f"{chk['alive_at_snapshot']:,} allocations made before their page was read "
                   f"agree ({100 * chk['agree_share']:.1f} %)")
    so = chk.get("slab_objects_on_pre_trace_pages")
    if so and so["checked"]:
        out.append(f"  slab objects on pages allocated before the trace: "
                   f"{100 * so['share']:.1f} % of {so['checked']:,} fall on pages the snapshot "
                   "classifies slab")
    out.append("")
    head = (f"{'stage':<18}{'struct pages':>14}{'descriptors':>13}{'total MiB':>11}"
            f"{'Δ total':>10}{'free 2M':>10}{'huge/opt %':>11}{'unusable@9':>14}"
            f"{'Mev/s':>8}{'× real':>9}{'disagree':>10}")
    sub = f"{zname} end"
    out.append(head)
    out.append(f"{'':<18}{'MiB (end)':>14}{'MiB (end)':>13}{'(end)':>11}{'MiB':>10}"
               f"{'end':>10}{'mean':>11}{sub:>14}")
    for run, ser in zip(result.runs, result.series, strict=True):
        sp = speed(result, run)
        tot = ser.total_bytes
        huge = np.nanmean(ser.free_huge_percent) if np.isfinite(ser.free_huge_percent).any() \
            else float("nan")
        out.append(
            f"{run.name:<18}{_mib(ser.struct_page_bytes[-1]):>14}"
            f"{_mib(ser.descriptor_bytes[-1]):>13}{_mib(tot[-1]):>11}"
            f"{(tot[-1] - tot[0]) / 2**20:>+10.2f}{int(ser.free_2m_blocks[-1]):>10,}"
            f"{huge:>11.1f}{frag.format_index(int(ser.unusable[-1, zi, 9])):>14}"
            f"{sp['events_per_s'] / 1e6:>8.1f}{sp['realtime_multiple']:>9.0f}"
            f"{disagreements(run):>10,}")
    out.append("")
    if result.mode == "policy" or len(result.runs) > 1:
        same = result.identical_observables()
        out.append(f"identical observables at every stage (free lists, pcp, units"
                   f"{', PFNs handed out' if result.mode == 'policy' else ''}): "
                   f"{'yes' if same else 'NO'}")
    out += check_lines(result)
    run = result.runs[0]
    exp = {k: v for k, v in run.mismatches.items() if v and k in EXPECTED}
    bad = {k: v for k, v in run.mismatches.items() if v and k not in EXPECTED}
    if exp:
        out.append("kernel paths without events, followed: "
                   + ", ".join(f"{k} {v:,}" for k, v in exp.items()))
    out.append("disagreements: " + (", ".join(f"{k} {v:,} (first at event "
                                               f"{run.mismatch_where[k][0]:,})"
                                               for k, v in bad.items()) or "none"))
    return "\n".join(out)


def check_lines(result: ReplayResult) -> list[str]:
    """The checks against the kernel, one line per check point and zone, then each mismatch
    cell and cause."""
    rows = result.checks[0] if result.checks else []
    if not rows:
        return ["checks against the kernel: none possible (no buddyinfo read inside this "
                "trace: no pre-snapshot .after files at a known event, no end state)"]
    out = []
    for r in rows:
        bt = r["by_migratetype"]
        mt = ("no pagetypeinfo" if bt is None else
              "by migratetype exact" if not r["mismatched_pages"] else
              f"{r['mismatched_pages']:,} pages on other (migratetype, order) lists")
        fp = r["free_pages"]
        out.append(f"check {r['at']} (event {r['event']:,}) {r['zone']}: by order "
                   f"{'exact' if r['exact_by_order'] else 'DIFFERS'}, {mt}; free pages "
                   f"kernel {fp['kernel']:,} emulated {fp['emulated']:,}")
        if r["mismatches"]:
            out.append("    cells (emulated - kernel): " + ", ".join(
                f"{c.get('migratetype', '')[:4]}{'@' if 'migratetype' in c else 'order '}"
                f"{c['order']} {c['diff']:+d}" for c in r["mismatches"]))
        out += [f"    cause: {c}" for c in r["causes"]]
    return out


def _series_dict(result: ReplayResult, run: StageRun, ser) -> dict[str, Any]:
    tr = result.inp.trace
    t = tr.events["time"]
    pos = np.clip(run.samples_pos, 0, max(len(t) - 1, 0))
    zones = [n for n, z in zip(zone_names(result.inp.machine), result.inp.machine.zones,
                               strict=True) if z.managed]
    gz = [i for i, z in enumerate(result.inp.machine.zones) if z.managed]
    huge = [None if not np.isfinite(x) else round(float(x), 3) for x in ser.free_huge_percent]
    return {
        "event_index": run.samples_pos.tolist(),
        "time_s": [round(float(t[p]) / 1e9, 6) if len(t) else 0.0 for p in pos],
        "struct_page_bytes": ser.struct_page_bytes.tolist(),
        "descriptor_bytes": ser.descriptor_bytes.tolist(),
        "total_bytes": ser.total_bytes.tolist(),
        "by_type": {k: v.tolist() for k, v in ser.by_type.items()},
        "free_pages": ser.free_pages.tolist(),
        "free_2m_blocks": ser.free_2m_blocks.tolist(),
        "free_huge_percent": huge,
        "zones": zones,
        "nr_free": run.nr_free[:, gz].tolist(),
        "pcp_pages": run.pcp[:, gz].tolist(),
        "unusable_index": ser.unusable.tolist(),
        "extfrag_index": ser.extfrag.tolist(),
        "units_by_class": {c: run.units[:, i].tolist() for i, c in enumerate(tt.CLASS_NAMES)
                           if run.units[:, i].any()},
    }


def replay_dict(result: ReplayResult) -> dict[str, Any]:
    """Everything the replay found, as plain JSON-able data (docs/replay.md)."""
    inp = result.inp
    tr = inp.trace
    stages = []
    for run, ser, check in zip(result.runs, result.series, result.checks, strict=True):
        sp = speed(result, run)
        stages.append({
            "stage": run.name, "struct_page_size": run.stage.struct_page_bytes,
            "seconds": run.seconds, "setup_seconds": run.setup_seconds,
            "events_per_s": sp["events_per_s"], "ops_per_s": sp["ops_per_s"],
            "realtime_multiple": sp["realtime_multiple"],
            "mismatches": run.mismatches, "disagreements": disagreements(run),
            "mismatch_first_last_event": {k: list(v) for k, v in run.mismatch_where.items()},
            "start": {k: v for k, v in run.start.items() if k != "buddyinfo"},
            "start_buddyinfo": run.start["buddyinfo"], "end_buddyinfo": run.final_buddyinfo,
            "checks_exact": all(r["exact"] for r in check),
            "samples": _series_dict(result, run, ser),
        })
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": f"memdesc {__version__}",
        "mode": result.mode,
        "trace": {"path": str(tr.path), "format": tr.source_format, "events": len(tr),
                  "duration_s": tr.duration_ns / 1e9, "counts": tr.counts(),
                  "quirks": tr.quirks, "problems": tr.problems()},
        "snapshot": {"source": str(inp.snapshot.source), "gates": inp.gates.style,
                     "steps": inp.gates.steps, "notes": inp.notes},
        "machine": inp.machine.describe(),
        "ops": inp.ops.stats,
        "types": {**inp.types.summary(tr.events["order"]), "check": inp.type_check},
        "markers": [{"event_index": int(i), "text": t}
                    for i, t in zip(*marker_positions(inp), strict=True)],
        "identical_observables": result.identical_observables(),
        "prepare_seconds": inp.prep_seconds,
        "checks": result.checks[0] if result.checks else [],
        "checks_identical_across_stages": all(c == result.checks[0] for c in result.checks),
        "stages": stages,
    }


def write_json(result: ReplayResult, dest: str | os.PathLike | None) -> None:
    """The JSON to ``dest`` atomically, or to stdout when ``dest`` is None or "-"."""
    text = json.dumps(replay_dict(result), indent=1) + "\n"
    if dest is None or str(dest) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_bytes(dest, text.encode())


def render_png(result: ReplayResult) -> bytes:
    """Three panels over trace time: metadata bytes per stage, free 2 MiB blocks and the
    free-huge/optimal score, and the unusable index at pageblock order of the biggest zone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = result.inp.trace
    t = tr.events["time"]
    t0 = float(t[0]) if len(t) else 0.0
    zi = _main_zone(result)
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), dpi=110, sharex=True)
    for run, ser in zip(result.runs, result.series, strict=True):
        pos = np.clip(run.samples_pos, 0, max(len(t) - 1, 0))
        x = (t[pos] - t0) / 1e9 if len(t) else np.zeros(len(pos))
        total = (ser.struct_page_bytes + ser.descriptor_bytes) / 2**20
        axes[0].plot(x, total, label=f"{run.name} ({total[-1]:,.0f} MiB at the end)")
        axes[1].plot(x, ser.free_2m_blocks, label=run.name)
        axes[2].plot(x, ser.unusable[:, zi, 9] / 1000, label=run.name)
    ser = result.series[0]
    run = result.runs[0]
    pos = np.clip(run.samples_pos, 0, max(len(t) - 1, 0))
    x = (t[pos] - t0) / 1e9 if len(t) else np.zeros(len(pos))
    twin = axes[1].twinx()
    twin.plot(x, ser.free_huge_percent, color="#999999", linestyle=":", label="free-huge/optimal")
    twin.set_ylabel("free-huge / optimal (%)", fontsize=8)
    axes[0].set_ylabel("struct pages + descriptors (MiB)")
    axes[1].set_ylabel("free 2 MiB blocks")
    axes[2].set_ylabel("unusable index, order 9")
    axes[2].set_xlabel("trace time (s)")
    axes[0].set_title(f"memdesc replay ({result.mode}) of {tr.path}", fontsize=10)
    axes[0].legend(fontsize=8, frameon=False, ncol=3)
    for ax in axes:
        ax.spines[["top"]].set_visible(False)
    fig.tight_layout()
    return figure_png(fig)


def write_plot(result: ReplayResult, dest: str | os.PathLike) -> None:
    write_bytes(dest, render_png(result))
