"""Page tables and xarrays of the replay (memdesc.analysis.replay_pgtables), hand-worked on a
small text trace: two pids fault the same user address, one faults again in kernel mode, a
file gets a folio and is read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from memdesc.analysis.replay_lookups import lookups_from_trace
from memdesc.analysis.replay_pgtables import ReplayTables, side_table_op
from memdesc.ingest.ftrace_text import read_text
from memdesc.mm import access
from memdesc.mm.access import KIND_DEP, KIND_PTR, KIND_STORE, OP_CLASS_ID, AccessStream
from memdesc.mm.kmem import PAGE_OFFSET, VMEMMAP_START
from memdesc.mm.memdesc_alloc import E_DATA, E_SLOT, E_SP, SP_MEMDESC_OFF
from memdesc.mm.mm_init import Kernel
from memdesc.mm.mmzone import Machine
from memdesc.mm.pgtable import LEVEL_PTE, _walk, pgd_index, pmd_index, pte_index, pud_index

P, D, ST = KIND_PTR, KIND_DEP, KIND_STORE
VA = 0x7F0000201008
ALLOC = ("mm_page_alloc: page={page:016x} pfn={pfn:#x} order=0 migratetype=1 "
         "gfp_flags=GFP_HIGHUSER_MOVABLE|__GFP_ZERO")
LINES = [
    f"  a-100 [000] .....  10.000001: page_fault_user: address={VA:#x} ip=0x401000 "
    "error_code=0x6",
    "  a-100 [000] .....  10.000002: " + ALLOC.format(page=VMEMMAP_START + 64 * 0x3000,
                                                       pfn=0x3000),
    f"  b-200 [001] .....  10.000003: page_fault_user: address={VA:#x} ip=0x401000 "
    "error_code=0x6",
    "  b-200 [001] .....  10.000004: " + ALLOC.format(page=VMEMMAP_START + 64 * 0x3001,
                                                       pfn=0x3001),
    "  b-200 [001] .....  10.000005: page_fault_kernel: address=0x7f0000400000 "
    "ip=0xffffffff81000000 error_code=0x2",
    "  c-300 [000] .....  10.000006: mm_filemap_add_to_page_cache: dev 254:0 ino 2d00fe "
    "pfn=0x3100 ofs=409600 order=2",
    "  c-300 [000] .....  10.000007: mm_filemap_get_pages: dev=254:0 ino=2d00fe "
    "ofs=409600-413695",
]
STAGES = ["v6.18", "ptdesc-first", "page16", "page8"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    p = tmp_path_factory.mktemp("pt") / "trace.txt"
    p.write_text("\n".join(LINES) + "\n")
    tr = read_text(p)
    return tr, lookups_from_trace(tr)


def _arena(stage: str):
    k = Kernel(Machine.from_spec("64M", nr_cpus=1), stage, debug=False)
    k.contents.grow(k.mm.nr_pfns)
    k.slub._rebuild()
    return k


def _ops(s: AccessStream, cls: str) -> list[list[tuple[int, int]]]:
    c = OP_CLASS_ID[cls]
    return [[(int(s.addr[a]), int(s.kind[a])) for a in range(s.op_first[i], s.op_first[i + 1])]
            for i in range(s.nr_ops) if s.op_class[i] == c]


def _run(k, rt, lk, rows) -> tuple[list[list[tuple[int, int]]], np.ndarray]:
    """The replay dispatcher's pt_walk/pagecache rows, counted in the arena (TE = HE): the
    operations' (address, kind) lists and the counters."""
    access.enable(k, 1 << 16)
    for r in rows:
        assert side_table_op(k.E, k.E, rt.ctx, int(lk.op_class[r]), r, int(lk.pfn[r]),
                             k.mm.nr_pfns)
    s = access.drain(k)
    c = access.counters(k)
    access.disable(k)
    return _ops(s, "pt_walk") + _ops(s, "pagecache_lookup"), c


def _entry(table: int, idx: int) -> int:
    return PAGE_OFFSET + (table << 12) + 8 * idx


