"""How each stage's struct page bytes hold free-page state: the FreeTracking interface.

The buddy allocator (mm/page_alloc.py) runs one policy at every stage; everything that depends
on the layout goes through the small numba accessors here. Each free-page tracking option
("encoding") is one module (memdesc.mm.ft_*) implementing the same functions
(:data:`OPS`), registered in :data:`REGISTRY` (its encoding id is its index there):

===================  =========================================================================
encoding             module
===================  =========================================================================
``page_type``        memdesc.mm.ft_page_type: v6.18, folio, dynamic (PGTY_buddy in page_type)
``flags_bit``        memdesc.mm.ft_flags_bit: page32 rev A/B (a PG bit in flags)
``type_alias``       memdesc.mm.ft_type_alias: page32 Path-2025 (type 0/4/8/12 = Buddy)
``option1``          memdesc.mm.ft_option1: page16, BuddyAllocator Option 1
``packed``           memdesc.mm.ft_packed: page8, one word (research §8.3 a, ours)
``inpage``           memdesc.mm.ft_inpage: page8, links inside the free page (64-bit only)
``bitmap``           memdesc.mm.ft_bitmap: page8, LLFree-style bit per page + per-block counters
``slist``            memdesc.mm.ft_slist: page8, singly linked list + per-order bitmaps
===================  =========================================================================

The free-list operations the allocator uses (:data:`LIST_OPS`: add at the head or tail,
delete from the middle, first/last, move to another list, the next element and a link check
for walkers) are per option too. An option that implements none of them keeps its lists
doubly linked through ``link_get``/``link_set`` (the ``dl_*`` functions below, shared by every
list option); one that implements them says which lists it owns with ``fl_owns`` (``bitmap``
owns the buddy free_area lists and leaves the pcp lists doubly linked).

The dispatchers (``link_get``, ``buddy_order_of`` ...) are generated from the registry: an
if/elif over the registered ids whose last branch raises (an unknown id is an error, never a
fall-through). :func:`register` adds an option (a module with the :data:`OPS` functions,
``NAME`` and ``configure(stage, cfg)``) and makes it selectable as ``STAGE/NAME``; it must run
before the allocator's kernels compile (numba binds the dispatchers into its callers, and
cached callers keep the registry they were compiled with: use a NUMBA_CACHE_DIR of its own).

List elements are "nodes": a PFN (>= 0) or a list head (``-1 - head index``). List heads live
in ``heads[h] = (next, prev)`` (struct zone's free_area[order].free_list[mt] and
per_cpu_pages.lists[]); struct zone is not laid out byte-exact, but a head has an emulated
address (HEADS_BASE + 16 h, in the unused hole below vmemmap) so a link word tells a page from
a head by pointer value, as in the kernel.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
from numba import njit
from numba.core import cgutils
from numba.extending import intrinsic

from memdesc.mm import (
    ft_bitmap,
    ft_flags_bit,
    ft_inpage,
    ft_option1,
    ft_packed,
    ft_page_type,
    ft_slist,
    ft_type_alias,
)
from memdesc.mm.ft_common import (  # noqa: F401 -- re-exported: the allocator's S layout
    C_BUDDY,
    C_BUDDYMASK,
    C_DYNAMIC,
    C_ENC,
    C_F_FLAGS,
    C_F_LINK,
    C_F_MD,
    C_F_PTYPE,
    C_HPZ,
    C_LINKOFF,
    C_MISC,
    C_MOVMASK,
    C_NCPU,
    C_NNODE,
    C_NZ,
    C_NZL,
    C_OFF_HEADS,
    C_OFF_PB,
    C_OFF_PBZ,
    C_OFF_PCP,
    C_OFF_SIDE,
    C_OFF_ZL,
    C_OFF_ZS,
    C_SHIFT,
    C_W,
    HEADS_BASE,
    HEADS_FREE,
    MIGRATE_TYPES,
    NCFG,
    NPCOL,
    NR_PCP_LISTS,
    NZCOL,
    SIDE_STATS,
    VMEMMAP,
    Z_BASE,
    acc_head,
    acc_noptr,
    head_empty,
    head_first,
    head_last,
    head_set,
    hx,
    layout_cfg,
    ldm,
    lds,
    list_empty,
    list_first,
    list_last,
    misc_word,
    nodezone_bits,
    px,
    sadd,
    stm,
    sts,
    zx,
)
from memdesc.mm.ft_packed import MAX_PACKED_BLOCKS, PACKED_HEADS  # noqa: F401
from memdesc.mm.mm_types import (
    NODES_PGSHIFT,
    PGTY,
    ZONES_PGSHIFT,
    PG_lru,
    PG_movable_ops,
    PG_reserved,
)
from memdesc.mm.mmzone import NR_ZONES
from memdesc.stages import (
    Stage,
    TrackingOption,
    add_tracking_option,
    movable_memdesc_types,
    type_code,
)

_PG_RESERVED = np.uint64(1 << PG_reserved)
#: page types that may carry PG_movable_ops (page_has_movable_ops())
_PGTY_ZSMALLOC, _PGTY_OFFLINE = np.uint64(PGTY["zsmalloc"]), np.uint64(PGTY["offline"])

#: the functions every encoding module implements (numba), with their arguments
OPS: dict[str, str] = {
    "link_get": "mem, S, node, which, gz, order",
    "link_set": "mem, S, node, which, to, gz, order",
    "buddy_order_of": "mem, S, pfn",
    "set_buddy_order": "mem, S, pfn, order",
    "clear_buddy": "mem, S, pfn",
    "mark_pcp": "mem, S, pfn",
    "is_pcp_page": "mem, S, pfn",
    "tail_ok": "mem, S, pfn",
    "init_reserved": "mem, S, pfn, gz",
    "free_state": "mem, S, pfn",
    "free_range": "mem, S, pfn, n",
    "prep_new_page": "mem, S, pfn, order, comp, gz",
}
#: the free-list operations, per option (``h`` is the list head; -1 in fl_del: find it)
LIST_OPS: dict[str, str] = {
    "fl_empty": "mem, S, h, gz, order",
    "fl_first": "mem, S, h, gz, order",
    "fl_last": "mem, S, h, gz, order",
    "fl_next": "mem, S, node, h, gz, order",
    "fl_linked_ok": "mem, S, node, prev, h, gz, order",
    "fl_add": "mem, S, node, h, gz, order, tail",
    "fl_del": "mem, S, node, h, gz, order",
    "fl_move": "mem, S, node, h, nh, gz, order",
}
#: the Python attributes every encoding module has
ATTRS = ("NAME", "configure")

#: registered encodings; the encoding id is the index
REGISTRY: list[ModuleType] = []
#: free_tracking name (memdesc.stages) -> encoding id
ENCODINGS: dict[str, int] = {}


def _generate(op: str, name: str) -> object:
    """An njit if/elif over the registered encodings calling each one's ``op``; the last
    branch raises (an unknown encoding id is an error). A list op an encoding does not
    implement, or whose list it does not own (``fl_owns``), runs the shared doubly linked
    list (``dl_*``)."""
    args = OPS.get(op) or LIST_OPS[op]
    ns: dict[str, object] = {"C_ENC": C_ENC, "__name__": __name__}
    lines = [f"def {name}({args}):", "    enc = S[C_ENC]"]
    for i, mod in enumerate(REGISTRY):
        lines.append(f"    {'if' if i == 0 else 'elif'} enc == {i}:")
        own = getattr(mod, op, None) if op in LIST_OPS else getattr(mod, op)
        if own is None:
            ns[f"_e{i}"] = globals()["dl_" + op[3:]]
        else:
            ns[f"_e{i}"] = own
            if op in LIST_OPS:
                ns[f"_o{i}"], ns[f"_d{i}"] = mod.fl_owns, globals()["dl_" + op[3:]]
                node = "node" if "node" in args.split(", ") else "-1"
                lines += [f"        if not _o{i}(mem, S, {node}, h, gz):",
                          f"            return _d{i}({args})"]
        lines.append(f"        return _e{i}({args})")
    lines.append("    raise ValueError('unknown free-page tracking encoding id')")
    exec("\n".join(lines), ns)  # noqa: S102 -- code generated from the registry above
    return njit(inline="always")(ns[name])


#: public name of each generated dispatcher (link_get/link_set add the list heads below)
_DISPATCH_NAMES = ({op: op for op in OPS} | {op: op for op in LIST_OPS}
                   | {"link_get": "_enc_link_get", "link_set": "_enc_link_set"})


def _bind_dispatchers() -> None:
    for op, name in _DISPATCH_NAMES.items():
        globals()[name] = _generate(op, name)


def register(mod: ModuleType, option: TrackingOption | None = None,
             stage_ids: tuple[str, ...] = ()) -> int:
    """Register free-page tracking module ``mod`` (selectable as ``ID/NAME`` for each of
    ``stage_ids``, described by ``option``); returns its encoding id.

    ValueError when ``mod`` lacks an attribute or numba function of the interface or its
    NAME is taken; RuntimeError once a dispatcher has compiled (callers bound the old one)."""
    missing = [a for a in (*ATTRS, *OPS) if not hasattr(mod, a)]
    if any(hasattr(mod, op) for op in LIST_OPS):
        missing += [a for a in ("fl_owns", *LIST_OPS) if not hasattr(mod, a)]
    if missing:
        raise ValueError(f"free-page tracking module {mod.__name__} lacks {', '.join(missing)}")
    if mod.NAME in ENCODINGS:
        raise ValueError(f"free-page tracking {mod.NAME!r} is already registered")
    if any(globals().get(n) is not None and globals()[n].signatures
           for n in _DISPATCH_NAMES.values()):
        raise RuntimeError("register free-page tracking options before the allocator runs")
    for sid in stage_ids:
        add_tracking_option(sid, option or TrackingOption(mod.NAME, mod.__doc__ or mod.NAME))
    ENCODINGS[mod.NAME] = len(REGISTRY)
    REGISTRY.append(mod)
    _bind_dispatchers()
    return ENCODINGS[mod.NAME]


def encoding(name: str) -> ModuleType:
    """The registered module of free-page tracking ``name``; ValueError naming the options."""
    if name not in ENCODINGS:
        raise ValueError(f"unknown free-page tracking {name!r}; registered: "
                         f"{', '.join(ENCODINGS)}")
    return REGISTRY[ENCODINGS[name]]


def walk_stats(S: np.ndarray) -> tuple[int, int, int, int] | None:
    """(walks, total steps, longest walk, operations) an option counted in its side region
    (``slist``: predecessor walks of removals; ``bitmap``: the searches of a first block),
    None for options that never walk."""
    if not getattr(REGISTRY[int(S[C_ENC])], "WALKS", False):
        return None
    b = int(S[C_OFF_SIDE])
    return tuple(int(v) for v in S[b:b + SIDE_STATS])


def heads_per_zone(nr_cpus: int) -> int:
    return HEADS_FREE + nr_cpus * NR_PCP_LISTS


def max_cpus(stage: Stage) -> int | None:
    """CPUs whose pcp list heads the stage's free tracking can name (None: no limit)."""
    f = getattr(encoding(stage.free_tracking), "max_cpus", None)
    return None if f is None else f()


