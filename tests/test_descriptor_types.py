"""One descriptor-type table (stages.DESCRIPTOR_TYPES) drives the emulator's descriptor caches,
their pfn/order members, movability, the census classes and the cost model's demand.

The proof: a toy descriptor type registered from this file alone gets its cache at boot, its
pages pass the descriptor invariants (check_slabs: right cache, pfn/order cover the page),
nothing leaks, the cost model charges it, and the property tests still hold with it there.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import test_mm_props
from memdesc.analysis.cost import descriptor_cost_types, descriptor_demand, stage_cost
from memdesc.analysis.descriptors import load_descriptors
from memdesc.analysis.scenario import World, parse_scenario
from memdesc.analysis.sim_census import census_of_world
from memdesc.mm import gfp
from memdesc.mm import page_alloc as pa
from memdesc.mm.free_tracking import C_MOVMASK, make_cfg
from memdesc.mm.memdesc_alloc import descriptor_cache_slot
from memdesc.mm.mm_init import Kernel
from memdesc.mm.mmzone import Machine
from memdesc.mm.page_desc import desc_alloc_nb, desc_free_nb
from memdesc.mm.slab import _GROW
from memdesc.stages import (
    DESCRIPTOR_TYPES,
    STAGES,
    DescriptorType,
    movable_memdesc_types,
    register_descriptor_type,
    type_code,
    unregister_descriptor_type,
)
from test_cost import hand_census

DYNAMIC = [s.id for s in STAGES if s.dynamic]
#: A toy descriptor: 40 bytes (48 in its cache), its pages carry the HWPoison memdesc type
#: (present in every type table), pfn at byte 24, order in byte 32; the census's "offline"
#: units need one.
TOY = DescriptorType("toydesc", ("HWPoison",), "toydesc", freeptr_offset=8, pfn_off=24,
                     order_off=32, census_classes=("offline",), bytes=40)


@pytest.fixture
def toy():
    register_descriptor_type(TOY)
    try:
        yield TOY
    finally:
        unregister_descriptor_type(TOY.key)


def _kernel(stage: str) -> Kernel:
    return Kernel(Machine.from_spec("64M", hole_start="32M", dma32_end="40M"), stage)


def _allocated(k: Kernel) -> int:
    managed = sum(z.managed for z in k.machine.zones)
    return managed - int(pa.zone_free_pages(k.mm).sum()) - int(pa.pcp_count(k.mm).sum())


def test_emulator_caches_and_cost_types_are_the_table():
    k = _kernel("dynamic")
    caches = {kc.descriptor for kc in k.slub.cache_list if kc.descriptor}
    assert caches == {t.key for t in DESCRIPTOR_TYPES if t.cache_name}
    assert set(descriptor_cost_types()) == {t.key for t in DESCRIPTOR_TYPES} | {"memcg_misc"}
    assert descriptor_cost_types()[-1] == "slab"


@pytest.mark.parametrize("stage", [s.id for s in STAGES])
def test_movability_table_is_what_the_buddy_allocator_counts(stage):
    s = next(x for x in STAGES if x.id == stage)
    cfg = make_cfg(s, 2, 1)
    want = 0
    for name in movable_memdesc_types():
        for code, n in s.types.items():
            if n == name:
                want |= 1 << code
    assert int(cfg[C_MOVMASK]) == want


@pytest.mark.parametrize("stage", DYNAMIC)
def test_emulated_descriptors_equal_the_cost_models_demand(stage):
    """The cost model's demand computed from the emulator's own census equals the descriptor
    objects the emulator allocated, type by type (hand-worked counts in the comments)."""
    text = ("machine 64M cpus=2\nseed 3\npagecache 64K file=f order=0\n"   # 16 folios
            "pagecache 256K file=g order=2\n"                               # 16 large folios
            "anon 128K proc=p order=0\n")                                   # 32 anon folios
    sc = parse_scenario(text, "demand")
    w = World(sc, stage, check=True)
    for step in sc.steps:
        w.run(step)
    demand = descriptor_demand(census_of_world(w))
    live = {kc.descriptor: w.k.slub.live(kc) for kc in w.k.slub.cache_list if kc.descriptor}
    assert demand["folio"] == live["folio"] == 16 + 32
    assert demand["large_folio"] == live["large_folio"] == 16
    assert demand["ptdesc"] == live["ptdesc"] > 0


@pytest.mark.parametrize("stage", DYNAMIC)
def test_toy_descriptor_type_gets_a_cache_and_keeps_the_invariants(toy, stage):
    k = _kernel(stage)
    names = [kc.name for kc in k.slub.cache_list]
    assert "toydesc" in names
    kc = k.slub.by_name["toydesc"]
    assert k.slub.geo[kc.index][4] == 48                     # G_SIZE: 40 -> 48
    slot = descriptor_cache_slot("toydesc")
    t = type_code(k.stage, "HWPoison")
    base = _allocated(k)
    descs = []
    for order in (0, 3, 0, 9, 1):
        d = desc_alloc_nb(k.E, slot, t, gfp.GFP_KERNEL, order, 0)
        while d == _GROW:
            k.grow()
            d = desc_alloc_nb(k.E, slot, t, gfp.GFP_KERNEL, order, 0)
        assert d > 1
        descs.append(d)
    k.check()            # check_slabs: toy pages point at toy objects whose pfn/order cover them
    assert k.slub.live(kc) == 5
    for d in descs:
        desc_free_nb(k.E, d, t)
    k.check()
    assert k.slub.live(kc) == 0
    slab_pages = sum(k.slub.pages(c) for c in k.slub.cache_list)
    assert _allocated(k) - slab_pages <= base


@given(orders=st.lists(st.sampled_from([0, 1, 2, 4, 9]), min_size=1, max_size=12),
       frees=st.lists(st.booleans(), min_size=12, max_size=12))
def test_toy_descriptor_random_alloc_free(orders, frees):
    register_descriptor_type(TOY)
    try:
        for stage in DYNAMIC:
            k = _kernel(stage)
            slot, t = descriptor_cache_slot("toydesc"), type_code(k.stage, "HWPoison")
            live = []
            for i, order in enumerate(orders):
                d = desc_alloc_nb(k.E, slot, t, gfp.GFP_KERNEL, order, 0)
                while d == _GROW:
                    k.grow()
                    d = desc_alloc_nb(k.E, slot, t, gfp.GFP_KERNEL, order, 0)
                live.append(d)
                if frees[i] and live:
                    desc_free_nb(k.E, live.pop(0), t)
                k.check()
            for d in live:
                desc_free_nb(k.E, d, t)
            k.check()
            assert k.slub.live(k.slub.by_name["toydesc"]) == 0
    finally:
        unregister_descriptor_type(TOY.key)


def test_cost_model_charges_the_toy_type(toy):
    census = hand_census(1 << 16, offline={0: 1000})
    table = load_descriptors()
    assert table["toydesc"].bytes == 40                      # from the registration
    dyn = stage_cost(census, next(s for s in STAGES if s.id == "dynamic"), table, 2)
    cache = next(c for c in dyn.caches if c.name == "toydesc")
    assert cache.objects == 1000
    assert descriptor_demand(census)["toydesc"] == 1000


def test_property_tests_hold_with_the_toy_type_registered(toy):
    """The emulator's property tests (tests/test_mm_props.py) with the toy type present: its
    cache is created at every dynamic stage, and invariants, leaks and cross-stage
    observables still hold."""
    test_mm_props.test_invariants_and_no_leak_with_fault_injection()
    test_mm_props.test_same_observables_at_every_stage()


def test_registering_a_conflicting_type_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register_descriptor_type(DescriptorType("folio", ("File",), "folio2"))
    with pytest.raises(ValueError, match="pfn/order"):
        register_descriptor_type(DescriptorType("bad", ("PageTable",), "bad", pfn_off=8))
    assert np.all([t.key != "bad" for t in DESCRIPTOR_TYPES])
