"""MemMap's boot of a big mem_map by two threads (memmap_init.MemMap._boot): hand-worked splits and
the same words as one thread writes."""

import numpy as np
import pytest

from memdesc.mm import memmap_init as mi
from memdesc.mm.mmzone import Machine


def test_split_pages_halves_by_pages_and_keeps_range_attributes():
    # 10 + 90 + 1 = 101 pages: the first half takes 50 (all of range 1, 40 of range 2)
    ranges = [(0, 10, 0, True), (10, 100, 1, False), (100, 101, 1, True)]
    first, second = mi._split_pages(ranges)
    assert first == [(0, 10, 0, True), (10, 50, 1, False)]
    assert second == [(50, 100, 1, False), (100, 101, 1, True)]


def test_split_pages_of_one_page():
    assert mi._split_pages([(5, 6, 0, True)]) == [[], [(5, 6, 0, True)]]


@pytest.mark.parametrize("stage", ["v6.18", "page8"])
def test_two_thread_boot_writes_the_words_one_thread_writes(stage, monkeypatch):
    # 6G with the 3G-4G PCI hole: 1.5 M PFNs, above PARALLEL_INIT_PFNS; reserved low
    # memory, the hole and the zone boundaries all fall in one half or across the cut
    machine = Machine.from_spec("6G")
    assert machine.nr_pfns >= mi.PARALLEL_INIT_PFNS
    two = mi.MemMap(machine, stage, debug=False, free_all=False)
    monkeypatch.setattr(mi, "PARALLEL_INIT_PFNS", 1 << 62)
    one = mi.MemMap(machine, stage, debug=False, free_all=False)
    assert np.array_equal(two.mem, one.mem) and np.array_equal(two.S, one.S)
