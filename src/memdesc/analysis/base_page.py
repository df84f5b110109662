"""What each stage would cost with 16 KiB and 64 KiB base pages, from the same snapshot.

LSFMM+BPF 2026 discussed 64 KiB base pages on x86 as another way to cut the memmap. The
model, computed from the 4 KiB snapshot (classification counts it in the same pass,
analysis/classify.py ``_base_unit``):

* a base page of 2^s 4 KiB pages is **in use if any of its 4 KiB pages is**; it takes the
  class of the first in-use unit in it (a 4 KiB page cache page makes its whole 64 KiB page
  a page-cache page);
* a unit of order k >= s stays one unit, of order k − s; smaller units sharing a base page
  become one order-0 unit of that page (so 16 order-0 anon folios in one 64 KiB page need
  one folio descriptor, not 16);
* struct pages: one per base page of every present section (memmap pages >> s), of the
  stage's struct page size; descriptors as at 4 KiB (same sizes, slab occupancy, SLUB
  geometry computed with 4 KiB slab pages; with 64 KiB slab pages the slack changes by less
  than one slab per cache); HVO and the memcg-of-Misc term are left out at the larger sizes.

It does not model what a real 16/64 KiB kernel would do differently (larger page-cache
readahead, memory lost to internal fragmentation of small files and anonymous regions beyond
what this snapshot's layout shows); the in-use memory each size implies is reported so that
cost is visible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from memdesc.analysis.census import CLASSES, NR_UNIT_ORDERS, Census
from memdesc.analysis.cost import StageCost, survey_costs
from memdesc.analysis.cost_terms import CostTerms
from memdesc.analysis.descriptors import DescriptorTable
from memdesc.analysis.in_use import NOT_IN_USE
from memdesc.stages import PAGE_SIZE, REFERENCE, Stage, get_stage

if TYPE_CHECKING:
    from memdesc.analysis.classify import Tally


@dataclass
class BasePageCost:
    """The stages at one base page size."""

    base_page_bytes: int
    #: memory in use at this size: in-use base pages × base page size
    in_use_memory_bytes: int
    costs: list[StageCost]

    def to_dict(self, ref4k: StageCost) -> dict:
        def pct(saving: int, ref: int) -> float:
            return 100.0 * saving / max(1, ref)
        ref_use = ref4k.in_use.total_bytes
        return {
            "base_page_bytes": self.base_page_bytes,
            "in_use_memory_bytes": self.in_use_memory_bytes,
            "stages": [{"id": c.id, "total_bytes": c.total_bytes,
                        "saving_percent": pct(ref4k.total_bytes - c.total_bytes,
                                              ref4k.total_bytes),
                        "in_use_total_bytes": c.in_use.total_bytes,
                        "in_use_saving_percent": pct(ref_use - c.in_use.total_bytes, ref_use)}
                       for c in self.costs]}


def base_page_counts(tally: Tally, not_in_use_flag0: int) -> dict[str, dict]:
    """The census in 16 KiB and 64 KiB base pages: units per class and order, as
    classify._base_unit() counted them, plus the base pages holding only flags==0 pages in use
    (untyped; the never-initialised and hole pages among the flags==0 runs are taken off by
    count, which may be off by one base page per run edge)."""
    from memdesc.analysis.classify import BASE_SHIFTS

    out = {}
    for si, sh in enumerate(BASE_SHIFTS):
        units = {c: [int(x) for x in tally.base_units[si, i]] for i, c in enumerate(CLASSES)}
        flag0 = max(0, int(tally.flag0_blocks[si]) - (not_in_use_flag0 >> sh))
        units["untyped"][0] += flag0
        out[str(PAGE_SIZE << sh)] = {"shift": sh, "units_by_class": units,
                                     "flag0_pages": flag0}
    return out


def census_at(census: Census, counts: dict) -> Census:
    """The census counted in base pages of 2^shift 4 KiB pages (see the module docstring)."""
    sh = int(counts["shift"])
    units = {c: np.asarray(counts["units_by_class"][c], np.int64) for c in CLASSES}
    orders = np.arange(NR_UNIT_ORDERS)
    pages = {c: int((units[c] << orders).sum()) for c in CLASSES}
    pfns = -(-census.pfns // (1 << sh))
    for c in NOT_IN_USE:
        units[c] = np.zeros(NR_UNIT_ORDERS, np.int64)
        pages[c] = 0
    rest = pfns - sum(pages.values())
    uninit = min(rest, census.pages_by_class["uninitialised"] >> sh)
    hole = min(rest - uninit, census.pages_by_class["hole"] >> sh)
    for c, n in (("uninitialised", uninit), ("hole", hole), ("free", rest - uninit - hole)):
        units[c][0] = n
        pages[c] = n
    out = Census(f"{census.source} ({PAGE_SIZE << sh >> 10} KiB base pages)", pfns, pages,
                 units, memmap_pages=census.memmap_pages >> sh,
                 ram_pages=census.ram_pages >> sh, kernel=census.kernel,
                 nr_cpus=census.nr_cpus)
    out.check()
    return out


def base_page_costs(census: Census, stages: list[Stage], table: DescriptorTable,
                    terms: CostTerms | None = None) -> list[BasePageCost]:
    """The stages at each larger base page size the census counted (16 KiB, 64 KiB)."""
    bare = CostTerms(hvo_sysctl=0, occupancy=terms.occupancy if terms else None)
    out = []
    for counts in (census.extras.get("base_pages") or {}).values():
        c = census_at(census, counts)
        used = c.pfns - sum(c.pages_by_class[k] for k in NOT_IN_USE)
        out.append(BasePageCost(PAGE_SIZE << int(counts["shift"]),
                                used * (PAGE_SIZE << int(counts["shift"])),
                                survey_costs(c, stages, table, terms=bare)))
    return out


def reference_4k(costs: list[StageCost], census: Census, table: DescriptorTable,
                 terms: CostTerms | None) -> StageCost:
    """Today's v6.18 at 4 KiB, the base of every saving in the base-page comparison."""
    ref = next((c for c in costs if c.id == REFERENCE), None)
    return ref or survey_costs(census, [get_stage(REFERENCE)], table, terms=terms)[0]
