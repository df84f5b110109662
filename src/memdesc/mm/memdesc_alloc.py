"""alloc_page_desc() and the descriptor caches: memory descriptors as slab objects.

Mirrors the plan's allocation path [S: kernelnewbies.org/MatthewWilcox/FolioAlloc]:
"First, we allocate a struct folio from slab. Then we call into the BuddyAllocator to allocate
the memory, which will set the memdesc value in each page to refer to the folio." -
descriptor first, memory second; if the memory cannot be had, the descriptor is freed again.

This module holds the pieces every descriptor user shares:

* the numba *environment* tuple ``E`` that the hot paths take (the MemMap arrays of
  memdesc.mm.page_alloc, the PageContents arrays of memdesc.mm.kmem, the stage parameters,
  the slab cache tables, the fault-injection state, the debug allocation record, the per-PFN
  content tags and counters) and its index constants;
* page allocation as the descriptor layer calls it: :func:`alloc_pages_e` (fail_page_alloc,
  then alloc_pages_nb()), :func:`free_pages_e`, and :func:`alloc_page_desc_nb`, which writes
  ``desc | type`` into every page of the allocation when that type is separate;
* the per-type rule: :func:`stage_params` derives sp[SP_SEPARATE + t] from the stage's
  ``separate_types`` row (stages.py), so v6.18 (all overlay), the 2026 transition
  (``ptdesc-first``: page tables alone separate; ``ptdesc-slab``: slab too; LWN 1073425,
  Wilcox on linux-mm 2025-11-17 and 2026-01-09) and ``dynamic`` on (all separate) run the
  same code. Departure [I]: at the transition stages the memdesc word sits at byte 16
  (beside compound_head, PAGE_TRANSITION) and the page keeps its page_type (PGTY_table,
  PGTY_slab), which the posted series may place differently;
* :func:`descriptor_caches`: one cache per descriptor type of stages.DESCRIPTOR_TYPES, from
  ``dynamic`` on (mm/slub.py
  creates them at boot). Sizes come from data/descriptors.toml rounded up to 16 bytes; every
  cache is SLAB_TYPESAFE_BY_RCU with 16-byte alignment [S: Memdescs: "All structs pointed to
  from a memdesc must be allocated from a slab which has its alignment set to 16 bytes ...
  The slab must also have the TYPESAFE_BY_RCU flag set"]. Their free pointer sits inside the
  object (kmem_cache_args.freeptr_offset, 6.13+), over a word RCU readers do not validate,
  so the slot stays the descriptor's size: an 80-byte folio takes 80 bytes, not 96 [I].

Freeing never allocates: the free paths (free_pages_e, the slab free path, folio_put) take
only functions that give memory back; tests check that no page allocation happens in them.
"""

from __future__ import annotations

import tomllib
from importlib import resources

import numpy as np
from numba import njit

from memdesc.mm.fault_inject import FA_PAGE, should_fail_nb
from memdesc.mm.free_tracking import unmanaged
from memdesc.mm.ft_common import C_W, stm
from memdesc.mm.kmem import VMEMMAP_START, kread_a
from memdesc.mm.page_alloc import alloc_pages_nb, free_pages_nb
from memdesc.stages import DESCRIPTOR_TYPES, DescriptorType, Stage, descriptor_type, type_code

# ---- the environment tuple ------------------------------------------------------------------
# E[0:2] = MemMap.st (mem, S): mem_map words and the allocator's state array
E_MEM, E_S = 0, 1
E_SLOT, E_DATA, E_FSTACK, E_KMETA = 2, 3, 4, 5          # PageContents.arrays
E_SP, E_CACHES, E_GEO, E_FA, E_REC, E_TAGS, E_STATS = 6, 7, 8, 9, 10, 11, 12

