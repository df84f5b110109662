"""`memdesc fleet survey` on a fleet of 200 snapshots tiled from the real fixtures.

The fleet: 200 folders cycling over the eight real captures of shared/fixtures/fleet (six in our
layout, two in the public fleet study's layout with kpageflags.gz), each its own folder (files
symlinked, uname.txt / info its own) so each is a task of its own; 6,553,600 PFNs each
(1,310,720,000 PFNs = 5 TiB of PFN space in all). No cache (``--no-cache``). The zstd kpage
files are first re-compressed as `memdesc snapshot save` writes them (recording their size; see
:func:`resave`).

Figures, each run once:

* ``fleet.{threads,processes}_{1,2}w.snapshots_per_s`` and ``.pfns_per_s``: whole-process
  figures of the ``memdesc fleet survey`` command (start-up included) on the local engine,
  ``--local threads|processes --workers N`` (processes: a LocalCluster of N single-threaded
  worker processes, its start-up included);
* ``fleet.{threads,processes}_{1,2}w.cores_used``: the CPU time of the command and its worker
  processes over its wall time;
* ``fleet.{threads,processes}.scaling_1_to_2``: the 2-worker rate over the 1-worker rate
  (target >= 1.7 on 2 cores), and ``.scaling_ceiling_2_cores``: what it would be if the
  2-worker run kept both cores busy all along (2 x wall of the 1-worker run / CPU time of the
  2-worker run): the 1-worker run already uses more than one core (the survey's read-ahead
  thread decompresses while the kernel classifies; Dask's own threads), and the 2-worker run
  has serial parts (start-up, the end);
* ``fleet.{threads,processes}.cpu_per_snapshot``: with one worker, the CPU time of the
  surveying process during a survey (the read-ahead thread included), per snapshot, and
  ``fleet.processes_vs_threads.cpu_per_snapshot_ratio``: a survey in a worker process against
  one on a thread of the command (1.0: a worker process costs nothing extra);
* ``fleet.{threads,processes}.dask_overhead_per_snapshot``: with one worker, (wall time of
  ``survey_fleet`` − Σ time inside the tasks) / snapshots: scheduling, transfer, client work
  (processes: on a LocalCluster started and warmed beforehand), and the CPU time of every
  process of the run outside the surveys / snapshots (processes: the command's, which holds
  the scheduler, and the worker's);
* ``fleet.processes.peak_rss_per_worker``: ru_maxrss of that worker after 50 snapshots, and
  ``fleet.processes_1tib.peak_rss_per_worker`` after surveying the synthetic 1 TiB snapshot of
  bench_survey.py (2 GiB of temporary disk; target < 1024 MiB).

The machine this runs on is shared: figures vary with its load (``fleet.load_average``).
"""

from __future__ import annotations

import importlib.util
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FIXTURES = Path(os.environ.get("MEMDESC_FIXTURES", REPO.parent / "shared" / "fixtures"))
SNAPSHOTS = 200
PFNS = 6_553_600


def _captures() -> list[Path]:
    fleet = FIXTURES / "fleet"
    return sorted(p.parent for p in fleet.rglob("kpageflags.*"))


def resave(captures: list[Path], dest: Path) -> list[Path]:
    """The captures with their .zst kpage files re-compressed as `memdesc snapshot save`
    writes them (frames that record their content size, ingest/save.py): the fixtures' older
    capture script did not record it, which makes opening them decompress every kpage file
    once just to count its PFNs. gzip files (the study's layout) stay as they are."""
    import zstandard

    out = []
    for src in captures:
        folder = dest / src.parent.name / src.name
        folder.mkdir(parents=True)
        for f in src.iterdir():
            if f.name.endswith(".bin.zst"):
                data = zstandard.ZstdDecompressor().stream_reader(f.open("rb")).read()
                (folder / f.name).write_bytes(zstandard.ZstdCompressor(
                    level=3, write_checksum=True, write_content_size=True).compress(data))
            else:
                (folder / f.name).symlink_to(f)
        out.append(folder)
    return out


