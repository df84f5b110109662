"""``memdesc record --lookups``: the lookup events read from a real recording of this machine
(tests/data/record-lookups, README there), raw and text alike, turned into access-accounting
operations (memdesc.analysis.replay_lookups); and a live recording where tracefs is at hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from memdesc.analysis.replay_lookups import (
    LOOKUP_OPS,
    PER_EVENT,
    lookups_from_trace,
    resolve_pages,
    schedule,
)
from memdesc.errors import InputError
from memdesc.ingest.ftrace import read_trace
from memdesc.ingest.ftrace_text import read_text
from memdesc.ingest.trace_events import EVENT_CODE, LOOKUP_EVENTS, Trace, empty_columns
from memdesc.mm.access import OP_CLASS_ID
from test_ftrace_raw import assert_same_events
from test_record import top_level_state, tracefs_ok, tracefs_view  # noqa: F401 (fixture)

DATA = Path(__file__).parent / "data" / "record-lookups"
CLI = [sys.executable, "-c", "import sys; from memdesc.cli import main; sys.exit(main())"]
#: the lookup events of the recording, as trace-info counted them (README)
COUNTS = {"mm_filemap_add_to_page_cache": 132, "mm_filemap_delete_from_page_cache": 21,
          "mm_filemap_get_pages": 111, "mm_filemap_map_pages": 277, "mm_filemap_fault": 37,
          "mm_lru_insertion": 41_011, "mm_lru_activate": 9, "page_fault_user": 23_710,
          "page_fault_kernel": 17_449}
LOOKUP_CLASSES = ("page_zone", "page_to_nid", "page_folio", "folio_page", "page_flag_test",
                  "pt_walk", "pagecache_lookup")
#: the workload's 2 MiB file: two order-8 folios (dev 254:0, ino 0x2d00fe)
FILE_INO, HEADS = 0x2D00FE, (0x298500, 0x151B00)


@pytest.fixture(scope="module")
def rec():
    return read_trace(DATA)


@pytest.fixture(scope="module")
def lk(rec):
    return lookups_from_trace(rec)


def test_recording_counts_every_lookup_event(rec):
    counts = rec.counts()
    assert {k: counts[k] for k in COUNTS} == COUNTS
    assert len(rec) == 196_453 and rec.other_events == {} and rec.lost_total() == 0


def test_text_reads_the_same_events_as_raw(rec):
    """The tracefs text of the first 20,000 lines = the raw pages' first events, every column
    of the lookup events included (times: the text prints µs)."""
    text = read_text(DATA / "trace-head.txt.zst")
    n = len(text)
    assert n > 9_000 and np.isin(text.events["event"], LOOKUP_EVENTS).sum() == 9_787
    for k, col in text.events.items():
        if k not in ("time", "cache", "call_site"):
            assert np.array_equal(col, rec.events[k][:n]), k
    assert np.array_equal((rec.events["time"][:n] + 500) // 1000 * 1000, text.events["time"])


def test_workload_file_events_hand_checked(rec):
    """dd wrote the 2 MiB file as two order-8 folios, cat read it twice in 128 KiB read()s
    (ofs=0-131071 -> index 0..31), the second read activated both folios, rm deleted them."""
    ev = rec.events
    rows = np.flatnonzero(ev["ino"] == FILE_INO)
    names = [rec.event_names[c] for c in ev["event"][rows]]
    assert names == (["mm_filemap_add_to_page_cache"] * 2 + ["mm_filemap_get_pages"] * 32
                     + ["mm_filemap_delete_from_page_cache"] * 2)
    add = rows[:2]
    assert ev["pfn"][add].tolist() == list(HEADS) and ev["order"][add].tolist() == [8, 8]
    assert ev["index"][add].tolist() == [0, 256] and ev["dev"][add].tolist() == [254 << 20] * 2
    get = rows[2:34]
    assert ev["index"][get].tolist() == list(range(0, 512, 32)) * 2
    assert (ev["last_index"][get] - ev["index"][get]).tolist() == [31] * 32
    act = np.flatnonzero(ev["event"] == EVENT_CODE["mm_lru_activate"])
    assert [p for p in ev["pfn"][act].tolist() if p in HEADS] == list(HEADS)


def test_text_lines_hand_parsed(tmp_path):
    """Lines of the recording (and two variants): dev MAJ:MIN -> MKDEV, ofs -> index, the six
    lru flag characters -> trace_pagemap_flags() bits, a symbolic ip is not needed."""
    lines = [
        "  dd-1 [001] ..... 10.000001: mm_filemap_add_to_page_cache: dev 254:0 ino 2d00fe "
        "pfn=0x298500 ofs=1048576 order=8",
        "  cat-2 [000] ..... 10.000002: mm_filemap_get_pages: dev=254:0 ino=2d00fe "
        "ofs=131072-262143",
        "  sh-3 [000] ..... 10.000003: mm_filemap_fault: dev=8:17 ino=52c00 ofs=212992",
        "  py-4 [000] d..3. 10.000004: mm_lru_insertion: folio=ffffea000a491ac0 pfn=0x29246b "
        "lru=0 flags=Ma bd ",
        "  py-4 [000] d..3. 10.000005: mm_lru_insertion: folio=ffffea000a491a80 pfn=0x29246a "
        "lru=2 flags= f   B",
        "  sh-3 [001] d.... 10.000006: page_fault_kernel: address=0x7ffdc5aaf3e9 "
        "ip=_copy_to_user error_code=0x2",
        "  py-4 [000] d..3. 10.000007: mm_lru_insertion: folio=ffffea000a491a80 pfn=0x29246c "
        "lru=1 flags=Ma b  ",
        "  py-4 [000] d..3. 10.000008: mm_lru_insertion: folio=ffffea000a491a80 pfn=0x29246d "
        "lru=3 flags= f  d ",
    ]
    path = tmp_path / "t.txt"
    path.write_text("\n".join(lines) + "\n")
    ev = read_text(path).events
    assert ev["dev"].tolist()[:3] == [254 << 20, 254 << 20, (8 << 20) | 17]
    assert ev["ino"].tolist()[:3] == [0x2D00FE, 0x2D00FE, 0x52C00]
    assert ev["index"].tolist()[:3] == [256, 32, 52] and ev["last_index"][1] == 63
    assert ev["pfn"].tolist()[:1] + ev["pfn"].tolist()[3:5] == [0x298500, 0x29246B, 0x29246A]
    assert ev["lru_flags"].tolist()[3:5] + ev["lru_flags"].tolist()[6:] == [
        0x1 | 0x2 | 0x10 | 0x20, 0x4 | 0x40, 0x1 | 0x2 | 0x10, 0x4 | 0x20]
    assert ev["lru"].tolist()[3:5] + ev["lru"].tolist()[6:] == [0, 2, 1, 3]
    assert int(ev["address"][5]) == 0x7FFDC5AAF3E9 and ev["error_code"][5] == 2
    assert ev["order"][0] == 8 and ev["pfn"][5] == -1
    path.write_text(lines[3].replace("flags=Ma bd ", "flags=Mx bd ") + "\n")
    with pytest.raises(InputError, match="line 1: bad field value"):
        read_text(path)
    path.write_text(lines[1].replace(" ofs=131072-262143", "") + "\n")
    with pytest.raises(InputError, match="line 1: a field this event always carries"):
        read_text(path)


def test_lookup_counts_per_class(rec, lk):
    """Event-level operations follow LOOKUP_OPS exactly: one walk per fault, page_zone per
    LRU insertion and 2 per activation, page_to_nid per add/delete/insertion/activation."""
    c, n = lk.counts(), COUNTS
    assert c["pt_walk"] == n["page_fault_user"] + n["page_fault_kernel"] == 41_159
    assert c["page_zone"] == n["mm_lru_insertion"] + 2 * n["mm_lru_activate"] == 41_029
    assert c["page_to_nid"] == (n["mm_filemap_add_to_page_cache"] + n["mm_lru_insertion"]
                                + n["mm_filemap_delete_from_page_cache"]
                                + n["mm_lru_activate"]) == 41_173
    per_event = sum(s.count * n[name] for name, specs in LOOKUP_OPS.items() for s in specs
                    if s.per == PER_EVENT)
    assert len(lk) > per_event
    assert np.all(np.diff(lk.event) >= 0)
    assert set(np.unique(rec.events["event"][lk.event]).tolist()) == set(LOOKUP_EVENTS)


def test_large_folio_is_one_lookup(rec, lk):
    """Each 128 KiB read of the file looks up one folio (an order-8 folio spans 256 indices):
    the pfn is the folio's head, ``sub`` the page of the index in it."""
    ev = rec.events
    get = np.flatnonzero((ev["ino"] == FILE_INO)
                         & (ev["event"] == EVENT_CODE["mm_filemap_get_pages"]))
    pc = np.isin(lk.event, get) & (lk.op_class == OP_CLASS_ID["pagecache_lookup"])
    assert pc.sum() == 32
    assert lk.pfn[pc].tolist() == ([HEADS[0]] * 8 + [HEADS[1]] * 8) * 2
    assert lk.sub[pc].tolist() == list(range(0, 256, 32)) * 4
    assert lk.index[pc].tolist() == list(range(0, 512, 32)) * 2
    tests = np.isin(lk.event, get) & (lk.op_class == OP_CLASS_ID["page_flag_test"])
    assert tests.sum() == 32 * 3


