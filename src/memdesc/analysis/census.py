"""The census of physical memory: every PFN as part of an allocation unit with a memdesc type.

A :class:`Census` is what the survey derives from a real snapshot (analysis/classify.py) and
what the emulator will produce for a simulated machine, so the two compare side by side and feed
the same cost model (analysis/cost.py). It holds counts only (no per-page data): pages and
allocation units per class, units by order, per-zone figures, free-block histograms, and a
downsampled class map of the PFN space for the physical memory picture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from memdesc.errors import InputError
from memdesc.stages import PAGE_SIZE

#: The classes, in this fixed order (also the index used in arrays and the map).
CLASSES: tuple[str, ...] = (
    "free", "file", "anon", "shmem", "ksm", "slab", "pagetable", "hugetlb", "zero",
    "reserved", "offline", "untyped", "uninitialised", "hole",
)
CLASS_INDEX: dict[str, int] = {c: i for i, c in enumerate(CLASSES)}

#: Classes whose units are folios (a descriptor of type File/Anon/KSM at the dynamic stages).
FOLIO_CLASSES: tuple[str, ...] = ("file", "anon", "shmem", "ksm", "hugetlb")

#: Unit orders tracked: 0..18 (a 1 GiB hugetlb folio is order 18 with 4 KiB pages).
NR_UNIT_ORDERS = 19
#: MAX_PAGE_ORDER on x86-64 (free_area[11]) [S: include/linux/mmzone.h; M: buddyinfo columns].
MAX_PAGE_ORDER = 10
NR_PAGE_ORDERS = MAX_PAGE_ORDER + 1

#: Version of the to_dict() layout; bump when fields change meaning.
CENSUS_VERSION = 1


@dataclass
class ZoneCensus:
    """One populated zone: the kernel's own figures (zoneinfo) next to what the census counted."""

    node: int
    name: str
    start_pfn: int
    end_pfn: int
    spanned: int
    present: int
    managed: int
    #: pages per class inside the zone span (all CLASSES keys)
    pages_by_class: dict[str, int]
    #: our free blocks per order 0..MAX_PAGE_ORDER (maximal merging of KPF_BUDDY runs)
    free_blocks: list[int]
    #: Σ per-CPU pcp ``count`` of the zone (zoneinfo pagesets), None when unknown
    pcp_pages: int | None = None
    #: upper bound for never-initialised pages: present − managed − PG_reserved pages
    uninitialised_bound: int | None = None
    #: pages with KPF_RESERVED inside the zone and inside System RAM
    reserved_flag_pages: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ZoneCensus:
        return cls(**d)


@dataclass
class Census:
    """Pages and allocation units by memdesc class for one machine (snapshot or simulation).

    ``units_by_class[c][k]`` counts units of class ``c`` and order ``k``; for every class
    Σ_k units·2^k equals ``pages_by_class[c]`` (classes without structure, such as holes,
    count each page as an order-0 unit).
    """

    source: str
    pfns: int
    pages_by_class: dict[str, int]
    units_by_class: dict[str, np.ndarray]
    #: struct pages that exist: every PFN of a present memory section (SPARSEMEM_VMEMMAP)
    memmap_pages: int
    #: base for "% of RAM": present pages (Σ zone present, else System RAM, else non-hole)
    ram_pages: int
    zones: list[ZoneCensus] = field(default_factory=list)
    #: PFNs per map cell and the dominant class index of each cell (uint8, CLASSES order)
    cell_pfns: int = 512
    cells: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    kernel: str | None = None
    #: CPUs the kernel sized its slab caches for (num_present_cpus()), None when unknown
    nr_cpus: int | None = None
    #: free-form facts the reports show (pcp estimate, anomalies, hole breakdown, ...)
    extras: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        missing = set(CLASSES) - set(self.pages_by_class)
        if missing:
            raise InputError(f"census: pages_by_class lacks {', '.join(sorted(missing))}")
        for c in CLASSES:
            u = np.zeros(NR_UNIT_ORDERS, np.int64)
            given = np.asarray(self.units_by_class.get(c, u), dtype=np.int64)
            u[: len(given)] = given[:NR_UNIT_ORDERS]
            self.units_by_class[c] = u

    # --- derived views --------------------------------------------------------------------

    @property
    def ram_bytes(self) -> int:
        return self.ram_pages * PAGE_SIZE

    def units(self, cls: str) -> int:
        """Number of allocation units of class ``cls``."""
        return int(self.units_by_class[cls].sum())

    def folio_orders(self) -> dict[str, list[int]]:
        """Folio units per order for each folio class (the distribution that drives cost)."""
        return {c: self.units_by_class[c].tolist() for c in FOLIO_CLASSES}

    def check(self) -> None:
        """Internal consistency (raises InputError): classes partition the PFN space and the
        units of each class cover exactly its pages."""
        total = sum(self.pages_by_class.values())
        if total != self.pfns:
            raise InputError(f"census: classes hold {total} pages but there are {self.pfns} PFNs")
        orders = 1 << np.arange(NR_UNIT_ORDERS, dtype=np.int64)
        for c in CLASSES:
            covered = int((self.units_by_class[c] * orders).sum())
            if covered != self.pages_by_class[c]:
                raise InputError(f"census: {c} units cover {covered} pages, class has "
                                 f"{self.pages_by_class[c]}")

    # --- serialisation ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "census_version": CENSUS_VERSION,
            "source": self.source,
            "kernel": self.kernel,
            "pfns": self.pfns,
            "memmap_pages": self.memmap_pages,
            "ram_pages": self.ram_pages,
            "nr_cpus": self.nr_cpus,
            "pages_by_class": {c: int(self.pages_by_class[c]) for c in CLASSES},
            "units_by_class": {c: [int(x) for x in self.units_by_class[c]] for c in CLASSES},
            "zones": [z.to_dict() for z in self.zones],
            "cell_pfns": self.cell_pfns,
            "cells": self.cells.astype(np.uint8).tobytes().hex(),
            "extras": self.extras,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Census:
        if d.get("census_version") != CENSUS_VERSION:
            raise InputError(f"census: version {d.get('census_version')!r} is not "
                             f"{CENSUS_VERSION}, the one this memdesc reads")
        return cls(
            source=d["source"], pfns=int(d["pfns"]),
            pages_by_class={c: int(v) for c, v in d["pages_by_class"].items()},
            units_by_class={c: np.asarray(v, np.int64) for c, v in d["units_by_class"].items()},
            memmap_pages=int(d["memmap_pages"]), ram_pages=int(d["ram_pages"]),
            zones=[ZoneCensus.from_dict(z) for z in d.get("zones", [])],
            cell_pfns=int(d.get("cell_pfns", 512)),
            cells=np.frombuffer(bytes.fromhex(d.get("cells", "")), np.uint8).copy(),
            kernel=d.get("kernel"), nr_cpus=d.get("nr_cpus"), extras=dict(d.get("extras", {})),
            notes=list(d.get("notes", [])),
        )
