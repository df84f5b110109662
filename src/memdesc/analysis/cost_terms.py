"""Terms of the cost model beyond "struct pages + perfectly packed descriptors".

Each term is in the stage costs (or, for the free pointer, beside them) and printed by
``--explain STAGE``:

* **HVO** (HugeTLB Vmemmap Optimization): with ``vm.hugetlb_optimize_vmemmap = 1`` the kernel
  keeps one vmemmap page per hugetlb folio and frees the rest
  (hugetlb_vmemmap_optimize_folio() in mm/hugetlb_vmemmap.c; HUGETLB_VMEMMAP_RESERVE_SIZE is
  one page; dmesg: "28 KiB vmemmap can be freed for a 2.00 MiB page"). A hugetlb folio of
  order k has ceil(2^k × struct page size / 4 KiB) vmemmap pages; all but one are freed. We
  apply it at every stage (the tail struct pages of a hugetlb folio stay identical when
  struct page shrinks), when the snapshot says HVO is on, or does not say (assumed on).
* **memcg storage of Misc**: until page32, page->memcg_data holds the memcg of any charged
  page. From the stage whose struct page lacks memcg_data, a charged page with no
  descriptor (untyped: large kmalloc, vmalloc, plain alloc_pages with __GFP_ACCOUNT;
  kpagecgroup != 0) needs its obj_cgroup stored elsewhere: one ``memcg_misc`` descriptor per
  allocation unit. Folios, slabs and ptdescs carry the pointer in their own descriptor.
* **Slab occupancy**: descriptor caches are not packed perfectly; SLUB keeps partial slabs.
  With slabinfo, the slab count of each descriptor cache is divided by the occupancy
  (Σ active_objs / Σ num_objs) of this machine's caches of similar object size.
* **SLUB free pointer**: SLAB_TYPESAFE_BY_RCU caches put the free pointer after the object
  unless ``freeptr_offset`` names a word inside it (calculate_sizes() in mm/slub.c). The table
  assumes inside; ``--explain`` shows what an outside pointer would cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from memdesc.analysis.census import Census
from memdesc.ingest.procfs import SlabCache
from memdesc.stages import PAGE_SIZE, Stage

#: Object sizes of the slab caches whose occupancy stands for the descriptor caches'
#: (the descriptors are 64-160 B; kmalloc-64 .. kmalloc-192 and their peers).
OCCUPANCY_OBJSIZE = (64, 192)
#: HUGETLB_VMEMMAP_RESERVE_SIZE: vmemmap kept per optimised hugetlb folio [S:
#: mm/hugetlb_vmemmap.h].
HVO_RESERVE_BYTES = PAGE_SIZE


@dataclass
class CostTerms:
    """What the snapshot says about the terms (None: not known)."""

    #: vm.hugetlb_optimize_vmemmap (None: not captured; HVO is then assumed on)
    hvo_sysctl: int | None = None
    #: occupancy of slab caches of descriptor-like object size (None: perfect packing)
    occupancy: float | None = None
    occupancy_caches: list[str] = field(default_factory=list)
    occupancy_objects: tuple[int, int] = (0, 0)

    @property
    def hvo(self) -> bool:
        return self.hvo_sysctl != 0

    def to_dict(self) -> dict:
        return {"hvo": self.hvo, "hvo_sysctl": self.hvo_sysctl, "occupancy": self.occupancy,
                "occupancy_caches": len(self.occupancy_caches),
                "occupancy_active_objs": self.occupancy_objects[0],
                "occupancy_num_objs": self.occupancy_objects[1]}


def slab_occupancy(slabinfo: list[SlabCache] | None
                   ) -> tuple[float | None, list[str], tuple[int, int]]:
    """Σ active_objs / Σ num_objs over caches with objsize in OCCUPANCY_OBJSIZE."""
    lo, hi = OCCUPANCY_OBJSIZE
    caches = [c for c in slabinfo or () if lo <= c.objsize <= hi and c.num_objs]
    active = sum(c.active_objs for c in caches)
    total = sum(c.num_objs for c in caches)
    if not total:
        return None, [], (0, 0)
    return active / total, [c.name for c in caches], (active, total)


def parse_sysctl_value(text: str | None, key: str) -> int | None:
    """``key = N`` (sysctl -a) or a bare ``N`` (/proc/sys file) from ``text``."""
    if text is None:
        return None
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep and k.strip().split(".")[-1] == key:
            return int(v.strip()) if v.strip().lstrip("-").isdigit() else None
    s = text.strip()
    return int(s) if s.isdigit() else None


def vmemmap_pages(order: int, struct_page: int) -> int:
    """4 KiB pages of vmemmap a folio of ``order`` spans."""
    return -(-(struct_page << order) // PAGE_SIZE)


def hvo_freed_bytes(census: Census, stage: Stage) -> int:
    """Vmemmap bytes HVO frees for the census's hugetlb folios at ``stage``."""
    u = census.units_by_class["hugetlb"]
    keep = HVO_RESERVE_BYTES // PAGE_SIZE
    return sum(int(n) * max(0, vmemmap_pages(o, stage.struct_page_bytes) - keep) * PAGE_SIZE
               for o, n in enumerate(u) if n)


