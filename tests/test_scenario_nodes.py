"""A two-node machine with per-node allocation in the workload layer (issue 8 item 5).

``node=N`` on a step runs its task on node N: numa_node_id() is N, so folio_alloc(),
pagetable_alloc() and kmalloc_node() ask alloc_pages_node(N, ...), whose zonelist holds node
N's zones first and the other node's after (build_zonelists()); __GFP_THISNODE
(``kmalloc ... thisnode``) uses ZONELIST_NOFALLBACK: node N or nothing.

Hand-worked machine: ``machine 2x64M``: node 0 is PFN 0..16383 (ZONE_DMA below 16 MiB,
ZONE_DMA32 above), node 1 starts on the next section boundary (128 MiB: PFN 32768..49151,
all ZONE_DMA32: below 4 GiB).
"""

from __future__ import annotations

import numpy as np
import pytest

from memdesc.analysis.scenario import World, parse_scenario
from memdesc.analysis.scenario_limits import check_requests
from memdesc.errors import InputError
from memdesc.mm import page_alloc as pa
from memdesc.mm.mmzone import NR_ZONES
from memdesc.mm.zone_state import Z_WMARK

MACHINE = "machine 2x64M cpus=2\nseed 1\n"
WMARK_LOW = 1


def _pfn(w: World, folio: int) -> int:
    from memdesc.mm.folio import folio_pfn

    return int(folio_pfn(w.k.E, np.uint64(folio)))


def _node_of(w: World, pfn: int) -> int:
    for z in w.k.machine.zones:
        if z.start_pfn <= pfn < z.end_pfn:
            return z.node
    raise AssertionError(f"pfn {pfn} is in no zone")


def _node_free(w: World, nid: int) -> int:
    """NR_FREE_PAGES of the node's zones (buddy lists)."""
    return int(pa.zone_free_pages(w.k.mm)[nid * NR_ZONES:(nid + 1) * NR_ZONES].sum())


def _node_low(w: World, nid: int) -> int:
    zs = w.k.mm.zs[nid * NR_ZONES:(nid + 1) * NR_ZONES]
    return int(zs[:, Z_WMARK + WMARK_LOW].sum())


def _run(text: str, stage: str = "v6.18") -> World:
    sc = parse_scenario(MACHINE + text, "nodes")
    w = World(sc, stage, check=True)
    for step in sc.steps:
        w.run(step)
    return w


def test_machine_has_two_nodes_where_the_docstring_says():
    w = World(parse_scenario(MACHINE + "vmalloc 4K\n", "nodes"), "v6.18")
    spans = sorted({(z.node, z.start_pfn, z.end_pfn) for z in w.k.machine.zones
                    if z.end_pfn > z.start_pfn})
    assert {nid for nid, _, _ in spans} == {0, 1}
    assert min(s for nid, s, _ in spans if nid == 1) == 32768


@pytest.mark.parametrize("stage", ["v6.18", "ptdesc-first", "dynamic"])
def test_node1_task_gets_node1_folios_and_page_tables(stage):
    """anon 8M on node 1: 2048 order-0 folios, every one of them in node 1's zones; the
    process's page tables (PGD, PUD, PMD, PTE tables) too."""
    w = _run("anon 8M proc=a node=1\n", stage)
    p = w.anon.procs["a"]
    pfns = [_pfn(w, f) for f in p.folios if f]
    assert len(pfns) == 2048
    assert {_node_of(w, x) for x in pfns} == {1}
    assert _node_of(w, p.pgd) == 1


def test_without_node_the_task_stays_on_node0():
    w = _run("anon 8M proc=a\n")
    p = w.anon.procs["a"]
    assert {_node_of(w, _pfn(w, f)) for f in p.folios if f} == {0}


def test_node1_exhausted_falls_back_to_node0_along_the_zonelist():
    """80 MiB on node 1 (64 MiB of RAM): node 1 serves while its zones pass the low
    watermark, then node 0 (the next zonelist entry); never back to node 1, and node 0 was
    used only once node 1 was at its watermark."""
    w = _run("anon 80M proc=a node=1\n")
    p = w.anon.procs["a"]
    nodes = np.array([_node_of(w, _pfn(w, f)) for f in p.folios if f])
    assert nodes.size == 20480                           # all served: fallback, no failure
    first0 = int(np.argmax(nodes == 0))
    assert nodes[0] == 1 and first0 > 10000
    assert (nodes[:first0] == 1).all() and (nodes[first0:] == 0).all()
    assert _node_free(w, 1) <= _node_low(w, 1)


def test_thisnode_does_not_leave_node1():
    """kmalloc_node(16K, GFP_KERNEL | __GFP_THISNODE, 1) on an exhausted node 1: the
    kmalloc_large pages come from node 1 or the call fails; without __GFP_THISNODE the same
    request falls back to node 0 and every call succeeds."""
    from memdesc.mm.kmem import PAGE_OFFSET

    w = _run("anon 80M proc=a node=1\nkmalloc 500 size=16K tag=t node=1 thisnode\n"
             "kmalloc 500 size=16K tag=u node=1\n")
    t, _ = w.kmalloc["t"][0]
    u, _ = w.kmalloc["u"][0]
    ok_t = t[t != 0]
    assert ok_t.size < 500                               # node 1 ran out: failures
    assert {_node_of(w, int((a - PAGE_OFFSET) >> 12)) for a in ok_t.tolist()} <= {1}
    assert (u != 0).all()
    assert 0 in {_node_of(w, int((a - PAGE_OFFSET) >> 12)) for a in u.tolist()}


def test_node_option_is_checked_against_the_machine():
    sc = parse_scenario("machine 64M\nanon 1M node=1\n", "one.sc")
    from memdesc.mm.mmzone import Machine

    with pytest.raises(InputError, match=r"one.sc:2: .*node=1 but the machine has 1 node"):
        check_requests(sc, Machine.from_spec("64M"))
    with pytest.raises(InputError, match="thisnode needs node="):
        parse_scenario("machine 2x64M\nkmalloc 1 size=64 thisnode\n", "x")
    with pytest.raises(InputError, match="not a node number"):
        parse_scenario("machine 2x64M\nanon 1M node=one\n", "x")
