"""``memdesc fleet survey``: the survey of many machines' snapshots, on Dask (docs/fleet.md)."""

from __future__ import annotations

import argparse
import atexit
import gc
import sys
import time
from pathlib import Path

from memdesc.cli.options import check_output

DESCRIPTION = """\
Survey every snapshot found under INPUT with the same code as `memdesc survey`:
snapshot folders as `memdesc snapshot save` writes them, folders holding them at
any depth, globs, and the public fleet study's HOST/MM-DD-YYYY-HH-MM-SS/ folders
(kpageflags.gz). Runs on Dask: locally on every core by default, or on a running
dask.distributed cluster with --scheduler. Prints the fleet's answer (each
stage's saving across machines, over memory in use and the whole machine) and
writes per-machine tables and plots. A snapshot that cannot be surveyed is
listed with its reason and the run goes on: exit 0 when at least one snapshot
was surveyed, 2 when none could be."""

EPILOG = """\
examples:
  memdesc fleet survey /data/snapshots/ --json fleet.json --csv machines.csv
  memdesc fleet survey 'dc1/*/' 'dc2/*/' --scheduler tcp://head:8786 \\
      --group-by 'host:^(dc\\d+)'
cache: per-snapshot results are kept by content hash in
$XDG_CACHE_HOME/memdesc/fleet (~/.cache/memdesc/fleet), so a re-run redoes only
what is missing (--cache DIR, --no-cache). More in docs/fleet.md."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fleet", help="survey many machines' snapshots on Dask",
                       description="Fleet-scale commands (docs/fleet.md).")
    fsub = p.add_subparsers(dest="fleet_command", metavar="COMMAND")
    s = fsub.add_parser("survey", help="the survey of every snapshot under INPUT, and the "
                                       "fleet's answer",
                        description=DESCRIPTION, epilog=EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="snapshot folders, folders holding them (searched recursively), globs")
    s.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="the fleet as JSON (docs/fleet-json.md) to FILE, or to stdout without "
                        "FILE (then no table is printed)")
    s.add_argument("--csv", metavar="FILE", help="one row per surveyed machine")
    s.add_argument("--parquet", metavar="FILE", help="the same rows as Parquet (needs pyarrow)")
    s.add_argument("--plot", metavar="PNG", help="savings CDF, metadata per stage, folio orders")
    s.add_argument("--group-by", metavar="host|label[:REGEX]",
                   help="also answer per group: the host name or the workload label, or the "
                        "first capture group of REGEX searched in it")
    s.add_argument("--scheduler", metavar="ADDRESS",
                   help="a running dask.distributed scheduler (tcp://HOST:8786); default: a "
                        "local run on every core")
    s.add_argument("--workers", type=int, metavar="N",
                   help="workers of the local run (default: one per core)")
    s.add_argument("--local", choices=("auto", "threads", "processes"), default="auto",
                   help="local workers: threads, worker processes (a LocalCluster: scales, "
                        "costs a few seconds to start), or auto (processes from 32 snapshots "
                        "on; the default)")
    s.add_argument("--cache", metavar="DIR", help="per-snapshot result cache "
                                                  "(default ~/.cache/memdesc/fleet)")
    s.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    s.add_argument("--descriptors", metavar="FILE",
                   help="descriptor size table (TOML, as for `memdesc survey`)")
    s.set_defaults(func=run_survey_cmd)
    p.set_defaults(func=lambda _args: p.print_help() or 2)


def _check_options(args: argparse.Namespace):
    from memdesc.analysis.fleet import GroupBy
    from memdesc.errors import InputError

    for path, what in ((args.json, "json"), (args.csv, "csv"), (args.parquet, "parquet"),
                       (args.plot, "plot")):
        check_output(path, what)
    if args.parquet:
        from memdesc.report.fleet_out import require_parquet  # (imports the survey: numba)
        require_parquet()
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers {args.workers}: give at least 1")
    if args.scheduler and (args.workers is not None or args.local != "auto"):
        raise InputError("--workers and --local set up a local run; with --scheduler the "
                         "cluster's workers do the work (start them with `dask worker`)")
    if args.cache and args.no_cache:
        raise InputError("--cache and --no-cache contradict each other; give one")
    return GroupBy.parse(args.group_by) if args.group_by else None


def _cache(args: argparse.Namespace, descriptors):
    from memdesc.analysis.fleet_cache import ResultCache, default_cache_dir, recipe
    from memdesc.errors import InputError

    root = None
    if not args.no_cache:
        root = Path(args.cache) if args.cache else default_cache_dir()
        if root.exists() and not root.is_dir():
            raise InputError(f"--cache {root} is not a folder; give a folder")
    return ResultCache(root, recipe(descriptors.path))


def _render(args: argparse.Namespace, d: dict) -> list[tuple[str, bytes]]:
    from memdesc.report import fleet_out

    renderers = [(args.json, lambda: fleet_out.fleet_json(d).encode()),
                 (args.csv, lambda: fleet_out.machines_csv(d["machines"])),
                 (args.parquet, lambda: fleet_out.machines_parquet(d["machines"]))]
    if args.plot and d["machines"]:
        from memdesc.report.fleet_plot import render_fleet_png
        renderers.append((args.plot, lambda: render_fleet_png(d)))
    return [(path, fn()) for path, fn in renderers if path and path != "-"]


def _freeze_at_exit() -> None:
    """Freeze every object when the process exits, before the interpreter's teardown: its
    final garbage collections then skip the few hundred thousand objects of numba's typing
    tables and dask, which otherwise cost about half a second on every run (gc.freeze())."""
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)


def run_survey_cmd(args: argparse.Namespace) -> int:
    from memdesc.analysis.descriptors import load_descriptors
    from memdesc.analysis.fleet_engine import plan_fleet, prepare_local, run_fleet
    from memdesc.cli.progress import LazyProgress
    from memdesc.ingest.fleet import find_snapshots

    t0 = time.monotonic()
    _freeze_at_exit()
    group_by = _check_options(args)
    descriptors = load_descriptors(args.descriptors)
    inputs, unlisted = find_snapshots(args.inputs)
    cache = _cache(args, descriptors)
    with LazyProgress("hashing snapshots for the cache", len(inputs), "snapshots") as tick:
        plan = plan_fleet(inputs, cache, tick if cache.root else None)
    # Local worker processes load dask, the survey and numba while we load the rest.
    prepare_local(plan, args.scheduler, args.workers, args.local)
    from memdesc.analysis.fleet import fleet_answer
    from memdesc.report.fleet_out import fleet_dict, fleet_json, render_text
    from memdesc.report.json_out import write_all

    with LazyProgress("surveying snapshots", plan.pending, "snapshots") as tick:
        run = run_fleet(plan, descriptors, args.scheduler, args.workers, tick, args.local)
    failed = [{"source": u.source, "reason": u.reason} for u in unlisted] + run.failed
    d = fleet_dict(run.machines, failed, fleet_answer(run.machines, failed, group_by),
                   args.group_by)
    if run.machines:                     # none surveyed: an error, no output files
        write_all(_render(args, d))      # all rendered before the first byte is written

    if args.json == "-":
        sys.stdout.write(fleet_json(d))
    else:
        sys.stdout.write(render_text(d))
    sys.stdout.flush()
    where = f" ({cache.root})" if cache.root else ""
    print(f"memdesc: {run.surveyed:,} surveyed ({run.engine or 'no engine needed'}), "
          f"{run.cached:,} from the cache{where}, {len(failed):,} failed; "
          f"{time.monotonic() - t0:.1f} s", file=sys.stderr)
    if not run.machines:
        print("memdesc: no snapshot could be surveyed (reasons above); no output written",
              file=sys.stderr)
        return 2
    return 0
