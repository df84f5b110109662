"""Metadata access accounting: what each kernel operation reads and writes, at each stage.

The contract every consumer (the cache model, the native measurement, ``memdesc timing``)
builds on. The emulator records, per kernel operation, the 8-byte words of metadata it loads
and stores at the stage's real emulated kernel addresses:

* struct pages in the vmemmap: ``VMEMMAP_START + pfn * sizeof(struct page)`` + member offset
  (memdesc.mm.kmem);
* descriptors and other slab objects, page-table pages: the direct map,
  ``PAGE_OFFSET + (pfn << PAGE_SHIFT)`` + offset (memdesc.mm.kmem);
* struct zone, free_area[] list heads and per_cpu_pages: emulated addresses from
  ``HEADS_BASE`` up (memdesc.mm.ft_common), in the unused hole below the vmemmap.

An operation is one call of a kernel entry point of one :data:`OP_CLASSES` row (nested calls
are part of the outermost operation: the pages folio_alloc() takes from the buddy allocator
are folio_alloc()'s accesses).

Dependent loads: ``KIND_PTR`` marks a load whose value is a pointer (or a PFN) that later
accesses of the same operation are computed from; ``KIND_DEP`` marks an access whose address
is computed from the value of the latest earlier ``KIND_PTR`` load of the operation. The
chain level of a load is 1 without ``KIND_DEP``, else the level of that PTR load + 1; an
operation's dependent-load chain is the largest level of its loads. Example, page_zone() of
an allocated folio page: v6.18 loads page->flags (level 1): chain 1; page16 loads the
memdesc word (PTR, level 1) then the folio's flags (DEP, level 2): chain 2.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

#: access kind bits (AccessStream.kind)
KIND_STORE = 1          # a store (else a load)
KIND_DEP = 2            # address computed from the latest earlier KIND_PTR load of the op
KIND_PTR = 4            # a load whose value later accesses of the op are computed from

LINE_BYTES = 64


class OpClass(NamedTuple):
    """One class of kernel operation the accounting counts apart."""

    name: str
    kernel: str         # the kernel function(s) it mirrors
    doc: str


#: operation classes; the class id is the index (AccessStream.op_class)
OP_CLASSES: tuple[OpClass, ...] = (
    OpClass("alloc_pages.pcp", "rmqueue_pcplist()", "order-0..3 page from a non-empty pcp list"),
    OpClass("alloc_pages.refill", "rmqueue_bulk()", "pcp list empty: refilled from the buddy"),
    OpClass("alloc_pages.buddy", "rmqueue_buddy()", "order not pcp-allowed: straight from buddy"),
    OpClass("free_pages.pcp", "free_frozen_page_commit()", "onto a pcp list, no drain"),
    OpClass("free_pages.drain", "free_pcppages_bulk()", "pcp over high: a batch back to buddy"),
    OpClass("free_pages.buddy", "__free_one_page()", "order not pcp-allowed: merged into buddy"),
    OpClass("folio_alloc", "folio_alloc()", "descriptor (dynamic stages) + pages + prep"),
    OpClass("folio_put", "folio_put()", "last reference: descriptor and pages freed"),
    OpClass("kmem_cache_alloc", "kmem_cache_alloc()", "one slab object"),
    OpClass("kmem_cache_free", "kmem_cache_free()", "one slab object (virt_to_slab included)"),
    OpClass("page_folio", "page_folio()", "page -> its folio"),
    OpClass("folio_page", "folio_page()", "folio, n -> its n-th page"),
    OpClass("page_zone", "page_zone()", "page -> struct zone"),
    OpClass("page_to_nid", "page_to_nid()", "page -> node id"),
    OpClass("page_flag_test", "PageFoo() / folio_test_foo()", "one page-flag test"),
    OpClass("pt_walk", "follow_page_pte()", "va -> pte -> pfn -> page -> folio"),
    OpClass("pagecache_lookup", "filemap_get_folio()", "mapping, index -> xarray -> folio"),
)
#: class name -> id
OP_CLASS_ID: dict[str, int] = {c.name: i for i, c in enumerate(OP_CLASSES)}


def op_class_id(name: str) -> int:
    """The id of operation class ``name``; an unknown name is an error."""
    try:
        return OP_CLASS_ID[name]
    except KeyError:
        raise KeyError(f"unknown operation class {name!r}; known: "
                       f"{', '.join(OP_CLASS_ID)}") from None


class AccessStream(NamedTuple):
    """The metadata accesses of a run of operations, in program order.

    The accesses of operation ``i`` are ``[op_first[i], op_first[i + 1])``; every access is
    one naturally aligned word of at most 8 bytes (so it lies inside one 64-byte line).
    """

    addr: np.ndarray        # uint64: emulated kernel virtual address of each access
    kind: np.ndarray        # uint8: KIND_* bits of each access
    op_class: np.ndarray    # uint8: OP_CLASSES id of each operation
    op_first: np.ndarray    # int64, len(op_class) + 1: first access of each operation

    @property
    def nr_ops(self) -> int:
        return len(self.op_class)

    @property
    def nr_accesses(self) -> int:
        return len(self.addr)


def chain_levels(stream: AccessStream) -> np.ndarray:
    """Dependent-load chain length of every operation of ``stream`` (see the module doc).

    The reference definition in plain Python, for tests and small streams; the
    emulator's counters compute the same thing inline.
    """
    out = np.zeros(stream.nr_ops, dtype=np.int64)
    for i in range(stream.nr_ops):
        ptr_level, best = 0, 0
        for a in range(int(stream.op_first[i]), int(stream.op_first[i + 1])):
            k = int(stream.kind[a])
            level = ptr_level + 1 if k & KIND_DEP else 1
            if not k & KIND_STORE:
                best = max(best, level)
                if k & KIND_PTR:
                    ptr_level = level
        out[i] = best
    return out
