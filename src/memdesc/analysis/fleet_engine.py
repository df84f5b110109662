"""Running the fleet survey on Dask: a local run with no set-up, or an existing cluster.

* **Local** (default), one worker per core, two kinds (``--local``):

  - **threads**: Dask's threaded scheduler. The numba classification kernel is compiled
    ``nogil=True`` and zstd/zlib release the GIL, so threads share one process, one copy of the
    compiled kernels, nothing is pickled and nothing starts (docs.dask.org "Scheduling": threads
    are "good for numeric code that releases the GIL (like NumPy, Pandas, Scikit-Learn,
    Numba)"). But the survey's text parsing and cost model are Python holding the GIL: on
    machines of the fixtures' size (25 GiB) that is about half of a survey, so threads barely
    scale (bench/bench_fleet.py). Ctrl-C stops surveys in flight at their next chunk.
  - **processes**: a dask.distributed LocalCluster on loopback with one single-threaded worker
    process per core: it scales, and a worker that dies is replaced and its task re-run, as on
    a cluster. Starting it costs a few seconds.
  - **auto** (the default): processes from LOCAL_PROCESSES_MIN snapshots on, threads below.

* **Distributed** (``--scheduler ADDRESS``): the tasks go to an existing dask.distributed
  scheduler (started by hand with ``dask scheduler`` / ``dask worker``, or by dask-jobqueue on
  SLURM/PBS; docs/fleet.md). A worker that dies mid-task costs a re-run of its tasks on another
  worker (the scheduler's own rescheduling, up to ``distributed.scheduler.allowed-failures``
  deaths per task); the result is the same because a survey is a pure function of its files.

Either way one task surveys one snapshot (analysis.fleet.survey_task) and returns a summary of a
few KiB; identical snapshots (same content hash) are one task. Results are cached as they
arrive (analysis.fleet_cache), so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from memdesc.analysis.fleet import Cancelled, survey_task
from memdesc.analysis.fleet_cache import ResultCache
from memdesc.errors import InputError, MemdescError
from memdesc.ingest.fleet import FleetInput

#: Seconds to wait for a scheduler given with --scheduler.
CONNECT_TIMEOUT = 15
#: Tasks from which ``--local auto`` starts worker processes rather than threads: starting
#: them costs a few seconds (spawn, imports, numba cache loads), repaid by their scaling
#: (bench/bench_fleet.py: threads barely scale on the survey's GIL-held Python parts).
LOCAL_PROCESSES_MIN = 32
#: Seconds a local cluster gets to close after Ctrl-C.
CLOSE_ON_INTERRUPT = 0.5
#: glibc malloc settings of the processes that survey (the local run's; a cluster's workers
#: take them from their environment, docs/fleet.md). A survey streams its kpage files in 8 MiB
#: chunk arrays (ingest.snapshot.CHUNK_PFNS). Dask starts worker processes with
#: MALLOC_TRIM_THRESHOLD_=65536 (distributed.yaml, nanny.pre-spawn-environ), which also
#: freezes glibc's mmap threshold at 128 KiB: every chunk is then a fresh mmap whose pages
#: fault in and are unmapped when it is freed, +60-80 ms of system time per 25 GiB snapshot
#: (+65%, bench/bench_fleet.py ``cpu_per_snapshot``). With these, chunk-sized arrays come from
#: the heap (32 MiB is the largest mmap threshold glibc takes on 64-bit) and up to 128 MiB of
#: freed heap is kept for the next chunks.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": 32 << 20, "MALLOC_TRIM_THRESHOLD_": 128 << 20}
_MALLOPT = {"MALLOC_MMAP_THRESHOLD_": -3, "MALLOC_TRIM_THRESHOLD_": -1}   # M_* of malloc.h
#: What the fork server of a local run loads before forking each worker process: dask, the
#: survey and numba's compiler state (analysis.fleet_preload). A fresh interpreter per worker
#: (spawn) spends about a second of CPU each on the same loads.
FORK_SERVER_PRELOAD = ["memdesc.analysis.fleet_preload"]
START_METHOD = "distributed.worker.multiprocessing-method"
#: dask.distributed settings of the local run, whose scheduler, nannies, workers and client
#: are all ours and serve one client with no dashboard. Dask's defaults keep about 6 % of a
#: core busy (3 % in our process, 3 % in each worker) on periodic work for dashboards and
#: diagnostics; with these it is under 1 %, leaving the cores to the surveys.
LOCAL_CLUSTER_CONFIG = {
    # how worker processes start (FORK_SERVER_PRELOAD): forked, ready to survey, where the
    # platform has a fork server (not Windows)
    START_METHOD: "forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
    else "spawn",
    # the statistical profiler feeding the dashboard: a thread per worker sampling every 10 ms
    "distributed.worker.profile.enabled": False,
    # workers of one thread each, fed one task at a time from the scheduler's queue
    # (distributed.scheduler.worker-saturation): there is nothing to steal
    "distributed.scheduler.work-stealing": False,
    # event-loop latency checks, for warnings only: 20 ms by default
    "distributed.admin.tick.interval": "1s",
    # CPU and memory samples for the dashboard: 500 ms by default
    "distributed.admin.system-monitor.interval": "5s",
    # the nanny's check of its worker's memory against the limit (a survey needs a few
    # hundred MiB, bench/bench_fleet.py): 100 ms by default
    "distributed.worker.memory.monitor-interval": "1s",
}
#: Seconds an idle local worker gets to close at the end of a run before it is killed: its
#: protocol close takes milliseconds, its interpreter's teardown (numba, LLVM, dask) most of
#: a second that nobody needs to wait for.
CLOSE_IDLE_WORKER = 0.25


@dataclass
class FleetRun:
    """What a run produced: machine records in input order, failures, and how it went."""

    machines: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    cached: int = 0
    surveyed: int = 0
    engine: str = ""
    task_seconds: float = 0.0          # Σ wall time inside the surveys
    task_cpu_seconds: float = 0.0      # Σ CPU time of the surveying processes meanwhile


@dataclass
class _Todo:
    key: str
    digest: str | None
    inputs: list[FleetInput]

    @property
    def path(self) -> str:
        """Absolute: a worker's working folder is not ours."""
        return os.path.abspath(self.inputs[0].path)


