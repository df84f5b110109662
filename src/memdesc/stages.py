"""The memdesc Path as data: one record per bisectable stage.

Every other part of memdesc (the emulator in ``mm/``, the survey's cost model, the trace replay)
asks a :class:`Stage` what the world looks like at that step instead of branching on stage names.

Sources: design/README.md §1-2 and research/memdesc-spec.md §2, §4.3, §8. Layout offsets of
``v6.18`` are the real ones read from this machine's BTF (fixtures/btf/pahole/page.txt) [M];
later layouts are the Path's proposals [S: kernelnewbies.org/MatthewWilcox/Memdescs/Path].
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT


@dataclass(frozen=True)
class Field:
    """One member of a struct layout. Members that share ``offset`` are union members."""

    name: str
    offset: int
    size: int
    note: str = ""


@dataclass(frozen=True)
class StructLayout:
    """A C struct as pahole would print it: name, total size and members (unions overlap)."""

    name: str
    size: int
    fields: tuple[Field, ...]

    def field(self, name: str) -> Field | None:
        """The member called ``name``, or None when this layout does not have it."""
        for f in self.fields:
            if f.name == name:
                return f
        return None

    def has(self, name: str) -> bool:
        return self.field(name) is not None


def _layout(name: str, size: int, *fields: tuple) -> StructLayout:
    return StructLayout(name, size, tuple(Field(*f) for f in fields))


# struct page of Linux 6.18 as built on this machine [M: fixtures/btf/pahole/page.txt].
# The vendor-only `buddy_since` (offset 32) is left out: we model upstream (research §0).
PAGE_V6_18 = _layout(
    "page", 64,
    ("flags", 0, 8, "memdesc_flags_t: PG_* bits 0..23, zone 53..51, node 63..54"),
    ("lru", 8, 16),
    ("buddy_list", 8, 16, "free_area[order].free_list[mt] links"),
    ("pcp_list", 8, 16, "per_cpu_pages.lists[] links"),
    ("compound_head", 8, 8, "tail pages: head | 1"),
    ("mapping", 24, 8),
    ("__folio_index", 32, 8),
    ("private", 40, 8, "buddy order of a free block head"),
    ("page_type", 48, 4, "PGTY_* << 24 in the top byte"),
    ("_mapcount", 48, 4),
    ("_refcount", 52, 4),
    ("memcg_data", 56, 8),
)

# `folio` stage: filesystems are folio-only; ->mapping exists only as __folio_mapping
# [S: Path rev 1].
PAGE_FOLIO = _layout(
    "page", 64,
    *[("__folio_mapping" if f.name == "mapping" else f.name, f.offset, f.size, f.note)
      for f in PAGE_V6_18.fields],
)

# `dynamic`: same bytes, but the word at 8 holds `memdesc pointer | type` on *every* page
# (head included) instead of only tails [S: Path rev 1].
PAGE_DYNAMIC = _layout(
    "page", 64,
    *[(f.name, f.offset, f.size, f.note) for f in PAGE_FOLIO.fields if f.name != "compound_head"],
    ("memdesc", 8, 8, "descriptor address | 4-bit type, every page of an allocation"),
)

# Path rev 1 (May 2024): 32 bytes [S: Path?action=recall&rev=1].
PAGE_32 = _layout(
    "page", 32,
    ("flags", 0, 8, "still holds node/zone for page_zone()"),
    ("buddy_list", 8, 16),
    ("pcp_list", 8, 16),
    ("memdesc", 8, 8, "was compound_head; overlaps buddy_list.next"),
    ("private", 24, 8),
)

# 16 bytes: union { buddy_list; { memdesc; private } } [S: Memdescs overview; buddy mail Option 1].
PAGE_16 = _layout(
    "page", 16,
    ("buddy_list", 0, 16, "Option 1: next|Buddy type, prev|order"),
    ("memdesc", 0, 8),
    ("private", 8, 8),
)

# 8 bytes: the end state `struct page { unsigned long memdesc; }` [S: Memdescs].
PAGE_8 = _layout(
    "page", 8,
    ("memdesc", 0, 8, "free pages: packed buddy word (research §8.3a)"),
)


# ---- memdesc type tables (research §2.1-2.2) ---------------------------------------------

#: Memdescs revision B (wiki source), the default [S: Memdescs?action=Save].
TYPES_REV_B: dict[int, str] = {
    0: "Misc", 1: "Buddy", 2: "File", 3: "Anon", 4: "KSM", 5: "Slab", 6: "Movable",
    7: "PageTable", 8: "NetPool", 9: "HWPoison", 10: "PerCPU",
}
#: Memdescs revision A (rendered page) [S: kernelnewbies.org/MatthewWilcox/Memdescs].
TYPES_REV_A: dict[int, str] = {
    0: "Misc", 1: "File", 2: "Anon", 3: "KSM", 4: "Slab", 5: "Buddy", 6: "Movable",
    7: "VmallocMappable", 9: "PageTable", 10: "NetPool", 11: "HWPoison",
}
#: Path 2025: 0/4/8/12 alias "buddy" because buddy_list.next overlaps the word [S: Path?action=raw].
#: Only 0-4 are visible in the stored excerpt; the rest keep Rev B's names on values whose
#: low two bits are non-zero [I: research §2.2].
TYPES_PATH_2025: dict[int, str] = {
    0: "Buddy", 1: "Misc", 2: "File", 3: "Anon", 4: "Buddy", 5: "Slab", 6: "KSM",
    7: "PageTable", 8: "Buddy", 9: "NetPool", 10: "HWPoison", 11: "PerCPU", 12: "Buddy",
    13: "Movable",
}
TYPE_TABLES: dict[str, dict[int, str]] = {
    "rev-b": TYPES_REV_B, "rev-a": TYPES_REV_A, "path-2025": TYPES_PATH_2025,
}

#: Misc (type 0, Rev B) subtypes in bits 4-10 [S: Memdescs rev B].
MISC_SUBTYPES: dict[int, str] = {
    0: "reserved", 1: "zero", 2: "unknown", 3: "vmalloc", 4: "guard", 5: "offline",
    6: "kmalloc_large", 7: "exact", 8: "brd",
}


@dataclass(frozen=True)
class Stage:
    """One step of the Path.

    ``descriptor_policy``: "overlay" (descriptors are struct pages reinterpreted), "dynamic"
    (each descriptor type has its own 16-byte-aligned slab cache and every page carries a
    memdesc word) or "partial" (the 2026 transition: the types in ``separate`` have their
    caches, the others still overlay struct page; see :attr:`separate_types`).
    ``zone_lookup``: "page_flags" (page->flags high bits) or "descriptor" (memdesc_flags_t of the
    descriptor, the Misc inline word, or a PFN-indexed table for free pages).
    ``free_tracking``: how a free block is marked and linked: "page_type" (PGTY_buddy in
    page_type, order in private), "flags_bit" (a PG bit in flags, order in private),
    "option1" (next|type, prev|order) or "packed" (one 64-bit word, research §8.3a).
    """

    id: str
    title: str
    page: StructLayout
    descriptor_policy: str
    zone_lookup: str
    free_tracking: str
    type_table: str = "rev-b"
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: descriptor types (DESCRIPTOR_TYPES keys) allocated separately at a "partial" stage of
    #: the 2026 transition order; None: all of them when dynamic, none when overlay
    separate: tuple[str, ...] | None = None

    @property
    def struct_page_bytes(self) -> int:
        return self.page.size

    @property
    def dynamic(self) -> bool:
        return self.descriptor_policy == "dynamic"

    @property
    def types(self) -> dict[int, str]:
        return TYPE_TABLES[self.type_table]

    @property
    def separate_types(self) -> tuple[str, ...]:
        """DESCRIPTOR_TYPES keys whose descriptors are slab objects at this stage (the others
        still overlay struct page)."""
        if self.separate is not None:
            return self.separate
        return tuple(t.key for t in DESCRIPTOR_TYPES) if self.dynamic else ()


STAGES: tuple[Stage, ...] = (
    Stage("v6.18", "Linux 6.18 as built (reference)", PAGE_V6_18, "overlay", "page_flags",
          "page_type", notes=("folio overlays 4 struct pages; slab/ptdesc overlay one",)),
    Stage("folio", "folio-only filesystems; ->mapping/->index are __folio_*", PAGE_FOLIO,
          "overlay", "page_flags", "page_type",
          notes=("page-level ->mapping is an error",)),
    Stage("dynamic", "descriptors from slab caches; memdesc word on every page", PAGE_DYNAMIC,
          "dynamic", "page_flags", "page_type"),
    Stage("page32", "struct page shrinks to 32 bytes (Path rev 1)", PAGE_32, "dynamic",
          "page_flags", "flags_bit"),
    Stage("page16", "struct page is 16 bytes; flags leave the page", PAGE_16, "dynamic",
          "descriptor", "option1"),
    Stage("page8", "struct page is the memdesc word alone", PAGE_8, "dynamic", "descriptor",
          "packed"),
)

STAGE_IDS: tuple[str, ...] = tuple(s.id for s in STAGES)
REFERENCE = "v6.18"


# ---- variants: another type table or free-page tracking option for a stage -------------------

@dataclass(frozen=True)
class TrackingOption:
    """One free-page tracking option: how a free block is marked and linked.

    ``side_bytes_per_page``: memory it needs outside struct page, per 4 KiB page (the cost
    model charges it); ``keeps_list_order``: False when it cannot reproduce the kernel's
    free-list order (its observables then differ from the list-order options, measured);
    ``blockers``: what keeps it from being a drop-in replacement in the kernel."""

    name: str
    description: str
    side_bytes_per_page: float = 0.0
    side_memory: str = "none"
    keeps_list_order: bool = True
    blockers: tuple[str, ...] = ()


#: Every free-page tracking option (``memdesc stages`` prints them); mm.free_tracking holds
#: one encoding module per name.
TRACKING: dict[str, TrackingOption] = {o.name: o for o in (
    TrackingOption("page_type", "PageBuddy = PGTY_buddy (0xf0) in the top byte of page_type; "
                   "order in page->private; links in page->buddy_list (mm/page_alloc.c "
                   "set_buddy_order())"),
    TrackingOption("flags_bit", "PageBuddy = bit 24 of page->flags (first unused flag bit "
                   "above __NR_PAGEFLAGS [I]); order in page->private; links in buddy_list "
                   "(overlaps the memdesc word)"),
    TrackingOption("type_alias", "PageBuddy = memdesc type 0/4/8/12 (buddy_list.next overlaps "
                   "the word, Path 2025) with an order <= MAX_PAGE_ORDER in page->private; "
                   "tails/pcp pages carry an out-of-range private [I]"),
    TrackingOption("option1", "BuddyAllocator Option 1: buddy {next | Buddy type, prev | "
                   "order}; links are 16-byte aligned struct page addresses, the low nibbles "
                   "hold type and order"),
    TrackingOption("packed", "one word: type:4 | order:4 | next:28 | prev:28, next/prev are "
                   "block indices (pfn - zone base) >> order; our own encoding (research "
                   "§8.3a), not Wilcox's; a zone spans < 2^28 pages, at most 288 CPUs"),
    TrackingOption("inpage", "type Buddy:4 | order:4 in the word; next/prev in the first 16 "
                   "bytes of the free page itself (direct map), 64-bit only", 0.0,
                   "none (the links use free memory)", True,
                   ("HIGHMEM: free highmem pages have no mapping to hold the links",
                    "debug_pagealloc: free pages are unmapped from the direct map",
                    "free page reporting: a reported page's contents are discarded",
                    "init_on_free / page poisoning overwrite free pages")),
    TrackingOption("bitmap", "LLFree-style: PageBuddy and order in the word; no free_area "
                   "lists but a bit per page, a free-page counter per pageblock and per "
                   "list a head outside struct page (blocks, lowest PFN); takes the "
                   "lowest-addressed block; pcp lists stay linked through the word. "
                   "Departure: LLFree's per-CPU reservations are not modelled",
                   1 / 8 + 2 / 512, "a bit per page + a 16-bit counter per 512-page block",
                   False, ("no public kernel code: LLFree replaces the buddy allocator (and "
                           "the pcp lists) whole",)),
    TrackingOption("slist", "a singly linked list in the word (type:4 | kind:4 | list:12 | "
                   "next:44), the order in per-order bitmaps; removal from the middle walks "
                   "from the list head (walks counted)", 2 / 8,
                   "one bitmap per order: 2 bits per page", True),
)}
#: How each ``free_tracking`` value marks and links a free block (``memdesc stages`` prints it).
FREE_TRACKING: dict[str, str] = {n: o.description for n, o in TRACKING.items()}
#: Free-page tracking options per stage id; the first is the default [S/I: research §8.3].
FREE_TRACKING_OPTIONS: dict[str, tuple[str, ...]] = {
    "v6.18": ("page_type",), "folio": ("page_type",), "dynamic": ("page_type",),
    "page32": ("flags_bit", "type_alias"), "page16": ("option1",),
    "page8": ("packed", "inpage", "bitmap", "slist"),
}


def add_tracking_option(stage_id: str, option: TrackingOption) -> None:
    """Make ``option`` selectable as ``stage_id/NAME`` (mm.free_tracking.register() calls
    this); ValueError for an unknown stage or a name the stage already has."""
    if stage_id not in FREE_TRACKING_OPTIONS:
        raise ValueError(f"unknown stage {stage_id!r}")
    if option.name in FREE_TRACKING_OPTIONS[stage_id]:
        raise ValueError(f"stage {stage_id} already has free-page tracking {option.name!r}")
    TRACKING[option.name] = option
    FREE_TRACKING[option.name] = option.description
    FREE_TRACKING_OPTIONS[stage_id] += (option.name,)


def tracking_variants() -> list[str]:
    """``ID/TRACKING`` for every stage and each of its free-page tracking options (with the
    first type table the option accepts), in Path order: what ``--stages 'ID/*'`` matches
    and what the property tests run."""
    out = []
    for s in STAGES:
        for opt in FREE_TRACKING_OPTIONS[s.id]:
            for table in (None, *TYPE_TABLES):
                try:
                    _with(s, table, opt)
                except ValueError:
                    continue
                out.append(f"{s.id}/{opt}" + (f"@{table}" if table else ""))
                break
    return out


#: How page_zone()/page_to_nid() find node and zone (``memdesc stages`` prints it).
ZONE_LOOKUP: dict[str, str] = {
    "page_flags": "memdesc_zonenum(page->flags) / memdesc_nid(page->flags): zone bits 53..51, "
                  "node bits 63..54 of the page's own flags word",
    "descriptor": "allocated: the descriptor's memdesc_flags_t (folio->flags, slab->flags ...); "
                  "Misc pages: the inline high bits of the memdesc word; free pages: a "
                  "PFN-indexed table (per pageblock)",
}


def _with(stage: Stage, type_table: str | None, tracking: str | None) -> Stage:
    if type_table is not None and type_table not in TYPE_TABLES:
        raise ValueError(f"unknown type table {type_table!r}; tables are: "
                         f"{', '.join(TYPE_TABLES)}")
    options = FREE_TRACKING_OPTIONS[stage.id]
    if tracking is None and stage.id == "page32":
        # page32 marks free pages by whichever rule its type table allows (research §2.2)
        tracking = "type_alias" if type_table == "path-2025" else "flags_bit"
    if tracking is not None and tracking not in options:
        raise ValueError(f"stage {stage.id} has no free-page tracking {tracking!r}; "
                         f"options: {', '.join(options)}")
    if tracking == "type_alias" and (type_table or stage.type_table) != "path-2025":
        raise ValueError("type_alias free tracking needs the path-2025 type table "
                         "(only it makes 0/4/8/12 alias Buddy)")
    if tracking == "flags_bit" and type_table == "path-2025":
        raise ValueError("page32 with the path-2025 table marks free pages by type alias")
    return replace(stage, type_table=type_table or stage.type_table,
                   free_tracking=tracking or stage.free_tracking)


def stage_variant(stage: Stage | str, type_table: str | None = None,
                  free_tracking: str | None = None) -> Stage:
    """``stage`` with another memdesc type table and/or free-page tracking option.

    The variant keeps the stage's ``id`` (same Path step); :func:`variant_name` tells them
    apart. ValueError for a table or option the stage does not have.
    """
    base = get_stage(stage) if isinstance(stage, str) else stage
    return _with(base, type_table, free_tracking)


def variant_name(stage: Stage) -> str:
    """``id[/tracking][@table]``, leaving out what is the stage's default."""
    base = get_stage(stage.id)
    name = stage.id
    if stage.free_tracking != _with(base, stage.type_table, None).free_tracking:
        name += f"/{stage.free_tracking}"
    if stage.type_table != base.type_table:
        name += f"@{stage.type_table}"
    return name


