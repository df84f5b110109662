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



@pytest.mark.parametrize("stage", ["v6.18", "page16"])
def test_reserve_is_all_or_nothing_across_batches(stage):
    """`reserve` runs in batches of mm.kmem.BATCH pages (Ctrl-C between them) and stays all
    or nothing: 400 MiB on a 512 MiB machine holding 200 MiB of anon fails in a later batch,
    and every page of the earlier batches goes back (free + pcp pages as before)."""
    from memdesc.mm.kmem import BATCH
    from memdesc.mm.page_alloc import pcp_count, zone_free_pages

    sc = parse_scenario("machine 512M\nanon 200M proc=p\nreserve 400M\nreserve 64M\n")
    assert sc.steps[1].args["size"] > 2 * BATCH
    w = World(sc, stage, debug=True)
    w.run(sc.steps[0])
    before = int(zone_free_pages(w.k.mm).sum() + pcp_count(w.k.mm).sum())
    assert w.run(sc.steps[1]) == {"ok": 0, "failed": 1}
    assert int(zone_free_pages(w.k.mm).sum() + pcp_count(w.k.mm).sum()) == before
    assert w.run(sc.steps[2]) == {"ok": 1, "failed": 0}      # the memory is usable again
    w.k.check()