def test_read_past_the_end_stops_at_the_hole(rec, lk):
    """Real reads of [0, 255] (1 MiB read()s of small files written in the trace): the
    batch ends at the first index the file has no folio for."""
    def lookups(i):
        m = (lk.event == i) & (lk.op_class == OP_CLASS_ID["pagecache_lookup"])
        return lk.index[m].tolist(), lk.pfn[m].tolist()
    assert lookups(106_078) == ([0], [0x2E4FF0])                      # a one-page file
    assert lookups(106_081) == ([0, 128, 136, 140, 141],              # orders 7, 3, 2, 0, 0
                                [0x3C4800, 0x279018, 0x1CDC50, 0x463162, 0x463163])
    assert lookups(106_090) == ([0], [0x2D4400])                      # one order-8 folio


def test_batch_cap_and_holes_hand_worked():
    """Mapping A (never added to in the trace): a read of [0, 99] looks up one folio_batch,
    31 order-0 folios of unknown pfn. Mapping B got an order-2 folio at index 4 (pfn 1000)
    and an order-0 one at 9 (pfn 2000): a read of [12, 13] finds nothing (its event still
    tests the flags once); a read of [4, 9] finds the first, then stops at the hole at 8
    (filemap_get_read_batch()); the fault-around of [0, 9] skips the holes: 2 folios,
    PageHWPoison() of their 5 pages; a fault at 9 finds pfn 2000, one at 8 looks up anyway."""
    names = ("mm_filemap_get_pages", "mm_filemap_add_to_page_cache",
             "mm_filemap_add_to_page_cache", "mm_filemap_get_pages", "mm_filemap_get_pages",
             "mm_filemap_map_pages", "mm_filemap_fault", "mm_filemap_fault")
    ev = empty_columns(len(names))
    ev["event"][:] = [EVENT_CODE[n] for n in names]
    ev["dev"][:] = 1
    ev["ino"][:] = [10] + [20] * 7
    ev["index"][:] = [0, 4, 9, 12, 4, 0, 9, 8]
    ev["last_index"][:] = [99, -1, -1, 13, 9, 9, -1, -1]
    ev["pfn"][1:3], ev["order"][1:3] = [1000, 2000], [2, 0]
    lk = lookups_from_trace(Trace(events=ev))
    pc = lk.op_class == OP_CLASS_ID["pagecache_lookup"]
    assert np.bincount(lk.event[pc], minlength=8).tolist() == [31, 1, 1, 0, 1, 2, 1, 1]
    assert (lk.pfn[pc & (lk.event == 0)] == -1).all()
    assert lk.index[pc & (lk.event == 0)].tolist() == list(range(31))
    assert lk.pfn[pc & (lk.event >= 1)].tolist() == [1000, 2000, 1000, 1000, 2000, 2000, -1]
    flags = lk.op_class == OP_CLASS_ID["page_flag_test"]
    # read: 2 per folio + folio_mark_accessed(); fault-around: 6 per folio + 1 per page
    assert np.bincount(lk.event[flags], minlength=8).tolist() == [63, 1, 1, 1, 3, 17, 2, 2]
    assert lk.pfn[flags & (lk.event == 5)].tolist() == ([1000] * 6 + [1000, 1001, 1002, 1003]
                                                        + [2000] * 6 + [2000])
    assert lk.mappings.tolist() == [[1, 10], [1, 20]]


