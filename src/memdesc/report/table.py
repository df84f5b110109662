"""The survey as terminal tables (rich): classes, folio orders, stage costs, checks, buddy."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.table import Table

from memdesc.analysis.census import CLASSES, FOLIO_CLASSES, NR_PAGE_ORDERS
from memdesc.stages import PAGE_SIZE, REFERENCE

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
    b = pages * PAGE_SIZE
    return f"{b / 2**30:,.2f} GiB" if b >= 2**30 else f"{b / 2**20:,.1f} MiB"


def _bytes(b: int) -> str:
    if abs(b) >= 2**30:
        return f"{b / 2**30:,.2f} GiB"
    return f"{b / 2**20:,.1f} MiB" if abs(b) >= 2**20 else f"{b / 2**10:,.1f} KiB"


def _orders(units) -> str:
    return " ".join(f"{o}:{int(n):,}" for o, n in enumerate(units) if n)


def class_table(r: SurveyResult) -> Table:
    c = r.census
    t = Table(title="Physical memory by memdesc class", box=box.SIMPLE_HEAD, title_justify="left")
    for col, just in (("class", "left"), ("pages", "right"), ("size", "right"),
                      ("% PFNs", "right"), ("units", "right"), ("units by order", "left"),
                      ("what", "left")):
        t.add_column(col, justify=just, overflow="fold")
    for k in CLASSES:
        pages = c.pages_by_class[k]
        units = c.units_by_class[k]
        structured = k not in ("hole", "uninitialised", "reserved")
        t.add_row(k, f"{pages:,}", _size(pages), f"{100 * pages / max(1, c.pfns):.2f}",
                  f"{int(units.sum()):,}" if structured else "",
                  _orders(units) if structured and pages else "", CLASS_MEANING[k],
                  style="dim" if not pages else None)
    t.add_row("total", f"{c.pfns:,}", _size(c.pfns), "100.00", "", "", "", style="bold")
    return t


def folio_table(r: SurveyResult) -> Table:
    c = r.census
    t = Table(title="Folio orders (units; these drive the descriptor cost)", box=box.SIMPLE_HEAD,
              title_justify="left")
    t.add_column("order", justify="right")
    for k in FOLIO_CLASSES:
        t.add_column(k, justify="right")
    t.add_column("pages", justify="right")
    dist = r.folio_orders
    for o, n in enumerate(dist["units_by_order"]):
        if n:
            t.add_row(str(o), *(f"{int(c.units_by_class[k][o]):,}" for k in FOLIO_CLASSES),
                      f"{dist['pages_by_order'][o]:,}")
    return t


def cost_table(r: SurveyResult) -> Table:
    t = Table(title="Metadata cost at each stage of the Path", box=box.SIMPLE_HEAD,
              title_justify="left")
    for col in ("stage", "struct page", "memmap", "descriptors", "total", "% of RAM",
                f"saving vs {REFERENCE}", "largest descriptor types"):
        t.add_column(col, justify="left" if col in ("stage", "largest descriptor types")
                     else "right", overflow="fold")
    for s in r.costs:
        desc = sorted(((k, v) for k, v in s.by_type.items() if k != "memmap" and v),
                      key=lambda kv: -kv[1])[:3]
        t.add_row(s.id, f"{s.struct_page_size} B", _bytes(s.struct_page_bytes),
                  _bytes(s.descriptor_bytes), _bytes(s.total_bytes), f"{s.percent_of_ram:.3f}",
                  f"{_bytes(s.saving_bytes)} ({s.saving_percent:+.1f} %)",
                  ", ".join(f"{k} {_bytes(v)}" for k, v in desc))
    return t


def check_table(r: SurveyResult) -> Table:
    t = Table(title="Consistency with the kernel's counters (pages; before/after = read just "
                    "before/after the kpage reads; why: below)", box=box.SIMPLE_HEAD,
              title_justify="left")
    for col, just in (("check", "left"), ("kernel counter", "left"), ("ours", "left"),
                      ("ours", "right"), ("before", "right"), ("after", "right"),
                      ("diff", "right"), ("status", "left")):
        t.add_column(col, justify=just, overflow="fold")

    def n(v):
        return "—" if v is None else f"{v:,}"

    for ch in r.checks:
        d = ch.diff
        pct = ch.diff_percent
        dtxt = "—" if d is None else f"{d:+,} (" + ("n/a" if pct is None else f"{pct:+.2f} %") \
            + ")"
        style = {"ok": "green", "differs": "yellow", "skipped": "dim"}[ch.status]
        t.add_row(ch.name, ch.kernel_label, ch.ours_label, f"{ch.ours:,}", n(ch.kernel_before),
                  n(ch.kernel_after), dtxt, f"[{style}]{ch.status}[/]")
    return t


def buddy_table(r: SurveyResult) -> Table:
    t = Table(title="Free blocks per order: ours (maximal merging of KPF_BUDDY runs) vs "
                    "/proc/buddyinfo", box=box.SIMPLE_HEAD, title_justify="left")
    t.add_column("zone")
    t.add_column("")
    for o in range(NR_PAGE_ORDERS):
        t.add_column(str(o), justify="right")
    t.add_column("pages", justify="right")
    for z in r.buddy:
        rows = [("ours", z.ours), ("before", z.before), ("after", z.after),
                ("diff (before)", z.diff(z.before))]
        for i, (label, counts) in enumerate(rows):
            if counts is None:
                continue
            pages = sum(n << o for o, n in enumerate(counts))
            fmt = "{:+,}" if label.startswith("diff") else "{:,}"
            t.add_row(f"{z.node}/{z.zone}" if i == 0 else "", label,
                      *(fmt.format(x) for x in counts), fmt.format(pages),
                      style="dim" if label.startswith("diff") else None)
        t.add_section()
    return t


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


def render(r: SurveyResult, console: Console | None = None) -> None:
    """Print the whole survey."""
    con = console or Console(width=None if _tty() else 160)
    c = r.census
    con.print(f"[bold]memdesc survey[/] of {r.source} ({r.kind}), kernel {r.kernel or 'unknown'}: "
              f"{c.pfns:,} PFNs ({_size(c.pfns)} of PFN space), {c.ram_pages:,} present pages "
              f"({_size(c.ram_pages)}), {c.nr_cpus or '?'} CPUs")
    con.print(class_table(r))
    if any(r.folio_orders["units_by_order"]):
        con.print(folio_table(r))
    con.print(cost_table(r))
    if r.checks:
        con.print(check_table(r))
        for ch in r.checks:
            con.print(f"  [bold]{ch.name}[/]: {ch.explanation}", highlight=False)
        con.print()
    if r.buddy:
        con.print(buddy_table(r))
        for z in r.buddy:
            con.print(f"  [bold]{z.node}/{z.zone}[/]: {z.explanation}", highlight=False)
        con.print()
    for line in notes_lines(r):
        con.print(f"[dim]•[/] {line}", highlight=False)


def _tty() -> bool:
    import sys
    return sys.stdout.isatty()
