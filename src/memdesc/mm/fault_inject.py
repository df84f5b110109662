"""Fault injection for the emulated allocators, after lib/fault-inject.c, mm/failslab.c and
mm/fail_page_alloc.c.

A :class:`FaultAttr` is the kernel's ``struct fault_attr`` (probability, interval, times, space)
plus the filters failslab and fail_page_alloc add (ignore-gfp-wait, ignore-gfp-highmem,
min-order, the slab cache filter). Its state is a small int64 array so the numba allocation
paths decide for themselves (:func:`should_fail_nb`) without calling back into Python. The
random draws come from a seeded xorshift generator: the same scenario fails the same calls at
every stage.

One :class:`FaultInjection` per emulated kernel holds three attributes, as rows of one array:

* ``FA_FAILSLAB`` - every kmem_cache_alloc() (mm/failslab.c),
* ``FA_DESC`` - only the memdesc descriptor caches (failslab with ``cache-filter`` set and
  /sys/kernel/slab/<cache>/failslab enabled on the descriptor caches),
* ``FA_PAGE`` - the page allocator (mm/fail_page_alloc.c, should_fail_alloc_page()).

``gfp context`` filtering: the kernel's ``ignore-gfp-wait`` (ignore callers that may reclaim, so
only atomic contexts fail; the default of both attributes) is ``context="atomic"``; ``"any"``
clears it; ``"reclaim"`` fails only callers that may reclaim (our addition [I], to show that a
failure there is handled the same way).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from memdesc.mm.gfp import __GFP_DIRECT_RECLAIM, __GFP_HIGHMEM, __GFP_NOFAIL

FA_FAILSLAB, FA_DESC, FA_PAGE = 0, 1, 2
NR_FA = 3
# state words
F_PROB_PPM, F_INTERVAL, F_TIMES, F_SPACE, F_CONTEXT, F_IGNORE_HIGHMEM, F_MIN_ORDER = range(7)
F_COUNT, F_FAILURES, F_RNG, F_ENABLED = 7, 8, 9, 10
FA_WORDS = 12
CONTEXTS = {"any": 0, "atomic": 1, "reclaim": 2}


@njit(cache=True)
def _xorshift(fa, row):
    x = np.uint64(fa[row, F_RNG])
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    fa[row, F_RNG] = np.int64(x)
    return (x * np.uint64(0x2545F4914F6CDD1D)) >> np.uint64(11)


@njit(cache=True)
def should_fail_nb(fa, row, gfp, order):
    """Whether this call of attribute ``row`` fails. Mirrors should_failslab() /
    should_fail_alloc_page() (the gfp/order filters) and should_fail_ex() of
    lib/fault-inject.c (times, space, interval, probability), counting calls instead of
    bytes for ``space``."""
    if fa[row, F_ENABLED] == 0 or fa[row, F_TIMES] == 0:
        return False
    if gfp & __GFP_NOFAIL:
        return False
    reclaim = (gfp & __GFP_DIRECT_RECLAIM) != 0
    ctx = fa[row, F_CONTEXT]
    if (ctx == 1 and reclaim) or (ctx == 2 and not reclaim):
        return False
    if fa[row, F_IGNORE_HIGHMEM] and (gfp & __GFP_HIGHMEM):
        return False
    if order < fa[row, F_MIN_ORDER]:
        return False
    if fa[row, F_SPACE] > 0:
        fa[row, F_SPACE] -= 1
        return False
    fa[row, F_COUNT] += 1
    if fa[row, F_INTERVAL] > 1 and fa[row, F_COUNT] % fa[row, F_INTERVAL]:
        return False
    if fa[row, F_PROB_PPM] < 1000000 and np.int64(
            _xorshift(fa, row) % np.uint64(1000000)) >= fa[row, F_PROB_PPM]:
        return False
    if fa[row, F_TIMES] > 0:
        fa[row, F_TIMES] -= 1
    fa[row, F_FAILURES] += 1
    return True


@dataclass(frozen=True)
class FaultAttr:
    """Settings of one attribute, as its debugfs files name them.

    ``probability`` in percent; ``interval`` N fails every Nth eligible call; ``times`` caps
    the failures (-1 no cap); ``space`` lets that many eligible calls pass first; ``context``
    "atomic" (ignore-gfp-wait=Y), "any" or "reclaim"; ``ignore_gfp_highmem`` and
    ``min_order`` as fail_page_alloc has them.
    """

    probability: float = 100.0
    interval: int = 1
    times: int = -1
    space: int = 0
    context: str = "atomic"
    ignore_gfp_highmem: bool = False
    min_order: int = 0
    seed: int = 1

    @classmethod
    def nth(cls, n: int, **kw) -> FaultAttr:
        """Fail exactly the ``n``-th eligible call (interval=n, times=1)."""
        return cls(probability=100.0, interval=n, times=1, **kw)

    def row(self) -> np.ndarray:
        if not 0 <= self.probability <= 100 or self.interval < 1:
            raise ValueError("probability is 0..100 and interval >= 1")
        if self.context not in CONTEXTS:
            raise ValueError(f"context must be one of {', '.join(CONTEXTS)}")
        r = np.zeros(FA_WORDS, np.int64)
        r[F_PROB_PPM] = round(self.probability * 10000)
        r[F_INTERVAL], r[F_TIMES], r[F_SPACE] = self.interval, self.times, self.space
        r[F_CONTEXT] = CONTEXTS[self.context]
        r[F_IGNORE_HIGHMEM] = int(self.ignore_gfp_highmem)
        r[F_MIN_ORDER] = self.min_order
        r[F_RNG] = (self.seed * 0x9E3779B97F4A7C15 + 1) & 0x7FFFFFFFFFFFFFFF or 1
        r[F_ENABLED] = 1
        return r


class FaultInjection:
    """The fault attributes of one emulated kernel (all disabled until set)."""

    NAMES = {"failslab": FA_FAILSLAB, "desc": FA_DESC, "page": FA_PAGE}

    def __init__(self, failslab: FaultAttr | None = None, desc: FaultAttr | None = None,
                 page: FaultAttr | None = None):
        self.state = np.zeros((NR_FA, FA_WORDS), np.int64)
        for name, attr in (("failslab", failslab), ("desc", desc), ("page", page)):
            if attr is not None:
                self.set(name, attr)

    def set(self, name: str, attr: FaultAttr | None) -> None:
        row = self.NAMES[name]
        self.state[row] = attr.row() if attr is not None else 0

    def failures(self, name: str | None = None) -> int:
        if name is None:
            return int(self.state[:, F_FAILURES].sum())
        return int(self.state[self.NAMES[name], F_FAILURES])

    def should_fail(self, name: str, gfp: int, order: int = 0) -> bool:
        """One decision from Python (slow paths and tests)."""
        return bool(should_fail_nb(self.state, self.NAMES[name], gfp, order))