def get_stage(stage_id: str) -> Stage:
    """The stage called ``stage_id``; ValueError naming the valid ids otherwise.

    ``stage_id`` may name a variant: ``ID[/TRACKING][@TABLE]``, e.g. ``page32@path-2025`` or
    ``page8/packed`` (see :data:`FREE_TRACKING_OPTIONS`, :data:`TYPE_TABLES`).
    """
    for s in (*STAGES, *TRANSITION_STAGES):
        if s.id == stage_id:
            return s
    base, _, table = stage_id.partition("@")
    base, _, tracking = base.partition("/")
    if (table or tracking) and base in STAGE_IDS:
        return _with(get_stage(base), table or None, tracking or None)
    raise ValueError(f"unknown stage {stage_id!r}; stages are: {', '.join(STAGE_IDS)}; "
                     f"transition stages: {', '.join(TRANSITION_IDS)} "
                     "(variants: ID[/TRACKING][@TABLE])")


def parse_stages(spec: str) -> list[Stage]:
    """``"all"`` or a comma-separated list of stage ids, variants or globs over
    :func:`tracking_variants` (``page8/*``), in Path order."""
    if spec == "all":
        return list(STAGES)
    wanted: list[Stage] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if any(c in part for c in "*?["):
            names = fnmatch.filter(tracking_variants(), part)
            if not names:
                raise ValueError(f"{part!r} matches no stage variant; variants are: "
                                 f"{', '.join(tracking_variants())}")
            wanted += [get_stage(n) for n in names]
        else:
            wanted.append(get_stage(part))
    order = {sid: i for i, sid in enumerate(PATH_ORDER)}
    seen: list[Stage] = []
    for s in sorted(wanted, key=lambda s: order[s.id]):
        if s not in seen:
            seen.append(s)
    return seen