def max_zone_pages(stage: Stage) -> int | None:
    """Pages a zone may span under the stage's free tracking (None: no limit)."""
    return getattr(encoding(stage.free_tracking), "MAX_ZONE_PAGES", None)


def side_words(stage: Stage, nr_pfns: int) -> int:
    """Words of S the stage's free tracking keeps beside the allocator state (region
    S[C_OFF_SIDE:]; 0 for the options that live in struct page alone)."""
    f = getattr(encoding(stage.free_tracking), "side_words", None)
    return 0 if f is None else int(f(nr_pfns))


def make_cfg(stage: Stage, nr_cpus: int, nr_nodes: int) -> np.ndarray:
    """The int64 config array the numba kernels read: encoding id, the word index of every
    struct page member the encodings use (from the stage's layout), sizes, type codes."""
    mod = encoding(stage.free_tracking)
    cfg = np.zeros(NCFG, np.int64)
    cfg[C_ENC] = ENCODINGS[mod.NAME]
    layout_cfg(cfg, stage.page, stage.dynamic)
    cfg[C_BUDDY] = type_code(stage, "Buddy")
    cfg[C_MISC] = type_code(stage, "Misc")
    cfg[C_NCPU] = nr_cpus
    cfg[C_NNODE] = nr_nodes
    cfg[C_HPZ] = heads_per_zone(nr_cpus)
    cfg[C_DYNAMIC] = int(stage.dynamic)
    # page_has_movable_ops() or an LRU folio: the descriptor table's movable types
    movable = movable_memdesc_types()
    cfg[C_MOVMASK] = sum(1 << code for code, n in stage.types.items() if n in movable)
    cfg[C_BUDDYMASK] = sum(1 << c for c, n in stage.types.items() if n == "Buddy")
    cfg[C_NZ] = nr_nodes * NR_ZONES
    mod.configure(stage, cfg)
    limit = max_cpus(stage)
    if limit is not None and nr_cpus > limit:
        raise ValueError(f"page8/{mod.NAME} names list heads with 12 bits: at most {limit} CPUs")
    return cfg


