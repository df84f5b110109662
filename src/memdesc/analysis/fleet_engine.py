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
    process per core, tuned for the survey (analysis.fleet_local: workers forked ready from a
    fork server, malloc settings, no dashboard work): it scales, and a worker that dies is
    replaced and its task re-run, as on a cluster. Starting it costs a second or two.
  - **auto** (the default): processes from LOCAL_PROCESSES_MIN snapshots on, threads below.

* **Distributed** (``--scheduler ADDRESS``): the tasks go to an existing dask.distributed
  scheduler (started by hand with ``dask scheduler`` / ``dask worker``, or by dask-jobqueue on
  SLURM/PBS; docs/fleet.md). A worker that dies mid-task costs a re-run of its tasks on another
  worker (the scheduler's own rescheduling, up to ``distributed.scheduler.allowed-failures``
  deaths per task); the result is the same because a survey is a pure function of its files.

Either way a survey of one snapshot (analysis.fleet.survey_task) returns a summary of a few KiB;
identical snapshots (same content hash) are surveyed once. On dask.distributed a task surveys up
to BATCH_MAX of them (:func:`batches`): each task costs a few ms of CPU to schedule. Results are
cached as they arrive (analysis.fleet_cache), so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from memdesc.analysis.fleet import Cancelled, survey_batch, survey_task
from memdesc.analysis.fleet_cache import ResultCache
from memdesc.analysis.fleet_local import (
    LOCAL_CLUSTER_CONFIG,
    close_idle,
    local_cluster,
    start_fork_server,
    stop_now,
    tune_malloc,
)
from memdesc.analysis.fleet_local import local_cluster as _local_cluster  # noqa: F401 (tests)
from memdesc.errors import InputError, MemdescError
from memdesc.ingest.fleet import FleetInput

#: Seconds to wait for a scheduler given with --scheduler.
CONNECT_TIMEOUT = 15
#: Tasks from which ``--local auto`` starts worker processes rather than threads: starting
#: them costs a second or two (the fork server's loading, the cluster), repaid by their
#: scaling (bench/bench_fleet.py: threads barely scale on the survey's GIL-held Python parts).
LOCAL_PROCESSES_MIN = 32
#: Snapshots per dask.distributed task at most. A task costs the scheduler, the client and
#: the worker about 5 ms of CPU together, a tenth of a 25 GiB snapshot's survey; 4 per task
#: cut that to 2 ms (bench/bench_fleet.py ``dask_overhead_per_snapshot``).
BATCH_MAX = 4
#: Tasks per worker at least before snapshots are batched, so that the run's end stays
#: balanced (the last tasks are short).
TASKS_PER_WORKER = 8

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


def prepare_local(plan: FleetPlan, scheduler: str | None = None, workers: int | None = None,
                  local: str = "auto") -> None:
    """When the plan will run on local worker processes, start their fork server now, so
    that it loads what the workers need while this process loads what it needs for the run
    (analysis.fleet_local.start_fork_server). Optional: run_fleet starts it otherwise."""
    n = workers or os.cpu_count() or 1
    if plan.todo and not scheduler and local_engine(local, len(plan.todo), n) == "processes":
        start_fork_server(n)


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
        _run_distributed(plan.todo, descriptors, scheduler, finish, None)
    elif plan.todo and kind == "processes":
        run.engine = f"dask.distributed LocalCluster, {n} worker process{'es' * (n != 1)}"
        import dask

        with dask.config.set(LOCAL_CLUSTER_CONFIG):       # our client too
            cluster = local_cluster(n)
            try:
                _run_distributed(plan.todo, descriptors, cluster.scheduler_address, finish, n)
            except KeyboardInterrupt:
                stop_now(cluster)
                raise
            close_idle(cluster)
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


def _connect(address: str):
    from distributed import Client

    try:
        return Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        raise InputError(f"--scheduler {address}: no Dask scheduler answered there ({e}); "
                         "start one with `dask scheduler` and workers with `dask worker "
                         "ADDRESS` (docs/fleet.md)") from None


def batches(todo: list[_Todo], workers: int) -> list[list[_Todo]]:
    """``todo`` in order, cut into tasks of up to BATCH_MAX snapshots, as long as every one
    of ``workers`` still gets TASKS_PER_WORKER tasks (small runs: one snapshot per task)."""
    size = max(1, min(BATCH_MAX, len(todo) // (max(1, workers) * TASKS_PER_WORKER)))
    return [todo[i:i + size] for i in range(0, len(todo), size)]


def _run_distributed(todo: list[_Todo], descriptors, address: str,
                     finish: Callable[[_Todo, dict], None], workers: int | None) -> None:
    from distributed import as_completed

    client = _connect(address)
    futures = []
    try:
        if workers is None:
            workers = sum(client.nthreads().values())
        tasks = {f"memdesc-batch-{b[0].key.removeprefix('memdesc-survey-')}-{len(b)}": b
                 for b in batches(todo, workers)}
        futures = client.map(survey_batch, [[t.path for t in b] for b in tasks.values()],
                             descriptors=descriptors, key=list(tasks), retries=1)
        for fut in as_completed(futures, loop=client.loop):
            batch = tasks[fut.key]
            try:
                results = fut.result()
            except Exception as e:      # KilledWorker (died too often), lost scheduler, ...
                results = [{"reason": f"{t.inputs[0].path}: the Dask task failed "
                                      f"({type(e).__name__}: {e})"} for t in batch]
            for t, res in zip(batch, results, strict=True):
                finish(t, res)
    finally:
        if futures:
            client.cancel(futures)
        client.close(timeout=5)
