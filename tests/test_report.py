"""Reports: terminal tables, JSON schema, census round trip, map image, cost plot."""

from __future__ import annotations

import json
from functools import cache

import numpy as np
from rich.console import Console

from conftest import fixture_dir
from memdesc.analysis.census import CLASSES, Census
from memdesc.analysis.survey import run_survey
from memdesc.ingest.snapshot import open_snapshot
from memdesc.report.json_out import SCHEMA_VERSION, survey_dict, write_bytes
from memdesc.report.physmap import COLOURS, grid_width, map_image, render_map_png
from memdesc.report.plot import render_costs_png
from memdesc.report.table import render

PNG = b"\x89PNG\r\n\x1a\n"


@cache
def result():
    return run_survey(open_snapshot(fixture_dir("snapshot-idle")))


def test_table_shows_classes_stages_checks_and_buddy():
    con = Console(record=True, width=200)
    render(result(), con)
    text = con.export_text()
    for k in CLASSES:
        assert f"\n  {k} " in text
    for stage in ("v6.18", "folio", "dynamic", "page32", "page16", "page8"):
        assert f"  {stage} " in text
    assert "MemFree" in text and "Σ num_slabs (slabinfo)" in text
    assert "0/Normal: our 2,052,621 free pages lie between" in text
    assert "≈ 17,157 are free on the pcp lists" in text        # zoneinfo pcp counts 11921+5236


def test_json_has_the_documented_keys():
    d = survey_dict(result())
    assert d["schema_version"] == SCHEMA_VERSION == 2
    for key in ("schema_version", "tool", "source", "kind", "kernel", "notes", "skipped",
                "page_size", "pfns", "ram_pages", "memmap_pages", "nr_cpus", "pages_by_class",
                "units_by_class", "folio_orders", "zones", "in_use_pages", "class_pages",
                "stages", "break_even_orders", "consistency", "buddy_reconciliation",
                "descriptors", "extras", "map"):
        assert key in d, key
    json.dumps(d)                                   # plain data only
    assert d["memmap_pages"] == 192 * 32768         # 192 present 128 MiB sections
    assert d["ram_pages"] == 3998 + 782336 + 5505024
    s = {x["id"]: x for x in d["stages"]}
    assert s["v6.18"]["struct_page_bytes"] == 192 * 32768 * 64
    assert s["page8"]["saving_bytes"] > 0
    assert d["descriptors"]["types"]["folio"]["size"] == 80


def test_census_round_trips_through_its_dict():
    c = result().census
    back = Census.from_dict(json.loads(json.dumps(c.to_dict())))
    assert back.pages_by_class == c.pages_by_class
    assert all((back.units_by_class[k] == c.units_by_class[k]).all() for k in CLASSES)
    assert (back.cells == c.cells).all() and back.zones == c.zones
    back.check()


def test_map_image_colours_cells_by_class():
    c = result().census
    img, width = map_image(c)
    assert width == grid_width(len(c.cells)) == 128
    assert img.shape == (len(c.cells) // 128, 128, 3)
    hole = np.array([int(COLOURS["hole"][i:i + 2], 16) for i in (1, 3, 5)], np.uint8)
    # the PCI hole 0xc0000-0xfffff = cells 1536..2047 (512 PFNs per cell)
    assert (img.reshape(-1, 3)[1536:2048] == hole).all()
    assert c.cells[1536:2048].tolist() == [CLASSES.index("hole")] * 512


def test_pngs_render_and_write_atomically(tmp_path):
    costs, pic = render_costs_png(result()), render_map_png(result())
    assert costs.startswith(PNG) and pic.startswith(PNG)
    write_bytes(tmp_path / "sub" / "m.png", pic)
    assert (tmp_path / "sub" / "m.png").read_bytes() == pic
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["m.png"]


def test_a_check_against_a_zero_counter_stays_valid_json():
    """Shmem 0 kB but our shmem > 0: the percentage is undefined, and JSON has no Infinity."""
    from types import SimpleNamespace

    from memdesc.analysis.consistency import Check
    from memdesc.report.table import check_table

    ch = Check("shmem", "Shmem", "shmem", 5, 0, 0, "why")
    assert ch.diff == 5 and ch.status == "off"
    d = ch.to_dict()
    assert d["diff_percent"] is None
    json.dumps(d, allow_nan=False)
    con = Console(record=True, width=200)
    con.print(check_table(SimpleNamespace(checks=[ch]), 200))
    text = con.export_text()
    assert " +5 " in text and "inf" not in text


def test_anomaly_note_explains_only_what_was_observed():
    from dataclasses import replace as dc_replace

    from memdesc.report.table import notes_lines

    r = result()
    c = r.census
    extras = dict(c.extras, anomalies={"orphan_tail_runs": 2, "hole_pages_with_struct_page": 0})
    text = "\n".join(notes_lines(dc_replace(r, census=dc_replace(c, extras=extras))))
    assert "orphan tail runs 2" in text and "init_unavailable_range" not in text
    assert "init_unavailable_range" in "\n".join(notes_lines(r))     # the fixture has 98