def _record(inp: FleetInput, digest: str | None, summary: dict[str, Any]) -> dict[str, Any]:
    return {"source": inp.path, "host": inp.host, "label": inp.label, "taken": inp.taken,
            "layout": inp.layout, "content_hash": digest, **summary}


@dataclass
class FleetPlan:
    """The inputs identified: records already known (cache hits, unreadable) and the tasks."""

    inputs: list[FleetInput]
    cache: ResultCache
    done: dict[int, dict] = field(default_factory=dict)
    todo: list[_Todo] = field(default_factory=list)
    cached: int = 0

    @property
    def pending(self) -> int:
        return sum(len(t.inputs) for t in self.todo)


def plan_fleet(inputs: list[FleetInput], cache: ResultCache,
               progress: Callable[[int], None] | None = None) -> FleetPlan:
    """Identify every input (content hash, when there is a cache): cache hits and snapshots
    whose files cannot be read are done; the rest become one task per distinct content."""
    plan = FleetPlan(inputs, cache)
    todo: dict[str, _Todo] = {}
    for i, inp in enumerate(inputs):
        if progress:
            progress(1)
        digest = None
        if cache.root is not None:
            try:
                digest = cache.identify(inp.path)
            except MemdescError as e:
                plan.done[i] = {"source": inp.path, "reason": str(e)}
                continue
            summary = cache.get(digest)
            if summary is not None:
                plan.done[i] = _record(inp, digest, summary)
                plan.cached += 1
                continue
        key = f"memdesc-survey-{digest or os.path.realpath(inp.path)}"
        todo.setdefault(key, _Todo(key, digest, [])).inputs.append(inp)
    plan.todo = list(todo.values())
    return plan


def local_engine(choice: str, tasks: int, workers: int) -> str:
    """``threads`` or ``processes`` for a local run: ``auto`` takes worker processes when the
    run is big enough to repay starting them (LOCAL_PROCESSES_MIN tasks or more, and more
    than one worker), else threads."""
    if choice != "auto":
        return choice
    return "processes" if workers > 1 and tasks >= LOCAL_PROCESSES_MIN else "threads"


