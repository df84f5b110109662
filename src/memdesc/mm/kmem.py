"""The kernel's view of memory: virtual addresses and the contents of the pages it uses itself.

Addresses are the ones this machine used [M: fixtures/README.md, KASLR bases at their
defaults]: the direct map at PAGE_OFFSET (``page_address(page)`` = PAGE_OFFSET + pfn << 12, so
a trace's ``ptr=`` maps to a PFN) and the struct page array at VMEMMAP_START
(``pfn_to_page(pfn)`` = VMEMMAP_START + pfn * sizeof(struct page) of the stage).

The emulator does not keep the bytes of every page (that would be the whole RAM). It keeps
them for the pages whose contents the kernel itself interprets: slab pages (free pointers
inside free objects, and at the dynamic stages the descriptors themselves) and page-table
pages (the entries a walk reads). :class:`PageContents` gives such pages a backing slot of
4096 bytes each. Data pages (file, anon) carry only a
content tag (``content_tag()`` below, one uint32 per PFN), which is what the observables compare.

Hot paths read and write 64-bit words through :func:`dm_index` (direct map) inside numba
kernels; the Python methods are for slow paths and tests.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.mm.access_core import ADDRNODE, KIND_PTR, KIND_STORE, NONODE, acc, acc_on
from memdesc.stages import PAGE_SHIFT, PAGE_SIZE

#: page_offset_base and vmemmap_base of the fixture machine (default KASLR bases) [M].
PAGE_OFFSET = 0xFFFF888000000000
VMEMMAP_START = 0xFFFFEA0000000000
#: vmalloc_base default on x86-64 with 4-level paging [S: Documentation/arch/x86/x86_64/mm.rst].
VMALLOC_START = 0xFFFFC90000000000
#: __START_KERNEL_map: kernel text/data; static objects (boot caches) live above it [S].
START_KERNEL_MAP = 0xFFFFFFFF80000000

WORDS_PER_PAGE = PAGE_SIZE // 8
#: Items one call of a batch kernel handles at most. Python raises KeyboardInterrupt only
#: between bytecodes, never inside a numba kernel, so drivers of long steps call kernels on
#: slices of this size (a few ms each) and Ctrl-C stops a step within a second.
BATCH = 1 << 15


def page_address(pfn: int) -> int:
    """Direct-map address of a PFN. Mirrors page_address()/pfn_to_kaddr() on x86-64."""
    return PAGE_OFFSET + (int(pfn) << PAGE_SHIFT)


def virt_to_pfn(addr: int) -> int:
    """PFN of a direct-map address. Mirrors virt_to_pfn()/__pa() >> PAGE_SHIFT."""
    if addr < PAGE_OFFSET or addr >= VMALLOC_START:
        raise ValueError(f"{addr:#x} is not a direct-map address")
    return (int(addr) - PAGE_OFFSET) >> PAGE_SHIFT


@njit(cache=True)
def dm_index(slot_of_pfn, addr):
    """Index of the 64-bit word at direct-map address ``addr`` in PageContents.data, or -1 if
    that page has no backing (a bug: the kernel touched memory it does not own)."""
    off = addr - np.uint64(PAGE_OFFSET)
    pfn = np.int64(off >> np.uint64(PAGE_SHIFT))
    if pfn < 0 or pfn >= slot_of_pfn.shape[0]:
        return -1
    slot = slot_of_pfn[pfn]
    if slot < 0:
        return -1
    return np.int64(slot) * WORDS_PER_PAGE + np.int64((off & np.uint64(PAGE_SIZE - 1)) >> 3)


class PageContents:
    """Backing bytes for kernel-interpreted pages, indexed by PFN.

    ``slot_of_pfn[pfn]`` is the page's slot (or -1); ``data`` holds the slots as uint64 words
    (512 per page). Every page gets its own slot: objects may straddle the pages of a
    multi-page slab, but an aligned 64-bit word never straddles a page, so per-page lookup is
    exact. Free slots are a stack (``free_stack[:meta[M_TOP]]``); ``meta[M_USED]`` slots have
    been handed out at least once. Numba kernels attach/detach through :func:`attach_nb` and
    :func:`detach_nb` and return to Python (which calls :meth:`grow`) when the store is full.
    """

    def __init__(self, nr_pfns: int, initial_slots: int = 256):
        self.slot_of_pfn = np.full(nr_pfns, -1, np.int32)
        self.data = np.zeros(initial_slots * WORDS_PER_PAGE, np.uint64)
        self.free_stack = np.zeros(initial_slots, np.int32)
        self.meta = np.zeros(M_WORDS, np.int64)

    @property
    def capacity(self) -> int:
        return self.data.shape[0] // WORDS_PER_PAGE

    @property
    def attached_pages(self) -> int:
        return int(self.meta[M_USED] - self.meta[M_TOP])

    @property
    def arrays(self) -> tuple:
        """What the numba kernels take: (slot_of_pfn, data, free_stack, meta)."""
        return self.slot_of_pfn, self.data, self.free_stack, self.meta

    def grow(self, slots: int = 0) -> None:
        """At least double the capacity (and make room for ``slots`` more)."""
        new = max(self.capacity * 2, int(self.meta[M_USED]) + slots, 64)
        data = np.zeros(new * WORDS_PER_PAGE, np.uint64)
        data[: self.data.shape[0]] = self.data
        stack = np.zeros(new, np.int32)
        stack[: self.free_stack.shape[0]] = self.free_stack
        self.data, self.free_stack = data, stack

    def attach(self, pfn: int, order: int = 0) -> None:
        """Give the 2^order pages at ``pfn`` zeroed backing."""
        while not attach_nb(*self.arrays, int(pfn), 1 << order):
            self.grow(1 << order)

    def detach(self, pfn: int, order: int = 0) -> None:
        """Drop the backing of the 2^order pages at ``pfn`` (they go back to the allocator)."""
        if not detach_nb(*self.arrays, int(pfn), 1 << order):
            raise AssertionError(f"pfn {pfn:#x} order {order} has no backing")

    def has(self, pfn: int) -> bool:
        return bool(self.slot_of_pfn[pfn] >= 0)

    def index(self, addr: int) -> int:
        i = int(dm_index(self.slot_of_pfn, np.uint64(addr)))
        if i < 0:
            raise AssertionError(f"kernel access to {addr:#x}: page has no contents")
        return i

    def read64(self, addr: int) -> int:
        return int(self.data[self.index(addr)])

    def write64(self, addr: int, value: int) -> None:
        self.data[self.index(addr)] = np.uint64(value & 0xFFFFFFFFFFFFFFFF)

    def page_words(self, pfn: int) -> np.ndarray:
        """The 512 words of one backed page (a view)."""
        slot = int(self.slot_of_pfn[pfn])
        if slot < 0:
            raise AssertionError(f"pfn {pfn:#x} has no contents")
        return self.data[slot * WORDS_PER_PAGE:(slot + 1) * WORDS_PER_PAGE]


M_TOP, M_USED, M_WORDS = 0, 1, 2


@njit(cache=True)
def attach_nb(slot_of_pfn, data, free_stack, meta, pfn, n):
    """Zeroed backing for pages [pfn, pfn + n); False (nothing done) if the store is full."""
    cap = data.shape[0] // WORDS_PER_PAGE
    if meta[M_TOP] + (cap - meta[M_USED]) < n:
        return False
    for k in range(n):
        if slot_of_pfn[pfn + k] >= 0:
            raise AssertionError("page already has backing")
        if meta[M_TOP] > 0:
            meta[M_TOP] -= 1
            slot = free_stack[meta[M_TOP]]
        else:
            slot = meta[M_USED]
            meta[M_USED] += 1
        base = np.int64(slot) * WORDS_PER_PAGE
        data[base:base + WORDS_PER_PAGE] = 0
        slot_of_pfn[pfn + k] = slot
    return True


@njit(cache=True)
def detach_nb(slot_of_pfn, data, free_stack, meta, pfn, n):
    """Release the backing of pages [pfn, pfn + n); False if one of them had none."""
    for k in range(n):
        slot = slot_of_pfn[pfn + k]
        if slot < 0:
            return False
        free_stack[meta[M_TOP]] = slot
        meta[M_TOP] += 1
        slot_of_pfn[pfn + k] = -1
    return True


@njit(cache=True)
def kread(memmap64, data, slot_of_pfn, addr):
    """The 64-bit word at kernel address ``addr``: struct page memory (vmemmap) or a backed
    direct-map page. Unbacked addresses read as 0xdead000000000000 (POISON_POINTER_DELTA's
    spirit: a bug shows up as a wild value, and debug checks catch it)."""
    if addr >= np.uint64(VMEMMAP_START):
        return memmap64[np.int64((addr - np.uint64(VMEMMAP_START)) >> np.uint64(3))]
    i = dm_index(slot_of_pfn, addr)
    if i < 0:
        return np.uint64(0xDEAD000000000000)
    return data[i]


@njit(cache=True)
def kwrite(memmap64, data, slot_of_pfn, addr, value):
    """Store a 64-bit word at kernel address ``addr`` (see kread). Returns False if the
    address has no memory behind it."""
    if addr >= np.uint64(VMEMMAP_START):
        memmap64[np.int64((addr - np.uint64(VMEMMAP_START)) >> np.uint64(3))] = value
        return True
    i = dm_index(slot_of_pfn, addr)
    if i < 0:
        return False
    data[i] = value
    return True


@njit(cache=True)
def kread32(memmap64, data, slot_of_pfn, addr):
    """The 32-bit value at a 4-byte aligned kernel address (little-endian halves)."""
    w = kread(memmap64, data, slot_of_pfn, addr & ~np.uint64(7))
    if addr & np.uint64(4):
        return np.uint32(w >> np.uint64(32))
    return np.uint32(w & np.uint64(0xFFFFFFFF))


@njit(cache=True)
def kwrite32(memmap64, data, slot_of_pfn, addr, value):
    """Store a 32-bit value at a 4-byte aligned kernel address."""
    base = addr & ~np.uint64(7)
    w = kread(memmap64, data, slot_of_pfn, base)
    v = np.uint64(np.uint32(value))
    if addr & np.uint64(4):
        w = (w & np.uint64(0xFFFFFFFF)) | (v << np.uint64(32))
    else:
        w = (w & np.uint64(0xFFFFFFFF00000000)) | v
    return kwrite(memmap64, data, slot_of_pfn, base, w)


# ---- accounted accesses (memdesc.mm.access): S is the allocator state holding S[C_ACC] ------

@njit(cache=True)
def kread_a(S, memmap64, data, slot_of_pfn, addr, ptr):
    """kread() counted as a load (a pointer load when ``ptr``: later accesses near the value,
    its low 4 tag bits cleared, depend on it)."""
    v = kread(memmap64, data, slot_of_pfn, addr)
    if acc_on(S):
        acc(S, addr, KIND_PTR if ptr else 0, ADDRNODE, np.int64(v & ~np.uint64(15)))
    return v


@njit(cache=True)
def kwrite_a(S, memmap64, data, slot_of_pfn, addr, value):
    """kwrite() counted as a store."""
    if acc_on(S):
        acc(S, addr, KIND_STORE, ADDRNODE, NONODE)
    return kwrite(memmap64, data, slot_of_pfn, addr, value)


@njit(cache=True)
def kread32_a(S, memmap64, data, slot_of_pfn, addr):
    """kread32() counted as a load."""
    if acc_on(S):
        acc(S, addr & ~np.uint64(7), 0, ADDRNODE, NONODE)
    return kread32(memmap64, data, slot_of_pfn, addr)


@njit(cache=True)
def kwrite32_a(S, memmap64, data, slot_of_pfn, addr, value):
    """kwrite32() counted as a store (a 32-bit store: no load of the other half)."""
    if acc_on(S):
        acc(S, addr & ~np.uint64(7), KIND_STORE, ADDRNODE, NONODE)
    return kwrite32(memmap64, data, slot_of_pfn, addr, value)


@njit(cache=True)
def acc_stores(S, addr, n):
    """Count stores to the ``n`` words from ``addr`` (an object initialised in place)."""
    if acc_on(S):
        for k in range(n):
            acc(S, addr + np.uint64(8 * k), KIND_STORE, ADDRNODE, NONODE)


# ---- what data pages hold ------------------------------------------------------------------

#: Content kinds folded into a tag (so equal indices of different owners differ).
TAG_FILE, TAG_ANON, TAG_ZSMALLOC, TAG_NETMEM, TAG_VMALLOC, TAG_KMALLOC_LARGE, TAG_RESERVED = (
    1, 2, 3, 4, 5, 6, 7)


@njit(cache=True)
def content_tag(kind, owner, index):
    """A non-zero 32-bit tag for page ``index`` of ``owner`` (a file, a process's virtual page
    number, a pool's buffer), as if the page held that data. splitmix64 finaliser."""
    z = (np.uint64(kind) << np.uint64(56)) ^ (np.uint64(owner) << np.uint64(36)) ^ np.uint64(index)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    t = np.uint32(z & np.uint64(0xFFFFFFFF))
    return t if t != 0 else np.uint32(1)


@njit(cache=True)
def fill_tags(tags, pfn, nr, kind, owner, first_index):
    """Write the data of ``nr`` pages at ``pfn`` (indices first_index...)."""
    for k in range(nr):
        tags[pfn + k] = content_tag(kind, owner, first_index + k)
