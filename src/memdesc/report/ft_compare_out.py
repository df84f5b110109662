"""The free-page tracking comparison (memdesc.analysis.ft_compare) as text and as a plot."""

from __future__ import annotations

import os

import numpy as np

from memdesc.analysis.ft_compare import UNUSABLE_ORDER, FtComparison, OptionResult
from memdesc.report.json_out import write_bytes
from memdesc.report.png import figure_png


def _walk(r: OptionResult) -> tuple[str, str]:
    """(longest walk, total steps) cells; '-' for options that never walk."""
    if r.walks is None:
        return "-", "-"
    return f"{r.walks.longest:,}", f"{r.walks.steps:,}"


def _same(r: OptionResult, cmp: FtComparison) -> str:
    if r.name == cmp.reference:
        return "reference"
    if r.identical:
        return "identical"
    if r.first_difference is None:
        return "other PFNs"
    return f"DIFFER @{r.first_difference:,}"


def _difference(r: OptionResult) -> str:
    """What differs, in words."""
    if r.first_difference is None:
        return ("other PFNs handed out; free blocks per zone and order, pcp counts and the "
                "unit census equal at every sample")
    return (f"free lists / pcp / census differ from event {r.first_difference:,} on"
            + ("" if r.same_pfns else "; other PFNs handed out"))


def answer_lines(cmp: FtComparison) -> list[str]:
    """The answer: which options ran, which observables differ and by how much."""
    ref = next(r for r in cmp.rows if r.name == cmp.reference)
    out = [f"free-page tracking options of {cmp.stage} side by side ({cmp.mode} replay of "
           f"{cmp.trace}, {cmp.ops:,} page operations), compared with {cmp.reference}:"]
    same = [r.option for r in cmp.rows if r.identical and r is not ref]
    if same:
        out.append(f"identical observables: {', '.join(same)}")
    for r in cmp.rows:
        if not r.identical:
            why = ("keeps list order, yet DIFFERS (a bug)" if r.keeps_list_order
                   else "chooses blocks by address, not list order")
            out.append(f"{r.option}: {why}: {_difference(r)}; at the end free 2M blocks "
                       f"{r.free_2m_blocks:,} "
                       f"({r.free_2m_blocks - ref.free_2m_blocks:+,}), unusable@"
                       f"{UNUSABLE_ORDER} {r.unusable:.3f} ({r.unusable - ref.unusable:+.3f})")
    for r in cmp.rows:
        if r.walks is not None:
            what = "removals" if r.keeps_list_order else "searches for a block"
            w = r.walks
            out.append(f"{r.option}: {w.ops:,} {what} counted, {w.walks:,} walked; "
                       f"longest {w.longest:,} steps, {w.steps:,} in all")
    return out


def option_table(cmp: FtComparison, width: int):
    """One row per option: side bytes, speed, walks, fragmentation, observables."""
    from memdesc.report.console import Column, fit_table

    cols = [Column("option", "left"), Column("side bytes", short="side B"),
            Column("total MiB", short="MiB", priority=3),
            Column("M ops/s (best loop)", short="Mops/s", priority=2),
            Column("longest walk", short="walk"), Column("walk steps", short="steps",
                                                         priority=4),
            Column("free 2M blocks", short="free 2M"),
            Column(f"unusable@{UNUSABLE_ORDER} {cmp.zone}", short=f"unus@{UNUSABLE_ORDER}"),
            Column("observables", "left", priority=1)]
    rows = [[r.name, f"{r.side_bytes:,}", f"{r.total_bytes / 2**20:,.1f}",
             f"{r.ops_per_s / 1e6:.2f}", *_walk(r), f"{r.free_2m_blocks:,}",
             f"{r.unusable:.3f}", _same(r, cmp)] for r in cmp.rows]
    return fit_table(cols, rows, width, title="at the end of the trace")


def order_table(cmp: FtComparison, width: int):
    """Free blocks per order (all zones) at the end, one row per option."""
    from memdesc.report.console import Column, fit_table

    n = len(cmp.rows[0].free_blocks)
    cols = [Column("option", "left")] + [Column(f"o{k}", priority=0 if k in (0, 9) else
                                                n - k) for k in range(n)]
    rows = [[r.option, *(f"{int(v):,}" for v in r.free_blocks)] for r in cmp.rows]
    return fit_table(cols, rows, width, title="free blocks per order at the end (all zones)")


def table(cmp: FtComparison, width: int | None = None, brief: bool = False) -> str:
    """The comparison as text fitted to ``width`` columns (the answer alone with ``brief``)."""
    from memdesc.report.console import render_text, terminal_width

    width = width or terminal_width()
    tables = [] if brief else [option_table(cmp, width), order_table(cmp, width)]
    return render_text(answer_lines(cmp), tables, width)


def _bar_label(v: float) -> str:
    return "0" if v == 0 else f"{v:,.0f}" if v >= 10 else f"{v:,.3g}"


def render_png(cmp: FtComparison) -> bytes:
    """Five bar panels, one bar per option: side memory, replay speed (each option's loop,
    set-up excluded, best of two: ft_compare.loop_seconds()), the longest walk, the steps per
    counted operation and the unusable free space index at the end (the reference option's
    level dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.option for r in cmp.rows]
    ref = next(i for i, r in enumerate(cmp.rows) if r.name == cmp.reference)
    colors = ["#4c72b0" if r.identical else "#dd8452" for r in cmp.rows]
    panels = [([r.side_bytes / 2**10 for r in cmp.rows], "side memory (KiB)"),
              ([r.ops_per_s / 1e6 for r in cmp.rows],
               "replay speed, best of 2 loops\n(M page ops/s, wall clock)"),
              ([r.walks.longest if r.walks else 0 for r in cmp.rows], "longest walk (steps)"),
              ([r.walks.steps / max(r.walks.ops, 1) if r.walks else 0 for r in cmp.rows],
               "walk steps per counted operation"),
              ([r.unusable for r in cmp.rows],
               f"unusable index @{UNUSABLE_ORDER} at the end\n({cmp.zone})")]
    fig, axes = plt.subplots(1, len(panels), figsize=(14, 3.8), dpi=110)
    for ax, (ys, label) in zip(axes, panels, strict=True):
        bars = ax.bar(names, ys, color=colors)
        ax.bar_label(bars, labels=[_bar_label(v) for v in ys], fontsize=7)
        ax.axhline(ys[ref], color="#555555", linestyle="--", linewidth=0.8)
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelsize=8, rotation=30)
        ax.spines[["top", "right"]].set_visible(False)
        ax.set_ylim(0, max(1.0, float(np.max(ys)) * 1.18))
    fig.suptitle(f"free-page tracking options of {cmp.stage}: {cmp.mode} replay of "
                 f"{cmp.trace} (orange: observables differ from {cmp.reference})", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return figure_png(fig)


def write_plot(cmp: FtComparison, dest: str | os.PathLike) -> None:
    write_bytes(dest, render_png(cmp))
