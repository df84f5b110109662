"""The machine: x86-64 zone placement, sections, holes, and the kernel's sizing functions
reproduced exactly against a real machine's /proc/zoneinfo."""

from __future__ import annotations

import pytest

from conftest import fixture_dir
from memdesc.analysis.machine_from_snapshot import machine_from_snapshot, machine_from_text
from memdesc.errors import InputError
from memdesc.ingest.procfs import parse_zoneinfo
from memdesc.mm.mmzone import (
    PAGES_PER_SECTION,
    Machine,
    ZoneSpec,
    calculate_min_free_kbytes,
    parse_size,
    zone_batchsize,
)


def test_parse_size():
    assert parse_size("64G") == 64 << 30 and parse_size("512M") == 512 << 20
    assert parse_size("1T") == 1 << 40 and parse_size("4KiB") == 4096
    with pytest.raises(ValueError, match="expected a number"):
        parse_size("lots")


def test_from_spec_64g_is_laid_out_like_x86():
    m = Machine.from_spec("64G")
    dma, dma32, normal = (m.zone(0, n) for n in ("DMA", "DMA32", "Normal"))
    assert (dma.start_pfn, dma.end_pfn) == (1, 0x1000)               # [4 KiB, 16 MiB)
    assert (dma32.start_pfn, dma32.end_pfn) == (0x1000, 0x100000)    # up to 4 GiB, hole incl.
    assert dma.present == 3998 and dma.managed == 3840               # the fixture's DMA
    assert dma32.present == 0xC0000 - 0x1000                         # PCI hole 3-4 GiB
    assert normal.start_pfn == 0x100000
    assert m.ram_bytes == (64 << 30) - (0x100 - 0x9F + 1) * 4096     # legacy hole below 1 MiB
    assert m.nr_pfns % PAGES_PER_SECTION == 0 and m.nr_pfns >= m.max_pfn
    assert not m.zone(0, "Movable").spanned


def test_from_spec_two_nodes_and_movable():
    m = Machine.from_spec("2x512G")
    assert m.nr_nodes == 2
    n1 = m.zone(1, "Normal")
    assert n1.present == (512 << 30) >> 12 and n1.start_pfn % PAGES_PER_SECTION == 0
    assert not m.zone(1, "DMA32").spanned and m.cpu_node == (0, 1)
    mv = Machine.from_spec("8G", movable="2G")
    assert mv.zone(0, "Movable").present == (2 << 30) >> 12
    assert mv.zone(0, "Normal").end_pfn == mv.zone(0, "Movable").start_pfn


def test_miniature_machine_has_three_zones_and_a_hole():
    m = Machine.from_spec("64M", hole_start="32M", dma32_end="40M")
    dma32 = m.zone(0, "DMA32")
    assert dma32.spanned - dma32.present == (8 << 20) >> 12
    assert m.zone(0, "Normal").present == (32 << 20) >> 12


def test_bad_machines_are_rejected():
    with pytest.raises(ValueError, match="overlap"):
        Machine.from_zones([ZoneSpec(0, "DMA32", 4096, 1024, 1024, 1024),
                            ZoneSpec(0, "Normal", 4608, 1024, 1024, 1024)],
                           [(4096, 5632)])
    with pytest.raises(ValueError, match="present"):
        Machine.from_zones([ZoneSpec(0, "Normal", 4096, 1024, 1000, 1000)], [(4096, 5120)])
    with pytest.raises(ValueError, match="pageblock"):
        Machine.from_zones([ZoneSpec(0, "DMA32", 4096, 100, 100, 100),
                            ZoneSpec(0, "Normal", 4196, 924, 924, 924)], [(4096, 5120)])


def test_sizing_functions_reproduce_the_fixture_zoneinfo():
    """From managed pages alone, the kernel's formulas give exactly what /proc/zoneinfo of
    the real machine shows: watermarks (with khugepaged's min_free_kbytes), protection,
    batch, high_min, high_max."""
    text = (fixture_dir("snapshot-idle") / "zoneinfo.before").read_text()
    io = (fixture_dir("snapshot-idle") / "iomem.txt").read_text()
    real = {z.name: z for z in parse_zoneinfo(text) if z.spanned}
    m = machine_from_text(text, io, 2, keep_tunables=False)
    for name, z in real.items():
        p = m.params(z.node, m.zone(z.node, name).zone_type)
        assert (p.min, p.low, p.high, p.promo) == (z.min, z.low, z.high, z.promo), name
        assert list(p.lowmem_reserve) == z.protection, name
        assert p.batch == z.pcp[0].batch, name
        assert (p.high_min, p.high_max) == (z.pcp[0].high_min, z.pcp[0].high_max), name


def test_min_free_kbytes_formula():
    assert calculate_min_free_kbytes(2873909) == 13562       # int_sqrt(kbytes * 16)
    assert calculate_min_free_kbytes(10) == 128 and calculate_min_free_kbytes(1 << 40) == 262144
    assert zone_batchsize(772917) == 63 and zone_batchsize(3840) == 1


def test_machine_from_snapshot_places_holes_and_reservations():
    m = machine_from_snapshot(fixture_dir("snapshot-idle"))
    assert m.nr_cpus == 2
    dma32 = m.zone(0, "DMA32")
    assert sum(e - s for s, e in m.managed_ranges(dma32)) == dma32.managed == 772917
    # the PCI hole 3-4 GiB is not RAM
    assert all(not (s < 0xFFFFF and e > 0xC0000) for s, e in m.ram)
    assert m.max_pfn == 0x640000


def test_hidden_iomem_is_an_input_error():
    text = (fixture_dir("snapshot-idle") / "zoneinfo.before").read_text()
    with pytest.raises(InputError, match="root"):
        machine_from_text(text, "00000000-00000000 : System RAM\n")
