"""The /proc text parsers on the real captures, on this machine's /proc, and on bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from memdesc.errors import InputError
from memdesc.ingest.procfs import (
    iomem_is_hidden,
    parse_buddyinfo,
    parse_iomem,
    parse_meminfo,
    parse_pagetypeinfo,
    parse_slabinfo,
    parse_vmstat,
    parse_zoneinfo,
    system_ram_pfn_ranges,
    zones_max_pfn,
)
from memdesc.stages import PAGE_SIZE


def read(folder: Path, name: str) -> str:
    return (folder / name).read_text()


# --- zoneinfo ---------------------------------------------------------------------------------

#: Normal `managed` per capture: lazy deferred struct-page init grew it between the two
#: (fixtures README "Things that may surprise", item 1).
NORMAL_MANAGED = {"snapshot-idle": 2_097_152, "snapshot-idle-early": 262_144}


def test_zoneinfo_real(snapshot_dir):
    for when in ("before", "after"):
        zones = parse_zoneinfo(read(snapshot_dir, f"zoneinfo.{when}"))
        by = {z.name: z for z in zones}
        assert [z.name for z in zones] == ["DMA", "DMA32", "Normal", "Movable", "Device"]
        assert all(z.node == 0 for z in zones)
        dma, dma32, normal = by["DMA"], by["DMA32"], by["Normal"]
        # Numbers from fixtures/snapshot-*/README.md "PFN space, zones, holes".
        assert (dma.start_pfn, dma.spanned, dma.present, dma.managed) == (1, 4095, 3998, 3840)
        assert (dma32.start_pfn, dma32.spanned, dma32.present) == (4096, 1_044_480, 782_336)
        assert (normal.start_pfn, normal.spanned, normal.present) == (1_048_576, 5_505_024,
                                                                      5_505_024)
        assert normal.managed == NORMAL_MANAGED[snapshot_dir.name]
        assert zones_max_pfn(zones) == 6_553_600 == normal.end_pfn
        # Empty zones print only the watermark block (zoneinfo_show_print() returns early).
        for empty in (by["Movable"], by["Device"]):
            assert (empty.spanned, empty.present, empty.pcp, empty.stats) == (0, 0, [], {})
            assert not empty.populated
        # Per-node stats only on the node's first populated zone.
        assert dma.node_stats["nr_anon_pages"] > 0
        assert dma32.node_stats == {} and normal.node_stats == {}
        # Every populated zone has one pageset per CPU (2 vCPUs) and nr_free_pages == free.
        for z in (dma, dma32, normal):
            assert [p.cpu for p in z.pcp] == [0, 1]
            assert z.stats["nr_free_pages"] == z.free_pages
            assert z.min < z.low < z.high
            assert len(z.protection) == 5
    assert dma.pcp[0].batch == 1 and dma.pcp[0].high_max == 240 and dma.pcp[0].stat_threshold == 4


def test_zoneinfo_idle_exact_values():
    from conftest import fixture_dir
    zones = {z.name: z for z in parse_zoneinfo(read(fixture_dir("snapshot-idle"),
                                                    "zoneinfo.before"))}
    normal = zones["Normal"]
    assert (normal.free_pages, normal.min, normal.low, normal.high) == (2_051_916, 12329, 15411,
                                                                        18493)
    assert [(p.count, p.high, p.batch) for p in normal.pcp] == [(11921, 12674, 63),
                                                                (5236, 13357, 63)]
    assert zones["DMA32"].managed == 772_917 and zones["DMA"].protection == [0, 3019, 11211,
                                                                             11211, 11211]


@pytest.mark.parametrize("text, where", [
    ("hello world\n", ":1:"),
    ("Node 0, zone      DMA\n  pages free     abc\n", ":2:"),
    ("Node 0, zone      DMA\n  pages free     5\n        spanned  4095\n", "lacks"),
    ("Node 0, zone      DMA\n  pages free     1\n        boost 0\n        min 1\n"
     "        low 2\n        high 3\n        spanned 10\n        present 10\n"
     "        managed 10\n", "no start_pfn"),
    ("Node 0, zone      DMA\n        protection: 0, 1\n", ":2:"),
    ("Node 0, zone      DMA\n              count:    0\n", "outside a 'cpu:' block"),
    ("", "no data"),
])
def test_zoneinfo_garbage(text, where):
    with pytest.raises(InputError) as e:
        parse_zoneinfo(text)
    msg = str(e.value)
    assert msg.startswith("zoneinfo:") and where in msg and "\n" not in msg


def test_zoneinfo_cut_short_real(snapshot_dir):
    """A real file cut in the middle of the Normal zone is refused, naming the zone."""
    text = read(snapshot_dir, "zoneinfo.before")
    normal = text.index("Node 0, zone   Normal")
    cut = text[: text.index("        spanned", normal)]          # at a line boundary
    with pytest.raises(InputError, match="^zoneinfo:[0-9]+: zone Normal lacks spanned"):
        parse_zoneinfo(cut)
    with pytest.raises(InputError, match="^zoneinfo:[0-9]+: expected a zoneinfo field, "
                                         "found 'boos'"):
        parse_zoneinfo(text[: text.index("boost", normal) + 4])   # mid-line


# --- buddyinfo, pagetypeinfo ------------------------------------------------------------------

def test_buddyinfo_real(snapshot_dir):
    buddy = parse_buddyinfo(read(snapshot_dir, "buddyinfo.before"))
    assert list(buddy) == [(0, "DMA"), (0, "DMA32"), (0, "Normal")]
    assert all(len(v) == 11 for v in buddy.values())        # NR_PAGE_ORDERS = MAX_PAGE_ORDER+1
    zones = {z.name: z for z in parse_zoneinfo(read(snapshot_dir, "zoneinfo.before"))}
    # Fully free DMA zone: the free lists hold exactly `pages free` pages.
    dma_pages = sum(n << order for order, n in enumerate(buddy[(0, "DMA")]))
    assert dma_pages == zones["DMA"].free_pages == 3840
    for name in ("DMA32", "Normal"):    # pcp lists hold the rest of NR_FREE_PAGES
        pages = sum(n << order for order, n in enumerate(buddy[(0, name)]))
        assert pages <= zones[name].free_pages


def test_buddyinfo_garbage():
    with pytest.raises(InputError, match=r"^buddyinfo:2: expected 'Node N"):
        parse_buddyinfo("Node 0, zone      DMA      0      1 \nNode 0, zone DMA32 x y\n")
    assert parse_buddyinfo("Node 1, zone   Normal 1 2 3\n") == {(1, "Normal"): [1, 2, 3]}


def test_pagetypeinfo_real(snapshot_dir):
    pti = parse_pagetypeinfo(read(snapshot_dir, "pagetypeinfo.before"))
    assert (pti.pageblock_order, pti.pages_per_block) == (9, 512)
    types = ["Unmovable", "Movable", "Reclaimable", "HighAtomic", "Isolate"]
    assert list(pti.blocks) == [(0, "DMA"), (0, "DMA32"), (0, "Normal")]
    assert all(list(v) == types for v in pti.blocks.values())
    assert len(pti.free) == 15 and pti.free_capped == set() and pti.mixed == {}
    buddy = parse_buddyinfo(read(snapshot_dir, "buddyinfo.before"))
    for (node, zone), per_order in buddy.items():   # free lists per type sum to buddyinfo
        sums = [sum(pti.free[(node, zone, t)][o] for t in types) for o in range(11)]
        assert sums == per_order
    zones = {z.name: z for z in parse_zoneinfo(read(snapshot_dir, "zoneinfo.before"))}
    # Pageblocks cover the zone span: ceil-ish of spanned / 512 counting partial blocks.
    for z in ("DMA32", "Normal"):
        assert sum(pti.blocks[(0, z)].values()) * 512 <= zones[z].spanned + 511
    if snapshot_dir.name == "snapshot-idle":
        assert pti.blocks[(0, "DMA")] == dict(zip(types, [1, 7, 0, 0, 0], strict=True))
        assert pti.blocks[(0, "Normal")]["Movable"] == 3784


def test_pagetypeinfo_capped_and_garbage():
    text = ("Page block order: 9\nPages per block:  512\n\n"
            "Free pages count per migrate type at order       0      1 \n"
            "Node    0, zone   Normal, type      Movable >100000     35 \n\n"
            "Number of blocks type     Unmovable      Movable \n"
            "Node 0, zone   Normal          205         3784 \n")
    pti = parse_pagetypeinfo(text)
    assert pti.free[(0, "Normal", "Movable")] == [100000, 35]
    assert pti.free_capped == {(0, "Normal", "Movable", 0)}
    assert pti.blocks == {(0, "Normal"): {"Unmovable": 205, "Movable": 3784}}
    with pytest.raises(InputError, match=r"^pagetypeinfo:8: expected 2 block counts"):
        parse_pagetypeinfo(text.replace("3784", "3784 7"))
    with pytest.raises(InputError, match="^pagetypeinfo: no 'Page block order'"):
        parse_pagetypeinfo(text.split("\n", 2)[2])
    with pytest.raises(InputError, match=r"^pagetypeinfo:5: expected a pagetypeinfo row"):
        parse_pagetypeinfo(text.replace(">100000", "lots"))


# --- slabinfo, meminfo, vmstat ----------------------------------------------------------------

def test_slabinfo_real(snapshot_dir):
    caches = parse_slabinfo(read(snapshot_dir, "slabinfo.txt"))
    lines = [ln for ln in read(snapshot_dir, "slabinfo.txt").splitlines()[2:] if ln.strip()]
    assert len(caches) == len(lines) == 235
    by = {c.name: c for c in caches}
    assert by["bio-312"].objsize == 320 and by["bio-312"].objperslab == 12
    for c in caches:
        assert c.active_objs <= c.num_objs and c.active_slabs <= c.num_slabs
        assert c.num_objs == c.num_slabs * c.objperslab   # SLUB reports whole slabs
        assert c.pagesperslab & (c.pagesperslab - 1) == 0  # power-of-two slab orders


def test_slabinfo_garbage():
    with pytest.raises(InputError, match="^slabinfo:1: expected 'slabinfo - version"):
        parse_slabinfo("name 1 2 3\n")
    with pytest.raises(InputError, match="^slabinfo:1: version 2.0 is not"):
        parse_slabinfo("slabinfo - version: 2.0\n")
    with pytest.raises(InputError, match=r"^slabinfo:2: expected a slabinfo 2.1 row"):
        parse_slabinfo("slabinfo - version: 2.1\nfoo 1 2 3\n")
    with pytest.raises(InputError, match=r"^slabinfo:2: expected a number, found 'x'"):
        parse_slabinfo("slabinfo - version: 2.1\nfoo 1 x 3 4 5 : tunables 0 0 0 : "
                       "slabdata 1 1 0\n")


def test_meminfo_vmstat_real(snapshot_dir):
    before = parse_meminfo(read(snapshot_dir, "meminfo.before"))
    after = parse_meminfo(read(snapshot_dir, "meminfo.after"))
    assert before["MemTotal"] == after["MemTotal"] == 24_684_092
    assert before["HugePages_Total"] == 0 and before["Hugepagesize"] == 2048
    assert list(before)[:3] == ["MemTotal", "MemFree", "MemAvailable"]
    vm = parse_vmstat(read(snapshot_dir, "vmstat.before"))
    zones = parse_zoneinfo(read(snapshot_dir, "zoneinfo.before"))
    # vmstat's nr_free_pages is the sum over zones (global_zone_page_state) at the same moment.
    assert vm["nr_free_pages"] == sum(z.free_pages for z in zones)
    # MemFree also counts memory the lazy deferred init has not handed to the buddy allocator
    # yet (fixtures README item 1), so it is at least the zones' free pages.
    assert before["MemFree"] >= vm["nr_free_pages"] * PAGE_SIZE // 1024


def test_meminfo_vmstat_garbage():
    with pytest.raises(InputError, match=r"^meminfo:2: expected 'Key:  value \[kB\]'"):
        parse_meminfo("MemTotal: 1 kB\nMemFree 2 kB\n")
    with pytest.raises(InputError, match=r"^meminfo:1: expected a number, found '1.5'"):
        parse_meminfo("MemTotal: 1.5 kB\n")
    with pytest.raises(InputError, match=r"^vmstat:3: expected 'name value'"):
        parse_vmstat("a 1\nb 2\nc\n")
    with pytest.raises(InputError, match="^meminfo: no data"):
        parse_meminfo("\n\n")


# --- iomem ------------------------------------------------------------------------------------

def test_iomem_real(snapshot_dir):
    ranges = parse_iomem(read(snapshot_dir, "iomem.txt"))
    assert not iomem_is_hidden(ranges)
    assert ranges[0].name == "Reserved" and ranges[0].depth == 0
    kernel_code = next(r for r in ranges if r.name == "Kernel code")
    assert kernel_code.depth == 1 and kernel_code.start == 0x1000000
    assert max(r.depth for r in ranges) == 2
    # README: System RAM 0x1000-0x9fbff, 0x100000-0xbfffffff, 0x100000000-0x63fffffff; the
    # partial page at 0x9f000 is excluded (PFN_DOWN(0x9fc00) = 0x9f).
    assert system_ram_pfn_ranges(ranges) == [(0x1, 0x9F), (0x100, 0xC0000),
                                             (0x100000, 0x640000)]


def test_iomem_hidden_and_garbage():
    hidden = parse_iomem("00000000-00000000 : System RAM\n  00000000-00000000 : Kernel code\n")
    assert iomem_is_hidden(hidden) and system_ram_pfn_ranges(hidden) == []
    with pytest.raises(InputError, match=r"^iomem:2: expected '\[indent\]start-end"):
        parse_iomem("00000000-00000fff : Reserved\n 00001000-0009fbff : System RAM\n")


# --- this machine -----------------------------------------------------------------------------

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux /proc")
def test_parsers_on_this_machine():
    """Whatever kernel runs the tests, its own /proc files parse (root-only ones if readable)."""
    proc = Path("/proc")
    zones = parse_zoneinfo((proc / "zoneinfo").read_text())
    assert zones and any(z.populated for z in zones)
    buddy = parse_buddyinfo((proc / "buddyinfo").read_text())
    assert set(buddy) == {(z.node, z.name) for z in zones if z.populated}
    assert parse_meminfo((proc / "meminfo").read_text())["MemTotal"] > 0
    assert parse_vmstat((proc / "vmstat").read_text())["nr_free_pages"] >= 0
    parse_iomem((proc / "iomem").read_text())
    for name, parse in (("pagetypeinfo", parse_pagetypeinfo), ("slabinfo", parse_slabinfo)):
        try:
            text = (proc / name).read_text()
        except PermissionError:
            continue
        assert parse(text)
