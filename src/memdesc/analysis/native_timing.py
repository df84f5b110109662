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

import mmap
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numba import njit

from memdesc.analysis import cycles
from memdesc.errors import MemdescError
from memdesc.mm import access
from memdesc.mm.access import KIND_DEP, KIND_PTR, KIND_STORE, OP_CLASSES, AccessStream
from memdesc.mm.kmem import VMEMMAP_START
from memdesc.stages import PAGE_SIZE, REFERENCE

WHAT = ("native ns per operation: the recorded metadata accesses of each stage run on this "
        "CPU against real RAM laid out like the stage's mem_map and descriptors; metadata "
        "access cost on this CPU, not a kernel build")

HUGE = 2 << 20
#: x86-64 vmemmap region: 1 TiB from VMEMMAP_START [S: Documentation/arch/x86/x86_64/mm.rst]
VMEMMAP_SPAN = 1 << 40
DEFAULT_BUDGET = 2_000_000      # accesses kept per stage
DEFAULT_WINDOW = 512            # operations per sampling window
RESERVE_OPS = 64                # operations of each class kept outside the windows
DEFAULT_CHUNK = 4096            # operations per measured chunk (a few ms)
DEFAULT_LOG = 1 << 22           # accesses in the emulator's log between two drains
#: RAM left to the rest of the machine when checking MemAvailable
HEADROOM = 256 << 20
#: an op's time this much over its median over the repeats is an interruption (see
#: filter_interruptions())
INTERRUPT_FLOOR_NS = 2000.0
NCLS = len(OP_CLASSES)


@dataclass(frozen=True)
class StageMemory:
    """What the measurement needs of a stage: its id and sizeof(struct page)."""

    id: str
    page_bytes: int


def _stage_memory(s) -> StageMemory:
    if isinstance(s, StageMemory):
        return s
    return StageMemory(s.id, int(s.struct_page_bytes))


def _align(n: int, a: int = HUGE) -> int:
    return (n + a - 1) // a * a


