"""``memdesc survey``: what every stage of the memdesc Path costs on this machine or a snapshot."""

from __future__ import annotations

import argparse
import sys

from memdesc.cli.options import check_output, stages_option
from memdesc.report.console import add_brief_option
from memdesc.stages import STAGE_IDS, get_stage

DESCRIPTION = """\
Classify every PFN of /proc/kpageflags (or a saved snapshot) into allocation units with a
memdesc type, compute the struct page + descriptor bytes of each stage of the Path
(v6.18, folio, dynamic, page32, page16, page8), and check the totals against the kernel's own
counters (meminfo, slabinfo, buddyinfo). Without --snapshot: this machine when
/proc/kpageflags is readable (root), otherwise the bundled Linux 6.18 snapshot."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("survey", help="what each stage of the memdesc Path costs here",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--snapshot", metavar="DIR",
                   help="a saved snapshot folder (default: live /proc if readable, else the "
                        "bundled snapshot)")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="write the survey as JSON (docs/survey-json.md) to FILE, or to stdout "
                        "without FILE (then no table is printed)")
    p.add_argument("--plot", metavar="PNG", help="stage costs stacked by type")
    p.add_argument("--map", metavar="PNG", help="picture of physical memory coloured by class")
    p.add_argument("--explain", metavar="STAGE", choices=STAGE_IDS,
                   help=f"print the arithmetic of one stage ({', '.join(STAGE_IDS)})")
    p.add_argument("--descriptors", metavar="FILE",
                   help="descriptor size table (TOML, same keys as the bundled "
                        "memdesc/data/descriptors.toml)")
    p.add_argument("--stages", default="all", metavar="all|a,b",
                   help="stages to cost (default all)")
    add_brief_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from memdesc.analysis.cost import explain
    from memdesc.analysis.descriptors import load_descriptors
    from memdesc.analysis.survey import run_survey
    from memdesc.cli.progress import LazyProgress
    from memdesc.ingest.snapshot import open_snapshot

    stages = stages_option(args.stages)
    for path, what in ((args.json, "json"), (args.plot, "plot"), (args.map, "map")):
        check_output(path, what)
    table = load_descriptors(args.descriptors)
    snapshot = open_snapshot(args.snapshot)
    if snapshot.note:
        print(f"memdesc: {snapshot.note}", file=sys.stderr)
    with LazyProgress("classifying kpageflags", snapshot.pfn_count) as tick:
        result = run_survey(snapshot, stages, table, progress=tick)

    # Render everything first, then write: a failure leaves no output half-done.
    from memdesc.report.json_out import survey_json, write_all
    renderers = []
    if args.json and args.json != "-":
        renderers.append((args.json, lambda r: survey_json(r).encode()))
    if args.plot:
        from memdesc.report.plot import render_costs_png
        renderers.append((args.plot, render_costs_png))
    if args.map:
        from memdesc.report.physmap import render_map_png
        renderers.append((args.map, render_map_png))
    outputs: list[tuple[str, bytes]] = []
    with LazyProgress("rendering outputs", len(renderers), "files") as tick:
        for path, render_fn in renderers:
            outputs.append((path, render_fn(result)))
            tick(1)
    write_all(outputs)      # all or nothing

    if args.json == "-":
        sys.stdout.write(survey_json(result))
        sys.stdout.flush()
    else:
        from memdesc.report.table import render
        render(result, brief=args.brief)
    if args.explain:
        cost = next((c for c in result.costs if c.id == args.explain), None)
        if cost is None:
            from memdesc.analysis.cost import survey_costs
            cost = survey_costs(result.census, [get_stage(args.explain)], table,
                                terms=result.terms)[0]
        from memdesc.report.console import make_console, print_lines
        out = sys.stderr if args.json == "-" else sys.stdout
        con = make_console(out)
        print_lines(["", f"--explain {args.explain}"]
                    + [f"  {line}" for line in explain(cost, result.census, table,
                                                       terms=result.terms)], con)
    return 0
