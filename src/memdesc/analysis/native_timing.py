"""Native measurement: each stage's metadata accesses run on this CPU, in real RAM.

WHAT IT MEASURES: the cost on *this* CPU of the metadata loads and stores the emulator
recorded for each kernel operation (memdesc.mm.access), replayed in compiled code against
memory laid out like the stage's mem_map and descriptor memory. It is **not** a kernel build:
no kernel code runs, no locks, no branches of the real functions, no other data the kernel
touches between operations. It answers "what do this stage's metadata accesses cost on
this machine's caches, TLB and DRAM", operation class by operation class, beside v6.18.

Use::

    run = NativeRun(stages, machine.nr_pfns)        # refuses at once if RAM is short
    replay(inp, stages, mode="policy", access_sink=run.sink())   # or run_stage(scenario...)
    result = run.measure(repeats=7)                 # NativeResult: .rows(), .summary()

Memory (:class:`NativeRun`, one anonymous mapping per stage, ``madvise(MADV_HUGEPAGE)``
because the kernel maps the vmemmap and the direct map with huge pages; every 4 KiB is
written once so the mapping is real RAM, not the shared zero page):

* the vmemmap region at full size, ``nr_pfns * sizeof(struct page)`` of the stage (400 MiB
  at 64 B for the fixtures' 6,553,600 PFNs, 100 MiB at page16, 50 MiB at page8), byte
  ``pfn * size + member`` for ``VMEMMAP_START + pfn * size + member``;
* after it (2 MiB aligned), every other 4 KiB page the sample touches -- direct-map pages of
  descriptors, slabs and page tables, the ``HEADS_BASE`` pages of zone/free_area/pcp --
  **compacted**: the distinct pages, in address order, side by side. The offset inside each
  page is kept, so the 64-byte lines, their L1 set (bits 6-11) and which words share a line
  or a page are the kernel's; what compaction changes is the distance between pages (pages
  far apart in the direct map become neighbours: fewer 2 MiB TLB entries cover them, and
  which L2/L3 sets they fall in follows this buffer's physical pages, not the kernel's).

Dependent loads for real: the memory is zero-filled and stores write zero. A ``KIND_DEP``
access goes to its offset plus the value of the latest ``KIND_PTR`` load of the operation;
that value is 0 at run time but the compiler cannot know it, so the CPU waits for the load
before it can issue the next one, as the kernel's pointer chase does. Independent loads are
summed into a checksum the kernel returns (nothing is dead code).

Timing: the cycle counter is read at each operation boundary with ``lfence; rdtsc; lfence``
(memdesc.analysis.cycles); the difference is the operation's time. The machine is shared,
so some operations are interrupted (a timer tick, the process preempted: microseconds to
milliseconds, against a few hundred ns for a cache and TLB miss): an operation's time over
4x its median over the repeats and over that median + 2 us is replaced by the median
(:func:`filter_interruptions`, the count is reported). A class's ns/op in a repeat is the
mean over its operations. The cost of an empty operation (the loop, the counter read, the
bookkeeping; the median over a window of operations without accesses, run in every chunk
like a stage) is subtracted: ns/op are *net* of that overhead. Every stage also runs a
*floor*: the same operations with every access on one word (L1 hits, store forwarding), the
cost of executing that many loads, stores and pointer waits with no miss (``floor_ns``, net
of the empty op too); ns - floor is what the accesses' addresses cost (caches, TLB, DRAM).
Cycles become ns through one calibration against time.perf_counter_ns when the TSC is
invariant (``constant_tsc nonstop_tsc``); otherwise each chunk is converted with its own
wall-clock time (documented fallback: then only a chunk's total is exact, the split between
its operations assumes the counter's rate was constant within the chunk).

Sampling (:meth:`NativeRun.add`, streams arrive block by block): operations are grouped in
windows of ``window`` consecutive operations (position in the stage's op sequence); window
``j`` is kept when ``j % period == 0``. ``period`` starts at 1 and doubles (dropping every
other kept window, in every stage) whenever a stage holds more than ``budget`` accesses, so
the sample is evenly spread over the whole run, and because the period is shared the kept
windows are the same positions in every stage's op sequence. They are the same operations
when the stages perform the same ones (a placement-faithful run); where the emulator's
allocator decides differently per stage (policy replays of trace-pagecache: 60 k ops at
v6.18, 72 k at page8) a position is only the same place in the run. Per-class counts of the
whole stream are kept apart (``ops_seen``) and weight :meth:`NativeResult.total_ns`. The
first RESERVE_OPS operations of every class are kept too (_Sample.reserve(): rare classes).

Measuring (:meth:`NativeRun.measure`): one warm-up repeat, then ``repeats`` repeats. Each
repeat walks the kept windows in chunks of ``chunk_ops`` operations; for every chunk each
stage runs its operations of that chunk, the stage order rotating from chunk to chunk, and
an empty chunk gives the overhead. So v6.18 and every other stage are measured side by side,
interleaved, in one process, and noise hits them alike. Ctrl-C stops between chunks (each
takes milliseconds). Per class and stage the result is the median over repeats of the
per-repeat ns/op and the spread (min..max over repeats); ratios to the reference stage are
medians of the per-repeat ratios (the stages of one repeat ran side by side).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numba import njit

from memdesc.analysis import cycles
from memdesc.analysis.native_memory import (  # noqa: F401 -- public names of this module
    HEADROOM,
    HUGE,
    VMEMMAP_SPAN,
    Layout,
    StageMemory,
    _align,
    _Buffer,
    _stage_memory,
    check_memory,
    huge_fraction,
    mem_available,
    translate,
)
from memdesc.analysis.native_result import (  # noqa: F401 -- public names of this module
    INTERRUPT_FLOOR_NS,
    WHAT,
    NativeResult,
    filter_interruptions,
)
from memdesc.analysis.native_sample import NCLS, RESERVE_OPS, _Sample, window_mask  # noqa: F401
from memdesc.errors import MemdescError
from memdesc.mm import access
from memdesc.mm.access import KIND_DEP, KIND_PTR, KIND_STORE, OP_CLASSES, AccessStream

DEFAULT_BUDGET = 2_000_000      # accesses kept per stage
DEFAULT_WINDOW = 512            # operations per sampling window
DEFAULT_CHUNK = 4096            # operations per measured chunk (a few ms)
DEFAULT_LOG = 1 << 22           # accesses in the emulator's log between two drains


# ---- the compiled replay ---------------------------------------------------------------------

@njit(cache=True, nogil=True)
def run_ops(buf, widx, kind, op_first, lo, hi, out):
    """Run operations ``[lo, hi)``: each access of op ``i`` is ``[op_first[i],
    op_first[i+1])``, word ``widx`` of ``buf`` (+ the latest PTR value / 8 when KIND_DEP).
    Writes each op's cycles to ``out[i - lo]``; returns the sum of the non-PTR loads (the
    checksum that keeps them alive)."""
    csum = np.uint64(0)
    t = cycles.fenced_cycles()
    for op in range(lo, hi):
        ptr = np.uint64(0)
        for a in range(op_first[op], op_first[op + 1]):
            k = kind[a]
            i = widx[a]
            if k & KIND_DEP:
                i += np.int64(ptr >> np.uint64(3))
            if k & KIND_STORE:
                buf[i] = np.uint64(0)
            else:
                v = buf[i]
                if k & KIND_PTR:
                    ptr = v
                else:
                    csum += v
        t2 = cycles.fenced_cycles()
        out[op - lo] = t2 - t
        t = t2
    return csum


# ---- the run ---------------------------------------------------------------------------------

class _Sink:
    """``sink(stage_id, kernel_or_memmap)``: drain the log into the run (NativeRun.sink).
    :meth:`flush` drains what each stage's kernel logged after its last block (a scenario's
    final observe())."""

    def __init__(self, run: NativeRun, log_capacity: int):
        self.run, self.log_capacity = run, int(log_capacity)
        self.kernels: dict = {}

    def __call__(self, stage_id: str, k) -> None:
        if access.dropped(k):           # the log overflowed in this block: ops are missing
            self.run.dropped_blocks += 1
        self.kernels[stage_id] = k
        self.run.add(stage_id, access.drain(k))

    def flush(self) -> None:
        for stage_id, k in self.kernels.items():
            self(stage_id, k)


class _Prepared(NamedTuple):
    """A stage's sample ready to run: op positions, word index and kind of every access,
    op_first, op classes, and the buffer layout."""

    pos: np.ndarray
    widx: np.ndarray
    kind: np.ndarray
    first: np.ndarray
    op_class: np.ndarray
    layout: Layout | None


class _Repeat(NamedTuple):
    """One repeat's times (NativeRun._repeat())."""

    ns: list                    # per stage, then per stage's floor run: ns of every op
    empty_ns: np.ndarray        # ns of the empty ops, every chunk
    checksum: int


