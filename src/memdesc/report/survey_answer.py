"""The survey's answer, printed first: per stage the cost over memory in use and over the
whole machine, each with its saving against v6.18; then (details) the per-class change and the
break-even orders. ``--brief`` prints :func:`answer` only."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from memdesc.analysis.in_use import BY_CLASS, IN_USE_CLASSES, class_pages, in_use_pages
from memdesc.report.console import Column, fit_table, percent_text, qty, size_text
from memdesc.stages import PAGE_SIZE, REFERENCE

if TYPE_CHECKING:
    from rich.console import Console

    from memdesc.analysis.survey import SurveyResult


def headline(r: SurveyResult) -> str:
    c = r.census
    used = in_use_pages(c)
    return (f"memdesc survey of {r.source} ({r.kind}), kernel {r.kernel or 'unknown'}: "
            f"{size_text(c.ram_pages * PAGE_SIZE)} present, {size_text(used * PAGE_SIZE)} in "
            f"use ({100 * used / max(1, c.ram_pages):.1f} %), {c.nr_cpus or '?'} CPUs")


def _saving(b: int, pct: float, ref: bool) -> str:
    return "—" if ref else percent_text(pct)


def answer_table(r: SurveyResult, width: int) -> Table:
    """Per stage: in-use cost and saving, whole-machine cost and saving."""
    cols = [Column("stage", "left"), Column("struct page", short="page", priority=3),
            Column("in use", style="bold"), Column("saving (in use)", short="saving",
                                                   style="bold"),
            Column("whole machine", short="machine"),
            Column("saving (machine)", short="saving"),
            Column("in-use mix on all memory", short="mix on all", priority=2),
            Column("% of RAM", short="%RAM", priority=1)]
    rows = []
    for s in r.costs:
        iu = s.in_use
        ref = s.id == REFERENCE
        rows.append([s.id, qty(str(s.struct_page_size), "B"), size_text(iu.total_bytes),
                     _saving(iu.saving_bytes, iu.saving_percent, ref),
                     size_text(s.total_bytes), _saving(s.saving_bytes, s.saving_percent, ref),
                     size_text(iu.projected_bytes), f"{s.percent_of_ram:.3f}"])
    return fit_table(cols, rows, width, title="Metadata cost per stage, memory in use first "
                                               f"(saving vs {REFERENCE})")


def answer_lines(r: SurveyResult) -> list[str]:
    """The one-line definition under the answer table, and the key comparison in words."""
    c = r.census
    used = in_use_pages(c)
    out = [f"in use = PFNs that are not free, never-initialised or a hole: {used:,} pages; "
           "in-use cost = struct page size × in-use pages + every descriptor byte "
           f"({REFERENCE}: 64 B × in-use pages); mix on all = the in-use cost scaled to all "
           "of the machine's struct pages"]
    p16 = next((s for s in r.costs if s.id == "page16"), None)
    if p16 is not None:
        idle = -(p16.by_class_change["free"] + p16.by_class_change["unused"])
        use = _verb(p16.in_use.saving_bytes, p16.in_use.saving_percent)
        whole = _verb(p16.saving_bytes, p16.saving_percent)
        if use.split()[0] == whole.split()[0]:
            whole = whole.split(" ", 1)[1]          # "saves A on ... and B on ..."
        out.append(f"page16 {use} on memory in use and {whole} on the whole machine, of which "
                   f"{size_text(idle)} is the struct pages of free, never-initialised and hole "
                   "memory")
    return out


def _verb(saving: int, pct: float) -> str:
    """``saves 1.2 MiB (35.5 %)`` or ``costs 3.0 MiB (30.9 %) more``."""
    if saving >= 0:
        return f"saves {size_text(saving)} ({percent_text(pct, signed=False)})"
    return f"costs {size_text(-saving)} ({percent_text(-pct, signed=False)}) more"


def answer(r: SurveyResult, con: Console) -> None:
    """Print the answer: headline, the stage table, the in-use definition."""
    from memdesc.report.console import print_lines

    print_lines([headline(r)], con)
    con.print(answer_table(r, con.width))
    print_lines(answer_lines(r), con)


#: Stages whose columns go first when a table is too wide (higher first).
DROP_FIRST = {"folio": 5, "dynamic": 4, "page32": 3}
LABELS = {"pagetable": "page tables", "misc": "Misc", "unused": "never-init/holes"}


def class_change_table(r: SurveyResult, width: int) -> Table:
    """Per class: pages, bytes at v6.18, and the change at every other stage."""
    pages = class_pages(r.census)
    ref = next((s for s in r.costs if s.id == REFERENCE), None)
    others = [s for s in r.costs if s.id != REFERENCE]
    cols = [Column("class", "left"), Column("pages", priority=2),
            Column(f"{REFERENCE} bytes", short=REFERENCE)]
    cols += [Column(f"Δ {s.id}", priority=DROP_FIRST.get(s.id, 0)) for s in others]
    rows, styles = [], []

    def add(label: str, keys: tuple[str, ...], style: str | None = None) -> None:
        rows.append([label, f"{sum(pages[k] for k in keys):,}",
                     size_text(sum(ref.by_class[k] for k in keys)) if ref else "—",
                     *(size_text(sum(s.by_class_change[k] for k in keys), signed=True)
                       for s in others)])
        styles.append(style)

    for k in IN_USE_CLASSES:
        if k != "hugetlb" or pages[k]:
            add(LABELS.get(k, k), (k,))
    add("in use", IN_USE_CLASSES, "bold")
    for k in ("free", "unused"):
        add(LABELS.get(k, k), (k,))
    add("whole machine", BY_CLASS, "bold")
    return fit_table(cols, rows, width, styles=styles,
                     title="Bytes per class at v6.18 and the change at each stage (negative = "
                           "saves; a class's bytes = its struct pages + its descriptors)")


def break_even_table(r: SurveyResult, width: int) -> Table:
    """Per unit type, the order from which one unit costs less than at v6.18."""
    be = r.break_even
    stages = [sid for sid, row in be.items() if any(v is not None for v in row.values())]
    types = list(next(iter(be.values()), {}))
    cols = [Column("unit type", "left")] + [Column(s) for s in stages]
    rows = [[t, *("never" if be[s][t] is None else str(be[s][t]) for s in stages)]
            for t in types]
    return fit_table(cols, rows, width, title="Break-even order (from it up, a unit costs "
                                               "less than at v6.18)")


def base_page_table(r: SurveyResult, width: int) -> Table | None:
    """Per stage: saving vs today's 4 KiB v6.18, in use and whole machine, at 4/16/64 KiB."""
    bases = r.base_pages
    if not bases:
        return None
    ref = r.reference_4k
    sizes = [("4K", {c.id: c for c in r.costs})] + [
        (f"{b.base_page_bytes >> 10}K", {c.id: c for c in b.costs}) for b in bases]

    def pct(saving: int, base: int) -> str:
        return percent_text(100.0 * saving / max(1, base))

    cols = [Column("stage", "left")]
    cols += [Column(f"in use {n}", short=f"use {n}") for n, _ in sizes]
    cols += [Column(f"machine {n}", short=f"all {n}", priority=1) for n, _ in sizes]
    rows = []
    for s in r.costs:
        rows.append([s.id]
                    + [pct(ref.in_use.total_bytes - by[s.id].in_use.total_bytes,
                           ref.in_use.total_bytes) for _, by in sizes]
                    + [pct(ref.total_bytes - by[s.id].total_bytes, ref.total_bytes)
                       for _, by in sizes])
    return fit_table(cols, rows, width, title=f"Saving vs {REFERENCE} with 4 KiB pages, if "
                                               "the base page were 4, 16 or 64 KiB")


def base_page_lines(r: SurveyResult) -> list[str]:
    bases = r.base_pages
    if not bases:
        return []
    used = in_use_pages(r.census) * PAGE_SIZE
    parts = [f"{b.base_page_bytes >> 10} KiB: {size_text(b.in_use_memory_bytes)}"
             for b in bases]
    return [f"memory in use with 4 KiB pages {size_text(used)}, {', '.join(parts)}: a larger "
            "page is in use if any of its 4 KiB pages is, and takes the class of the first "
            "unit in it (docs/survey.md §3.3)"]
