"""The page8 ``packed`` encoding's limits (12 bits name list heads, 28-bit block indices) are
refused when the machine is built, and only for the option that has them."""

from __future__ import annotations

import pytest

from memdesc.mm import free_tracking as ft
from memdesc.mm import page_alloc as pa
from memdesc.mm.mmzone import Machine
from memdesc.stages import get_stage


def test_packed_names_pcp_heads_of_at_most_288_cpus():
    """(4096 heads - 11 orders x 5 migratetypes) // 14 pcp lists = 288."""
    assert ft.max_cpus(get_stage("page8")) == (4096 - 55) // 14 == 288
    ft.make_cfg(get_stage("page8"), 288, 1)
    with pytest.raises(ValueError, match="at most 288 CPUs"):
        ft.make_cfg(get_stage("page8"), 289, 1)
    assert ft.max_cpus(get_stage("page8/inpage")) is None
    ft.make_cfg(get_stage("page8/inpage"), 4096, 1)


def test_packed_zone_span_limit():
    """A Normal zone of 1.1 TiB spans more than 2^28 - 4096 pages: refused at page8 before
    the machine boots; page8/inpage has no such limit."""
    assert ft.max_zone_pages(get_stage("page8")) == (1 << 28) - 4096
    assert ft.max_zone_pages(get_stage("page8/inpage")) is None
    with pytest.raises(ValueError, match=r"page8: zone Normal of node 0 spans more than"):
        pa.MemMap(Machine.from_spec("1100G"), "page8", debug=False)
