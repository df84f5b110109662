"""Misc allocations need no descriptor: the zero page, reserved and vmalloc pages."""

from __future__ import annotations

import pytest

from memdesc.analysis.scenario import World, parse_scenario
from memdesc.analysis.sim_census import census_of_world
from memdesc.mm.memdesc import memdesc_decode
from memdesc.mm.mm_types import PG_reserved
from memdesc.mm.page_alloc import page_field

SCENARIO = "machine 256M\nvmalloc 8M tag=a\n"


@pytest.mark.parametrize("stage", ["v6.18", "dynamic", "page16", "page8"])
def test_zero_page_is_misc_at_every_stage(stage):
    """empty_zero_page is PG_reserved today and a Misc word of subtype zero from `dynamic` on,
    counted once as the survey's `zero` class. (Its PFN may differ between stages: from
    `dynamic` on, descriptor slabs take pages at boot; observables compare contents, not PFNs.)"""
    w = World(parse_scenario(SCENARIO), stage, debug=True)
    pfn = w.zero_pfn
    assert pfn >= 0
    st = w.k.stage
    if st.dynamic:
        md = memdesc_decode(st, page_field(w.k.mm, pfn, "memdesc"))
        assert (md.type_name, md.subtype) == ("Misc", "zero")
    else:
        assert page_field(w.k.mm, pfn, "flags") >> PG_reserved & 1
    assert census_of_world(w).pages_by_class["zero"] == 1
    w.k.check()

