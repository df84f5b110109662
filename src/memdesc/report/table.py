"""The survey as terminal tables fitted to the width (report/console.py): the answer first
(report/survey_answer.py), then classes, folio orders, stage costs, checks, buddy."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

from memdesc.analysis.census import CLASSES, FOLIO_CLASSES, NR_PAGE_ORDERS
from memdesc.analysis.consistency import BuddyZone
from memdesc.report.console import (
    Column,
    fit_table,
    make_console,
    percent_text,
    print_lines,
    qty,
    size_text,
)
from memdesc.stages import PAGE_SIZE

if TYPE_CHECKING:
    from memdesc.analysis.survey import SurveyResult

#: What each class means, one short phrase (the legend of the class table).
CLASS_MEANING = {
    "free": "buddy free blocks (KPF_BUDDY)",
    "file": "page-cache folios",
    "anon": "anonymous folios (swap cache included)",
    "shmem": "tmpfs/shm folios (SWAPBACKED, not ANON, not SWAPCACHE)",
    "ksm": "KSM pages",
    "slab": "slabs (SLAB first: ANON/KSM bits there are spurious)",
    "pagetable": "page tables (ptdesc)",
    "hugetlb": "hugetlb folios, free or in use",
    "zero": "the zero page / huge zero folio",
    "reserved": "PG_reserved in System RAM (kernel image, memblock)",
    "offline": "PageOffline (balloon, hot-unplug)",
    "untyped": "in use without a type: pcp-free, vmalloc, alloc_pages, compound Misc",
    "uninitialised": "struct pages never initialised (deferred/lazy init)",
    "hole": "no RAM: outside System RAM, or KPF_NOPAGE",
}


def _size(pages: int) -> str:
    return size_text(pages * PAGE_SIZE)


def _orders(units) -> str:
    return " ".join(f"{o}:{int(n):,}" for o, n in enumerate(units) if n)


def class_table(r: SurveyResult, width: int) -> Table:
    c = r.census
    cols = [Column("class", "left"), Column("pages"), Column("size", priority=3),
            Column("% PFNs", short="%", priority=4), Column("units", priority=5),
            Column("units by order", "left", short="by order", priority=2, wrap=True),
            Column("what", "left", priority=1, wrap=True)]
    rows, styles = [], []
    for k in CLASSES:
        pages = c.pages_by_class[k]
        units = c.units_by_class[k]
        structured = k not in ("hole", "uninitialised", "reserved")
        rows.append([k, f"{pages:,}", _size(pages), f"{100 * pages / max(1, c.pfns):.2f}",
                     f"{int(units.sum()):,}" if structured else "",
                     _orders(units) if structured and pages else "", CLASS_MEANING[k]])
        styles.append("dim" if not pages else None)
    rows.append(["total", f"{c.pfns:,}", _size(c.pfns), "100.00", "", "", ""])
    styles.append("bold")
    return fit_table(cols, rows, width, title="Physical memory by memdesc class",
                     styles=styles)


def folio_table(r: SurveyResult, width: int) -> Table:
    c = r.census
    cols = [Column("order"), *(Column(k) for k in FOLIO_CLASSES), Column("pages")]
    dist = r.folio_orders
    rows = [[str(o), *(f"{int(c.units_by_class[k][o]):,}" for k in FOLIO_CLASSES),
             f"{dist['pages_by_order'][o]:,}"]
            for o, n in enumerate(dist["units_by_order"]) if n]
    return fit_table(cols, rows, width,
                     title="Folio orders (units; these drive the descriptor cost)")


def cost_table(r: SurveyResult, width: int) -> Table:
    cols = [Column("stage", "left"), Column("struct page", short="page"), Column("memmap"),
            Column("descriptors", short="desc"), Column("total"),
            Column("largest descriptor types", "left", short="largest", priority=1,
                   wrap=True)]
    rows = []
    for s in r.costs:
        desc = sorted(((k, v) for k, v in s.by_type.items() if k != "memmap" and v),
                      key=lambda kv: -kv[1])[:3]
        rows.append([s.id, qty(str(s.struct_page_size), "B"), size_text(s.struct_page_bytes),
                     size_text(s.descriptor_bytes), size_text(s.total_bytes),
                     ", ".join(f"{k} {size_text(v)}" for k, v in desc)])
    return fit_table(cols, rows, width,
                     title="Whole machine: memmap and descriptors at each stage")


STATUS_STYLE = {"exact": "green", "inside read window": "green", "explained": "cyan",
                "off": "yellow", "skipped": "dim"}


def check_table(r: SurveyResult, width: int) -> Table:
    cols = [Column("check", "left"), Column("kernel counter", "left", short="counter",
                                            priority=2, wrap=True),
            Column("ours", "left", short="ours is", priority=1, wrap=True),
            Column("ours", short="ours"), Column("before", short="kernel"),
            Column("after", priority=3), Column("diff"),
            Column("status", "left", wrap=True)]

    def n(v):
        return "—" if v is None else f"{v:,}"

    rows = []
    for ch in r.checks:
        d = ch.diff
        dtxt = "—" if d is None else f"{d:+,}" if d else "0"
        if d and ch.diff_percent is not None and abs(ch.diff_percent) >= 0.01:
            dtxt += f" ({percent_text(ch.diff_percent, digits=2)})"
        rows.append([ch.name, ch.kernel_label, ch.ours_label, f"{ch.ours:,}",
                     n(ch.kernel_before), n(ch.kernel_after), dtxt,
                     Text(ch.status_text, style=STATUS_STYLE.get(ch.status))])
    return fit_table(cols, rows, width,
                     title="Consistency with the kernel's counters (pages; before/after = "
                           "read just before/after the kpage reads)")


def buddy_table(r: SurveyResult, width: int) -> Table:
    """Orders down, zones across: our free blocks and how far they lie outside the kernel's
    before/after buddyinfo values (· = inside)."""
    cols = [Column("order")]
    for z in r.buddy:
        cols += [Column(f"{z.zone} ours"), Column(f"{z.zone} Δ", priority=0)]

    def outside(z, o: int) -> str:
        vals = [x[o] for x in (z.before, z.after) if x is not None]
        if not vals:
            return "—"
        lo, hi = min(vals), max(vals)
        v = z.ours[o]
        return "·" if lo <= v <= hi else f"{v - (hi if v > hi else lo):+,}"

    rows = []
    for o in range(NR_PAGE_ORDERS):
        rows.append([str(o), *(x for z in r.buddy for x in (f"{z.ours[o]:,}", outside(z, o)))])
    rows.append(None)
    pages = []
    for z in r.buddy:
        kern = [BuddyZone.pages(x) for x in (z.before, z.after) if x is not None]
        ours = BuddyZone.pages(z.ours)
        d = ("—" if not kern else "·" if min(kern) <= ours <= max(kern) else
             f"{ours - (max(kern) if ours > max(kern) else min(kern)):+,}")
        pages += [f"{ours:,}", d]
    rows.append(["pages", *pages])
    return fit_table(cols, rows, width,
                     title="Free blocks per order: ours (maximal merging of KPF_BUDDY runs); "
                           "Δ = distance outside buddyinfo before/after (· inside)")


def notes_lines(r: SurveyResult) -> list[str]:
    c = r.census
    out = []
    if r.note:
        out.append(r.note)
    if r.skipped_line:
        out.append(r.skipped_line)
    pcp = c.extras.get("pcp_pages")
    compound = int(c.extras.get("untyped_compound_pages", 0))
    line = (f"untyped: {c.pages_by_class['untyped']:,} pages = {compound:,} in compound Misc "
            f"units (large kmalloc, page_pool, ...) + {c.pages_by_class['untyped'] - compound:,} "
            "single pages (flags == 0 or no type bit)")
    if pcp is not None:
        line += f"; of these ≈ {pcp:,} are free on the pcp lists (Σ zoneinfo pcp count)"
    out.append(line)
    for key, v in (c.extras.get("uninitialised_by_zone") or {}).items():
        if v["bound"] or v["uninitialised"]:
            out.append(f"uninitialised {key}: {v['uninitialised']:,} pages = the all-zero run at "
                       f"the top of the zone ({v['top_zero_run']:,}), bounded by present − "
                       f"managed − PG_reserved = {v['bound']:,}")
    an = {k: v for k, v in (c.extras.get("anomalies") or {}).items() if v}
    if an:
        out.append("observed: " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in an.items())
                   + (" (hole pages with struct page: PFNs outside System RAM that "
                      "init_unavailable_range() marked PG_reserved)"
                      if an.get("hole_pages_with_struct_page") else ""))
    out.append(f"memmap: {c.memmap_pages:,} struct pages ({c.extras.get('memmap_basis')}); "
               f"% of RAM uses {c.ram_pages:,} present pages ({_size(c.ram_pages)})")
    out.extend(n for n in c.notes if n != r.note)
    return out


def render(r: SurveyResult, console: Console | None = None, brief: bool = False) -> None:
    """Print the survey: the answer first, then (unless ``brief``) the details."""
    from memdesc.report.survey_answer import (
        answer,
        base_page_lines,
        base_page_table,
        break_even_table,
        class_change_table,
    )

    con = console or make_console()
    w = con.width
    answer(r, con)
    if brief:
        return
    con.print()
    con.print(class_change_table(r, w))
    con.print(break_even_table(r, w))
    bp = base_page_table(r, w)
    if bp is not None:
        con.print(bp)
        print_lines(base_page_lines(r), con)
        con.print()
    con.print(cost_table(r, w))
    con.print(class_table(r, w))
    if any(r.folio_orders["units_by_order"]):
        con.print(folio_table(r, w))
    if r.checks:
        con.print(check_table(r, w))
        print_lines([f"{ch.name}: {ch.explanation}" for ch in r.checks], con)
        con.print()
    if r.buddy:
        con.print(buddy_table(r, w))
        print_lines([f"{z.node}/{z.zone}: {z.explanation}" for z in r.buddy], con)
        con.print()
    print_lines([f"• {line}" for line in notes_lines(r)], con)
