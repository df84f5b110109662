"""The result of a native measurement (memdesc.analysis.native_timing): net ns per operation
class, stage and repeat, their medians, spreads, floors and ratios to the reference stage, and
the filter that replaces interrupted operation times."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memdesc.stages import REFERENCE

WHAT = ("native ns per operation: the recorded metadata accesses of each stage run on this "
        "CPU against real RAM laid out like the stage's mem_map and descriptors; metadata "
        "access cost on this CPU, not a kernel build")
#: an op's time this much over its median over the repeats is an interruption (see
#: filter_interruptions())
INTERRUPT_FLOOR_NS = 2000.0


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

    #: [stage, class]: median, min and max over repeats of the net ns per operation; floor:
    #: the median of the floor run (every access an L1 hit)
    median = property(lambda self: _nanstat(np.nanmedian, self.ns))
    lo = property(lambda self: _nanstat(np.nanmin, self.ns))
    hi = property(lambda self: _nanstat(np.nanmax, self.ns))
    floor = property(lambda self: _nanstat(np.nanmedian, self.floor_ns))

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
