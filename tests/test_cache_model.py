"""The cache model (memdesc.analysis.cache_model) and this machine's caches (ingest/cpu_caches).

Hand-worked LRU examples first, then agreement with pycachesim (RRZE-HPC/pycachesim, the
``test`` extra) on the same streams and configurations: every counter of every level, in
total and per operation class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from memdesc.analysis.cache_model import (
    EV_EVICT,
    EV_HIT,
    EV_LOAD,
    EV_MISS,
    EV_STORE,
    EVENT_NAMES,
    CacheConfig,
    CacheModel,
    machine_caches,
)
from memdesc.errors import InputError
from memdesc.ingest.cpu_caches import (
    DEFAULT_CACHES,
    SYSFS_CACHE,
    CacheLevel,
    parse_cache_spec,
    read_sysfs_caches,
)
from memdesc.mm.access import KIND_STORE, OP_CLASS_ID, AccessStream

SYSFS_COPY = Path(__file__).parent / "data" / "sysfs-cache-epyc9004"
KBASE = 0xFFFF_8880_0000_0000       # the direct map: addresses above 2**63


def stream(accesses, op_class: int = 0) -> AccessStream:
    """One operation of class ``op_class``: ``accesses`` = [(addr, is_store), ...]."""
    return streams([(op_class, accesses)])


def streams(ops) -> AccessStream:
    """Several operations: ``ops`` = [(op_class, [(addr, is_store), ...]), ...]."""
    addr = [a for _, acc in ops for a, _ in acc]
    kind = [KIND_STORE if s else 0 for _, acc in ops for _, s in acc]
    first = np.cumsum([0] + [len(acc) for _, acc in ops])
    return AccessStream(np.array(addr, dtype=np.uint64), np.array(kind, dtype=np.uint8),
                        np.array([c for c, _ in ops], dtype=np.uint8),
                        first.astype(np.int64))


def model(*levels: CacheLevel) -> CacheModel:
    return CacheModel(CacheConfig(tuple(levels)))


A, B, C = (KBASE + 64 * k for k in (0, 1, 2))


# ---- hand-worked examples ----------------------------------------------------------------

def test_two_way_set_evicts_least_recently_used():
    """One 2-way set (128 B): A B A C -> C evicts B (A was used after B); then A hits and
    B misses. MRU replacement would evict A instead."""
    m = model(CacheLevel("L1", 128, 2))
    m.run(stream([(A, 0), (B, 0), (A, 0), (C, 0), (A, 0), (B, 0)]))
    ev = m.level_events()[0]
    assert (ev[EV_LOAD], ev[EV_HIT], ev[EV_MISS]) == (6, 2, 4)
    # misses: A, B, C, B; hits: the 2nd and 3rd A
    assert m.served[0].tolist() == [2, 4]


def test_set_index_is_line_number_modulo_sets():
    """2 sets x 1 way, 64-byte lines: lines 0 and 2 share set 0, line 1 is in set 1."""
    m = model(CacheLevel("L1", 128, 1))
    m.run(stream([(KBASE, 0), (KBASE + 64, 0), (KBASE + 8, 0)]))      # set 0, set 1, set 0
    assert m.level_events()[0, EV_HIT] == 1
    m = model(CacheLevel("L1", 128, 1))
    m.run(stream([(KBASE, 0), (KBASE + 128, 0), (KBASE, 0)]))         # conflicts in set 0
    assert m.level_events()[0, EV_HIT] == 0


def test_store_write_allocates_and_dirty_victim_is_written_back():
    """1-way L1 over a 2-way L2: storing A loads it (L1 miss, L2 miss), loading B evicts the
    dirty A into L2 (L1 EVICT, L2 STORE which hits the copy L2 already holds)."""
    m = model(CacheLevel("L1", 64, 1), CacheLevel("L2", 128, 2))
    m.run(stream([(A, 1), (B, 0)]))
    l1, l2 = m.level_events()
    assert (l1[EV_LOAD], l1[EV_STORE], l1[EV_MISS], l1[EV_EVICT]) == (2, 1, 2, 1)
    assert (l2[EV_LOAD], l2[EV_STORE], l2[EV_MISS], l2[EV_HIT]) == (2, 1, 2, 0)
    assert m.served[0].tolist() == [0, 0, 2]                # both went to memory


def test_store_hit_counts_no_hit_and_keeps_lru_order():
    """pycachesim's rule: a store that hits only sets the dirty bit. A B, store A, C: C
    evicts A (still least recently used), so A then misses."""
    m = model(CacheLevel("L1", 128, 2))
    m.run(stream([(A, 0), (B, 0), (A, 1), (C, 0), (A, 0)]))
    ev = m.level_events()[0]
    assert (ev[EV_HIT], ev[EV_MISS], ev[EV_EVICT]) == (0, 4, 1)
    assert m.served[0].tolist() == [1, 4]                   # the store hit was served by L1


def test_victim_l3_holds_what_l2_evicted():
    """L2 1-way with a victim L3: A, B (A's clean eviction goes to L3), A again: L2 misses,
    L3 supplies it -- served by L3, not memory."""
    m = model(CacheLevel("L1", 64, 1), CacheLevel("L2", 64, 1),
              CacheLevel("L3", 256, 4, victim=True))
    m.run(stream([(A, 0), (B, 0), (A, 0)]))
    l1, l2, l3 = m.level_events()
    assert (l2[EV_MISS], l2[EV_EVICT]) == (3, 2)
    assert (l3[EV_STORE], l3[EV_LOAD], l3[EV_HIT], l3[EV_MISS]) == (2, 1, 1, 0)
    assert m.served[0].tolist() == [0, 0, 1, 2]
    assert m.misses()[0].tolist() == [3, 3, 2]


def test_events_are_attributed_to_the_operation_class():
    zone, folio = OP_CLASS_ID["page_zone"], OP_CLASS_ID["page_folio"]
    m = model(CacheLevel("L1", 128, 2))
    m.run(streams([(zone, [(A, 0)]), (folio, [(A, 0), (B, 0)]), (zone, [(B, 0)])]))
    assert m.events[zone, 0, EV_MISS] == 1 and m.events[zone, 0, EV_HIT] == 1
    assert m.events[folio, 0, EV_HIT] == 1 and m.events[folio, 0, EV_MISS] == 1
    assert m.misses()[zone].tolist() == [1] and m.misses()[folio].tolist() == [1]


def test_state_is_kept_across_blocks():
    acc = [(KBASE + 8 * (k * 37 % 200), k % 3 == 0) for k in range(300)]
    cfg = (CacheLevel("L1", 512, 2), CacheLevel("L2", 2048, 4))
    whole, parts = model(*cfg), model(*cfg)
    whole.run(stream(acc))
    for k in range(0, 300, 70):
        parts.run(stream(acc[k:k + 70]))
    assert (whole.events == parts.events).all() and (whole.served == parts.served).all()


# ---- agreement with pycachesim -------------------------------------------------------------

def pycachesim_hierarchy(config: CacheConfig):
    """The same hierarchy in pycachesim (LRU, write-back, write-allocate; victims_to for a
    victim level), built from the last level up as pycachesim requires."""
    cachesim = pytest.importorskip("cachesim", reason="pycachesim (the test extra) is absent")
    links, mem = config.links(), cachesim.MainMemory()
    caches: list = [None] * len(config.levels)
    for i in range(len(config.levels) - 1, -1, -1):
        lv = config.levels[i]
        load_from, store_to, victims_to = (None if j < 0 else caches[j] for j in links[i])
        caches[i] = cachesim.Cache(lv.name, lv.sets, lv.ways, lv.line, "LRU",
                                   load_from=load_from, store_to=store_to,
                                   victims_to=victims_to)
        if links[i][0] < 0 and not lv.victim:
            mem.load_to(caches[i])
        if links[i][1] < 0:
            mem.store_from(caches[i])
    return cachesim.CacheSimulator(caches[0], mem), caches


def pycachesim_events(config: CacheConfig, s: AccessStream) -> np.ndarray:
    """[op class, level, EV_*] from pycachesim, per operation by differencing its counters.

    pycachesim reads addresses as signed 64-bit: the kernel addresses are given without their
    top 16 bits (all ones), which keeps every line and set (sets are far below 2**48 lines).
    """
    sim, caches = pycachesim_hierarchy(config)
    out = np.zeros((int(s.op_class.max()) + 1, len(caches), len(EVENT_NAMES)), dtype=np.int64)
    before = np.zeros(out.shape[1:], dtype=np.int64)
    for i in range(s.nr_ops):
        for j in range(int(s.op_first[i]), int(s.op_first[i + 1])):
            a = int(s.addr[j]) & ((1 << 48) - 1)
            (sim.store if s.kind[j] & KIND_STORE else sim.load)(a, length=8)
        now = np.array([[getattr(c.backend, f"{e}_count") for e in EVENT_NAMES]
                        for c in caches], dtype=np.int64)
        out[s.op_class[i]] += now - before
        before = now
    return out


def agree(config: CacheConfig, s: AccessStream, blocks: int = 1) -> None:
    ref = pycachesim_events(config, s)
    m = CacheModel(config)
    cut = np.linspace(0, s.nr_ops, blocks + 1).astype(int)
    for lo, hi in zip(cut, cut[1:], strict=False):
        m.run(AccessStream(s.addr, s.kind, s.op_class[lo:hi], s.op_first[lo:hi + 1]))
    n = ref.shape[0]
    assert (m.events[:n] == ref).all(), (config.spec(), m.events[:n].tolist(), ref.tolist())
    assert not m.events[n:].any()
    # every L1 miss is an access of the stream; pycachesim's main-memory loads (last load
    # level's misses - victim hits) add the write-allocate fills of written-back lines
    assert (m.misses()[:n, 0] == ref[:, 0, EV_MISS]).all()
    links = config.links()
    last = next(i for i in range(len(links)) if links[i][0] < 0)
    victim = links[last][2]
    mem = ref[:, last, EV_MISS].sum() - (ref[:, victim, EV_HIT].sum() if victim >= 0 else 0)
    assert m.misses()[:, -1].sum() <= mem
    if not (s.kind & KIND_STORE).any():
        assert m.misses()[:, -1].sum() == mem


#: (size, ways): sets 1, 4, 2, 8, 4 and, not a power of two, 3, 6 and 5
LEVEL_SHAPES = st.sampled_from([(128, 2), (256, 1), (512, 4), (1024, 2), (2048, 8),
                                (192, 1), (768, 2), (1280, 4)])


@st.composite
def configs(draw) -> CacheConfig:
    n = draw(st.integers(1, 3))
    levels, size = [], 0
    for i in range(n):
        sz, ways = draw(LEVEL_SHAPES)
        sz = max(sz, size) * (1 if i == 0 else draw(st.sampled_from([1, 2, 4])))
        size = sz
        victim = i == 2 and draw(st.booleans())
        levels.append(CacheLevel(f"L{i + 1}", sz, ways, victim=victim))
    return CacheConfig(tuple(levels))


@st.composite
def access_streams(draw) -> AccessStream:
    """Random addresses in a small window, or strided walks, loads and stores, several ops."""
    n = draw(st.integers(1, 400))
    if draw(st.booleans()):
        words = draw(st.lists(st.integers(0, 2047), min_size=n, max_size=n))
        offs = np.array(words, dtype=np.uint64) * np.uint64(8)
    else:
        stride, span = draw(st.sampled_from([8, 64, 72, 128, 4096])), draw(st.integers(1, 64))
        offs = (np.arange(n, dtype=np.uint64) % np.uint64(span)) * np.uint64(stride)
    stores = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    nops = draw(st.integers(1, min(n, 20)))
    cuts = sorted(set(draw(st.lists(st.integers(1, n - 1), max_size=nops - 1))) if n > 1 else [])
    first = np.array([0, *cuts, n], dtype=np.int64)
    classes = draw(st.lists(st.integers(0, 4), min_size=len(first) - 1,
                            max_size=len(first) - 1))
    return AccessStream(np.uint64(KBASE) + offs,
                        np.array([KIND_STORE if s else 0 for s in stores], dtype=np.uint8),
                        np.array(classes, dtype=np.uint8), first)


@given(configs(), access_streams(), st.integers(1, 3))
def test_agrees_with_pycachesim(config, s, blocks):
    agree(config, s, blocks)


@pytest.mark.parametrize("spec", ["L1=1K/2", "L1=1K/2,L2=8K/4", "L1=1K/2,L2=8K/4,L3=64K/8",
                                  "L1=1K/2,L2=8K/4,L3=64K/8/victim", "L1=512/1,L2=4K/16",
                                  "L1=768/4,L2=12K/12,L3=120K/8/victim"])
def test_agrees_with_pycachesim_on_a_long_mixed_stream(spec):
    rng = np.random.default_rng(7)
    n = 6000
    hot = rng.integers(0, 1 << 11, n) * 8                   # a 16 KiB working set
    cold = rng.integers(0, 1 << 17, n) * 8                  # 1 MiB
    offs = np.where(rng.random(n) < 0.7, hot, cold).astype(np.uint64)
    first = np.arange(0, n + 1, 5, dtype=np.int64)
    s = AccessStream(np.uint64(KBASE) + offs, (rng.random(n) < 0.3).astype(np.uint8),
                     rng.integers(0, 17, len(first) - 1).astype(np.uint8), first)
    agree(CacheConfig(parse_cache_spec(spec)), s, blocks=4)


# ---- this machine's caches and --cache ------------------------------------------------

def test_sysfs_copy_of_an_epyc_9004():
    levels = read_sysfs_caches(SYSFS_COPY)
    assert [lv.spec() for lv in levels] == ["L1=32K/8", "L2=1M/8", "L3=32M/16"]
    assert [lv.sets for lv in levels] == [64, 2048, 32768]          # number_of_sets
    assert [lv.shared_cpus for lv in levels] == [1, 1, 2]


def test_this_machines_sysfs():
    if not SYSFS_CACHE.is_dir():
        pytest.skip(f"{SYSFS_CACHE} is absent on this machine")
    cfg = machine_caches()
    assert cfg.source == str(SYSFS_CACHE)
    for lv in cfg.levels:       # every level the kernel lists, cross-checked with its sets
        folder = next(d for d in SYSFS_CACHE.glob("index*")
                      if (d / "level").read_text().strip() == lv.name[1:]
                      and (d / "type").read_text().strip() in ("Data", "Unified"))
        assert lv.sets == int((folder / "number_of_sets").read_text())


def test_default_when_sysfs_is_absent(tmp_path):
    cfg = machine_caches(tmp_path / "absent")
    assert cfg.levels == DEFAULT_CACHES and cfg.source == "default"


def test_malformed_sysfs_names_the_folder(tmp_path):
    bad = tmp_path / "index0"
    bad.mkdir()
    for f, v in [("level", "1"), ("type", "Data"), ("size", "32K"), ("number_of_sets", "64"),
                 ("ways_of_associativity", "8"), ("coherency_line_size", "32")]:
        (bad / f).write_text(v + "\n")
    with pytest.raises(InputError, match="index0: size 32768 is not number_of_sets"):
        read_sysfs_caches(tmp_path)


def test_cache_option_replaces_and_adds_levels():
    base = read_sysfs_caches(SYSFS_COPY)
    cfg = machine_caches(SYSFS_COPY, "L1=48K/12,l2=2M/16,L3=32M/16/victim,L4=256M/16/128")
    assert cfg.spec() == "L1=48K/12,L2=2M/16,L3=32M/16/victim,L4=256M/16/128"
    assert cfg.levels[2].shared_cpus == base[2].shared_cpus
    assert cfg.links().tolist() == [[1, 1, -1], [3, 2, 2], [-1, 3, -1], [-1, -1, -1]]


@pytest.mark.parametrize("spec, what", [("L1=48K", "NAME=SIZE/WAYS"),
                                        ("L1=48K/0", "multiple of ways"),
                                        ("L1=100/2", "multiple of ways"),
                                        ("L1=4K/2/48", "power of two")])
def test_bad_cache_option_is_one_line(spec, what):
    with pytest.raises(InputError, match=what):
        parse_cache_spec(spec)
