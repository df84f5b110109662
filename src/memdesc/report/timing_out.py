"""Output of `memdesc timing`: the answer first, then one table per operation class (a row per
stage), the whole-workload totals, and the JSON (docs/timing.md) written atomically.

Reads only the document of memdesc.analysis.timing.timing_doc().
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

from memdesc.report.answer_tables import print_answer_then_tables
from memdesc.report.console import (
    Column,
    fit_table,
    percent_text,
)

#: the operation the answer names first when the workload has it (issue 9's example)
HEADLINE_OPS = ("page_zone", "page_folio", "page_to_nid", "folio_alloc")


def _ref(doc: dict[str, Any]) -> dict[str, Any]:
    ids = [s["id"] for s in doc["stages"]]
    return doc["stages"][ids.index(doc["reference"]) if doc["reference"] in ids else 0]


def _ops(stage: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["op"]: r for r in stage["ops"]}


def _pct(new: float, old: float) -> str:
    if old == 0:
        return "—" if new == 0 else "new"
    return percent_text(100.0 * (new - old) / old)


def _llc(doc: dict[str, Any]) -> str:
    return doc["caches"]["levels"][-1]["name"]


def headline_op(ref: dict[str, Any], stage: dict[str, Any]) -> str | None:
    """The operation whose dependent-load chain the answer quotes: the first of
    HEADLINE_OPS both stages ran, else the one whose mean chain changed most."""
    a, b = _ops(ref), _ops(stage)
    both = [op for op in a if op in b]
    for op in HEADLINE_OPS:
        if op in both:
            return op
    if not both:
        return None
    return max(both, key=lambda op: abs(b[op]["dependent_loads"] - a[op]["dependent_loads"]))


def stage_answer(doc: dict[str, Any], stage: dict[str, Any]) -> str:
    """``page16: +1 dependent load per page_zone() (1 -> 2); whole workload: +3.1 % metadata
    lines touched, -20.4 % L3 misses; native: x1.08 ns``."""
    ref = _ref(doc)
    parts = []
    op = headline_op(ref, stage)
    if op:
        a, b = _ops(ref)[op]["dependent_loads"], _ops(stage)[op]["dependent_loads"]
        d = b - a
        word = "load" if abs(d) == 1 else "loads"
        call = f"{op}()" if op.isidentifier() else f"{op} ({_ops(ref)[op]['kernel']})"
        parts.append(f"{d:+.3g} dependent {word} per {call} ({a:.3g} -> {b:.3g})" if d or
                     op in HEADLINE_OPS else "dependent-load chains unchanged")
    t, rt = stage["totals"], ref["totals"]
    llc = _llc(doc)
    parts.append(f"whole workload: {_pct(t['lines'], rt['lines'])} metadata lines touched, "
                 f"{_pct(t['misses'][llc], rt['misses'][llc])} {llc} misses")
    if t["native_ns"] is not None and rt["native_ns"]:
        parts.append(f"native: x{t['native_ns'] / rt['native_ns']:.2f} ns")
    return f"{stage['id']}: " + "; ".join(parts)


def answer_lines(doc: dict[str, Any]) -> list[str]:
    """The lines the command opens with (all that ``--brief`` prints)."""
    src = doc["source"]
    what = (f"scenario {src['name']} (machine {src['machine']})" if src["kind"] == "scenario"
            else f"trace {src['path']} ({src['events']:,} events, {src['mode']} replay)")
    ref = _ref(doc)
    lines = [f"timing of {what}: metadata accesses per kernel operation against "
             f"{ref['id']}; caches {doc['caches']['spec']} ({doc['caches']['source']})"]
    lines += [stage_answer(doc, s) for s in doc["stages"] if s is not ref]
    if len(doc["stages"]) == 1:
        lines.append(f"{ref['id']}: {ref['totals']['count']:,} operations, "
                     f"{ref['totals']['lines']:,} metadata lines touched")
    empty = [s["id"] for s in doc["stages"] if not s["ops"]]
    if empty:
        lines.append(f"  ! no operation was counted at {', '.join(empty)}"
                     + (" (placement mode drives the free lists with the trace's PFNs, not "
                        "through counted kernel operations: use --mode policy)"
                        if src.get("mode") == "placement" else ""))
    dropped = [s["id"] for s in doc["stages"] if s["log_dropped"]]
    if dropped:
        lines.append(f"  ! the access log overflowed at {', '.join(dropped)}: the cache model "
                     "there saw fewer accesses than the counters count")
    if doc["native"] is None:
        lines.append("native ns: not measured")
    return lines


def _mean(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def _columns(doc: dict[str, Any], first: Column) -> list[Column]:
    cols = [first, Column("operations", short="ops"),
            Column("loads/op", short="loads"), Column("stores/op", short="stor", priority=3),
            Column("lines/op", short="lines"), Column("dep. chain", short="chain")]
    cols += [Column(f"{lv['name']} miss/op", short=lv["name"], priority=2 if i == 0 else 0)
             for i, lv in enumerate(doc["caches"]["levels"])]
    if doc["native"] is not None:
        cols += [Column("ns/op", short="ns"), Column(f"× {doc['reference']}", short="×ref",
                                                     priority=1)]
    return cols


def _cells(doc: dict[str, Any], r: dict[str, Any]) -> list[str]:
    n = max(1, r["count"])
    cells = [f"{r['count']:,}", _mean(r["loads"] / n), _mean(r["stores"] / n),
             _mean(r["lines"] / n), _mean(r["dependent_loads"])]
    cells += [_mean(r["misses"][lv["name"]] / n) for lv in doc["caches"]["levels"]]
    if doc["native"] is not None:
        ratio = r.get("native_ratio")
        cells += [_mean(r.get("native_ns")), "—" if ratio is None else f"{ratio:.2f}"]
    return cells


def op_tables(doc: dict[str, Any], width: int) -> list:
    """One table per operation class that ran, a row per stage (values per operation)."""
    names = list(dict.fromkeys(r["op"] for s in doc["stages"] for r in s["ops"]))
    cols = _columns(doc, Column("stage", "left"))
    out = []
    for op in names:
        rows, kernel = [], ""
        for s in doc["stages"]:
            r = _ops(s).get(op)
            if r is not None:
                kernel = r["kernel"]
                rows.append([s["id"], *_cells(doc, r)])
        out.append(fit_table(cols, rows, width, title=f"{op}: {kernel}, per operation"))
    return out


def totals_table(doc: dict[str, Any], width: int):
    """The whole workload per stage: totals (not per operation) and the change to v6.18."""
    ref = _ref(doc)["totals"]
    llc = _llc(doc)
    cols = [Column("stage", "left"), Column("operations", short="ops"),
            Column("loads", priority=4), Column("stores", priority=5), Column("lines"),
            Column(f"Δ lines vs {doc['reference']}", short="Δ lines")]
    cols += [Column(f"{lv['name']} misses", short=lv["name"], priority=3)
             for lv in doc["caches"]["levels"][:-1]]
    cols += [Column(f"{llc} misses", short=llc), Column(f"Δ {llc}", short="Δ")]
    if doc["native"] is not None:
        cols.append(Column("native ms", short="ms", priority=2))
    rows = []
    for s in doc["stages"]:
        t = s["totals"]
        row = [s["id"], f"{t['count']:,}", f"{t['loads']:,}", f"{t['stores']:,}",
               f"{t['lines']:,}", _pct(t["lines"], ref["lines"])]
        row += [f"{t['misses'][lv['name']]:,}" for lv in doc["caches"]["levels"][:-1]]
        row += [f"{t['misses'][llc]:,}", _pct(t["misses"][llc], ref["misses"][llc])]
        if doc["native"] is not None:
            row.append("—" if t["native_ns"] is None else f"{t['native_ns'] / 1e6:,.2f}")
        rows.append(row)
    return fit_table(cols, rows, width, title="Whole workload, per stage (totals)")


def detail_lines(doc: dict[str, Any]) -> list[str]:
    out = ["misses: accesses of the operation not served at or above that level by the "
           "modelled caches (set-associative LRU, one core; docs/timing.md); dep. chain: the "
           "mean length of the operation's chain of dependent loads"]
    nat = doc["native"]
    if nat is not None:
        out.append(f"native: {nat['what']}; median of {nat['repeats']} repeats, "
                   f"{nat['interrupted_op_times']:,} interrupted op times replaced")
    return out


def render(doc: dict[str, Any], console: Console | None = None, brief: bool = False) -> None:
    """Print the answer, then (unless ``brief``) the tables and notes."""
    print_answer_then_tables(
        answer_lines(doc),
        lambda width: [totals_table(doc, width), *op_tables(doc, width)],
        lambda: detail_lines(doc), console, brief)


def doc_json(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=1) + "\n").encode()
