"""The cost of each stage over memory *in use*, per class, and where a folio breaks even.

Most of the whole-machine saving of the small-struct-page stages is the memmap of memory
nobody uses: free buddy blocks, never-initialised struct pages, holes inside present sections.
An MM developer first wants the cost over memory that holds something:

    in use          = every PFN that is not free buddy memory, never-initialised, or a hole
    in-use cost     = struct page size × in-use pages + all the stage's descriptor bytes
                      (v6.18: 64 B × in-use pages; descriptors only exist for used memory)
    in-use saving   = in-use cost(v6.18) − in-use cost(stage)

Per class (:data:`BY_CLASS`) the stage's bytes are split: the struct pages of the class's
PFNs plus its share of the descriptor slab pages. A descriptor cache's pages are shared among
the classes by their objects in it (slab slack included); the struct slab cache's pages by the
slabs each class causes (its own slabs, and the descriptor slabs of its descriptors). The
split adds up to the stage's total exactly (largest remainder). ``unused`` is the rest of the
memmap: the struct pages of never-initialised memory and of holes inside present sections.

The projection "this machine's in-use mix scaled to all of its memory" multiplies the in-use
cost by memmap pages / in-use pages: what the stage would cost if every struct page described
memory used the way this machine's is (at v6.18 that is the whole-machine cost).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from memdesc.analysis.census import NR_UNIT_ORDERS, Census
from memdesc.analysis.cost_terms import memcg_misc_units
from memdesc.stages import REFERENCE

if TYPE_CHECKING:
    from memdesc.analysis.cost import StageCost
    from memdesc.analysis.descriptors import DescriptorTable
    from memdesc.stages import Stage

#: Census classes that make up each reported class; "misc" is the memory in use that needs
#: no descriptor (Misc in the memdesc plan).
CLASS_GROUPS: dict[str, tuple[str, ...]] = {
    "file": ("file",), "anon": ("anon", "ksm"), "shmem": ("shmem",), "slab": ("slab",),
    "pagetable": ("pagetable",), "hugetlb": ("hugetlb",),
    "misc": ("zero", "reserved", "offline", "untyped"),
    "free": ("free",),
}
IN_USE_CLASSES: tuple[str, ...] = ("file", "anon", "shmem", "slab", "pagetable", "hugetlb",
                                   "misc")
#: Keys of ``by_class``: in-use classes, free memory, and the rest of the memmap.
BY_CLASS: tuple[str, ...] = (*IN_USE_CLASSES, "free", "unused")
#: Census classes that are not in use.
NOT_IN_USE = ("free", "uninitialised", "hole")


def class_pages(census: Census) -> dict[str, int]:
    """Pages of each reported class (``unused`` = memmap pages not in another class)."""
    p = census.pages_by_class
    out = {k: sum(int(p[c]) for c in cs) for k, cs in CLASS_GROUPS.items()}
    out["unused"] = census.memmap_pages - sum(out.values())
    return out


def in_use_pages(census: Census) -> int:
    """PFNs that are neither free buddy memory, nor never-initialised, nor a hole."""
    return census.pfns - sum(int(census.pages_by_class[c]) for c in NOT_IN_USE)


def _objects_by_class(census: Census) -> dict[str, dict[str, int]]:
    """Descriptor objects of each cache, per reported class (mirrors descriptor_demand())."""
    u = census.units_by_class
    folio = {k: int(u[k][0]) for k in ("file", "anon", "shmem")}
    large = {k: int(u[k][1:].sum()) for k in ("file", "anon", "shmem")}
    return {"folio": folio, "large_folio": large,
            "hugetlb_folio": {"hugetlb": census.units("hugetlb")},
            "ksm": {"anon": census.units("ksm")},
            "ptdesc": {"pagetable": census.units("pagetable")},
            "memcg_misc": {"misc": memcg_misc_units(census)},
            "slab": {"slab": census.units("slab")}}


def _largest_remainder(weights: dict[str, float], total: int) -> dict[str, int]:
    """Integers proportional to ``weights`` that add up to ``total`` exactly."""
    s = sum(weights.values())
    if total == 0 or s <= 0:
        return dict.fromkeys(weights, 0)
    exact = {k: total * w / s for k, w in weights.items()}
    out = {k: int(v) for k, v in exact.items()}
    left = total - sum(out.values())
    for k in sorted(exact, key=lambda k: out[k] - exact[k])[:left]:
        out[k] += 1
    return out


def descriptor_bytes_by_class(census: Census, cost: StageCost) -> dict[str, int]:
    """The stage's descriptor slab pages (bytes) shared among the in-use classes."""
    out = dict.fromkeys(BY_CLASS, 0)
    if not cost.caches:
        return out
    objects = _objects_by_class(census)
    weight = dict.fromkeys(IN_USE_CLASSES, 0.0)
    slabs_caused = dict.fromkeys(IN_USE_CLASSES, 0.0)
    struct_slab = None
    for c in cost.caches:
        if c.name == "slab":
            struct_slab = c
            continue
        for k, n in objects[c.name].items():
            if c.objects:
                weight[k] += c.bytes * n / c.objects
                slabs_caused[k] += c.slabs * n / c.objects
    if struct_slab is not None:
        slabs_caused["slab"] += cost.real_slabs
        caused = sum(slabs_caused.values())
        for k in IN_USE_CLASSES:
            if caused:
                weight[k] += struct_slab.bytes * slabs_caused[k] / caused
    out.update(_largest_remainder(weight, cost.descriptor_bytes))
    return out


