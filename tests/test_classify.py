"""Classification of PFNs into memdesc classes: real captures and hand-built traps."""

from __future__ import annotations

import re
from functools import cache

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import fixture_dir
from memdesc.analysis.census import CLASSES, NR_UNIT_ORDERS
from memdesc.analysis.classify import (
    ANOMALIES,
    NCLS,
    NR_PAGE_ORDERS,
    SECTION_SHIFT,
    Layout,
    Zone,
    _classify_chunk,
    build_census,
    choose_cell_pfns,
    classify_chunks,
)
from memdesc.analysis.survey import layout_of, run_survey
from memdesc.ingest import kpageflags as kpf
from memdesc.ingest import procfs
from memdesc.ingest.snapshot import open_snapshot

# Real snapshots: the two idle captures and the snapshots taken inside the two traces.
REAL = ("snapshot-idle", "snapshot-idle-early", "trace-pagecache/pre-snapshot",
        "trace-slab/pre-snapshot")


def B(*bits: int) -> int:
    return sum(1 << b for b in bits)


@cache
def _survey(name: str):
    return run_survey(open_snapshot(fixture_dir(name)))


@cache
def _summary_bits(name: str) -> dict[str, int]:
    """Per-bit PFN counts from the capture's own summary.txt (tools/summarize.py)."""
    text = (fixture_dir(name) / "summary.txt").read_text()
    out = {m[1]: int(m[2]) for m in re.finditer(r"(?m)^\s+bit\s+\d+\s+(\w+)\s+(\d+)$", text)}
    out["flags0"] = int(re.search(r"(?m)^\s+flags==0\s+(\d+)$", text)[1])
    return out


@pytest.fixture(params=REAL)
def real(request):
    return request.param


# --- real captures ---------------------------------------------------------------------------

def test_classes_partition_every_pfn(real):
    c = _survey(real).census
    assert sum(c.pages_by_class.values()) == c.pfns == 6_553_600
    orders = 1 << np.arange(NR_UNIT_ORDERS)
    for k in CLASSES:
        assert int((c.units_by_class[k] * orders).sum()) == c.pages_by_class[k], k


def test_single_bit_classes_match_the_capture_summary(real):
    """free/slab/pagetable/zero are exactly the PFNs with that KPF bit (summary.txt)."""
    c, bits = _survey(real).census, _summary_bits(real)
    assert c.pages_by_class["free"] == bits["BUDDY"]
    assert c.pages_by_class["slab"] == bits["SLAB"]
    assert c.pages_by_class["pagetable"] == bits["PGTABLE"]
    assert c.pages_by_class["zero"] == bits.get("ZERO_PAGE", 0)
    # PG_reserved PFNs are reserved, zero (the zero page is in .bss) or holes outside System
    # RAM (PFN 0 and 0x9f-0xff: init_unavailable_range() marks them reserved).
    holes_with_struct_page = c.extras["anomalies"]["hole_pages_with_struct_page"]
    assert holes_with_struct_page == 1 + 97
    assert c.pages_by_class["reserved"] + c.pages_by_class["zero"] + holes_with_struct_page \
        == bits["RESERVED"]


def test_holes_are_the_pci_hole_pfn0_and_the_legacy_bios_area(real):
    """fixtures README: 1 GiB PCI hole (262,144 PFNs) + PFN 0 + PFN 0x9f-0xff (97)."""
    assert _survey(real).census.pages_by_class["hole"] == 262_144 + 1 + 97


def test_large_folios_are_the_thp_pages(real):
    """KPF_THP marks every page of a large rmappable folio: our order>=1 folio pages."""
    c = _survey(real).census
    large = sum(int((c.units_by_class[k][1:] << np.arange(1, NR_UNIT_ORDERS)).sum())
                for k in ("file", "anon", "shmem"))
    assert large == _summary_bits(real).get("THP", 0)


