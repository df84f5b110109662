"""``memdesc simulate``: run a scenario on the emulated kernel at every stage of the Path."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from memdesc.cli.options import check_output, stages_option
from memdesc.errors import InputError
from memdesc.report.console import add_brief_option
from memdesc.stages import REFERENCE, parse_stages

DESCRIPTION = """\
Run a scenario file (docs/scenario-format.md) on the emulated kernel at each stage of the
Path (v6.18, folio, dynamic, page32, page16, page8). Every step's observable results (what
succeeded, folio orders, the data every file, process and pool holds, read back through the
stage's own structures) are recorded and compared with v6.18; the metadata bytes are counted
exactly and also estimated by the survey's cost model from the emulator's census."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="run a workload scenario at every stage of the Path",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", metavar="SCENARIO", help="a scenario file (see examples/)")
    p.add_argument("--stages", default="all", metavar="all|a,b",
                   help="stages to run (default all; v6.18 is always run as the reference)")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="write the results as JSON to FILE, or to stdout without FILE")
    p.add_argument("--plot", metavar="PNG", help="metadata bytes per stage, stacked by type")
    p.add_argument("--check", action="store_true",
                   help="run every invariant check after every step (slow; for debugging)")
    p.add_argument("--fail", action="append", default=[], metavar="ATTR:SETTINGS",
                   help="fault injection, e.g. desc:probability=1,context=atomic or "
                        "page:interval=1000,times=5 (ATTR: failslab, desc, page)")
    add_brief_option(p)
    p.set_defaults(func=run)


def parse_fail(specs: list[str]):
    """``--fail`` options -> a factory of FaultInjection (one fresh state per stage)."""
    from memdesc.mm.fault_inject import FaultAttr, FaultInjection

    attrs: dict[str, FaultAttr] = {}
    for spec in specs:
        name, _, rest = spec.partition(":")
        if name not in FaultInjection.NAMES:
            raise InputError(f"--fail {spec}: attribute must be one of "
                             f"{', '.join(FaultInjection.NAMES)}")
        kw: dict[str, Any] = {}
        for item in filter(None, rest.split(",")):
            key, _, value = item.partition("=")
            try:
                if key in ("probability",):
                    kw[key] = float(value)
                elif key in ("interval", "times", "space", "min_order", "seed"):
                    kw[key] = int(value)
                elif key == "context":
                    kw[key] = value
                elif key == "ignore_gfp_highmem":
                    kw[key] = value.lower() in ("1", "y", "yes", "true")
                else:
                    raise InputError(f"--fail {spec}: unknown setting {key!r}")
            except ValueError:
                raise InputError(f"--fail {spec}: {key}={value!r} is not a number") from None
        try:
            attrs[name] = FaultAttr(**kw)
            attrs[name].row()
        except ValueError as e:
            raise InputError(f"--fail {spec}: {e}") from None
    if not attrs:
        return None
    return lambda: FaultInjection(**attrs)


def with_reference(stages: list) -> list:
    """``stages`` with the reference stage in front when it is not among them."""
    if REFERENCE in [s.id for s in stages]:
        return list(stages)
    return list(parse_stages(REFERENCE)) + list(stages)


def simulate(scenario, stages, *, check: bool = False, fault_factory=None,
             progress=None) -> dict[str, Any]:
    """Run ``scenario`` at ``stages`` (plus the reference) and build the result document."""
    from memdesc.analysis.cost import stage_cost
    from memdesc.analysis.descriptors import load_descriptors
    from memdesc.analysis.scenario import check_scenario, compare_runs, run_stage

    stages = with_reference(stages)
    check_scenario(scenario, stages)
    runs = [run_stage(scenario, s, check=check, fault_factory=fault_factory, progress=progress)
            for s in stages]
    cmp = compare_runs(runs, REFERENCE)
    table = load_descriptors()
    ref_total = next(r.accounting["total_bytes"] for r in runs if r.stage == REFERENCE)
    out_stages: dict[str, Any] = {}
    for st, r in zip(stages, runs, strict=True):
        model = stage_cost(r.census, st, table, scenario.cpus)
        exact = r.accounting["total_bytes"]
        out_stages[r.stage] = {
            "struct_page_bytes_each": st.struct_page_bytes,
            "accounting": r.accounting,
            "peak_metadata_bytes": r.peak_metadata_bytes,
            "saving_bytes": ref_total - exact,
            "saving_percent": round(100.0 * (ref_total - exact) / max(1, ref_total), 3),
            "cost_model": model.to_dict(),
            "cost_model_minus_exact_bytes": model.total_bytes - exact,
            "divergences": cmp["divergences"][r.stage],
            "stats": r.stats,
            "seconds": round(r.seconds, 3),
            "steps": r.steps,
            "final_state": r.final_state,
            "census": r.census.to_dict(),
        }
    return {"scenario": scenario.name, "machine": scenario.machine, "cpus": scenario.cpus,
            "seed": scenario.seed, "reference": REFERENCE,
            "identical_across_stages": cmp["identical_across_stages"],
            "divergence_counts": cmp["divergence_counts"], "stages": out_stages}


def run(args: argparse.Namespace) -> int:
    from memdesc.analysis.scenario import check_scenario, load_scenario
    from memdesc.atomic import atomic_file
    from memdesc.cli.progress import LazyProgress
    from memdesc.report import simulate_out

    stages = stages_option(args.stages)
    check_output(args.plot, "plot")
    check_output(args.json, "json")
    scenario = load_scenario(args.scenario)
    factory = parse_fail(args.fail)
    run_stages = with_reference(stages)
    check_scenario(scenario, run_stages)         # before any work
    total = len(scenario.steps) * len(run_stages)
    with LazyProgress("simulating", total, unit="steps") as tick:
        doc = simulate(scenario, stages, check=args.check, fault_factory=factory,
                       progress=tick)
    text = json.dumps(doc, indent=1, sort_keys=False) + "\n" if args.json else None
    png = simulate_out.render_png(doc) if args.plot else None
    if args.json and args.json != "-":
        with atomic_file(args.json) as f:
            f.write(text)
    if args.plot:
        with atomic_file(args.plot, "wb") as f:
            f.write(png)
    if args.json == "-":
        sys.stdout.write(text)
    else:
        simulate_out.render(doc, brief=args.brief)
    return 0
