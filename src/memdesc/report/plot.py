"""Stage costs as stacked bars (memmap plus each descriptor type), written as a PNG."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from memdesc.report.console import NBSP, size_text
from memdesc.report.json_out import write_bytes
from memdesc.report.png import figure_png

if TYPE_CHECKING:
    from memdesc.analysis.survey import SurveyResult

#: Stack order and colours (memmap at the bottom; overhead and slack on top).
PARTS = (
    ("memmap", "#4c72b0"), ("folio", "#dd8452"), ("large_folio", "#e5ae38"),
    ("hugetlb_folio", "#8c613c"), ("ksm", "#da8bc3"), ("ptdesc", "#55a868"),
    ("slab", "#c44e52"), ("slab_overhead", "#8172b3"), ("slack", "#bbbbbb"),
)


def _unit(max_bytes: int) -> tuple[float, str]:
    for div, name in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if max_bytes >= 2 * div:
            return float(div), name
    return 1.0, "B"


#: In-use classes, bottom to top, and their colours (the physical map's palette family).
CLASS_PARTS = (
    ("file", "#4c72b0"), ("anon", "#dd8452"), ("shmem", "#e5ae38"), ("slab", "#c44e52"),
    ("pagetable", "#55a868"), ("hugetlb", "#8c613c"), ("misc", "#999999"),
)


def _stacked(ax, costs, parts, values, div) -> list[float]:
    """Stacked bars of ``values(cost, name)`` for each part; returns the bar tops."""
    x = range(len(costs))
    bottom = [0.0] * len(costs)
    for name, colour in parts:
        vals = [values(c, name) / div for c in costs]
        if not any(vals):
            continue
        label = {"misc": "Misc", "pagetable": "page tables"}.get(name, name.replace("_", " "))
        ax.bar(x, vals, bottom=bottom, color=colour, label=label, width=0.62)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    return bottom


def _label_savings(ax, tops, savings) -> None:
    top = max(tops) or 1.0
    for i, (b, (saving, pct)) in enumerate(zip(tops, savings, strict=True)):
        if saving == 0:
            continue
        label = f"saves\n{pct:.1f} %" if saving > 0 else f"costs more\n{-pct:.1f} %"
        ax.text(i, b + top * 0.015, label, ha="center", va="bottom", fontsize=8,
                color="#1a7f37" if saving > 0 else "#b42318")
    ax.set_ylim(0, top * 1.2)


def render_costs_png(r: SurveyResult) -> bytes:
    """Two panels, one bar per stage: left the cost over memory in use stacked by class,
    right the whole machine stacked by type; each bar labelled with its saving."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    costs = r.costs
    fig, (ax_use, ax_all) = plt.subplots(1, 2, figsize=(13, 5.4), dpi=110)
    ticks = [f"{c.id}\n({c.struct_page_size} B)" for c in costs]
    div, unit = _unit(max(c.in_use.total_bytes for c in costs))
    tops = _stacked(ax_use, costs, CLASS_PARTS, lambda c, n: c.in_use.by_class.get(n, 0), div)
    _label_savings(ax_use, tops, [(c.in_use.saving_bytes, c.in_use.saving_percent)
                                  for c in costs])
    used = size_text(costs[0].in_use.pages * 4096).replace(NBSP, " ")
    ax_use.set_title(f"Memory in use ({used}): struct pages + descriptors, by class",
                     fontsize=10)
    ax_use.set_ylabel(f"metadata ({unit})")

    div, unit = _unit(max(c.total_bytes for c in costs))
    tops = _stacked(ax_all, costs, PARTS, lambda c, n: c.by_type.get(n, 0), div)
    _label_savings(ax_all, tops, [(c.saving_bytes, c.saving_percent) for c in costs])
    ax_all.set_title(f"Whole machine ({r.census.ram_pages * 4096 / 2**30:,.1f} GiB present, "
                     f"{r.census.memmap_pages:,} struct pages), by type", fontsize=10)
    ax_all.set_ylabel(f"metadata ({unit})")
    ax_use.set_xticks(list(range(len(costs))), ticks, fontsize=8)
    ax_all.set_xticks(list(range(len(costs))),
                      [f"{t}\n{c.percent_of_ram:.2f} %" for t, c in zip(ticks, costs,
                                                                          strict=True)],
                      fontsize=8)
    ax_all.set_xlabel("stage (struct page size), metadata as % of RAM", fontsize=8)
    ax_use.set_xlabel("stage (struct page size)", fontsize=8)
    for ax in (ax_use, ax_all):
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(f"Struct page + descriptor cost per stage of the memdesc Path — {r.source}",
                 fontsize=11)
    fig.tight_layout()
    return figure_png(fig)


def plot_costs(r: SurveyResult, dest: str | os.PathLike) -> None:
    """Write the PNG to ``dest`` atomically."""
    data = render_costs_png(r)
    write_bytes(dest, data)
