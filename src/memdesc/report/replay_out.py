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


def _zone_label(result: ReplayResult) -> str:
    zones = [n for n, z in zip(zone_names(result.inp.machine), result.inp.machine.zones,
                               strict=True) if z.managed]
    return zones[_main_zone(result)]


def check_summary(result: ReplayResult) -> list[str]:
    """One line per check point: by order and by migratetype, per zone, in a few words."""
    rows = result.checks[0] if result.checks else []
    if not rows:
        return ["kernel checks: none possible (no buddyinfo read at a known point of this "
                "trace)"]
    out = []
    for at in dict.fromkeys(r["at"] for r in rows):
        rs = [r for r in rows if r["at"] == at]
        order_ok = [r for r in rs if r["exact_by_order"]]
        parts = [f"by order exact in {len(order_ok)} of {len(rs)} zones"]
        exact_all = [r["zone"].split("/")[1] for r in rs if r["exact"]]
        if exact_all:
            parts.append("by migratetype exact in " + ", ".join(exact_all))
        for r in rs:
            if not r["exact"]:
                free = max(r["free_pages"]["kernel"], 1)
                parts.append(f"{r['zone'].split('/')[1]} {r['mismatched_pages']:,} pages "
                             f"({100 * r['mismatched_pages'] / free:.2f} %) on other lists")
        out.append(f"kernel check {at} (event {rs[0]['event']:,}): " + "; ".join(parts))
    return out


def answer_lines(result: ReplayResult) -> list[str]:
    """The answer: what was replayed, metadata per stage at the end, the kernel checks."""
    tr = result.inp.trace
    ident = ""
    if len(result.runs) > 1 or result.mode == "policy":
        ident = ("; identical observables at every stage" if result.identical_observables()
                 else "; stages DIFFER in observables")
    out = [f"replay ({result.mode}) of {tr.path}: {len(tr):,} events over "
           f"{tr.duration_ns / 1e9:.1f} s, {len(result.runs)} stage(s){ident}",
           "metadata at the end (struct pages + descriptors): " + ", ".join(
               f"{run.name} {_mib(ser.total_bytes[-1])} MiB"
               for run, ser in zip(result.runs, result.series, strict=True))]
    out += check_summary(result)
    bad = disagreements(result.runs[0])
    out.append(f"disagreements with the trace: {bad:,}" if bad else
               "disagreements with the trace: none")
    return out


def stage_table(result: ReplayResult, width: int):
    """Per-stage results fitted to ``width`` columns (memdesc.report.console)."""
    from memdesc.report.console import Column, fit_table

    zi = _main_zone(result)
    zname = _zone_label(result).split("/")[1]
    cols = [Column("stage", "left"), Column("struct pages MiB", short="pages MiB"),
            Column("descriptors MiB", short="desc MiB"), Column("total MiB"),
            Column("Δ total MiB", short="Δ MiB", priority=2),
            Column("free 2M blocks", short="free 2M"),
            Column("huge/opt % mean", short="huge %", priority=3),
            Column(f"unusable@9 {zname}", short="unus@9", priority=4),
            Column("Mev/s", priority=5), Column("× real", priority=6),
            Column("disagree", priority=1)]
    rows = []
    for run, ser in zip(result.runs, result.series, strict=True):
        sp = speed(result, run)
        tot = ser.total_bytes
        huge = (np.nanmean(ser.free_huge_percent) if np.isfinite(ser.free_huge_percent).any()
                else float("nan"))
        rows.append([run.name, _mib(ser.struct_page_bytes[-1]), _mib(ser.descriptor_bytes[-1]),
                     _mib(tot[-1]), f"{(tot[-1] - tot[0]) / 2**20:+.2f}",
                     f"{int(ser.free_2m_blocks[-1]):,}", f"{huge:.1f}",
                     frag.format_index(int(ser.unusable[-1, zi, 9])),
                     f"{sp['events_per_s'] / 1e6:.1f}", f"{sp['realtime_multiple']:.0f}",
                     f"{disagreements(run):,}"])
    return fit_table(cols, rows, width, title="per stage, at the end of the trace")


