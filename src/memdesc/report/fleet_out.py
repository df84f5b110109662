"""The fleet survey's outputs: the terminal answer (80 columns), JSON, CSV and Parquet.

JSON schema: docs/fleet-json.md (bump SCHEMA_VERSION when a field changes meaning). Every
renderer returns text or bytes; the CLI writes them (atomically) only when all are rendered.
"""

from __future__ import annotations

import csv
import io
import json
import textwrap
from typing import Any

from memdesc import __version__
from memdesc.analysis.census import CLASSES
from memdesc.analysis.fleet import PERCENTILES
from memdesc.analysis.survey import WEAKENS
from memdesc.errors import InputError
from memdesc.stages import PAGE_SIZE, REFERENCE

SCHEMA_VERSION = 1
WIDTH = 80
#: The stages whose savings lead the answer and the plots.
HEADLINE = ("page16", "page8")
#: Machines listed one per row on the terminal before the list is cut to its ends.
MAX_MACHINE_ROWS = 20


# --- JSON -------------------------------------------------------------------------------------

def fleet_dict(machines: list[dict], failed: list[dict], answer: dict[str, Any],
               group_by: str | None) -> dict[str, Any]:
    """The whole run as plain data. Nothing in it depends on how or where the run was made
    (engine, timings, cache), so the same snapshots give the same JSON on any cluster."""
    d = {
        "schema_version": SCHEMA_VERSION,
        "tool": f"memdesc {__version__}",
        "page_size": PAGE_SIZE,
        "reference_stage": REFERENCE,
        "percentiles": list(PERCENTILES),
        "machines": machines,
        "failed": failed,
        "fleet": answer["fleet"],
        "group_by": group_by,
    }
    if "groups" in answer:
        d["groups"] = answer["groups"]
    return d


def fleet_json(d: dict[str, Any]) -> str:
    return json.dumps(d, indent=1) + "\n"


# --- per-machine table (CSV, Parquet) -------------------------------------------------------------

def machine_rows(machines: list[dict]) -> list[dict[str, Any]]:
    """One flat row per surveyed machine (columns documented in docs/fleet.md)."""
    rows = []
    for m in machines:
        row: dict[str, Any] = {k: m[k] for k in ("source", "host", "label", "taken", "layout",
                                                  "kernel", "content_hash", "pfns", "ram_pages",
                                                  "memmap_pages", "kpageflags_only")}
        row["skipped"] = ";".join(m["skipped"])
        row["checks_off"] = ";".join(n for n, s in m["consistency"].items() if s == "off")
        for c in CLASSES:
            row[f"pages_{c}"] = m["pages_by_class"][c]
        for s in m["stages"]:
            row[f"{s['id']}_total_bytes"] = s["total_bytes"]
            row[f"{s['id']}_saving_percent"] = round(s["saving_percent"], 6)
            row[f"{s['id']}_in_use_total_bytes"] = s["in_use"]["total_bytes"]
            row[f"{s['id']}_in_use_saving_percent"] = round(s["in_use"]["saving_percent"], 6)
        rows.append(row)
    return rows


def machines_csv(machines: list[dict]) -> bytes:
    rows = machine_rows(machines)
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue().encode()


def parquet_available() -> bool:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def require_parquet() -> None:
    if not parquet_available():
        raise InputError("--parquet needs pyarrow, which is not installed: `pip install pyarrow` "
                         "into memdesc's environment, or use --csv")