def test_uninitialised_is_the_never_initialised_top_of_normal(real):
    """present − managed of ZONE_NORMAL (zoneinfo), and exactly the all-zero run that ends at
    max_pfn in the capture's summary.txt."""
    r = _survey(real)
    normal = next(z for z in r.census.zones if z.name == "Normal")
    uninit = r.census.pages_by_class["uninitialised"]
    assert uninit == normal.present - normal.managed
    runs = re.findall(r"(?m)^\s+0x([0-9a-f]+)-0x([0-9a-f]+)\s+(\d+) pages$",
                      (fixture_dir(real) / "summary.txt").read_text())
    top = [int(n) for a, b, n in runs if int(b, 16) == r.census.pfns]
    assert top == [uninit]
    # flags == 0 = PCI hole + uninitialised + single untyped pages
    untyped0 = _summary_bits(real)["flags0"] - 262_144 - uninit
    assert 0 < untyped0 <= r.census.pages_by_class["untyped"]


def test_slab_heads_match_slabinfo_within_a_few_percent(real):
    r = _survey(real)
    slabinfo = procfs.parse_slabinfo((fixture_dir(real) / "slabinfo.txt").read_text())
    heads = r.census.units("slab")
    total = sum(c.num_slabs for c in slabinfo)
    assert abs(heads - total) <= 0.06 * total


def test_free_blocks_reconcile_with_buddyinfo(real):
    """DMA/DMA32 never change: identical. Normal: free pages within the before/after totals,
    each order within the before/after bounds give or take the few blocks that split or merged
    during the read (the trace pre-snapshots were taken on a busy machine)."""
    r = _survey(real)
    for z in r.buddy:
        if z.zone in ("DMA", "DMA32"):
            assert z.ours == z.before == z.after
        else:
            lo = [min(a, b) for a, b in zip(z.before, z.after, strict=True)]
            hi = [max(a, b) for a, b in zip(z.before, z.after, strict=True)]
            for o, n in enumerate(z.ours):
                assert lo[o] - 5 <= n <= hi[o] + 5, (o, n, lo[o], hi[o])
            pages = [z.pages(x) for x in (z.ours, z.before, z.after)]
            slack = pages[0] // 1000         # the lists can dip below both ends mid-read
            assert min(pages[1:]) - slack <= pages[0] <= max(pages[1:]) + slack


#: How close each check comes on the idle captures (status, distance outside the read window).
IDLE_CHECKS = {
    "snapshot-idle": {"anonymous": ("inside read window", 0), "shmem": ("exact", 0),
                      "page cache": ("exact", 0), "slab": ("explained", -1622),
                      "page tables": ("off", -1), "free": ("inside read window", 0),
                      "memmap": ("exact", 0), "slab heads": ("off", 143)},
    "snapshot-idle-early": {"anonymous": ("off", 10), "shmem": ("exact", 0),
                            "page cache": ("exact", 0), "slab": ("explained", -1644),
                            "page tables": ("exact", 0), "free": ("off", 13),
                            "memmap": ("exact", 0), "slab heads": ("off", 193)},
}


@pytest.mark.parametrize("name", IDLE_CHECKS)
def test_meminfo_checks_say_how_close_on_idle_captures(name):
    checks = {c.name: c for c in _survey(name).checks}
    got = {n: (checks[n].status, checks[n].diff) for n in IDLE_CHECKS[name]}
    assert got == IDLE_CHECKS[name]
    # Slab is explained by the large kmalloc pages, and says how many
    assert checks["slab"].status_text.startswith("explained (large kmalloc 1,9")


def test_chunk_size_does_not_change_the_census():
    snap = open_snapshot(fixture_dir("snapshot-idle"))
    layout, _ = layout_of(snap)
    a = build_census(classify_chunks(((s, d["kpageflags"]) for s, d in snap.chunks()), layout),
                     "a")
    b = build_census(classify_chunks(((s, d["kpageflags"]) for s, d in
                                      snap.chunks(chunk_pfns=1 << 16)), layout), "b")
    assert a.pages_by_class == b.pages_by_class
    for k in CLASSES:
        assert (a.units_by_class[k] == b.units_by_class[k]).all()
    assert (a.cells == b.cells).all()


