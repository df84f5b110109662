"""The machine: nodes, zones, 128 MiB sections, 512-page pageblocks and holes; watermarks,
lowmem reserves and per-cpu pageset sizes computed as the kernel computes them.

Mirrors include/linux/mmzone.h (zones, sections, pageblocks), mm/mm_init.c (zone spans on
x86-64: ZONE_DMA below 16 MiB, ZONE_DMA32 below 4 GiB, the rest ZONE_NORMAL, ZONE_MOVABLE from
movablecore=) and the sizing functions of mm/page_alloc.c: calculate_min_free_kbytes(),
__setup_per_zone_wmarks(), setup_per_zone_lowmem_reserve(), zone_batchsize(), zone_highsize(),
plus khugepaged's set_recommended_min_free_kbytes() (THP is enabled on the fixture machine).

A :class:`Machine` is plain data. Build one from a size (:meth:`Machine.from_spec`) or from a
snapshot's zones (:meth:`Machine.from_zones`, fed by memdesc.analysis.machine_from_snapshot;
this module imports nothing from ingest).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

from memdesc.mm.gfp import ZONE_DMA, ZONE_DMA32, ZONE_MOVABLE, ZONE_NORMAL
from memdesc.stages import PAGE_SHIFT

# ---- sizes [M: fixtures README, pagetypeinfo; S: arch/x86/include/asm/sparsemem.h] ---------------
MAX_PAGE_ORDER = 10
NR_PAGE_ORDERS = MAX_PAGE_ORDER + 1
MAX_ORDER_NR_PAGES = 1 << MAX_PAGE_ORDER
PAGE_ALLOC_COSTLY_ORDER = 3
pageblock_order = 9
pageblock_nr_pages = 1 << pageblock_order
SECTION_SIZE_BITS = 27
PFN_SECTION_SHIFT = SECTION_SIZE_BITS - PAGE_SHIFT
PAGES_PER_SECTION = 1 << PFN_SECTION_SHIFT
HPAGE_PMD_ORDER = 9

#: enum zone_type names as /proc/zoneinfo prints them [M]. ZONE_DEVICE has no buddy; the model
#: keeps the four buddy zones per node.
ZONE_NAMES = ("DMA", "DMA32", "Normal", "Movable")
NR_ZONES = len(ZONE_NAMES)
MAX_NR_ZONES = 5                       # __MAX_NR_ZONES (with ZONE_DEVICE) [M]

# x86-64 zone limits [S: arch/x86/mm/init.c zone_sizes_init(): MAX_DMA_PFN, MAX_DMA32_PFN].
MAX_DMA_PFN = (16 << 20) >> PAGE_SHIFT
MAX_DMA32_PFN = (4 << 30) >> PAGE_SHIFT
#: x86 reserves the first 1 MiB for the BIOS/real mode and never frees it to the buddy
#: [S: arch/x86/kernel/setup.c, "reserve the whole first 1 MiB" since 5.13; M: DMA managed =
#: present - 158 = exactly [0x100, 0x1000)].
LOW_RESERVED_PFN = (1 << 20) >> PAGE_SHIFT

# Tunables, defaults of this machine [M: fixtures/snapshot-idle/sysctl-vm.txt].
SYSCTL_LOWMEM_RESERVE_RATIO = (256, 256, 32, 0, 0)
WATERMARK_SCALE_FACTOR = 10
MIN_PERCPU_PAGELIST_HIGH_FRACTION = 8  # [S: mm/page_alloc.c]
SWAP_CLUSTER_MAX = 32
MIGRATE_PCPTYPES = 3

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str | int) -> int:
    """``"64G"``, ``"512M"``, ``"1T"`` or a byte count -> bytes (binary units)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"size {text!r}: expected a number with K, M, G or T, e.g. 64G")
    return int(m[1]) * _UNITS[m[2].upper()]


