"""The fleet survey: one small mergeable summary per snapshot, and the fleet's sum of them.

Every snapshot is surveyed by the survey's own code (:func:`memdesc.analysis.survey.run_survey`)
and summarised from the survey's own JSON (:func:`memdesc.report.json_out.survey_dict`), so
each machine's numbers equal ``memdesc survey --json`` on the same snapshot. A summary is a few
KiB of plain data (classes, folio orders, per-stage bytes whole and in use, consistency
statuses); :class:`FleetTotals` adds summaries up (``add``) and adds totals up (``merge``), in
any order and grouping, which is what a parallel reduction needs.
"""

from __future__ import annotations

import copy
import re
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import numpy as np

from memdesc.analysis.census import CLASSES, NR_UNIT_ORDERS
from memdesc.errors import InputError, MemdescError

#: Version of the per-machine summary layout (part of the cache key: bump on any change).
SUMMARY_VERSION = 1
#: Percentiles of the per-machine savings reported for the fleet.
PERCENTILES = (0, 10, 25, 50, 75, 90, 100)
#: Survey inputs whose absence makes the run "kpageflags-only" (the study's layout has none).
LAYOUT_INPUTS = ("zoneinfo", "iomem")


class Cancelled(Exception):
    """The run was interrupted (Ctrl-C): a survey in flight stops at its next chunk."""


# --- one machine --------------------------------------------------------------------------------

def machine_summary(d: dict[str, Any]) -> dict[str, Any]:
    """The fleet's record of one machine, taken field by field from the survey's JSON ``d``."""
    stages = []
    for s in d["stages"]:
        stages.append({
            "id": s["id"], "struct_page_size": s["struct_page_size"],
            "total_bytes": s["total_bytes"], "saving_bytes": s["saving_bytes"],
            "saving_percent": s["saving_percent"], "percent_of_ram": s["percent_of_ram"],
            "by_type": dict(s["by_type"]), "in_use": s["in_use"],
        })
    fo = d["folio_orders"]
    return {
        "kernel": d["kernel"], "pfns": d["pfns"], "ram_pages": d["ram_pages"],
        "memmap_pages": d["memmap_pages"], "nr_cpus": d["nr_cpus"],
        "pages_by_class": dict(d["pages_by_class"]),
        "folio_orders": {"units_by_order": list(fo["units_by_order"]),
                         "pages_by_order": list(fo["pages_by_order"])},
        "stages": stages,
        "consistency": {c["name"]: c["status"] for c in d["consistency"]},
        "skipped": list(d["skipped"]),
        "kpageflags_only": all(n in d["skipped"] for n in LAYOUT_INPUTS),
    }


def _stopper(stop: threading.Event | None) -> Callable[[int], None] | None:
    if stop is None:
        return None

    def tick(_n: int) -> None:
        if stop.is_set():
            raise Cancelled
    return tick


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def survey_task(path: str, descriptors, stop: threading.Event | None = None) -> dict[str, Any]:
    """Survey the snapshot folder ``path`` with the survey's own code (a Dask task).

    Returns ``{"summary": ..., "seconds": time spent in this call, "cpu_seconds": CPU time of
    this process meanwhile}`` (with one task at a time in the process, the survey's CPU time,
    its read-ahead thread included), or ``{"reason": one line}`` when the snapshot cannot be
    surveyed (corrupt, truncated, unreadable): a bad snapshot is a result, not a crash of the
    run. ``stop`` (local runs) ends a survey in flight at its next chunk.
    """
    from memdesc.analysis.survey import run_survey
    from memdesc.ingest.snapshot import open_folder
    from memdesc.report.json_out import survey_dict

    t0, cpu0 = time.monotonic(), _cpu_seconds()
    try:
        result = run_survey(open_folder(path), None, descriptors, progress=_stopper(stop))
        summary = machine_summary(survey_dict(result))
        return {"summary": summary, "seconds": time.monotonic() - t0,
                "cpu_seconds": _cpu_seconds() - cpu0}
    except MemdescError as e:
        return {"reason": str(e)}
    except OSError as e:
        return {"reason": f"{path}: {e.strerror or e}"}
    except Cancelled:
        raise
    except Exception as e:           # a bug must not sink a run of 10,000 snapshots
        return {"reason": f"{path}: unexpected {type(e).__name__}: {e} (a memdesc bug: "
                          "please report it with this snapshot)"}


def survey_batch(paths: list[str], descriptors) -> list[dict[str, Any]]:
    """:func:`survey_task` on each of ``paths`` in turn (a Dask task of a few snapshots: a
    task costs dask.distributed a few milliseconds of CPU, bench/bench_fleet.py)."""
    return [survey_task(path, descriptors) for path in paths]


# --- the fleet ------------------------------------------------------------------------------------

def percentiles(values: list[float]) -> dict[str, float] | None:
    """``{"p0": .., "p10": .., ...}`` of ``values`` (linear interpolation), None when empty."""
    if not values:
        return None
    got = np.percentile(np.asarray(values, dtype=float), PERCENTILES)
    return {f"p{p}": round(float(v), 6) for p, v in zip(PERCENTILES, got, strict=True)}


def _plus(a, b):
    """``a`` with ``b`` added in, field by field: numbers and numpy arrays add, lists
    concatenate (per-machine values), sets unite, dicts and dataclasses add key by key."""
    if is_dataclass(a):
        for f in fields(a):
            setattr(a, f.name, _plus(getattr(a, f.name), getattr(b, f.name)))
        return a
    if isinstance(a, dict):
        for k, v in b.items():
            a[k] = _plus(a[k], v) if k in a else copy.deepcopy(v)
        return a
    if isinstance(a, set):
        return a | b
    return a + b