def test_per_pfn_class_map_is_the_one_pfn_count_map():
    """The replay asks the survey's kernel for one class per PFN by giving it a 1-D map
    (classify._add_cells picks the body by rank): on a real snapshot that map must be what
    one-PFN count cells give (cells.argmax(axis=1), first class on a tie), PFN for PFN."""
    snap = open_snapshot(fixture_dir("trace-slab/pre-snapshot"))
    layout, _ = layout_of(snap)
    nr = layout.nregions
    for start, arrays in snap.chunks(("kpageflags",), chunk_pfns=1 << 18):
        flags = arrays["kpageflags"]
        k = len(flags)
        maps = (np.zeros((k, NCLS), np.int32), np.zeros(k, np.int8))
        for cells in maps:
            _classify_chunk(flags, 0, layout.bounds - start, layout.seg_region,
                            layout.seg_ram, np.zeros((nr, NCLS), np.int64),
                            np.zeros(nr, np.int64), np.zeros((NCLS, NR_UNIT_ORDERS), np.int64),
                            np.zeros((nr, NR_PAGE_ORDERS), np.int64), cells, 0,
                            np.full(nr, -1, np.int64),
                            np.zeros((k >> SECTION_SHIFT) + 2, np.uint8),
                            np.zeros(len(ANOMALIES), np.int64))
        assert (maps[0].sum(axis=1) == 1).all()          # every PFN counted exactly once
        assert (maps[0].argmax(axis=1) == maps[1]).all()


# --- hand-built traps ------------------------------------------------------------------------

def census_of(flags, zones=(), ram=None, chunk=None, cell=16):
    flags = np.asarray(flags, np.uint64)
    layout = Layout(len(flags), list(zones), ram)
    chunk = chunk or len(flags)
    chunks = [(s, flags[s:s + chunk]) for s in range(0, len(flags), chunk)]
    return build_census(classify_chunks(chunks, layout, cell_pfns=cell), "test")


def test_slab_wins_over_spurious_anon_and_ksm():
    slab = B(kpf.KPF_SLAB, kpf.KPF_ANON, kpf.KPF_KSM)
    c = census_of([slab, B(kpf.KPF_SLAB, kpf.KPF_COMPOUND_HEAD, kpf.KPF_ANON),
                   B(kpf.KPF_SLAB, kpf.KPF_COMPOUND_TAIL, kpf.KPF_ANON, kpf.KPF_KSM), 0])
    assert c.pages_by_class["slab"] == 3
    assert c.units_by_class["slab"][:2].tolist() == [1, 1]
    assert c.pages_by_class["anon"] == c.pages_by_class["ksm"] == 0


def test_tail_pages_carry_the_head_flags_and_make_one_unit():
    anon = B(kpf.KPF_LRU, kpf.KPF_ANON, kpf.KPF_SWAPBACKED, kpf.KPF_THP)
    head = anon | B(kpf.KPF_COMPOUND_HEAD)
    tail = anon | B(kpf.KPF_COMPOUND_TAIL)
    file_ = B(kpf.KPF_LRU, kpf.KPF_UPTODATE)
    c = census_of([head, tail, tail, tail, file_, 0, 0, 0])
    assert c.units_by_class["anon"][2] == 1 and c.pages_by_class["anon"] == 4
    assert c.units_by_class["file"][0] == 1


def test_order_9_file_folio():
    f = B(kpf.KPF_LRU, kpf.KPF_UPTODATE, kpf.KPF_THP)
    flags = [f | B(kpf.KPF_COMPOUND_HEAD)] + [f | B(kpf.KPF_COMPOUND_TAIL)] * 511
    c = census_of(flags, cell=512)
    assert c.units_by_class["file"][9] == 1 and c.pages_by_class["file"] == 512


def test_buddy_runs_decompose_into_maximal_aligned_blocks():
    """Free PFNs [3, 20): blocks 3 (order 0), 4 (order 2), 8 (order 3), 16 (order 2)."""
    flags = np.zeros(32, np.uint64)
    flags[3:20] = B(kpf.KPF_BUDDY)
    flags[[3, 9]] |= np.uint64(B(kpf.KPF_UPTODATE))     # reported pages stay free
    flags[20:32] = B(kpf.KPF_RESERVED)
    flags[0:3] = B(kpf.KPF_RESERVED)
    c = census_of(flags, zones=[Zone(0, "Normal", 0, 32, 32, 17)], ram=[(0, 32)])
    assert c.zones[0].free_blocks[:4] == [1, 0, 2, 1]
    assert c.pages_by_class["free"] == 17


