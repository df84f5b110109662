"""The cost model charges a free-page tracking option's side memory (memdesc.stages.TRACKING)."""

from __future__ import annotations

import dataclasses

from memdesc.analysis.cost import stage_cost
from memdesc.stages import TRACKING, get_stage
from test_cost import TABLE, hand_census


def test_side_memory_is_charged_per_struct_page(monkeypatch):
    """An option with a bit per page plus a 16-bit counter per 512 pages (LLFree-like:
    1/8 + 2/512 B per page) adds 512 × (0.125 + 0.00390625) = 66 B to 512 struct pages
    of 8 B; the built-in options add nothing."""
    c = hand_census(512, anon={9: 1})
    base = stage_cost(c, get_stage("page8"), TABLE)
    assert "free_tracking_side" not in base.by_type
    monkeypatch.setitem(TRACKING, "packed", dataclasses.replace(
        TRACKING["packed"], side_bytes_per_page=1 / 8 + 2 / 512))
    cost = stage_cost(c, get_stage("page8"), TABLE)
    assert cost.by_type["free_tracking_side"] == 66
    assert cost.total_bytes == base.total_bytes + 66
    assert sum(cost.by_type.values()) == cost.total_bytes
