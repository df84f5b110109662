"""`memdesc timing` on the real emulator: a scenario and a real trace (trace-slab), the
emulator's counters against its own access log, the cache model fed every access.
(page_zone()'s 1 vs 2 dependent loads are tested on the emulator in tests/test_access.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import fixture_dir
from memdesc import cli
from memdesc.analysis.cache_model import machine_caches
from memdesc.analysis.timing import (
    TimingCollector,
    add_counters,
    load_scenario_source,
    run_scenario_timing,
    stream_counters,
)
from memdesc.stages import parse_stages

SCENARIO = """\
machine 256M cpus=2
seed 3
pagecache 4M file=a order=2
pagecache 1M file=b
anon 2M proc=p thp
anon 512K proc=p
kmalloc 500 size=8-1024 tag=o
free half kmalloc tag=o
free half pagecache file=a
"""


class CheckingCollector(TimingCollector):
    """Also recomputes the counters from every drained block (memdesc.analysis.timing's
    reference definition) to compare with the emulator's own."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.recomputed = {s.id: None for s in self.stages}

    def add(self, stage_id, stream, counters=None, dropped=False) -> None:
        self.recomputed[stage_id] = add_counters(self.recomputed[stage_id],
                                                 stream_counters(stream))
        super().add(stage_id, stream, counters, dropped)


@pytest.fixture(scope="module")
def scenario_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("timing") / "small.scenario"
    path.write_text(SCENARIO)
    col = CheckingCollector(parse_stages("v6.18,page16,page8"), machine_caches())
    scenario, nr_pfns = load_scenario_source(path, col.stages)
    run_scenario_timing(scenario, col.stages, col, nr_pfns)
    return path, col


def test_emulator_counters_equal_its_log(scenario_run):
    _, col = scenario_run
    for sid, run in col.runs.items():
        assert not run.log_dropped, sid
        assert run.counters is not None and run.counters[:, 0].sum() > 0, sid
        assert np.array_equal(run.counters, col.recomputed[sid]), sid


def test_folio_alloc_chain_grows_with_dynamic_descriptors(scenario_run):
    """folio_alloc() at page16/page8 first allocates the folio descriptor from a slab cache
    and then writes the pages' memdesc words from its address: longer dependent chains than
    v6.18's, where the folio is the head struct page. pt_walk() is the same walk at every
    stage up to the page, so its count is the same."""
    from memdesc.mm.access import CT_CHAIN_SUM, CT_OPS, OP_CLASS_ID

    _, col = scenario_run
    fa, pt = OP_CLASS_ID["folio_alloc"], OP_CLASS_ID["pt_walk"]
    ref = col.runs["v6.18"].counters
    assert ref[fa, CT_OPS] > 0 and ref[pt, CT_OPS] > 0
    for sid in ("page16", "page8"):
        ct = col.runs[sid].counters
        assert ct[fa, CT_OPS] == ref[fa, CT_OPS], sid
        assert ct[fa, CT_CHAIN_SUM] > ref[fa, CT_CHAIN_SUM], sid
        assert ct[pt, CT_OPS] == ref[pt, CT_OPS], sid


def test_cache_model_saw_every_access(scenario_run):
    _, col = scenario_run
    for run in col.runs.values():
        loads_stores = run.counters[:, 1].sum() + run.counters[:, 2].sum()
        assert run.accesses == loads_stores
        assert run.cache.served.sum() == loads_stores


def test_cli_on_a_scenario(scenario_run, tmp_path, capsys):
    path, _ = scenario_run
    j, p = tmp_path / "t.json", tmp_path / "t.png"
    assert cli.main(["timing", str(path), "--stages", "page16", "--no-native",
                     "--json", str(j), "--plot", str(p)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("timing of scenario")
    assert any(line.startswith("page16: +") for line in out.splitlines())
    doc = json.loads(j.read_text())
    assert [s["id"] for s in doc["stages"]] == ["v6.18", "page16"]
    assert p.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_cli_on_a_real_trace(tmp_path, capsys):
    trace = fixture_dir("trace-slab")
    j = tmp_path / "t.json"
    assert cli.main(["timing", str(trace), "--stages", "page16", "--no-native",
                     "--json", str(j), "--brief"]) == 0
    doc = json.loads(j.read_text())
    ops = {r["op"]: r for r in doc["stages"][0]["ops"]}
    assert ops["alloc_pages.pcp"]["count"] > 0
    assert any(line.startswith("page16: ") for line in capsys.readouterr().out.splitlines())


@pytest.mark.slow
def test_native_column_on_a_real_trace(tmp_path, capsys):
    """With the native measurement (memdesc.analysis.native_timing) the ns columns appear,
    v6.18's ratio to itself is 1."""
    pytest.importorskip("memdesc.analysis.native_timing",
                        reason="the native measurement is not in this checkout")
    trace = fixture_dir("trace-slab")
    j = tmp_path / "t.json"
    assert cli.main(["timing", str(trace), "--stages", "page16", "--repeats", "2",
                     "--json", str(j)]) == 0
    doc = json.loads(j.read_text())
    assert doc["native"]["repeats"] == 2
    ref = {r["op"]: r for r in doc["stages"][0]["ops"]}
    assert ref["alloc_pages.pcp"]["native_ns"] > 0
    assert ref["alloc_pages.pcp"]["native_ratio"] == 1.0
    assert "native: x" in capsys.readouterr().out
