"""One emulated kernel: page allocator, kernel memory contents, SLUB, descriptor caches.

Mirrors the order of mm_core_init() in mm/mm_init.c: the buddy allocator first (MemMap boots
with every managed page free), then kmem_cache_init() and the kmalloc caches (slub.Slub), and
from ``dynamic`` on the memdesc descriptor caches. Users (filemap, memory, pgtable, zsmalloc,
page_pool, vmalloc) take a :class:`Kernel`.
"""

from __future__ import annotations

import numpy as np

from memdesc.mm.fault_inject import FaultInjection
from memdesc.mm.kmem import PageContents
from memdesc.mm.memdesc_alloc import ST_WORDS
from memdesc.mm.memmap_init import MemMap
from memdesc.mm.mmzone import Machine
from memdesc.mm.slab_caches import Slub
from memdesc.stages import Stage, get_stage


class Kernel:
    """An emulated kernel at one stage.

    ``mm`` is the MemMap (mem_map + buddy + pcp), ``contents`` the backing of
    kernel-interpreted pages, ``tags`` the content tag of every PFN (what data it holds, 0 for
    none), ``stats`` counters of the descriptor layer, ``slub`` the slab allocator, ``fault``
    the fault-injection attributes. ``E`` is the environment tuple the numba paths take; it
    is rebuilt whenever an array in it is replaced (read it afresh, do not keep it).
    """

    def __init__(self, machine: Machine, stage: Stage | str, *, debug: bool = True,
                 check_every: int | None = 0, fault: FaultInjection | None = None):
        self.stage = get_stage(stage) if isinstance(stage, str) else stage
        self.machine = machine
        self.mm = MemMap(machine, self.stage, debug=debug, check_every=check_every)
        self.contents = PageContents(self.mm.nr_pfns)
        self.mm.contents = self.contents
        self.tags = np.zeros(self.mm.nr_pfns, np.uint32)
        self.stats = np.zeros(ST_WORDS, np.int64)
        # fault injection is armed after boot, as one sets /sys/kernel/debug/fail* on a
        # running kernel
        self.slub = Slub(self.mm, self.contents, FaultInjection(), self.tags, self.stats)
        self.arm_faults(fault or FaultInjection())
        self.debug = debug

    def arm_faults(self, fault: FaultInjection) -> None:
        """Switch the fault-injection attributes (after boot, or after the users' caches
        are created, as module init would run before someone arms failslab)."""
        self.fault = fault
        self.slub.fault = fault
        self.slub._rebuild()

    @property
    def E(self) -> tuple:
        return self.slub.E

    def grow(self) -> None:
        """Grow the kernel-memory store (a numba path returned NEED_GROW)."""
        self.slub._grow()

    def check(self) -> None:
        """All invariants: the page allocator's (memdesc.mm.debug) and the slab/descriptor
        layer's (slub.check_slabs)."""
        from memdesc.mm.slub_debug import check_slabs

        self.mm.check()
        check_slabs(self)
