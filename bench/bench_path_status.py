"""path-status on a whole kernel tree, side by side with Coccinelle on one rule.

The tree is found by path: ``MEMDESC_KERNEL_TREE`` (or the first argument of this file run as
a script), else /usr/src/linux-source-6.12 when extracted there; the benchmark skips with a
line when there is none. Both tools run in this process's run, one after the other, each as its
own child process on ``MEMDESC_BENCH_JOBS`` (2) cores:

- ``memdesc path-status TREE --json`` (all rules, the whole tree): wall time and the peak RSS
  of its largest process (the parent or one of the forked workers);
- Coccinelle (spatch) with ``struct page *p; p->mapping|index|private|lru`` over the files
  that mention ``page`` and one of those ``->field`` tokens (its file prefilter, timed with it);

then the agreement on that rule per top-level directory, and the count of disagreements by
cause (docs/path-status.md lists them). ``MEMDESC_BENCH_SPATCH=0`` skips Coccinelle.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from memdesc.analysis.cocci_compare import compare
from memdesc.analysis.path_status import ScanStats, Site, TreeStatus
from memdesc.errors import MemdescError
from memdesc.ingest import coccinelle
from memdesc.ingest.ktree import KernelTree

#: The figure the issue gives for spatch on mm/, fs/, arch/ and drivers/ (about 90 s).
ISSUE_SPATCH_SECONDS = 90.0


def _tree() -> Path | None:
    for cand in (os.environ.get("MEMDESC_KERNEL_TREE"), *sys.argv[1:2],
                 "/usr/src/linux-source-6.12"):
        if cand and (Path(cand) / "MAINTAINERS").exists():
            return Path(cand)
    return None


def _timed(cmd: list[str], cwd: Path | None = None) -> tuple[float, float, float, str]:
    """Wall seconds, CPU seconds (user + system, the child and every process it waited for),
    peak RSS (MiB) of the largest of those processes, stdout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
        err.seek(0)
        last = (err.read().decode("utf-8", "replace").strip().splitlines() or [""])[-1]
    if proc.returncode != 0:
        raise MemdescError(f"{cmd[0]} exited {proc.returncode}: {last}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, text


def _status_from_json(tree: KernelTree, doc: dict) -> TreeStatus:
    fields = ("file", "line", "step", "rule", "kind", "name", "via", "descriptor", "code")
    sites = [Site(*(s[f] for f in fields), s["access"]) for s in doc["sites"]]
    return TreeStatus(tree, sites, ScanStats(**{k: v for k, v in doc["scan"].items()}))


def main() -> None:
    root = _tree()
    if root is None:
        print("bench: path_status.tree = skipped (set MEMDESC_KERNEL_TREE to an extracted "
              "kernel tree, e.g. linux-source-6.12)")
        return
    jobs = int(os.environ.get("MEMDESC_BENCH_JOBS", "2"))
    tree = KernelTree.open(root)
    print(f"bench: path_status.tree = {tree.root} ({tree.version})")
    with tempfile.TemporaryDirectory(prefix="memdesc-bench-") as tmp:
        out = Path(tmp) / "ps.json"
        cmd = [sys.executable, "-c", "import sys; from memdesc.cli import main; "
               "sys.exit(main(sys.argv[1:]))", "path-status", str(root), "--json", str(out),
               "--jobs", str(jobs)]
        secs, cpu, rss, _ = _timed(cmd)
        doc = json.loads(out.read_text())
    print(f"bench: path_status.whole_tree_all_rules = {secs:.1f} s "
          f"({len(doc['sites']):,} sites, {doc['scan']['parsed']:,} of "
          f"{doc['scan']['files']:,} files parsed, {jobs} processes)")
    print(f"bench: path_status.cpu_time = {cpu:.1f} s (user + system, all processes)")
    print(f"bench: path_status.peak_rss = {rss:.0f} MiB (largest process)")

    if os.environ.get("MEMDESC_BENCH_SPATCH", "1") == "0" or coccinelle.spatch_version() is None:
        print("bench: path_status.spatch = skipped (no spatch, or MEMDESC_BENCH_SPATCH=0)")
        return
    start = time.perf_counter()
    files = coccinelle.candidates(tree.root, tree.c_files())
    prefilter = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="memdesc-cocci-") as tmp:
        cocci, groups = coccinelle.write_inputs(Path(tmp), files)
        secs_c, cpu_c, rss_c, stdout = _timed(coccinelle.spatch_command(cocci, groups, jobs),
                                       cwd=tree.root)
    found = coccinelle.parse_sites(stdout, tree.root)
    total_c = prefilter + secs_c
    print(f"bench: path_status.spatch_one_rule = {total_c:.1f} s ({len(files):,} files after "
          f"a {prefilter:.1f} s prefilter, {sum(found.values()):,} matches, {jobs} jobs)")
    print(f"bench: path_status.spatch_cpu_time = {cpu_c:.1f} s (user + system, all processes)")
    print(f"bench: path_status.spatch_peak_rss = {rss_c:.0f} MiB (largest process)")
    print(f"bench: path_status.speedup_vs_spatch = {total_c / secs:.2f} x "
          f"(all rules vs one; the issue's spatch figure: {ISSUE_SPATCH_SECONDS:.0f} s for "
          f"mm/ fs/ arch/ drivers/)")

    result = compare(_status_from_json(tree, doc), found, files, jobs)
    for d in result.directories():
        print(f"bench: path_status.agreement.{d} = {100 * result.agreement(d):.1f} % "
              f"(both {result.both[d]}, only path-status {result.ours_only[d]}, "
              f"only spatch {result.cocci_only[d]})")
    print(f"bench: path_status.agreement = {100 * result.agreement():.1f} %")
    macro = sum(1 for d in result.disagreements if d.kind == "member named in macro arguments")
    both = sum(result.both.values())
    rest = len(result.disagreements) - macro
    print(f"bench: path_status.agreement_on_arrow_syntax = {100 * both / (both + rest):.1f} % "
          f"(leaving out the {macro} members named in macro arguments, which p->f cannot match)")
    causes: dict[tuple[str, str], int] = {}
    for d in result.disagreements:
        causes[(d.found_by, d.kind)] = causes.get((d.found_by, d.kind), 0) + 1
    for (who, kind), n in sorted(causes.items(), key=lambda kv: -kv[1]):
        print(f"bench: path_status.disagreement[{who}: {kind}] = {n}")
    if os.environ.get("MEMDESC_BENCH_LIST"):
        for d in result.disagreements:
            print(f"  {d.file}:{d.line}: only {d.found_by}: {d.cause} | {d.code}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    main()