@pytest.mark.parametrize("stage", STAGES)
def test_faults_walk_their_pids_tables(tiny, stage):
    """Each fault walks PGD, PUD, PMD and PTE of its own pid's table (chain >= 4); the same
    address in pids 100 and 200: different PGDs, so different entries at every level; the
    PTEs map the pages each pid allocated right after its fault (0x3000, 0x3001); pid 200's
    kernel-mode fault on a user address walks pid 200's table, its PTE none (nothing
    allocated after it). The ptlock: v6.18 the PTE table page's struct page + 40; from
    ptdesc-first the memdesc word of that page first (a dependent load more), then the ptl
    in the ptdesc (slab memory)."""
    tr, lk = tiny
    assert tr.events["pid"].tolist() == [100, 100, 200, 200, 200, 300, 300]
    k = _arena(stage)
    rt = ReplayTables(k, lk)
    faults = np.flatnonzero(lk.op_class == OP_CLASS_ID["pt_walk"])
    assert lk.pte_pfn[faults].tolist() == [0x3000, 0x3001, -1]
    pa, pb = rt.pgd_of[100], rt.pgd_of[200]
    assert pa != pb and rt.pgd[faults].tolist() == [pa, pb, pb] and rt.ptes == 2
    walks, c = _run(k, rt, lk, faults)
    sep = stage != "v6.18"
    size = k.mm.stage.page.size
    seen = []
    for (walk, pgd, va) in zip(walks, [pa, pb, pb], [VA, VA, 0x7F0000400000], strict=True):
        slot, data = k.E[E_SLOT], k.E[E_DATA]
        pud = int(data[slot[pgd] * 512 + pgd_index(va)]) >> 12 & ((1 << 40) - 1)
        pmd = int(data[slot[pud] * 512 + pud_index(va)]) >> 12 & ((1 << 40) - 1)
        pte, _ = _walk(slot, data, pgd, np.uint64(va), LEVEL_PTE)
        addrs = [a for a, _ in walk]
        kinds = [kd for _, kd in walk]
        assert addrs[:3] == [_entry(pgd, pgd_index(va)), _entry(pud, pud_index(va)),
                             _entry(pmd, pmd_index(va))]
        assert kinds[:3] == [P, P | D, P | D]
        table_page = VMEMMAP_START + int(pte) * size
        if sep:
            md = table_page + int(k.E[E_SP][SP_MEMDESC_OFF])
            ptl = (int(k.mm.mem[(md - VMEMMAP_START) // 8]) & ~15) + 40
            assert (addrs[3], kinds[3]) == (md, P | D) and PAGE_OFFSET <= ptl < VMEMMAP_START
        else:
            ptl = table_page + 40
        i = 4 if sep else 3
        assert walk[i:i + 4] == [(ptl, P | D), (ptl, ST), (addrs[2], D),
                                 (_entry(int(pte), pte_index(va)), P | D)]
        assert walk[-1] == (ptl, ST)
        seen.append(addrs[:4])
    assert not set(seen[0]) & set(seen[1])          # the same va, no entry in common
    c = c[OP_CLASS_ID["pt_walk"]]
    # chain: PGD 1 PUD 2 PMD 3 [memdesc word 4] ptl 4|5 PTE 5|6 page 6|7 (the walks that
    # found a page); 3 walks, 2 stores each (lock, unlock)
    assert (c[access.CT_OPS], c[access.CT_STORES]) == (3, 6)
    assert c[access.CT_CHAIN_MAX] == 6 + sep


@pytest.mark.parametrize("stage", ["v6.18", "page16"])
def test_pagecache_lookup_walks_the_mappings_xa_nodes(tiny, stage):
    """mm_filemap_get_pages at index 100 of a file whose order-2 folio covers 100..103:
    size 104 indices -> height 2 -> two xa_nodes (levels 1 and 0, xa_nodes_needed()), the
    walk: i_pages.xa_head (mapping + 16), the level-1 node's slot 100 >> 6 = 1, the level-0
    node's slot 100 & 63 = 36, in this mapping's nodes."""
    tr, lk = tiny
    k = _arena(stage)
    rt = ReplayTables(k, lk)
    rows = np.flatnonzero((lk.op_class == OP_CLASS_ID["pagecache_lookup"])
                          & (tr.events["event"][lk.event] == 11))
    assert len(rows) == 1 and lk.index[rows[0]] == 100 and lk.order[rows[0]] == 2
    m = int(lk.mapping[rows[0]])
    assert rt.map_size[m] == 104 and rt.node_hi[m] - rt.node_lo[m] == 2
    (walk,), _ = _run(k, rt, lk, rows)
    nodes = {int(x) for x in rt.nodes[rt.node_lo[m]:rt.node_hi[m]]}
    assert walk[0] == (int(rt.map_addr[m]) + 16, P)
    slots = [(a - 40 - 8 * s, s) for (a, _), s in zip(walk[1:3], (1, 36), strict=True)]
    # a node of this mapping per level (picked by (level, prefix): lookups.py departure [I])
    assert {n for n, _ in slots} <= nodes and [kd for _, kd in walk[1:3]] == [P | D] * 2


@pytest.mark.slow
def test_replay_of_the_recording_walks_tables():
    """The real recording (tests/data/record-lookups: 41,159 faults of 10 pids, 95
    mappings), replayed with accounting: every fault on a user address walks its pid's
    four levels and takes the PTE table's ptlock -- at least 6 loads (PGD, PUD, PMD, ptl,
    recheck, PTE) and 2 stores (lock, unlock) per walk at v6.18, one load more (the memdesc
    word) from ptdesc-first on; the page-cache lookups walk xa_nodes (loads > 0)."""
    from memdesc.analysis.replay import load_replay_input, replay
    from memdesc.ingest.ftrace import read_trace
    from memdesc.stages import get_stage

    inp = load_replay_input(read_trace(Path(__file__).parent / "data" / "record-lookups"))
    lk = inp.lookups.lookups
    got: dict[str, np.ndarray] = {}

    def sink(stage_id, mm):
        got[stage_id] = access.counters(mm)
    stages = [get_stage(s) for s in ("v6.18", "ptdesc-first", "page16")]
    replay(inp, stages, "placement", 4, access_sink=sink)
    pt, pc = OP_CLASS_ID["pt_walk"], OP_CLASS_ID["pagecache_lookup"]
    n = int((lk.op_class == pt).sum())
    assert n == 41_159 and (lk.va[lk.op_class == pt] < 0x00007FFFFFFFF000).all()
    for sid, c in got.items():
        sep = sid != "v6.18"
        assert c[pt, access.CT_OPS] == n
        assert c[pt, access.CT_LOADS] >= (6 + sep) * n and c[pt, access.CT_STORES] == 2 * n
        assert c[pt, access.CT_CHAIN_MAX] >= 5 + sep
        assert c[pc, access.CT_LOADS] > 2 * c[pc, access.CT_OPS] > 0
    assert got["ptdesc-first"][pt, access.CT_LOADS] - got["v6.18"][pt, access.CT_LOADS] == n