def detail_lines(result: ReplayResult) -> list[str]:
    """Everything after the answer and the table: start, types, checks, counters."""
    inp = result.inp
    tr = inp.trace
    out = [f"start: {inp.snapshot.source} (snapshot read times: {inp.gates.style}; "
           f"{inp.ops.stats['before_snapshot']:,} page events already in it)"]
    for r in inp.start.rule:
        out.append(f"  pageblock types {r['zone']}: pagetypeinfo's counts, "
                   + ", ".join(f"{k} {v:,}" for k, v in r["assigned"].items() if v)
                   + f"; free lists {r['free_pages_off_after_repair']:,} pages off "
                   "pagetypeinfo.before")
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
    vm = result.runs[0].start.get("vmstat")
    if vm:
        out.append(f"vmstat (policy): decay_pcp_high {'on' if vm['decay_pcp_high'] else 'off'},"
                   f" {vm['intervals']:,} intervals, {vm['pages_freed_by_decay']:,} pcp pages "
                   "freed by the decay")
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
    return out


def table(result: ReplayResult, width: int | None = None, brief: bool = False) -> str:
    """The report as text: the answer, the per-stage table, then the details (not with
    ``brief``), fitted to ``width`` columns (the terminal's; see memdesc.report.console)."""
    import io

    from memdesc.report.console import make_console, print_lines, terminal_width

    width = width or terminal_width()
    buf = io.StringIO()
    con = make_console(buf, width)
    print_lines(answer_lines(result), con)
    if not brief:
        con.print(stage_table(result, width))
        print_lines(detail_lines(result), con)
    return buf.getvalue().rstrip("\n").replace("\u00a0", " ")


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
        pc = r["pcp_pages"]
        pcp = (f"; pcp pages kernel {pc['kernel']:,} (zoneinfo) emulated {pc['emulated']:,}"
               if pc["kernel"] is not None else "")
        out.append(f"check {r['at']} (event {r['event']:,}) {r['zone']}: by order "
                   f"{'exact' if r['exact_by_order'] else 'DIFFERS'}, {mt}; free pages "
                   f"kernel {fp['kernel']:,} emulated {fp['emulated']:,}{pcp}")
        if r["mismatches"]:
            out.append("    cells (emulated - kernel): " + ", ".join(
                f"{c.get('migratetype', '')[:4]}{'@' if 'migratetype' in c else 'order '}"
                f"{c['order']}\u00a0{c['diff']:+d}" for c in r["mismatches"]))
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


def _groups(result: ReplayResult, series: list[np.ndarray]) -> list[tuple[list[str], int]]:
    """Stages whose series coincide, as (names, index of the first): one line each."""
    out: list[tuple[list[str], int]] = []
    for i, (run, y) in enumerate(zip(result.runs, series, strict=True)):
        for names, j in out:
            if np.array_equal(series[j], y):
                names.append(run.name)
                break
        else:
            out.append(([run.name], i))
    return out


def _label(names: list[str], total: int) -> str:
    if len(names) == total and total > 1:
        return f"all {total} stages (identical)"
    return ", ".join(names) + (" (identical)" if len(names) > 1 else "")


def _integer_axis(ax, y: np.ndarray, min_span: float) -> None:
    """Integer ticks, and a y-range of at least ``min_span`` so a change of one block is
    not drawn as a full-height swing."""
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
    finite = y[np.isfinite(y)] if y.size else y
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        if hi - lo < min_span:
            mid = (hi + lo) / 2
            lo, hi = mid - min_span / 2, mid + min_span / 2
        pad = (hi - lo) * 0.08
        ax.set_ylim(max(lo - pad, 0) if lo >= 0 else lo - pad, hi + pad)