def test_free_blocks_never_merge_across_a_zone_boundary():
    flags = np.full(16, B(kpf.KPF_BUDDY), np.uint64)
    zones = [Zone(0, "DMA", 0, 6, 6, 6), Zone(0, "DMA32", 6, 16, 10, 10)]
    c = census_of(flags, zones=zones, ram=[(0, 16)])
    assert c.zones[0].free_blocks[:3] == [0, 1, 1]       # 0-3 (order 2), 4-5 (order 1)
    assert c.zones[1].free_blocks[:4] == [0, 1, 0, 1]    # 6-7 (order 1), 8-15 (order 3)


def test_max_order_caps_free_blocks():
    flags = np.full(4096, B(kpf.KPF_BUDDY), np.uint64)
    c = census_of(flags, cell=512)
    assert c.units_by_class["free"][10] == 4 and c.units_by_class["free"][:10].sum() == 0


def test_flags_zero_split_into_uninitialised_and_untyped():
    """A zone of 64 PFNs: 16 in use, 8 zero pages in the middle (untyped), 40 zero at the top;
    zoneinfo allows only 32 never-initialised (present 64 − managed 30 − 2 reserved)."""
    flags = np.zeros(64, np.uint64)
    flags[0:2] = B(kpf.KPF_RESERVED)
    flags[2:16] = B(kpf.KPF_BUDDY)
    flags[24] = B(kpf.KPF_LRU, kpf.KPF_UPTODATE)
    c = census_of(flags, zones=[Zone(0, "Normal", 0, 64, 64, 30)], ram=[(0, 64)], cell=8)
    assert c.pages_by_class["uninitialised"] == 32           # the top 32 of the 39-page run
    assert c.pages_by_class["untyped"] == 8 + 7
    assert c.cells.tolist() == [CLASSES.index(k) for k in
                                ("free", "free", "untyped", "untyped", "uninitialised",
                                 "uninitialised", "uninitialised", "uninitialised")]


def test_without_zoneinfo_flags_zero_is_untyped():
    c = census_of(np.zeros(64, np.uint64))
    assert c.pages_by_class["untyped"] == 64 and c.pages_by_class["uninitialised"] == 0


def test_holes_outside_system_ram_even_with_struct_pages_and_nopage():
    flags = np.zeros(32, np.uint64)
    flags[0] = B(kpf.KPF_RESERVED)               # PFN 0: not System RAM, reserved
    flags[1:16] = B(kpf.KPF_BUDDY)
    flags[16:20] = B(kpf.KPF_NOPAGE)
    c = census_of(flags, ram=[(1, 16), (20, 32)])
    assert c.pages_by_class["hole"] == 1 + 4
    assert c.extras["anomalies"]["hole_pages_with_struct_page"] == 1
    assert c.pages_by_class["untyped"] == 12          # 20-31: zero, no zoneinfo to split them


def test_zero_page_before_reserved_and_misc_compound_is_untyped():
    misc = [B(kpf.KPF_COMPOUND_HEAD)] + [B(kpf.KPF_COMPOUND_TAIL)] * 7
    c = census_of([B(kpf.KPF_RESERVED, kpf.KPF_ZERO_PAGE), *misc, B(kpf.KPF_PGTABLE),
                   B(kpf.KPF_HUGE, kpf.KPF_COMPOUND_HEAD), B(kpf.KPF_HUGE, kpf.KPF_COMPOUND_TAIL),
                   B(kpf.KPF_OFFLINE), B(kpf.KPF_SWAPBACKED, kpf.KPF_LRU),
                   B(kpf.KPF_ANON, kpf.KPF_KSM)])
    p = c.pages_by_class
    assert (p["zero"], p["reserved"], p["untyped"], p["pagetable"], p["hugetlb"], p["offline"],
            p["shmem"], p["ksm"]) == (1, 0, 8, 1, 2, 1, 1, 1)
    assert c.units_by_class["untyped"][3] == 1 and c.units_by_class["hugetlb"][1] == 1


def test_orphan_and_irregular_compound_runs_are_counted_and_covered():
    head = B(kpf.KPF_COMPOUND_HEAD, kpf.KPF_LRU)
    tail = B(kpf.KPF_COMPOUND_TAIL, kpf.KPF_LRU)
    c = census_of([tail, tail, head, tail, tail, 0, 0, 0])
    assert c.extras["anomalies"]["orphan_tail_runs"] == 1
    assert c.extras["anomalies"]["irregular_compound_runs"] == 1     # head + 2 tails = 3
    assert c.units_by_class["file"][:2].tolist() == [1, 2]           # 2 = 2 + 0; 3 = 2 + 1


