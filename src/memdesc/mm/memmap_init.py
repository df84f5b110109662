"""The boot of one emulated machine's physical memory: MemMap, its zones and mem_map.

Mirrors the mem_map half of mm/mm_init.c of Linux 6.18 (memdesc.mm.mm_init holds
mm_core_init()'s Kernel on top of it): free_area_init() (zones, pageblocks set to
MIGRATE_MOVABLE as memmap_init_range() does, per_cpu_pages with high_min/high_max/batch,
watermarks and lowmem_reserve from the Machine), build_zonelists() (mm/page_alloc.c),
memmap_init() (every struct page initialised; holes and unmanaged RAM PG_reserved / Misc
reserved as init_unavailable_range() does) and memblock_free_all() (__free_pages_core() with
FPI_TO_TAIL in max-aligned chunks).

Invariants after construction: every struct page of the mem_map is initialised for the
stage; with ``free_all`` every managed page is free in the buddy (no pcp page, counters
pgalloc/pgfree/failed zero), without it no page is (memdesc.mm.start_state fills the lists).
The kernel initialises struct pages in parallel (deferred_init_memmap()); a big mem_map here
is initialised by two threads (PARALLEL_INIT_PFNS).
"""

from __future__ import annotations

import threading

import numpy as np
from numba import njit

from memdesc.mm import free_tracking as ft
from memdesc.mm.buddy import split_large_buddy
from memdesc.mm.free_tracking import (
    C_HPZ,
    page_init,
    unmanaged,
)
from memdesc.mm.gfp import MIGRATE_MOVABLE
from memdesc.mm.mm_types import (
    page_dtype,
    page_member,
)
from memdesc.mm.mmzone import (
    MAX_ORDER_NR_PAGES,
    MAX_PAGE_ORDER,
    NR_ZONES,
    ZONE_NAMES,
    Machine,
    ZoneSpec,
    pageblock_order,
)
from memdesc.mm.zone_state import (
    FPI_TO_TAIL,
    NPCOL,
    NZCOL,
    P_BATCH,
    P_HIGH,
    P_HIGH_MAX,
    P_HIGH_MIN,
    Z_BASE,
    Z_END,
    Z_FAILED,
    Z_LOWRES,
    Z_MANAGED,
    Z_NID,
    Z_PGALLOC,
    Z_PRESENT,
    Z_START,
    Z_TYPE,
    Z_WMARK,
    VMBug,
)
from memdesc.stages import Stage, get_stage, variant_name

# ---- boot: memmap_init() and memblock_free_all() ------------------------------------------------

@njit(cache=True)
def _page_init_clean(mem, S, pfn, gz, reserved):
    """page_init() on a page whose words are first cleared (the storage may be reused)."""
    w = S[ft.C_W]
    for k in range(w):
        mem[pfn * w + k] = 0
    page_init(mem, S, pfn, gz, reserved)


@njit(cache=True, nogil=True)
def init_range_nb(mem, S, lo, hi, gz, reserved):
    """memmap_init_range() over [lo, hi): struct pages of zone ``gz`` (page_init() each,
    every word written, so the storage need not be zeroed first).

    Fast path: a struct page of the range is the first one plus (pfn - lo) times a fixed
    step per word (the words hold node/zone bits, constants and self-pointers such as
    INIT_LIST_HEAD(lru) that move 64 B per page), so when page_init() of the first three
    pages shows that, the rest is written as that line and the last page is checked
    against page_init(); any other shape falls back to page_init() per page."""
    mem, S = unmanaged(mem), unmanaged(S)
    w = S[ft.C_W]
    if hi - lo < 8:
        for pfn in range(lo, hi):
            _page_init_clean(mem, S, pfn, gz, reserved)
        return
    for pfn in range(lo, lo + 3):
        _page_init_clean(mem, S, pfn, gz, reserved)
    base = np.empty(w, np.uint64)
    step = np.empty(w, np.uint64)
    linear = True
    for k in range(w):
        base[k] = mem[lo * w + k]
        step[k] = mem[(lo + 1) * w + k] - base[k]
        if mem[(lo + 2) * w + k] != mem[(lo + 1) * w + k] + step[k]:
            linear = False
    if linear:
        for pfn in range(lo + 3, hi):
            i = np.uint64(pfn - lo)
            for k in range(w):
                mem[pfn * w + k] = base[k] + i * step[k]
        last = np.empty(w, np.uint64)
        for k in range(w):
            last[k] = mem[(hi - 1) * w + k]
        _page_init_clean(mem, S, hi - 1, gz, reserved)
        for k in range(w):
            if mem[(hi - 1) * w + k] != last[k]:
                linear = False
    if not linear:
        for pfn in range(lo + 3, hi):
            _page_init_clean(mem, S, pfn, gz, reserved)


