"""Our census against the kernel's own counters: /proc/meminfo, /proc/slabinfo, buddyinfo.

Every check shows our figure, the kernel's figure read just before and just after the kpage
reads (the two bound the drift while we read), the difference, and an explanation in words.
Page counts throughout (meminfo's kB divided by 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memdesc.analysis.census import NR_PAGE_ORDERS, Census
from memdesc.ingest.procfs import PageTypeInfo, SlabCache
from memdesc.stages import PAGE_SIZE

KB_PER_PAGE = PAGE_SIZE // 1024


#: Statuses of a check, from closest to farthest.
STATUSES = ("exact", "inside read window", "explained", "off", "skipped")


@dataclass
class Check:
    """One comparison. ``ours`` is a page count; kernel values may be None (not captured).

    Status (no tolerance band): ``exact`` when ours equals the counter as read before or
    after the kpage reads; ``inside read window`` when it lies strictly between the two;
    ``explained`` when the distance is covered by a number we can name (``kernel_extra``:
    pages the counter includes and we do not, e.g. large kmalloc pages in Slab;
    ``ours_extra``: pages we count and the counter does not, e.g. SwapCached); ``off``
    otherwise; ``skipped`` without a kernel value.
    """

    name: str
    kernel_label: str
    ours_label: str
    ours: int
    kernel_before: int | None
    kernel_after: int | None
    explanation: str
    #: (what, pages): the counter may exceed ours by up to this many pages, for this reason
    kernel_extra: tuple[str, int] | None = None
    #: (what, pages): ours may exceed the counter by up to this many pages, for this reason
    ours_extra: tuple[str, int] | None = None

    @property
    def kernel_lo(self) -> int | None:
        vals = [v for v in (self.kernel_before, self.kernel_after) if v is not None]
        return min(vals) if vals else None

    @property
    def kernel_hi(self) -> int | None:
        vals = [v for v in (self.kernel_before, self.kernel_after) if v is not None]
        return max(vals) if vals else None

    @property
    def diff(self) -> int | None:
        """ours − kernel, measured to the nearer of the before/after values (0 between)."""
        lo, hi = self.kernel_lo, self.kernel_hi
        if lo is None:
            return None
        if self.ours < lo:
            return self.ours - lo
        return self.ours - hi if self.ours > hi else 0

    @property
    def diff_percent(self) -> float | None:
        d = self.diff
        if d is None:
            return None
        ref = self.kernel_hi if d > 0 else self.kernel_lo
        if not ref:
            # Undefined against a zero counter; None, not inf (JSON has no Infinity).
            return 0.0 if d == 0 else None
        return 100.0 * d / ref

    @property
    def explained_by(self) -> tuple[str, int] | None:
        """The named number that covers the distance (None: exact, inside, or off)."""
        d = self.diff
        if not d:
            return None
        extra = self.kernel_extra if d < 0 else self.ours_extra
        return extra if extra is not None and abs(d) <= extra[1] else None

    @property
    def status(self) -> str:
        d = self.diff
        if d is None:
            return "skipped"
        if self.ours in (self.kernel_before, self.kernel_after):
            return "exact"
        if d == 0:
            return "inside read window"
        return "explained" if self.explained_by else "off"

    @property
    def status_text(self) -> str:
        """The status with the explaining number: ``explained (large kmalloc 1,924)``."""
        e = self.explained_by
        return f"explained ({e[0]} {e[1]:,})" if e else self.status

    def to_dict(self) -> dict:
        def extra(e):
            return None if e is None else {"what": e[0], "pages": e[1]}
        return {"name": self.name, "kernel": self.kernel_label, "ours_label": self.ours_label,
                "ours_pages": self.ours, "kernel_before_pages": self.kernel_before,
                "kernel_after_pages": self.kernel_after, "diff_pages": self.diff,
                "diff_percent": self.diff_percent, "status": self.status,
                "explained_by": extra(self.explained_by),
                "kernel_extra": extra(self.kernel_extra), "ours_extra": extra(self.ours_extra),
                "explanation": self.explanation}


def _pages(meminfo: dict[str, int] | None, *keys: str) -> int | None:
    if meminfo is None or any(k not in meminfo for k in keys):
        return None
    return sum(meminfo[k] for k in keys) // KB_PER_PAGE


def _skew(before: int | None, after: int | None) -> str:
    if before is None or after is None or before == after:
        return ""
    return f"the kernel's value moved {after - before:+,} pages between the before and after " \
           "reads (read skew bounds)"


def hidden_reserved(census: Census, meminfo: dict[str, int] | None) -> int | None:
    """Pages present but neither in MemTotal nor visibly PG_reserved.

    MemTotal is totalram_pages(): present pages minus memblock reservations (plus what was
    freed later). Reserved pages whose struct pages are initialised show KPF_RESERVED; on a
    lazily initialised kernel, reservations inside the never-initialised range (memblock
    allocates top-down: the memmap itself, page tables, ...) read as flags 0 and are counted in
    our ``uninitialised`` class. This is their number [I].
    """
    total = _pages(meminfo, "MemTotal")
    if total is None or not census.zones:
        return None
    visible = sum(z.reserved_flag_pages for z in census.zones)
    return max(0, census.ram_pages - total - visible)


def meminfo_checks(census: Census, before: dict[str, int] | None,
                   after: dict[str, int] | None) -> list[Check]:
    """Our class totals against /proc/meminfo (fs/proc/meminfo.c)."""
    p = census.pages_by_class
    checks: list[Check] = []

    def add(name, keys, ours_label, ours, explanation, kernel_extra=None, ours_extra=None):
        b, a = _pages(before, *keys), _pages(after, *keys)
        skew = _skew(b, a)
        text = explanation + (f"; {skew}" if skew else "")
        checks.append(Check(name, " + ".join(keys), ours_label, ours, b, a, text,
                            kernel_extra, ours_extra))

    swapcached = _pages(before, "SwapCached") or 0
    add("anonymous", ("AnonPages",), "anon + ksm", p["anon"] + p["ksm"],
        "AnonPages is NR_ANON_MAPPED: anonymous pages mapped by a process (KSM pages "
        "included, shmem not); we count every page whose folio->mapping is anonymous, "
        "mapped or not (swap cache, being unmapped), and swap-cache folios not mapped yet, so "
        "ours may exceed it"
        + (f" by up to SwapCached ({swapcached:,} pages)" if swapcached else " slightly")
        + "; the huge zero folio (KPF_ZERO_PAGE|KPF_THP) is in neither (our zero class)",
        ours_extra=("SwapCached", swapcached) if swapcached else None)
    add("shmem", ("Shmem",), "shmem", p["shmem"],
        "Shmem is NR_SHMEM: tmpfs/shm/memfd folios in the page cache; ours are SWAPBACKED "
        "pages without KPF_ANON or KPF_SWAPCACHE (a shmem folio moved to the swap cache "
        "leaves NR_SHMEM and is in our anon)")
    add("page cache", ("Cached", "Buffers"), "file + shmem", p["file"] + p["shmem"],
        "Cached + Buffers + SwapCached = NR_FILE_PAGES, which includes shmem; ours are file "
        "folios (page-cache flags, not anonymous, not swap-backed) plus shmem"
        + (f"; SwapCached ({swapcached:,} pages) is not in this sum" if swapcached else ""))
    compound_misc = int(census.extras.get("untyped_compound_pages", 0))
    add("slab", ("Slab",), "slab pages", p["slab"],
        "Slab = SReclaimable + SUnreclaim (NR_SLAB_*_B) counts slab pages and also the pages of "
        "large kmalloc allocations (___kmalloc_large_node() in mm/slub.c adds them to "
        "NR_SLAB_UNRECLAIMABLE_B); kpageflags shows those as compound pages without a type, "
        f"which we count as untyped (Misc): {compound_misc:,} such pages here, so Slab should "
        f"lie between {p['slab']:,} and {p['slab'] + compound_misc:,}",
        kernel_extra=("large kmalloc", compound_misc) if compound_misc else None)
    add("page tables", ("PageTables",), "pagetable", p["pagetable"],
        "PageTables is NR_PAGETABLE: pages with PGTY_table (KPF_PGTABLE); page tables are "
        "allocated and freed continuously by running processes")
    if p["hugetlb"] or (_pages(before, "Hugetlb") or 0):
        add("hugetlb", ("Hugetlb",), "hugetlb", p["hugetlb"],
            "Hugetlb counts every hugetlb page of every size, free or in use (KPF_HUGE)")
    hidden = hidden_reserved(census, before or after)
    uninit = p["uninitialised"]
    usable_uninit = max(0, uninit - (hidden or 0))
    pcp = census.extras.get("pcp_pages")
    text = ("MemFree is NR_FREE_PAGES (pages in the buddy free lists; pages on the per-CPU "
            "pcp lists are not counted" + (f": {pcp:,} pages by zoneinfo pcp counts, part of "
                                           "our untyped" if pcp is not None else "")
            + "; free pages of isolated pageblocks are KPF_BUDDY but left out, "
              "account_freepages() in mm/page_alloc.c skips MIGRATE_ISOLATE)")
    if uninit:
        text += (f", plus on this lazily initialised kernel the never-initialised pages that "
                 f"are not memblock-reserved: {uninit:,} uninitialised − "
                 f"{hidden if hidden is not None else 0:,} reserved inside that range "
                 "(present − MemTotal − PG_reserved pages, i.e. boot-time reservations such as "
                 "the memmap that sit in never-initialised memory)")
    add("free", ("MemFree",), "free + uninitialised − hidden reserved" if uninit else "free",
        p["free"] + usable_uninit, text)
    checks.extend(thp_checks(census, before, after))
    return checks


#: HPAGE_PMD_ORDER on x86-64: the order from which a folio is PMD-mappable
#: (folio_test_pmd_mappable()).
PMD_ORDER = 9

THP_COUNTERS = (
    # (check name, meminfo key, our class, what the counter is)
    ("anon THP", "AnonHugePages", "anon",
     "AnonHugePages is NR_ANON_THPS: anonymous pages mapped by a PMD (__folio_mod_stat() "
     "in mm/rmap.c adds a folio's pages when it is PMD-mapped); ours are anonymous pages in "
     f"folios of order >= {PMD_ORDER} (folio_test_pmd_mappable()), mapped by a PMD or not, "
     "so a PMD-sized folio that is only PTE-mapped (after a partial munmap or mprotect) is "
     "ours but not the kernel's"),
    ("shmem THP", "ShmemHugePages", "shmem",
     "ShmemHugePages is NR_SHMEM_THPS: shmem folios of PMD order in the page cache "
     "(shmem_add_to_page_cache() in mm/shmem.c); ours are shmem pages in folios of order "
     f">= {PMD_ORDER}"),
    ("file THP", "FileHugePages", "file",
     "FileHugePages is NR_FILE_THPS: page-cache folios of PMD order "
     "(__filemap_add_folio() in mm/filemap.c counts folio_test_pmd_mappable() folios); ours "
     f"are file pages in folios of order >= {PMD_ORDER}"),
)


def pmd_mappable_pages(census: Census, cls: str) -> int:
    """Pages of ``cls`` in folios of order >= PMD_ORDER."""
    u = census.units_by_class[cls]
    return int(sum(int(u[o]) << o for o in range(PMD_ORDER, len(u))))


def thp_checks(census: Census, before: dict[str, int] | None,
               after: dict[str, int] | None) -> list[Check]:
    """AnonHugePages, ShmemHugePages, FileHugePages against our folio orders."""
    out = []
    for name, key, cls, text in THP_COUNTERS:
        b, a = _pages(before, key), _pages(after, key)
        if b is None and a is None:
            continue
        skew = _skew(b, a)
        out.append(Check(name, key, f"{cls} in order >= {PMD_ORDER} folios",
                         pmd_mappable_pages(census, cls), b, a,
                         text + (f"; {skew}" if skew else "")))
    return out


def memmap_check(census: Census, v618_memmap_bytes: int, before: dict[str, int] | None,
                 after: dict[str, int] | None, how: str = "") -> Check:
    """vmstat nr_memmap_pages + nr_memmap_boot_pages against the v6.18 memmap we cost.

    NR_MEMMAP_BOOT_PAGES counts the memmap pages memblock allocated at boot
    (memmap_boot_pages_add() in mm/sparse-vmemmap.c, mm/mm_init.c), NR_MEMMAP the ones
    allocated later (memory hot-add); HVO frees vmemmap pages and subtracts them
    (hugetlb_vmemmap_optimize_folio() -> memmap_pages_add(-n)). Added in Linux 6.11
    ("mm: report per-page metadata information").
    """
    keys = ("nr_memmap_pages", "nr_memmap_boot_pages")

    def get(v):
        return None if v is None or any(k not in v for k in keys) else sum(v[k] for k in keys)

    ours = v618_memmap_bytes // PAGE_SIZE
    b, a = get(before), get(after)
    skew = _skew(b, a)
    return Check("memmap", " + ".join(keys) + " (vmstat)", "v6.18 memmap / 4 KiB", ours, b, a,
                 f"the v6.18 memmap we cost ({census.memmap_pages:,} struct pages × 64 B"
                 f"{how}) in 4 KiB pages, against the kernel's own count of the pages its "
                 "memmap occupies" + (f"; {skew}" if skew else ""))


def slab_heads_check(census: Census, slabinfo: list[SlabCache] | None) -> Check:
    """Slab head count (allocation units of class slab) against Σ num_slabs of slabinfo."""
    heads = census.units("slab")
    total = sum(c.num_slabs for c in slabinfo) if slabinfo is not None else None
    pages = sum(c.num_slabs * c.pagesperslab for c in slabinfo) if slabinfo is not None else None
    text = ("one slab = one KPF_SLAB unit (order-0 page or compound head with its tails); "
            "slabinfo's num_slabs counts the slabs on each kmem_cache_node, per-CPU and partial "
            "ones included. slabinfo was read once, before the kpage reads, so slabs allocated "
            "or freed in between differ; and a discarded slab of a SLAB_TYPESAFE_BY_RCU cache "
            "leaves num_slabs at once (discard_slab() in mm/slub.c) but keeps KPF_SLAB, and its "
            "Slab pages, until its RCU grace period ends (rcu_free_slab()), so ours can exceed "
            "num_slabs while many slabs are being freed")
    if total is not None:
        text += (f"; slabinfo implies {pages:,} slab pages (num_slabs × pagesperslab) vs our "
                 f"{census.pages_by_class['slab']:,}")
    return Check("slab heads", "Σ num_slabs (slabinfo)", "slab units", heads, total, None, text)


@dataclass
class BuddyZone:
    """Our free blocks of one zone against /proc/buddyinfo before and after."""

    node: int
    zone: str
    ours: list[int]
    before: list[int] | None
    after: list[int] | None
    explanation: str = ""
    pcp_pages: int | None = None
    isolate_blocks: int | None = None
    notes: list[str] = field(default_factory=list)

    @staticmethod
    def pages(counts: list[int] | None) -> int | None:
        return None if counts is None else sum(n << o for o, n in enumerate(counts))

    def diff(self, other: list[int] | None) -> list[int] | None:
        return None if other is None else [a - b for a, b in zip(self.ours, other, strict=False)]

    def to_dict(self) -> dict:
        return {"node": self.node, "zone": self.zone, "ours": self.ours,
                "buddyinfo_before": self.before, "buddyinfo_after": self.after,
                "diff_before": self.diff(self.before), "diff_after": self.diff(self.after),
                "ours_pages": self.pages(self.ours), "before_pages": self.pages(self.before),
                "after_pages": self.pages(self.after), "pcp_pages": self.pcp_pages,
                "explanation": self.explanation}


def _explain_buddy(z: BuddyZone, unmergeable: bool | None) -> str:
    b, a = z.before, z.after
    if b is None and a is None:
        return "no buddyinfo captured"
    if z.ours == b or z.ours == a:
        which = "before" if z.ours == b else "after"
        return (f"identical to buddyinfo.{which}: maximal merging of the KPF_BUDDY runs gives "
                "exactly the kernel's free lists")
    b, a = b or a, a or b
    lo = [min(x, y) for x, y in zip(b, a, strict=True)]
    hi = [max(x, y) for x, y in zip(b, a, strict=True)]
    outside = {o: z.ours[o] - (hi[o] if z.ours[o] > hi[o] else lo[o])
               for o in range(len(z.ours)) if not lo[o] <= z.ours[o] <= hi[o]}
    pages = [BuddyZone.pages(x) for x in (z.ours, b, a)]
    parts = []
    if min(pages[1:]) <= pages[0] <= max(pages[1:]):
        parts.append(f"our {pages[0]:,} free pages lie between the before and after totals "
                     f"({pages[1]:,}, {pages[2]:,}): the free lists changed while kpageflags was "
                     "read (in chunks over about a second, each PFN at a different moment)")
    else:
        parts.append(f"our {pages[0]:,} free pages are outside the before/after totals "
                     f"({pages[1]:,}, {pages[2]:,})")
    if not outside:
        parts.append("every order lies between buddyinfo.before and .after")
    else:
        parts.append("orders outside the before/after bounds: " + ", ".join(
            f"{o} ({d:+d})" for o, d in outside.items()) + "; a block split or merged during "
                     "the read moves counts between neighbouring orders")
        if unmergeable and any(d > 0 for o, d in outside.items() if o >= 9):
            parts.append("we merge more than the kernel at pageblock order and above: "
                         "__free_one_page() does not merge across isolated/highatomic/CMA "
                         "pageblocks, and this zone has some")
    if unmergeable is False:
        parts.append("pagetypeinfo shows no isolated/highatomic/CMA pageblocks, so the kernel "
                     "merges across every pageblock boundary as we do")
    return "; ".join(parts)


def buddy_reconciliation(census: Census, before: dict[tuple[int, str], list[int]] | None,
                         after: dict[tuple[int, str], list[int]] | None,
                         pagetypeinfo: PageTypeInfo | None = None) -> list[BuddyZone]:
    """Per zone: our maximal-merge decomposition of KPF_BUDDY runs vs buddyinfo."""
    out = []
    for z in census.zones:
        key = (z.node, z.name)
        b = (before or {}).get(key)
        a = (after or {}).get(key)
        unmergeable = None
        iso = None
        if pagetypeinfo is not None and key in pagetypeinfo.blocks:
            blocks = pagetypeinfo.blocks[key]
            iso = blocks.get("Isolate", 0)
            unmergeable = any(blocks.get(t, 0) for t in ("Isolate", "HighAtomic", "CMA"))
        bz = BuddyZone(z.node, z.name, list(z.free_blocks)[:NR_PAGE_ORDERS], b, a,
                       pcp_pages=z.pcp_pages, isolate_blocks=iso)
        bz.explanation = _explain_buddy(bz, unmergeable)
        out.append(bz)
    return out