def test_pages_resolved_until_deleted(rec):
    """resolve_pages(): index 300 of the file is page 44 of the second folio between its add
    and its delete, unknown before and after."""
    ev = rec.events
    rows = np.flatnonzero(ev["ino"] == FILE_INO)
    mapping_of = np.where(ev["ino"] == FILE_INO, 0, -1)
    add2, del2 = rows[1], rows[-1]
    q_ev = np.array([add2 - 1, add2 + 1, del2 - 1, del2 + 1])
    page, head = resolve_pages(ev, mapping_of, q_ev, np.zeros(4, np.int64),
                               np.full(4, 300, np.int64))
    assert page.tolist() == [-1, HEADS[1] + 44, HEADS[1] + 44, -1]
    assert head.tolist() == [-1, HEADS[1], HEADS[1], -1]


def test_schedule_places_lookups_between_ops(rec, lk):
    """before_op: the first replay operation (a page event) after the lookup's event."""
    op_event = np.flatnonzero(rec.events["event"] <= 4)[::5000]
    before = schedule(lk, op_event)
    for k in range(len(op_event) + 1):
        e = lk.event[before == k]
        if len(e):
            assert k == 0 or e.min() > op_event[k - 1]
            assert k == len(op_event) or e.max() < op_event[k]


def test_trace_info_counts_lookup_events():
    out = subprocess.run(CLI + ["trace-info", str(DATA), "--json"], capture_output=True,
                         text=True, timeout=300, check=True)
    counts = json.loads(out.stdout)["counts"]
    assert {k: counts[k] for k in COUNTS} == COUNTS
    text = subprocess.run(CLI + ["trace-info", str(DATA)], capture_output=True, text=True,
                          timeout=300, check=True).stdout
    assert "mm_filemap_delete_from_page_cache           21" in text
    table = [ln for ln in text.splitlines() if ln.startswith(("event ", "mm_", "page_", "k"))]
    assert len(table) == 19 and max(len(ln) for ln in table) <= 80