def make_fleet(dest: Path, n: int, captures: list[Path]) -> Path:
    """``n`` distinct snapshot folders cycling over ``captures``."""
    for i in range(n):
        src = captures[i % len(captures)]
        folder = dest / f"host{i:03d}" / src.name
        folder.mkdir(parents=True)
        for f in src.iterdir():
            if f.name not in ("uname.txt", "info"):
                (folder / f.name).symlink_to(f.resolve())
        ident = "info" if (src / "info").exists() else "uname.txt"
        first = "" if ident == "uname.txt" else f"host{i:03d}\n"
        (folder / ident).write_text(f"{first}Linux host{i:03d} 6.18.44-fc-v669\n")
    return dest


def _memdesc() -> str:
    return shutil.which("memdesc", path=str(Path(sys.executable).parent)) or "memdesc"


def _cpu(who: int = resource.RUSAGE_SELF) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _cli(fleet: Path, *extra: str) -> tuple[float, float]:
    """Wall and CPU time (the command and the worker processes it reaps) of one command."""
    t, cpu = time.perf_counter(), _cpu(resource.RUSAGE_CHILDREN)
    subprocess.run([_memdesc(), "fleet", "survey", str(fleet), "--no-cache", "--json",
                    os.devnull, *extra], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t, _cpu(resource.RUSAGE_CHILDREN) - cpu


def _rates(name: str, n: int, wall: float, cpu: float) -> float:
    rate = n / wall
    print(f"bench: fleet.{name}.snapshots_per_s = {rate:.2f} snapshots/s ({wall:.1f} s)",
          flush=True)
    print(f"bench: fleet.{name}.pfns_per_s = {rate * PFNS:,.0f} PFN/s", flush=True)
    print(f"bench: fleet.{name}.cores_used = {cpu / wall:.2f} cores ({cpu:.1f} s CPU)",
          flush=True)
    return rate


def _warm_up(fleet: Path) -> None:
    """Survey ``fleet`` in this process, which loads the compiled kernels once."""
    from memdesc.analysis.descriptors import load_descriptors
    from memdesc.analysis.fleet import survey_task

    for folder in sorted(fleet.glob("*/*")):
        survey_task(str(folder), load_descriptors())


def _workers_cpu(client) -> float:
    return sum(client.run(_cpu).values()) if client else 0.0


def _overhead(name: str, fleet: Path, client=None) -> float:
    """Dask's overhead per snapshot with one worker (a thread of this process, or the one
    worker of ``client``'s cluster); returns the CPU time per survey."""
    from memdesc.analysis.descriptors import load_descriptors
    from memdesc.analysis.fleet_cache import ResultCache, recipe
    from memdesc.analysis.fleet_engine import survey_fleet
    from memdesc.ingest.fleet import find_snapshots

    inputs, _ = find_snapshots([str(fleet)])
    n = len(inputs)
    d = load_descriptors()
    scheduler = client.scheduler.address if client else None
    t, cpu, workers = time.perf_counter(), _cpu(), _workers_cpu(client)
    run = survey_fleet(inputs, d, ResultCache(None, recipe(d.path)), scheduler=scheduler,
                       workers=None if scheduler else 1, local="threads")
    wall = time.perf_counter() - t
    cpu = _cpu() - cpu + _workers_cpu(client) - workers
    per = (wall - run.task_seconds) / n
    print(f"bench: fleet.{name}.cpu_per_snapshot = {run.task_cpu_seconds / n * 1000:.1f} ms "
          f"(1 worker, {n} snapshots)", flush=True)
    print(f"bench: fleet.{name}.dask_overhead_per_snapshot = {per * 1000:.1f} ms wall, "
          f"{(cpu - run.task_cpu_seconds) / n * 1000:.1f} ms CPU (wall {wall:.1f} s, inside "
          f"surveys {run.task_seconds:.1f} s; CPU {cpu:.1f} s, inside surveys "
          f"{run.task_cpu_seconds:.1f} s)", flush=True)
    return run.task_cpu_seconds / n


def _thread_cpu(fn) -> tuple[float, float, float]:
    """Wall time, CPU time of this process (every thread) and of this thread, of ``fn()``."""
    t, cpu, mine = time.perf_counter(), _cpu(), time.thread_time()
    fn()
    return time.perf_counter() - t, _cpu() - cpu, time.thread_time() - mine


def _read_all(folder: Path) -> list[tuple]:
    """The kpage chunks a survey of ``folder`` classifies, read and decompressed."""
    from memdesc.ingest.snapshot import open_folder

    snap = open_folder(folder)
    names = [n for n in ("kpageflags", "kpagecgroup") if snap.has(n)]
    return [(s, *(a[n] for n in names)) for s, a in snap.chunks(names)]


def _breakdown(captures: list[Path], reps: int = 3) -> None:
    """Where one survey's CPU goes, per capture, in this process (malloc tuned as a worker's):
    the whole task, its main thread, its read-ahead thread (the rest), the kpage files'
    opening and decompression, and the classification kernel alone. The main thread runs the
    parsing, the kernel and the cost model; the read-ahead thread decompresses the next chunk
    meanwhile, so one survey alone takes about ``main - kernel + max(kernel, read-ahead)`` and
    keeps ``cpu / that`` cores busy: two workers on two cores can give at most
    ``2 x that / cpu`` times one (before Dask's own work), whatever the engine does."""
    from memdesc.analysis.classify import classify_chunks
    from memdesc.analysis.descriptors import load_descriptors
    from memdesc.analysis.fleet import survey_task
    from memdesc.analysis.fleet_local import tune_malloc
    from memdesc.analysis.survey import layout_of
    from memdesc.ingest import kpagefile
    from memdesc.ingest.snapshot import open_folder

    tune_malloc()
    d = load_descriptors()
    rows, crit, total = [], 0.0, 0.0
    for folder in captures:
        survey_task(str(folder), d)                                   # warm
        task = [_thread_cpu(lambda f=folder: survey_task(str(f), d)) for _ in range(reps)]
        read = min(_thread_cpu(lambda f=folder: _read_all(f))[1] for _ in range(reps))
        chunks, layout = _read_all(folder), layout_of(open_folder(folder))[0]
        kernel = min(_thread_cpu(lambda c=chunks, x=layout: classify_chunks(c, x))[1]
                     for _ in range(reps))
        cpu = sum(t[1] for t in task) / reps
        main = sum(t[2] for t in task) / reps
        ahead = cpu - main
        path = main - kernel + max(kernel, ahead)
        crit, total = crit + path, total + cpu
        codec = kpagefile.kpage_file(*_flags_file(folder)).codec
        rows.append((folder.name, codec, cpu, main, ahead, read, kernel, path))
    for name, codec, cpu, main, ahead, read, kernel, path in rows:
        print(f"bench: fleet.survey.{name}.cpu = {cpu * 1000:.1f} ms ({codec}; main thread "
              f"{main * 1000:.1f}, read-ahead {ahead * 1000:.1f}; open+read+decompress "
              f"{read * 1000:.1f}, kernel {kernel * 1000:.1f}; alone ~{path * 1000:.1f} ms)",
              flush=True)
    n = len(rows)
    print(f"bench: fleet.survey.cpu_per_snapshot = {total / n * 1000:.1f} ms (mean of the "
          f"captures; one survey alone ~{crit / n * 1000:.1f} ms, {total / crit:.2f} cores)",
          flush=True)
    print(f"bench: fleet.survey.scaling_ceiling_2_cores = {2 * crit / total:.2f} x (2 workers "
          "over 1, from the read-ahead overlap alone, before Dask's work)", flush=True)


def _flags_file(folder: Path) -> tuple[Path, str]:
    from memdesc.ingest.kpagefile import KPAGE_FORMS

    return next((folder / f"kpageflags{end}", codec) for end, codec in KPAGE_FORMS
                if (folder / f"kpageflags{end}").exists())


def _inflate(captures: list[Path], reps: int = 3) -> None:
    """Opening and reading the study layout's kpageflags.gz (sized by a first inflate, then
    streamed), with zlib-ng (the reader's) and with the standard zlib."""
    import zlib

    from memdesc.ingest import kpagefile

    gz = [c for c in captures if (c / "kpageflags.gz").exists()]
    if not gz:
        return
    ng = kpagefile.inflate
    try:
        for mod in dict.fromkeys((ng, zlib)):       # ng is zlib where zlib-ng is absent
            kpagefile.inflate = mod
            ms = min(_thread_cpu(lambda: [_read_all(c) for c in gz])[1] for _ in range(reps))
            print(f"bench: fleet.gzip_snapshot.open_and_read_{mod.__name__.split('.')[-1]} = "
                  f"{ms / len(gz) * 1000:.1f} ms", flush=True)
    finally:
        kpagefile.inflate = ng


def _peak_rss_mib(client) -> float:
    peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return max(peaks.values()) / 1024


def _cluster(n: int):
    """The local run's own LocalCluster (its malloc settings and configuration)."""
    from distributed import Client

    from memdesc.analysis.fleet_engine import _local_cluster

    cluster = _local_cluster(n)
    return cluster, Client(cluster)


def _scaling(kind: str, fleet: Path) -> None:
    """The command on 1 then 2 local workers of ``kind`` (threads or processes)."""
    wall1, cpu1 = _cli(fleet, "--local", kind, "--workers", "1")
    wall2, cpu2 = _cli(fleet, "--local", kind, "--workers", "2")
    r1 = _rates(f"{kind}_1w", SNAPSHOTS, wall1, cpu1)
    r2 = _rates(f"{kind}_2w", SNAPSHOTS, wall2, cpu2)
    print(f"bench: fleet.{kind}.scaling_1_to_2 = {r2 / r1:.2f} x (target >= 1.7 on 2 cores)",
          flush=True)
    print(f"bench: fleet.{kind}.scaling_ceiling_2_cores = {2 * wall1 / cpu2:.2f} x "
          "(both cores busy all along the 2-worker run)", flush=True)


def _one_tib(tmp: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_survey", HERE / "bench_survey.py")
    bench_survey = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_survey)
    folder = tmp / "tib" / "machine"
    folder.mkdir(parents=True)
    pfns = bench_survey.make_snapshot(folder, FIXTURES / "snapshot-idle")
    cluster, client = _cluster(1)
    try:
        wall, _ = _cli(folder.parent, "--scheduler", cluster.scheduler_address)
        print(f"bench: fleet.processes_1tib.seconds = {wall:.1f} s ({pfns:,} PFNs, "
              f"{pfns / wall:,.0f} PFN/s)", flush=True)
        print(f"bench: fleet.processes_1tib.peak_rss_per_worker = {_peak_rss_mib(client):,.0f} MiB "
              "(target < 1024)", flush=True)
    finally:
        client.close()
        cluster.close()
        shutil.rmtree(folder.parent, ignore_errors=True)


def main() -> None:
    if not _captures():
        print(f"bench: fleet skipped: fixtures {FIXTURES / 'fleet'} are absent "
              "(set MEMDESC_FIXTURES)")
        return
    os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".venv" / "numba-cache"))
    tmp = Path(tempfile.mkdtemp(prefix="memdesc-bench-fleet-",
                                dir=os.environ.get("MEMDESC_BENCH_TMP")))
    try:
        print(f"bench: fleet.load_average = {os.getloadavg()[0]:.1f} (2 cores)", flush=True)
        captures = resave(_captures(), tmp / "captures")
        fleet = make_fleet(tmp / "fleet", SNAPSHOTS, captures)
        warm = make_fleet(tmp / "warm", 4, captures)
        small = make_fleet(tmp / "small", 50, captures)
        _warm_up(warm)
        _breakdown(captures)
        _inflate(captures)
        _scaling("threads", fleet)
        _scaling("processes", fleet)
        on_thread = _overhead("threads", small)
        cluster, client = _cluster(1)
        try:
            _cli(warm, "--scheduler", cluster.scheduler_address)
            in_worker = _overhead("processes", small, client)
            print("bench: fleet.processes_vs_threads.cpu_per_snapshot_ratio = "
                  f"{in_worker / on_thread:.2f} (a survey in a worker process / on a thread)",
                  flush=True)
            print(f"bench: fleet.processes.peak_rss_per_worker = {_peak_rss_mib(client):,.0f} "
                  "MiB (50 snapshots of 25 GiB)", flush=True)
        finally:
            client.close()
            cluster.close()
        if os.environ.get("MEMDESC_BENCH_FLEET_1TIB", "1") != "0":
            _one_tib(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    main()
