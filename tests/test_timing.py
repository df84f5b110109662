"""`memdesc timing`: the counters, the document, the report, the plot and the CLI's bad input.

Hand-made streams where the emulator's are not needed (the page_zone() example of
memdesc.mm.access's docstring at v6.18 and page16); tests/test_timing_run.py runs the real
emulator.
"""

from __future__ import annotations

import json

import pytest

from access_ops import ST, D, P, counts, ops_stream
from memdesc import cli
from memdesc.analysis.cache_model import CacheConfig
from memdesc.analysis.timing import TimingCollector, stream_counters, timing_doc
from memdesc.ingest.cpu_caches import parse_cache_spec
from memdesc.mm.access import OP_CLASS_ID, AccessStream
from memdesc.mm.kmem import PAGE_OFFSET, VMEMMAP_START
from memdesc.report import timing_out
from memdesc.report.console import make_console
from memdesc.stages import parse_stages

ZONE, ALLOC = OP_CLASS_ID["page_zone"], OP_CLASS_ID["alloc_pages.pcp"]


def page_zone(stage: str, pfn: int) -> tuple[int, list]:
    """page_zone() of an allocated folio page: v6.18 reads page->flags (one load); page16
    reads the memdesc word (PTR) then the folio's flags (DEP): the module doc's example."""
    if stage == "v6.18":
        return ZONE, [(VMEMMAP_START + 64 * pfn, 0)]
    folio = PAGE_OFFSET + (1 << 30) + 64 * (pfn // 512)
    return ZONE, [(VMEMMAP_START + 16 * pfn, P), (folio, D)]


def alloc(stage: str, pfn: int) -> tuple[int, list]:
    size = 64 if stage == "v6.18" else 16
    return ALLOC, [(VMEMMAP_START + size * pfn, 0), (VMEMMAP_START + size * pfn, ST),
                   (VMEMMAP_START + size * pfn + 8, ST)]


def workload(stage: str) -> AccessStream:
    """Allocate 2048 pages, then page_zone() on each (same order at both stages)."""
    pfns = range(4096, 4096 + 2048)
    return ops_stream([alloc(stage, p) for p in pfns] + [page_zone(stage, p) for p in pfns])


def test_stream_counters_by_hand():
    s = ops_stream([page_zone("page16", 5), page_zone("v6.18", 5), alloc("v6.18", 7)])
    ct = stream_counters(s)
    zone, pcp = counts(ct[ZONE]), counts(ct[ALLOC])
    assert zone.ops == 2 and zone.loads == 3
    assert zone.chain_sum == 3 and zone.chain_max == 2     # 2 + 1
    assert zone.lines == 3             # memdesc word, folio flags; page->flags
    assert (pcp.loads, pcp.stores, pcp.lines) == (1, 2, 1)


@pytest.fixture(scope="module")
def doc():
    stages = parse_stages("v6.18,page16")
    col = TimingCollector(stages, CacheConfig(parse_cache_spec("L1=4K/4,L2=32K/8,L3=256K/8")))
    for st in stages:
        s = workload(st.id)
        col.add(st.id, AccessStream(s.addr, s.kind, s.op_class[:2048], s.op_first[:2049]))
        col.add(st.id, AccessStream(s.addr, s.kind, s.op_class[2048:], s.op_first[2048:]))
    return timing_doc(col, {"kind": "scenario", "path": "hand.scenario", "name": "hand",
                            "machine": "1G"})


def test_document_schema(doc):
    assert [s["id"] for s in doc["stages"]] == ["v6.18", "page16"]
    for s in doc["stages"]:
        for r in s["ops"]:
            assert set(r) >= {"op", "count", "loads", "stores", "lines", "dependent_loads",
                              "misses", "native_ns"}
            assert list(r["misses"]) == ["L1", "L2", "L3"] and r["native_ns"] is None
    ref, p16 = ({r["op"]: r for r in s["ops"]} for s in doc["stages"])
    assert ref["page_zone"]["dependent_loads"] == 1 and p16["page_zone"]["dependent_loads"] == 2
    assert ref["page_zone"]["count"] == p16["page_zone"]["count"] == 2048
    json.loads(timing_out.doc_json(doc))


def test_misses_follow_the_smaller_memmap(doc):
    """2048 struct pages: 128 KiB at 64 B (over the 4 KiB L1 and 32 KiB L2), 32 KiB at 16 B.
    v6.18's page_zone() misses L1 once per page (its line was evicted since the alloc);
    page16 reads 4 words per line and 512 pages per folio line."""
    ref, p16 = ({r["op"]: r for r in s["ops"]} for s in doc["stages"])
    assert ref["page_zone"]["misses"]["L1"] == 2048
    assert p16["page_zone"]["misses"]["L1"] < 2048 / 4 + 8
    assert ref["alloc_pages.pcp"]["misses"]["L3"] == 2048           # cold: one line each
    assert p16["alloc_pages.pcp"]["misses"]["L3"] == 2048 // 4


def test_answer_first(doc):
    lines = [t.replace("\xa0", " ") for t in timing_out.answer_lines(doc)]
    assert lines[0].startswith("timing of scenario hand")
    assert lines[1].startswith("page16: +1 dependent load per page_zone() (1 -> 2); whole "
                               "workload: ")
    ref, p16 = (s["totals"] for s in doc["stages"])
    pct = 100 * (p16["lines"] - ref["lines"]) / ref["lines"]
    assert f"{pct:+.1f} % metadata lines touched" in lines[1]
    assert "L3 misses" in lines[1] and lines[-1] == "native ns: not measured"


@pytest.mark.parametrize("width", [80, 100])
def test_report_fits(doc, width, capsys):
    con = make_console(width=width)
    timing_out.render(doc, con)
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= width
    assert "…" not in out
    assert "page_zone: page_zone(), per operation" in out
    assert "Whole workload" in out


def test_plot_renders(doc, tmp_path):
    from memdesc.report.timing_plot import render_png

    png = render_png(doc)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "timing.png").write_bytes(png)


