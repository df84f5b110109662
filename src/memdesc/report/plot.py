"""Stage costs as stacked bars (memmap plus each descriptor type), written as a PNG."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

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


def render_costs_png(r: SurveyResult) -> bytes:
    """One stacked bar per stage, labelled with % of RAM and saving, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    costs = r.costs
    div, unit = _unit(max(c.total_bytes for c in costs))
    fig, ax = plt.subplots(figsize=(9, 5.2), dpi=120)
    x = range(len(costs))
    bottom = [0.0] * len(costs)
    for name, colour in PARTS:
        vals = [c.by_type.get(name, 0) / div for c in costs]
        if not any(vals):
            continue
        ax.bar(x, vals, bottom=bottom, color=colour, label=name.replace("_", " "), width=0.62)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    top = max(bottom)
    for i, c in enumerate(costs):
        label = f"{c.percent_of_ram:.3f} % of RAM"
        if c.saving_bytes > 0:
            label += f"\nsaves {c.saving_percent:.1f} %"
        elif c.saving_bytes < 0:
            label += f"\ncosts {-c.saving_percent:.1f} % more"
        ax.text(i, bottom[i] + top * 0.015, label, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), [f"{c.id}\n({c.struct_page_size} B page)" for c in costs])
    ax.set_ylabel(f"metadata ({unit})")
    ax.set_ylim(0, top * 1.18)
    c = r.census
    ax.set_title(f"Struct page + descriptor cost per stage of the memdesc Path\n"
                 f"{r.source} — {c.ram_pages * 4096 / 2**30:,.1f} GiB present, "
                 f"{c.memmap_pages:,} struct pages", fontsize=10)
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return figure_png(fig)


def plot_costs(r: SurveyResult, dest: str | os.PathLike) -> None:
    """Write the PNG to ``dest`` atomically."""
    data = render_costs_png(r)
    write_bytes(dest, data)
