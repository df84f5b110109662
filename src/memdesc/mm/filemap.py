"""The page cache: folios of files indexed by page offset.

Mirrors mm/filemap.c and mm/readahead.c (6.18): filemap_alloc_folio() (folio_alloc() with the
mapping's gfp, GFP_HIGHUSER_MOVABLE for ordinary files), filemap_add_folio() (the page cache
takes folio_nr_pages() references, sets ->mapping and ->index), the reader then drops its
own reference; page_cache_ra_order() falls back to order-0 folios when a large folio cannot
be allocated; filemap_get_folio(); __filemap_remove_folio() + folio_put_refs() on eviction;
truncate_inode_pages_range().

The xarray is represented by an array of folio addresses per page index (a multi-index entry
covers its 2^order indices); the radix_tree_node objects such an xarray needs are allocated
from the "radix_tree_node" cache (576-byte xa_node with a constructor: 584-byte slots, as
/proc/slabinfo shows [M]) after each change, so their memory is accounted. A large folio
straddling a truncation point is removed whole (the kernel would split it) [I].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

from memdesc.mm import gfp as _gfp
from memdesc.mm.folio import (
    F_INDEX,
    F_MAPPING,
    fget,
    folio_add_lru,
    folio_alloc_nb,
    folio_order,
    folio_pfn,
    folio_put_refs,
    folio_ref_add,
    fset,
)
from memdesc.mm.kmem import BATCH, M_TOP, M_USED, TAG_FILE, WORDS_PER_PAGE, content_tag, fill_tags
from memdesc.mm.lookups import readback_file_e
from memdesc.mm.memdesc_alloc import E_DATA, E_KMETA, E_SP, E_TAGS, SP_T_FILE, borrow
from memdesc.mm.slab import _GROW
from memdesc.mm.slub_sizing import SLAB_RECLAIM_ACCOUNT

#: struct xa_node is 576 bytes; XA_CHUNK_SHIFT 6 (64 slots per node) [S: include/linux/xarray.h].
XA_NODE_BYTES = 576
XA_CHUNK_SHIFT = 6
#: sizeof(struct inode) of this kernel's "inode_cache" [M: slabinfo objsize 624].
INODE_BYTES = 624
GFP_PAGECACHE = _gfp.GFP_HIGHUSER_MOVABLE
#: page_cache_ra_order() asks for large folios with __GFP_NORETRY | __GFP_NOWARN [S].
GFP_RA_LARGE = GFP_PAGECACHE | _gfp.__GFP_NORETRY | _gfp.__GFP_NOWARN

R_DONE, R_GROW, R_FALLBACK = 0, 1, 2


@njit(cache=True)
def filemap_read_nb(E, mapping, file_id, first_index, order, gfpflags, out, start):
    """Read ``out.shape[0]`` folios of 2^order pages into the page cache from index
    ``first_index``: filemap_alloc_folio(), filemap_add_folio() (folio_ref_add(nr), mapping,
    index, folio_add_lru()), the data, then the reader's folio_put(). out[i] = folio or 0 (failed).
    Returns (i, R_DONE | R_GROW | R_FALLBACK (unit i needs order-0 folios))."""
    E = borrow(E)
    n = out.shape[0]
    t_file = E[E_SP][SP_T_FILE]
    nr = np.int64(1) << order
    for i in range(start, n):
        meta = E[E_KMETA]
        if meta[M_TOP] + E[E_DATA].shape[0] // WORDS_PER_PAGE - meta[M_USED] < 16:
            return i, R_GROW
        folio = folio_alloc_nb(E, gfpflags, order, t_file, 0)
        if folio == _GROW:
            return i, R_GROW
        if folio == 0:
            if order > 0:
                return i, R_FALLBACK
            out[i] = 0
            continue
        index = first_index + i * nr
        folio_ref_add(E, folio, nr)
        fset(E, folio, F_MAPPING, mapping)
        fset(E, folio, F_INDEX, index)
        folio_add_lru(E, folio)                 # filemap_add_folio() ends with it
        fill_tags(E[E_TAGS], folio_pfn(E, folio), nr, TAG_FILE, file_id, index)
        folio_put_refs(E, folio, 1)
        out[i] = folio
    return n, R_DONE


@njit(cache=True)
def filemap_remove_nb(E, folios):
    """__filemap_remove_folio() + folio_put_refs(folio, nr) for each: the page cache's
    references go, and with them the folio. Frees only."""
    E = borrow(E)
    for i in range(folios.shape[0]):
        f = folios[i]
        nr = np.int64(1) << folio_order(E, f)
        fset(E, f, F_MAPPING, 0)
        folio_put_refs(E, f, nr)


@njit(cache=True)
def readback_file_nb(E, index_map, mapping, file_id):
    """Read every cached page back: index -> folio -> folio_pfn() + (index - folio->index)
    -> the data tag. Returns (digest, pages, pages holding the right data, folios whose
    ->mapping is not this file)."""
    E = borrow(E)
    h = np.uint64(0xCBF29CE484222325)
    pages = 0
    right = 0
    wrong_mapping = 0
    tags = E[E_TAGS]
    for idx in range(index_map.shape[0]):
        f = index_map[idx]
        tag = np.uint64(0)
        if f != 0:
            first = np.int64(fget(E, f, F_INDEX))
            if idx == first and fget(E, f, F_MAPPING) != mapping:
                wrong_mapping += 1
            pfn = folio_pfn(E, f) + (idx - first)
            tag = np.uint64(tags[pfn])
            pages += 1
            if tags[pfn] == content_tag(TAG_FILE, file_id, idx):
                right += 1
        h = (h ^ (tag + (np.uint64(idx) << np.uint64(32)))) * np.uint64(0x100000001B3)
    return h, pages, right, wrong_mapping


def xa_nodes_needed(starts: np.ndarray, orders: np.ndarray) -> int:
    """xa_nodes an xarray holding these entries needs: every node from each entry's level up
    to the root (an entry of order k sits in a node of level k // 6, spanning 2^k / 64^level
    slots); a lone entry at index 0 lives in xa_head without a node."""
    if starts.size == 0:
        return 0
    ends = starts + (np.int64(1) << orders) - 1
    top = int(ends.max())
    if top == 0:
        return 0
    height = 1
    while top >> (XA_CHUNK_SHIFT * height):
        height += 1
    total = 0
    for level in range(height):
        shift = XA_CHUNK_SHIFT * (level + 1)
        sel = orders // XA_CHUNK_SHIFT <= level
        if sel.any():
            total += int(np.unique(starts[sel] >> shift).size)
    return total


@dataclass
class AddressSpace:
    """A file's page cache (struct address_space, embedded in its inode)."""

    name: str
    file_id: int
    inode: int                    # the inode object; ->mapping points into it
    index_map: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    xa_nodes: list[int] = field(default_factory=list)
    failed: int = 0

    @property
    def mapping(self) -> int:
        return self.inode

    @property
    def size_pages(self) -> int:
        return self.index_map.shape[0]


