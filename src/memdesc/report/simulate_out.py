"""Output of `memdesc simulate`: the answer first, a table fitted to the terminal, the
divergences in words, and the plot (exact emulator accounting per stage vs the cost model)."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from memdesc.report.answer_tables import print_answer_then_tables
from memdesc.report.console import (
    NBSP,
    Column,
    fit_table,
    percent_text,
    qty,
    size_text,
)
from memdesc.report.png import figure_png

#: The divergence kinds, in words (memdesc.analysis.scenario.DIVERGENCE_KINDS has the rule).
KIND_WORDS = {
    "injected": "injected fault",
    "atomic": "atomic: the plan's price",
    "reclaim": "would reclaim",
    "earlier": "after an earlier one",
}


def _stages(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return list(doc["stages"].items())


def _ram(doc: dict[str, Any]) -> int:
    return _stages(doc)[0][1]["census"]["ram_pages"] * 4096


def _change(doc: dict[str, Any], s: dict[str, Any]) -> str:
    """The stage's metadata against the reference's, in percent (``+8.3 %``, ``±0 %``)."""
    ref = doc["stages"][doc["reference"]]["accounting"]["total_bytes"]
    delta = s["accounting"]["total_bytes"] - ref
    return qty("±0", "%") if delta == 0 else percent_text(100.0 * delta / max(1, ref))


def _kinds(counts: dict[str, int], stages: int) -> str:
    """``"2 injected, 1 earlier"`` (``each`` for several stages); atomic divergences alone
    are the plan's price, and the clause says so."""
    text = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    text += " each" if stages > 1 else ""
    return text + (": the plan's price" if set(k for k, n in counts.items() if n)
                   == {"atomic"} else "")


def answer_lines(doc: dict[str, Any]) -> list[str]:
    """The few lines the command opens with (all that ``--brief`` prints)."""
    stages = _stages(doc)
    ref = doc["reference"]
    nsteps = len(stages[0][1]["steps"])
    lines = [f"{doc['scenario']}: machine {doc['machine']}, {size_text(_ram(doc))} RAM, "
             f"{doc['cpus']} CPUs, seed {doc['seed']}; {nsteps} steps × {len(stages)} "
             f"stage(s)"]
    if doc["identical_across_stages"]:
        lines.append(f"observables: identical at every stage (results and data read back "
                     f"= {ref}'s)")
    else:
        groups: dict[tuple, list[str]] = {}         # same divergence counts: one clause
        for sid, s in stages:
            if s["divergences"]:
                key = tuple(sorted(doc["divergence_counts"][sid].items()))
                groups.setdefault(key, []).append(sid)
        differ = "; ".join(f"{', '.join(ids)} ({_kinds(dict(key), len(ids))})"
                           for key, ids in groups.items())
        lines.append(f"observables: differ from {ref} at {differ}; see \"divergences\" "
                     f"below")
    parts = []
    for sid, s in stages:
        delta = "" if sid == ref else f" ({_change(doc, s)})"
        parts.append(f"{sid} {size_text(s['accounting']['total_bytes'])}{delta}"
                     .replace(" ", NBSP))
    lines.append("metadata (struct pages + descriptors): " + f"{NBSP}· ".join(parts))
    return lines


COLUMNS = (
    Column("stage", "left"),
    Column("struct page", short="page", priority=3),
    Column("mem_map", priority=4),
    Column("descriptors", short="desc", priority=2),
    Column("total"),
    Column("% of RAM", short="% RAM", priority=5),
    Column("vs v6.18"),
    Column("cost model", short="model", priority=6),
    Column("model − exact", short="model−exact", priority=7),
    Column("largest descriptor types", "left", short="largest types", priority=8, wrap=True),
    Column("observables", "left", short="obs."),
)


def table_rows(doc: dict[str, Any]) -> list[list[str]]:
    rows = []
    for sid, s in _stages(doc):
        a = s["accounting"]
        desc = sorted(((k, v) for k, v in a["by_type"].items() if k != "memmap" and v),
                      key=lambda kv: -kv[1])[:3]
        d = doc["divergence_counts"][sid]
        obs = "equal" if not s["divergences"] else f"{sum(d.values())} differ"
        rows.append([sid, qty(str(s["struct_page_bytes_each"]), "B"),
                     size_text(a["struct_page_bytes"]), size_text(a["descriptor_bytes"]),
                     size_text(a["total_bytes"]), percent_text(a["percent_of_ram"], False, 3),
                     _change(doc, s) if sid != doc["reference"] else "—",
                     size_text(s["cost_model"]["total_bytes"]),
                     size_text(s["cost_model_minus_exact_bytes"], signed=True),
                     ", ".join(f"{k} {size_text(v)}" for k, v in desc) or "none", obs])
    return rows