# stage parameters, E[E_SP] (int64)
SP_DYNAMIC = 0          # descriptors are slab objects (memdesc word on every page)
SP_PAGE_BYTES = 1       # sizeof(struct page)
SP_MEMDESC_OFF = 2      # byte offset of the memdesc word inside struct page
SP_T_SLAB, SP_T_FILE, SP_T_ANON, SP_T_PGTABLE, SP_T_NETPOOL, SP_T_MOVABLE, SP_T_MISC = range(3, 10)
SP_DEBUG = 10           # keep the MemMap's allocation record (E[E_REC]) in step
SP_SLABDESC = 11        # cache index of the struct slab descriptor cache (-1 at overlay stages)
SP_NR_NODES = 12
SP_CPU = 13
SP_NID = 14             # numa_node_id(): the node of the CPU the current task runs on
# cache indices of the descriptor caches (-1 at the overlay stages): sp[SP_C_BASE + i] for
# the i-th cached type of stages.DESCRIPTOR_TYPES (derived below, never numbered by hand)
SP_C_BASE, SP_C_MAX = 16, 16
# per memdesc type code t: where a descriptor of that type keeps its first PFN
# (sp[SP_PFN_OFF + t]) and its order byte (sp[SP_ORDER_OFF + t], -1: always order 0), and
# the bit mask of cache indices its descriptors may come from (sp[SP_TYPE_CACHES + t])
SP_PFN_OFF = 32
SP_ORDER_OFF = 48
SP_TYPE_CACHES = 64
# per memdesc type code t: 1 when descriptors of that type are slab objects at this stage
# (sp[SP_SEPARATE + t]; derived from the stage's ``separate_types`` row by stage_params())
SP_SEPARATE = 80
SP_WORDS = 96
#: sp words holding each stage-table type code (what the hot paths compare a word's type with)
SP_TYPE_NAMES = ((SP_T_SLAB, "Slab"), (SP_T_FILE, "File"), (SP_T_ANON, "Anon"),
                 (SP_T_PGTABLE, "PageTable"), (SP_T_NETPOOL, "NetPool"),
                 (SP_T_MOVABLE, "Movable"), (SP_T_MISC, "Misc"))


def descriptor_cache_slot(key: str) -> int:
    """sp[] word that holds the cache index of descriptor type ``key`` (stages.DESCRIPTOR_TYPES
    order among the types with an emulated cache, struct slab excluded)."""
    keys = [t.key for t in DESCRIPTOR_TYPES if t.cache_name is not None and t.key != "slab"]
    if len(keys) > SP_C_MAX:
        raise ValueError(f"at most {SP_C_MAX} descriptor caches")
    return SP_C_BASE + keys.index(key)


SP_C_FOLIO = descriptor_cache_slot("folio")
SP_C_FOLIO_LARGE = descriptor_cache_slot("large_folio")
SP_C_PTDESC = descriptor_cache_slot("ptdesc")
SP_C_ZPDESC = descriptor_cache_slot("zpdesc")
SP_C_NETMEM = descriptor_cache_slot("netmem_desc")


def desc_pfn_order() -> dict[str, tuple[int, int]]:
    """Memdesc type name -> (pfn member, order member) of its standalone descriptor."""
    return {n: (t.pfn_off, t.order_off) for t in DESCRIPTOR_TYPES if t.cache_name
            for n in t.memdesc_types}


def separate_type_codes(stage: Stage) -> list[int]:
    """Memdesc type codes (in the stage's table) whose descriptors are separately allocated
    at ``stage``: the memdesc types of every stages.DESCRIPTOR_TYPES row the stage's
    ``separate_types`` names (all of them from ``dynamic`` on; ptdesc alone at
    ``ptdesc-first``, ptdesc and slab at ``ptdesc-slab``; none at the overlay stages)."""
    names = {n for t in DESCRIPTOR_TYPES if t.key in stage.separate_types
             for n in t.memdesc_types}
    return sorted({type_code(stage, n) for n in names if n in stage.types.values()})


def memdesc_offset(stage: Stage) -> int:
    """Byte offset of the memdesc word in the stage's struct page (0 when it has none: no
    page carries one). From ``dynamic`` on every page has it; at a partial stage of the 2026
    transition only a separated descriptor's pages do (PAGE_TRANSITION: beside
    compound_head)."""
    f = stage.page.field("memdesc")
    return 0 if f is None or not separate_type_codes(stage) else f.offset


def separation_params(sp: np.ndarray, stage: Stage) -> None:
    """The per-type separation words of sp (SP_SEPARATE + t) and the memdesc word's offset,
    from the stage's ``separate_types`` row. new_env() applies them too, so every
    environment the hot paths see carries its stage's rule."""
    sp[SP_SEPARATE:SP_SEPARATE + 16] = 0
    for t in separate_type_codes(stage):
        sp[SP_SEPARATE + t] = 1
    sp[SP_MEMDESC_OFF] = memdesc_offset(stage)