def type_code(stage: Stage, name: str) -> int:
    """The memdesc type value called ``name`` in the stage's table (lowest if aliased);
    ValueError when the table has no such type."""
    for code, n in sorted(stage.types.items()):
        if n == name:
            return code
    raise ValueError(f"type table {stage.type_table} has no {name!r} type")


# ---- descriptor types: one table for the emulator, the census and the cost model --------------

@dataclass(frozen=True)
class DescriptorType:
    """One kind of memory descriptor, as every part of memdesc sees it.

    ``key``: the data/descriptors.toml entry (its C size) and the cost model's name.
    ``memdesc_types``: the memdesc type values its pages carry (names in the stage's table).
    ``cache_name``: the emulator's kmem_cache from ``dynamic`` on (None: no emulated user;
    ``why_not_emulated`` says why). ``freeptr_offset``: the word SLUB's free pointer may
    overwrite (kmem_cache_args.freeptr_offset). ``pfn_off``/``order_off``: where the standalone
    descriptor keeps its first PFN and its order byte (-1: always order 0); types that share a
    memdesc type must agree on them. ``movable``: its pages count in prep_move_freepages_block()
    (PageLRU() or page_has_movable_ops()). ``census_classes``/``unit_orders``: which census
    allocation units need one ("0", ">0" or "all" unit orders; no class: the census cannot see
    its pages, ``why_no_census`` says why). ``bytes``: C size when the TOML has no entry.
    """

    key: str
    memdesc_types: tuple[str, ...]
    cache_name: str | None
    freeptr_offset: int = 8
    pfn_off: int = -1
    order_off: int = -1
    movable: bool = False
    census_classes: tuple[str, ...] = ()
    unit_orders: str = "all"
    bytes: int | None = None
    why_not_emulated: str = ""
    why_no_census: str = ""


