"""A set-associative LRU cache hierarchy fed by the metadata access stream (issue 9, item 2).

:class:`CacheModel` replays :class:`memdesc.mm.access.AccessStream` blocks through the data
caches of one core and counts, per level and per operation class, what happened. State (the
lines each set holds, their LRU order, their dirty bits) is kept between :meth:`CacheModel.run`
calls: a replay or scenario hands over its stream block by block.

The policy is the one pycachesim (RRZE-HPC/pycachesim, ``cachesim/backend.c``) models by
default, access for access, so that its counts can be checked against pycachesim's
(tests/test_cache_model.py):

* every level is set-associative with LRU replacement; the set of a line is
  ``(addr >> log2(line)) % sets``; a set is kept in recency order and a fill evicts the
  least recently used way;
* write-back, write-allocate: a store that misses first loads the line (counted as a load
  and a miss at that level, then looked up below), then marks it dirty; a dirty line evicted
  is stored to the level below (``store_to``: that store write-allocates there too);
* levels are chained ``load_from``/``store_to`` (L1 -> L2 -> L3 -> memory) and keep no
  inclusion or exclusion: a line evicted from L3 stays in L1;
* a level marked ``victim`` is a victim cache of the level above (pycachesim's
  ``victims_to``): the level above loads from memory, its clean victims are put into the
  victim level and its dirty ones stored there; on a miss above, the victim level is looked
  up first and, on a hit, supplies the line (and keeps a copy).

Counters follow pycachesim's meaning per level: LOAD (lookups that may fill), STORE (stores
received), HIT, MISS (loads that did not find the line; stores that hit count nothing), EVICT
(dirty lines written back, or lines handed to the victim level). On top, every access of the
stream is attributed to the level that served it (``served``: the first level that had the
line, or memory), which is what "misses per level" means in the timing report: an access
missed level *i* when it was served below *i*; the last column is what went to DRAM.

What real CPUs do differently (why this is a model, not a prediction of this CPU's counters):

* a store hit updates LRU order on real CPUs; pycachesim (and so this model) leaves the order
  alone and counts no hit for it;
* replacement is not true LRU: Intel uses tree/adaptive pseudo-LRU (QLRU), AMD Zen a
  pseudo-LRU; L3s adapt the insertion position to the access pattern;
* AMD Zen's L3 is a mostly-exclusive victim cache of the L2s (a line read from it moves up
  and usually leaves it); pycachesim's ``victims_to`` keeps a copy in the victim level and
  may even hold two copies of a line there -- both counted here exactly as pycachesim does;
  Intel's L3 was inclusive until Skylake-SP and is non-inclusive since;
* hardware prefetchers (next-line, stride, stream) fetch lines before they are missed;
  out-of-order execution overlaps independent misses (only dependent loads serialise --
  that is what the dependent-chain column of ``memdesc timing`` counts);
* the L3 is shared by the CPUs in ``shared_cpu_list``; the model is one core alone;
* addresses here are the emulated kernel's virtual addresses; real caches index L2/L3 by
  physical address (the same thing for the direct map and vmemmap up to page colouring).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

from memdesc.errors import InputError
from memdesc.ingest.cpu_caches import (
    SYSFS_CACHE,
    CacheLevel,
    check_level,
    machine_cache_levels,
    parse_cache_spec,
)
from memdesc.mm.access import KIND_STORE, OP_CLASSES, AccessStream

#: event columns of :attr:`CacheModel.events` (pycachesim's counter names)
EV_LOAD, EV_STORE, EV_HIT, EV_MISS, EV_EVICT = range(5)
EVENT_NAMES = ("LOAD", "STORE", "HIT", "MISS", "EVICT")
# cfg columns
_SETS, _WAYS, _BITS, _LOAD_FROM, _STORE_TO, _VICTIMS_TO, _OFF = range(7)
_NCFG = 7
_INVALID = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
_T_LOAD, _T_STORE, _T_INJECT = 0, 1, 2
_STACK = 256


@dataclass(frozen=True)
class CacheConfig:
    """A data-cache hierarchy: levels closest first, and where the sizes came from."""

    levels: tuple[CacheLevel, ...]
    source: str = "--cache"

    def __post_init__(self) -> None:
        if not self.levels:
            raise InputError("--cache: a cache hierarchy needs at least one level")
        if self.levels[0].victim:
            raise InputError(f"--cache: {self.levels[0].name} cannot be a victim cache "
                             "(there is no level above it)")
        for upper, lower in zip(self.levels, self.levels[1:], strict=False):
            if lower.line < upper.line or (lower.victim and lower.line != upper.line):
                raise InputError(f"--cache: {lower.name}'s line ({lower.line} B) must not be "
                                 f"smaller than {upper.name}'s ({upper.line} B), and equal if "
                                 "it is a victim cache")
        for lv in self.levels:
            check_level(lv, lv.name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(lv.name for lv in self.levels)

    def spec(self) -> str:
        """The ``--cache`` option that gives this hierarchy."""
        return ",".join(lv.spec() for lv in self.levels)

    def links(self) -> np.ndarray:
        """int64 [levels, 3]: load_from, store_to, victims_to of each level (-1: memory/none),
        as pycachesim chains them (see the module docstring)."""
        n = len(self.levels)
        out = np.full((n, 3), -1, dtype=np.int64)
        for i in range(n):
            below = [j for j in range(i + 1, n) if not self.levels[j].victim]
            if i + 1 < n and self.levels[i + 1].victim and not self.levels[i].victim:
                out[i] = (below[0] if below else -1, i + 1, i + 1)
            elif i + 1 < n:
                out[i] = (below[0] if below else -1, i + 1, -1)
            if self.levels[i].victim:
                out[i, 0] = -1
        return out


def machine_caches(root: Path = SYSFS_CACHE, spec: str | None = None) -> CacheConfig:
    """This machine's data caches (sysfs, else the documented default of
    memdesc.ingest.cpu_caches), with the ``--cache`` ``spec`` applied on top."""
    levels, source = machine_cache_levels(root)
    if spec:
        levels = parse_cache_spec(spec, levels)
        source += " + --cache"
    return CacheConfig(levels, source)


@njit(cache=True)
def _set(cfg, lv, cl):
    """The set of line ``cl`` at level ``lv``: ``cl % sets`` (a mask when sets is a power of
    two: the division is the loop's slowest instruction)."""
    sets = cfg[lv, _SETS]
    if sets & (sets - 1) == 0:
        return np.int64(cl & np.uint64(sets - 1))
    return np.int64(cl % np.uint64(sets))


@njit(cache=True)
def _find(tags, off, ways, s, cl):
    base = off + s * ways
    for w in range(ways):
        if tags[base + w] == cl:
            return w
    return -1


@njit(cache=True)
def _to_front(tags, dirty, base, loc):
    t, d = tags[base + loc], dirty[base + loc]
    for w in range(loc, 0, -1):
        tags[base + w] = tags[base + w - 1]
        dirty[base + w] = dirty[base + w - 1]
    tags[base], dirty[base] = t, d


@njit(cache=True)
def _push(stack_i, stack_a, sp, kind, level, demand, a):
    stack_i[sp, 0], stack_i[sp, 1], stack_i[sp, 2] = kind, level, demand
    stack_a[sp] = a
    return sp + 1


@njit(cache=True)
def _inject(cfg, tags, dirty, ev, op, lv, cl, d, stack_i, stack_a, sp):
    """Mirrors pycachesim's Cache__inject() with LRU: the line enters at the MRU end, the LRU
    way leaves; what leaving means for the levels below is pushed as tasks."""
    ways = cfg[lv, _WAYS]
    base = cfg[lv, _OFF] + _set(cfg, lv, cl) * ways
    rep, rep_dirty = tags[base + ways - 1], dirty[base + ways - 1]
    for w in range(ways - 1, 0, -1):
        tags[base + w] = tags[base + w - 1]
        dirty[base + w] = dirty[base + w - 1]
    tags[base], dirty[base] = cl, d
    if rep == _INVALID:
        return sp
    bits = np.uint64(cfg[lv, _BITS])
    if rep_dirty:
        ev[op, lv, EV_EVICT] += 1
        if cfg[lv, _STORE_TO] >= 0:
            sp = _push(stack_i, stack_a, sp, 1, cfg[lv, _STORE_TO], 0, rep << bits)
    elif cfg[lv, _VICTIMS_TO] >= 0:
        v = cfg[lv, _VICTIMS_TO]
        ev[op, lv, EV_EVICT] += 1
        ev[op, v, EV_STORE] += 1
        sp = _push(stack_i, stack_a, sp, 2, v, 0, rep << bits)
    return sp


@njit(cache=True)
def _load(cfg, tags, dirty, ev, served, op, lv, a, demand, stack_i, stack_a, sp):
    """Mirrors pycachesim's Cache__load() for one line: a hit moves the line to the MRU end;
    a miss asks the victim level (if it has the line) or load_from, then fills. Returns the
    new stack pointer; the lookup below and the write-back of the evicted line are tasks."""
    ev[op, lv, EV_LOAD] += 1
    cl = a >> np.uint64(cfg[lv, _BITS])
    ways = cfg[lv, _WAYS]
    s = _set(cfg, lv, cl)
    loc = _find(tags, cfg[lv, _OFF], ways, s, cl)
    if loc >= 0:
        ev[op, lv, EV_HIT] += 1
        _to_front(tags, dirty, cfg[lv, _OFF] + s * ways, loc)
        if demand:
            served[op, lv] += 1
        return sp
    ev[op, lv, EV_MISS] += 1
    lower = -1
    v = cfg[lv, _VICTIMS_TO]
    if v >= 0:
        cv = a >> np.uint64(cfg[v, _BITS])
        if _find(tags, cfg[v, _OFF], cfg[v, _WAYS],
                 _set(cfg, v, cv), cv) >= 0:
            lower = v
    if lower < 0:
        lower = cfg[lv, _LOAD_FROM]
    if lower < 0 and demand:
        served[op, served.shape[1] - 1] += 1
    # the fill's side effects on lower levels come after the lookup below: push them first
    sp = _inject(cfg, tags, dirty, ev, op, lv, cl, np.uint8(0), stack_i, stack_a, sp)
    if lower >= 0:
        sp = _push(stack_i, stack_a, sp, 0, lower, demand, cl << np.uint64(cfg[lv, _BITS]))
    return sp


@njit(cache=True)
def _store(cfg, tags, dirty, ev, served, op, lv, a, demand, stack_i, stack_a, sp):
    """Mirrors pycachesim's Cache__store() with write-back and write-allocate: a miss loads
    the line first; the line (now or already present) is marked dirty. A store hit does not
    touch the LRU order (pycachesim's behaviour)."""
    ev[op, lv, EV_STORE] += 1
    bits = np.uint64(cfg[lv, _BITS])
    cl = a >> bits
    ways = cfg[lv, _WAYS]
    s = _set(cfg, lv, cl)
    loc = _find(tags, cfg[lv, _OFF], ways, s, cl)
    if loc < 0:
        sp = _load(cfg, tags, dirty, ev, served, op, lv, cl << bits, demand,
                   stack_i, stack_a, sp)
        loc = 0
    elif demand:
        served[op, lv] += 1
    dirty[cfg[lv, _OFF] + s * ways + loc] = 1
    return sp


@njit(cache=True)
def _run(addr, kind, op_class, op_first, cfg, tags, dirty, ev, served, stack_i, stack_a):
    for i in range(len(op_class)):
        op = np.int64(op_class[i])
        for j in range(op_first[i], op_first[i + 1]):
            # the access itself at L1 (demand), then what it set off below, depth first
            if kind[j] & KIND_STORE:
                sp = _store(cfg, tags, dirty, ev, served, op, 0, addr[j], 1, stack_i, stack_a, 0)
            else:
                sp = _load(cfg, tags, dirty, ev, served, op, 0, addr[j], 1, stack_i, stack_a, 0)
            while sp > 0:
                sp -= 1
                t, lv, demand, a = stack_i[sp, 0], stack_i[sp, 1], stack_i[sp, 2], stack_a[sp]
                if t == _T_LOAD:
                    sp = _load(cfg, tags, dirty, ev, served, op, lv, a, demand,
                               stack_i, stack_a, sp)
                elif t == _T_STORE:
                    sp = _store(cfg, tags, dirty, ev, served, op, lv, a, demand,
                                stack_i, stack_a, sp)
                else:
                    sp = _inject(cfg, tags, dirty, ev, op, lv, a >> np.uint64(cfg[lv, _BITS]),
                                 np.uint8(0), stack_i, stack_a, sp)


class CacheModel:
    """One core's data caches, fed block by block (see the module docstring).

    ``events[op_class, level, EV_*]`` counts pycachesim's events caused by each operation
    class's accesses; ``served[op_class, level]`` (last column: memory) where each access was
    served. Both accumulate across :meth:`run` calls; so does the cache content.
    """

    def __init__(self, config: CacheConfig):
        self.config = config
        n = len(config.levels)
        self.cfg = np.zeros((n, _NCFG), dtype=np.int64)
        off = 0
        for i, lv in enumerate(config.levels):
            self.cfg[i, :_LOAD_FROM] = (lv.sets, lv.ways, lv.line.bit_length() - 1)
            self.cfg[i, _OFF] = off
            off += lv.sets * lv.ways
        self.cfg[:, _LOAD_FROM:_OFF] = config.links()
        self.tags = np.full(off, _INVALID, dtype=np.uint64)
        self.dirty = np.zeros(off, dtype=np.uint8)
        self.events = np.zeros((len(OP_CLASSES), n, len(EVENT_NAMES)), dtype=np.int64)
        self.served = np.zeros((len(OP_CLASSES), n + 1), dtype=np.int64)
        self._stack_i = np.zeros((_STACK, 3), dtype=np.int64)
        self._stack_a = np.zeros(_STACK, dtype=np.uint64)

    def run(self, stream: AccessStream) -> None:
        """Replay ``stream``'s accesses, in order, through the caches."""
        if stream.nr_ops == 0:
            return
        _run(np.ascontiguousarray(stream.addr, dtype=np.uint64),
             np.ascontiguousarray(stream.kind, dtype=np.uint8),
             np.ascontiguousarray(stream.op_class, dtype=np.uint8),
             np.ascontiguousarray(stream.op_first, dtype=np.int64),
             self.cfg, self.tags, self.dirty, self.events, self.served,
             self._stack_i, self._stack_a)

    def level_events(self) -> np.ndarray:
        """int64 [levels, EV_*]: the events of every class together (pycachesim's stats)."""
        return self.events.sum(axis=0)

    def misses(self) -> np.ndarray:
        """int64 [op classes, levels]: accesses of each class not served at or above each
        level (the last column: accesses that went to memory)."""
        below = np.cumsum(self.served[:, ::-1], axis=1)[:, ::-1]
        return below[:, 1:]
