"""The kernel-memory arena of one stage's replay: a separate small emulated kernel
(memdesc.mm.mm_init.Kernel, same stage) whose slab allocator serves what the replay
allocates in kernel memory -- the policy replay's folio descriptors (from ``dynamic`` on,
memdesc.analysis.replay_folios) and, with access accounting on, the trace's own slab objects
(memdesc.analysis.replay_slab: kmem_cache_alloc()/kmalloc()/kfree()).

Why separate [I]: the kernel takes slab pages from the same buddy allocator; taking them from
the replayed memory would move every later allocation at the stages whose kernel memory
differs (descriptors from ``dynamic`` on), and the replay's point is that placement is
identical at every stage (the bisectable property). So the replayed machine's pages stay the
trace's, and the arena's slab pages are the arena's own.

* At the overlay stages (v6.18, folio) the arena is an overlay-stage Kernel: struct slab
  overlays the head struct page of each slab in the arena's mem_map (virt_to_slab(): the
  struct page); from ``dynamic`` on it is a dynamic-stage Kernel whose struct slab is a slab
  object (virt_to_slab(): the memdesc word, then the descriptor).
* Addresses: the arena's direct-map pages are its own PFNs (from 0 up to the arena's size),
  so object and descriptor addresses are real slab-object addresses of the arena; its struct
  pages and zone heads share the vmemmap/zone-head addresses of the replayed machine's first
  PFNs (the emulator has one vmemmap base and every Kernel starts at PFN 0: the access log
  cannot tell an arena struct page from the replayed machine's page of the same PFN; the
  trace's slab pages and the replay's low PFNs then share cache lines in the cache model).
* :meth:`StageArena.account_with` records the arena's accesses in the replay's accounting,
  inside the enclosing operation (folio_alloc, folio_put, kmem_cache_alloc/free).

Size (:func:`arena_bytes`): four times the peak of live folio descriptors' bytes plus
``SLAB_HEADROOM`` times the peak of live slab bytes (objects x bytes_alloc: slab
fragmentation, partially filled slabs, the rounding to object sizes and orders), plus 48 MiB
for the boot caches.
"""

from __future__ import annotations

import numpy as np

from memdesc.mm.access import share_accounting

#: bytes a folio descriptor takes at most (folio_large, memdesc.mm.folio.FOLIO_LARGE_PATH)
DESC_BYTES = 128
#: arena bytes per peak live slab byte (partial slabs, rounding to the slab order)
SLAB_HEADROOM = 2


def arena_bytes(peak_folios: int, peak_slab_bytes: int = 0) -> int:
    """RAM of the arena for ``peak_folios`` live folios and ``peak_slab_bytes`` of live slab
    objects (module doc), whole MiB."""
    mib = ((4 * peak_folios * DESC_BYTES + SLAB_HEADROOM * peak_slab_bytes) >> 20) + 48
    return mib << 20


def _unbooted(mm, contents) -> tuple:
    """The environment tuple E over ``mm`` with ``contents`` as its kernel memory and no slab
    caches of its own (nothing is allocated from the replayed memory)."""
    from memdesc.mm.fault_inject import FaultInjection
    from memdesc.mm.memdesc_alloc import ST_WORDS
    from memdesc.mm.slab_caches import Slub

    class _Unbooted(Slub):
        def boot(self) -> None:          # no caches: they would take pages off the replay
            pass

    return _Unbooted(mm, contents, FaultInjection(), np.zeros(mm.nr_pfns, np.uint32),
                     np.zeros(ST_WORDS, np.int64)).E


def arena_kernel(ram: str, stage):
    """A kernel-memory arena: a Kernel of ``ram`` (a Machine spec size, "48M") at ``stage``,
    one CPU, no debug checks, its kernel-memory store grown to all its memory at once (the
    environments over it keep its arrays: never grown again)."""
    from memdesc.mm.mm_init import Kernel
    from memdesc.mm.mmzone import Machine

    k = Kernel(Machine.from_spec(ram, nr_cpus=1), stage, debug=False)
    k.contents.grow(k.mm.nr_pfns)
    k.slub._rebuild()
    return k


class StageArena:
    """The environments of one stage's replay: ``HE`` (the replayed memory, its kernel
    memory the arena's) and ``AE`` (the arena's; ``HE`` again when there is no arena).
    ``arena`` is the arena Kernel or None.

    An arena is built when the stage needs kernel memory: folio descriptors (``folios``
    True: the policy replay, from ``dynamic`` on) or slab objects (``slab``: a
    memdesc.analysis.replay_slab.SlabPlan, at every stage; its caches are created here,
    kmem_cache_create() in trace order of first use, and its objects allocated before the
    trace are allocated, before accounting starts)."""

    def __init__(self, mm, peak_folios: int, folios: bool = True, slab=None):
        from memdesc.mm.kmem import PageContents

        self.arena = None
        self.slab = None
        if (folios and mm.stage.dynamic) or slab is not None:
            size = arena_bytes(peak_folios if folios else 0,
                               slab.peak_bytes if slab is not None else 0)
            k = arena_kernel(f"{size >> 20}M", mm.stage)
            self.arena = k
            if slab is not None:                 # caches first: they rebuild the arena's E
                self.slab = slab.start(k)
            self.HE = _unbooted(mm, k.contents)
            self.AE = k.E
        else:
            self.HE = _unbooted(mm, PageContents(1, 1))
            self.AE = self.HE

    def account_with(self, mm) -> None:
        """Record the arena's accesses in ``mm``'s accounting (memdesc.mm.access), inside
        the replay's operations."""
        if self.arena is not None:
            share_accounting(self.arena.mm, mm)

    def live_descriptors(self) -> int:
        """Folio descriptors allocated in the arena and not freed (0 without an arena or at
        the overlay stages)."""
        if self.arena is None:
            return 0
        sl = self.arena.slub
        return sum(sl.live(kc) for kc in sl.cache_list if kc.descriptor in ("folio",
                                                                             "large_folio"))