class PageCache:
    """All files of one kernel."""

    def __init__(self, kernel):
        self.k = kernel
        slub = kernel.slub
        self.inode_cache = slub.by_name.get("inode_cache") or slub.kmem_cache_create(
            "inode_cache", INODE_BYTES, flags=SLAB_RECLAIM_ACCOUNT)
        self.xa_cache = slub.by_name.get("radix_tree_node") or slub.kmem_cache_create(
            "radix_tree_node", XA_NODE_BYTES, flags=SLAB_RECLAIM_ACCOUNT, has_ctor=True)
        self.files: dict[str, AddressSpace] = {}

    def file(self, name: str) -> AddressSpace | None:
        """The file's address_space, created (an inode allocated) on first use."""
        if name not in self.files:
            inode = self.k.slub.kmem_cache_alloc(self.inode_cache, _gfp.GFP_KERNEL)
            if inode == 0:
                return None
            self.files[name] = AddressSpace(name, len(self.files) + 1, inode)
        return self.files[name]

    def heads(self, a: AddressSpace) -> tuple[np.ndarray, np.ndarray]:
        """(first index, folio) of every cached folio, in index order."""
        m = a.index_map
        if m.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.uint64)
        change = np.flatnonzero((m != 0) & np.concatenate([[True], m[1:] != m[:-1]]))
        return change.astype(np.int64), m[change]

    def _sync_xa_nodes(self, a: AddressSpace, gfpflags: int) -> bool:
        """Allocate or free radix_tree_node objects to what the entries need."""
        starts, folios = self.heads(a)
        orders = self._orders(folios)
        need = xa_nodes_needed(starts, orders)
        have = len(a.xa_nodes)
        if need > have:
            got = self.k.slub.kmem_cache_alloc_bulk(self.xa_cache, gfpflags, need - have)
            a.xa_nodes.extend(int(x) for x in got if x)
            return bool((got != 0).all())
        if need < have:
            drop = np.array(a.xa_nodes[need:], np.uint64)
            del a.xa_nodes[need:]
            self.k.slub.kmem_cache_free(self.xa_cache, drop)
        return True

    def _orders(self, folios: np.ndarray) -> np.ndarray:
        return _orders_nb(self.k.E, folios.astype(np.uint64))

    def read(self, a: AddressSpace, nr_pages: int, order: int) -> dict[str, int]:
        """Read ``nr_pages`` more of the file (appended at its end) in folios of ``order``.
        Returns the folios of ``order`` cached, the units that fell back to order 0 and the
        pages left uncached (failed)."""
        size = 1 << order
        first = (a.size_pages + size - 1) & ~(size - 1)
        units = -(-nr_pages // size)
        out = np.zeros(units, np.uint64)
        gfpflags = GFP_RA_LARGE if order else GFP_PAGECACHE
        fallback: list[int] = []
        i = 0
        while i < units:                        # in BATCHes: Ctrl-C between them
            i, status = filemap_read_nb(self.k.E, np.uint64(a.mapping), a.file_id, first, order,
                                        gfpflags, out[:i + BATCH], i)
            if status == R_GROW:
                self.k.grow()
            elif status == R_FALLBACK:
                fallback.append(i)
                i += 1
        new_size = first + units * size
        grown = np.zeros(new_size, np.uint64)
        grown[: a.size_pages] = a.index_map
        for u in range(units):
            if out[u]:
                grown[first + u * size: first + (u + 1) * size] = out[u]
        for u in fallback:                       # do_page_cache_ra(): order-0 folios
            small = np.zeros(size, np.uint64)
            j = 0
            while j < size:
                j, status = filemap_read_nb(self.k.E, np.uint64(a.mapping), a.file_id,
                                            first + u * size, 0, GFP_PAGECACHE, small, j)
                if status == R_GROW:
                    self.k.grow()
            grown[first + u * size: first + (u + 1) * size] = small
        a.index_map = grown
        failed = int((grown[first:] == 0).sum())
        a.failed += failed
        self._sync_xa_nodes(a, _gfp.GFP_KERNEL)
        large = np.ones(units, np.bool_)
        large[fallback] = False
        return {"folios": int((out[large] != 0).sum()), "fallback": len(fallback),
                "failed": failed}

    def find_get_folio(self, a: AddressSpace, index: int) -> int:
        """filemap_get_folio(): the folio caching ``index`` (0 if none)."""
        return int(a.index_map[index]) if 0 <= index < a.size_pages else 0

    def evict(self, a: AddressSpace, which: np.ndarray) -> int:
        """Remove the folios whose first indices are ``which`` (reclaim of clean folios)."""
        starts, folios = self.heads(a)
        gone = folios[np.isin(starts, which)]
        a.index_map[np.isin(a.index_map, gone)] = 0
        for s in range(0, gone.shape[0], BATCH):        # Ctrl-C between batches
            filemap_remove_nb(self.k.E, gone[s:s + BATCH])
        self._sync_xa_nodes(a, _gfp.GFP_KERNEL)
        return int(gone.size)

    def truncate(self, a: AddressSpace, new_size_pages: int) -> int:
        """truncate_inode_pages_range(mapping, new size, end): folios at or past the new end
        go (a straddling large folio is removed whole [I])."""
        starts, folios = self.heads(a)
        orders = self._orders(folios)
        ends = starts + (np.int64(1) << orders)
        doomed = ends > new_size_pages
        n = self.evict(a, starts[doomed])
        keep = int(ends[~doomed].max()) if (~doomed).any() else 0
        a.index_map = a.index_map[:max(keep, min(new_size_pages, a.size_pages))].copy()
        self._sync_xa_nodes(a, _gfp.GFP_KERNEL)
        return n

    def observe(self, a: AddressSpace) -> dict[str, object]:
        starts, folios = self.heads(a)
        fo = self._orders(folios)
        lens = np.int64(1) << fo                          # the order of the folio at each index
        pos = np.repeat(starts, lens) + np.arange(int(lens.sum())) - np.repeat(
            np.cumsum(lens) - lens, lens)
        keep = pos < a.size_pages
        at = np.zeros(a.size_pages, np.int64)
        at[pos[keep]] = np.repeat(fo, lens)[keep]
        h, pages, right, wrong = readback_file_e(
            self.k.E, a.index_map, np.array(a.xa_nodes, np.uint64), np.uint64(a.mapping),
            a.file_id, at)
        orders = np.bincount(fo, minlength=11) if folios.size else np.zeros(11, np.int64)
        return {"digest": f"{int(h):016x}", "pages": int(pages), "pages_with_right_data":
                int(right), "folios_with_wrong_mapping": int(wrong),
                "folio_orders": [int(x) for x in orders], "xa_nodes": len(a.xa_nodes)}


@njit(cache=True)
def _orders_nb(E, folios):
    E = borrow(E)
    out = np.zeros(folios.shape[0], np.int64)
    for i in range(folios.shape[0]):
        out[i] = folio_order(E, folios[i])
    return out
