"""The replay's mem_map storage (memdesc.analysis.replay_memmap), hand-worked sizes."""

from types import SimpleNamespace

import numpy as np

from memdesc.analysis.replay_memmap import MemMapPrefault, mem_map_buffer
from memdesc.stages import get_stage

MACHINE = SimpleNamespace(nr_pfns=1024)     # 1024 struct pages


def test_buffer_sized_for_the_largest_struct_page():
    # 1024 pages x 64 B (v6.18) = 65,536 B = 8,192 words, writable
    buf = mem_map_buffer(MACHINE, [get_stage("page8"), get_stage("v6.18")])
    assert buf.dtype == np.uint64 and buf.size == 8192
    buf[:] = 7
    assert int(buf.sum()) == 7 * 8192


def test_prefault_hands_over_its_buffer_or_a_bigger_one():
    pre = MemMapPrefault(1024, [get_stage("page8")])        # 1024 x 8 B = 1,024 words
    small = pre.get([get_stage("page8")])
    assert small.size == 1024 and small.flags.writeable
    # stages needing more than was faulted in get a new buffer of their size
    assert pre.get([get_stage("page16")]).size == 2048