@dataclass
class _StageSum:
    total_bytes: int = 0
    saving_bytes: int = 0
    in_use_total_bytes: int = 0
    in_use_saving_bytes: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    in_use_by_class: dict[str, int] = field(default_factory=dict)
    savings: list[float] = field(default_factory=list)          # per machine, %
    in_use_savings: list[float] = field(default_factory=list)   # per machine, %


@dataclass
class FleetTotals:
    """Sums over machines (and the per-machine savings, for percentiles). Mergeable."""

    machines: int = 0
    kpageflags_only: int = 0
    pfns: int = 0
    ram_pages: int = 0
    memmap_pages: int = 0
    hosts: set[str] = field(default_factory=set)
    pages_by_class: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASSES, 0))
    units_by_order: np.ndarray = field(default_factory=lambda: np.zeros(NR_UNIT_ORDERS, np.int64))
    pages_by_order: np.ndarray = field(default_factory=lambda: np.zeros(NR_UNIT_ORDERS, np.int64))
    stages: dict[str, _StageSum] = field(default_factory=dict)

    def add(self, m: dict[str, Any]) -> FleetTotals:
        """Add one machine record (a summary with ``host``)."""
        fo = m["folio_orders"]
        one = FleetTotals(1, int(m["kpageflags_only"]), m["pfns"], m["ram_pages"],
                          m["memmap_pages"], {m["host"]}, dict(m["pages_by_class"]),
                          np.asarray(fo["units_by_order"], np.int64),
                          np.asarray(fo["pages_by_order"], np.int64))
        for s in m["stages"]:
            iu = s["in_use"]
            one.stages[s["id"]] = _StageSum(
                s["total_bytes"], s["saving_bytes"], iu["total_bytes"], iu["saving_bytes"],
                dict(s["by_type"]), dict(iu["by_class"]), [s["saving_percent"]],
                [iu["saving_percent"]])
        return self.merge(one)

    def merge(self, o: FleetTotals) -> FleetTotals:
        """Add the totals ``o`` into these (any order and grouping gives the same sums)."""
        return _plus(self, o)

    def to_dict(self) -> dict[str, Any]:
        stages = []
        for sid, s in self.stages.items():
            ref = s.total_bytes + s.saving_bytes
            iu_ref = s.in_use_total_bytes + s.in_use_saving_bytes
            stages.append({
                "id": sid, "total_bytes": s.total_bytes, "saving_bytes": s.saving_bytes,
                "saving_percent": 100.0 * s.saving_bytes / max(1, ref),
                "saving_percent_percentiles": percentiles(s.savings),
                "by_type": s.by_type,
                "in_use": {
                    "total_bytes": s.in_use_total_bytes, "saving_bytes": s.in_use_saving_bytes,
                    "saving_percent": 100.0 * s.in_use_saving_bytes / max(1, iu_ref),
                    "saving_percent_percentiles": percentiles(s.in_use_savings),
                    "by_class": s.in_use_by_class,
                },
            })
        return {
            "machines": self.machines, "hosts": len(self.hosts),
            "kpageflags_only": self.kpageflags_only, "pfns": self.pfns,
            "ram_pages": self.ram_pages, "memmap_pages": self.memmap_pages,
            "pages_by_class": dict(self.pages_by_class),
            "folio_orders": {"units_by_order": [int(x) for x in self.units_by_order],
                             "pages_by_order": [int(x) for x in self.pages_by_order]},
            "stages": stages,
        }


# --- grouping -------------------------------------------------------------------------------------

GROUP_FIELDS = ("host", "label")
NO_MATCH = "(no match)"


@dataclass(frozen=True)
class GroupBy:
    """``--group-by FIELD[:REGEX]``: FIELD is ``host`` or ``label``; with REGEX the group is
    its first capture group (or whole match) searched in that field."""

    field: str
    pattern: re.Pattern | None

    @classmethod
    def parse(cls, spec: str) -> GroupBy:
        name, _, regex = spec.partition(":")
        if name not in GROUP_FIELDS:
            raise InputError(f"--group-by {spec!r}: group by {' or '.join(GROUP_FIELDS)}, "
                             "optionally with :REGEX (e.g. 'host:^(dc\\d+)-')")
        try:
            pattern = re.compile(regex) if regex else None
        except re.error as e:
            raise InputError(f"--group-by {spec!r}: bad regular expression ({e})") from None
        return cls(name, pattern)

    def key(self, machine: dict[str, Any]) -> str:
        value = str(machine[self.field])
        if self.pattern is None:
            return value
        m = self.pattern.search(value)
        if m is None:
            return NO_MATCH
        return next((g for g in m.groups() if g is not None), m.group(0))


def fleet_answer(machines: list[dict[str, Any]], failed: list[dict[str, str]],
                 group_by: GroupBy | None = None) -> dict[str, Any]:
    """The fleet's totals, and per group when ``group_by`` is given (groups sorted by key)."""
    total = FleetTotals()
    groups: dict[str, FleetTotals] = {}
    for m in machines:
        total.add(m)
        if group_by is not None:
            groups.setdefault(group_by.key(m), FleetTotals()).add(m)
    out: dict[str, Any] = {"fleet": {**total.to_dict(), "failed": len(failed)}}
    if group_by is not None:
        out["groups"] = [{"key": k, **groups[k].to_dict()} for k in sorted(groups)]
    return out
