"""The `memdesc timing --plot` figure: per operation class, one bar per stage, for the
dependent-load chain, the metadata lines touched, the modelled last-level misses and (when
measured) the native ns, each per operation."""

from __future__ import annotations

from typing import Any

from memdesc.report.png import figure_png


def _panels(doc: dict[str, Any]) -> list[tuple[str, Any]]:
    llc = doc["caches"]["levels"][-1]["name"]
    out = [("dependent-load chain (mean)", lambda r: r["dependent_loads"]),
           ("64-byte lines touched / op", lambda r: r["lines"] / r["count"]),
           (f"{llc} misses / op (modelled)", lambda r: r["misses"][llc] / r["count"])]
    if doc["native"] is not None:
        out.append(("native ns / op", lambda r: r["native_ns"] or 0.0))
    return out


def plot_figure(doc: dict[str, Any]):
    """A matplotlib Figure: one panel per quantity, operation classes down the y axis,
    one coloured bar per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = doc["stages"]
    ops = list(dict.fromkeys(r["op"] for s in stages for r in s["ops"]))
    panels = _panels(doc)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels) + 1.6,
                                                      1.2 + 0.42 * max(3, len(ops))),
                             dpi=110, sharey=True, squeeze=False)
    h = 0.8 / max(1, len(stages))
    colours = plt.get_cmap("viridis")
    for ax, (title, value) in zip(axes[0], panels, strict=True):
        for k, s in enumerate(stages):
            rows = {r["op"]: r for r in s["ops"]}
            y = [i + (k - (len(stages) - 1) / 2) * h for i in range(len(ops))]
            v = [value(rows[op]) if op in rows else 0.0 for op in ops]
            ax.barh(y, v, height=h, color=colours(0.85 * k / max(1, len(stages) - 1)),
                    label=f"{s['id']} ({s['struct_page_bytes']} B)")
        if not title.startswith("dependent"):        # per-op values span 0.01 .. 1000s
            ax.set_xscale("symlog", linthresh=1.0)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(ops)), ops)
    axes[0][0].invert_yaxis()
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8,
                       frameon=False, title="stage", title_fontsize=8)
    src = doc["source"]
    name = src.get("name") or src["path"]
    fig.suptitle(f"memdesc timing: {name} -- per kernel operation, each stage "
                 f"(caches {doc['caches']['spec']})", fontsize=10)
    fig.tight_layout()
    return fig


def render_png(doc: dict[str, Any]) -> bytes:
    return figure_png(plot_figure(doc))