def stage_params(stage: Stage, nr_nodes: int, debug: bool) -> np.ndarray:
    """The int64 stage parameters sp (E[E_SP]) the descriptor paths read, derived from the
    stage's table rows: the memdesc word's place, the type codes, the per-type separation and
    the standalone descriptors' pfn/order members. The cache slots (SP_C_*, SP_SLABDESC,
    SP_TYPE_CACHES) are filled when mm/slub.py creates the caches."""
    sp = np.zeros(SP_WORDS, np.int64)
    sp[SP_DYNAMIC] = int(stage.dynamic)
    sp[SP_PAGE_BYTES] = stage.struct_page_bytes
    separation_params(sp, stage)
    for idx, name in SP_TYPE_NAMES:
        sp[idx] = type_code(stage, name)
    sp[SP_PFN_OFF:SP_PFN_OFF + 16] = -1
    sp[SP_ORDER_OFF:SP_ORDER_OFF + 16] = -1
    for name, (pfn_off, order_off) in desc_pfn_order().items():
        if name in stage.types.values():
            t = type_code(stage, name)
            sp[SP_PFN_OFF + t], sp[SP_ORDER_OFF + t] = pfn_off, order_off
    sp[SP_DEBUG] = int(debug)
    sp[SP_SLABDESC] = -1
    sp[SP_C_BASE:SP_C_BASE + SP_C_MAX] = -1
    sp[SP_NR_NODES] = nr_nodes
    sp[SP_CPU] = 0
    return sp


# counters, E[E_STATS] (int64)
ST_PAGE_ALLOCS, ST_PAGE_FREES, ST_PAGE_FAILS = 0, 1, 2
ST_DESC_FAIL_UNWIND = 3     # descriptor allocated, memory failed, descriptor freed again
ST_IN_FREE = 4              # >0 while a free path runs (alloc_pages_e asserts it is 0)
ST_WORDS = 8


@njit(cache=True)
def borrow(E):
    """E with every array rebound through free_tracking.unmanaged(): entry kernels (called
    from Python, which keeps the arrays alive) call this once so that the many small
    functions below them pass the arrays without atomic reference counting."""
    return (unmanaged(E[0]), unmanaged(E[1]), unmanaged(E[2]), unmanaged(E[3]),
            unmanaged(E[4]), unmanaged(E[5]), unmanaged(E[6]), unmanaged(E[7]),
            unmanaged(E[8]), unmanaged(E[9]), unmanaged(E[10]), unmanaged(E[11]),
            unmanaged(E[12]))


@njit(cache=True)
def numa_node_id(E):
    """Mirrors numa_node_id(): the node whose memory alloc_pages()/folio_alloc()/
    kmem_cache_alloc() prefer (alloc_pages_node(numa_node_id(), ...)); fallback follows that
    node's zonelist. set_numa_node() moves the task."""
    return E[E_SP][SP_NID]


def set_numa_node(sp: np.ndarray, nid: int) -> None:
    """Run the current task on node ``nid`` (as a CPU of that node would: numa_node_id()).
    Departure [I]: the task keeps the same CPU number (its per-CPU lists of that node's
    zones); the kernel would migrate it to a CPU of node ``nid``. ValueError for a node the
    machine lacks."""
    if not 0 <= nid < sp[SP_NR_NODES]:
        raise ValueError(f"node {nid}: the machine has {sp[SP_NR_NODES]} node(s)")
    sp[SP_NID] = nid


@njit(cache=True)
def desc_separate(E, type_code):
    """Whether descriptors of memdesc type ``type_code`` are slab objects at this stage
    (sp[SP_SEPARATE + t], from the stage's table row): the one test every descriptor user
    makes instead of asking which stage it runs at."""
    return E[E_SP][SP_SEPARATE + type_code] != 0


@njit(cache=True)
def page_desc(E, pfn, type_code):
    """The descriptor of page ``pfn``, a page of memdesc type ``type_code``: the struct page
    itself while that type overlays struct page, where page_slab()/page_ptdesc()/
    page_zpdesc()/pp_page_to_nmdesc() are casts, and the address the memdesc word points to
    (type bits cleared) once the type is separate (``dynamic`` on; ptdesc from
    ``ptdesc-first``)."""
    sp = E[E_SP]
    page = np.uint64(VMEMMAP_START) + np.uint64(pfn) * np.uint64(sp[SP_PAGE_BYTES])
    if sp[SP_SEPARATE + type_code]:
        return kread_a(E[E_S], E[E_MEM], E[E_DATA], E[E_SLOT],
                       page + np.uint64(sp[SP_MEMDESC_OFF]), True) & ~np.uint64(15)
    return page


@njit(cache=True)
def set_page_memdesc(E, pfn, order, word):
    """alloc_page_desc()'s last step: ``word`` into the memdesc word of every page of the
    allocation, at the stage's memdesc offset (sp[SP_MEMDESC_OFF])."""
    mem, S = E[E_MEM], E[E_S]
    w = S[C_W]
    md = E[E_SP][SP_MEMDESC_OFF] // 8
    for i in range(np.int64(1) << order):
        stm(mem, S, (pfn + i) * w + md, word)