def stage_has_memcg_data(stage: Stage) -> bool:
    return stage.page.has("memcg_data")


def memcg_misc_units(census: Census) -> int:
    """Untyped allocation units charged to a memcg (kpagecgroup), 0 without kpagecgroup."""
    acc = census.extras.get("accounted_misc")
    return int(sum(acc["units_by_order"])) if acc else 0


def occupied_slabs(objects: int, per_slab: int, occupancy: float | None) -> int:
    """Slabs for ``objects``: perfectly packed, or at this occupancy."""
    if not objects:
        return 0
    if occupancy is None or occupancy >= 1.0:
        return -(-objects // per_slab)
    return math.ceil(objects / (per_slab * occupancy))


def explain_lines(census: Census, stage: Stage, terms: CostTerms | None,
                  freeptr_delta: int | None) -> list[str]:
    """The terms of one stage, in words and numbers, for --explain."""
    t = terms or CostTerms()
    hv = census.units("hugetlb")
    out = ["cost-model terms:"]
    freed = hvo_freed_bytes(census, stage)
    state = ("on (vm.hugetlb_optimize_vmemmap = 1)" if t.hvo_sysctl == 1 else
             "off (vm.hugetlb_optimize_vmemmap = 0)" if t.hvo_sysctl == 0 else
             "assumed on (vm.hugetlb_optimize_vmemmap not captured)")
    if not hv:
        out.append(f"  HVO: no hugetlb folios here, nothing to optimise (HVO {state})")
    else:
        out.append(f"  HVO {state}: {hv:,} hugetlb folios keep one vmemmap page each; "
                   f"{'frees' if t.hvo else 'would free'} {freed:,} B of vmemmap at this stage")
    acc = census.extras.get("accounted_misc")
    if acc is None:
        out.append("  memcg of Misc: no kpagecgroup in this snapshot, not counted")
    elif stage_has_memcg_data(stage):
        out.append(f"  memcg of Misc: {memcg_misc_units(census):,} charged untyped units "
                   f"({acc['pages']:,} pages) keep page->memcg_data at this stage (no cost)")
    else:
        out.append(f"  memcg of Misc: {memcg_misc_units(census):,} charged untyped units "
                   f"({acc['pages']:,} pages, kpagecgroup != 0) need a memcg_misc descriptor "
                   "each (struct page has no memcg_data here)")
    if t.occupancy is None:
        out.append("  slab occupancy: no slabinfo, descriptor caches packed perfectly")
    else:
        lo, hi = OCCUPANCY_OBJSIZE
        a, n = t.occupancy_objects
        out.append(f"  slab occupancy {100 * t.occupancy:.1f} % = {a:,} active / {n:,} objects "
                   f"of this machine's {len(t.occupancy_caches)} caches of {lo}-{hi} B objects "
                   "(slabinfo): descriptor slabs = ceil(objects / (objects per slab × "
                   "occupancy))")
    if freeptr_delta is not None:
        out.append(f"  SLUB free pointer inside the object (freeptr_offset); outside it would "
                   f"add {freeptr_delta:+,} B at this stage")
    return out
