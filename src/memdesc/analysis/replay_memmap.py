"""The replay's mem_map storage: one buffer for every stage, its pages faulted in before the
first stage (a fresh 400 MB array's first touch costs more than the replay loop), in the
background while the replay input is prepared (memdesc.analysis.replay), where the first
stage's mem_map is also booted (memmap_init(): every struct page written, 0.07-0.15 s for
64-byte struct pages of a 24 GiB machine) so that this too is off the replay's path."""

from __future__ import annotations

import mmap
import threading

import numpy as np

from memdesc.mm import page_alloc as pa
from memdesc.mm.mmzone import Machine
from memdesc.stages import Stage

#: bytes of a base page: faulting in one word per page touches the whole buffer
_PAGE_BYTES = 4096


def _mem_map_words(nr_pfns: int, stages: list[Stage]) -> int:
    return nr_pfns * max(s.struct_page_bytes for s in stages) // 8


def mem_map_buffer(machine: Machine, stages: list[Stage]) -> np.ndarray:
    """One mem_map storage for every stage, sized for the largest struct page, its pages
    faulted in up front (MAP_POPULATE): the first touch of a fresh 400 MB array page by page
    costs more than the whole replay loop, and under THP's ``madvise`` mode (numpy asks for
    huge pages) anywhere from 0.1 to 1.7 s as the kernel tries to compact memory; populating
    4 KiB pages in the mmap() call takes a steady ~0.25 s. Falls back to np.empty where mmap
    cannot populate."""
    return _populated(_mem_map_words(machine.nr_pfns, stages))


def _populated(words: int) -> np.ndarray:
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
    replay: an anonymous mapping for ``nr_pfns`` struct pages (4 KiB pages, as with
    MAP_POPULATE) faulted in by a numpy store to one word per page, which releases the GIL
    (mmap()'s MAP_POPULATE holds it). Once the caller hands over the machine
    (:meth:`set_machine`, which may come while the pages are being faulted in), the first
    stage's MemMap is booted in it (MemMap(free_all=False); init_range_nb() releases the
    GIL too). :meth:`get` waits for the buffer, :meth:`booted` hands over that MemMap; any
    failure falls back to mem_map_buffer() and a MemMap built by the caller."""

    def __init__(self, nr_pfns: int, stages: list[Stage]):
        self.nr_pfns, self.stages = nr_pfns, list(stages)
        self.words = _mem_map_words(nr_pfns, stages)
        self.machine: Machine | None = None
        self._buffer: np.ndarray | None = None
        self._booted: pa.MemMap | None = None
        self._machine_known = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def set_machine(self, machine: Machine) -> None:
        """The machine whose first stage to boot (none when its mem_map is not ``nr_pfns``
        struct pages)."""
        self.machine = machine if machine.nr_pfns == self.nr_pfns else None
        self._machine_known.set()

    def _run(self) -> None:
        try:
            m = mmap.mmap(-1, self.words * 8, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            a = np.frombuffer(m, np.uint64)
            a[::_PAGE_BYTES // 8] = 0
            self._buffer = a
        except (OSError, ValueError, MemoryError):
            self._buffer = None
            return
        self._machine_known.wait()
        if self.machine is None:
            return
        try:
            self._booted = pa.MemMap(self.machine, self.stages[0], debug=False,
                                     free_all=False, buffer=self._buffer)
        except Exception:  # noqa: BLE001 -- raised again, as it should be, by the caller's boot
            self._booted = None

    def _join(self) -> None:
        self._machine_known.set()           # no machine handed over by now: boot nothing
        self._thread.join()

    def booted(self, stage: Stage, buffer: np.ndarray) -> pa.MemMap | None:
        """The MemMap of ``stage`` booted in ``buffer`` (memdesc.mm.start_state's starting
        point), once: None for any other stage or buffer, or when the boot failed."""
        self._join()
        mm, self._booted = self._booted, None
        if mm is None or mm.stage != stage or buffer is not self._buffer:
            return None
        return mm

    def get(self, stages: list[Stage]) -> np.ndarray:
        """The buffer, big enough for ``stages``."""
        self._join()
        words = _mem_map_words(self.nr_pfns, stages)
        if self._buffer is None or self._buffer.size < words:
            return _populated(words)
        return self._buffer


def release_in_background(box: list) -> None:
    """Empty ``box`` (holding the last references to mem_map storage) in a background
    thread: unmapping 400 MB of 4 KiB pages takes 0.1-0.3 s, and mmap's dealloc releases the
    GIL around munmap(), so the caller goes on (printing, exiting) meanwhile. The caller
    drops its own references right after."""
    threading.Thread(target=box.clear, daemon=True).start()
