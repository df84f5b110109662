"""``memdesc timing``: what each stage costs in time, per kernel operation (docs/timing.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from memdesc.cli.options import check_output, stages_option
from memdesc.errors import InputError
from memdesc.report.console import add_brief_option

DESCRIPTION = """\
Run a trace (a recording folder or trace file, as `memdesc replay` reads) or a scenario file
(as `memdesc simulate` reads) at each stage with metadata access accounting on, and report
per kernel operation class: operations, loads, stores, 64-byte lines, the dependent-load
chain, misses of a modelled cache hierarchy (this machine's caches from sysfs, or --cache)
and, measured natively on this CPU, ns per operation and the ratio to v6.18."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("timing", help="metadata accesses, dependent loads, cache misses and "
                                      "native ns per kernel operation at every stage",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       usage="memdesc timing SOURCE [--stages all] [--json [FILE]] "
                             "[--plot PNG] [--cache SPEC] [--mode placement|policy] "
                             "[--snapshot DIR] [--no-native] [--repeats N] [--brief]")
    p.add_argument("source", metavar="SOURCE", type=Path,
                   help="a trace folder or file, or a .scenario file")
    p.add_argument("--stages", default="all", metavar="all|a,b",
                   help="stages to run (default all; v6.18 is always run as the reference)")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="write the results as JSON to FILE, or to stdout without FILE")
    p.add_argument("--plot", metavar="PNG", help="per operation class and stage: chain, "
                                                 "lines, last-level misses, native ns")
    p.add_argument("--cache", metavar="SPEC",
                   help="cache levels replacing this machine's, e.g. "
                        "L1=48K/12,L2=2M/16,L3=32M/16 (NAME=SIZE/WAYS[/LINE][/victim])")
    p.add_argument("--mode", choices=("placement", "policy"), default="policy",
                   help="trace replay mode (see memdesc replay). Default policy: the "
                        "emulated allocator serves every request, so its operations are "
                        "counted; placement moves the trace's PFNs on the lists directly "
                        "and counts none")
    p.add_argument("--snapshot", metavar="DIR", type=Path,
                   help="start a trace recorded without a pre-snapshot from this one")
    p.add_argument("--no-native", action="store_true",
                   help="skip the native measurement (no ns columns)")
    p.add_argument("--repeats", type=int, default=5, metavar="N",
                   help="native measurement repeats (default 5)")
    add_brief_option(p)
    p.set_defaults(func=run)


def _trace_input(args: argparse.Namespace, stages):
    """The replay input of a trace SOURCE (what `memdesc replay` reads)."""
    from memdesc.analysis.replay import load_replay_input
    from memdesc.cli.progress import LazyProgress
    from memdesc.ingest.ftrace import read_trace, trace_input_bytes
    from memdesc.ingest.snapshot import open_snapshot

    with LazyProgress("reading trace", trace_input_bytes(args.source), unit="bytes") as tick:
        tr = read_trace(args.source, progress=tick)
    if not len(tr):
        raise InputError(f"{args.source}: the trace holds no kmem events to replay")
    snap_dir = args.snapshot or tr.snapshot_dir
    if snap_dir is None:
        raise InputError(f"{args.source}: no pre-snapshot in this recording; pass --snapshot "
                         "DIR (a `memdesc snapshot save` folder of the same machine)")
    with LazyProgress("reading the snapshot", open_snapshot(snap_dir).pfn_count) as tick:
        return load_replay_input(tr, snap_dir, progress=tick, stages=stages)


def _native_run(stages, nr_pfns: int, wanted: bool):
    """A native_timing.NativeRun for ``stages``, or None when not wanted or not built."""
    if not wanted:
        return None
    try:
        from memdesc.analysis.native_timing import NativeRun
    except ModuleNotFoundError as e:           # the native helper not merged yet
        if e.name != "memdesc.analysis.native_timing":
            raise
        return None
    return NativeRun(stages, nr_pfns)


def run(args: argparse.Namespace) -> int:
    from memdesc.analysis import timing
    from memdesc.analysis.cache_model import machine_caches
    from memdesc.cli.progress import LazyProgress
    from memdesc.cli.simulate import with_reference
    from memdesc.report import timing_out
    from memdesc.report.json_out import write_all

    stages = with_reference(stages_option(args.stages))
    check_output(args.plot, "plot")
    check_output(args.json, "json")
    if args.repeats < 1:
        raise InputError(f"--repeats must be at least 1, not {args.repeats}")
    kind = timing.source_kind(args.source)
    caches = machine_caches(spec=args.cache)
    if kind == "scenario":
        scenario, nr_pfns = timing.load_scenario_source(args.source, stages)
        total = len(scenario.steps)
    else:
        inp = _trace_input(args, stages)
        nr_pfns, total = inp.machine.nr_pfns, len(inp.ops)
    collector = timing.TimingCollector(stages, caches,
                                       _native_run(stages, nr_pfns, not args.no_native))
    with LazyProgress("running with access accounting", total * len(stages),
                      unit="steps" if kind == "scenario" else "ops") as tick:
        if kind == "scenario":
            source = timing.run_scenario_timing(scenario, stages, collector, nr_pfns, tick)
        else:
            source = timing.run_trace_timing(inp, stages, collector, args.mode, tick)
    native = None
    if collector.native is not None:
        with LazyProgress("measuring natively", args.repeats, unit="repeats") as tick:
            native = collector.native.measure(args.repeats,
                                              progress=lambda done, _total: tick(1))
    doc = timing.timing_doc(collector, source, native)
    outputs = []
    if args.json and args.json != "-":
        outputs.append((args.json, timing_out.doc_json(doc)))
    if args.plot:
        from memdesc.report.timing_plot import render_png
        outputs.append((args.plot, render_png(doc)))
    write_all(outputs)
    if args.json == "-":
        sys.stdout.write(timing_out.doc_json(doc).decode())
        return 0
    timing_out.render(doc, brief=args.brief)
    for what, path in (("plot", args.plot), ("json", args.json)):
        if path:
            print(f"{what}: {path}")
    return 0