@njit(cache=True)
def free_range_boot_nb(mem, S, lo, hi, gz):
    """Mirrors __free_pages_memory() -> __free_pages_core(FPI_TO_TAIL): max-aligned chunks."""
    mem, S = unmanaged(mem), unmanaged(S)
    start = lo
    while start < hi:
        # min(MAX_PAGE_ORDER, __ffs(start)), MAX_PAGE_ORDER for pfn 0
        order = _ffs_order(start) if start else MAX_PAGE_ORDER
        while start + (np.int64(1) << order) > hi:
            order -= 1
        split_large_buddy(mem, S, start, gz, order, FPI_TO_TAIL)
        start += np.int64(1) << order


@njit(cache=True)
def _ffs_order(x):
    o = 0
    while o < MAX_PAGE_ORDER and not (x >> o) & 1:
        o += 1
    return o


# ---- MemMap --------------------------------------------------------------------------------------

def _zonelists(machine: Machine, zs: np.ndarray) -> np.ndarray:
    """zl[nid, 0] = ZONELIST_FALLBACK (local node first, then the others; highest zone first
    within a node: build_zonelists()); zl[nid, 1] = ZONELIST_NOFALLBACK (__GFP_THISNODE)."""
    nn = machine.nr_nodes
    zl = np.full((nn, 2, nn * NR_ZONES + 1), -1, np.int64)
    for nid in range(nn):
        order = [nid] + [n for n in range(nn) if n != nid]
        for which, nodes in ((0, order), (1, [nid])):
            k = 0
            for n in nodes:
                for zt in range(NR_ZONES - 1, -1, -1):
                    gz = n * NR_ZONES + zt
                    if zs[gz, Z_MANAGED] > 0:
                        zl[nid, which, k] = gz
                        k += 1
    return zl


#: mem_maps of at least this many struct pages are initialised by two threads (MemMap._boot)
PARALLEL_INIT_PFNS = 1 << 20


def _split_pages(ranges: list[tuple[int, int, int, bool]]
                 ) -> list[list[tuple[int, int, int, bool]]]:
    """``ranges`` (lo, hi, ...) cut into two lists of about the same number of pages."""
    half = sum(hi - lo for lo, hi, *_ in ranges) // 2
    first, second, done = [], [], 0
    for lo, hi, *rest in ranges:
        cut = min(hi, max(lo, lo + half - done))
        if cut > lo:
            first.append((lo, cut, *rest))
        if hi > cut:
            second.append((cut, hi, *rest))
        done += cut - lo
    return [first, second]