# ---- calling convention ----------------------------------------------------------------------

@intrinsic
def unmanaged(typingctx, arr):
    """The same array with a NULL meminfo: a borrowed view the callees need not refcount.

    Every numba function that takes an array increfs and decrefs it (atomic calls that
    LLVM's refcount pruning rarely removes in branchy code), which costs tens of ns per call.
    Entry kernels called from Python (which keeps the arrays alive for the call) rebind their
    arrays through this once; everything below then passes plain views.
    """
    def codegen(context, builder, signature, args):
        ary = context.make_array(arr)(context, builder, value=args[0])
        ary.meminfo = cgutils.get_null_value(ary.meminfo.type)
        return ary._getvalue()

    return arr(arr), codegen


# ---- links ---------------------------------------------------------------------------------

@njit(cache=True)
def link_get(mem, S, node, which, gz, order):
    """next (which=0) or prev (1) of ``node`` on a list of blocks of ``order`` in zone ``gz``."""
    if node < 0:
        to = S[hx(S, -1 - node) + which]
        acc_head(S, -1 - node, which, False, to)
        return to
    return _enc_link_get(mem, S, node, which, gz, order)  # noqa: F821 -- generated


@njit(cache=True)
def link_set(mem, S, node, which, to, gz, order):
    """Set next/prev of ``node`` to ``to``, keeping the type/order nibbles that share the word."""
    if node < 0:
        head_set(S, -1 - node, which, to)
        return
    _enc_link_set(mem, S, node, which, to, gz, order)  # noqa: F821 -- generated


