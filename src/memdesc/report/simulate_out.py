"""Plot of `memdesc simulate` results: exact emulator accounting per stage vs the cost model."""

from __future__ import annotations

from typing import Any

from memdesc.report.png import figure_png


def render_png(doc: dict[str, Any]) -> bytes:
    """Stacked metadata bytes per stage from `memdesc simulate`, with the cost model marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = list(doc["stages"])
    types = sorted({k for s in doc["stages"].values() for k in s["accounting"]["by_type"]},
                   key=lambda k: (k != "memmap", k))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bottom = [0.0] * len(ids)
    for k in types:
        vals = [doc["stages"][i]["accounting"]["by_type"].get(k, 0) / 2**20 for i in ids]
        ax.bar(ids, vals, bottom=bottom, label=k)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    model = [doc["stages"][i]["cost_model"]["total_bytes"] / 2**20 for i in ids]
    ax.plot(ids, model, "k_", markersize=30, label="cost model")
    ax.set_ylabel("MiB")
    ax.set_title(f"{doc['scenario']}: metadata per stage (identical observables: "
                 f"{doc['identical_across_stages']})", fontsize=9)
    ax.legend(fontsize=7)
    fig.set_dpi(110)
    fig.tight_layout()
    return figure_png(fig)