class MemMap:
    """One emulated kernel's physical memory: mem_map, zones, pageblocks, pcp lists.

    ``mem`` is the whole mem_map as uint64 words (``nr_pfns * sizeof(struct page) / 8``),
    ``pages`` its structured view (one element per struct page). Everything else lives in one
    int64 array ``S`` (config header, list heads, zones, pcp, pageblocks, zonelists); ``heads``,
    ``zs``, ``pcp``, ``pb``, ``pbz``, ``zl`` and ``cfg`` are numpy views of its regions.
    Numba kernels take ``(mm.mem, mm.S)`` (``mm.st``).
    """

    def __init__(self, machine: Machine, stage: Stage | str, *, debug: bool = True,
                 check_every: int | None = None, free_all: bool = True,
                 buffer: np.ndarray | None = None):
        self.machine = machine
        self.stage = get_stage(stage) if isinstance(stage, str) else stage
        st_ = self.stage
        nz, ncpu, nn = machine.nr_nodes * NR_ZONES, machine.nr_cpus, machine.nr_nodes
        cfg = ft.make_cfg(st_, ncpu, nn)
        span_limit = ft.max_zone_pages(st_)
        self.nr_pfns = machine.nr_pfns
        words = self.nr_pfns * (st_.struct_page_bytes // 8)
        if buffer is not None and buffer.dtype == np.uint64 and buffer.size >= words:
            # a caller's mem_map storage, already faulted in (a fresh array's first touch
            # costs more than initialising it); _boot() writes every word of it
            self.mem = buffer[:words]
        else:
            self.mem = np.zeros(words, np.uint64)
        self.pages = self.mem.view(page_dtype(st_))
        hpz = int(cfg[C_HPZ])
        npb = self.nr_pfns >> pageblock_order
        nzl = nz + 1
        sizes = [("heads", nz * hpz * 2, ft.C_OFF_HEADS), ("zs", nz * NZCOL, ft.C_OFF_ZS),
                 ("pcp", nz * ncpu * NPCOL, ft.C_OFF_PCP), ("pb", npb, ft.C_OFF_PB),
                 ("pbz", npb, ft.C_OFF_PBZ), ("zl", nn * 2 * nzl, ft.C_OFF_ZL),
                 ("side", ft.side_words(st_, self.nr_pfns), ft.C_OFF_SIDE)]
        off = ft.NCFG
        for _, n, slot in sizes:
            cfg[slot] = off
            off += n
        cfg[ft.C_NZL] = nzl
        self.S = S = np.zeros(off, np.int64)
        S[:ft.NCFG] = cfg
        self.cfg = S[:ft.NCFG]
        view = {name: S[cfg[slot]:cfg[slot] + n] for name, n, slot in sizes}
        self.heads = heads = view["heads"].reshape(nz * hpz, 2)
        self.zs = zs = view["zs"].reshape(nz, NZCOL)
        self.pcp = pcp = view["pcp"].reshape(nz, ncpu, NPCOL)
        self.pb, self.pbz = pb, pbz = view["pb"], view["pbz"]
        self.zl = view["zl"].reshape(nn, 2, nzl)
        heads[:, 0] = heads[:, 1] = -1 - np.arange(nz * hpz)
        pbz[:] = -1
        for gz, z in enumerate(machine.zones):
            p = machine.params(z.node, z.zone_type)
            zs[gz, Z_BASE] = z.start_pfn & ~(MAX_ORDER_NR_PAGES - 1)
            zs[gz, Z_START], zs[gz, Z_END] = z.start_pfn, z.end_pfn
            zs[gz, Z_NID], zs[gz, Z_TYPE] = z.node, z.zone_type
            zs[gz, Z_MANAGED], zs[gz, Z_PRESENT] = z.managed, z.present
            zs[gz, Z_WMARK:Z_WMARK + 4] = (p.min, p.low, p.high, p.promo)
            zs[gz, Z_LOWRES:Z_LOWRES + 5] = p.lowmem_reserve
            pcp[gz, :, P_HIGH] = p.high_min
            pcp[gz, :, P_HIGH_MIN], pcp[gz, :, P_HIGH_MAX] = p.high_min, p.high_max
            pcp[gz, :, P_BATCH] = p.batch
            if z.spanned:
                if span_limit is not None and z.end_pfn - zs[gz, Z_BASE] > span_limit:
                    raise ValueError(f"{variant_name(st_)}: zone {z.name} of node {z.node} "
                                     f"spans more than {span_limit} pages")
                b0, b1 = z.start_pfn >> pageblock_order, (z.end_pfn - 1) >> pageblock_order
                pbz[b0:b1 + 1] = gz
                pb[b0:b1 + 1] = MIGRATE_MOVABLE      # memmap_init_range(): MIGRATE_MOVABLE
        self.zl[:] = _zonelists(machine, zs)
        self.st = (self.mem, self.S)
        self._boot(free_all)
        self.debug = debug
        if check_every is None:                       # full checks are O(nr_pfns)
            check_every = 1 if self.nr_pfns <= (1 << 18) else 0
        self.check_every = check_every
        self._calls = 0
        self.contents = None          # memdesc.mm.kmem.PageContents, attached by a later layer
        self._order = np.full(self.nr_pfns, -1, np.int8) if debug else None

    def _boot(self, free_all: bool = True) -> None:
        """memmap_init() then memblock_free_all(): every struct page initialised (RAM the
        buddy never gets, holes and the tail of the last section as PG_reserved / Misc
        reserved, like init_unavailable_range()), then the managed ranges freed in max-aligned
        chunks to the tail of the free lists (__free_pages_core(FPI_TO_TAIL)). Without
        ``free_all`` the free lists stay empty (memdesc.mm.start_state fills them).

        A big mem_map is initialised by two threads, each on half of the pages (page_init()
        writes only the struct page it initialises and reads only S's configuration, and
        init_range_nb() releases the GIL): the kernel too initialises struct pages in
        parallel (deferred_init_memmap() per node, padata threads per section range)."""
        m = self.machine
        spans = sorted((z.start_pfn, z.end_pfn, gz) for gz, z in enumerate(m.zones) if z.spanned)
        ranges = []                          # (lo, hi, gz, reserved) of memmap_init_range()
        pos = 0
        for s0, e0, gz in spans:
            if s0 > pos:                    # a hole between zones: reserved, next zone's ids
                ranges.append((pos, s0, gz, True))
            for s, e in m.managed_ranges(m.zones[gz]):
                if s > s0:
                    ranges.append((s0, s, gz, True))
                ranges.append((s, e, gz, False))
                s0 = e
            if s0 < e0:
                ranges.append((s0, e0, gz, True))
            pos = e0
        if pos < self.nr_pfns:
            ranges.append((pos, self.nr_pfns, spans[-1][2], True))
        halves = _split_pages(ranges) if self.nr_pfns >= PARALLEL_INIT_PFNS else [ranges]
        helper = None
        if len(halves) > 1:
            helper = threading.Thread(target=self._init_ranges, args=(halves[1],), daemon=True)
            helper.start()
        self._init_ranges(halves[0])
        if helper is not None:
            helper.join()
        if not free_all:
            return
        for gz, z in enumerate(m.zones):
            for s, e in m.managed_ranges(z):
                free_range_boot_nb(self.mem, self.S, s, e, gz)
        self.zs[:, Z_PGALLOC:Z_FAILED + 1] = 0

    def _init_ranges(self, ranges: list[tuple[int, int, int, bool]]) -> None:
        for lo, hi, gz, reserved in ranges:
            init_range_nb(self.mem, self.S, lo, hi, gz, reserved)

    # ---- conveniences (same as the module functions) -------------------------------------------
    def alloc(self, gfp: int, order: int = 0, nid: int = 0, cpu: int = 0) -> int:
        from memdesc.mm.page_alloc import alloc_pages

        return alloc_pages(self, gfp, order, nid, cpu)

    def free(self, pfn: int, order: int = 0, cpu: int = 0) -> None:
        from memdesc.mm.page_alloc import free_pages

        free_pages(self, pfn, order, cpu)

    def check(self) -> None:
        """Run the full invariant check (memdesc.mm.debug.check_memmap)."""
        from memdesc.mm.debug import check_memmap

        check_memmap(self)

    def _after_call(self) -> None:
        if self.debug and self.check_every:
            self._calls += 1
            if self._calls % self.check_every == 0:
                self.check()

    def zone_index(self, nid: int, zone: str | int) -> int:
        zt = ZONE_NAMES.index(zone) if isinstance(zone, str) else zone
        return nid * NR_ZONES + zt

    def read_kernel_word(self, addr: int) -> int:
        """The 64-bit word at an emulated kernel address: mem_map (vmemmap) or, through the
        attached PageContents, a direct-map page (where dynamic descriptors live)."""
        from memdesc.mm.kmem import VMEMMAP_START

        if addr >= VMEMMAP_START:
            i = (addr - VMEMMAP_START) >> 3
            if i >= self.mem.shape[0]:
                raise VMBug(f"address {addr:#x} is past the end of vmemmap")
            return int(self.mem[i])
        if self.contents is None:
            raise LookupError(f"descriptor at {addr:#x}: no emulated kernel memory is attached "
                              "(MemMap.contents, a memdesc.mm.kmem.PageContents)")
        return self.contents.read64(addr)


# ---- lookups on the memory map (include/linux/mm.h) ----------------------------------------------

def page_field(mm: MemMap, pfn: int, name: str) -> int:
    """Member ``name`` of struct page ``pfn`` (FieldAbsent if the stage has no such member).
    16-byte members (list_head) come back as (next, prev)."""
    page_member(mm.stage, name)
    v = mm.pages[name][pfn]
    return tuple(int(x) for x in v) if np.ndim(v) else int(v)


def set_page_field(mm: MemMap, pfn: int, name: str, value) -> None:
    """Store ``value`` into member ``name`` of struct page ``pfn``."""
    page_member(mm.stage, name)
    mm.pages[name][pfn] = value


def _zone_of_word(mm: MemMap, pfn: int) -> tuple[int, int]:
    """(nid, zone type) of ``pfn`` the stage's way (page_zone()/page_to_nid())."""
    from memdesc.mm.memdesc import memdesc_decode
    from memdesc.mm.mm_types import memdesc_nid, memdesc_zonenum

    stage = mm.stage
    if stage.zone_lookup == "page_flags":
        f = int(mm.pages["flags"][pfn])
        return memdesc_nid(f), memdesc_zonenum(f)
    word = int(mm.pages["memdesc"][pfn])
    md = memdesc_decode(stage, word)
    if md.type_name == "Misc":
        return md.nid, md.zone
    if md.type_name == "Buddy":                       # free: the PFN-indexed table
        gz = int(mm.pbz[pfn >> pageblock_order])
        return gz // NR_ZONES, gz % NR_ZONES
    f = mm.read_kernel_word(md.pointer)               # the descriptor's memdesc_flags_t
    return memdesc_nid(f), memdesc_zonenum(f)


def page_zone(mm: MemMap, pfn: int) -> ZoneSpec:
    """Mirrors page_zone(): the zone struct page ``pfn`` belongs to, found as the stage finds
    it (page->flags; or the descriptor's memdesc_flags_t / Misc inline bits / PFN table)."""
    nid, zt = _zone_of_word(mm, pfn)
    return mm.machine.zone(nid, zt)


def page_zonenum(mm: MemMap, pfn: int) -> int:
    """Mirrors page_zonenum()."""
    return _zone_of_word(mm, pfn)[1]


def page_to_nid(mm: MemMap, pfn: int) -> int:
    """Mirrors page_to_nid()."""
    return _zone_of_word(mm, pfn)[0]


def folio_nid(mm: MemMap, folio: int) -> int:
    """Mirrors folio_nid(): memdesc_nid(folio->flags). ``folio`` is the folio's address: its
    head struct page at the overlay stages, its descriptor from ``dynamic`` on; flags is the
    first word of both."""
    from memdesc.mm.mm_types import memdesc_nid

    return memdesc_nid(mm.read_kernel_word(folio))
