"""The Path's steps and, for each, the rules that find what still blocks it in C source.

Data, not code: :data:`STEPS` lists the steps of Matthew Wilcox's "Memdescs/Path" in its order;
:data:`RULES` lists the typed uses (see :class:`memdesc.ingest.csource.Use`) that block each one,
with the source that says so. A use of a struct page field counts only when its object really has
type ``struct page *`` (``folio->mapping`` and ``struct foo *p; p->mapping`` do not).
"""

from __future__ import annotations

from dataclasses import dataclass

from memdesc.ingest.csource import Interest, Use

SEED = "seed: kernelnewbies.org/MatthewWilcox/Memdescs/Path (rev. 2, 2024-05-28)"
MAIL_INDEX = ("mail: Wilcox on the shrunk-page branch, page->index renamed to __folio_index, "
              "quoted in dri-devel/linux-fsdevel replies 2024-12-04")
MAIL_MAPPING = "mail: <20250224180529.1916812-4-willy@infradead.org> (page->__folio_mapping)"
MAIL_SLAB = "mail: struct slab series, merge commit 9d6c59c1c0d6 (5.17)"
LWN_FOLIOS = "LWN 1071484: filesystems still on pages are the 'lazy slackers' (May 2026)"

PAGE = "struct page"
DESCRIPTORS = frozenset({"struct folio", "struct slab", "struct ptdesc", "struct zpdesc"})
PAGE_FLAG_PREFIXES = ("Page", "SetPage", "ClearPage", "__SetPage", "__ClearPage",
                      "TestSetPage", "TestClearPage", "__PageMovable")
FLAG_CALLERS = frozenset({"page_zone", "page_zonenum", "page_to_nid", "page_pgdat",
                          "page_zone_id", "page_to_section"})

#: struct page members of 6.12 that belong to a descriptor, and which one (include/linux/
#: mm_types.h comments: "page cache and anonymous pages", "page_pool", "ZONE_DEVICE pages").
FIELD_DESCRIPTOR = {
    "lru": "folio", "mapping": "folio", "index": "folio", "private": "folio",
    "_mapcount": "folio", "memcg_data": "folio", "mlock_count": "folio", "share": "folio",
    "compound_head": "any", "page_type": "any",
    "pp_magic": "netmem", "pp": "netmem", "dma_addr": "netmem", "pp_ref_count": "netmem",
    "pgmap": "zone_device", "zone_device_data": "zone_device",
}
#: Files whose struct pages are one descriptor whatever the field (path prefix -> descriptor).
PATH_DESCRIPTOR = (
    ("mm/zsmalloc.c", "zpdesc"), ("mm/zpdesc.h", "zpdesc"), ("mm/slub.c", "slab"),
    ("mm/slab", "slab"), ("net/", "netmem"), ("include/net/", "netmem"),
    ("drivers/net/", "netmem"), ("mm/page_alloc.c", "buddy"),
    ("mm/balloon_compaction.c", "balloon"), ("mm/pgtable-generic.c", "ptdesc"),
)
#: struct page at 32 bytes keeps flags, buddy_list/compound_head and private (seed).
KEPT_AT_32 = frozenset({"flags", "buddy_list", "compound_head", "private"})
PAGE_FIELDS_6_12 = frozenset({
    "flags", "lru", "__filler", "mlock_count", "buddy_list", "pcp_list", "mapping", "index",
    "share", "private", "pp_magic", "pp", "_pp_mapping_pad", "dma_addr", "pp_ref_count",
    "compound_head", "pgmap", "zone_device_data", "rcu_head", "page_type", "_mapcount",
    "_refcount", "memcg_data", "virtual", "_last_cpupid", "kmsan_shadow", "kmsan_origin"})


@dataclass(frozen=True)
class Step:
    id: int
    title: str
    stage: str
    source: str


@dataclass(frozen=True)
class Rule:
    """One countable blocker. ``kind`` is the :class:`Use` kind it reads; ``names`` the fields
    or calls (``prefixes`` for the PageFoo() family); ``bases`` the struct the object must be
    (None: any, for calls whose prototype already takes a struct page *)."""

    id: str
    step: int
    kind: str
    text: str
    source: str
    names: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    bases: frozenset[str] | None = frozenset({PAGE})
    addr: bool | None = None
    under: tuple[str, ...] = ()
    outside: tuple[str, ...] = ()

    def matches(self, use: Use, path: str) -> bool:
        if use.kind != self.kind:
            return False
        if self.under and not path.startswith(self.under):
            return False
        if self.outside and path.startswith(self.outside):
            return False
        named = self.names or self.prefixes
        if named and not (use.name in self.names or _prefixed(use.name, self.prefixes)):
            return False
        if self.bases is not None and use.base not in self.bases:
            return False
        return self.addr is None or use.addr == self.addr