@pytest.mark.parametrize("argv, message", [
    (["timing", "{src}", "--stages", "page99"], "--stages"),
    (["timing", "{tmp}/absent.scenario"], "no such file or folder"),
    (["timing", "{src}", "--json", "{tmp}/no/such/dir/t.json"], "does not exist"),
    (["timing", "{src}", "--plot", "{tmp}/no/such/dir/t.png"], "does not exist"),
    (["timing", "{src}", "--cache", "L2=3M"], "NAME=SIZE/WAYS"),
    (["timing", "{src}", "--cache", "L1=32K/8/victim"], "cannot be a victim"),
    (["timing", "{src}", "--cache", "L2=1M/8/32"], "must not be smaller"),
    (["timing", "{src}", "--repeats", "0"], "--repeats"),
])
def test_bad_input_is_one_line(argv, message, tmp_path, capsys):
    src = tmp_path / "x.scenario"
    src.write_text("machine 1G\n")
    argv = [a.format(src=src, tmp=tmp_path) for a in argv]
    before = sorted(tmp_path.rglob("*"))
    assert cli.main(argv) == 2
    err = capsys.readouterr()
    assert err.out == "" and message in err.err and len(err.err.strip().splitlines()) == 1
    assert sorted(tmp_path.rglob("*")) == before


@pytest.fixture(scope="module")
def doc_native(doc):
    """The same document with native figures filled in (as timing_doc() writes them from
    a native_timing result): v6.18 80 ns per page_zone(), page16 96 ns."""
    import copy

    d = copy.deepcopy(doc)
    d["native"] = {"what": "native ns per operation", "repeats": 5, "interrupted_op_times": 3}
    for s, ns in zip(d["stages"], (80.0, 96.0), strict=True):
        for r in s["ops"]:
            r["native_ns"], r["native_ratio"] = ns, ns / 80.0
        s["totals"]["native_ns"] = sum(ns * r["count"] for r in s["ops"])
    return d


@pytest.mark.parametrize("width", [80, 100])
def test_report_with_native_fits(doc_native, width, capsys):
    timing_out.render(doc_native, make_console(width=width))
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= width
    assert "…" not in out                       # no cell cut: columns dropped instead
    assert "native: x1.20 ns" in out.replace("\n  ", " ")
    assert " 96.0 " in out and " 1.20 " in out
