"""The local run's worker processes: a dask.distributed LocalCluster tuned for the survey.

``memdesc fleet survey --local processes`` (and ``auto`` on big runs) surveys on a LocalCluster
on loopback, one single-threaded worker process per core, whose scheduler, nannies, workers and
client are all ours. What makes n workers on n cores do n times the work of one
(bench/bench_fleet.py):

* **malloc** (:data:`MALLOC_ENV`): chunk-sized arrays stay on the heap rather than being mapped
  and unmapped for every chunk (dask's own worker setting costs +65 % CPU per snapshot);
* **no periodic work nobody reads** (:data:`LOCAL_CLUSTER_CONFIG`): profiler, work stealing,
  20 ms ticks and monitors for a dashboard we do not start;
* **workers forked ready** from a fork server that loaded dask, the survey and numba once
  (analysis.fleet_preload), started as soon as the run knows it needs it
  (:func:`start_fork_server`), so that its loading overlaps the client's own;
* **numba threads** = cores / workers (:func:`numba_threads`), so that the workers do not
  oversubscribe the cores should a kernel run numba-parallel (none of the survey's does);
* **a quick end** (:func:`close_idle`): idle workers are not waited for while their
  interpreters tear down.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import multiprocessing
import os
import signal
import sys
from pathlib import Path

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
PRE_SPAWN = "distributed.nanny.pre-spawn-environ"
FORK_SERVER = "forkserver" in multiprocessing.get_all_start_methods()      # not on Windows
#: dask.distributed settings of the local run, whose scheduler, nannies, workers and client
#: are all ours and serve one client with no dashboard. Dask's defaults keep about 6 % of a
#: core busy (3 % in our process, 3 % in each worker) on periodic work for dashboards and
#: diagnostics; with these it is under 1 %, leaving the cores to the surveys.
LOCAL_CLUSTER_CONFIG = {
    # workers forked from the fork server (FORK_SERVER_PRELOAD), ready to survey
    START_METHOD: "forkserver" if FORK_SERVER else "spawn",
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
#: Seconds a local cluster gets to close after Ctrl-C.
CLOSE_ON_INTERRUPT = 0.5

_fork_server_for: int | None = None      # the worker count our running fork server serves


def tune_malloc() -> bool:
    """Apply :data:`MALLOC_ENV` to this process by mallopt(3) (the environment variables
    only act at start-up); False where the C library has no mallopt (not glibc)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    return all(mallopt(_MALLOPT[k], v) == 1 for k, v in MALLOC_ENV.items())


def numba_threads(workers: int, cores: int | None = None) -> int:
    """Threads of numba's parallel pool in each of ``workers`` local worker processes: the
    cores shared out, so that n workers on n cores do not oversubscribe them. (No survey kernel
    runs numba-parallel today, so the pool is never started; this bounds it if one does.)"""
    return max(1, (cores or os.cpu_count() or 1) // workers)


def _pre_spawn_environ() -> dict:
    """dask's ``distributed.nanny.pre-spawn-environ``, without importing distributed when it
    is not loaded yet (about half a second the fork server can start earlier): its defaults
    (distributed.yaml, as distributed/config.py reads them) under the user's dask settings."""
    import dask

    if "distributed" in sys.modules:
        return dask.config.get(PRE_SPAWN)
    import yaml

    spec = importlib.util.find_spec("distributed")
    with open(Path(spec.origin).parent / "distributed.yaml") as f:
        defaults = yaml.safe_load(f)["distributed"]["nanny"]["pre-spawn-environ"]
    return {**defaults, **dask.config.get(PRE_SPAWN, default={})}


def worker_environ(workers: int) -> dict[str, str]:
    """The environment the worker processes start with: dask's pre-spawn settings and
    MALLOC_ENV (where this process's environment does not set them: an explicit setting
    wins, as in dask), and numba_threads()."""
    wanted = {**_pre_spawn_environ(), **MALLOC_ENV}
    env = {k: os.environ.get(k, str(v)) for k, v in wanted.items() if v is not None}
    return {**env, "NUMBA_NUM_THREADS": str(numba_threads(workers))}


@contextlib.contextmanager
def _sigint_ignored():
    """Ctrl-C in a terminal goes to the whole process group: the worker processes must leave
    it to us (else each prints a traceback). An ignored SIGINT survives fork and exec, and
    Python, asyncio and the fork server keep it ignored, so processes started meanwhile
    never see it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def start_fork_server(workers: int) -> bool:
    """Start the fork server of a local cluster of ``workers`` worker processes now: it loads
    FORK_SERVER_PRELOAD (about a second of CPU) while this process goes on, with the workers'
    environment (a fork server's children inherit its environment; ours is left as it is) and
    SIGINT ignored (only this moment needs it). A server already started for as many workers
    is kept. False where there is no fork server: workers are then spawned."""
    global _fork_server_for
    if not FORK_SERVER:
        return False
    if _fork_server_for == workers:
        return True
    from multiprocessing import forkserver

    # Not distributed's get_mp_context(), which would import distributed (and pandas, where
    # installed) here first: the server loads them itself, meanwhile. (When the nannies call
    # it, it sets its own preload list, which the running server no longer reads.)
    ctx = multiprocessing.get_context("forkserver")
    stop_fork_server()
    ctx.set_forkserver_preload(FORK_SERVER_PRELOAD)
    env = worker_environ(workers)
    saved = {k: os.environ.get(k) for k in env}
    try:
        os.environ.update(env)
        with _sigint_ignored():
            forkserver.ensure_running()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    _fork_server_for = workers
    return True


def stop_fork_server() -> None:
    """Stop our fork server, if one runs, and reap it (its CPU time and its workers' then
    count as this process's children's). multiprocessing has no public call for it: without
    it, the server runs until this process exits."""
    global _fork_server_for
    from multiprocessing import forkserver

    _fork_server_for = None
    with contextlib.suppress(Exception):
        forkserver._forkserver._stop()


def local_cluster(workers: int):
    """A dask.distributed LocalCluster on loopback: ``workers`` processes of one thread each
    (the survey's Python parts hold the GIL, so processes scale where threads cannot), forked
    from :func:`start_fork_server`'s server (spawned where there is none, with SIGINT ignored
    meanwhile), with :data:`LOCAL_CLUSTER_CONFIG`, no dashboard, warnings only."""
    import dask
    from distributed import LocalCluster

    forked = start_fork_server(workers)
    config = {**LOCAL_CLUSTER_CONFIG,
              PRE_SPAWN: worker_environ(workers)}
    with dask.config.set(config), (contextlib.nullcontext() if forked else _sigint_ignored()):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                            host="127.0.0.1", dashboard_address=None,
                            silence_logs=logging.ERROR)


def close_idle(cluster) -> None:
    """Close a local cluster whose work is done: each nanny asks its worker to close and kills
    it after CLOSE_IDLE_WORKER seconds (all at once), then the cluster and the fork server
    close."""
    import asyncio

    async def close_nannies() -> None:
        await asyncio.gather(*(nanny.close(timeout=CLOSE_IDLE_WORKER)
                               for nanny in list(cluster.workers.values())))

    cluster.sync(close_nannies)
    cluster.close()
    stop_fork_server()


def stop_now(cluster) -> None:
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
