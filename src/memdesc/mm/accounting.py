"""Where the metadata bytes of an emulated kernel are, at any moment.

The same categories the survey's cost model (memdesc.analysis.cost) uses, but counted, not
estimated: ``memmap`` (struct pages of every present memory section), one entry per
descriptor type (live descriptors x their slab slot), ``slab`` (struct slab descriptors of
ordinary slabs), ``slab_overhead`` (struct slab descriptors that describe the descriptor
caches' own slabs, the self-hosted ones included) and ``slack`` (the rest of the descriptor
caches' pages: free slots and leftover). At the overlay stages descriptors live inside the
mem_map and cost nothing extra. ``descriptor_bytes`` is the memory the descriptor caches
occupy (pages x 4096); ``total_bytes`` = memmap + descriptor_bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memdesc.mm.mmzone import PAGES_PER_SECTION
from memdesc.mm.slab import CS_LIVE, G_PAGES, G_SIZE, G_SLABS
from memdesc.stages import PAGE_SIZE


@dataclass
class Accounting:
    """A snapshot of the metadata bytes of one kernel."""

    stage: str
    memmap_pages: int
    struct_page_bytes: int
    descriptor_bytes: int
    total_bytes: int
    ram_bytes: int
    by_type: dict[str, int]
    caches: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def percent_of_ram(self) -> float:
        return 100.0 * self.total_bytes / max(1, self.ram_bytes)

    def to_dict(self) -> dict:
        return {"stage": self.stage, "memmap_pages": self.memmap_pages,
                "struct_page_bytes": self.struct_page_bytes,
                "descriptor_bytes": self.descriptor_bytes, "total_bytes": self.total_bytes,
                "percent_of_ram": round(self.percent_of_ram, 4), "by_type": dict(self.by_type),
                "descriptor_caches": {k: dict(v) for k, v in self.caches.items()}}


def account(kernel) -> Accounting:
    """Count the metadata of ``kernel`` (a memdesc.mm.mm_init.Kernel) now."""
    machine = kernel.machine
    stage = kernel.stage
    memmap_pages = len(machine.sections_present()) * PAGES_PER_SECTION
    memmap = memmap_pages * stage.struct_page_bytes
    by_type: dict[str, int] = {"memmap": memmap}
    caches: dict[str, dict[str, int]] = {}
    desc_pages = 0
    slub = kernel.slub
    if stage.dynamic:
        desc_slabs = 0
        described = 0
        for kc in slub.cache_list:
            if kc.descriptor is None:
                continue
            g, cs = slub.geo[kc.index], slub.caches[kc.index]
            live, size = int(cs[CS_LIVE]), int(g[G_SIZE])
            pages, slabs = int(g[G_PAGES]), int(g[G_SLABS])
            caches[kc.name] = {"objects": live, "object_size": size, "slabs": slabs,
                               "pages": pages, "object_bytes": live * size}
            desc_pages += pages
            if kc.descriptor == "slab":
                self_slabs, slab_size = slabs, size
                slab_live = live
            else:
                by_type[kc.descriptor] = by_type.get(kc.descriptor, 0) + live * size
                desc_slabs += slabs
                described += live * size
        # struct slab objects: for descriptor-cache slabs (overhead) and everything else
        by_type["slab"] = (slab_live - desc_slabs) * slab_size
        by_type["slab_overhead"] = (desc_slabs + self_slabs) * slab_size
        by_type["slack"] = desc_pages * PAGE_SIZE - described - (slab_live + self_slabs) * \
            slab_size
    descriptor = desc_pages * PAGE_SIZE
    return Accounting(stage.id, memmap_pages, memmap, descriptor, memmap + descriptor,
                      machine.ram_bytes, by_type, caches)
