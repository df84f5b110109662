"""``memdesc record`` (trace kmem allocation events into a folder), ``memdesc trace-info``
(read a trace in any supported format and summarise it) and ``memdesc replay`` (replay a trace
through the emulator at every stage of the Path)."""

from __future__ import annotations

import argparse
import gc
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from memdesc.cli.options import check_output, stages_option
from memdesc.errors import InputError
from memdesc.report.console import add_brief_option

if TYPE_CHECKING:
    from memdesc.ingest.ftrace import Trace

#: --samples above this would make a JSON of hundreds of MB that no plot or table can show
MAX_SAMPLES = 10_000
_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "": 1.0}


def parse_duration(text: str) -> float:
    """'30s', '2m', '1h', '500ms' or plain seconds -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(ms|s|min|m|h|)\s*", text)
    if not m or float(m[1]) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30s, 2m, 1h)")
    return float(m[1]) * _UNITS[m[2]]


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser(
        "record", help="trace kmem page (and slab) allocation events into a folder (root)",
        description="Record the kernel's kmem allocation tracepoints in a private tracefs "
                    "instance while COMMAND runs (or for --duration), with a snapshot at the "
                    "start tied to the trace by markers. Writes DIR atomically; the instance "
                    "is removed and tracefs left as found on exit, error, Ctrl-C or SIGTERM.",
        usage="memdesc record -o DIR [--slab] [--lookups] [--buffer-kb N] [--state-every TIME] "
              "[--no-snapshot] "
              "(--duration 30s | -- COMMAND ...)")
    r.add_argument("-o", "--output", required=True, metavar="DIR", type=Path,
                   help="new folder to create (never overwritten)")
    r.add_argument("--slab", action="store_true",
                   help="also record kmem_cache_alloc/kmem_cache_free/kmalloc/kfree")
    r.add_argument("--lookups", action="store_true",
                   help="also record the events of page lookups (page-cache add/delete/read/"
                        "fault/map, LRU insertion/activation, page faults) that the replay "
                        "turns into page_folio/page_zone/flag tests/page-table walks/"
                        "page-cache lookups (docs/replay.md)")
    r.add_argument("--duration", type=parse_duration, metavar="TIME",
                   help="record for this long (30s, 2m, ...) instead of running a command")
    r.add_argument("--buffer-kb", type=int, metavar="N",
                   help="ring buffer per CPU in KB (default: sized for the run, at most a "
                        "quarter of MemAvailable)")
    r.add_argument("--state-every", type=parse_duration, metavar="TIME",
                   help="also save the kernel's free-list state (buddyinfo, pagetypeinfo, "
                        "zoneinfo, meminfo, vmstat) every TIME during the workload, as "
                        "state-N/ linked by a trace marker; the replay checks each")
    r.add_argument("--no-snapshot", action="store_true",
                   help="skip the pre-snapshot of /proc/kpage* (faster, but no start state)")
    r.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS... to trace")
    r.set_defaults(func=run_record)

    i = sub.add_parser(
        "trace-info", help="read a trace (any format) and print counts, CPUs, losses",
        description="Read a recording folder, raw per-CPU pages, tracefs text, trace-cmd "
                    "report or perf script output and print event counts per CPU, duration, "
                    "markers, lost events/overruns and skipped lines.")
    i.add_argument("path", metavar="FILE|DIR", type=Path)
    i.add_argument("--lenient", action="store_true",
                   help="skip (and count) bad lines or pages instead of stopping at the first")
    i.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    i.set_defaults(func=run_trace_info)

    p = sub.add_parser(
        "replay", help="replay a trace through the emulator at every stage (cost, fragmentation)",
        description="Replay a kmem trace through the emulated page allocator, starting from the "
                    "snapshot taken inside the recording. placement: the trace's own PFNs drive "
                    "the emulated buddy and pcp lists and the result is checked against the "
                    "kernel's buddyinfo; policy: only the requests are replayed and the "
                    "emulator places them. Prints metadata bytes and fragmentation per stage "
                    "(docs/replay.md).",
        usage="memdesc replay DIR|FILE [--stages all] [--mode placement|policy] [--plot PNG] "
              "[--ft-plot PNG] [--json [FILE]] [--lenient] [--snapshot DIR] [--samples N] "
              "[--brief]")
    p.add_argument("path", metavar="DIR|FILE", type=Path)
    p.add_argument("--stages", default="all", metavar="all|a,b",
                   help="stages (or variants such as page8/packed) to replay (default all)")
    p.add_argument("--mode", choices=("placement", "policy"), default="placement",
                   help="placement: the trace's PFNs (default); policy: the emulator places")
    p.add_argument("--plot", metavar="PNG", help="metadata and fragmentation over time")
    p.add_argument("--ft-plot", metavar="PNG",
                   help="with two or more free-page tracking options of a stage (--stages "
                        "'page8/*'): their side-by-side comparison as a plot")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="write the results as JSON to FILE, or to stdout without FILE (then no "
                        "table is printed)")
    p.add_argument("--lenient", action="store_true",
                   help="skip (and count) bad lines or pages of the trace")
    p.add_argument("--snapshot", metavar="DIR", type=Path,
                   help="start from this snapshot folder instead of the recording's "
                        "pre-snapshot (needed for traces recorded without one)")
    p.add_argument("--samples", type=int, default=100, metavar="N",
                   help=f"points along the trace where state is sampled (default 100, at most "
                        f"{MAX_SAMPLES:,})")
    add_brief_option(p)
    p.set_defaults(func=run_replay)


def run_record(args: argparse.Namespace) -> int:
    from memdesc.ingest.record import RecordOptions, record

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if args.buffer_kb is not None and args.buffer_kb <= 0:
        raise InputError(f"--buffer-kb must be positive, not {args.buffer_kb}")
    opts = RecordOptions(out=args.output, slab=args.slab, duration_s=args.duration,
                         command=command, buffer_kb=args.buffer_kb,
                         snapshot=not args.no_snapshot, state_every_s=args.state_every,
                         lookups=args.lookups)
    path = record(opts, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(f"memdesc: saved {path}", file=sys.stderr)
    return 0


def summary(tr: Trace) -> dict:
    """Everything trace-info reports, as plain data."""
    import numpy as np

    ev = tr.events
    cpus = sorted(int(c) for c in np.unique(ev["cpu"])) if len(tr) else []
    per_cpu = {}
    for code, name in enumerate(tr.event_names):
        m = ev["event"] == code
        per_cpu[name] = {str(c): int(np.count_nonzero(m & (ev["cpu"] == c))) for c in cpus}
    t = ev["time"]
    return {
        "path": str(tr.path), "format": tr.source_format, "events": len(tr),
        "counts": tr.counts(), "per_cpu": per_cpu, "cpus": cpus,
        "first_ns": int(t[0]) if len(t) else None, "last_ns": int(t[-1]) if len(t) else None,
        "duration_s": tr.duration_ns / 1e9, "markers": len(tr.markers.get("text", [])),
        "quirks": tr.quirks, "other_events": tr.other_events,
        "lost": [lost._asdict() for lost in tr.lost], "overruns": tr.overruns,
        "skipped_lines": tr.skipped_lines, "skipped_where": tr.skipped_where,
        "snapshot_dir": str(tr.snapshot_dir) if tr.snapshot_dir else None,
        "problems": tr.problems(),
    }


def _read(args: argparse.Namespace) -> Trace:
    """The trace at ``args.path``, with a progress bar on a terminal."""
    from memdesc.cli.progress import LazyProgress
    from memdesc.ingest.ftrace import read_trace, trace_input_bytes

    with LazyProgress("reading trace", trace_input_bytes(args.path), unit="bytes") as tick:
        return read_trace(args.path, lenient=args.lenient, progress=tick)


def run_trace_info(args: argparse.Namespace) -> int:
    tr = _read(args)
    s = summary(tr)
    if args.json:
        print(json.dumps(s, indent=1))
        return 0
    cpus = s["cpus"]
    out = [f"trace: {s['path']} ({s['format']})",
           f"events: {s['events']:,} on CPUs {','.join(map(str, cpus)) or '-'} over "
           f"{s['duration_s']:.6f} s"
           + (f" (t={s['first_ns'] / 1e9:.6f} .. {s['last_ns'] / 1e9:.6f} s)"
              if s["first_ns"] is not None else ""),
           "",
           f"{'event':<34}{'total':>12}" + "".join(f"{'cpu' + str(c):>11}" for c in cpus)]
    for name, total in s["counts"].items():
        out.append(f"{name:<34}{total:>12,}"
                   + "".join(f"{s['per_cpu'][name][str(c)]:>11,}" for c in cpus))
    out.append(f"{'markers (trace_marker)':<34}{s['markers']:>12,}")
    out.append("")
    out.append("quirks: " + ", ".join(f"{k}={v:,}" for k, v in s["quirks"].items()))
    if s["other_events"]:
        out.append("other events (ignored): " + ", ".join(
            f"{k}={v:,}" for k, v in sorted(s["other_events"].items())))
    if tr.overruns:
        out.append("ring buffer counters: " + "; ".join(
            f"cpu{c} overrun={v.get('overrun', 0):,} commit_overrun="
            f"{v.get('commit_overrun', 0):,} dropped={v.get('dropped_events', 0):,}"
            for c, v in sorted(tr.overruns.items())))
    out.append(f"loss reports in the trace: {len(tr.lost) or 'none'}; "
               f"skipped lines: {tr.skipped_lines:,}")
    out.extend(f"  ! {p}" for p in s["problems"][:30])
    if len(s["problems"]) > 30:
        out.append(f"  ! ... {len(s['problems']) - 30} more")
    if s["snapshot_dir"]:
        out.append(f"snapshot: {s['snapshot_dir']}")
    print("\n".join(out))
    return 0




def run_replay(args: argparse.Namespace) -> int:
    # Importing numba and loading its cached kernels allocate ~10^6 long-lived objects, and
    # the cyclic collector's passes over them cost 0.3 s, 10 % of a whole replay (perf:
    # gc_collect_main): collect nothing meanwhile. The replay itself leaves ~1,000 cyclic
    # objects (no arrays): everything is frozen (kept, never scanned) rather than collected
    # in one 0.1 s pass when the collector is switched back on.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _run_replay(args)
    finally:
        if enabled:
            gc.freeze()
            gc.enable()


def _run_replay(args: argparse.Namespace) -> int:
    from memdesc.analysis import ft_compare
    from memdesc.analysis.replay import load_replay_input, replay
    from memdesc.cli.progress import LazyProgress
    from memdesc.report import ft_compare_out, replay_out

    stages = stages_option(args.stages)
    if args.samples < 2:
        raise InputError(f"--samples must be at least 2, not {args.samples}")
    if args.samples > MAX_SAMPLES:
        raise InputError(f"--samples {args.samples:,}: at most {MAX_SAMPLES:,} (each sample "
                         "adds about 50 KB of JSON per stage; 10,000 points already exceed "
                         "what a plot or table shows)")
    check_output(args.plot, "plot")
    check_output(args.ft_plot, "ft-plot")
    check_output(args.json, "json")
    if args.ft_plot and ft_compare.groups_of(stages) is None:
        raise InputError("--ft-plot needs two or more free-page tracking options of one "
                         "stage in --stages (e.g. 'page8/*')")
    tr = _read(args)
    if not len(tr):
        raise InputError(f"{args.path}: the trace holds no kmem events to replay")
    snap_dir = args.snapshot or tr.snapshot_dir
    if snap_dir is None:
        raise InputError(f"{args.path}: no pre-snapshot in this recording; the replay starts "
                         "from one: pass --snapshot DIR (a `memdesc snapshot save` folder of "
                         "the same machine)")
    from memdesc.ingest.snapshot import open_snapshot
    snapshot = open_snapshot(snap_dir)
    with LazyProgress("reading the snapshot", snapshot.pfn_count) as tick:
        inp = load_replay_input(tr, snap_dir, progress=tick, stages=stages, snapshot=snapshot)
    if args.snapshot and tr.snapshot_dir is None:
        inp.notes.append(f"the snapshot {args.snapshot} was not taken inside this recording: "
                         "expect the replay to disagree with the trace where the machine "
                         "changed in between")
    with LazyProgress(f"replaying ({args.mode})", len(inp.ops) * len(stages),
                      unit="ops") as tick:
        result = replay(inp, stages, args.mode, args.samples, progress=tick)
    if args.plot:
        replay_out.write_plot(result, args.plot)
    cmp = ft_compare.compare(result)
    if args.ft_plot and cmp is not None:
        ft_compare_out.write_plot(cmp, args.ft_plot)
    if args.json:
        replay_out.write_json(result, args.json)
    if args.json != "-":
        print(replay_out.table(result, brief=args.brief))
        if cmp is not None:
            print(ft_compare_out.table(cmp, brief=args.brief))
        if args.plot:
            print(f"plot: {args.plot}")
        if args.ft_plot:
            print(f"free-tracking plot: {args.ft_plot}")
        if args.json:
            print(f"json: {args.json}")
    return 0
