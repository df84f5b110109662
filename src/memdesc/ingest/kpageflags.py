"""/proc/kpageflags: the KPF_* bits, whole-file flag counts, and the page-types table.

Bit numbers are Linux 6.18's [S: include/uapi/linux/kernel-page-flags.h (0-26, stable UAPI) and
include/linux/kernel-page-flags.h (32-42, "kernel hacking assistances ... subject to change"),
torvalds/linux; research/memdesc-spec.md §6]. The table functions mirror the kernel's own
tools/mm/page-types.c, whose ``-r -F FILE`` output is the oracle for our decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from memdesc.errors import InputError
from memdesc.stages import PAGE_SIZE

if TYPE_CHECKING:
    from memdesc.ingest.snapshot import Snapshot

# Stable UAPI bits [S: include/uapi/linux/kernel-page-flags.h].
KPF_LOCKED = 0
KPF_ERROR = 1            # PG_error was removed in 6.12: never set on 6.18 [S/M]
KPF_REFERENCED = 2
KPF_UPTODATE = 3         # also PG_reported on free pages (page reporting) [M: fixtures README]
KPF_DIRTY = 4
KPF_LRU = 5
KPF_ACTIVE = 6
KPF_SLAB = 7
KPF_WRITEBACK = 8
KPF_RECLAIM = 9
KPF_BUDDY = 10           # every page of a free block, not only the head [M, S: fs/proc/page.c]
KPF_MMAP = 11
KPF_ANON = 12
KPF_SWAPCACHE = 13
KPF_SWAPBACKED = 14
KPF_COMPOUND_HEAD = 15
KPF_COMPOUND_TAIL = 16
KPF_HUGE = 17
KPF_UNEVICTABLE = 18
KPF_HWPOISON = 19
KPF_NOPAGE = 20
KPF_KSM = 21
KPF_THP = 22
KPF_OFFLINE = 23
KPF_ZERO_PAGE = 24
KPF_IDLE = 25
KPF_PGTABLE = 26
# Kernel-internal bits [S: include/linux/kernel-page-flags.h, 6.18].
KPF_RESERVED = 32
KPF_MLOCKED = 33
KPF_OWNER_2 = 34         # PG_owner_2 (anon_exclusive / mappedtodisk); older name below
KPF_MAPPEDTODISK = KPF_OWNER_2
KPF_PRIVATE = 35
KPF_PRIVATE_2 = 36
KPF_OWNER_PRIVATE = 37   # PG_owner_priv_1 (swapcache, checked, pinned, ...)
KPF_ARCH = 38
KPF_UNCACHED = 39        # PG_uncached: gone on modern x86, bit kept
KPF_SOFTDIRTY = 40
KPF_ARCH_2 = 41
KPF_ARCH_3 = 42          # CONFIG_ARCH_USES_PG_ARCH_X (arm64 MTE)
# KPF_ARCH_4 (43) exists only in a posted patch, not in 6.18's header [S: find_string]; not listed.

#: bit -> kernel name, every KPF bit Linux 6.18 can report.
KPF_NAMES: dict[int, str] = {v: k for k, v in globals().items()
                             if k.startswith("KPF_") and k != "KPF_MAPPEDTODISK"
                             and isinstance(v, int)}

#: Bits the kernel never sets but page-types uses for expanded overloaded flags
#: [S: tools/mm/page-types.c "take some arbitrary free slots ... not part of kernel API"].
KPF_ANON_EXCLUSIVE = 47
KPF_READAHEAD = 48
KPF_SLUB_FROZEN = 50
KPF_SLUB_DEBUG = 51
KPF_FILE = 61
KPF_SWAP = 62
KPF_MMAP_EXCLUSIVE = 63

#: page-types' ``page_flag_names[]``: bit -> "letter:name" [S: tools/mm/page-types.c, current
#: torvalds/linux; KPF_UNCACHED (39) is "unused" there and has no entry, KPF_ARCH_3 has none].
PAGE_TYPES_NAMES: dict[int, str] = {
    KPF_LOCKED: "L:locked", KPF_ERROR: "E:error", KPF_REFERENCED: "R:referenced",
    KPF_UPTODATE: "U:uptodate", KPF_DIRTY: "D:dirty", KPF_LRU: "l:lru", KPF_ACTIVE: "A:active",
    KPF_SLAB: "S:slab", KPF_WRITEBACK: "W:writeback", KPF_RECLAIM: "I:reclaim",
    KPF_BUDDY: "B:buddy", KPF_MMAP: "M:mmap", KPF_ANON: "a:anonymous",
    KPF_SWAPCACHE: "s:swapcache", KPF_SWAPBACKED: "b:swapbacked",
    KPF_COMPOUND_HEAD: "H:compound_head", KPF_COMPOUND_TAIL: "T:compound_tail",
    KPF_HUGE: "G:huge", KPF_UNEVICTABLE: "u:unevictable", KPF_HWPOISON: "X:hwpoison",
    KPF_NOPAGE: "n:nopage", KPF_KSM: "x:ksm", KPF_THP: "t:thp", KPF_OFFLINE: "o:offline",
    KPF_PGTABLE: "g:pgtable", KPF_ZERO_PAGE: "z:zero_page", KPF_IDLE: "i:idle_page",
    KPF_RESERVED: "r:reserved", KPF_MLOCKED: "m:mlocked", KPF_OWNER_2: "d:owner_2",
    KPF_PRIVATE: "P:private", KPF_PRIVATE_2: "p:private_2",
    KPF_OWNER_PRIVATE: "O:owner_private", KPF_ARCH: "h:arch", KPF_SOFTDIRTY: "f:softdirty",
    KPF_ARCH_2: "H:arch_2", KPF_ANON_EXCLUSIVE: "d:anon_exclusive",
    KPF_READAHEAD: "I:readahead", KPF_SLUB_FROZEN: "A:slub_frozen",
    KPF_SLUB_DEBUG: "E:slub_debug", KPF_FILE: "F:file", KPF_SWAP: "w:swap",
    KPF_MMAP_EXCLUSIVE: "1:mmap_exclusive",
}
_NAMED_BITS = sorted(PAGE_TYPES_NAMES)
_HACKERS_BITS = 0xFFFF << 32                     # KPF_HACKERS_BITS
_COMPOUND = (1 << KPF_COMPOUND_HEAD) | (1 << KPF_COMPOUND_TAIL)
_HASH_SIZE = 1 << 13                             # page-types HASH_SHIFT 13


def _bit(n: int) -> int:
    return 1 << n


def expand_overloaded_flags(flags: int) -> int:
    """page-types ``-r``: split flags the kernel overloads into page-types' pseudo bits.

    Mirrors expand_overloaded_flags() in tools/mm/page-types.c with pme 0 (a ``-F`` dump has no
    pagemap entry): ANON|OWNER_2 -> ANON_EXCLUSIVE; on SLAB, ACTIVE -> SLUB_FROZEN and
    ERROR -> SLUB_DEBUG; RECLAIM without WRITEBACK -> READAHEAD.
    """
    if flags & _bit(KPF_ANON) and flags & _bit(KPF_OWNER_2):
        flags ^= _bit(KPF_OWNER_2) | _bit(KPF_ANON_EXCLUSIVE)
    if flags & _bit(KPF_SLAB):
        if flags & _bit(KPF_ACTIVE):
            flags ^= _bit(KPF_ACTIVE) | _bit(KPF_SLUB_FROZEN)
        if flags & _bit(KPF_ERROR):
            flags ^= _bit(KPF_ERROR) | _bit(KPF_SLUB_DEBUG)
    if flags & (_bit(KPF_RECLAIM) | _bit(KPF_WRITEBACK)) == _bit(KPF_RECLAIM):
        flags ^= _bit(KPF_RECLAIM) | _bit(KPF_READAHEAD)
    return flags


def well_known_flags(flags: int) -> int:
    """page-types without ``-r``: hide kernel-hacker bits and non-hugetlb compound bits.

    Mirrors well_known_flags() in tools/mm/page-types.c.
    """
    flags &= ~_HACKERS_BITS
    if flags & _COMPOUND and not flags & _bit(KPF_HUGE):
        flags &= ~_COMPOUND
    return flags


def flag_names(flags: int) -> list[str]:
    """Kernel names of the KPF bits set in ``flags`` (unknown bits as "bit N")."""
    return [KPF_NAMES.get(b, f"bit {b}") for b in range(64) if flags >> b & 1]


# --- counting ---------------------------------------------------------------------------------

def flag_counts(snapshot: Snapshot, tick: Callable[[int], None] | None = None) -> dict[int, int]:
    """{raw kpageflags value: PFN count} over the whole file, streamed chunk by chunk.

    Keys are in order of first occurrence by PFN (what page-types' hash table needs to print
    rows in its order); values sum to ``snapshot.pfn_count``. ``tick(n)`` after each chunk.
    """
    counts: dict[int, int] = {}
    for _start, arrays in snapshot.chunks(("kpageflags",)):
        flags = arrays["kpageflags"]
        values, first, n = np.unique(flags, return_index=True, return_counts=True)
        for i in np.argsort(first, kind="stable"):
            v = int(values[i])
            counts[v] = counts.get(v, 0) + int(n[i])
        if tick:
            tick(len(flags))
    return counts


def page_types_counts(counts: Mapping[int, int], raw: bool = True) -> dict[int, int]:
    """Map raw {flags: count} to what page-types counts: ``raw`` is ``-r``
    (expand_overloaded_flags), else well_known_flags. Keeps first-occurrence order."""
    mapped: dict[int, int] = {}
    fn = expand_overloaded_flags if raw else well_known_flags
    for flags, n in counts.items():
        key = fn(int(flags))
        mapped[key] = mapped.get(key, 0) + int(n)
    return mapped


# --- the page-types table ---------------------------------------------------------------------

def page_flag_name(flags: int) -> str:
    """One character per named bit, '_' when clear.

    Mirrors page_flag_name() in tools/mm/page-types.c, which refuses a set bit it has no name
    for ("unknown flag bit"); so do we, with one line saying which.
    """
    unknown = flags & ~sum(1 << b for b in _NAMED_BITS)
    if unknown:
        b = (unknown & -unknown).bit_length() - 1
        raise InputError(f"kpageflags: flags 0x{flags:016x} have bit {b} "
                         f"({KPF_NAMES.get(b, 'unassigned')}), which tools/mm/page-types has no "
                         "letter for; this kernel sets bits page-types does not know")
    return "".join(PAGE_TYPES_NAMES[b][0] if flags >> b & 1 else "_" for b in _NAMED_BITS)


def page_flag_longname(flags: int) -> str:
    """Comma-separated long names. Mirrors page_flag_longname() in tools/mm/page-types.c."""
    return ",".join(PAGE_TYPES_NAMES[b][2:] for b in _NAMED_BITS if flags >> b & 1)


def _hash_order(flags_in_order: list[int]) -> list[int]:
    """The order page-types prints rows: its open-addressing table's slot order.

    Mirrors hash_slot() in tools/mm/page-types.c: slot 0 is reserved for flags 0, others start
    at flags & (HASH_SIZE - 1) and probe linearly, wrapping to slot 1.
    """
    slots: dict[int, int] = {}
    used: set[int] = set()
    for flags in flags_in_order:
        if flags == 0:
            slots[0] = 0
            continue
        k = flags & (_HASH_SIZE - 1)
        for _ in range(_HASH_SIZE - 1):
            if k == 0 or k >= _HASH_SIZE:
                k = 1
            if k not in used:
                used.add(k)
                slots[flags] = k
                break
            k += 1
        else:
            raise InputError("kpageflags: more than 8191 distinct flag values; page-types' "
                             "hash table would be full")
    return sorted(slots, key=slots.__getitem__)


def render_page_types(counts: Mapping[int, int]) -> str:
    """The summary table of page-types for already-mapped {flags: count}.

    Mirrors show_summary() in tools/mm/page-types.c (same header, ``0x%016llx\\t%10lu %8lu
    %s\\t%s`` rows in hash-slot order, total line); MB = pages * PAGE_SIZE >> 20.
    """
    def mb(pages: int) -> int:
        return (pages * PAGE_SIZE) >> 20

    lines = ["             flags\tpage-count       MB  symbolic-flags\t\t\tlong-symbolic-flags"]
    for flags in _hash_order([f for f, n in counts.items() if n]):
        n = counts[flags]
        lines.append(f"0x{flags:016x}\t{n:10d} {mb(n):8d}  {page_flag_name(flags)}\t"
                     f"{page_flag_longname(flags)}")
    total = sum(counts.values())
    lines.append(f"             total\t{total:10d} {mb(total):8d}")
    return "\n".join(lines) + "\n"


def page_types_r_table(counts: Mapping[int, int]) -> str:
    """``page-types -r -F kpageflags`` output for raw {flags: count} (from :func:`flag_counts`).

    Byte-identical to the tool when ``counts`` is in first-occurrence order."""
    return render_page_types(page_types_counts(counts, raw=True))


def page_types_table(counts: Mapping[int, int]) -> str:
    """``page-types -F kpageflags`` (without ``-r``) output for raw {flags: count}."""
    return render_page_types(page_types_counts(counts, raw=False))


def parse_page_types(text: str) -> dict[int, int]:
    """Rows of page-types summary output back to {flags: count} (flags as printed, i.e. after
    page-types' own mapping). Checks the total line against the rows."""
    out: dict[int, int] = {}
    total = None
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts or parts[0] == "flags":
            continue
        try:
            if parts[0] == "total":
                total = int(parts[1])
            elif parts[0].startswith("0x"):
                out[int(parts[0], 16)] = out.get(int(parts[0], 16), 0) + int(parts[1])
            else:
                raise ValueError
        except (ValueError, IndexError):
            raise InputError(f"page-types: line {n}: expected '0xFLAGS  count  MB  symbolic', "
                             f"found {line.strip()!r}") from None
    if total is None:
        raise InputError("page-types: no 'total' line; is this page-types summary output?")
    if total != sum(out.values()):
        raise InputError(f"page-types: rows add up to {sum(out.values())} pages but the total "
                         f"line says {total}")
    return out
