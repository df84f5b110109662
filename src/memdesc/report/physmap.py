"""A picture of physical memory: one cell per pageblock (or per N PFNs), coloured by the
dominant memdesc class of the cell, rows in PFN order, zone boundaries drawn, with a legend."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import numpy as np

from memdesc.analysis.census import CLASSES, Census
from memdesc.report.json_out import write_bytes
from memdesc.report.png import figure_png
from memdesc.stages import PAGE_SIZE

if TYPE_CHECKING:
    from memdesc.analysis.survey import SurveyResult

COLOURS = {
    "free": "#a6d96a", "file": "#1f78b4", "anon": "#e31a1c", "shmem": "#fb9a99",
    "ksm": "#ff7f00", "slab": "#6a3d9a", "pagetable": "#b15928", "hugetlb": "#cab2d6",
    "zero": "#ffff33", "reserved": "#111111", "offline": "#80cdc1", "untyped": "#fdbf6f",
    "uninitialised": "#dddddd", "hole": "#8c8c8c",
}


def grid_width(ncells: int) -> int:
    """Cells per row: a power of two, about as many columns as rows (up to twice as many)."""
    return max(16, 1 << math.floor(math.log2(math.sqrt(2 * max(1, ncells)))))


def _rgb(hexcolour: str) -> tuple[int, int, int]:
    return tuple(int(hexcolour[i:i + 2], 16) for i in (1, 3, 5))


def _addr(pfn: int) -> str:
    b = pfn * PAGE_SIZE
    return f"{b / 2**30:g} GiB" if b >= 2**30 else f"{b / 2**20:g} MiB"


def map_image(census: Census) -> tuple[np.ndarray, int]:
    """RGB image (rows, width, 3) of the cell map and the width in cells."""
    cells = census.cells
    width = grid_width(len(cells))
    rows = -(-len(cells) // width)
    palette = np.array([_rgb(COLOURS[c]) for c in CLASSES] + [(255, 255, 255)], np.uint8)
    idx = np.full(rows * width, len(CLASSES), np.uint8)     # past the last PFN: white
    idx[:len(cells)] = cells
    return palette[idx.reshape(rows, width)], width


def render_map_png(r: SurveyResult) -> bytes:
    """The physical memory map of the survey's census as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    c = r.census
    img, width = map_image(c)
    rows = img.shape[0]
    px = max(2, min(8, 1000 // width))                      # pixels per cell
    dpi = 100
    left, right, top, bottom = 80, 210, 40, 40               # margins in pixels
    w_px = left + width * px + right
    h_px = max(top + rows * px + bottom, 360)
    fig = plt.figure(figsize=(w_px / dpi, h_px / dpi), dpi=dpi)
    ax = fig.add_axes([left / w_px, 1 - (top + rows * px) / h_px, width * px / w_px,
                       rows * px / h_px])
    ax.imshow(img, interpolation="nearest", aspect="auto", extent=(0, width, rows, 0))
    cell = c.cell_pfns
    row_pfns = width * cell
    # Zone boundaries: the staircase between the last cell before a zone and its first cell.
    placed: list[tuple[int, int]] = []                        # (row, col) of labels
    for z in c.zones:
        for pfn, label in ((z.start_pfn, f"{z.node}/{z.name}"), (z.end_pfn, None)):
            k = pfn // cell
            rr, col = divmod(k, width)
            if rr > rows:
                continue
            xs = [0, col, col, width] if col else [0, width]
            ys = [rr + 1, rr + 1, rr, rr] if col else [rr, rr]
            ax.plot(xs, ys, color="black", lw=1.3, solid_joinstyle="miter")
            if label:
                # Labels are ~12 px tall and ~70 px wide: keep them from overlapping.
                tall, wide = 12 / px, 70 / px
                y = rr + 0.5
                while any(abs(y - py) < tall and abs(col - pc) < wide for py, pc in placed):
                    y += tall
                placed.append((y, col))
                ax.text(min(col + 0.5, width - 1), y, f" {label} ", fontsize=7,
                        va="center", ha="left" if col < width * 0.8 else "right",
                        bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "black",
                              "lw": 0.5, "alpha": 0.85})
    step = max(1, rows // 16)
    ticks = list(range(0, rows, step))
    ax.set_yticks([t + 0.5 for t in ticks], [_addr(t * row_pfns) for t in ticks], fontsize=7)
    xt = list(range(0, width + 1, max(1, width // 8)))
    ax.set_xticks(xt, [f"+{_addr(x * cell) if x else '0'}" for x in xt], fontsize=7)
    ax.set_xlim(0, width)
    ax.set_ylim(rows, 0)
    ax.set_title(f"Physical memory of {r.source}: dominant class per cell of {cell} PFNs "
                 f"({_addr(cell)}), {_addr(row_pfns)} per row", fontsize=9, loc="left")
    total = max(1, c.pfns)
    handles = [Patch(facecolor=COLOURS[k], edgecolor="black", lw=0.4,
                     label=f"{k} {100 * c.pages_by_class[k] / total:.2f} %")
               for k in CLASSES if c.pages_by_class[k]]
    fig.legend(handles=handles, loc="upper right", fontsize=8, frameon=False,
               title="class (% of PFNs)", title_fontsize=8)
    return figure_png(fig)


def plot_map(r: SurveyResult, dest: str | os.PathLike) -> None:
    """Write the PNG to ``dest`` atomically."""
    data = render_map_png(r)
    write_bytes(dest, data)