@given(st.lists(st.sampled_from([0, B(kpf.KPF_BUDDY), B(kpf.KPF_SLAB),
                                 B(kpf.KPF_COMPOUND_HEAD, kpf.KPF_LRU),
                                 B(kpf.KPF_COMPOUND_TAIL, kpf.KPF_LRU),
                                 B(kpf.KPF_ANON, kpf.KPF_SWAPBACKED), B(kpf.KPF_RESERVED),
                                 B(kpf.KPF_NOPAGE)]), min_size=1, max_size=300),
       st.integers(0, 299))
def test_any_flags_partition_into_covered_units(values, zone_end):
    flags = np.array(values, np.uint64)
    n = len(flags)
    end = min(max(zone_end, 1), n)
    zones = [Zone(0, "Normal", 0, end, end, end // 2)]
    c = census_of(flags, zones=zones, ram=[(0, n)], cell=16)   # census.check() inside
    assert sum(c.pages_by_class.values()) == n


def test_choose_cell_pfns_bounds_the_map():
    assert choose_cell_pfns(6_553_600) == 512
    assert choose_cell_pfns(1 << 28) == 512
    assert choose_cell_pfns(1 << 30) == 2048


def test_swap_cache_without_anon_mapping_is_anon_not_shmem():
    """A folio in the swap cache but not (yet) mapped: swapin readahead, or a shmem folio that
    shmem_writeout() moved from the page cache to the swap cache. Its folio->mapping is not
    anonymous, yet it is not shmem (NR_SHMEM no longer counts it) but swap cache (SwapCached);
    stable_page_flags() reports KPF_SWAPCACHE only with PG_swapbacked."""
    swapcache = B(kpf.KPF_UPTODATE, kpf.KPF_LRU, kpf.KPF_SWAPBACKED, kpf.KPF_SWAPCACHE)
    shmem = B(kpf.KPF_UPTODATE, kpf.KPF_LRU, kpf.KPF_SWAPBACKED)
    c = census_of([swapcache, swapcache | B(kpf.KPF_ANON), shmem, 0])
    assert (c.pages_by_class["anon"], c.pages_by_class["shmem"]) == (2, 1)


def test_meminfo_checks_flag_a_real_mismatch():
    """The idle captures pass; the same census against perturbed counters must not."""
    from memdesc.analysis.consistency import meminfo_checks

    census = _survey("snapshot-idle").census
    mem = procfs.parse_meminfo(open_snapshot(fixture_dir("snapshot-idle")).text("meminfo"))
    p = census.pages_by_class
    kb = 4
    bad = dict(mem, Shmem=2 * p["shmem"] * kb,                       # twice our shmem
               Slab=(p["slab"] + census.extras["untyped_compound_pages"] + 500) * kb,
               PageTables=(p["pagetable"] + 200) * kb, MemFree=mem["MemFree"] // 2)
    checks = {c.name: c for c in meminfo_checks(census, bad, bad)}
    for n in ("shmem", "slab", "page tables", "free"):
        assert checks[n].status == "off", (n, checks[n].diff)
    low = dict(mem, Slab=(p["slab"] - 500) * kb)                    # fewer than our slab pages
    assert {c.name: c for c in meminfo_checks(census, low, low)}["slab"].status == "off"


def test_memmap_without_iomem_or_zoneinfo_matches_the_ram_base():
    """Only kpageflags: a PFN not marked KPF_NOPAGE has a struct page (pfn_to_online_page()
    found one), even when its flags are 0 (never initialised). The memmap must count those
    sections, like the RAM base does, or % of RAM comes out halved (fixture: 88 of 192)."""
    sec = 1 << 15
    flags = np.zeros(3 * sec, np.uint64)                 # section 0: all flags 0
    flags[sec:2 * sec] = B(kpf.KPF_NOPAGE)               # section 1: no struct pages
    flags[2 * sec + 7] = B(kpf.KPF_LRU, kpf.KPF_UPTODATE)  # section 2: one file page
    c = census_of(flags, cell=512)
    assert c.ram_pages == 2 * sec
    assert c.memmap_pages == 2 * sec
