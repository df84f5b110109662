"""``memdesc path-status KERNEL_TREE [OLD_TREE NEW_TREE]``: what still blocks each step of the
Path in real kernel source, who owns it, and the progress between two trees."""

from __future__ import annotations

import argparse
import os
import sys

from memdesc.cli.options import check_output

DESCRIPTION = """\
Scan a kernel source tree with a C parser (tree-sitter) and count, per step of the memdesc
Path, the uses that still block it: struct page fields used on expressions whose type really
is struct page *, PageFoo() calls, bh->b_page, &folio->page, casts between struct page and
descriptors, page->private outside mm/. Each site is attributed to its subsystem and to the
MAINTAINERS entry of the tree itself. With two trees (OLD NEW), the progress between them:
per step, the sites removed and added. Rules and JSON schema: docs/path-status.md."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("path-status", help="what still blocks each step of the Path in a "
                       "kernel tree, and who owns it", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trees", nargs="+", metavar="TREE",
                   help="a kernel source tree, or two (OLD NEW) for the progress between them")
    p.add_argument("--json", metavar="FILE", help="write every site as JSON (- for stdout)")
    p.add_argument("--plot", metavar="PNG",
                   help="remaining sites per step by subsystem (and progress with two trees)")
    p.add_argument("--by", choices=("subsystem", "maintainer", "file"), default="subsystem",
                   help="group the table by subsystem (default), MAINTAINERS entry, or file "
                        "(the worklist, with line numbers)")
    p.add_argument("--top", type=int, default=15, metavar="N", help="rows to show (15)")
    p.add_argument("--jobs", "-j", type=int, default=min(2, os.cpu_count() or 1),
                   metavar="N", help="processes (default 2)")
    p.add_argument("--no-prefilter", action="store_true",
                   help="parse every file that mentions page (slower; for checking)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except KeyboardInterrupt:
        # The workers are gone already (path_status._parallel); freeing the tree-wide index at
        # interpreter exit would take another second or two, and nothing is left to clean up.
        print("memdesc: interrupted", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)


def _run(args: argparse.Namespace) -> int:
    from memdesc.analysis.path_status import attach_owners, progress_between, scan
    from memdesc.cli.progress import LazyProgress
    from memdesc.errors import InputError
    from memdesc.ingest.ktree import KernelTree
    from memdesc.report import path_status_out as out
    from memdesc.report.json_out import write_bytes

    if len(args.trees) > 2:
        raise InputError("path-status takes one tree, or two (OLD NEW)")
    if args.top < 1 or args.jobs < 1:
        raise InputError("--top and --jobs must be at least 1")
    check_output(args.json, "json")
    check_output(args.plot, "plot")
    trees = [KernelTree.open(t) for t in args.trees]  # all checked before any work

    def bar(description: str, total: int) -> LazyProgress:
        return LazyProgress(description, total, unit="files")

    statuses = []
    for tree in trees:
        status = scan(tree, args.jobs, bar, prefilter=not args.no_prefilter)
        attach_owners(status)
        statuses.append(status)
    new = statuses[-1]
    old = statuses[0] if len(statuses) == 2 else None
    rows = removed = added = None
    if old is not None:
        rows, removed, added = progress_between(old, new)

    text = out.render(new, args.by, args.top)
    if old is not None:
        text = out.render_progress(old, new, rows) + "\n\n" + text
    outputs = []
    if args.json:
        outputs.append((args.json, out.to_json(out.document(new, old, rows, removed, added))))
    if args.plot:
        outputs.append((args.plot, out.render_png(new, old, rows)))
    for path, data in outputs:
        if path == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        else:
            write_bytes(path, data)
    if args.json != "-":
        print(text)
    return 0
