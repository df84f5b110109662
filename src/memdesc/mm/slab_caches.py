"""The slab allocator of one emulated kernel as an object: its caches, boot and Python API.

Mirrors kmem_cache_init() of mm/slub.c (static boot caches, early_kmem_cache_node_alloc(),
bootstrap()), kmem_cache_create() and create_kmalloc_caches() (KMALLOC_NORMAL) of
mm/slab_common.c, and from ``dynamic`` on the memdesc descriptor caches. The numba hot paths
it drives are in memdesc.mm.slub and memdesc.mm.kmalloc; the sizing of a new cache is
memdesc.mm.slub_sizing.calculate_sizes().

Invariants: cache c's state is row c of ``caches`` (CS_*) and ``geo`` (G_*); after boot every
boot cache's struct kmem_cache is an object of the kmem_cache cache and every slab of it
points there (bootstrap()); a batch kernel that returns NEED_GROW is resumed after the
kernel-memory store grows, so no call is lost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memdesc.mm import gfp as _gfp
from memdesc.mm.kmalloc import (
    kmalloc_nb,
    kmalloc_ops_nb,
)
from memdesc.mm.kmem import (
    BATCH,
    START_KERNEL_MAP,
)
from memdesc.mm.memdesc_alloc import (
    SP_C_BASE,
    SP_C_MAX,
    SP_DEBUG,
    SP_DYNAMIC,
    SP_MEMDESC_OFF,
    SP_ORDER_OFF,
    SP_PAGE_BYTES,
    SP_PFN_OFF,
    SP_SLABDESC,
    SP_T_ANON,
    SP_T_FILE,
    SP_T_MISC,
    SP_T_MOVABLE,
    SP_T_NETPOOL,
    SP_T_PGTABLE,
    SP_T_SLAB,
    SP_TYPE_CACHES,
)
from memdesc.mm.page_alloc import VMBug
from memdesc.mm.slab import (
    _GCOMP,
    CS_CACHE,
    CS_EMPTY_INUSE,
    CS_LIVE,
    CS_MIN_PARTIAL,
    CS_NODE,
    CS_NR_NODES,
    CS_WORDS,
    DONE,
    G_ALLOCFLAGS,
    G_DESC,
    G_MIN_OBJECTS,
    G_MIN_ORDER,
    G_OBJECTS,
    G_OFFSET,
    G_ORDER,
    G_PAGES,
    G_SELF,
    G_SIZE,
    G_SLABS,
    G_TOTAL_OBJS,
    G_WORDS,
    KCN_BYTES,
    KCN_NR_PARTIAL,
    KCN_PARTIAL,
    KMEM_CACHE_INDEX_OFF,
    KMEM_CACHE_NODE_OFF,
    MAX_NODES,
    NEED_GROW,
    OPS_FAILED,
)
from memdesc.mm.slab_common import (
    KMALLOC_INFO_SIZES,
    KMALLOC_SHIFT_HIGH,
    KMALLOC_SIZE_INDEX,
    kmalloc_cache_name,
)
from memdesc.mm.slub import (
    flush_cpu_slab_nb,
    kmem_cache_alloc_nb,
    kmem_cache_free_nb,
    set_slab_cache_nb,
)
from memdesc.mm.slub_sizing import (
    SLAB_CACHE_DMA,
    SLAB_CACHE_DMA32,
    SLAB_HWCACHE_ALIGN,
    SLAB_KMALLOC,
    SLAB_RECLAIM_ACCOUNT,
    SLAB_TYPESAFE_BY_RCU,
    CacheGeometry,
    calculate_sizes,
    oo_objects,
    oo_order,
)
from memdesc.stages import type_code


@dataclass
class KmemCache:
    """A cache as the rest of the emulator sees it (its state lives in Slub's arrays)."""

    name: str
    index: int
    geometry: CacheGeometry
    flags: int
    descriptor: str | None = None      # memdesc descriptor key (data/descriptors.toml)


#: Static kernel addresses of the boot caches' struct kmem_cache (__initdata in mm/slub.c,
#: somewhere in the kernel image) before bootstrap() moves them into slab objects [I].
_BOOT_STATIC = START_KERNEL_MAP + 0x3000000


class Slub:
    """SLUB over an emulated MemMap: caches, kmalloc, and (from ``dynamic`` on) the struct
    slab descriptor cache.

    Boot mirrors kmem_cache_init() in mm/slub.c: the kmem_cache_node and kmem_cache caches
    start from static (__initdata) structures, the first kmem_cache_node object comes out of
    that cache's own first slab (early_kmem_cache_node_alloc()), and bootstrap() then moves
    both into objects of the kmem_cache cache and repoints their slabs.

    How the descriptor recursion is broken (dynamic stages and later): every slab needs a
    struct slab descriptor, and descriptors are slab objects. The descriptor cache for struct
    slab ("memdesc_slab") is *self-hosted*: object 0 of each of its slabs is that slab's own
    struct slab, and the memdesc word of its pages points there. Allocating a slab for it
    therefore needs pages only (the buddy allocator keeps its own state in struct page, never
    in a descriptor), so the chain ends after one step: a folio descriptor may need a new
    folio-cache slab, whose struct slab may need a new memdesc_slab slab, which needs only
    pages. memdesc_slab is created first, with a static struct kmem_cache and no node lists
    until the kmem_cache_node cache exists (its first slabs are taken as cpu slabs, which need
    no list). Freeing runs the chain backwards and never allocates: an emptied slab returns
    its pages, then its descriptor to memdesc_slab, which may return a self-hosted slab's
    pages - and stops there.
    """

    def __init__(self, mm, contents, fault, tags: np.ndarray, stats: np.ndarray):
        from memdesc.mm.free_tracking import memdesc_slot
        from memdesc.mm.memdesc_alloc import SP_CPU, SP_NR_NODES, SP_WORDS, desc_pfn_order

        self.mm, self.contents, self.fault = mm, contents, fault
        self.stage = mm.stage
        if self.stage.descriptor_policy not in ("overlay", "dynamic"):
            from memdesc.errors import InputError

            raise InputError(f"stage {self.stage.id}: the emulator does not model a partial "
                             "separation of descriptors yet (the survey does); emulated "
                             "stages: v6.18, folio, dynamic and later")
        self.nr_nodes = mm.machine.nr_nodes
        if self.nr_nodes > MAX_NODES:
            raise ValueError(f"the slab model keeps at most {MAX_NODES} nodes")
        self.nr_cpus = mm.machine.nr_cpus
        sp = np.zeros(SP_WORDS, np.int64)
        sp[SP_DYNAMIC] = int(self.stage.dynamic)
        sp[SP_PAGE_BYTES] = self.stage.struct_page_bytes
        slot = int(memdesc_slot(mm.S))
        sp[SP_MEMDESC_OFF] = max(slot, 0) * 8
        for idx, name in ((SP_T_SLAB, "Slab"), (SP_T_FILE, "File"), (SP_T_ANON, "Anon"),
                          (SP_T_PGTABLE, "PageTable"), (SP_T_NETPOOL, "NetPool"),
                          (SP_T_MOVABLE, "Movable"), (SP_T_MISC, "Misc")):
            sp[idx] = type_code(self.stage, name)
        sp[SP_PFN_OFF:SP_PFN_OFF + 16] = -1
        sp[SP_ORDER_OFF:SP_ORDER_OFF + 16] = -1
        for name, (pfn_off, order_off) in desc_pfn_order().items():
            if name in self.stage.types.values():
                t = type_code(self.stage, name)
                sp[SP_PFN_OFF + t], sp[SP_ORDER_OFF + t] = pfn_off, order_off
        sp[SP_DEBUG] = int(mm._order is not None)
        sp[SP_SLABDESC] = -1
        sp[SP_NR_NODES] = self.nr_nodes
        sp[SP_CPU] = 0
        self.sp = sp
        self.tags, self.stats = tags, stats
        self.caches = np.zeros((16, CS_WORDS), np.uint64)
        self.geo = np.zeros((16, G_WORDS), np.int64)
        self.cache_list: list[KmemCache] = []
        self.by_name: dict[str, KmemCache] = {}
        self._rebuild()
        self.kmalloc_caches = np.full(KMALLOC_SHIFT_HIGH + 1, -1, np.int64)
        self._size_index = np.array(KMALLOC_SIZE_INDEX, np.int64)
        self.boot()

    # ---- plumbing ------------------------------------------------------------------------
    def _rebuild(self) -> None:
        from memdesc.mm.memdesc_alloc import new_env

        self.E = new_env(self.mm, self.contents, self.sp, self.caches, self.geo,
                         self.fault.state, self.tags, self.stats)

    def _grow(self) -> None:
        self.contents.grow()
        self._rebuild()

    def _run(self, fn, *args):
        """Call a batch kernel ``fn(E, *args, start)`` until done, growing the store."""
        start = 0
        while True:
            i, status = fn(self.E, *args, start)
            if status == DONE:
                return
            if status == NEED_GROW:
                self._grow()
                start = i
                continue
            raise VMBug(f"kmem_cache_free: object at index {i} is not an object of the cache "
                        f"(stage {self.stage.id})")

    # ---- caches --------------------------------------------------------------------------
    def _new_cache(self, name: str, object_size: int, flags: int, align_req: int,
                   freeptr_offset: int | None, *, self_hosted: bool = False,
                   descriptor: str | None = None, has_ctor: bool = False) -> KmemCache:
        geo = calculate_sizes(object_size, flags, align_req, freeptr_offset=freeptr_offset,
                              has_ctor=has_ctor, nr_cpus=self.nr_cpus)
        c = len(self.cache_list)
        if c == self.caches.shape[0]:
            self.caches = np.concatenate([self.caches, np.zeros_like(self.caches)])
            self.geo = np.concatenate([self.geo, np.zeros_like(self.geo)])
            self._rebuild()
        g = self.geo[c]
        g[G_ORDER], g[G_OBJECTS] = geo.order, geo.objects
        g[G_MIN_ORDER], g[G_MIN_OBJECTS] = oo_order(geo.min), oo_objects(geo.min)
        g[G_SIZE], g[G_OFFSET] = geo.size, geo.offset
        allocflags = _GCOMP
        if flags & SLAB_RECLAIM_ACCOUNT:
            allocflags |= _gfp.GFP.RECLAIMABLE
        if flags & SLAB_CACHE_DMA:
            allocflags |= _gfp.GFP.DMA
        if flags & SLAB_CACHE_DMA32:
            allocflags |= _gfp.GFP.DMA32
        g[G_ALLOCFLAGS] = allocflags
        g[G_SELF] = int(self_hosted)
        g[G_DESC] = int(descriptor is not None)
        cs = self.caches[c]
        cs[CS_MIN_PARTIAL] = geo.min_partial
        cs[CS_EMPTY_INUSE] = 1 if self_hosted else 0
        cs[CS_CACHE] = _BOOT_STATIC + 0x4000 * c
        kc = KmemCache(name, c, geo, flags, descriptor)
        self.cache_list.append(kc)
        self.by_name[name] = kc
        return kc

    def _node_struct(self, nid: int) -> int:
        """A kmem_cache_node object, initialised (init_kmem_cache_node())."""
        n = self._alloc_one(self.by_name["kmem_cache_node"], _gfp.GFP_KERNEL, nid)
        if n == 0:
            raise MemoryError("no memory for a kmem_cache_node at boot")
        for off in range(0, KCN_BYTES, 8):
            self.contents.write64(n + off, 0)
        self.contents.write64(n + KCN_PARTIAL, n + KCN_PARTIAL)
        self.contents.write64(n + KCN_PARTIAL + 8, n + KCN_PARTIAL)
        return n

    def _init_nodes(self, kc: KmemCache) -> None:
        """init_kmem_cache_nodes(): one kmem_cache_node per node."""
        for nid in range(self.nr_nodes):
            self.caches[kc.index, CS_NODE + nid] = self._node_struct(nid)
        self.caches[kc.index, CS_NR_NODES] = self.nr_nodes

    def _set_struct(self, kc: KmemCache, addr: int) -> None:
        self.contents.write64(addr + KMEM_CACHE_INDEX_OFF, kc.index)
        set_slab_cache_nb(self.E, kc.index, np.uint64(addr))

    def boot(self) -> None:
        """kmem_cache_init() (see the class docstring), then create_kmalloc_caches() and, from
        ``dynamic`` on, the memdesc descriptor caches."""
        from memdesc.mm.memdesc_alloc import (
            SLAB_DESC,
            descriptor_cache_slot,
            descriptor_caches,
            descriptor_slot_bytes,
            use_freeptr_offset,
        )

        inside = use_freeptr_offset()
        boot = []
        if self.stage.dynamic:
            sd = self._new_cache(SLAB_DESC.cache_name, descriptor_slot_bytes("slab"),
                                 SLAB_TYPESAFE_BY_RCU, 16,
                                 SLAB_DESC.freeptr_offset if inside else None,
                                 self_hosted=True, descriptor="slab")
            self.sp[SP_SLABDESC] = sd.index
            boot.append(sd)
        kcn = self._new_cache("kmem_cache_node", KCN_BYTES, SLAB_HWCACHE_ALIGN, 0, None)
        for nid in range(self.nr_nodes):             # early_kmem_cache_node_alloc()
            self.caches[kcn.index, CS_NODE + nid] = self._node_struct(nid)
        self.caches[kcn.index, CS_NR_NODES] = self.nr_nodes
        for kc in boot:
            self._init_nodes(kc)
        kmc = self._new_cache("kmem_cache", KMEM_CACHE_NODE_OFF + 8 * self.nr_nodes,
                              SLAB_HWCACHE_ALIGN, 0, None)
        self._init_nodes(kmc)
        for kc in (kmc, kcn, *boot):                 # bootstrap()
            flush_cpu_slab_nb(self.E, kc.index)
            if int(self.geo[kc.index, G_SLABS]) > self._listed_slabs(kc):
                raise AssertionError(f"bootstrap: {kc.name} has a full slab off the lists")
            self._set_struct(kc, self._alloc_one(kmc, _gfp.GFP_KERNEL))
        for index in KMALLOC_INFO_SIZES:             # create_kmalloc_caches(), KMALLOC_NORMAL
            kc = self.kmem_cache_create(kmalloc_cache_name(index), KMALLOC_INFO_SIZES[index],
                                        flags=SLAB_KMALLOC)
            self.kmalloc_caches[index] = kc.index
        self.sp[SP_C_BASE:SP_C_BASE + SP_C_MAX] = -1
        self.sp[SP_TYPE_CACHES:SP_TYPE_CACHES + 16] = 0
        if self.stage.dynamic:
            self._type_cache(SLAB_DESC, int(self.sp[SP_SLABDESC]))
            for d in descriptor_caches():
                kc = self.kmem_cache_create(d.cache_name, descriptor_slot_bytes(d.key),
                                            align=16, flags=SLAB_TYPESAFE_BY_RCU,
                                            freeptr_offset=d.freeptr_offset if inside else None,
                                            descriptor=d.key)
                self.sp[descriptor_cache_slot(d.key)] = kc.index
                self._type_cache(d, kc.index)

    def _type_cache(self, d, index: int) -> None:
        """Allow descriptors of ``d``'s memdesc types to come from cache ``index``
        (check_slabs_nb() check 11)."""
        if index >= 63:
            raise ValueError("descriptor cache index too high for the type->cache mask")
        for name in d.memdesc_types:
            if name in self.stage.types.values():
                self.sp[SP_TYPE_CACHES + type_code(self.stage, name)] |= 1 << index

    def _listed_slabs(self, kc: KmemCache) -> int:
        n = 0
        for k in range(int(self.caches[kc.index, CS_NR_NODES])):
            node = int(self.caches[kc.index, CS_NODE + k])
            n += self.contents.read64(node + KCN_NR_PARTIAL)
        return n

    def kmem_cache_create(self, name: str, size: int, align: int = 0, flags: int = 0,
                          freeptr_offset: int | None = None,
                          descriptor: str | None = None, has_ctor: bool = False) -> KmemCache:
        """Mirrors kmem_cache_create() -> do_kmem_cache_create() (no merging: each cache is
        its own): struct kmem_cache from the kmem_cache cache, a kmem_cache_node per node."""
        if name in self.by_name:
            raise ValueError(f"kmem_cache {name!r} exists")
        kc = self._new_cache(name, size, flags, align, freeptr_offset, descriptor=descriptor,
                             has_ctor=has_ctor)
        addr = self._alloc_one(self.by_name["kmem_cache"], _gfp.GFP_KERNEL)
        if addr == 0:
            raise MemoryError(f"kmem_cache_create({name}): no memory")
        self.caches[kc.index, CS_CACHE] = addr
        self.contents.write64(addr + KMEM_CACHE_INDEX_OFF, kc.index)
        self._init_nodes(kc)
        return kc

    def cache(self, name: str) -> KmemCache:
        return self.by_name[name]

    # ---- allocation ----------------------------------------------------------------------
    def _alloc_one(self, kc: KmemCache, gfpflags: int, nid: int = 0) -> int:
        out = np.zeros(1, np.uint64)
        self._run(kmem_cache_alloc_nb, kc.index, gfpflags, nid, out)
        return int(out[0])

    def kmem_cache_alloc(self, kc: KmemCache, gfpflags: int) -> int:
        """One object's address, or 0."""
        return self._alloc_one(kc, gfpflags)

    def kmem_cache_alloc_bulk(self, kc: KmemCache, gfpflags: int, n: int,
                              nid: int = 0) -> np.ndarray:
        """``n`` independent kmem_cache_alloc() calls; uint64 addresses, 0 where one failed."""
        out = np.zeros(n, np.uint64)
        for s in range(0, n, BATCH):                     # Ctrl-C between batches
            self._run(kmem_cache_alloc_nb, kc.index, gfpflags, nid, out[s:s + BATCH])
        return out

    def kmem_cache_free(self, kc: KmemCache | None, objs) -> None:
        """kmem_cache_free() of one address or an array (kc None: kfree())."""
        objs = np.atleast_1d(np.asarray(objs, np.uint64))
        for s in range(0, objs.shape[0], BATCH):         # Ctrl-C between batches
            self._run(kmem_cache_free_nb, -1 if kc is None else kc.index, objs[s:s + BATCH])

    def kmalloc(self, sizes, gfpflags: int, nid: int = 0) -> np.ndarray:
        """kmalloc() of each size; uint64 addresses (0 where one failed)."""
        sizes = np.atleast_1d(np.asarray(sizes, np.int64))
        if sizes.size and sizes.min() <= 0:
            raise ValueError("kmalloc sizes must be positive")
        out = np.zeros(sizes.shape[0], np.uint64)
        for s in range(0, sizes.shape[0], BATCH):        # Ctrl-C between batches
            self._run(kmalloc_nb, self.kmalloc_caches, self._size_index, sizes[s:s + BATCH],
                      gfpflags, nid, out[s:s + BATCH])
        return out

    def kmalloc_ops(self, kinds, sizes, slots, nslots: int, gfpflags: int,
                    nid: int = 0) -> tuple[np.ndarray, int]:
        """Run a kmalloc/kfree sequence (see kmalloc_ops_nb); returns the slot addresses
        still allocated at the end (0 for freed or failed slots) and how many of the
        kmalloc() calls failed. Every kmalloc op must have a slot of its own."""
        kinds = np.ascontiguousarray(kinds, np.int64)
        sizes = np.ascontiguousarray(sizes, np.int64)
        slots = np.ascontiguousarray(slots, np.int64)
        slot_addr = np.zeros(nslots, np.uint64)
        for s in range(0, kinds.shape[0], BATCH):        # Ctrl-C between batches
            e = s + BATCH
            self._run(kmalloc_ops_nb, self.kmalloc_caches, self._size_index, kinds[s:e],
                      sizes[s:e], slots[s:e], slot_addr, gfpflags, nid)
        failed = slot_addr == OPS_FAILED
        slot_addr[failed] = 0
        return slot_addr, int(failed.sum())

    def kfree(self, objs) -> None:
        """kfree() of one address or an array (0 entries are kfree(NULL))."""
        self.kmem_cache_free(None, objs)

    # ---- inspection ----------------------------------------------------------------------
    def live(self, kc: KmemCache) -> int:
        return int(self.caches[kc.index, CS_LIVE])

    def pages(self, kc: KmemCache) -> int:
        return int(self.geo[kc.index, G_PAGES])

    def slabs(self, kc: KmemCache) -> int:
        return int(self.geo[kc.index, G_SLABS])

    def slabinfo(self) -> list[tuple[str, int, int, int, int, int, int]]:
        """(name, active_objs, num_objs, objsize, objperslab, pagesperslab, num_slabs) per
        cache, as /proc/slabinfo prints them."""
        rows = []
        for kc in self.cache_list:
            g = self.geo[kc.index]
            rows.append((kc.name, self.live(kc), int(g[G_TOTAL_OBJS]), int(g[G_SIZE]),
                         int(g[G_OBJECTS]), 1 << int(g[G_ORDER]), int(g[G_SLABS])))
        return rows