def run_fleet(plan: FleetPlan, descriptors, scheduler: str | None = None,
              workers: int | None = None,
              progress: Callable[[int], None] | None = None,
              local: str = "auto") -> FleetRun:
    """Survey the plan's tasks on Dask and return every record in input order: on the
    cluster at ``scheduler``, else locally with ``workers`` (default one per core) threads or
    worker processes (``local``: ``auto``, ``threads``, ``processes``)."""
    run = FleetRun(cached=plan.cached)
    done = dict(plan.done)
    index = {id(inp): i for i, inp in enumerate(plan.inputs)}

    def finish(t: _Todo, res: dict[str, Any]) -> None:
        if "summary" in res:
            if t.digest:
                plan.cache.put(t.digest, res["summary"])
            run.surveyed += 1
            run.task_seconds += res.get("seconds", 0.0)
            run.task_cpu_seconds += res.get("cpu_seconds", 0.0)
        for inp in t.inputs:
            done[index[id(inp)]] = (_record(inp, t.digest, res["summary"]) if "summary" in res
                                    else {"source": inp.path, "reason": res["reason"]})
        if progress:
            progress(len(t.inputs))

    n = workers or os.cpu_count() or 1
    kind = local_engine(local, len(plan.todo), n)
    if plan.todo and scheduler:
        run.engine = f"dask.distributed at {scheduler}"
        _run_distributed(plan.todo, descriptors, scheduler, finish)
    elif plan.todo and kind == "processes":
        run.engine = f"dask.distributed LocalCluster, {n} worker process{'es' * (n != 1)}"
        import dask

        with dask.config.set(LOCAL_CLUSTER_CONFIG):       # our client too
            cluster = _local_cluster(n)
            try:
                _run_distributed(plan.todo, descriptors, cluster.scheduler_address, finish)
            except KeyboardInterrupt:
                _stop_now(cluster)
                raise
            _close_idle(cluster)
    elif plan.todo:
        run.engine = f"dask threads, {n} worker{'s' * (n != 1)}"
        _run_local(plan.todo, descriptors, n, finish)
    for i in range(len(plan.inputs)):
        rec = done[i]
        (run.failed if "reason" in rec else run.machines).append(rec)
    return run


def survey_fleet(inputs: list[FleetInput], descriptors, cache: ResultCache,
                 scheduler: str | None = None, workers: int | None = None,
                 progress: Callable[[int], None] | None = None,
                 local: str = "auto") -> FleetRun:
    """:func:`plan_fleet` then :func:`run_fleet` (``progress`` counts the surveys)."""
    return run_fleet(plan_fleet(inputs, cache), descriptors, scheduler, workers, progress,
                     local)


