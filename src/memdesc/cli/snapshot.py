"""``memdesc kpageflags`` and ``memdesc snapshot save``."""

from __future__ import annotations

import argparse
import sys

from memdesc.errors import PermissionProblem
from memdesc.ingest.snapshot import CHUNK_PFNS, PROC, live_pfn_count, open_snapshot


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "kpageflags", help="flag combinations of every PFN, as tools/mm/page-types -r prints them",
        description="Count the PFNs of each /proc/kpageflags value and print the table of the "
                    "kernel's tools/mm/page-types -r (default: this machine if root, else the "
                    "bundled snapshot).")
    p.add_argument("--snapshot", metavar="DIR",
                   help="a snapshot folder ('bundled' for the bundled one; default: this machine)")
    p.add_argument("--well-known", action="store_true",
                   help="page-types without -r: hide kernel-internal and non-hugetlb compound bits")
    p.set_defaults(func=run_kpageflags)

    s = sub.add_parser("snapshot", help="capture this machine's physical memory state",
                       description="Snapshot commands.")
    ssub = s.add_subparsers(dest="snapshot_command", metavar="COMMAND", required=True)
    save = ssub.add_parser(
        "save", help="save /proc/kpage* and the /proc memory files into a new folder (root)",
        description="Capture kpageflags/kpagecount/kpagecgroup of every PFN and the /proc "
                    "memory files before and after, into DIR (created; never overwritten).")
    save.add_argument("dir", metavar="DIR", help="new folder to create")
    save.add_argument("--no-compress", action="store_true",
                      help="write raw NAME.bin files (8 bytes per PFN each) instead of zstd")
    save.add_argument("--chunk-pfns", type=int, default=CHUNK_PFNS, metavar="N",
                      help=f"PFNs read per chunk (default {CHUNK_PFNS})")
    save.set_defaults(func=run_save)


def run_kpageflags(args: argparse.Namespace) -> int:
    from memdesc.cli.progress import LazyProgress
    from memdesc.ingest.kpageflags import flag_counts, page_types_r_table, page_types_table

    snap = open_snapshot(args.snapshot)
    if snap.note:
        print(f"memdesc: {snap.note}", file=sys.stderr)
    with LazyProgress("counting kpageflags", snap.pfn_count) as tick:
        counts = flag_counts(snap, tick=tick)
    table = page_types_table(counts) if args.well_known else page_types_r_table(counts)
    sys.stdout.write(table)
    return 0


def run_save(args: argparse.Namespace) -> int:
    from memdesc.cli.progress import LazyProgress
    from memdesc.ingest.save import save_snapshot

    try:
        total = live_pfn_count()
    except PermissionProblem:
        # snapshot save has no --snapshot: it captures this machine, which needs root.
        raise PermissionProblem(
            f"snapshot save reads {PROC}/kpageflags, which only root may read: run it as "
            f"root (e.g. sudo ./memdesc.sh snapshot save {args.dir})") from None
    with LazyProgress("saving snapshot", total) as tick:
        path = save_snapshot(args.dir, compress=not args.no_compress,
                             chunk_pfns=args.chunk_pfns, tick=tick)
    print(f"memdesc: saved {path}", file=sys.stderr)
    return 0
