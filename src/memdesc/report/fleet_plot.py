"""The fleet survey's picture: one PNG, three panels.

1. CDF across machines of the page16 and page8 savings vs v6.18, over memory in use (solid)
   and over the whole machine (dashed).
2. The fleet's metadata at each stage, stacked by class (the survey's ``in_use.by_class``) or,
   when the survey does not split by class, by descriptor type (``by_type``).
3. The folio-order distribution: the fleet's folio pages by order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from memdesc.report.fleet_out import HEADLINE
from memdesc.report.plot import PARTS, _unit
from memdesc.report.png import figure_png

#: Colours of the headline stages in the CDF.
STAGE_COLOURS = {"page16": "#4c72b0", "page8": "#c44e52"}
#: Colours for classes (stacked bars by class).
CLASS_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3",
                 "#8c8c8c", "#ccb974", "#64b5cd", "#e5ae38", "#bbbbbb", "#2f4b7c", "#a05195")


def _savings(machines: list[dict], sid: str, in_use: bool) -> np.ndarray:
    out = []
    for m in machines:
        s = next((s for s in m["stages"] if s["id"] == sid), None)
        if s is not None:
            out.append(s["in_use"]["saving_percent"] if in_use else s["saving_percent"])
    return np.sort(np.asarray(out, dtype=float))


def _cdf(ax, machines: list[dict]) -> None:
    n = len(machines)
    for sid in HEADLINE:
        for in_use, style in ((True, "-"), (False, "--")):
            x = _savings(machines, sid, in_use)
            if not len(x):
                continue
            y = np.arange(1, len(x) + 1) / len(x)
            ax.step(np.r_[x[0], x], np.r_[0.0, y], where="post", ls=style, lw=1.8,
                    color=STAGE_COLOURS[sid],
                    label=f"{sid}, {'memory in use' if in_use else 'whole machine'}")
    ax.axvline(0, color="#888888", lw=0.8)
    ax.set_xlabel("saving vs v6.18 (% of that machine's metadata)")
    ax.set_ylabel("fraction of machines")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Savings across {n:,} machine{'s' * (n != 1)} (CDF)", fontsize=10)
    ax.legend(fontsize=7.5, frameon=False, loc="upper left")
    ax.grid(alpha=0.3)


def _stacks(fleet: dict) -> tuple[str, bool, list[tuple[str, str, list[float]]]]:
    """(what the stack splits by, whether it is memory in use, [(name, colour, bytes per
    stage)]): by class over memory in use (the survey's ``in_use.by_class``), else by
    descriptor type over whole machines."""
    stages = fleet["stages"]
    keys: list[str] = []
    for s in stages:
        keys += [k for k in s["in_use"].get("by_class", {}) if k not in keys]
    if keys:
        return "class, memory in use", True, [
            (k, CLASS_COLOURS[i % len(CLASS_COLOURS)],
             [s["in_use"]["by_class"].get(k, 0) for s in stages]) for i, k in enumerate(keys)]
    return "descriptor type, whole machines", False, [
        (name.replace("_", " "), colour, [s["by_type"].get(name, 0) for s in stages])
        for name, colour in PARTS if any(s["by_type"].get(name, 0) for s in stages)]


def _stacked(ax, fleet: dict) -> None:
    stages = fleet["stages"]
    what, in_use, parts = _stacks(fleet)
    top = max((sum(p[2][i] for p in parts) for i in range(len(stages))), default=0)
    div, unit = _unit(int(top))
    x = np.arange(len(stages))
    bottom = np.zeros(len(stages))
    for name, colour, vals in parts:
        v = np.asarray(vals, dtype=float) / div
        if not v.any():
            continue
        ax.bar(x, v, bottom=bottom, color=colour, label=name, width=0.62)
        bottom += v
    for i, s in enumerate(stages):
        saving = (s["in_use"] if in_use else s)["saving_percent"]
        ax.text(i, bottom[i] * 1.01 + 1e-9, f"{saving:+.0f} %", ha="center", va="bottom",
                fontsize=7.5)
    ax.set_xticks(x, [s["id"] for s in stages], fontsize=8)
    ax.set_ylabel(f"fleet metadata ({unit})")
    ax.set_ylim(0, max(bottom.max(), 1e-9) * 1.15)
    ax.set_title(f"Fleet metadata per stage, by {what}\n(label: the fleet's saving vs "
                 "v6.18)", fontsize=10)
    ax.legend(fontsize=7, frameon=False, loc="upper right", ncol=2)


def _orders(ax, fleet: dict) -> None:
    pages = np.asarray(fleet["folio_orders"]["pages_by_order"], dtype=float)
    units = np.asarray(fleet["folio_orders"]["units_by_order"], dtype=float)
    last = int(np.nonzero(pages)[0].max()) + 1 if pages.any() else 1
    x = np.arange(last)
    share = 100 * pages[:last] / max(1.0, pages.sum())
    ax.bar(x, share, color="#55a868", width=0.7, label="% of folio pages")
    ushare = 100 * units[:last] / max(1.0, units.sum())
    ax.plot(x, ushare, "o-", color="#333333", ms=3, lw=1, label="% of folios")
    ax.set_xticks(x)
    ax.set_xlabel("folio order (2^order pages)")
    ax.set_ylabel("% (fleet)")
    ax.set_title("Folio-order distribution (fleet sum)", fontsize=10)
    ax.legend(fontsize=7.5, frameon=False)
    ax.grid(axis="y", alpha=0.3)


def render_fleet_png(d: dict[str, Any]) -> bytes:
    """The three panels as PNG bytes (rendered fully before anything is written)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fleet = d["fleet"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2), dpi=110)
    _cdf(axes[0], d["machines"])
    _stacked(axes[1], fleet)
    _orders(axes[2], fleet)
    fig.suptitle(f"memdesc fleet survey: {fleet['machines']:,} snapshots of "
                 f"{fleet['hosts']:,} hosts, {fleet['failed']:,} failed", fontsize=11)
    fig.tight_layout()
    return figure_png(fig)