def _phase_marks(result: ReplayResult, t: np.ndarray, t0: float) -> list[tuple[float, str]]:
    """(time s, label) of the workload's trace markers: ``... phase NAME`` -> NAME, workload
    begin/end; the snapshot's own markers are left out."""
    out = []
    for i, text in zip(*marker_positions(result.inp), strict=True):
        words = text.split()
        if not len(t) or "snapshot" in words or "state" in words:
            continue
        if "phase" in words and words.index("phase") + 1 < len(words):
            label = words[words.index("phase") + 1]
        elif "workload" in words:
            label = "workload " + words[-1]
        else:
            label = " ".join(words[1:3]) or text
        out.append(((t[min(int(i), len(t) - 1)] - t0) / 1e9, label[:24]))
    return out


def render_png(result: ReplayResult) -> bytes:
    """Three panels over trace time: metadata bytes per stage, free 2 MiB blocks, and the
    unusable index at pageblock order of the biggest zone (named). Stages whose lines
    coincide are one labelled line; trace markers (workload phases) are dotted verticals
    labelled at the top, lost events red ticks at the bottom; legends sit outside the
    plotting area."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = result.inp.trace
    t = tr.events["time"]
    t0 = float(t[0]) if len(t) else 0.0
    zi = _main_zone(result)
    zname = _zone_label(result)
    run0 = result.runs[0]
    pos = np.clip(run0.samples_pos, 0, max(len(t) - 1, 0))
    x = (t[pos] - t0) / 1e9 if len(t) else np.zeros(len(pos))
    n = len(result.runs)
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), dpi=110, sharex=True)
    panels = [
        ([(s.struct_page_bytes + s.descriptor_bytes) / 2**20 for s in result.series],
         "struct pages + descriptors\n(MiB)", 1.0),
        ([s.free_2m_blocks.astype(float) for s in result.series], "free 2 MiB blocks\n"
         "(all zones)", 10.0),
        ([s.unusable[:, zi, 9] / 1000 for s in result.series],
         f"unusable index, order 9\n(zone {zname})", 0.05),
    ]
    for ax, (ys, ylabel, span) in zip(axes, panels, strict=True):
        for names, j in _groups(result, ys):
            y = ys[j]
            end = f" ({y[-1]:,.0f} MiB at the end)" if ax is axes[0] else ""
            ax.plot(x, y, label=_label(names, n) + end, linewidth=1.6)
        if ax is not axes[2]:
            _integer_axis(ax, np.concatenate(ys), span)
        else:
            lo, hi = float(np.nanmin(ys[0])), float(np.nanmax(ys[0]))
            if hi - lo < span:
                ax.set_ylim(max(0.0, (lo + hi) / 2 - span), min(1.0, (lo + hi) / 2 + span))
        ax.set_ylabel(ylabel, fontsize=9)
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.spines[["top", "right"]].set_visible(False)
    span = float(x[-1] - x[0]) if len(x) > 1 else 1.0
    last_label = -np.inf
    for xm, label in _phase_marks(result, t, t0):
        for ax in axes:
            ax.axvline(xm, color="#999999", linestyle=":", linewidth=0.8)
        if xm - last_label > 0.02 * span:          # no labels drawn over each other
            axes[0].annotate(label, (xm, 1.0), xycoords=("data", "axes fraction"),
                             rotation=45, fontsize=7, ha="left", va="bottom", color="#555555")
            last_label = xm
    lost = list(tr.lost)
    for k, lo in enumerate(lost):
        xl = (lo.time - t0) / 1e9
        axes[2].plot([xl], [0], marker="|", color="red", markersize=14, clip_on=False,
                     label="lost events" if k == 0 else None)
    if lost:
        axes[2].legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[2].set_xlabel("trace time (s)")
    title = f"memdesc replay ({result.mode}) of {tr.path}"
    if lost:
        title += f": {len(lost)} loss report(s) in the trace"
    fig.suptitle(title, fontsize=10, y=0.995)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return figure_png(fig)


def write_plot(result: ReplayResult, dest: str | os.PathLike) -> None:
    write_bytes(dest, render_png(result))