def tune_malloc() -> bool:
    """Apply :data:`MALLOC_ENV` to this process by mallopt(3) (the environment variables
    only act at start-up); False where the C library has no mallopt (not glibc)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    return all(mallopt(_MALLOPT[k], v) == 1 for k, v in MALLOC_ENV.items())


def _run_local(todo: list[_Todo], descriptors, workers: int,
               finish: Callable[[_Todo, dict], None]) -> None:
    import dask
    from dask.callbacks import Callback

    tune_malloc()
    stop = threading.Event()
    by_key = {t.key: t for t in todo}
    tasks = [dask.delayed(survey_task, pure=False)(t.path, descriptors, stop,
                                                   dask_key_name=t.key) for t in todo]

    def posttask(key, result, dsk, state, worker_id) -> None:   # called in this thread
        if key in by_key:
            finish(by_key[key], result)

    try:
        with Callback(posttask=posttask):
            dask.compute(*tasks, scheduler="threads", num_workers=workers)
    except (KeyboardInterrupt, Cancelled):
        stop.set()                  # surveys in flight end at their next chunk
        raise KeyboardInterrupt from None


def numba_threads(workers: int, cores: int | None = None) -> int:
    """Threads of numba's parallel pool in each of ``workers`` local worker processes: the
    cores shared out, so that n workers on n cores do not oversubscribe them. (No survey kernel
    runs numba-parallel today, so the pool is never started; this bounds it if one does.)"""
    return max(1, (cores or os.cpu_count() or 1) // workers)


def _fresh_fork_server() -> None:
    """Have the next worker process start a fork server that loads FORK_SERVER_PRELOAD. A
    fork server inherits the environment of the first process it serves, so each cluster
    gets its own (the previous one, if any, is stopped)."""
    from distributed.utils import get_mp_context

    if LOCAL_CLUSTER_CONFIG[START_METHOD] != "forkserver":
        return
    ctx = get_mp_context()          # sets dask's own preload list once: ours replaces it
    _stop_fork_server()
    ctx.set_forkserver_preload(FORK_SERVER_PRELOAD)


def _stop_fork_server() -> None:
    """Stop the fork server, if one runs, and reap it (its CPU time and its workers' then
    count as this process's children's). It is a private API of multiprocessing: without
    it, the server runs on until this process exits."""
    from multiprocessing import forkserver

    with contextlib.suppress(Exception):
        forkserver._forkserver._stop()


def _local_cluster(workers: int):
    """A dask.distributed LocalCluster on loopback: ``workers`` processes of one thread each
    (the survey's Python parts hold the GIL, so processes scale where threads cannot), started
    with :data:`MALLOC_ENV`, :func:`numba_threads` and :data:`LOCAL_CLUSTER_CONFIG`, no
    dashboard, warnings only."""
    # Ctrl-C in a terminal goes to the whole process group: the workers must leave it to us
    # (else each prints a traceback). An ignored SIGINT survives fork and exec, and Python and
    # asyncio keep it ignored, so the fork server and the workers started now never see it.
    # The price: Ctrl-C is ignored during the seconds the cluster takes to start.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import dask
        from distributed import LocalCluster

        environ = {**dask.config.get("distributed.nanny.pre-spawn-environ"), **MALLOC_ENV,
                   "NUMBA_NUM_THREADS": numba_threads(workers)}
        with dask.config.set({**LOCAL_CLUSTER_CONFIG,
                              "distributed.nanny.pre-spawn-environ": environ}):
            _fresh_fork_server()
            return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                host="127.0.0.1", dashboard_address=None,
                                silence_logs=logging.ERROR)
    finally:
        signal.signal(signal.SIGINT, previous)


def _close_idle(cluster) -> None:
    """Close a local cluster whose work is done: each nanny asks its worker to close and kills
    it after CLOSE_IDLE_WORKER seconds (all at once), then the cluster and the fork server
    close."""
    import asyncio

    async def close_nannies() -> None:
        await asyncio.gather(*(nanny.close(timeout=CLOSE_IDLE_WORKER)
                               for nanny in list(cluster.workers.values())))

    cluster.sync(close_nannies)
    cluster.close()
    _stop_fork_server()


def _stop_now(cluster) -> None:
    """After Ctrl-C: kill our local worker processes (a survey in flight cannot be asked to
    stop), then close the cluster, which no longer waits for them. Dask's own complaints
    about the connections this breaks are silenced: the run is over."""
    logging.disable(logging.CRITICAL)
    for nanny in list(cluster.workers.values()):
        pid = getattr(getattr(nanny, "process", None), "pid", None)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        cluster.close(timeout=CLOSE_ON_INTERRUPT)


def _connect(address: str):
    from distributed import Client

    try:
        return Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        raise InputError(f"--scheduler {address}: no Dask scheduler answered there ({e}); "
                         "start one with `dask scheduler` and workers with `dask worker "
                         "ADDRESS` (docs/fleet.md)") from None


def _run_distributed(todo: list[_Todo], descriptors, address: str,
                     finish: Callable[[_Todo, dict], None]) -> None:
    from distributed import as_completed

    client = _connect(address)
    futures = []
    try:
        by_key = {t.key: t for t in todo}
        futures = client.map(survey_task, [t.path for t in todo],
                             descriptors=descriptors, key=[t.key for t in todo], retries=1)
        for fut in as_completed(futures, loop=client.loop):
            try:
                res = fut.result()
            except Exception as e:      # KilledWorker (died too often), lost scheduler, ...
                res = {"reason": f"{by_key[fut.key].inputs[0].path}: the Dask task failed "
                                 f"({type(e).__name__}: {e})"}
            finish(by_key[fut.key], res)
    finally:
        if futures:
            client.cancel(futures)
        client.close(timeout=5)