#: The descriptor types, in the order their caches are created and the cost model lists them
#: (struct slab last: it also describes every other descriptor slab). pfn/order members [S:
#: Path folio has pfn and order; I: for the others, members that lose their meaning once the
#: descriptor stands alone: ptdesc __page_mapping (pfn) and the upper half of _pt_pad_2 (order),
#: zpdesc the 8 bytes its 56 are rounded up to, netmem_desc _pp_mapping_pad (pfn) and the low
#: byte of _flags (order), struct slab __page_type/__page_refcount (pfn)].
DESCRIPTOR_TYPES: list[DescriptorType] = [
    DescriptorType("folio", ("File", "Anon"), "folio", 8, 64, 60, movable=True,
                   census_classes=("file", "anon", "shmem"), unit_orders="0"),
    DescriptorType("large_folio", ("File", "Anon"), "folio_large", 8, 64, 60, movable=True,
                   census_classes=("file", "anon", "shmem"), unit_orders=">0"),
    DescriptorType("hugetlb_folio", ("File",), None, census_classes=("hugetlb",),
                   why_not_emulated="the emulator has no hugetlbfs"),
    DescriptorType("ksm", ("KSM",), None, movable=True, census_classes=("ksm",),
                   why_not_emulated="the emulator does not merge pages (no ksmd)"),
    DescriptorType("ptdesc", ("PageTable",), "ptdesc", 8, 24, 44,
                   census_classes=("pagetable",)),
    DescriptorType("zpdesc", ("Movable",), "zpdesc", 8, 56, -1, movable=True,
                   why_no_census="kpageflags has no zsmalloc bit: zspages are untyped there"),
    DescriptorType("netmem_desc", ("NetPool",), "netmem_desc", 24, 24, 0,
                   why_no_census="kpageflags cannot tell page_pool pages: untyped there"),
    DescriptorType("slab", ("Slab",), "memdesc_slab", 16, 48, -1, census_classes=("slab",)),
]


