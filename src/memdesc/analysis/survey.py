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
from functools import cached_property

from memdesc.analysis.base_page import BasePageCost, base_page_costs, reference_4k
from memdesc.analysis.census import Census
from memdesc.analysis.classify import Layout, Zone, build_census, classify_chunks
from memdesc.analysis.consistency import (
    BuddyZone,
    Check,
    buddy_reconciliation,
    meminfo_checks,
    memmap_check,
    slab_heads_check,
)
from memdesc.analysis.cost import StageCost, folio_order_distribution, survey_costs
from memdesc.analysis.cost_terms import CostTerms, parse_sysctl_value, slab_occupancy
from memdesc.analysis.descriptors import DescriptorTable, load_descriptors
from memdesc.analysis.in_use import break_even_orders
from memdesc.ingest import procfs
from memdesc.ingest.snapshot import CHUNK_PFNS, Snapshot
from memdesc.stages import REFERENCE, STAGES, Stage, get_stage

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
    "vmstat": "no memmap check",
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
    terms: CostTerms | None = None
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

    @cached_property
    def base_pages(self) -> list[BasePageCost]:
        """The stages with 16 KiB and 64 KiB base pages (analysis/base_page.py)."""
        return base_page_costs(self.census, [get_stage(c.id) for c in self.costs],
                               self.descriptors, self.terms)

    @cached_property
    def reference_4k(self) -> StageCost:
        return reference_4k(self.costs, self.census, self.descriptors, self.terms)

    @cached_property
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


def _text_file(snapshot: Snapshot, name: str, when: str) -> str:
    """The file a /proc text of ``snapshot`` comes from, for error messages."""
    if snapshot.live:
        return str(snapshot.root / name)
    # Snapshot does not expose this publicly (ingest/snapshot.py belongs to the fleet work).
    path = snapshot._text_path(name, when)
    return str(path) if path is not None else f"{snapshot.source}/{name}"


def _parse(snapshot: Snapshot, name: str, parser: Callable, when: str = "before"):
    """Parse one /proc text of the snapshot; a parse error names the file and its folder
    (``/path/to/snap/meminfo.before:3: expected ...``)."""
    text = snapshot.text(name, when)
    if text is None:
        return None
    try:
        return parser(text)
    except procfs.ParseError as e:
        raise e.at(_text_file(snapshot, name, when)) from None


#: /proc texts the survey reads: name -> parser.
PARSERS: dict[str, Callable] = {
    "meminfo": procfs.parse_meminfo, "vmstat": procfs.parse_vmstat,
    "buddyinfo": procfs.parse_buddyinfo, "pagetypeinfo": procfs.parse_pagetypeinfo,
    "slabinfo": procfs.parse_slabinfo, "zoneinfo": procfs.parse_zoneinfo,
    "iomem": procfs.parse_iomem,
}


def parse_texts(snapshot: Snapshot, when: str) -> dict[str, object]:
    """Every /proc text the survey reads, parsed (None when absent)."""
    return {n: _parse(snapshot, n, f, when) for n, f in PARSERS.items()}


def layout_of(snapshot: Snapshot, texts: dict[str, object] | None = None
              ) -> tuple[Layout, list[procfs.ZoneInfo] | None]:
    """Zones (zoneinfo) and System RAM (iomem) of a snapshot as a classification layout."""
    texts = texts if texts is not None else {}
    zoneinfo = (texts["zoneinfo"] if "zoneinfo" in texts
                else _parse(snapshot, "zoneinfo", procfs.parse_zoneinfo))
    zones = [Zone(z.node, z.name, z.start_pfn, z.end_pfn, z.present, z.managed,
                  sum(p.count for p in z.pcp) if z.pcp else None)
             for z in zoneinfo or () if z.spanned]
    iomem = texts["iomem"] if "iomem" in texts else _parse(snapshot, "iomem", procfs.parse_iomem)
    ram = None
    if iomem is not None and not procfs.iomem_is_hidden(iomem):
        ram = procfs.system_ram_pfn_ranges(iomem)
    return Layout(snapshot.pfn_count, zones, ram), zoneinfo


