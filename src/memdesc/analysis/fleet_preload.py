"""Loaded once by the fork server of a local run, before it forks the worker processes.

A local run with worker processes (analysis.fleet_engine, ``--local processes``) starts its
workers through a multiprocessing fork server that imports this module first: dask.distributed,
the survey's modules and numba's compiler state (its type registries, set up when the first
compiled kernel is loaded) then load once, about a second of CPU, and every worker is a fork of
that process, ready to survey, rather than a fresh interpreter paying that second on its own.
Nothing here runs in the process that imports memdesc for other work.
"""

from __future__ import annotations

import gc

import distributed  # noqa: F401
from numba import njit

from memdesc.analysis import fleet, survey  # noqa: F401
from memdesc.ingest import snapshot  # noqa: F401
from memdesc.report import json_out  # noqa: F401


@njit(cache=True, nogil=True)
def _first_kernel(x: int) -> int:
    return x + 1


_first_kernel(1)
# What is loaded now lives as long as the fork server and its workers: out of the collector's
# sight, it is neither copied on write into each worker by the collector's visits nor
# traversed again, by a worker's collections or at exit (the use gc.freeze() is made for).
gc.freeze()
