"""The survey: snapshot -> census -> cost per stage -> checks against the kernel's counters.

:func:`run_survey` reads what the snapshot holds, classifies every PFN chunk by chunk (a
background thread reads the next chunk while the numba kernel classifies this one), and returns
a :class:`SurveyResult` the reports render. Missing inputs are tolerated: what could not be done
is summed up in one line (:attr:`SurveyResult.skipped_line`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from memdesc.analysis.census import Census
from memdesc.analysis.classify import Layout, Zone, build_census, classify_chunks
from memdesc.analysis.consistency import (
    BuddyZone,
    Check,
    buddy_reconciliation,
    meminfo_checks,
    slab_heads_check,
)
from memdesc.analysis.cost import StageCost, folio_order_distribution, survey_costs
from memdesc.analysis.descriptors import DescriptorTable, load_descriptors
from memdesc.analysis.in_use import break_even_orders
from memdesc.ingest import procfs
from memdesc.ingest.snapshot import CHUNK_PFNS, Snapshot
from memdesc.stages import STAGES, Stage, get_stage

#: What each missing input takes away, for the one-line "skipped" message.
WEAKENS = {
    "zoneinfo": "flags==0 pages not split into uninitialised/untyped (all untyped), no per-zone "
                "free blocks, CPU count for slab sizing assumed 1",
    "iomem": "holes inside zones placed by count only (not on the map), memmap estimated from "
             "zone present pages",
    "meminfo": "no meminfo checks",
    "slabinfo": "no slab-head check",
    "buddyinfo": "no buddyinfo reconciliation",
    "pagetypeinfo": "no pageblock check in the buddy reconciliation",
}


@dataclass
class SurveyResult:
    source: str
    kind: str
    kernel: str | None
    note: str | None
    census: Census
    costs: list[StageCost]
    checks: list[Check]
    buddy: list[BuddyZone]
    descriptors: DescriptorTable
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def skipped_line(self) -> str | None:
        """One line: what was missing and which outputs that weakens (None: nothing)."""
        if not self.skipped:
            return None
        return "skipped " + "; ".join(f"{n} ({WEAKENS[n]})" for n in self.skipped)

    @property
    def folio_orders(self) -> dict:
        return folio_order_distribution(self.census)

    @property
    def break_even(self) -> dict[str, dict[str, int | None]]:
        """Per stage and unit type, the order from which a unit costs less than at v6.18."""
        return break_even_orders([get_stage(c.id) for c in self.costs], self.descriptors,
                                 self.census.nr_cpus or 1)


def prefetch(it: Iterable, depth: int = 2) -> Iterator:
    """Iterate ``it`` in a background thread, ``depth`` items ahead (file reads release the
    GIL, and so does the numba kernel, so reading and classifying overlap)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def worker() -> None:
        try:
            for item in it:
                if stop.is_set():
                    return
                q.put((True, item))
            q.put((True, done))
        except BaseException as e:       # handed to the consumer, raised there
            q.put((False, e))

    t = threading.Thread(target=worker, name="memdesc-prefetch", daemon=True)
    t.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while t.is_alive():              # unblock a worker waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.05)


def _parse(snapshot: Snapshot, name: str, parser: Callable, when: str = "before"):
    text = snapshot.text(name, when)
    return None if text is None else parser(text)


def layout_of(snapshot: Snapshot) -> tuple[Layout, list[procfs.ZoneInfo] | None]:
    """Zones (zoneinfo) and System RAM (iomem) of a snapshot as a classification layout."""
    zoneinfo = _parse(snapshot, "zoneinfo", procfs.parse_zoneinfo)
    zones = [Zone(z.node, z.name, z.start_pfn, z.end_pfn, z.present, z.managed,
                  sum(p.count for p in z.pcp) if z.pcp else None)
             for z in zoneinfo or () if z.spanned]
    iomem = _parse(snapshot, "iomem", procfs.parse_iomem)
    ram = None
    if iomem is not None and not procfs.iomem_is_hidden(iomem):
        ram = procfs.system_ram_pfn_ranges(iomem)
    return Layout(snapshot.pfn_count, zones, ram), zoneinfo


def nr_cpus_of(zoneinfo: list[procfs.ZoneInfo] | None) -> int | None:
    """CPUs with a pageset in zoneinfo (zoneinfo prints one per online CPU)."""
    counts = [len(z.pcp) for z in zoneinfo or () if z.pcp]
    return max(counts) if counts else None


def run_survey(snapshot: Snapshot, stages: list[Stage] | None = None,
               descriptors: DescriptorTable | None = None,
               progress: Callable[[int], None] | None = None,
               chunk_pfns: int = CHUNK_PFNS) -> SurveyResult:
    """Classify ``snapshot``, cost every stage, and check against the kernel's counters."""
    t0 = time.monotonic()
    descriptors = descriptors or load_descriptors()
    layout, zoneinfo = layout_of(snapshot)
    chunks = ((s, arrays["kpageflags"]) for s, arrays in
              snapshot.chunks(("kpageflags",), chunk_pfns=chunk_pfns))
    tally = classify_chunks(prefetch(chunks), layout, progress=progress)
    census = build_census(tally, snapshot.source, snapshot.kernel, nr_cpus_of(zoneinfo))
    if snapshot.note:
        census.notes.insert(0, snapshot.note)
    costs = survey_costs(census, stages or list(STAGES), descriptors)
    # After the kpage reads: the "after" copies (a live snapshot reads them now).
    mem_b = _parse(snapshot, "meminfo", procfs.parse_meminfo, "before")
    mem_a = _parse(snapshot, "meminfo", procfs.parse_meminfo, "after")
    bud_b = _parse(snapshot, "buddyinfo", procfs.parse_buddyinfo, "before")
    bud_a = _parse(snapshot, "buddyinfo", procfs.parse_buddyinfo, "after")
    pti = _parse(snapshot, "pagetypeinfo", procfs.parse_pagetypeinfo)
    slabinfo = _parse(snapshot, "slabinfo", procfs.parse_slabinfo)
    checks = meminfo_checks(census, mem_b, mem_a) if mem_b or mem_a else []
    if slabinfo is not None:
        checks.append(slab_heads_check(census, slabinfo))
    buddy = buddy_reconciliation(census, bud_b, bud_a, pti) if bud_b or bud_a else []
    skipped = [n for n in ("zoneinfo", "iomem", "meminfo", "slabinfo", "buddyinfo",
                           "pagetypeinfo") if not snapshot.has(n)]
    if "iomem" not in skipped and layout.ram is None:
        skipped.append("iomem")       # present but addresses hidden (not root)
    return SurveyResult(snapshot.source, snapshot.kind, snapshot.kernel, snapshot.note, census,
                        costs, checks, buddy, descriptors, skipped, time.monotonic() - t0)