def register_descriptor_type(d: DescriptorType) -> None:
    """Add a descriptor type (before the struct slab entry, which stays last). Kernels booted
    afterwards create its cache; the cost model charges its census classes. ValueError when
    the key exists or a shared memdesc type disagrees on the pfn/order members."""
    if any(t.key == d.key for t in DESCRIPTOR_TYPES):
        raise ValueError(f"descriptor type {d.key!r} is already registered")
    for t in DESCRIPTOR_TYPES:
        if set(t.memdesc_types) & set(d.memdesc_types) and (t.pfn_off, t.order_off) != (
                d.pfn_off, d.order_off):
            raise ValueError(f"{d.key} shares a memdesc type with {t.key} but not its "
                             "pfn/order members")
    DESCRIPTOR_TYPES.insert(len(DESCRIPTOR_TYPES) - 1, d)


def unregister_descriptor_type(key: str) -> None:
    """Remove a type :func:`register_descriptor_type` added (tests)."""
    DESCRIPTOR_TYPES[:] = [t for t in DESCRIPTOR_TYPES if t.key != key]


def descriptor_type(key: str) -> DescriptorType:
    for t in DESCRIPTOR_TYPES:
        if t.key == key:
            return t
    raise KeyError(key)


def movable_memdesc_types() -> tuple[str, ...]:
    """Memdesc types whose pages prep_move_freepages_block() counts as movable from
    ``dynamic`` on (the descriptors with ``movable``)."""
    names: list[str] = []
    for t in DESCRIPTOR_TYPES:
        if t.movable:
            names += [n for n in t.memdesc_types if n not in names]
    return tuple(names)