def nr_cpus_of(zoneinfo: list[procfs.ZoneInfo] | None) -> int | None:
    """CPUs with a pageset in zoneinfo (zoneinfo prints one per online CPU)."""
    counts = [len(z.pcp) for z in zoneinfo or () if z.pcp]
    return max(counts) if counts else None


#: Where vm.hugetlb_optimize_vmemmap is found: a snapshot folder's `sysctl -a` capture, or
#: the live /proc/sys file.
SYSCTL_VM_FILE = "sysctl-vm.txt"
HVO_SYSCTL = "hugetlb_optimize_vmemmap"


def cost_terms_of(snapshot: Snapshot, slabinfo) -> CostTerms:
    """What the snapshot says about the cost-model terms (analysis/cost_terms.py)."""
    path = (snapshot.root / "sys" / "vm" / HVO_SYSCTL if snapshot.live
            else snapshot.root / SYSCTL_VM_FILE)
    try:
        text = path.read_text() if path.is_file() else None
    except OSError:
        text = None
    occ, names, objs = slab_occupancy(slabinfo)
    return CostTerms(parse_sysctl_value(text, HVO_SYSCTL), occ, names, objs)


def run_survey(snapshot: Snapshot, stages: list[Stage] | None = None,
               descriptors: DescriptorTable | None = None,
               progress: Callable[[int], None] | None = None,
               chunk_pfns: int = CHUNK_PFNS) -> SurveyResult:
    """Classify ``snapshot``, cost every stage, and check against the kernel's counters."""
    t0 = time.monotonic()
    descriptors = descriptors or load_descriptors()
    # Parse every text before the long pass, so bad input stops us before any work (a live
    # snapshot reads its "after" copies now, after the kpage reads, below).
    before = parse_texts(snapshot, "before")
    after = None if snapshot.live else parse_texts(snapshot, "after")
    layout, zoneinfo = layout_of(snapshot, before)
    # kpagecgroup says which untyped pages are charged to a memcg (cost term memcg_misc).
    names = ("kpageflags", "kpagecgroup") if snapshot.has("kpagecgroup") else ("kpageflags",)
    chunks = ((s, *(arrays[n] for n in names)) for s, arrays in
              snapshot.chunks(names, chunk_pfns=chunk_pfns))
    tally = classify_chunks(prefetch(chunks), layout, progress=progress)
    census = build_census(tally, snapshot.source, snapshot.kernel, nr_cpus_of(zoneinfo))
    if snapshot.note:
        census.notes.insert(0, snapshot.note)
    terms = cost_terms_of(snapshot, before["slabinfo"])
    costs = survey_costs(census, stages or list(STAGES), descriptors, terms=terms)
    if after is None:
        after = parse_texts(snapshot, "after")
    mem_b, mem_a = before["meminfo"], after["meminfo"]
    bud_b, bud_a = before["buddyinfo"], after["buddyinfo"]
    checks = meminfo_checks(census, mem_b, mem_a) if mem_b or mem_a else []
    if before["slabinfo"] is not None:
        checks.append(slab_heads_check(census, before["slabinfo"]))
    if before["vmstat"] or after["vmstat"]:
        ref = survey_costs(census, [get_stage(REFERENCE)], descriptors, terms=terms)[0]
        hvo = -ref.by_type.get("hvo", 0)
        checks.append(memmap_check(census, ref.struct_page_bytes, before["vmstat"],
                                   after["vmstat"], f" − {hvo:,} B freed by HVO" if hvo else ""))
    buddy = (buddy_reconciliation(census, bud_b, bud_a, before["pagetypeinfo"])
             if bud_b or bud_a else [])
    skipped = [n for n in WEAKENS if not snapshot.has(n)]
    if "iomem" not in skipped and layout.ram is None:
        skipped.append("iomem")       # present but addresses hidden (not root)
    return SurveyResult(snapshot.source, snapshot.kind, snapshot.kernel, snapshot.note, census,
                        costs, checks, buddy, descriptors, skipped, terms,
                        time.monotonic() - t0)
