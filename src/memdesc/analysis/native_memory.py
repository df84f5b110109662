"""The memory a native measurement runs in (memdesc.analysis.native_timing's module doc has
the whole design): one anonymous mapping per stage, huge pages advised, the vmemmap at full
size then the other touched 4 KiB pages compacted (:func:`translate`), and the RAM check that
refuses before any work when MemAvailable is short."""

from __future__ import annotations

import mmap
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memdesc.errors import MemdescError
from memdesc.mm.kmem import VMEMMAP_START
from memdesc.stages import PAGE_SIZE

HUGE = 2 << 20
#: x86-64 vmemmap region: 1 TiB from VMEMMAP_START [S: Documentation/arch/x86/x86_64/mm.rst]
VMEMMAP_SPAN = 1 << 40
#: RAM left to the rest of the machine when checking MemAvailable
HEADROOM = 256 << 20


@dataclass(frozen=True)
class StageMemory:
    """What the measurement needs of a stage: its id and sizeof(struct page)."""

    id: str
    page_bytes: int


def _stage_memory(s) -> StageMemory:
    if isinstance(s, StageMemory):
        return s
    return StageMemory(s.id, int(s.struct_page_bytes))


def _align(n: int, a: int = HUGE) -> int:
    return (n + a - 1) // a * a


def mem_available(meminfo: str | Path = "/proc/meminfo") -> int | None:
    """MemAvailable in bytes, or None when /proc/meminfo cannot be read."""
    try:
        m = re.search(r"^MemAvailable:\s+(\d+) kB", Path(meminfo).read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


def check_memory(need: int, what: str, meminfo: str | Path = "/proc/meminfo") -> None:
    """Refuse (one line, MemdescError) when ``need`` bytes plus HEADROOM exceed MemAvailable."""
    avail = mem_available(meminfo)
    if avail is not None and need + HEADROOM > avail:
        raise MemdescError(
            f"native timing needs {need / 2**20:,.0f} MiB of RAM for {what} but "
            f"MemAvailable is {avail / 2**20:,.0f} MiB: measure fewer stages or free memory")


# ---- address translation ---------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """Where a stage's sampled addresses live in its buffer."""

    vmemmap_bytes: int          # nr_pfns * sizeof(struct page)
    compact_base: int           # byte offset of the compacted pages (2 MiB aligned)
    pages: np.ndarray           # uint64: the compacted pages' addresses >> 12, sorted
    total_bytes: int            # the mapping's size (2 MiB aligned)


def translate(addr: np.ndarray, nr_pfns: int, page_bytes: int) -> tuple[np.ndarray, Layout]:
    """Byte offsets in the stage's buffer of emulated kernel addresses (vectorised).

    vmemmap addresses map to ``addr - VMEMMAP_START`` (an address past the stage's mem_map
    is an error); every other address to ``compact_base + 4096 * rank(addr >> 12) +
    (addr & 4095)`` where rank is the page's index among the distinct pages touched."""
    addr = np.asarray(addr, np.uint64)
    vm_bytes = int(nr_pfns) * int(page_bytes)
    rel = addr - np.uint64(VMEMMAP_START)
    in_vm_region = (addr >= np.uint64(VMEMMAP_START)) & (rel < np.uint64(VMEMMAP_SPAN))
    bad = in_vm_region & (rel >= np.uint64(vm_bytes))
    if bad.any():
        a = int(addr[np.argmax(bad)])
        raise ValueError(f"vmemmap address {a:#x} lies past the mem_map of {nr_pfns} PFNs "
                         f"x {page_bytes} B")
    other = ~in_vm_region
    pages, rank = np.unique(addr[other] >> np.uint64(12), return_inverse=True)
    base = _align(vm_bytes)
    off = rel.astype(np.int64)
    off[other] = (base + rank.astype(np.int64) * PAGE_SIZE
                  + (addr[other] & np.uint64(PAGE_SIZE - 1)).astype(np.int64))
    total = _align(base + len(pages) * PAGE_SIZE)
    return off, Layout(vm_bytes, base, pages, max(total, HUGE))



class _Buffer:
    """One stage's anonymous mapping (huge pages advised, every 4 KiB written once)."""

    def __init__(self, nbytes: int):
        self.map = mmap.mmap(-1, nbytes + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            self.map.madvise(mmap.MADV_HUGEPAGE)
        raw = np.frombuffer(self.map, np.uint8)
        start = (-raw.ctypes.data) % HUGE
        self.bytes = raw[start:start + nbytes]
        self.bytes[::PAGE_SIZE] = 0
        self.words = self.bytes.view(np.uint64)

    def huge_fraction(self) -> float | None:
        """Share of the buffer backed by transparent huge pages (/proc/self/smaps)."""
        lo = self.bytes.ctypes.data
        return huge_fraction(lo, lo + self.bytes.nbytes)

    def close(self) -> None:
        del self.words, self.bytes
        self.map.close()


def huge_fraction(lo: int, hi: int, smaps: str = "/proc/self/smaps") -> float | None:
    """AnonHugePages / size of the mapping holding [lo, hi), or None if unreadable."""
    try:
        text = Path(smaps).read_text()
    except OSError:
        return None
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", text):
        start, _, rest = block.partition("-")
        end = rest.split(" ", 1)[0]
        try:
            s, e = int(start, 16), int(end, 16)
        except ValueError:
            continue
        if s <= lo < e:
            m = re.search(r"^AnonHugePages:\s+(\d+) kB", block, re.M)
            return min(1.0, int(m.group(1)) * 1024 / (hi - lo)) if m else 0.0
    return None