@pytest.mark.live
def test_live_record_with_lookups(tracefs_ok, tmp_path):  # noqa: F811 (pytest fixture)
    """A real recording: the lookup events are there, raw = text, the instance is gone and
    the top level of tracefs (the lookup systems' enables included) untouched."""
    with tracefs_view() as root:
        if not (root / "events" / "filemap" / "mm_filemap_get_pages").is_dir():
            pytest.skip("this kernel has no filemap tracepoints")
        systems = [root / "events" / s / "enable" for s in ("filemap", "pagemap", "exceptions")]

        def state() -> tuple:                    # other jobs' instances may come and go
            top = top_level_state(root)
            top.pop("instances")
            return top, [p.read_text() for p in systems]
        before = state()
        out = tmp_path / "rec"
        subprocess.run(CLI + ["record", "-o", str(out), "--lookups", "--no-snapshot",
                              "--buffer-kb", "8192", "--", "sh", "-c",
                              "cat /etc/os-release >/dev/null; "
                              "dd if=/dev/zero bs=1M count=1 of=/dev/null 2>/dev/null"],
                       capture_output=True, text=True, timeout=120, check=True)
        assert state() == before
    meta = json.loads((out / "meta.json").read_text())
    assert not Path(meta["instance"]).exists()          # the private instance is removed
    assert "page_fault_user" in meta["events"] and "mm_lru_insertion" in meta["events"]
    assert (out / "formats" / "pagemap.mm_lru_insertion.format").is_file()
    raw = read_trace(out)
    counts = raw.counts()
    assert counts["page_fault_user"] > 0 and counts["mm_filemap_get_pages"] > 0
    assert counts["mm_lru_insertion"] > 0
    if raw.lost_total() == 0:
        assert_same_events(raw, read_text(out / "trace.txt.zst"))
    assert len(lookups_from_trace(raw)) > 0


