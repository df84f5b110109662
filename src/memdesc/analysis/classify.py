"""Classify every PFN of a kpageflags dump into allocation units with a memdesc class.

One numba pass per chunk of ``/proc/kpageflags`` values (uint64 per PFN) adds to a
:class:`Tally` of fixed size (pages per zone and class, units per class and order, free blocks
per zone and order, a per-cell class count for the map), so memory stays bounded whatever the
machine size. :func:`build_census` then resolves what needs the whole pass (which ``flags == 0``
pages are never-initialised) and returns a :class:`~memdesc.analysis.census.Census`.

The rules, in the order they apply to a unit (its head page's flags; tail pages carry the
head's flags because stable_page_flags() in fs/proc/page.c reads ``folio->flags``):

1. outside System RAM (iomem) -> hole; KPF_NOPAGE -> hole.
2. ``flags == 0`` -> provisional, split later into ``uninitialised`` and ``untyped``.
3. KPF_BUDDY (set on *every* page of a free block) -> free; runs are cut into naturally
   aligned blocks of order <= MAX_PAGE_ORDER as maximal merging would leave them.
4. a compound head and the KPF_COMPOUND_TAIL run after it form one unit of order log2(len).
5. SLAB first (slab pages can show spurious KPF_ANON/KPF_KSM: kpageflags derives them from the
   word at page->mapping, which in struct slab is a counter), then PGTABLE, HUGE (hugetlb),
   ZERO_PAGE, OFFLINE, RESERVED, KSM, ANON, SWAPCACHE without ANON (anon: a swap-cache folio
   not mapped yet, or a shmem folio shmem_writeout() moved to the swap cache; its ->mapping is
   not anonymous but NR_SHMEM no longer counts it), SWAPBACKED without ANON (shmem), page-cache
   hints (file), and anything else is untyped (Misc: large kmalloc, page_pool, driver pages).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from numba import njit
from numba.extending import overload

from memdesc.analysis.census import (
    CLASS_INDEX,
    CLASSES,
    MAX_PAGE_ORDER,
    NR_PAGE_ORDERS,
    NR_UNIT_ORDERS,
    Census,
    ZoneCensus,
)
from memdesc.ingest import kpageflags as kpf

# x86-64 SECTION_SIZE_BITS 27 -> 128 MiB sections = 2^15 PFNs of 4 KiB
# [S: arch/x86/include/asm/sparsemem.h; M: memory-blocks.txt shows 128 MiB blocks].
SECTION_SHIFT = 15
PAGES_PER_SECTION = 1 << SECTION_SHIFT

# Class indices as numba constants; FLAG0 is the provisional class of flags == 0 pages.
FREE, FILE, ANON, SHMEM, KSM, SLAB, PAGETABLE, HUGETLB, ZERO, RESERVED, OFFLINE, UNTYPED, \
    UNINIT, HOLE = (CLASS_INDEX[c] for c in CLASSES)
FLAG0 = len(CLASSES)
NCLS = FLAG0 + 1

#: Larger base pages the census also counts, as shifts over 4 KiB: 16 KiB and 64 KiB.
BASE_SHIFTS = (2, 4)
BASE_SHIFTS_A = np.array(BASE_SHIFTS, np.int64)

# Anomaly counters (index into Tally.anomalies).
ANOMALIES = ("orphan_tail_runs", "irregular_compound_runs", "hwpoison_pages",
             "buddy_on_compound_pages", "hole_pages_with_struct_page")
A_ORPHAN, A_IRREGULAR, A_HWPOISON, A_BUDDY_COMPOUND, A_HOLE_FLAGS = range(len(ANOMALIES))


def _b(bit: int) -> np.uint64:
    return np.uint64(1 << bit)


U0 = np.uint64(0)
B_BUDDY = _b(kpf.KPF_BUDDY)
B_NOPAGE = _b(kpf.KPF_NOPAGE)
B_HEAD = _b(kpf.KPF_COMPOUND_HEAD)
B_TAIL = _b(kpf.KPF_COMPOUND_TAIL)
B_COMPOUND = B_HEAD | B_TAIL
B_SLAB = _b(kpf.KPF_SLAB)
B_PGTABLE = _b(kpf.KPF_PGTABLE)
B_HUGE = _b(kpf.KPF_HUGE)
B_ZERO = _b(kpf.KPF_ZERO_PAGE)
B_OFFLINE = _b(kpf.KPF_OFFLINE)
B_RESERVED = _b(kpf.KPF_RESERVED)
B_KSM = _b(kpf.KPF_KSM)
B_ANON = _b(kpf.KPF_ANON)
B_SWAPBACKED = _b(kpf.KPF_SWAPBACKED)
B_SWAPCACHE = _b(kpf.KPF_SWAPCACHE)    # set only with PG_swapbacked [S: stable_page_flags()]
B_HWPOISON = _b(kpf.KPF_HWPOISON)
#: Flags only page-cache folios carry when not anonymous/swap-backed [I: PG_lru, and the
#: filemap/buffer-head flags set by fs I/O; a folio sitting in a per-CPU LRU batch lacks PG_lru
#: but has PG_uptodate/PG_locked/...]. A non-anon unit with none of them is untyped (Misc).
B_FILE_HINTS = np.uint64(sum(1 << b for b in (
    kpf.KPF_LRU, kpf.KPF_UPTODATE, kpf.KPF_DIRTY, kpf.KPF_WRITEBACK, kpf.KPF_LOCKED,
    kpf.KPF_RECLAIM, kpf.KPF_REFERENCED, kpf.KPF_ACTIVE, kpf.KPF_UNEVICTABLE, kpf.KPF_MLOCKED,
    kpf.KPF_OWNER_2, kpf.KPF_PRIVATE, kpf.KPF_PRIVATE_2, kpf.KPF_SWAPCACHE)))


# --- the per-chunk kernel ---------------------------------------------------------------------

def _add_cells(cells, shift, cls, a, b):
    """Count PFNs [a, b) as ``cls`` in the map cells they fall in (int32[ncells, NCLS]); or,
    given a 1-D array of one cell per PFN (``shift`` 0), write ``cls`` as each PFN's class:
    what the replay needs from the survey's kernel (trace_types.snapshot_units), without a
    (PFNs x classes) count array to clear and scan. Numba picks the body by the rank."""
    raise NotImplementedError("numba only")


@overload(_add_cells, jit_options={"cache": True, "nogil": True})
def _add_cells_nb(cells, shift, cls, a, b):
    return _pfn_classes if cells.ndim == 1 else _count_cells


def _pfn_classes(cells, shift, cls, a, b):
    cells[a:b] = cls


def _count_cells(cells, shift, cls, a, b):
    c = a >> shift
    ce = (b - 1) >> shift
    if c == ce:
        cells[c, cls] += b - a
        return
    cells[c, cls] += ((c + 1) << shift) - a
    for k in range(c + 1, ce):
        cells[k, cls] += 1 << shift
    cells[ce, cls] += b - (ce << shift)


@njit(cache=True, nogil=True)
def _mark_sections(sections, a, b):
    """Memory sections of PFNs [a, b) have struct pages."""
    for sec in range(a >> SECTION_SHIFT, ((b - 1) >> SECTION_SHIFT) + 1):
        sections[sec] = 1


@njit(cache=True, nogil=True)
def _add_span(region_pages, units, cells, shift, region, cls, a, b):
    """Count PFNs [a, b) as ``cls`` order-0 units in ``region`` and in the map cells."""
    region_pages[region, cls] += b - a
    units[cls, 0] += b - a
    _add_cells(cells, shift, cls, a, b)


@njit(cache=True, nogil=True)
def _classify_chunk(flags, start, bounds, seg_region, seg_ram, region_pages, reserved_flag,
                    units, free_hist, cells, shift, last_typed, sections, anomalies):
    """:func:`_classify_chunk_ext` without kpagecgroup and base-page counts."""
    _classify_chunk_ext(flags, start, bounds, seg_region, seg_ram, region_pages, reserved_flag,
                        units, free_hist, cells, shift, last_typed, sections, anomalies,
                        np.zeros(0, np.uint64), np.zeros(NR_UNIT_ORDERS, np.int64),
                        np.zeros((len(BASE_SHIFTS), NCLS, NR_UNIT_ORDERS), np.int64),
                        np.full(len(BASE_SHIFTS), -1, np.int64),
                        np.zeros(len(BASE_SHIFTS), np.int64))


@njit(cache=True, nogil=True)
def _base_unit(base_units, last_block, cls, q, o):
    """Count a unit [q, q + 2^o) of ``cls`` at each larger base page size: one unit of order
    o − shift when it covers whole base pages, else its base page if no unit counted it yet
    (the first in-use unit of a base page gives the page its class)."""
    for si in range(BASE_SHIFTS_A.shape[0]):
        sh = BASE_SHIFTS_A[si]
        if o >= sh:
            base_units[si, cls, o - sh] += 1
            last_block[si] = (q + (1 << o) - 1) >> sh
        elif (q >> sh) != last_block[si]:
            base_units[si, cls, 0] += 1
            last_block[si] = q >> sh


@njit(cache=True, nogil=True)
def _base_flag0(flag0_blocks, last_block, a, b):
    """Base pages touched by the flags==0 run [a, b) that no unit counted yet."""
    for si in range(BASE_SHIFTS_A.shape[0]):
        sh = BASE_SHIFTS_A[si]
        first, last = a >> sh, (b - 1) >> sh
        flag0_blocks[si] += last - first + 1 - (1 if first == last_block[si] else 0)
        last_block[si] = last


@njit(cache=True, nogil=True)
def _classify_chunk_ext(flags, start, bounds, seg_region, seg_ram, region_pages, reserved_flag,
                        units, free_hist, cells, shift, last_typed, sections, anomalies,
                        cgroup, accounted_misc, base_units, last_block, flag0_blocks):
    """Classify PFNs [start, start + len(flags)) and add them to the tally arrays.

    Segments [bounds[s], bounds[s+1]) have one region (zone index, or the last row for "no
    zone") and one RAM bit, so no free block is merged across a zone edge (page_is_buddy() in
    mm/page_alloc.c requires the same zone). Free runs are decomposed as __free_one_page()
    would have merged them: at each PFN the largest naturally aligned block <= MAX_PAGE_ORDER
    that fits the run.

    ``cgroup`` (kpagecgroup of the same PFNs, or empty) counts, in ``accounted_misc`` by
    order, the untyped units charged to a memcg (page_cgroup_ino() != 0) and the flags==0 pages
    charged to one. ``base_units``/``flag0_blocks`` count the same memory in 16 KiB and 64 KiB
    base pages (:data:`BASE_SHIFTS`; see :func:`_base_unit`).
    """
    n = flags.shape[0]
    has_cg = cgroup.shape[0] == n
    end = start + n
    s = np.searchsorted(bounds, start, side="right") - 1
    pfn = start
    while pfn < end:
        seg_end = min(bounds[s + 1], end)
        region = seg_region[s]
        i = pfn - start
        hi = seg_end - start
        if seg_ram[s] == 0:
            # No System RAM here: a hole even when init_unavailable_range() gave the PFNs
            # struct pages (PG_reserved) in a present section.
            for k in range(i, hi):
                if flags[k] != U0 and (flags[k] & B_NOPAGE) == U0:
                    anomalies[A_HOLE_FLAGS] += 1
                    sections[(start + k) >> SECTION_SHIFT] = 1
            _add_span(region_pages, units, cells, shift, region, HOLE, pfn, seg_end)
            pfn = seg_end
            s += 1
            continue
        while i < hi:
            f = flags[i]
            p = start + i
            if f == U0:
                j = i + 1
                while j < hi and flags[j] == U0:
                    j += 1
                _add_span(region_pages, units, cells, shift, region, FLAG0, p, start + j)
                # Not KPF_NOPAGE: pfn_to_online_page() found a struct page, initialised or not.
                _mark_sections(sections, p, start + j)
                _base_flag0(flag0_blocks, last_block, p, start + j)
                if has_cg:
                    for k in range(i, j):
                        if cgroup[k] != U0:
                            accounted_misc[0] += 1
                i = j
                continue
            if (f & B_NOPAGE) != U0:
                j = i + 1
                while j < hi and (flags[j] & B_NOPAGE) != U0:
                    j += 1
                _add_span(region_pages, units, cells, shift, region, HOLE, p, start + j)
                i = j
                continue
            if (f & B_BUDDY) != U0 and (f & B_COMPOUND) == U0:
                j = i + 1
                while j < hi and (flags[j] & B_BUDDY) != U0 and (flags[j] & B_COMPOUND) == U0:
                    j += 1
                q = p
                qe = start + j
                while q < qe:
                    o = 0
                    while o < MAX_PAGE_ORDER and (q >> o) & 1 == 0:
                        o += 1
                    while (1 << o) > qe - q:
                        o -= 1
                    free_hist[region, o] += 1
                    units[FREE, o] += 1
                    q += 1 << o
                region_pages[region, FREE] += j - i
                _add_cells(cells, shift, FREE, p, qe)
                _mark_sections(sections, p, qe)
                last_typed[region] = qe - 1
                i = j
                continue
            # An allocation unit: a compound head and its tail run, or a single page.
            m = 1
            if (f & B_COMPOUND) != U0:
                if (f & B_HEAD) == U0:
                    anomalies[A_ORPHAN] += 1
                while i + m < hi and (flags[i + m] & B_COMPOUND) == B_TAIL:
                    m += 1
                if (f & B_BUDDY) != U0:
                    anomalies[A_BUDDY_COMPOUND] += m
            if (f & B_SLAB) != U0:
                cls = SLAB
            elif (f & B_PGTABLE) != U0:
                cls = PAGETABLE
            elif (f & B_HUGE) != U0:
                cls = HUGETLB
            elif (f & B_ZERO) != U0:
                cls = ZERO
            elif (f & B_OFFLINE) != U0:
                cls = OFFLINE
            elif (f & B_RESERVED) != U0:
                cls = RESERVED
            elif (f & B_KSM) != U0:
                cls = KSM
            elif (f & (B_ANON | B_SWAPCACHE)) != U0:
                cls = ANON
            elif (f & B_SWAPBACKED) != U0:
                cls = SHMEM
            elif (f & B_FILE_HINTS) != U0:
                cls = FILE
            else:
                cls = UNTYPED
            if (f & B_HWPOISON) != U0:
                anomalies[A_HWPOISON] += m
            if m & (m - 1):
                anomalies[A_IRREGULAR] += 1
            rem = m
            q = p
            while rem > 0:
                o = 0
                while o < NR_UNIT_ORDERS - 1 and (2 << o) <= rem:
                    o += 1
                units[cls, o] += 1
                _base_unit(base_units, last_block, cls, q, o)
                if cls == UNTYPED and has_cg and cgroup[q - start] != U0:
                    accounted_misc[o] += 1
                rem -= 1 << o
                q += 1 << o
            region_pages[region, cls] += m
            if (f & B_RESERVED) != U0:
                reserved_flag[region] += m
            _add_cells(cells, shift, cls, p, p + m)
            _mark_sections(sections, p, p + m)
            last_typed[region] = p + m - 1
            i += m
        pfn = seg_end
        s += 1


# --- layout: zones and System RAM as PFN segments -----------------------------------------------

@dataclass
class Zone:
    """What classification needs of a populated zone (from zoneinfo)."""

    node: int
    name: str
    start_pfn: int
    end_pfn: int
    present: int
    managed: int
    pcp_pages: int | None = None

    @property
    def spanned(self) -> int:
        return self.end_pfn - self.start_pfn


@dataclass
class Layout:
    """The PFN space cut into segments of constant (zone, in-System-RAM).

    ``zones`` may be empty (no zoneinfo) and ``ram`` None (no iomem); ``region`` of a segment is
    its zone's index or ``len(zones)`` for PFNs in no zone.
    """

    pfns: int
    zones: list[Zone]
    ram: list[tuple[int, int]] | None
    bounds: np.ndarray = field(init=False)
    seg_region: np.ndarray = field(init=False)
    seg_ram: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        cuts = {0, self.pfns}
        for z in self.zones:
            cuts.update((z.start_pfn, z.end_pfn))
        for a, b in self.ram or ():
            cuts.update((a, b))
        edges = sorted(c for c in cuts if 0 <= c <= self.pfns)
        starts = edges[:-1] if len(edges) > 1 else [0]
        region, ram = [], []
        for a in starts:
            zi = next((i for i, z in enumerate(self.zones) if z.start_pfn <= a < z.end_pfn),
                      len(self.zones))
            region.append(zi)
            if self.ram is not None:
                ram.append(any(lo <= a < hi for lo, hi in self.ram))
            elif self.zones:
                ram.append(zi < len(self.zones))
            else:
                ram.append(True)
        # A sentinel bound past any PFN: chunks beyond the stated size still land somewhere.
        self.bounds = np.array([*starts, np.iinfo(np.int64).max // 2], np.int64)
        self.seg_region = np.array(region, np.int64)
        self.seg_ram = np.array(ram, np.uint8)

    @property
    def nregions(self) -> int:
        return len(self.zones) + 1

    def ram_pieces(self, region: int, lo: int, hi: int) -> list[tuple[int, int]]:
        """RAM segments of ``region`` clipped to [lo, hi), in PFN order."""
        out = []
        for s in range(len(self.seg_region)):
            a, b = int(self.bounds[s]), min(int(self.bounds[s + 1]), self.pfns)
            if self.seg_region[s] == region and self.seg_ram[s] and b > lo and a < hi:
                out.append((max(a, lo), min(b, hi)))
        return out


def choose_cell_pfns(pfns: int, max_cells: int = 1 << 19, pageblock_pfns: int = 512) -> int:
    """One map cell per pageblock (2 MiB), doubled until the map has at most ``max_cells``."""
    cell = pageblock_pfns
    while -(-pfns // cell) > max_cells:
        cell *= 2
    return cell


# --- the tally -------------------------------------------------------------------------------

@dataclass
class Tally:
    """Running totals of one classification pass (all arrays fixed-size)."""

    layout: Layout
    cell_shift: int
    region_pages: np.ndarray      # int64[nregions, NCLS]
    reserved_flag: np.ndarray     # int64[nregions]  pages with KPF_RESERVED (in RAM)
    units: np.ndarray             # int64[NCLS, NR_UNIT_ORDERS]
    free_hist: np.ndarray         # int64[nregions, NR_PAGE_ORDERS]
    cells: np.ndarray             # int32[ncells, NCLS]
    last_typed: np.ndarray        # int64[nregions]  highest RAM PFN whose flags are not 0
    sections: np.ndarray          # uint8[nsections] a PFN without KPF_NOPAGE is in the section
    anomalies: np.ndarray         # int64[len(ANOMALIES)]
    #: untyped units charged to a memcg, by order (kpagecgroup != 0 at the head)
    accounted_misc: np.ndarray = field(default_factory=lambda: np.zeros(NR_UNIT_ORDERS,
                                                                        np.int64))
    #: units per class and order counted in larger base pages (BASE_SHIFTS)
    base_units: np.ndarray = field(default_factory=lambda: np.zeros(
        (len(BASE_SHIFTS), NCLS, NR_UNIT_ORDERS), np.int64))
    base_last: np.ndarray = field(default_factory=lambda: np.full(len(BASE_SHIFTS), -1,
                                                                  np.int64))
    flag0_blocks: np.ndarray = field(default_factory=lambda: np.zeros(len(BASE_SHIFTS),
                                                                      np.int64))
    cgroup_seen: bool = False
    pfns_seen: int = 0

    @classmethod
    def new(cls, layout: Layout, cell_pfns: int | None = None) -> Tally:
        cell_pfns = cell_pfns or choose_cell_pfns(layout.pfns)
        if cell_pfns & (cell_pfns - 1):
            raise ValueError(f"cell_pfns must be a power of two, not {cell_pfns}")
        nr = layout.nregions
        ncells = max(1, -(-layout.pfns // cell_pfns))
        return cls(layout, cell_pfns.bit_length() - 1,
                   np.zeros((nr, NCLS), np.int64), np.zeros(nr, np.int64),
                   np.zeros((NCLS, NR_UNIT_ORDERS), np.int64),
                   np.zeros((nr, NR_PAGE_ORDERS), np.int64),
                   np.zeros((ncells, NCLS), np.int32), np.full(nr, -1, np.int64),
                   np.zeros(-(-layout.pfns // PAGES_PER_SECTION) + 1, np.uint8),
                   np.zeros(len(ANOMALIES), np.int64))

    @property
    def cell_pfns(self) -> int:
        return 1 << self.cell_shift

    def add_chunk(self, start_pfn: int, flags: np.ndarray,
                  cgroup: np.ndarray | None = None) -> None:
        """Classify one chunk (with its kpagecgroup values when given). PFNs must arrive in
        ascending order, chunk after chunk."""
        if start_pfn + len(flags) > self.layout.pfns:
            raise ValueError(f"chunk [{start_pfn}, {start_pfn + len(flags)}) is past the "
                             f"{self.layout.pfns} PFNs of this layout")
        if cgroup is None:
            cgroup = np.zeros(0, np.uint64)
        else:
            self.cgroup_seen = True
        _classify_chunk_ext(flags, start_pfn, self.layout.bounds, self.layout.seg_region,
                            self.layout.seg_ram, self.region_pages, self.reserved_flag,
                            self.units, self.free_hist, self.cells, self.cell_shift,
                            self.last_typed, self.sections, self.anomalies,
                            np.asarray(cgroup, np.uint64), self.accounted_misc,
                            self.base_units, self.base_last, self.flag0_blocks)
        self.pfns_seen += len(flags)


def classify_chunks(chunks: Iterable[tuple], layout: Layout, cell_pfns: int | None = None,
                    progress: Callable[[int], None] | None = None) -> Tally:
    """Run the classification kernel over ``(start_pfn, uint64 flags[, uint64 cgroup])``
    chunks."""
    tally = Tally.new(layout, cell_pfns)
    for start, flags, *cgroup in chunks:
        tally.add_chunk(int(start), np.asarray(flags, dtype=np.uint64),
                        cgroup[0] if cgroup else None)
        if progress:
            progress(len(flags))
    return tally


# --- from tally to census --------------------------------------------------------------------

def _move(tally: Tally, region: int, src: int, dst: int, pages: int) -> None:
    tally.region_pages[region, src] -= pages
    tally.region_pages[region, dst] += pages
    tally.units[src, 0] -= pages
    tally.units[dst, 0] += pages


def _move_cells(tally: Tally, a: int, b: int, src: int, dst: int) -> None:
    """Move [a, b) from class src to dst in the map cells (those PFNs are known to be src)."""
    shift = tally.cell_shift
    size = 1 << shift
    c, ce = a >> shift, (b - 1) >> shift
    amounts = np.full(ce - c + 1, size, np.int64)
    amounts[0] = min(b, (c + 1) << shift) - a
    if ce > c:
        amounts[-1] = b - (ce << shift)
    tally.cells[c:ce + 1, src] -= amounts.astype(np.int32)
    tally.cells[c:ce + 1, dst] += amounts.astype(np.int32)


def split_flags_zero(tally: Tally) -> dict[str, object]:
    """Resolve the provisional ``flags == 0`` class into ``uninitialised`` and ``untyped``.

    A zone's never-initialised struct pages (deferred init; this vendor's lazy init keeps most
    of ZONE_NORMAL so for the whole uptime) read as 0 and sit at the top of the zone:
    deferred_init_memmap()/deferred_grow_zone() in mm/mm_init.c initialise from the zone's
    first deferred PFN upward. So we take the all-zero RAM run at the top of each zone, bounded
    by what zoneinfo allows: present − managed − PG_reserved pages of the zone (pages that are
    present but neither managed by the buddy nor reserved). Every other ``flags == 0`` page in
    RAM is in use without a type (pcp-free, vmalloc, plain alloc_pages): ``untyped``.
    """
    layout = tally.layout
    detail: dict[str, object] = {}
    for zi, z in enumerate(layout.zones):
        bound = max(0, z.present - z.managed - int(tally.reserved_flag[zi]))
        top_lo = max(int(tally.last_typed[zi]) + 1, z.start_pfn)
        pieces = layout.ram_pieces(zi, top_lo, min(z.end_pfn, layout.pfns))
        want = min(bound, sum(b - a for a, b in pieces), int(tally.region_pages[zi, FLAG0]))
        left = want
        for a, b in reversed(pieces):
            if left <= 0:
                break
            lo = max(a, b - left)
            _move_cells(tally, lo, b, FLAG0, UNINIT)
            left -= b - lo
        _move(tally, zi, FLAG0, UNINIT, want)
        detail[f"{z.node}/{z.name}"] = {"bound": bound, "top_zero_run": sum(b - a for a, b in
                                                                           pieces),
                                        "uninitialised": want}
    for r in range(layout.nregions):
        _move(tally, r, FLAG0, UNTYPED, int(tally.region_pages[r, FLAG0]))
    tally.cells[:, UNTYPED] += tally.cells[:, FLAG0]
    tally.cells[:, FLAG0] = 0
    return detail


def holes_by_count(tally: Tally) -> int:
    """Without iomem: take each zone's spanned − present hole pages out of its ``untyped``
    flags==0 pages, then out of PG_reserved pages (init_unavailable_range() marks holes inside a
    zone reserved). The map cannot place them. Returns the pages moved."""
    moved = 0
    for zi, z in enumerate(tally.layout.zones):
        holes = max(0, z.spanned - z.present)
        for src in (UNTYPED, RESERVED):
            take = min(holes, int(tally.units[src, 0]), int(tally.region_pages[zi, src]))
            _move(tally, zi, src, HOLE, take)
            holes -= take
            moved += take
    return moved


def memmap_pages(tally: Tally) -> tuple[int, str]:
    """Struct pages that exist, and how we know.

    SPARSEMEM_VMEMMAP allocates the memmap of a whole section when any of it is present
    (sparse_init_nid() in mm/sparse.c); sections without memory have none.
    """
    layout = tally.layout
    if layout.ram is not None:
        secs = set()
        for a, b in layout.ram:
            if b > a:
                secs.update(range(a >> SECTION_SHIFT, ((b - 1) >> SECTION_SHIFT) + 1))
        return len(secs) * PAGES_PER_SECTION, "sections holding System RAM (iomem)"
    if layout.zones:
        present = sum(z.present for z in layout.zones)
        return -(-present // PAGES_PER_SECTION) * PAGES_PER_SECTION, \
            "Σ zone present rounded up to whole sections (no iomem)"
    return int(tally.sections.sum()) * PAGES_PER_SECTION, \
        "sections with a PFN kpageflags does not mark KPF_NOPAGE (no iomem, no zoneinfo)"


def build_census(tally: Tally, source: str, kernel: str | None = None,
                 nr_cpus: int | None = None) -> Census:
    """Finish a pass: split flags==0 pages, place holes, and package a Census."""
    layout = tally.layout
    extras: dict[str, object] = {}
    notes: list[str] = []
    if tally.pfns_seen != layout.pfns:
        notes.append(f"classified {tally.pfns_seen:,} of {layout.pfns:,} PFNs")
    if layout.zones:
        extras["uninitialised_by_zone"] = split_flags_zero(tally)
    else:
        r = layout.nregions - 1
        _move(tally, r, FLAG0, UNTYPED, int(tally.region_pages[r, FLAG0]))
        tally.cells[:, UNTYPED] += tally.cells[:, FLAG0]
        tally.cells[:, FLAG0] = 0
    if layout.ram is None and layout.zones:
        extras["holes_in_zones_by_count"] = holes_by_count(tally)
    mm_pages, mm_how = memmap_pages(tally)
    extras["memmap_basis"] = mm_how
    extras["anomalies"] = {name: int(v) for name, v in zip(ANOMALIES, tally.anomalies,
                                                           strict=True)}
    pages = tally.region_pages[:, :FLAG0].sum(axis=0)
    pcp = [z.pcp_pages for z in layout.zones]
    if layout.zones and all(p is not None for p in pcp):
        extras["pcp_pages"] = int(sum(pcp))
    extras["untyped_compound_pages"] = int(
        (tally.units[UNTYPED, 1:] << np.arange(1, NR_UNIT_ORDERS)).sum())
    if layout.zones:
        ram_pages = sum(z.present for z in layout.zones)
    elif layout.ram is not None:
        ram_pages = sum(max(0, min(b, layout.pfns) - a) for a, b in layout.ram)
    else:
        ram_pages = layout.pfns - int(pages[HOLE])
    zones = []
    for zi, z in enumerate(layout.zones):
        zones.append(ZoneCensus(
            node=z.node, name=z.name, start_pfn=z.start_pfn, end_pfn=z.end_pfn,
            spanned=z.spanned, present=z.present, managed=z.managed,
            pages_by_class={c: int(tally.region_pages[zi, i]) for i, c in enumerate(CLASSES)},
            free_blocks=[int(x) for x in tally.free_hist[zi]], pcp_pages=z.pcp_pages,
            uninitialised_bound=max(0, z.present - z.managed - int(tally.reserved_flag[zi])),
            reserved_flag_pages=int(tally.reserved_flag[zi])))
    if tally.cgroup_seen:
        extras["accounted_misc"] = {
            "units_by_order": [int(x) for x in tally.accounted_misc],
            "pages": int((tally.accounted_misc << np.arange(NR_UNIT_ORDERS)).sum())}
    from memdesc.analysis.base_page import base_page_counts

    extras["base_pages"] = base_page_counts(tally, int(pages[UNINIT]) + int(
        extras.get("holes_in_zones_by_count", 0)))
    dominant = tally.cells[:, :FLAG0].argmax(axis=1).astype(np.uint8)
    census = Census(
        source=source, pfns=int(tally.pfns_seen),
        pages_by_class={c: int(pages[i]) for i, c in enumerate(CLASSES)},
        units_by_class={c: tally.units[i].copy() for i, c in enumerate(CLASSES)},
        memmap_pages=mm_pages, ram_pages=int(ram_pages), zones=zones,
        cell_pfns=tally.cell_pfns, cells=dominant, kernel=kernel, nr_cpus=nr_cpus,
        extras=extras, notes=notes)
    census.check()
    return census