# ---- the 2026 transition order: some descriptor types separate, the rest overlay -------------
#
# LSFMM+BPF 2026 (LWN 1073425): descriptors are separated one type at a time behind
# CONFIG_MEMDESC, page-table descriptors first, slab next, folios last; Wilcox 2026-01-09
# (<aWF3xg-72SV4tmLk@casper.infradead.org>): "ptdesc, yes [split shared]. Slab is still in
# progress"; page->memdesc sits "adjacent to page->compound_head" (research/turn2-frontier.md
# §1.1). struct page stays 64 bytes until folios leave too.

#: 64-byte struct page of the transition: the folio stage's layout, with the memdesc word of a
#: separated descriptor's pages beside compound_head (the lru.prev word) [S: Wilcox 2026-01-09
#: "adjacent to page->compound_head"; I: the exact word].
PAGE_TRANSITION = _layout(
    "page", 64,
    *[(f.name, f.offset, f.size, f.note) for f in PAGE_FOLIO.fields],
    ("memdesc", 16, 8, "pages of a separated descriptor: descriptor | 4-bit type"),
)

#: The 32-byte page of 2026-01 [S: Wilcox 2026-01-09]: zone/node/section stay in page->flags
#: (copied to folio->flags) with HWPoison, Reserved and AnonExclusive; every other PG_* flag
#: lives only in folio->flags; Head/Private/Private2 go away (no compound_head).
PAGE_32_2026 = _layout(
    "page", 32,
    *[(f.name, f.offset, f.size,
       "zone/node/section + HWPoison, Reserved, AnonExclusive only" if f.name == "flags"
       else f.note) for f in PAGE_32.fields],
)
#: Page flags that stay per page at 32 bytes (2026-01); the rest are folio-only or gone.
PAGE_FLAGS_PER_PAGE_2026 = ("hwpoison", "reserved", "anon_exclusive")
PAGE_FLAGS_FOLIO_ONLY_2026 = (
    "writeback", "referenced", "uptodate", "dirty", "lru", "active", "workingset",
    "owner_priv_1", "owner_2", "reclaim", "swapbacked", "unevictable", "dropbehind", "mlocked",
    "young", "idle")