@njit(cache=True)
def dlist_add(mem, S, node, h, gz, order):
    """Mirrors list_add(): insert after the head."""
    head = -1 - h
    nxt = list_first(S, h)
    link_set(mem, S, nxt, 1, node, gz, order)      # __list_add()'s order of stores
    link_set(mem, S, node, 0, nxt, gz, order)
    link_set(mem, S, node, 1, head, gz, order)
    link_set(mem, S, head, 0, node, gz, order)


@njit(cache=True)
def dlist_add_tail(mem, S, node, h, gz, order):
    """Mirrors list_add_tail(): insert before the head."""
    head = -1 - h
    prev = list_last(S, h)
    link_set(mem, S, head, 1, node, gz, order)     # __list_add(new, head->prev, head)
    link_set(mem, S, node, 0, head, gz, order)
    link_set(mem, S, node, 1, prev, gz, order)
    link_set(mem, S, prev, 0, node, gz, order)


@njit(cache=True)
def dlist_del(mem, S, node, gz, order):
    """Mirrors list_del() (without LIST_POISON: the caller rewrites the words next). prev is
    read first and not as the operation's latest pointer: next is (memdesc.mm.access_core)."""
    acc_noptr(S, True)
    prev = link_get(mem, S, node, 1, gz, order)
    acc_noptr(S, False)
    nxt = link_get(mem, S, node, 0, gz, order)
    link_set(mem, S, nxt, 1, prev, gz, order)      # __list_del(): next->prev, then prev->next
    link_set(mem, S, prev, 0, nxt, gz, order)


# ---- the shared doubly linked free list (every list option; bitmap's pcp lists) -----------

dl_empty, dl_first, dl_last = head_empty, head_first, head_last


@njit(cache=True)
def dl_next(mem, S, node, h, gz, order):
    """The element after ``node`` (``-1 - h``: the list's first); ``-1 - h`` at the end."""
    return link_get(mem, S, node, 0, gz, order)


@njit(cache=True)
def dl_linked_ok(mem, S, node, prev, h, gz, order):
    """``node``'s prev link names ``prev`` (walkers check the list both ways)."""
    return link_get(mem, S, node, 1, gz, order) == prev


@njit(cache=True)
def dl_add(mem, S, node, h, gz, order, tail):
    if tail:
        dlist_add_tail(mem, S, node, h, gz, order)
    else:
        dlist_add(mem, S, node, h, gz, order)


@njit(cache=True)
def dl_del(mem, S, node, h, gz, order):
    dlist_del(mem, S, node, gz, order)


@njit(cache=True)
def dl_move(mem, S, node, h, nh, gz, order):
    """Mirrors list_move_tail()."""
    dlist_del(mem, S, node, gz, order)
    dlist_add_tail(mem, S, node, nh, gz, order)


for _m in (ft_page_type, ft_flags_bit, ft_type_alias, ft_option1, ft_packed, ft_inpage,
           ft_bitmap, ft_slist):
    ENCODINGS[_m.NAME] = len(REGISTRY)
    REGISTRY.append(_m)
_bind_dispatchers()


# ---- the free-list interface the allocator calls (whatever the option) ----------------------

