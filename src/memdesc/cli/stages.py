"""``memdesc stages``: the Path, one stage after another, each struct page drawn the way pahole
draws it (offsets and sizes, union members grouped), with how the stage finds a page's zone and
marks free pages, and what its mem_map costs.

It opens with the answer: one row per stage in Path order (the 2026 transition stages
included) with its struct page size, mem_map per TiB, descriptor policy, free-page tracking
options and which commands run it (every stage whose descriptor policy
stages.EMULATED_POLICIES holds: the partial separations ``ptdesc-first`` and ``ptdesc-slab``
too)."""

from __future__ import annotations

import argparse
import textwrap

from memdesc.cli.options import stages_option
from memdesc.stages import (
    EMULATED_STAGE_IDS,
    FREE_TRACKING_OPTIONS,
    PAGE_SIZE,
    PATH_ORDER,
    TRACKING,
    ZONE_LOOKUP,
    Field,
    Stage,
    StructLayout,
    get_stage,
    type_code,
    variant_name,
)

_CTYPE = {
    "flags": "memdesc_flags_t", "mapping": "struct address_space *",
    "__folio_mapping": "struct address_space *", "_mapcount": "atomic_t",
    "_refcount": "atomic_t", "page_type": "unsigned int", "slab_cache": "struct kmem_cache *",
    "freelist": "void *", "private": "unsigned long", "memdesc": "unsigned long",
}
_BY_SIZE = {16: "struct list_head", 8: "unsigned long", 4: "unsigned int", 1: "unsigned char"}


def _ctype(f: Field) -> str:
    return _CTYPE.get(f.name) or _BY_SIZE.get(f.size, f"char[{f.size}]")


#: Columns the drawing fits (set by run() from the terminal; 100 when piped).
_WIDTH = {"columns": 100}


def _member(f: Field, depth: int) -> str:
    """One member line, pahole-style; a note that does not fit the width goes on the lines
    below, as a comment wrapped between words."""
    decl = f"{'    ' * depth}{_ctype(f)} {f.name};"
    line = f"{decl:<52}/* {f.offset:5d} {f.size:5d} */"
    width = _WIDTH["columns"]
    if not f.note or len(line) + 2 + len(f.note) <= width:
        return f"{line}  {f.note}" if f.note else line
    pad = "    " * (depth + 1)
    wrapped = textwrap.wrap(f"/* {f.note} */", max(20, width - len(pad)),
                            break_long_words=False, break_on_hyphens=False)
    return "\n".join([line, *(pad + w for w in wrapped)])


def _prose(line: str) -> list[str]:
    """A description line wrapped between words at the width, continuation indented."""
    indent = len(line) - len(line.lstrip(" "))
    return textwrap.wrap(line, _WIDTH["columns"], subsequent_indent=" " * (indent + 2),
                         break_long_words=False, break_on_hyphens=False) or [""]


def _close(kind_end: str, start: int, size: int, depth: int) -> str:
    return f"{'    ' * depth + kind_end:<52}/* {start:5d} {size:5d} */"


def _clusters(fields: tuple[Field, ...]) -> list[list[Field]]:
    """Runs of members whose byte ranges overlap (a union when more than one)."""
    out: list[list[Field]] = []
    end = -1
    for f in sorted(fields, key=lambda f: (f.offset, -f.size)):
        if out and f.offset < end:
            out[-1].append(f)
            end = max(end, f.offset + f.size)
        else:
            out.append([f])
            end = f.offset + f.size
    return out


def draw(layout: StructLayout) -> list[str]:
    """pahole-style lines for ``layout``."""
    lines = [f"struct {layout.name} {{"]
    for cl in _clusters(layout.fields):
        if len(cl) == 1:
            lines.append(_member(cl[0], 1))
            continue
        start, end = cl[0].offset, max(f.offset + f.size for f in cl)
        alts: list[list[Field]] = []                       # union alternatives
        for f in cl:
            for alt in alts:
                if alt[-1].offset + alt[-1].size <= f.offset:
                    alt.append(f)
                    break
            else:
                alts.append([f])
        lines.append("    union {")
        for alt in alts:
            if len(alt) == 1:
                lines.append(_member(alt[0], 2))
                continue
            lines.append("        struct {")
            lines += [_member(f, 3) for f in alt]
            a_end = alt[-1].offset + alt[-1].size
            lines.append(_close("};", alt[0].offset, a_end - alt[0].offset, 2))
        lines.append(_close("};", start, end - start, 1))
    members = len(_clusters(layout.fields))
    lines.append(f"\n    /* size: {layout.size}, cachelines: {-(-layout.size // 64)}, "
                 f"members: {members} */")
    lines.append("};")
    return lines