def _value(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)


def result_change(ref: dict[str, Any], this: dict[str, Any]) -> str:
    """``"ok 5,000 → 4,998, failed 0 → 2"``: only what differs."""
    keys = list(ref) + [k for k in this if k not in ref]
    parts = [f"{k} {_value(ref.get(k, '—'))} → {_value(this.get(k, '—'))}"
             for k in keys if ref.get(k) != this.get(k)]
    return ", ".join(parts) or "same result; the data read back differ"


def divergence_lines(doc: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for sid, s in _stages(doc):
        for dv in s["divergences"]:
            lines.append(f"  {sid} line {dv['line']} `{dv['step']}` "
                         f"[{KIND_WORDS.get(dv['kind'], dv['kind'])}]: "
                         f"{result_change(dv['reference'], dv['this_stage'])}")
        st = s["stats"]
        if st["faults_injected"] or st["descriptor_unwinds"]:
            lines.append(f"  {sid}: {st['faults_injected']:,} faults injected, "
                         f"{st['descriptor_unwinds']:,} descriptor allocations undone because "
                         f"the pages failed")
    if lines:
        lines.insert(0, f"divergences from {doc['reference']} (step, [why], reference → this "
                        f"stage):")
    return lines


def render(doc: dict[str, Any], console: Console | None = None, brief: bool = False) -> None:
    """Print the answer, then (unless ``brief``) the fitted table and the divergences."""
    print_answer_then_tables(
        answer_lines(doc),
        lambda width: [fit_table(COLUMNS, table_rows(doc), width,
                                 title="Metadata per stage after the last step (model: the "
                                       "survey's cost model)")],
        lambda: divergence_lines(doc), console, brief)


# ---- plot -----------------------------------------------------------------------------------

def render_png(doc: dict[str, Any]) -> bytes:
    """The PNG of :func:`plot_figure`."""
    return figure_png(plot_figure(doc))


def plot_figure(doc: dict[str, Any]):
    """One bar per stage, stacked by metadata type (types that are zero at every stage are
    left out), the survey's cost model marked on each bar, each bar labelled with its saving
    against the reference, the legend beside the axes; a matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from memdesc.report.plot import PARTS, _label_savings, _unit

    ids = list(doc["stages"])
    st = [doc["stages"][i] for i in ids]
    names = sorted({k for s in st for k, v in s["accounting"]["by_type"].items() if v},
                   key=lambda k: (k != "memmap", k))
    colours = dict(PARTS)
    spare = iter(plt.get_cmap("tab20").colors)
    div, unit = _unit(max(max(s["accounting"]["total_bytes"], s["cost_model"]["total_bytes"])
                          for s in st))
    fig, ax = plt.subplots(figsize=(9.5, 5.0), dpi=110)
    x = list(range(len(ids)))
    bottom = [0.0] * len(ids)
    for k in names:
        vals = [s["accounting"]["by_type"].get(k, 0) / div for s in st]
        ax.bar(x, vals, bottom=bottom, width=0.62, label=k.replace("_", " "),
               color=colours.get(k) or next(spare))
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    model = [s["cost_model"]["total_bytes"] / div for s in st]
    ax.hlines(model, [i - 0.36 for i in x], [i + 0.36 for i in x], colors="black",
              linestyles="dashed", linewidth=1.2, label="survey cost model")
    _label_savings(ax, [max(b, m) for b, m in zip(bottom, model, strict=True)],
                   [(s["saving_bytes"], s["saving_percent"]) for s in st])
    ax.set_xticks(x, [f"{i}\n({s['struct_page_bytes_each']} B)\n"
                      f"{s['accounting']['percent_of_ram']:.2f} %" for i, s in zip(ids, st,
                                                                              strict=True)],
                  fontsize=8)
    ax.set_xlabel("stage (struct page size), metadata as % of RAM", fontsize=8)
    ax.set_ylabel(f"struct pages + descriptors ({unit})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    obs = "observables identical at every stage" if doc["identical_across_stages"] else \
        "observables differ: see the divergences"
    ax.set_title(f"{doc['scenario']} (machine {doc['machine']}): metadata after the last "
                 f"step\n{obs}", fontsize=10)
    fig.tight_layout()
    return fig
