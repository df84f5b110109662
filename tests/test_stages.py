"""The Path as data: stages, variants (type tables, free-page tracking), type codes."""

from __future__ import annotations

import pytest

from memdesc.stages import (
    FREE_TRACKING,
    FREE_TRACKING_OPTIONS,
    PATH_ORDER,
    STAGE_IDS,
    STAGES,
    TYPE_TABLES,
    ZONE_LOOKUP,
    get_stage,
    parse_stages,
    stage_variant,
    type_code,
    variant_name,
)


def test_path_order_and_sizes():
    assert STAGE_IDS == ("v6.18", "folio", "dynamic", "page32", "page16", "page8")
    assert [s.struct_page_bytes for s in STAGES] == [64, 64, 64, 32, 16, 8]
    assert [s.dynamic for s in STAGES] == [False, False, True, True, True, True]
    for s in STAGES:
        assert s.free_tracking in FREE_TRACKING and s.zone_lookup in ZONE_LOOKUP
        assert s.free_tracking == FREE_TRACKING_OPTIONS[s.id][0]


def test_type_tables():
    b = get_stage("page16")
    assert type_code(b, "Buddy") == 1 and type_code(b, "Misc") == 0
    assert type_code(b, "Slab") == 5 and type_code(b, "PerCPU") == 10
    a = get_stage("page16@rev-a")
    assert type_code(a, "Buddy") == 5 and type_code(a, "Slab") == 4
    p = get_stage("page16@path-2025")
    assert [c for c, n in p.types.items() if n == "Buddy"] == [0, 4, 8, 12]
    assert type_code(p, "Buddy") == 0 and type_code(p, "Misc") == 1
    for table in TYPE_TABLES.values():
        assert all(0 <= c < 16 for c in table)
    with pytest.raises(ValueError, match="no 'Frob'"):
        type_code(b, "Frob")


def test_variants():
    s = get_stage("page32@path-2025")
    assert (s.id, s.type_table, s.free_tracking) == ("page32", "path-2025", "type_alias")
    assert variant_name(s) == "page32@path-2025"
    assert get_stage("page32").free_tracking == "flags_bit"
    assert variant_name(get_stage("page8/packed")) == "page8"
    assert stage_variant("page16", type_table="rev-a") == get_stage("page16@rev-a")
    with pytest.raises(ValueError, match="no free-page tracking 'bitmap'"):
        get_stage("page16/bitmap")
    with pytest.raises(ValueError, match="type_alias free tracking needs"):
        get_stage("page32/type_alias")
    with pytest.raises(ValueError, match="unknown type table"):
        get_stage("page16@rev-z")
    with pytest.raises(ValueError, match="unknown stage"):
        get_stage("page4")


def test_parse_stages_keeps_path_order():
    assert [s.id for s in parse_stages("page8,v6.18,page8")] == ["v6.18", "page8"]
    assert parse_stages("all") == list(STAGES)
    got = parse_stages("page32@path-2025, folio")
    assert [variant_name(s) for s in got] == ["folio", "page32@path-2025"]


def test_memdesc_stages_draws_every_layout(capsys):
    from memdesc.cli import main

    assert main(["stages"]) == 0
    out = capsys.readouterr().out
    for sid in PATH_ORDER:
        assert f"== {sid}:" in out
    assert out.count("struct page {") == len(PATH_ORDER)
    assert "/* size: 64, cachelines: 1" in out and "/* size: 8, cachelines: 1" in out
    # page16's union { buddy_list; struct { memdesc; private } } is drawn as such
    page16 = out[out.index("== page16"):out.index("== page8")]
    assert "union {" in page16 and "struct {" in page16
    assert "unsigned long private;                  /*     8     8 */" in page16
    assert main(["stages", "--stages", "page32@path-2025", "--overlays"]) == 0
    out = capsys.readouterr().out
    assert "== page32@path-2025" in out and "struct folio {" in out and "_nr_pages" in out
    assert main(["stages", "--stages", "page4"]) == 2


def test_memdesc_stages_fits_80_columns(capsys, monkeypatch):
    """Prose wraps between words; a member's note that does not fit moves below it."""
    from memdesc.cli import main

    monkeypatch.setenv("COLUMNS", "80")
    assert main(["stages", "--overlays"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 80
    page16 = "\n".join(lines[lines.index(next(x for x in lines if x.startswith("== page16"))):])
    assert "struct list_head buddy_list;                /*     0    16 */\n" in page16
    assert "            /* Option 1: next|Buddy type, prev|order */" in page16


def test_stage_globs_over_free_tracking_options():
    """``page8/*`` names every page8 option (default first), ``page32/*`` both page32 ones
    (type_alias with the only table it accepts); a glob matching nothing is an error."""
    assert [variant_name(s) for s in parse_stages("page8/*")] == [
        "page8", "page8/inpage", "page8/bitmap", "page8/slist"]
    assert [variant_name(s) for s in parse_stages("page32/*")] == ["page32",
                                                                   "page32@path-2025"]
    assert [variant_name(s) for s in parse_stages("v6.18,page8/inp*")] == ["v6.18",
                                                                          "page8/inpage"]
    with pytest.raises(ValueError, match="matches no stage variant"):
        parse_stages("page9/*")


def test_every_option_is_described_and_selectable():
    from memdesc.stages import TRACKING, tracking_variants

    named = {v.split("/")[1].split("@")[0] for v in tracking_variants()}
    assert named == set(TRACKING) == set(FREE_TRACKING)
    assert get_stage("page8/inpage").free_tracking == "inpage"
    with pytest.raises(ValueError, match="no free-page tracking 'inpage'"):
        get_stage("page16/inpage")


def test_memdesc_stages_states_side_memory_and_blockers(capsys):
    from memdesc.cli import main

    assert main(["stages", "--stages", "page8/*"]) == 0
    out = capsys.readouterr().out
    assert "== page8/inpage" in out
    assert "free-tracking options: packed, inpage, bitmap, slist" in out
    assert "blocker: HIGHMEM" in out and "blocker: debug_pagealloc" in out
    assert "free page reporting" in out and "our own encoding" in out
    assert out.count("free-tracking side memory:") == 4
    assert "== page8/bitmap" in out and "free-list order: NOT the kernel's" in out
    assert "0.25 B per 4 KiB page" in out
