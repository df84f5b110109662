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

    ``descriptor_policy``: "overlay" (descriptors are struct pages reinterpreted) or "dynamic"
    (each descriptor type has its own 16-byte-aligned slab cache).
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

    @property
    def struct_page_bytes(self) -> int:
        return self.page.size

    @property
    def dynamic(self) -> bool:
        return self.descriptor_policy == "dynamic"

    @property
    def types(self) -> dict[int, str]:
        return TYPE_TABLES[self.type_table]


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
)}
#: How each ``free_tracking`` value marks and links a free block (``memdesc stages`` prints it).
FREE_TRACKING: dict[str, str] = {n: o.description for n, o in TRACKING.items()}
#: Free-page tracking options per stage id; the first is the default [S/I: research §8.3].
FREE_TRACKING_OPTIONS: dict[str, tuple[str, ...]] = {
    "v6.18": ("page_type",), "folio": ("page_type",), "dynamic": ("page_type",),
    "page32": ("flags_bit", "type_alias"), "page16": ("option1",),
    "page8": ("packed", "inpage"),
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
    for s in STAGES:
        if s.id == stage_id:
            return s
    base, _, table = stage_id.partition("@")
    base, _, tracking = base.partition("/")
    if (table or tracking) and base in STAGE_IDS:
        return _with(get_stage(base), table or None, tracking or None)
    raise ValueError(f"unknown stage {stage_id!r}; stages are: {', '.join(STAGE_IDS)} "
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
    order = {sid: i for i, sid in enumerate(STAGE_IDS)}
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