PAGE_FLAGS_GONE_2026 = ("head", "private", "private_2")

TRANSITION_STAGES: tuple[Stage, ...] = (
    Stage("ptdesc-first", "CONFIG_MEMDESC: only page-table descriptors are separate",
          PAGE_TRANSITION, "partial", "page_flags", "page_type", separate=("ptdesc",),
          notes=("ptdesc from a slab cache; folios, slab, zpdesc, netmem overlay struct page",
                 "migration of separated descriptors disabled (LWN 1073425)")),
    Stage("ptdesc-slab", "CONFIG_MEMDESC: page-table and slab descriptors are separate",
          PAGE_TRANSITION, "partial", "page_flags", "page_type", separate=("ptdesc", "slab"),
          notes=("folios, zpdesc, netmem still overlay struct page",)),
    Stage("page32-2026", "32-byte struct page with the 2026-01 page-flag split",
          PAGE_32_2026, "dynamic", "page_flags", "flags_bit",
          notes=("per-page flags: zone/node/section, HWPoison, Reserved, AnonExclusive",)),
)
TRANSITION_IDS: tuple[str, ...] = tuple(s.id for s in TRANSITION_STAGES)
# the transition stages track free pages as the stage they extend does
FREE_TRACKING_OPTIONS.update({"ptdesc-first": ("page_type",), "ptdesc-slab": ("page_type",),
                              "page32-2026": ("flags_bit",)})
#: Every stage in Path order (the transition stages between ``folio`` and ``dynamic``; the
#: 2026 32-byte page beside ``page32``).
PATH_ORDER: tuple[str, ...] = ("v6.18", "folio", "ptdesc-first", "ptdesc-slab", "dynamic",
                               "page32", "page32-2026", "page16", "page8")
#: Descriptor policies the emulator runs: a partial separation is decided per descriptor type
#: from the stage's ``separate`` row (memdesc.mm.memdesc_alloc.stage_params()).
EMULATED_POLICIES: tuple[str, ...] = ("overlay", "partial", "dynamic")
#: Stages the emulator runs, derived from their policy (every stage of the Path today).
EMULATED_STAGE_IDS: tuple[str, ...] = tuple(
    sid for sid in PATH_ORDER if get_stage(sid).descriptor_policy in EMULATED_POLICIES)