@njit(cache=True)
def list_add(mem, S, node, h, gz, order):
    """list_add() onto list ``h`` in the option's own structure (fl_add)."""
    fl_add(mem, S, node, h, gz, order, False)  # noqa: F821 -- generated


@njit(cache=True)
def list_add_tail(mem, S, node, h, gz, order):
    """list_add_tail() onto list ``h`` in the option's own structure (fl_add)."""
    fl_add(mem, S, node, h, gz, order, True)  # noqa: F821 -- generated


@njit(cache=True)
def list_del(mem, S, node, gz, order):
    """list_del() of ``node`` from whatever list holds it (fl_del; options that need the head
    find it from the page's word)."""
    fl_del(mem, S, node, -1, gz, order)  # noqa: F821 -- generated


# ---- node / zone ----------------------------------------------------------------------------

@njit(cache=True)
def page_zone_index(mem, S, pfn):
    """Global zone index (nid * NR_ZONES + zone type) of ``pfn`` the way the stage's page
    allocator finds it: page->flags while the layout has a flags word (memdesc_nid()/
    memdesc_zonenum()), else the PFN table ("reconstruct the node/zone from the PFN")."""
    fl = S[C_F_FLAGS]
    if fl >= 0:
        f = ldm(mem, S, pfn * S[C_W] + fl)
        return (np.int64(f >> np.uint64(NODES_PGSHIFT)) * NR_ZONES
                + np.int64((f >> np.uint64(ZONES_PGSHIFT)) & np.uint64(7)))
    return np.int64(lds(S, S[C_OFF_PBZ] + (pfn >> 9)))


# ---- whole-page states --------------------------------------------------------------------

@njit(cache=True)
def page_init(mem, S, pfn, gz, reserved):
    """The state memmap_init() leaves: __init_single_page() (node/zone links, refcount 1,
    _mapcount -1, INIT_LIST_HEAD(lru)) with PG_reserved for RAM the buddy never gets
    (``reserved``), or the free-tail state for pages about to be freed by
    memblock_free_all()/__free_pages_core()."""
    fl = S[C_F_FLAGS]
    if fl >= 0:
        nz = nodezone_bits(gz // NR_ZONES, gz % NR_ZONES)
        mem[pfn * S[C_W] + fl] = nz | (_PG_RESERVED if reserved else np.uint64(0))
    if reserved:
        init_reserved(mem, S, pfn, gz)  # noqa: F821 -- generated
    else:
        free_state(mem, S, pfn)  # noqa: F821 -- generated


@njit(cache=True)
def memdesc_slot(S):
    """Word index inside struct page of the memdesc word, -1 when the stage has none."""
    return S[C_F_MD]


@njit(cache=True)
def page_is_movable(mem, S, pfn):
    """PageLRU(page) || page_has_movable_ops(page), as prep_move_freepages_block() counts
    movable pages. Overlay stages: the head's PG_lru (set by folio_add_lru(), cleared by
    __page_cache_release()), or the page's own PG_movable_ops with a page type that may carry
    it (page_has_movable_ops(): PageZsmalloc || PageOffline; the bit aliases PG_uptodate).
    From ``dynamic`` on PG_lru lives in the descriptor, which the buddy allocator does not
    read here: the memdesc type stands for it (File/Anon/KSM folios, Movable = movable_ops).
    Departure [I]: a folio between folio_alloc() and folio_add_lru() counts as movable from
    ``dynamic`` on and not before (the emulator allocates nothing in that window except the
    deposited page table of a PMD-mapped anon folio)."""
    slot = memdesc_slot(S)
    if slot < 0:
        w = S[C_W]
        b = pfn * w
        pty = (ldm(mem, S, b + S[C_F_PTYPE]) >> np.uint64(24)) & np.uint64(0xFF)  # page_type
        if ((ldm(mem, S, b + S[C_F_FLAGS]) >> np.uint64(PG_movable_ops)) & np.uint64(1)
                and (pty == _PGTY_ZSMALLOC or pty == _PGTY_OFFLINE)):  # noqa: SIM109
            return True
        ch = ldm(mem, S, b + S[C_F_LINK])          # compound_head (the lru/buddy_list union)
        if ch & np.uint64(1):                      # tail: look at the head
            b = np.int64((ch - np.uint64(1) - VMEMMAP) >> np.uint64(S[C_SHIFT])) * w
        f = ldm(mem, S, b + S[C_F_FLAGS])
        return (f >> np.uint64(PG_lru)) & np.uint64(1) == 1
    w = ldm(mem, S, pfn * S[C_W] + slot)
    t = np.int64(w & np.uint64(15))
    return (S[C_MOVMASK] >> t) & 1 == 1
