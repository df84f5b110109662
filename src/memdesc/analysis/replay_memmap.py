"""The replay's mem_map storage: one buffer for every stage, its pages faulted in before the
first stage (a fresh 400 MB array's first touch costs more than the replay loop), in the
background while the replay input is prepared (memdesc.analysis.replay)."""

from __future__ import annotations

import mmap
import threading

import numpy as np

from memdesc.mm.mmzone import Machine
from memdesc.stages import Stage

#: bytes of a base page: faulting in one word per page touches the whole buffer
_PAGE_BYTES = 4096


def _mem_map_words(machine: Machine, stages: list[Stage]) -> int:
    return machine.nr_pfns * max(s.struct_page_bytes for s in stages) // 8


def mem_map_buffer(machine: Machine, stages: list[Stage]) -> np.ndarray:
    """One mem_map storage for every stage, sized for the largest struct page, its pages
    faulted in up front (MAP_POPULATE): the first touch of a fresh 400 MB array page by page
    costs more than the whole replay loop, and under THP's ``madvise`` mode (numpy asks for
    huge pages) anywhere from 0.1 to 1.7 s as the kernel tries to compact memory; populating
    4 KiB pages in the mmap() call takes a steady ~0.25 s. Falls back to np.empty where mmap
    cannot populate."""
    words = _mem_map_words(machine, stages)
    flags = getattr(mmap, "MAP_POPULATE", 0)
    if not flags or not words:
        return np.empty(words, np.uint64)
    try:
        m = mmap.mmap(-1, words * 8, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | flags)
    except OSError:
        return np.empty(words, np.uint64)
    return np.frombuffer(m, np.uint64)


class MemMapPrefault:
    """mem_map_buffer() made in a background thread while the caller goes on preparing the
    replay: an anonymous mapping (4 KiB pages, as with MAP_POPULATE) faulted in by a numpy
    store to one word per page, which releases the GIL (mmap()'s MAP_POPULATE holds it).
    :meth:`get` waits for it; any failure falls back to mem_map_buffer()."""

    def __init__(self, machine: Machine, stages: list[Stage]):
        self.machine, self.stages = machine, list(stages)
        self.words = _mem_map_words(machine, stages)
        self._buffer: np.ndarray | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            m = mmap.mmap(-1, self.words * 8, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            a = np.frombuffer(m, np.uint64)
            a[::_PAGE_BYTES // 8] = 0
            self._buffer = a
        except (OSError, ValueError, MemoryError):
            self._buffer = None

    def get(self, stages: list[Stage]) -> np.ndarray:
        """The buffer, big enough for ``stages``."""
        self._thread.join()
        if self._buffer is None or self._buffer.size < _mem_map_words(self.machine, stages):
            return mem_map_buffer(self.machine, stages)
        return self._buffer