def test_replay_runs_the_lookups_at_every_stage(rec):
    """A replay with access accounting runs every lookup once per stage, between the right
    operations: per class as many operations as lookups_from_trace() made, at every stage;
    at v6.18 page_zone() reads page->flags (1 load, chain 1) and a flag test reads
    compound_head then the head's flags (2 loads) for every page the replay holds; the
    lookups change nothing the replay observes."""
    from memdesc.analysis.replay import load_replay_input, replay
    from memdesc.cli.options import stages_option
    from memdesc.mm import access
    from memdesc.mm.access import CT_CHAIN_MAX, CT_LOADS, CT_OPS

    stages = stages_option("all")
    inp = load_replay_input(rec, stages=stages)
    lk = inp.lookups.lookups
    got: dict[str, np.ndarray] = {}

    def sink(stage_id, mm):
        got[stage_id] = access.counters(mm)
    with_lookups = replay(inp, stages, "placement", 10, access_sink=sink)
    plain = replay(inp, stages, "placement", 10)
    assert set(got) == {s.id for s in stages}
    want = lk.counts()
    known = (lk.pfn >= 0) & (lk.pfn < inp.machine.nr_pfns)
    for sid, c in got.items():
        for name in LOOKUP_CLASSES:
            assert c[OP_CLASS_ID[name], CT_OPS] == want[name], (sid, name)
    v618 = got["v6.18"]
    for name, loads in (("page_zone", 1), ("page_to_nid", 1), ("page_flag_test", 2)):
        n = int((known & (lk.op_class == OP_CLASS_ID[name])).sum())
        assert v618[OP_CLASS_ID[name], CT_LOADS] == loads * n > 0, name
        assert v618[OP_CLASS_ID[name], CT_CHAIN_MAX] == 1
    assert with_lookups.identical_observables()
    for a, b in zip(with_lookups.runs, plain.runs, strict=True):
        assert a.final_buddyinfo == b.final_buddyinfo and a.mismatches == b.mismatches
        assert np.array_equal(a.nr_free, b.nr_free)
    # policy mode runs them too, on the pages where the emulator put the trace's allocations
    # (the trace's pfns are mostly free there: page_zone() would take the free-page path,
    # 2 loads, for about half of them)
    got.clear()
    replay(inp, stages[-1:], "policy", 10, access_sink=sink)
    c = got[stages[-1].id]
    assert [c[OP_CLASS_ID[n], CT_OPS] for n in LOOKUP_CLASSES] == [
        want[n] for n in LOOKUP_CLASSES]
    # ... and the trace's file/anon allocations are folios there (analysis.replay_folios):
    # page_zone() of one of their pages reads the memdesc word, then the descriptor (2
    # dependent loads at page8); the snapshot's pages stay 1 load (the Misc word)
    n = int((known & (lk.op_class == OP_CLASS_ID["page_zone"])).sum())
    assert 1.5 * n <= c[OP_CLASS_ID["page_zone"], CT_LOADS] <= 2 * n
    assert c[OP_CLASS_ID["page_zone"], CT_CHAIN_MAX] == 2