@njit(cache=True)
def alloc_pages_e(E, gfp, order, nid):
    """__alloc_pages() as the descriptor layer sees it: should_fail_alloc_page() first, then
    the buddy allocator; keeps the debug allocation record. Returns the PFN or -1."""
    stats = E[E_STATS]
    if stats[ST_IN_FREE] > 0:
        raise AssertionError("memory allocated while freeing memory")
    if should_fail_nb(E[E_FA], FA_PAGE, gfp, order):
        stats[ST_PAGE_FAILS] += 1
        return -1
    sp = E[E_SP]
    pfn = alloc_pages_nb(E[E_MEM], E[E_S], gfp, order, nid, sp[SP_CPU])
    if pfn < 0:
        stats[ST_PAGE_FAILS] += 1
        return -1
    stats[ST_PAGE_ALLOCS] += 1
    if sp[SP_DEBUG]:
        rec = E[E_REC]
        if rec[pfn] != -1:
            raise AssertionError("pfn handed out twice")
        rec[pfn] = order
    return pfn


@njit(cache=True)
def free_pages_e(E, pfn, order):
    """__free_pages() with the debug record check (VM_BUG_ON_PAGE on a bad free)."""
    sp = E[E_SP]
    if sp[SP_DEBUG]:
        rec = E[E_REC]
        if rec[pfn] != order:
            raise AssertionError("bad free: pfn not allocated at this order")
        rec[pfn] = -1
    E[E_TAGS][pfn:pfn + (np.int64(1) << order)] = 0
    E[E_STATS][ST_PAGE_FREES] += 1
    free_pages_nb(E[E_MEM], E[E_S], pfn, order, sp[SP_CPU])


@njit(cache=True)
def alloc_page_desc_nb(E, gfp, order, desc, type_code, nid):
    """alloc_page_desc(gfp, order, type, desc): the pages, then ``desc | type`` into the
    memdesc word of every one of them when the type is separate at this stage (while it
    overlays struct page the descriptor *is* the struct page and nothing is written here).
    Returns the PFN or -1; the caller still owns ``desc`` on failure and must free it."""
    pfn = alloc_pages_e(E, gfp, order, nid)
    if pfn >= 0 and E[E_SP][SP_SEPARATE + type_code]:
        set_page_memdesc(E, pfn, order, np.uint64(desc) | np.uint64(type_code))
    return pfn


# ---- descriptor caches ----------------------------------------------------------------------

def descriptor_caches() -> list[DescriptorType]:
    """The caches created from ``dynamic`` on, in stages.DESCRIPTOR_TYPES order (the struct
    slab cache is mm/slub.py's own, self-hosted; see slub.Slub). Free pointers sit over a word
    RCU readers do not validate: folio/zpdesc lru.next, ptdesc pt_list.next, netmem_desc
    _pp_mapping_pad, struct slab slab_list.next [I]."""
    return [t for t in DESCRIPTOR_TYPES if t.cache_name is not None and t.key != "slab"]


SLAB_DESC = descriptor_type("slab")


def _descriptors_toml() -> dict:
    text = resources.files("memdesc").joinpath("data/descriptors.toml").read_text()
    return tomllib.loads(text)


def descriptor_sizes() -> dict[str, int]:
    """C sizes of the descriptors (data/descriptors.toml, tables with ``bytes``; a registered
    type's own ``bytes`` when the file has no entry for it)."""
    sizes = {t.key: t.bytes for t in DESCRIPTOR_TYPES if t.bytes is not None}
    sizes.update({k: int(v["bytes"]) for k, v in _descriptors_toml().items()
                  if isinstance(v, dict) and "bytes" in v})
    return sizes


def use_freeptr_offset() -> bool:
    """descriptors.toml [slab_cache] use_freeptr_offset: whether the descriptor caches keep
    SLUB's free pointer inside the object (True) or after it (+8 bytes, realigned)."""
    return bool(_descriptors_toml().get("slab_cache", {}).get("use_freeptr_offset", True))


def descriptor_slot_bytes(key: str) -> int:
    """The descriptor's size rounded up to the 16-byte slab alignment."""
    return -(-descriptor_sizes()[key] // 16) * 16


def new_env(mm, contents, sp, caches, geo, fault_state, tags, stats) -> tuple:
    """Assemble the environment tuple from its parts (rebuild it when an array is replaced);
    ``sp`` gets the stage's per-type separation (separation_params())."""
    separation_params(sp, mm.stage)
    rec = mm._order if mm._order is not None else np.full(1, -1, np.int8)
    return (*mm.st, *contents.arrays, sp, caches, geo, fault_state, rec, tags, stats)