@dataclass(frozen=True)
class ZoneSpec:
    """One zone as /proc/zoneinfo describes it. Optional members are taken as given when set
    (a real snapshot) and computed the kernel's way when None."""

    node: int
    name: str
    start_pfn: int
    spanned: int
    present: int
    managed: int
    min: int | None = None
    low: int | None = None
    high: int | None = None
    protection: tuple[int, ...] | None = None
    batch: int | None = None
    high_min: int | None = None
    high_max: int | None = None

    @property
    def zone_type(self) -> int:
        return ZONE_NAMES.index(self.name)

    @property
    def end_pfn(self) -> int:
        return self.start_pfn + self.spanned

    @property
    def populated(self) -> bool:
        return self.managed > 0


@dataclass(frozen=True)
class ZoneParams:
    """What the kernel computes for a zone at boot: watermarks, lowmem_reserve, pcp sizes."""

    min: int
    low: int
    high: int
    promo: int
    lowmem_reserve: tuple[int, ...]
    batch: int
    high_min: int
    high_max: int


def _ranges_len(ranges, lo: int, hi: int) -> int:
    return sum(max(0, min(e, hi) - max(s, lo)) for s, e in ranges)


@dataclass(frozen=True)
class Machine:
    """Physical memory: zones of every node, System RAM ranges, and RAM never freed to the
    buddy (``reserved``: memblock reservations, uninitialised memory), all as PFN ranges
    [start, end). ``nr_cpus`` CPUs; CPU ``i`` sits on node ``cpu_node[i]``."""

    zones: tuple[ZoneSpec, ...]
    ram: tuple[tuple[int, int], ...]
    reserved: tuple[tuple[int, int], ...] = ()
    nr_cpus: int = 2
    cpu_node: tuple[int, ...] = ()
    min_free_kbytes: int | None = None
    thp: bool = True
    name: str = ""
    _params: tuple = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.zones:
            raise ValueError("a machine needs at least one zone")
        nodes = sorted({z.node for z in self.zones})
        if nodes != list(range(len(nodes))):
            raise ValueError(f"nodes must be numbered 0..n-1, got {nodes}")
        if self.nr_cpus < 1:
            raise ValueError("nr_cpus must be >= 1")
        if not self.cpu_node:
            object.__setattr__(self, "cpu_node",
                               tuple(i % len(nodes) for i in range(self.nr_cpus)))
        if len(self.cpu_node) != self.nr_cpus:
            raise ValueError("cpu_node must name a node for every CPU")
        full = []
        for nid in nodes:
            have = {z.zone_type: z for z in self.zones if z.node == nid}
            for zt, name in enumerate(ZONE_NAMES):
                full.append(have.get(zt) or ZoneSpec(nid, name, 0, 0, 0, 0))
        object.__setattr__(self, "zones", tuple(full))
        self._check()
        object.__setattr__(self, "_params", tuple(_compute_params(self)))

    def _check(self) -> None:
        spans = sorted((z.start_pfn, z.end_pfn, z) for z in self.zones if z.spanned)
        for (_s0, e0, z0), (s1, _, z1) in zip(spans, spans[1:], strict=False):
            if s1 < e0:
                raise ValueError(f"zones {z0.name} (node {z0.node}) and {z1.name} "
                                 f"(node {z1.node}) overlap")
            if e0 == s1 and s1 % pageblock_nr_pages:
                raise ValueError(f"zone boundary at pfn {s1:#x} is not pageblock-aligned")
            if s1 // pageblock_nr_pages == (e0 - 1) // pageblock_nr_pages:
                raise ValueError(f"zones {z0.name} and {z1.name} share a pageblock at "
                                 f"pfn {s1:#x}")
        for z in self.zones:
            if z.managed > z.present or z.present > z.spanned:
                raise ValueError(f"zone {z.name} node {z.node}: need managed <= present <= "
                                 f"spanned, got {z.managed}/{z.present}/{z.spanned}")
            if z.spanned and _ranges_len(self.ram, z.start_pfn, z.end_pfn) != z.present:
                raise ValueError(f"zone {z.name} node {z.node}: present {z.present} but the "
                                 f"RAM ranges give "
                                 f"{_ranges_len(self.ram, z.start_pfn, z.end_pfn)} pages")
        for z in self.zones:
            got = sum(e - s for s, e in self.managed_ranges(z))
            if got != z.managed:
                raise ValueError(f"zone {z.name} node {z.node}: managed {z.managed} but RAM "
                                 f"minus reserved leaves {got}")

    # ---- shape -----------------------------------------------------------------------------
    @property
    def nr_nodes(self) -> int:
        return 1 + max(z.node for z in self.zones)

    @property
    def max_pfn(self) -> int:
        """One past the highest PFN of any zone (the kernel's max_pfn)."""
        return max(z.end_pfn for z in self.zones)

    @property
    def nr_pfns(self) -> int:
        """PFNs covered by mem_map: max_pfn rounded up to a whole section (vmemmap is populated
        per section, and a buddy PFN never leaves its section)."""
        return -(-self.max_pfn // PAGES_PER_SECTION) * PAGES_PER_SECTION

    @property
    def ram_bytes(self) -> int:
        return sum(e - s for s, e in self.ram) << PAGE_SHIFT

    def zone(self, nid: int, name_or_type: str | int) -> ZoneSpec:
        zt = ZONE_NAMES.index(name_or_type) if isinstance(name_or_type, str) else name_or_type
        return self.zones[nid * NR_ZONES + zt]

    def params(self, nid: int, zone_type: int) -> ZoneParams:
        """Watermarks, lowmem_reserve and pcp sizes of one zone."""
        return self._params[nid * NR_ZONES + zone_type]

    def managed_ranges(self, z: ZoneSpec) -> list[tuple[int, int]]:
        """PFN ranges of ``z`` the buddy allocator gets: RAM in the span minus ``reserved``."""
        return _ram_minus(self.ram, self.reserved, z.start_pfn, z.end_pfn)

    def sections_present(self) -> list[int]:
        """Section numbers holding any RAM (present_section_nr())."""
        out = set()
        for s, e in self.ram:
            out.update(range(s >> PFN_SECTION_SHIFT, ((e - 1) >> PFN_SECTION_SHIFT) + 1))
        return sorted(out)

    def describe(self) -> str:
        lines = [f"{self.name or 'machine'}: {self.ram_bytes / (1 << 30):.2f} GiB RAM, "
                 f"{self.nr_nodes} node(s), {self.nr_cpus} CPU(s), max_pfn {self.max_pfn:#x}"]
        for z in self.zones:
            if z.spanned:
                p = self.params(z.node, z.zone_type)
                lines.append(f"  Node {z.node}, zone {z.name:>7}: start_pfn {z.start_pfn:#x} "
                             f"spanned {z.spanned} present {z.present} managed {z.managed} "
                             f"min/low/high {p.min}/{p.low}/{p.high} batch {p.batch}")
        return "\n".join(lines)

    # ---- constructors -----------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: str, *, nr_cpus: int = 2, hole_start: str | int = "3G",
                  dma32_end: str | int = "4G", movable: str | int = 0) -> Machine:
        """An x86-64 machine like the fixture: ``"64G"`` or ``"2x512G"`` (nodes x RAM each).

        Node 0: RAM [4 KiB, 639 KiB) and [1 MiB, ``hole_start``), the PCI hole up to
        ``dma32_end`` (= MAX_DMA32_PFN, 4 GiB), the rest above it; ZONE_DMA < 16 MiB, ZONE_DMA32
        < ``dma32_end``, ZONE_NORMAL above. Further nodes start on the next section boundary and
        are all ZONE_NORMAL. ``movable`` bytes are taken off the top of each node's Normal as
        ZONE_MOVABLE (movablecore=). A smaller ``hole_start``/``dma32_end`` gives a miniature
        machine with all three zones and a hole for tests. The first 1 MiB is reserved (x86).
        """
        m = re.fullmatch(r"\s*(?:(\d+)\s*x\s*)?(.+)", spec)
        nodes = int(m[1]) if m and m[1] else 1
        per_node = parse_size(m[2]) if m else 0
        hole_s, d32 = parse_size(hole_start) >> PAGE_SHIFT, parse_size(dma32_end) >> PAGE_SHIFT
        movable_pages = (parse_size(movable) >> PAGE_SHIFT) // max(nodes, 1)
        if nodes < 1 or per_node < (2 << 20):
            raise ValueError(f"machine spec {spec!r}: expected SIZE or NxSIZE with SIZE >= 2M")
        if not MAX_DMA_PFN <= hole_s <= d32 or d32 % pageblock_nr_pages:
            raise ValueError("need 16M <= hole_start <= dma32_end, dma32_end pageblock-aligned")
        pages = per_node >> PAGE_SHIFT
        ram: list[tuple[int, int]] = [(1, 0x9F)]
        low = min(pages, hole_s)
        ram.append((LOW_RESERVED_PFN, low))
        if pages > hole_s:
            ram.append((d32, d32 + pages - hole_s))
        node_ram = [list(ram)]
        end = ram[-1][1]
        for _ in range(1, nodes):
            start = -(-end // PAGES_PER_SECTION) * PAGES_PER_SECTION
            node_ram.append([(start, start + pages)])
            end = start + pages
        zones: list[ZoneSpec] = []
        all_ram = [r for rs in node_ram for r in rs]
        reserved = [(0, LOW_RESERVED_PFN)]
        for nid, rs in enumerate(node_ram):
            nstart, nend = rs[0][0], rs[-1][1]
            limits = [(ZONE_DMA, 0, MAX_DMA_PFN), (ZONE_DMA32, MAX_DMA_PFN, d32),
                      (ZONE_NORMAL, d32, nend)]
            for zt, lo, hi in limits:
                s, e = max(lo, nstart), min(hi, nend)
                if s >= e or _ranges_len(rs, s, e) == 0:
                    continue
                # zone_spanned_pages_in_node(): the span is the zone's limits clamped to the
                # node, holes included (DMA32 runs up to 4 GiB across the PCI hole)
                zones.append(_zone(nid, ZONE_NAMES[zt], s, e, all_ram, reserved))
            if movable_pages and zones[-1].node == nid and zones[-1].zone_type == ZONE_NORMAL:
                nz = zones.pop()
                cut = (nz.end_pfn - movable_pages) // MAX_ORDER_NR_PAGES * MAX_ORDER_NR_PAGES
                if cut <= nz.start_pfn:
                    raise ValueError("movable= is larger than the Normal zone")
                zones.append(_zone(nid, "Normal", nz.start_pfn, cut, all_ram, reserved))
                zones.append(_zone(nid, "Movable", cut, nz.end_pfn, all_ram, reserved))
        return cls(tuple(zones), tuple(all_ram), tuple(reserved), nr_cpus=nr_cpus, name=spec)

    @classmethod
    def from_zones(cls, zones: list[ZoneSpec], ram: list[tuple[int, int]], *,
                   nr_cpus: int = 2, reserved: list[tuple[int, int]] | None = None,
                   min_free_kbytes: int | None = None, name: str = "") -> Machine:
        """A machine from a snapshot's zones and System RAM PFN ranges.

        When ``reserved`` is not given, the RAM the kernel never handed to the buddy
        (present - managed per zone) is placed as the kernel places most of it: the first
        1 MiB (x86), then the top of the zone (deferred/lazy struct page init grows upward)
        [I]. Watermarks and pcp sizes given in the ZoneSpecs are used as they are.
        """
        ram = sorted((int(s), int(e)) for s, e in ram if e > s)
        if reserved is None:
            reserved = _derive_reserved(zones, ram)
        return cls(tuple(zones), tuple(ram), tuple(reserved), nr_cpus=nr_cpus,
                   min_free_kbytes=min_free_kbytes, name=name)

    def with_cpus(self, nr_cpus: int) -> Machine:
        return replace(self, nr_cpus=nr_cpus, cpu_node=())


def _ram_minus(ram, reserved, lo: int, hi: int) -> list[tuple[int, int]]:
    """RAM ranges clipped to [lo, hi) with the reserved ranges cut out."""
    out = []
    for s, e in ram:
        s, e = max(s, lo), min(e, hi)
        if s >= e:
            continue
        pos = s
        for cs, ce in sorted((max(a, s), min(b, e)) for a, b in reserved if a < e and b > s):
            if cs > pos:
                out.append((pos, cs))
            pos = max(pos, ce)
        if pos < e:
            out.append((pos, e))
    return out


def _zone(nid, name, s, e, ram, reserved) -> ZoneSpec:
    managed = sum(b - a for a, b in _ram_minus(ram, reserved, s, e))
    return ZoneSpec(nid, name, s, e - s, _ranges_len(ram, s, e), managed)


def _derive_reserved(zones: list[ZoneSpec], ram: list[tuple[int, int]]):
    reserved: list[tuple[int, int]] = [(0, LOW_RESERVED_PFN)]
    for z in zones:
        if not z.spanned:
            continue
        gap = z.present - z.managed - _ranges_len(ram, z.start_pfn,
                                                  min(z.end_pfn, LOW_RESERVED_PFN))
        if gap < 0:
            raise ValueError(f"zone {z.name}: managed {z.managed} exceeds present RAM above "
                             "the reserved first 1 MiB")
        for s, e in sorted(ram, reverse=True):          # take the gap off the top
            s, e = max(s, z.start_pfn, LOW_RESERVED_PFN), min(e, z.end_pfn)
            if gap <= 0 or s >= e:
                continue
            take = min(gap, e - s)
            reserved.append((e - take, e))
            gap -= take
    return sorted(reserved)


# ---- the kernel's sizing functions ---------------------------------------------------------------

def calculate_min_free_kbytes(lowmem_free_pages: int) -> int:
    """Mirrors calculate_min_free_kbytes(): int_sqrt(lowmem_kbytes * 16) in [128, 262144]."""
    kbytes = lowmem_free_pages << (PAGE_SHIFT - 10)
    return min(max(math.isqrt(kbytes * 16), 128), 262144)


def recommended_min_free_kbytes(nr_populated_lowzones: int, nr_free_buffer_pages: int) -> int:
    """Mirrors set_recommended_min_free_kbytes() in mm/khugepaged.c: two free pageblocks per
    zone plus MIGRATE_PCPTYPES^2 for fallbacks, at most 5% of lowmem."""
    rec = pageblock_nr_pages * nr_populated_lowzones * 2
    rec += pageblock_nr_pages * nr_populated_lowzones * MIGRATE_PCPTYPES * MIGRATE_PCPTYPES
    rec = min(rec, nr_free_buffer_pages // 20)
    return rec << (PAGE_SHIFT - 10)


def setup_per_zone_wmarks(managed: list[int], zone_types: list[int], min_free_kbytes: int,
                          scale_factor: int = WATERMARK_SCALE_FACTOR) -> list[tuple[int, ...]]:
    """(min, low, high, promo) per zone. Mirrors __setup_per_zone_wmarks()."""
    pages_min = min_free_kbytes >> (PAGE_SHIFT - 10)
    lowmem = sum(m for m, zt in zip(managed, zone_types, strict=True) if zt != ZONE_MOVABLE)
    out = []
    for m, zt in zip(managed, zone_types, strict=True):
        tmp = pages_min * m // lowmem if lowmem else 0
        wmin = min(max(m // 1024, SWAP_CLUSTER_MAX), 128) if zt == ZONE_MOVABLE else tmp
        tmp = max(tmp >> 2, m * scale_factor // 10000)
        low = wmin + tmp
        high = low + tmp
        out.append((wmin, low, high, high + tmp))
    return out


def setup_per_zone_lowmem_reserve(managed: list[int]) -> list[tuple[int, ...]]:
    """lowmem_reserve[] of one node's zones (indexed by zone type, MAX_NR_ZONES long).
    Mirrors setup_per_zone_lowmem_reserve()."""
    managed = list(managed) + [0] * (MAX_NR_ZONES - len(managed))
    out = []
    for i in range(MAX_NR_ZONES):
        ratio = SYSCTL_LOWMEM_RESERVE_RATIO[i]
        clear = not ratio or not managed[i]
        res = [0] * MAX_NR_ZONES
        upper = 0
        for j in range(i + 1, MAX_NR_ZONES):
            upper += managed[j]
            res[j] = 0 if clear else upper // ratio
        out.append(tuple(res))
    return out[:NR_ZONES]


def zone_batchsize(managed: int) -> int:
    """Mirrors zone_batchsize() (CONFIG_MMU): ~0.1% of the zone or 1 MiB, /4, clamped to
    2^n - 1; zone_set_pageset_high_and_batch() then takes max(1, batch)."""
    batch = min(managed >> 10, (1 << 20) >> PAGE_SHIFT) // 4
    batch = max(batch, 1)
    batch = (1 << ((batch + batch // 2).bit_length() - 1)) - 1
    return max(1, batch)


def zone_highsize(total_pages: int, batch: int, nr_split_cpus: int) -> int:
    """Mirrors zone_highsize(): ``total_pages`` (the low watermark, or managed/fraction)
    split over the node's CPUs, at least batch * 4."""
    return max(total_pages // max(nr_split_cpus, 1), batch << 2)


def _compute_params(machine: Machine) -> list[ZoneParams]:
    zones = machine.zones
    managed = [z.managed for z in zones]
    types = [z.zone_type for z in zones]
    lowzones = [z for z in zones if z.populated and z.zone_type <= ZONE_NORMAL]
    mfk = machine.min_free_kbytes
    if mfk is None:
        mfk = calculate_min_free_kbytes(sum(z.managed for z in lowzones))
        if machine.thp:
            wm = setup_per_zone_wmarks(managed, types, mfk)
            nfbp = sum(max(z.managed - w[2], 0) for z, w in zip(zones, wm, strict=True)
                       if z.zone_type <= ZONE_NORMAL)
            mfk = max(mfk, recommended_min_free_kbytes(len(lowzones), nfbp))
    wmarks = setup_per_zone_wmarks(managed, types, mfk)
    out = []
    for i, z in enumerate(zones):
        node_managed = [zz.managed for zz in zones if zz.node == z.node]
        reserve = setup_per_zone_lowmem_reserve(node_managed)[z.zone_type]
        wmin, low, high, promo = wmarks[i]
        if z.min is not None:
            wmin, low, high = z.min, z.low, z.high
            promo = high + (high - low)
        if z.protection is not None:
            reserve = tuple(z.protection) + (0,) * (MAX_NR_ZONES - len(z.protection))
        batch = max(1, zone_batchsize(z.managed))
        cpus = sum(1 for n in machine.cpu_node if n == z.node) or machine.nr_cpus
        high_min = zone_highsize(low, batch, cpus)
        high_max = zone_highsize(z.managed // MIN_PERCPU_PAGELIST_HIGH_FRACTION, batch, cpus)
        if z.batch is not None:
            batch = z.batch
        if z.high_min is not None:
            high_min, high_max = z.high_min, z.high_max
        out.append(ZoneParams(wmin, low, high, promo, tuple(reserve), batch, high_min,
                              high_max))
    return out