def mem_available(meminfo: str | Path = "/proc/meminfo") -> int | None:
    """MemAvailable in bytes, or None when /proc/meminfo cannot be read."""
    try:
        m = re.search(r"^MemAvailable:\s+(\d+) kB", Path(meminfo).read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


def check_memory(need: int, what: str, meminfo: str | Path = "/proc/meminfo") -> None:
    """Refuse (one line, MemdescError) when ``need`` bytes plus HEADROOM exceed MemAvailable."""
    avail = mem_available(meminfo)
    if avail is not None and need + HEADROOM > avail:
        raise MemdescError(
            f"native timing needs {need / 2**20:,.0f} MiB of RAM for {what} but "
            f"MemAvailable is {avail / 2**20:,.0f} MiB: measure fewer stages or free memory")


# ---- sampling -------------------------------------------------------------------------------

@dataclass
class _Sample:
    """The kept operations of one stage (positions in its op sequence) and their accesses."""

    pos: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    op_class: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    op_len: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    addr: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    kind: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    rsv: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    seen: int = 0
    ops_seen: np.ndarray = field(default_factory=lambda: np.zeros(NCLS, np.int64))
    reserved: np.ndarray = field(default_factory=lambda: np.zeros(NCLS, np.int64))
    accesses_seen: int = 0

    def reserve(self, cls: np.ndarray) -> np.ndarray:
        """The operations kept whatever the windows: the first RESERVE_OPS of each class (a
        class too rare for the windows, e.g. trace-slab's three pcp drains, is measured)."""
        out = np.zeros(len(cls), bool)
        for c in np.unique(cls):
            idx = np.flatnonzero(cls == c)[:max(0, RESERVE_OPS - int(self.reserved[c]))]
            out[idx] = True
            self.reserved[c] += len(idx)
        return out

    def append(self, pos, op_class, op_len, addr, kind, rsv) -> None:
        self.rsv = np.concatenate([self.rsv, rsv])
        self.pos = np.concatenate([self.pos, pos])
        self.op_class = np.concatenate([self.op_class, op_class])
        self.op_len = np.concatenate([self.op_len, op_len])
        self.addr = np.concatenate([self.addr, addr])
        self.kind = np.concatenate([self.kind, kind])

    def keep(self, op_mask: np.ndarray) -> None:
        """Keep the operations of ``op_mask`` and the reserved ones (reserve())."""
        op_mask = op_mask | self.rsv
        acc = np.repeat(op_mask, self.op_len)
        self.rsv = self.rsv[op_mask]
        self.pos, self.op_class = self.pos[op_mask], self.op_class[op_mask]
        self.op_len = self.op_len[op_mask]
        self.addr, self.kind = self.addr[acc], self.kind[acc]


def window_mask(pos: np.ndarray, window: int, period: int) -> np.ndarray:
    """Which operations (by position in the op sequence) lie in kept windows."""
    return (pos // window) % period == 0


# ---- address translation ---------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """Where a stage's sampled addresses live in its buffer."""

    vmemmap_bytes: int          # nr_pfns * sizeof(struct page)
    compact_base: int           # byte offset of the compacted pages (2 MiB aligned)
    pages: np.ndarray           # uint64: the compacted pages' addresses >> 12, sorted
    total_bytes: int            # the mapping's size (2 MiB aligned)


def translate(addr: np.ndarray, nr_pfns: int, page_bytes: int) -> tuple[np.ndarray, Layout]:
    """Byte offsets in the stage's buffer of emulated kernel addresses (vectorised).

    vmemmap addresses map to ``addr - VMEMMAP_START`` (an address past the stage's mem_map
    is an error); every other address to ``compact_base + 4096 * rank(addr >> 12) +
    (addr & 4095)`` where rank is the page's index among the distinct pages touched."""
    addr = np.asarray(addr, np.uint64)
    vm_bytes = int(nr_pfns) * int(page_bytes)
    rel = addr - np.uint64(VMEMMAP_START)
    in_vm_region = (addr >= np.uint64(VMEMMAP_START)) & (rel < np.uint64(VMEMMAP_SPAN))
    bad = in_vm_region & (rel >= np.uint64(vm_bytes))
    if bad.any():
        a = int(addr[np.argmax(bad)])
        raise ValueError(f"vmemmap address {a:#x} lies past the mem_map of {nr_pfns} PFNs "
                         f"x {page_bytes} B")
    other = ~in_vm_region
    pages, rank = np.unique(addr[other] >> np.uint64(12), return_inverse=True)
    base = _align(vm_bytes)
    off = rel.astype(np.int64)
    off[other] = (base + rank.astype(np.int64) * PAGE_SIZE
                  + (addr[other] & np.uint64(PAGE_SIZE - 1)).astype(np.int64))
    total = _align(base + len(pages) * PAGE_SIZE)
    return off, Layout(vm_bytes, base, pages, max(total, HUGE))


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


def filter_interruptions(ns: np.ndarray, floor_ns: float = INTERRUPT_FLOOR_NS
                         ) -> tuple[np.ndarray, int]:
    """``ns`` [repeat, op]: each op's time in each repeat. A time over both 4x the op's
    median over the repeats and that median + ``floor_ns`` is an interruption (a timer
    interrupt, the process preempted: microseconds to milliseconds, where a cache or TLB
    miss costs a few hundred ns) and is replaced by the median. Returns the filtered copy
    and how many times were replaced."""
    med = np.median(ns, axis=0)
    bad = (ns > 4 * med) & (ns > med + floor_ns)
    return np.where(bad, med, ns), int(bad.sum())


class _Buffer:
    """One stage's anonymous mapping (huge pages advised, every 4 KiB written once)."""

    def __init__(self, nbytes: int):
        self.map = mmap.mmap(-1, nbytes + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            self.map.madvise(mmap.MADV_HUGEPAGE)
        raw = np.frombuffer(self.map, np.uint8)
        start = (-raw.ctypes.data) % HUGE
        self.bytes = raw[start:start + nbytes]
        self.bytes[::PAGE_SIZE] = 0
        self.words = self.bytes.view(np.uint64)

    def huge_fraction(self) -> float | None:
        """Share of the buffer backed by transparent huge pages (/proc/self/smaps)."""
        lo = self.bytes.ctypes.data
        return huge_fraction(lo, lo + self.bytes.nbytes)

    def close(self) -> None:
        del self.words, self.bytes
        self.map.close()


def huge_fraction(lo: int, hi: int, smaps: str = "/proc/self/smaps") -> float | None:
    """AnonHugePages / size of the mapping holding [lo, hi), or None if unreadable."""
    try:
        text = Path(smaps).read_text()
    except OSError:
        return None
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", text):
        start, _, rest = block.partition("-")
        end = rest.split(" ", 1)[0]
        try:
            s, e = int(start, 16), int(end, 16)
        except ValueError:
            continue
        if s <= lo < e:
            m = re.search(r"^AnonHugePages:\s+(\d+) kB", block, re.M)
            return min(1.0, int(m.group(1)) * 1024 / (hi - lo)) if m else 0.0
    return None


# ---- result ----------------------------------------------------------------------------------

@dataclass
class NativeResult:
    """Per stage and op class: net ns per operation of every repeat (NaN: no operations)."""

    stages: list[str]
    classes: list[str]
    ns: np.ndarray              # float [stage, class, repeat]
    floor_ns: np.ndarray        # the same ops with every access on one word (L1 hits)
    ops: np.ndarray             # int64 [stage, class]: measured operations per repeat
    ops_seen: np.ndarray        # int64 [stage, class]: operations in the whole stream
    accesses: np.ndarray        # int64 [stage]: measured accesses per repeat
    empty_ns: np.ndarray        # float [repeat]: the subtracted cost of an empty operation
    ns_per_cycle: float
    tsc_invariant: bool
    memory_bytes: np.ndarray    # int64 [stage]: the mapping (vmemmap + compacted pages)
    huge_fraction: list         # per stage: share backed by huge pages (None: unknown)
    period: int
    window: int
    checksum: int
    seconds: float
    interrupted: int = 0        # op timings replaced as interruptions (filter_interruptions)
    dropped_blocks: int = 0     # emulator blocks whose access log overflowed (ops missing)
    what: str = WHAT
    reference: str = REFERENCE

    @property
    def median(self) -> np.ndarray:
        return _nanstat(np.nanmedian, self.ns)

    @property
    def floor(self) -> np.ndarray:
        """[stage, class]: median over repeats of the floor run (every access an L1 hit)."""
        return _nanstat(np.nanmedian, self.floor_ns)

    @property
    def lo(self) -> np.ndarray:
        return _nanstat(np.nanmin, self.ns)

    @property
    def hi(self) -> np.ndarray:
        return _nanstat(np.nanmax, self.ns)

    def ratio(self) -> np.ndarray:
        """[stage, class]: median over repeats of ns(stage) / ns(reference) of the same
        repeat (NaN where the reference has no operations or a net cost <= 0)."""
        r = self.stages.index(self.reference) if self.reference in self.stages else 0
        ref = self.ns[r][None]
        with np.errstate(invalid="ignore", divide="ignore"):
            q = np.where(ref > 0, self.ns / ref, np.nan)
        return _nanstat(np.nanmedian, q)

    def total_ns(self) -> np.ndarray:
        """[stage, repeat]: ns of the whole stream (every class's median ns x its count)."""
        return np.nansum(self.ns * self.ops_seen[:, :, None], axis=1)

    def summary(self) -> dict:
        """JSON-ready: what was measured, how, and :meth:`rows`."""
        return {"what": self.what, "reference": self.reference, "stages": self.stages,
                "repeats": int(self.ns.shape[-1]), "tsc_invariant": self.tsc_invariant,
                "ns_per_cycle": self.ns_per_cycle, "empty_op_ns": self.empty_ns.tolist(),
                "interrupted_op_times": self.interrupted, "dropped_blocks": self.dropped_blocks,
                "sample": {"window_ops": self.window, "period_windows": self.period,
                           "accesses": self.accesses.tolist()},
                "memory_bytes": self.memory_bytes.tolist(),
                "huge_page_fraction": self.huge_fraction, "seconds": self.seconds,
                "ops": self.rows()}

    def rows(self) -> list[dict]:
        """One dict per stage and class with operations (JSON-ready)."""
        med, lo, hi, ratio = self.median, self.lo, self.hi, self.ratio()
        floor = self.floor
        out = []
        for s, sid in enumerate(self.stages):
            for c, name in enumerate(self.classes):
                if self.ops[s, c] == 0:
                    continue
                out.append({"stage": sid, "op": name, "count": int(self.ops_seen[s, c]),
                            "measured": int(self.ops[s, c]), "native_ns": float(med[s, c]),
                            "ns_min": float(lo[s, c]), "ns_max": float(hi[s, c]),
                            "floor_ns": float(floor[s, c]),
                            "ratio": float(ratio[s, c])})
        return out


def _nanstat(fn, a: np.ndarray) -> np.ndarray:
    out = np.full(a.shape[:-1], np.nan)
    ok = ~np.all(np.isnan(a), axis=-1)
    out[ok] = fn(a[ok], axis=-1)
    return out


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
        word 0: L1 hits) and the empty op, in a rotating order. Returns (ns of every op of
        every stage, then of every floor run, ns of the empty ops, checksum)."""
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
        return ns, empty_ns, csum

    def _result(self, prepared, per, ns_per_cycle, invariant, huge, seconds) -> NativeResult:
        n, reps = len(self.stages), len(per)
        empty = np.array([float(np.median(e)) for _, e, _ in per])
        ns = np.full((2 * n, NCLS, reps), np.nan)
        ops = np.zeros((n, NCLS), np.int64)
        interrupted = 0
        for s in range(2 * n):
            cls = prepared[s % n].op_class
            times, bad = filter_interruptions(np.stack([t[s] for t, _, _ in per]).astype(float))
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
            checksum=int(sum(c for _, _, c in per)), seconds=seconds, interrupted=interrupted,
            dropped_blocks=self.dropped_blocks)
