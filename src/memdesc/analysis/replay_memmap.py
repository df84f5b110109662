"""The replay's mem_map storage: one buffer for every stage, backed by transparent huge pages
and faulted in before the first stage, in the background while the replay input is prepared
(memdesc.analysis.replay).

Why huge pages: the buffer is the largest thing a replay touches (64 B x every PFN: 420 MB
for a 24 GiB machine). In 4 KiB pages that is ~107,000 page faults to fill it and as many
pages to free at exit: measured 0.26-0.74 s (faults) + 0.1-0.3 s (unmap) of system time on
the 2-core VM, against 0.04-0.14 s in all for 2 MiB pages (madvise(MADV_HUGEPAGE), as numpy
asks for its own large arrays). Where THP is off or no huge page is free the kernel falls back
to 4 KiB pages by itself."""

from __future__ import annotations

import contextlib
import mmap
import threading

import numpy as np

from memdesc.mm.mmzone import Machine
from memdesc.stages import Stage

#: bytes of a base page: storing one word per page faults in the whole buffer
_PAGE_BYTES = 4096
#: bytes of a PMD-mapped transparent huge page (x86-64, arm64 with 4 KiB pages)
_HUGE_BYTES = 2 << 20


def _mem_map_words(machine: Machine, stages: list[Stage]) -> int:
    return machine.nr_pfns * max(s.struct_page_bytes for s in stages) // 8


def huge_page_buffer(words: int) -> np.ndarray:
    """uint64[words] of fresh anonymous memory, 2 MiB aligned and madvise(MADV_HUGEPAGE)d
    so that the kernel backs it with transparent huge pages (not yet faulted in). Falls
    back to np.empty where anonymous mmap() fails."""
    if not words:
        return np.empty(0, np.uint64)
    try:
        m = mmap.mmap(-1, words * 8 + _HUGE_BYTES,
                      flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError):
        return np.empty(words, np.uint64)
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        with contextlib.suppress(OSError):       # THP not built in: 4 KiB pages
            m.madvise(advice)
    raw = np.frombuffer(m, np.uint8)
    off = -raw.ctypes.data % _HUGE_BYTES
    return raw[off:off + words * 8].view(np.uint64)


def fault_in(a: np.ndarray) -> np.ndarray:
    """``a`` with every page faulted in (one store per 4 KiB page; releases the GIL)."""
    a[::_PAGE_BYTES // 8] = 0
    return a


def mem_map_buffer(machine: Machine, stages: list[Stage]) -> np.ndarray:
    """One mem_map storage for every stage, sized for the largest struct page, in huge
    pages (module docstring), faulted in."""
    return fault_in(huge_page_buffer(_mem_map_words(machine, stages)))


class MemMapPrefault:
    """mem_map_buffer() made in a background thread while the caller goes on preparing the
    replay (the stores that fault the pages in release the GIL). :meth:`get` waits for it;
    any failure falls back to mem_map_buffer()."""

    def __init__(self, machine: Machine, stages: list[Stage]):
        self.machine, self.stages = machine, list(stages)
        self.words = _mem_map_words(machine, stages)
        self._buffer: np.ndarray | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._buffer = fault_in(huge_page_buffer(self.words))
        except (OSError, ValueError, MemoryError):
            self._buffer = None

    def get(self, stages: list[Stage]) -> np.ndarray:
        """The buffer, big enough for ``stages``."""
        self._thread.join()
        if self._buffer is None or self._buffer.size < _mem_map_words(self.machine, stages):
            return mem_map_buffer(self.machine, stages)
        return self._buffer