def _prefixed(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name.startswith(p) and len(name) > len(p) and name[len(p)].isupper()
               for p in prefixes)


STEPS: tuple[Step, ...] = (
    Step(1, "filesystems on folios", "folio", SEED + "; " + LWN_FOLIOS),
    Step(2, "rename ->mapping/->index to __folio_*", "folio", SEED + "; " + MAIL_INDEX),
    Step(3, "pull struct page apart into descriptors", "folio", SEED + "; " + MAIL_SLAB),
    Step(4, "allocate memdescs dynamically", "dynamic", SEED),
    Step(5, "shrink struct page to 32 bytes", "page32", SEED),
    Step(6, "shrink struct page to 16 bytes", "page16", SEED),
    Step(7, "remove page->private from drivers", "page16", SEED),
)

_DESC_FIELDS = frozenset(FIELD_DESCRIPTOR)

RULES: tuple[Rule, ...] = (
    Rule("1.b_page", 1, "field", "bh->b_page on a struct buffer_head in fs/", SEED,
         frozenset({"b_page"}), bases=frozenset({"struct buffer_head"}), under=("fs/",)),
    Rule("1.folio_page", 1, "field", "&folio->page (a folio used as its first page) in fs/",
         SEED, frozenset({"page"}), bases=frozenset({"struct folio"}), addr=True,
         under=("fs/",)),
    Rule("1.page_flags", 1, "call", "PageFoo()/SetPageFoo()/ClearPageFoo() calls in fs/",
         SEED, prefixes=PAGE_FLAG_PREFIXES, bases=None, under=("fs/",)),
    Rule("1.page_decl", 1, "decl", "struct page locals, parameters and members in fs/", SEED,
         bases=frozenset({PAGE}), under=("fs/",)),
    Rule("2.mapping_index", 2, "field", "page->mapping and page->index", MAIL_MAPPING + "; "
         + MAIL_INDEX, frozenset({"mapping", "index"})),
    Rule("3.desc_field", 3, "field", "struct page fields that belong to a descriptor "
         "(lru, mapping, index, private, _mapcount, memcg_data, pp*, pgmap, ...)", SEED,
         _DESC_FIELDS),
    Rule("3.compound_head", 3, "call", "compound_head() calls", SEED,
         frozenset({"compound_head"}), bases=None),
    Rule("4.overlay_cast", 4, "cast", "casts from struct page * to a descriptor pointer",
         SEED, DESCRIPTORS, bases=frozenset({PAGE})),
    Rule("4.page_cast", 4, "cast", "casts from a descriptor pointer to struct page *", SEED,
         frozenset({PAGE}), bases=DESCRIPTORS),
    Rule("4.embedded_page", 4, "field", "desc->page: a descriptor's embedded first page",
         SEED, frozenset({"page"}), bases=DESCRIPTORS),
    Rule("5.leaves_32", 5, "field", "struct page fields not in the 32-byte page "
         "(all but flags, buddy_list/compound_head, private)", SEED,
         PAGE_FIELDS_6_12 - KEPT_AT_32),
    Rule("6.flags", 6, "field", "page->flags (leaves the 16-byte page)", SEED,
         frozenset({"flags"})),
    Rule("6.flag_callers", 6, "call", "page_zone(), page_to_nid(), PageFoo() and other "
         "readers of page->flags", SEED, FLAG_CALLERS, PAGE_FLAG_PREFIXES, bases=None),
    Rule("7.private", 7, "field", "page->private outside mm/", SEED, frozenset({"private"}),
         outside=("mm/",)),
    Rule("7.private_helpers", 7, "call", "set_page_private() and page_private() outside mm/",
         SEED, frozenset({"set_page_private", "page_private"}), bases=None, outside=("mm/",)),
)


def interest(rules: tuple[Rule, ...] = RULES) -> Interest:
    """What the scanner must report for ``rules`` to be evaluated."""
    fields = frozenset().union(*(r.names for r in rules if r.kind == "field"))
    calls = frozenset().union(*(r.names for r in rules if r.kind == "call"))
    prefixes = tuple(sorted({p for r in rules for p in r.prefixes}))
    casts = frozenset().union(*(r.names for r in rules if r.kind == "cast"))
    decls = frozenset().union(*(r.bases or () for r in rules if r.kind == "decl"))
    return Interest(fields, calls, prefixes, casts, decls)


def descriptor(path: str, use: Use) -> str | None:
    """Which descriptor a struct page field use belongs to, where it can be told: by file
    (zsmalloc: zpdesc, slub: slab, net: netmem) first, else by field."""
    if use.kind != "field" or use.base != PAGE:
        return None
    for prefix, desc in PATH_DESCRIPTOR:
        if path.startswith(prefix):
            return desc
    return FIELD_DESCRIPTOR.get(use.name)