def bytes_by_class(census: Census, cost: StageCost) -> dict[str, int]:
    """The stage's total bytes per reported class (adds up to ``cost.total_bytes``)."""
    pages = class_pages(census)
    desc = descriptor_bytes_by_class(census, cost)
    memmap = cost.by_type.get("memmap", cost.struct_page_bytes)
    out = {k: pages[k] * cost.struct_page_size + desc[k] for k in BY_CLASS}
    # The memmap beyond size × pages of the classes stays with "unused"; the vmemmap HVO
    # frees (by_type["hvo"], negative) comes off the hugetlb class.
    out["unused"] += memmap - sum(pages[k] for k in BY_CLASS) * cost.struct_page_size
    out["hugetlb"] += cost.by_type.get("hvo", 0)
    return out


@dataclass
class InUseCost:
    """One stage's cost over memory in use (see the module docstring)."""

    pages: int
    struct_page_bytes: int
    descriptor_bytes: int
    total_bytes: int
    by_class: dict[str, int]
    saving_bytes: int = 0
    saving_percent: float = 0.0
    #: the in-use cost scaled to every struct page of the machine
    projected_bytes: int = 0
    projected_percent_of_ram: float = 0.0

    def to_dict(self) -> dict:
        return {"pages": self.pages, "struct_page_bytes": self.struct_page_bytes,
                "descriptor_bytes": self.descriptor_bytes, "total_bytes": self.total_bytes,
                "saving_bytes": self.saving_bytes, "saving_percent": self.saving_percent,
                "by_class": dict(self.by_class),
                "projected_all_memory": {"total_bytes": self.projected_bytes,
                                         "percent_of_ram": self.projected_percent_of_ram}}


def in_use_cost(census: Census, cost: StageCost) -> InUseCost:
    """In-use cost of one stage (savings filled in by :func:`attach_in_use`)."""
    by_class = bytes_by_class(census, cost)
    used = {k: by_class[k] for k in IN_USE_CLASSES}
    pages = in_use_pages(census)
    total = sum(used.values())
    desc = cost.descriptor_bytes
    projected = round(total * census.memmap_pages / pages) if pages else 0
    return InUseCost(pages, total - desc, desc, total, used,
                     projected_bytes=projected,
                     projected_percent_of_ram=100.0 * projected / max(1, census.ram_bytes))


def attach_in_use(census: Census, costs: list[StageCost], ref: StageCost) -> None:
    """Fill ``in_use``, ``by_class`` and ``by_class_change`` of every stage cost."""
    ref_in_use = in_use_cost(census, ref)
    ref_by_class = bytes_by_class(census, ref)
    for c in costs:
        c.by_class = bytes_by_class(census, c)
        c.by_class_change = {k: c.by_class[k] - ref_by_class[k] for k in BY_CLASS}
        iu = in_use_cost(census, c)
        iu.saving_bytes = ref_in_use.total_bytes - iu.total_bytes
        iu.saving_percent = 100.0 * iu.saving_bytes / max(1, ref_in_use.total_bytes)
        c.in_use = iu


# --- break-even folio order -----------------------------------------------------------------

#: Unit types whose break-even order is reported, and the descriptor each order needs.
BREAK_EVEN_TYPES: dict[str, tuple[str, str]] = {
    # type: (descriptor of an order-0 unit, descriptor of a larger one)
    "folio": ("folio", "large_folio"),
    "hugetlb_folio": ("hugetlb_folio", "hugetlb_folio"),
    "slab": ("slab", "slab"),
    "ptdesc": ("ptdesc", "ptdesc"),
}


def unit_cost(order: int, struct_page: int, descriptor: int) -> int:
    """Bytes of one unit of ``order``: its struct pages plus its descriptor."""
    return (struct_page << order) + descriptor


def break_even_orders(stages: list[Stage], table: DescriptorTable, nr_cpus: int
                      ) -> dict[str, dict[str, int | None]]:
    """Per stage and unit type: the smallest order from which one unit costs less than at
    v6.18 (64 B × 2^order), None when no order does (stages without dynamic descriptors).

    The descriptor counts as its cache stride (the table's size rounded to the cache
    alignment, plus an outside free pointer if the cache has one), as SLUB lays it out;
    slab slack and the struct slab of the descriptor slab are left out (a few percent).
    """
    from memdesc.analysis.cost import slab_geometry
    from memdesc.stages import STAGES

    ref = next(s for s in STAGES if s.id == REFERENCE).struct_page_bytes
    out: dict[str, dict[str, int | None]] = {}
    for s in stages:
        row: dict[str, int | None] = {}
        for t, (small, large) in BREAK_EVEN_TYPES.items():
            row[t] = None
            if not s.dynamic:
                continue
            for order in range(NR_UNIT_ORDERS):
                d = slab_geometry(table[small if order == 0 else large].bytes, nr_cpus,
                                  table.cache).stride
                if unit_cost(order, s.struct_page_bytes, d) < ref << order:
                    row[t] = order
                    break
        out[s.id] = row
    return out