def machines_parquet(machines: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = machine_rows(machines)
    table = pa.Table.from_pylist(rows)
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    return buf.getvalue().to_pybytes()


# --- terminal ---------------------------------------------------------------------------------

def _gib(b: float) -> str:
    for div, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB")):
        if abs(b) >= div:
            return f"{b / div:,.2f} {unit}" if abs(b) < 100 * div else f"{b / div:,.1f} {unit}"
    return f"{b / 2**10:,.1f} KiB"


def _stage(fleet: dict, sid: str) -> dict | None:
    return next((s for s in fleet["stages"] if s["id"] == sid), None)


def _spread(p: dict | None) -> str:
    if p is None:
        return "no machine"
    return f"median {p['p50']:.1f} %, p10 {p['p10']:.1f} %, p90 {p['p90']:.1f} %"


def headline(fleet: dict, failed: int) -> list[str]:
    """The answer in a few lines."""
    n, hosts = fleet["machines"], fleet["hosts"]
    only = f" ({fleet['kpageflags_only']:,} kpageflags-only)" if fleet["kpageflags_only"] else ""
    lines = [f"memdesc fleet survey: {n:,} snapshot{'s' * (n != 1)} of {hosts:,} "
             f"host{'s' * (hosts != 1)}{only}, {failed:,} failed"]
    s = _stage(fleet, HEADLINE[0])
    if s is not None and n:
        iu = s["in_use"]
        text = (f"{s['id']} saves {iu['saving_percent']:.1f} % of the metadata of memory in "
                f"use across the fleet (per machine: {_spread(iu['saving_percent_percentiles'])}"
                f"), and {s['saving_percent']:.1f} % of all struct-page metadata (per machine: "
                f"{_spread(s['saving_percent_percentiles'])})")
        lines += textwrap.wrap(text, WIDTH, subsequent_indent="  ", break_on_hyphens=False)
    return lines


def _p(p: dict | None, k: str) -> str:
    return "-" if p is None else f"{p[k]:.0f}"


def _half(total: int, saving: float, p: dict | None) -> str:
    """total(10) fleet %(7) p10 p50 p90 (6 each): 35 columns."""
    return (f"{_gib(total):>10}{saving:>7.1f}{_p(p, 'p10'):>6}{_p(p, 'p50'):>6}"
            f"{_p(p, 'p90'):>6}")


def stage_table(fleet: dict) -> list[str]:
    head = f"{'total':>10}{'fleet':>7}{'p10':>6}{'p50':>6}{'p90':>6}"
    out = ["Metadata per stage: the fleet's total, and the saving vs v6.18 in % of the",
           "fleet's total (fleet) and of each machine's (p10/p50/p90 over machines)",
           f"{'':8}{'--------- memory in use ---------':>35}  "
           f"{'--------- whole machine ---------':>35}",
           f"{'stage':<8}{head}  {head}"]
    for s in fleet["stages"]:
        halves = [_half(x["total_bytes"], x["saving_percent"], x["saving_percent_percentiles"])
                  for x in (s["in_use"], s)]
        out.append(f"{s['id']:<8}{halves[0]}  {halves[1]}")
    return out


def class_lines(fleet: dict) -> list[str]:
    pfns = max(1, fleet["pfns"])
    cells = [f"{c:<14}{100 * fleet['pages_by_class'][c] / pfns:>5.1f} %" for c in CLASSES]
    out = [f"Fleet memory by class (% of {fleet['pfns']:,} PFNs, "
           f"{_gib(fleet['pfns'] * PAGE_SIZE)})"]
    for i in range(0, len(cells), 3):
        out.append("  " + "    ".join(cells[i:i + 3]))
    return out


def folio_lines(fleet: dict) -> list[str]:
    pages = fleet["folio_orders"]["pages_by_order"]
    total = max(1, sum(pages))
    parts = [f"{o}:{100 * p / total:.1f}%" for o, p in enumerate(pages) if p]
    return textwrap.wrap("Folio pages by order (order:% of folio pages): " + "  ".join(parts),
                         WIDTH, subsequent_indent="  ")


def _saving(m: dict, sid: str, in_use: bool) -> float | None:
    s = next((s for s in m["stages"] if s["id"] == sid), None)
    if s is None:
        return None
    return s["in_use"]["saving_percent"] if in_use else s["saving_percent"]


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def machine_lines(machines: list[dict]) -> list[str]:
    a, b = HEADLINE
    out = ["Machines: saving vs v6.18 (%) over memory in use and the whole machine",
           f"{'':47}{a + ' saving':>15}{b + ' saving':>15}",
           f"{'machine':<27}{'host':<12}{'RAM GiB':>8}{'in use':>8}{'whole':>7}"
           f"{'in use':>8}{'whole':>7}"]
    shown = list(machines)
    cut = len(shown) > MAX_MACHINE_ROWS
    if cut:
        shown.sort(key=lambda m: _saving(m, a, True) or 0.0)
        half = MAX_MACHINE_ROWS // 2
        shown = shown[:half] + [None] + shown[-half:]
    for m in shown:
        if m is None:
            out.append(f"  ... {len(machines) - MAX_MACHINE_ROWS:,} more (sorted by {a} in "
                       "use; all in --csv/--json)")
            continue
        name = m["label"] + ("*" if m["kpageflags_only"] else "")
        name = name if len(name) <= 26 else name[:12] + "~" + name[-13:]
        host = m["host"] if len(m["host"]) <= 11 else m["host"][:10] + "~"
        out.append(f"{name:<27}{host:<12}{m['ram_pages'] * PAGE_SIZE / 2**30:>8.1f}"
                   f"{_f(_saving(m, a, True)):>8}{_f(_saving(m, a, False)):>7}"
                   f"{_f(_saving(m, b, True)):>8}{_f(_saving(m, b, False)):>7}")
    if any(m["kpageflags_only"] for m in machines):
        note = ("* kpageflags-only (no zoneinfo/iomem, as in the fleet study's layout): "
                f"{WEAKENS['zoneinfo']}; {WEAKENS['iomem']}")
        out += textwrap.wrap(note, WIDTH, subsequent_indent="  ")
    return out


def group_lines(groups: list[dict], spec: str) -> list[str]:
    a, b = HEADLINE
    out = [f"Groups (--group-by {spec}): the median machine's saving vs v6.18 (%)",
           f"{'':37}{a + ' saving':>15}{b + ' saving':>15}",
           f"{'group':<28}{'machines':>9}{'in use':>8}{'whole':>7}{'in use':>8}{'whole':>7}"]
    for g in groups:
        sa, sb = _stage(g, a), _stage(g, b)
        key = g["key"] if len(g["key"]) <= 27 else g["key"][:26] + "~"

        def p50(s, in_use):
            if s is None:
                return "-"
            p = (s["in_use"] if in_use else s)["saving_percent_percentiles"]
            return "-" if p is None else f"{p['p50']:.1f}"
        out.append(f"{key:<28}{g['machines']:>9,}{p50(sa, True):>8}{p50(sa, False):>7}"
                   f"{p50(sb, True):>8}{p50(sb, False):>7}")
    return out


def failed_lines(failed: list[dict]) -> list[str]:
    if not failed:
        return []
    n = len(failed)
    out = [f"{n:,} snapshot{'s' * (n != 1)} could not be surveyed (not in the numbers above):"]
    for f in failed:
        reason = f["reason"]
        text = reason if reason.startswith(f["source"]) else f"{f['source']}: {reason}"
        out += textwrap.wrap(text, WIDTH, initial_indent="  ", subsequent_indent="    ")
    return out


def render_text(d: dict[str, Any]) -> str:
    """The terminal answer: headline, stage table, classes, folio orders, groups, machines,
    failures; every line at most 80 columns."""
    fleet = d["fleet"]
    blocks = [headline(fleet, len(d["failed"]))]
    if fleet["machines"]:
        blocks += [stage_table(fleet), class_lines(fleet), folio_lines(fleet)]
        if d.get("groups") is not None:
            blocks.append(group_lines(d["groups"], d["group_by"]))
        blocks.append(machine_lines(d["machines"]))
    blocks.append(failed_lines(d["failed"]))
    return "\n\n".join("\n".join(b) for b in blocks if b) + "\n"