class NativeRun:
    """Collects a bounded sample of each stage's access stream, then measures it natively.

    ``stages``: memdesc.stages.Stage objects (or :class:`StageMemory`); ``nr_pfns``: the PFN
    count of the machine the streams came from (its mem_map size). The RAM the stages' full
    mem_maps need is checked against MemAvailable here, before any work."""

    def __init__(self, stages: Sequence, nr_pfns: int, *, budget: int = DEFAULT_BUDGET,
                 window: int = DEFAULT_WINDOW, meminfo: str | Path = "/proc/meminfo"):
        self.stages = [_stage_memory(s) for s in stages]
        if len({s.id for s in self.stages}) != len(self.stages):
            raise ValueError("a stage is listed twice")
        self.nr_pfns, self.budget, self.window = int(nr_pfns), int(budget), int(window)
        self.period = 1
        self.meminfo = meminfo
        self.samples = {s.id: _Sample() for s in self.stages}
        self.dropped_blocks = 0         # blocks whose access log overflowed (see _Sink)
        check_memory(self.vmemmap_bytes(), "the stages' mem_maps", meminfo)

    def vmemmap_bytes(self) -> int:
        return sum(_align(self.nr_pfns * s.page_bytes) for s in self.stages)

    def add(self, stage_id: str, stream: AccessStream) -> None:
        """Append the next operations of ``stage_id``'s stream (keeping the sampled windows)."""
        smp = self.samples[stage_id]
        n = stream.nr_ops
        first = np.asarray(stream.op_first, np.int64)
        op_len = np.diff(first)
        cls = np.asarray(stream.op_class, np.uint8)
        smp.ops_seen += np.bincount(cls, minlength=NCLS)[:NCLS]
        smp.accesses_seen += int(first[-1] - first[0]) if n else 0
        pos = smp.seen + np.arange(n, dtype=np.int64)
        smp.seen += n
        win = window_mask(pos, self.window, self.period)
        rsv = smp.reserve(cls)          # even in a window: a later doubling may drop it
        keep = win | rsv
        acc = np.repeat(keep, op_len)
        lo, hi = int(first[0]), int(first[-1])
        smp.append(pos[keep], cls[keep], op_len[keep],
                   np.asarray(stream.addr, np.uint64)[lo:hi][acc],
                   np.asarray(stream.kind, np.uint8)[lo:hi][acc], rsv[keep])
        # window 0 is always kept: stop doubling once it is all that is left (the reserved
        # operations stay: at most RESERVE_OPS per class)
        while (len(smp.addr) - int(smp.op_len[smp.rsv].sum()) > self.budget
               and smp.pos[~smp.rsv][-1:].sum() >= self.window):
            self.period *= 2
            for s in self.samples.values():
                s.keep(window_mask(s.pos, self.window, self.period))

    def sink(self, log_capacity: int = DEFAULT_LOG) -> _Sink:
        """An ``access_sink`` for analysis.replay.replay() / analysis.scenario.run_stage():
        after each block it drains the emulated kernel's access log (memdesc.mm.access)
        into :meth:`add`; ``log_capacity`` sizes the log (the replay's blocks shrink to fit
        at access.ACCESSES_PER_OP; a block that logs more loses its later operations and is
        counted in ``dropped_blocks``)."""
        return _Sink(self, log_capacity)

    def measure(self, repeats: int = 7, *, chunk_ops: int = DEFAULT_CHUNK,
                progress: Callable[[int, int], None] | None = None,
                tsc: bool | None = None) -> NativeResult:
        """Measure every stage side by side (see the module doc); ``progress(done, total)``
        is called after each repeat. ``tsc``: True/False forces one calibration / the
        per-chunk wall-clock fallback; None (default) follows tsc_invariant()."""
        if repeats < 1:
            raise ValueError("repeats must be >= 1")
        t_start = time.perf_counter()
        prepared = [self._prepare(s) for s in self.stages]
        need = sum(p.layout.total_bytes for p in prepared)
        check_memory(need, "the stages' mem_maps and descriptor pages", self.meminfo)
        invariant = cycles.tsc_invariant() if tsc is None else bool(tsc)
        if not cycles.counter_works():
            raise MemdescError("native timing: this CPU has no cycle counter numba can read")
        bufs = []
        try:
            for p in prepared:
                bufs.append(_Buffer(p.layout.total_bytes))
            ns_per_cycle = cycles.calibrate()
            bounds = self._chunks(chunk_ops)
            self._repeat(prepared, bufs, bounds, invariant, ns_per_cycle, -1)  # warm-up
            per = []
            for r in range(repeats):
                per.append(self._repeat(prepared, bufs, bounds, invariant, ns_per_cycle, r))
                if progress:
                    progress(r + 1, repeats)
            huge = [b.huge_fraction() for b in bufs]
        finally:
            for b in bufs:
                b.close()
        return self._result(prepared, per, ns_per_cycle, invariant, huge,
                            time.perf_counter() - t_start)

    # -- helpers of measure()

    def _prepare(self, st: StageMemory) -> _Prepared:
        smp = self.samples[st.id]
        smp.keep(window_mask(smp.pos, self.window, self.period))
        off, layout = translate(smp.addr, self.nr_pfns, st.page_bytes)
        first = np.zeros(len(smp.pos) + 1, np.int64)
        np.cumsum(smp.op_len, out=first[1:])
        return _Prepared(smp.pos, (off >> 3).astype(np.int64), smp.kind, first, smp.op_class,
                         layout)

    def _chunks(self, chunk_ops: int) -> np.ndarray:
        """Op positions where chunks start: every ``chunk_ops // window`` kept windows."""
        wins = np.unique(np.concatenate([s.pos // self.window for s in self.samples.values()]))
        step = max(1, chunk_ops // self.window)
        starts = wins[::step] * self.window if len(wins) else np.zeros(1, np.int64)
        end = max((int(s.pos[-1]) + 1 for s in self.samples.values() if len(s.pos)), default=0)
        return np.append(starts, end).astype(np.int64)

    def _repeat(self, prepared, bufs, bounds, invariant, ns_per_cycle, r):
        """One repeat: per chunk, every stage, every stage's floor run (all its accesses on
        word 0: L1 hits) and the empty op, in a rotating order (a :class:`_Repeat`)."""
        n = len(self.stages)
        ns = [np.zeros(len(p.pos), np.float32) for p in prepared + prepared]
        zero = [np.zeros(len(p.widx), np.int64) for p in prepared]
        nchunk = len(bounds) - 1
        empty_ns = np.zeros(nchunk * self.window, np.float32)
        empty = _Prepared(np.arange(self.window), np.zeros(0, np.int64), np.zeros(0, np.uint8),
                          np.zeros(self.window + 1, np.int64), np.zeros(self.window, np.uint8),
                          None)
        cyc = np.zeros(max([len(p.pos) for p in prepared] + [self.window]), np.uint64)
        csum = 0
        for c in range(nchunk):
            for s in np.roll(np.arange(2 * n + 1), r + c):
                if s == 2 * n:      # the empty operation, timed like a stage
                    p, buf, widx, lo, hi = empty, bufs[0].words, empty.widx, 0, self.window
                    dest, at = empty_ns, c * self.window
                else:
                    p, buf = prepared[s % n], bufs[s % n].words
                    widx = p.widx if s < n else zero[s % n]
                    lo, hi = (int(x) for x in np.searchsorted(p.pos, bounds[c:c + 2]))
                    dest, at = ns[s], lo
                t0 = time.perf_counter_ns()
                csum += int(run_ops(buf, widx, p.kind, p.first, lo, hi, cyc))
                wall = time.perf_counter_ns() - t0
                got = cyc[:hi - lo]
                # invariant TSC: one calibration; else this chunk's own wall clock
                scale = ns_per_cycle if invariant else wall / max(float(got.sum()), 1.0)
                dest[at:at + hi - lo] = got * scale
        return _Repeat(ns, empty_ns, csum)

    def _result(self, prepared, per, ns_per_cycle, invariant, huge, seconds) -> NativeResult:
        n, reps = len(self.stages), len(per)
        empty = np.array([float(np.median(p.empty_ns)) for p in per])
        ns = np.full((2 * n, NCLS, reps), np.nan)
        ops = np.zeros((n, NCLS), np.int64)
        interrupted = 0
        for s in range(2 * n):
            cls = prepared[s % n].op_class
            times, bad = filter_interruptions(np.stack([p.ns[s] for p in per]).astype(float))
            interrupted += bad if s < n else 0
            ops[s % n] = np.bincount(cls, minlength=NCLS)[:NCLS]
            for r in range(reps):
                tot = np.bincount(cls, weights=times[r], minlength=NCLS)[:NCLS]
                with np.errstate(invalid="ignore", divide="ignore"):
                    ns[s, :, r] = np.where(ops[s % n] > 0, tot / ops[s % n] - empty[r], np.nan)
        return NativeResult(
            stages=[s.id for s in self.stages], classes=[c.name for c in OP_CLASSES],
            ns=ns[:n], floor_ns=ns[n:], ops=ops,
            ops_seen=np.stack([self.samples[s.id].ops_seen for s in self.stages]),
            accesses=np.array([len(p.widx) for p in prepared], np.int64), empty_ns=empty,
            ns_per_cycle=ns_per_cycle, tsc_invariant=invariant,
            memory_bytes=np.array([p.layout.total_bytes for p in prepared], np.int64),
            huge_fraction=huge, period=self.period, window=self.window,
            checksum=int(sum(p.checksum for p in per)), seconds=seconds, interrupted=interrupted,
            dropped_blocks=self.dropped_blocks)
