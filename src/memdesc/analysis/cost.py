"""What the metadata of a census costs at each stage of the memdesc Path.

Per stage: the memmap (one struct page per PFN of every present section, at the stage's
struct page size) plus, from the ``dynamic`` stage on, the descriptors allocated from slab
caches: one per allocation unit that needs one (folios, KSM pages, slabs, page tables), rounded
up to 16 bytes and packed into slab pages exactly as SLUB would size that cache, plus a
``struct slab`` for every descriptor slab, allocated from the slab-descriptor cache itself
(iterated to a fixed point). Free blocks, Misc memory (untyped, reserved, zero, offline) and
holes need no descriptor: buddy information stays embedded in struct page, Misc carries no
pointer.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import numpy as np

from memdesc.analysis.census import NR_UNIT_ORDERS, Census
from memdesc.analysis.cost_terms import (
    CostTerms,
    explain_lines,
    hvo_freed_bytes,
    memcg_misc_units,
    occupied_slabs,
    stage_has_memcg_data,
)
from memdesc.analysis.descriptors import CachePolicy, DescriptorTable
from memdesc.analysis.in_use import InUseCost, attach_in_use
from memdesc.mm import slub_sizing as sizing
from memdesc.mm.slab_common import get_order
from memdesc.stages import (
    DESCRIPTOR_TYPES,
    PAGE_SIZE,
    REFERENCE,
    STAGES,
    TRACKING,
    Stage,
    descriptor_type,
)

#: Census classes whose units need a descriptor, and which one (None: by order, see below).


def descriptor_cost_types() -> tuple[str, ...]:
    """Order in which descriptor caches are listed: stages.DESCRIPTOR_TYPES (the table the
    emulator creates its caches from) with the memcg_misc cost term before "slab" (struct
    slab comes last because it also describes every other descriptor slab)."""
    keys = [t.key for t in DESCRIPTOR_TYPES if t.key != "slab"]
    return (*keys, "memcg_misc", "slab")


# --- SLUB cache geometry ------------------------------------------------------------------

@dataclass(frozen=True)
class SlabGeometry:
    """How SLUB lays out one descriptor cache: stride (s->size), slab order, objects per slab,
    and the intermediate values of calculate_order() that --explain shows."""

    object_size: int       # the descriptor, rounded up to the cache alignment
    stride: int            # s->size: object + outside free pointer, realigned
    freeptr_outside: bool
    min_objects: int
    min_order: int
    order: int
    objects: int           # oo_objects(s->oo)
    fraction: int | None   # the waste fraction calc_slab_order() accepted (None: fallback)

    @property
    def pages(self) -> int:
        return 1 << self.order


@functools.lru_cache(maxsize=256)
def slab_geometry(object_bytes: int, nr_cpus: int, policy: CachePolicy) -> SlabGeometry:
    """Geometry of a descriptor cache of ``object_bytes`` objects on a machine of ``nr_cpus``
    (memoised: a pure function of hashable arguments with a frozen result; a replay asks for
    the same few geometries at every sample).

    The cache is created as the memdesc plan says (16-byte alignment, SLAB_TYPESAFE_BY_RCU,
    optionally a free pointer inside the object) and sized by the emulator's mirror of
    calculate_sizes()/calculate_order() in mm/slub.c (memdesc.mm.slub_sizing);
    ``nr_cpus`` stands for num_present_cpus().
    """
    rcu = policy.typesafe_by_rcu
    geo = sizing.calculate_sizes(object_bytes, sizing.SLAB_TYPESAFE_BY_RCU if rcu else 0,
                                 policy.align,
                                 freeptr_offset=0 if rcu and policy.use_freeptr_offset else None,
                                 nr_cpus=nr_cpus)
    stride = geo.size
    order = sizing.calculate_order(stride, nr_cpus, slub_min_objects=policy.min_objects,
                                   slub_min_order=policy.min_order,
                                   slub_max_order=policy.max_order)
    if order < 0:
        raise ValueError(f"a {stride}-byte descriptor does not fit any slab order")
    # The steps of calculate_order() that led there, for --explain.
    min_objects = policy.min_objects or sizing.default_min_objects(max(1, nr_cpus))
    min_objects = min(min_objects, max(sizing.order_objects(policy.max_order, stride), 1))
    min_order = max(policy.min_order, get_order(min_objects * stride))
    fraction = next((f for f in (16, 8, 4, 2)
                     if sizing.calc_slab_order(stride, min_order, policy.max_order, f) == order),
                    None)
    a = policy.align
    return SlabGeometry(-(-object_bytes // a) * a, stride, rcu and not policy.use_freeptr_offset,
                        min_objects, min_order, order, sizing.order_objects(order, stride),
                        fraction)


# --- per-stage cost -----------------------------------------------------------------------

@dataclass
class CacheCost:
    """One descriptor cache at one stage: its objects and the slab pages they occupy."""

    name: str
    descriptor_bytes: int      # C size from the table
    objects: int
    geometry: SlabGeometry
    slabs: int
    pages: int

    @property
    def bytes(self) -> int:
        return self.pages * PAGE_SIZE

    @property
    def object_bytes(self) -> int:
        return self.objects * self.geometry.object_size


@dataclass
class StageCost:
    """Metadata bytes of one stage. ``by_type`` adds up to ``total_bytes``."""

    id: str
    title: str
    struct_page_size: int
    memmap_pages: int
    struct_page_bytes: int
    descriptor_bytes: int
    total_bytes: int
    percent_of_ram: float
    by_type: dict[str, int]
    saving_bytes: int = 0
    saving_percent: float = 0.0
    caches: list[CacheCost] = field(default_factory=list)
    #: objects of the struct slab cache at each step of the fixed point
    fixed_point: list[int] = field(default_factory=list)
    real_slabs: int = 0
    #: cost over memory in use (analysis/in_use.py), filled in by survey_costs()
    in_use: InUseCost | None = None
    #: total_bytes split per class (in_use.BY_CLASS), and its change vs v6.18
    by_class: dict[str, int] = field(default_factory=dict)
    by_class_change: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        extra = {"in_use": self.in_use.to_dict()} if self.in_use is not None else {}
        if self.by_class:
            extra.update(by_class=dict(self.by_class),
                         by_class_change=dict(self.by_class_change))
        return {
            "id": self.id, "title": self.title, "struct_page_size": self.struct_page_size,
            "memmap_pages": self.memmap_pages, "struct_page_bytes": self.struct_page_bytes,
            "descriptor_bytes": self.descriptor_bytes, "total_bytes": self.total_bytes,
            "percent_of_ram": self.percent_of_ram, "by_type": dict(self.by_type),
            "saving_bytes": self.saving_bytes, "saving_percent": self.saving_percent,
            "descriptor_caches": [
                {"type": c.name, "descriptor_bytes": c.descriptor_bytes, "objects": c.objects,
                 "object_size": c.geometry.object_size, "stride": c.geometry.stride,
                 "slab_order": c.geometry.order, "objects_per_slab": c.geometry.objects,
                 "slabs": c.slabs, "pages": c.pages} for c in self.caches],
            "struct_slab_fixed_point": list(self.fixed_point),
        } | extra


def descriptor_demand(census: Census) -> dict[str, int]:
    """Descriptors the census's allocation units need once descriptors are dynamic.

    Driven by stages.DESCRIPTOR_TYPES: each type takes the units of its census classes at its
    unit orders (order-0 file/anon/shmem folios a ``folio``, larger ones a ``large_folio``,
    hugetlb folios a ``hugetlb_folio``, KSM pages a ``ksm``, slabs a ``slab``, page tables a
    ``ptdesc``); types whose pages the census cannot see (zpdesc, netmem_desc) need 0 here.
    ``memcg_misc`` is the cost term of analysis/cost_terms.py.
    """
    u = census.units_by_class
    pick = {"0": slice(0, 1), ">0": slice(1, None), "all": slice(0, None)}
    demand = {t.key: sum(int(u[c][pick[t.unit_orders]].sum()) for c in t.census_classes)
              for t in DESCRIPTOR_TYPES}
    demand["memcg_misc"] = memcg_misc_units(census)
    return demand


def _cache(name: str, objects: int, table: DescriptorTable, nr_cpus: int,
           occupancy: float | None = None) -> CacheCost:
    geo = slab_geometry(table[name].bytes, nr_cpus, table.cache)
    slabs = occupied_slabs(objects, geo.objects, occupancy)
    return CacheCost(name, table[name].bytes, objects, geo, slabs, slabs * geo.pages)


def _wanted(name: str, stage: Stage, table: DescriptorTable, terms: CostTerms | None) -> bool:
    """Whether ``stage`` allocates descriptors of ``name`` (memcg_misc: only as a cost term,
    once struct page has no memcg_data, and when the table sizes it)."""
    if name != "memcg_misc":
        # types the census cannot see (zpdesc, netmem_desc) have no demand to charge; at a
        # transition stage only the separated types take descriptors
        return (name != "slab" and bool(descriptor_type(name).census_classes)
                and name in stage.separate_types)
    return (terms is not None and name in table.descriptors
            and not stage_has_memcg_data(stage))


def stage_cost(census: Census, stage: Stage, table: DescriptorTable,
               nr_cpus: int | None = None, terms: CostTerms | None = None) -> StageCost:
    """The cost of ``census`` at ``stage`` (savings are filled in by :func:`survey_costs`).

    ``terms`` (analysis/cost_terms.py) adds HVO, memcg storage of Misc and slab occupancy;
    None is the bare model (struct pages + perfectly packed descriptors).
    """
    nr_cpus = nr_cpus or census.nr_cpus or 1
    memmap = census.memmap_pages * stage.struct_page_bytes
    by_type = {"memmap": memmap}
    hvo = hvo_freed_bytes(census, stage) if terms is not None and terms.hvo else 0
    if hvo:
        by_type["hvo"] = -hvo
    occupancy = terms.occupancy if terms is not None else None
    caches: list[CacheCost] = []
    fixed: list[int] = []
    demand = descriptor_demand(census)
    if stage.separate_types:
        caches = [_cache(n, demand[n], table, nr_cpus, occupancy) for n in descriptor_cost_types()
                  if _wanted(n, stage, table, terms)]
    if "slab" in stage.separate_types:
        # struct slab for the machine's slabs and for every descriptor slab, the struct slab
        # cache's own slabs included: iterate until the count stops changing.
        base = demand["slab"] + sum(c.slabs for c in caches)
        geo = slab_geometry(table["slab"].bytes, nr_cpus, table.cache)
        objects = base
        fixed.append(objects)
        while True:
            nxt = base + occupied_slabs(objects, geo.objects, occupancy)
            if nxt == objects:
                break
            objects = nxt
            fixed.append(objects)
        caches.append(_cache("slab", objects, table, nr_cpus, occupancy))
    for c in caches:
        if c.name != "slab":
            by_type[c.name] = c.object_bytes
        else:
            size = c.geometry.object_size
            by_type["slab"] = demand["slab"] * size
            by_type["slab_overhead"] = (c.objects - demand["slab"]) * size
    if caches:
        by_type["slack"] = sum(c.bytes for c in caches) - sum(c.object_bytes for c in caches)
    descriptor = sum(c.bytes for c in caches)
    # memory the stage's free-page tracking option keeps outside struct page (bitmaps,
    # counters, list heads per page: memdesc.stages.TRACKING)
    side = round(census.memmap_pages * TRACKING[stage.free_tracking].side_bytes_per_page)
    if side:
        by_type["free_tracking_side"] = side
    total = memmap - hvo + descriptor + side
    return StageCost(stage.id, stage.title, stage.struct_page_bytes, census.memmap_pages,
                     memmap - hvo, descriptor, total, 100.0 * total / max(1, census.ram_bytes),
                     by_type, caches=caches, fixed_point=fixed, real_slabs=demand["slab"])


def survey_costs(census: Census, stages: list[Stage] | None = None,
                 table: DescriptorTable | None = None, nr_cpus: int | None = None,
                 terms: CostTerms | None = None) -> list[StageCost]:
    """Costs for ``stages`` (default: all) with savings against ``v6.18``."""
    from memdesc.analysis.descriptors import load_descriptors

    table = table or load_descriptors()
    stages = list(stages or STAGES)
    ref_stage = next(s for s in STAGES if s.id == REFERENCE)
    ref = stage_cost(census, ref_stage, table, nr_cpus, terms)
    out = []
    for s in stages:
        c = stage_cost(census, s, table, nr_cpus, terms)
        c.saving_bytes = ref.total_bytes - c.total_bytes
        c.saving_percent = 100.0 * c.saving_bytes / max(1, ref.total_bytes)
        out.append(c)
    attach_in_use(census, out, ref)
    return out


def folio_order_distribution(census: Census) -> dict[str, object]:
    """Folio units and pages by order, all folio classes together and per class."""
    orders = np.arange(NR_UNIT_ORDERS)
    per = {c: census.units_by_class[c] for c in ("file", "anon", "shmem", "ksm", "hugetlb")}
    units = sum(per.values())
    return {
        "units_by_order": [int(x) for x in units],
        "pages_by_order": [int(x) for x in units << orders],
        "by_class": {c: [int(x) for x in v] for c, v in per.items()},
    }


# --- --explain ----------------------------------------------------------------------------

def _b(n: int) -> str:
    return f"{n:,} B ({n / 2**20:,.1f} MiB)"


def freeptr_delta(census: Census, stage: Stage, table: DescriptorTable,
                  nr_cpus: int | None, terms: CostTerms | None) -> int | None:
    """Bytes an outside SLUB free pointer would add to ``stage`` (None: not dynamic, or the
    table already puts it outside)."""
    p = table.cache
    if not stage.dynamic or not (p.typesafe_by_rcu and p.use_freeptr_offset):
        return None
    outside = dataclasses.replace(table, cache=dataclasses.replace(p, use_freeptr_offset=False))
    return (stage_cost(census, stage, outside, nr_cpus, terms).total_bytes
            - stage_cost(census, stage, table, nr_cpus, terms).total_bytes)


def explain(cost: StageCost, census: Census, table: DescriptorTable,
            nr_cpus: int | None = None, terms: CostTerms | None = None) -> list[str]:
    """The arithmetic of one stage, step by step (counts × sizes = bytes)."""
    from memdesc.stages import get_stage

    nr_cpus = nr_cpus or census.nr_cpus or 1
    memmap = census.memmap_pages * cost.struct_page_size
    hvo = -cost.by_type.get("hvo", 0)
    lines = [f"stage {cost.id}: {cost.title}",
             f"memmap: {census.memmap_pages:,} struct pages "
             f"({census.extras.get('memmap_basis', 'present sections')}) × "
             f"{cost.struct_page_size} B = {_b(memmap)}"
             + (f" − {hvo:,} B freed by HVO = {_b(cost.struct_page_bytes)}" if hvo else "")]
    if not cost.caches:
        lines.append("descriptors: none allocated — at this stage folios, slabs and ptdescs "
                     "overlay the struct pages they describe (already in the memmap)")
    else:
        p = table.cache
        lines.append(f"descriptor sizes from {table.path} (rounded up to {p.align} B):")
        for name, d in table.descriptors.items():
            lines.append(f"  {name:14s} {d.bytes:4d} B -> {table.size(name):4d} B   {d.source}")
        lines.append(f"  [slab_cache] {p.source}")
        freeptr = ("after the object (+8 B)" if p.typesafe_by_rcu and not p.use_freeptr_offset
                   else "inside the object (use_freeptr_offset)")
        min_objects = (f"slub_min_objects {p.min_objects}" if p.min_objects else
                       f"4 × (fls({nr_cpus}) + 1) = {sizing.default_min_objects(nr_cpus)}")
        lines.append(f"slab geometry: SLUB calculate_sizes()/calculate_order() (mm/slub.c) with "
                     f"{nr_cpus} CPU(s): min_objects = {min_objects} (capped at what fits "
                     f"slub_max_order {p.max_order}), slub_min_order {p.min_order}, free "
                     f"pointer {freeptr}")
        demand = descriptor_demand(census)
        u = census.units_by_class
        lines.append("descriptor demand (allocation units needing one):")
        lines.append("  folio       = order-0 file + anon + shmem = "
                     f"{int(u['file'][0]):,} + {int(u['anon'][0]):,} + {int(u['shmem'][0]):,} = "
                     f"{demand['folio']:,}")
        lines.append("  large_folio = order>=1 file + anon + shmem = "
                     f"{int(u['file'][1:].sum()):,} + {int(u['anon'][1:].sum()):,} + "
                     f"{int(u['shmem'][1:].sum()):,} = {demand['large_folio']:,}")
        lines.append(f"  hugetlb_folio = {demand['hugetlb_folio']:,}, ksm = {demand['ksm']:,}, "
                     f"ptdesc = {demand['ptdesc']:,}, slab (this machine's slabs) = "
                     f"{demand['slab']:,}, memcg_misc = "
                     + (f"{demand['memcg_misc']:,}" if any(c.name == "memcg_misc"
                                                           for c in cost.caches)
                        else "none at this stage"))
        for t in DESCRIPTOR_TYPES:
            if not t.census_classes:
                lines.append(f"  {t.key}: 0 ({t.why_no_census}; counted as untyped Misc)")
        occ = terms.occupancy if terms is not None else None
        per = (lambda n: f"{n}") if occ is None else (lambda n: f"({n} × {occ:.3f})")
        for c in cost.caches:
            g = c.geometry
            why = (f"waste <= 1/{g.fraction}" if g.fraction else "fallback get_order()")
            lines.append(f"  {c.name:14s} stride {g.stride} B, order {g.order} ({why}), "
                         f"{g.objects} objects/slab: ceil({c.objects:,} / {per(g.objects)}) = "
                         f"{c.slabs:,} slabs × {g.pages} page(s) = {c.pages:,} pages = "
                         f"{_b(c.bytes)}")
        slab_geo = cost.caches[-1].geometry
        base = cost.real_slabs + sum(c.slabs for c in cost.caches[:-1])
        div = per(slab_geo.objects)
        lines.append(f"struct slab fixed point: n = {cost.real_slabs:,} slabs of the machine + "
                     f"{base - cost.real_slabs:,} descriptor slabs + ceil(n / {div}) slabs of "
                     "the struct slab cache itself:")
        for prev, cur in zip(cost.fixed_point, cost.fixed_point[1:], strict=False):
            lines.append(f"  n = {base:,} + ceil({prev:,} / {div}) = {cur:,}")
        last = cost.fixed_point[-1]
        lines.append(f"  n = {base:,} + ceil({last:,} / {div}) = "
                     f"{base + occupied_slabs(last, slab_geo.objects, occ):,} (stable)")
        lines.append(f"descriptors: {sum(c.pages for c in cost.caches):,} slab pages × "
                     f"{PAGE_SIZE} B = {_b(cost.descriptor_bytes)}")
    stage = get_stage(cost.id)
    lines.extend(explain_lines(census, stage, terms,
                               freeptr_delta(census, stage, table, nr_cpus, terms)))
    lines.append("by type: " + ", ".join(f"{k} {v:,} B" for k, v in cost.by_type.items()))
    lines.append(f"total: {cost.struct_page_bytes:,} + {cost.descriptor_bytes:,} = "
                 f"{_b(cost.total_bytes)} = {cost.percent_of_ram:.4f} % of "
                 f"{census.ram_pages:,} present pages × {PAGE_SIZE} B")
    lines.append(f"saving vs {REFERENCE}: {cost.saving_bytes:,} B ({cost.saving_percent:+.2f} %)")
    return lines