def describe(stage: Stage) -> list[str]:
    """Header lines of one stage: what changes, lookups, free tracking, mem_map cost."""
    per_tib = stage.struct_page_bytes * ((1 << 40) // PAGE_SIZE) / (1 << 30)
    types = ", ".join(f"{c} {n}" for c, n in sorted(stage.types.items()))
    return [
        f"== {variant_name(stage)}: {stage.title}",
        f"   struct page {stage.struct_page_bytes} B = {per_tib:g} GiB of mem_map per TiB "
        f"({100 * stage.struct_page_bytes / PAGE_SIZE:.2f}% of RAM); descriptors: "
        f"{stage.descriptor_policy}",
        f"   memdesc types ({stage.type_table}): {types}",
        f"   page_zone()/page_to_nid(): {ZONE_LOOKUP[stage.zone_lookup]}",
        *tracking_lines(stage),
        *(f"   note: {n}" for n in stage.notes),
    ]


def tracking_lines(stage: Stage) -> list[str]:
    """The stage's free-page tracking option: encoding, side memory, list order, blockers,
    and the other options selectable at this stage."""
    opt = TRACKING[stage.free_tracking]
    lines = [f"   free pages ({opt.name}): {opt.description}",
             f"   free-tracking side memory: {opt.side_memory} "
             f"({opt.side_bytes_per_page:g} B per 4 KiB page, charged by the cost model)"]
    if not opt.keeps_list_order:
        lines.append("   free-list order: NOT the kernel's (blocks chosen by address); its "
                     "observables differ from the list-order options (measured by replay)")
    lines += [f"   blocker: {b}" for b in opt.blockers]
    options = FREE_TRACKING_OPTIONS[stage.id]
    if len(options) > 1:
        lines.append(f"   free-tracking options: {', '.join(options)} "
                     f"(--stages '{stage.id}/*' selects them all)")
    return lines


def runs_in(stage: Stage) -> str:
    """Whether the emulator (simulate, replay) runs ``stage``, or only the survey models it."""
    return "yes" if stage.id in EMULATED_STAGE_IDS else "survey only"


def overview(stages: list[Stage], width: int) -> list:
    """The answer: the opening line and one fitted table row per stage."""
    from memdesc.report.console import Column, fit_table

    cols = [Column("stage", justify="left"), Column("struct page"),
            Column("mem_map per TiB", short="per TiB"),
            Column("descriptors", justify="left", short="descr."),
            Column("free-page tracking", short="free tracking", justify="left", wrap=True,
                   min_wrap=12, priority=1),
            Column("emulated", justify="left", priority=2)]
    rows = []
    for st in stages:
        per_tib = st.struct_page_bytes * ((1 << 40) // PAGE_SIZE) >> 30
        name = variant_name(st)
        # a stage lists every option it has (its default first); a variant names its own
        options = ((st.free_tracking,) if "/" in name
                   else FREE_TRACKING_OPTIONS.get(st.id, (st.free_tracking,)))
        rows.append([name, f"{st.struct_page_bytes} B", f"{per_tib} GiB",
                     st.descriptor_policy, ", ".join(options), runs_in(st)])
    sizes = sorted({st.struct_page_bytes for st in stages}, reverse=True)
    size = " -> ".join(f"{b} B" for b in sizes)
    head = (f"The Path: {len(stages)} stage(s), struct page {size} "
            f"({100 * sizes[0] / PAGE_SIZE:.2f}% -> {100 * sizes[-1] / PAGE_SIZE:.2f}% of "
            f"RAM); --stages 'ID/*' selects a stage's free-tracking options")
    return [*_prose(head), fit_table(cols, rows, width), ""]


def run(args: argparse.Namespace) -> int:
    from memdesc.report.console import make_console, terminal_width

    stages = (stages_option(args.stages) if args.stages != "all"
              else [get_stage(s) for s in PATH_ORDER])
    _WIDTH["columns"] = terminal_width()
    con = make_console()
    for item in overview(stages, con.width):
        con.print(item)
    if args.brief:
        return 0
    out: list[str] = []
    for stage in stages:
        out += [w for line in describe(stage) for w in _prose(line)]
        if stage.dynamic:
            out += _prose(f"   memdesc word: descriptor address | type (Buddy = "
                          f"{type_code(stage, 'Buddy')}, Misc = {type_code(stage, 'Misc')}: "
                          "subtype 4-10, mappable 11, order 12-17, zone 53..51, node 63..54)")
        out += draw(stage.page)
        out.append("")
    if args.overlays:
        from memdesc.mm.mm_types import FOLIO_PATH_2025, OVERLAYS_V6_18

        out.append("== descriptor layouts (v6.18 overlays; Path 2025 folio from `dynamic` on)")
        for layout in (*OVERLAYS_V6_18, FOLIO_PATH_2025):
            out += draw(layout)
            out.append("")
    con.print("\n".join(out).rstrip(), markup=False)
    return 0


def register(sub) -> None:
    p = sub.add_parser("stages", help="the Path: every stage's struct page, pahole-style",
                       description=__doc__)
    p.add_argument("--stages", default="all", metavar="all|ID[,ID...]",
                   help="stages or variants (e.g. page32@path-2025, page16@rev-a, 'page8/*'); "
                        "default: every stage in Path order, the 2026 transition stages "
                        "included")
    p.add_argument("--brief", action="store_true", help="only the overview table")
    p.add_argument("--overlays", action="store_true",
                   help="also draw struct folio/slab/ptdesc of 6.18 and the Path's 80-byte folio")
    p.set_defaults(func=run)
