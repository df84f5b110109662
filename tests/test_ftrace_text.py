"""Text trace readers: tracefs ``trace``/``trace_pipe``, ``trace-cmd report`` and ``perf script``
output of the same kmem events, on the real fixture captures and on tiny real outputs of all
three tools (tests/data/trace-small, tests/data/trace-lost)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from conftest import fixture_dir
from memdesc.cli import main
from memdesc.errors import InputError
from memdesc.ingest.ftrace import read_trace
from memdesc.ingest.ftrace_text import read_text
from memdesc.ingest.trace_events import (
    EVENT_CODE,
    EVENT_NAMES,
    GFP_NAMES_6_18,
    STRUCT_PAGE_SIZE,
    VMEMMAP_BASE,
)
from memdesc.ingest.trace_format import load_formats, print_flags_table

DATA = Path(__file__).parent / "data"
SMALL = DATA / "trace-small"
LOST = DATA / "trace-lost"


@functools.cache
def fixture_text(name: str):
    """The fixture's trace.txt.zst, read once per test session (tests do not modify it)."""
    return read_trace(fixture_dir(name) / "trace.txt.zst")


def event_counts(folder: Path) -> dict:
    """The fixture's event-counts.txt (totals, per CPU, histograms, first/last time)."""
    text = (folder / "event-counts.txt").read_text()
    out: dict = {"events": {}, "hist": {}}
    for m in re.finditer(r"^(\w+)\s+(\d+)\s+(\d+)\s+(\d+)$", text, re.M):
        out["events"][m[1]] = (int(m[2]), int(m[3]), int(m[4]))
    for m in re.finditer(r"^(\w+) (order|migratetype) histogram: (.*)$", text, re.M):
        out["hist"][(m[1], m[2])] = {int(k[2 if m[2] == "migratetype" else 1:]): int(v)
                                     for k, v in (kv.split("=") for kv in m[3].split())}
    m = re.search(r"first timestamp: ([\d.]+)\s+last timestamp: ([\d.]+)", text)
    out["first"], out["last"] = (round(float(m[1]) * 1e6) * 1000, round(float(m[2]) * 1e6) * 1000)
    return out


def check_against_event_counts(tr, folder: Path) -> None:
    """Everything event-counts.txt (the fixture's truth) says must hold for ``tr``."""
    truth = event_counts(folder)
    ev = tr.events
    for name, (total, cpu0, cpu1) in truth["events"].items():
        if name == "tracing_mark_write":
            cpus = tr.markers["cpu"]
            assert (len(cpus), int((cpus == 0).sum()), int((cpus == 1).sum())) == \
                (total, cpu0, cpu1)
            continue
        m = ev["event"] == EVENT_CODE[name]
        assert (int(m.sum()), int((m & (ev["cpu"] == 0)).sum()),
                int((m & (ev["cpu"] == 1)).sum())) == (total, cpu0, cpu1), name
    for (name, col), hist in truth["hist"].items():
        m = ev["event"] == EVENT_CODE[name]
        if name == "mm_page_free_batched":      # as printed, before the quirk fix-up
            m &= ~ev["dup_of_prev_free"]
            hist = {0: hist[0] - int(ev["dup_of_prev_free"].sum())}
        vals, counts = np.unique(ev["order" if col == "order" else "migratetype"][m],
                                 return_counts=True)
        assert {int(v): int(c) for v, c in zip(vals, counts, strict=True) if c} == \
            {k: v for k, v in hist.items() if v}, (name, col)
    times = np.concatenate([ev["time"], tr.markers["time"]])
    assert (round(times.min() / 1000) * 1000, round(times.max() / 1000) * 1000) == \
        (truth["first"], truth["last"])


@pytest.mark.parametrize("name", ["trace-pagecache", "trace-slab"])
def test_fixture_text_matches_event_counts(name):
    folder = fixture_dir(name)
    tr = fixture_text(name)
    assert tr.source_format == "tracefs-text"
    assert tr.skipped_lines == 0 and tr.lost == [] and tr.other_events == {}
    assert tr.header_entries[0] == tr.header_entries[1] == len(tr) + len(tr.markers["text"])
    check_against_event_counts(tr, folder)
    assert tr.markers["text"][0] == f"FIXTURE trace start out={name}"
    assert tr.markers["text"][-1] == "FIXTURE workload end"


def test_pagecache_quirks_free_batched():
    """Every batched free follows an mm_page_free of its pfn (README); checked here by a plain
    walk over the events, independent of the vectorised rule."""
    tr = fixture_text("trace-pagecache")
    ev = tr.events
    last: dict[int, tuple[int, int]] = {}
    expect_dup = np.zeros(len(tr), dtype=bool)
    expect_order = ev["order"].copy()
    for i, (e, pfn) in enumerate(zip(ev["event"].tolist(), ev["pfn"].tolist(), strict=True)):
        if e > 4:
            continue
        prev = last.get(pfn)
        if e == EVENT_CODE["mm_page_free_batched"] and prev and prev[0] == 1:
            expect_dup[i] = True
            expect_order[i] = prev[1]
        last[pfn] = (e, int(ev["order"][i]))
    assert np.array_equal(ev["dup_of_prev_free"], expect_dup)
    assert np.array_equal(ev["order"], expect_order)
    batched = ev["event"] == EVENT_CODE["mm_page_free_batched"]
    assert int(batched.sum()) == tr.quirks["free_batched_dup"] == 24_579
    assert tr.quirks["free_batched_orphan"] == 0
    # the batched frees of order-9 page cache folios printed order=0; now they carry 9
    assert int((ev["order"][batched] == 9).sum()) == 1009
    # counting each free once: mm_page_free alone, since every batched one is a duplicate
    assert int((ev["event"] == 1).sum() + (batched & ~ev["dup_of_prev_free"]).sum()) == 46_191


def test_slab_kfree_null_flagged():
    tr = fixture_text("trace-slab")
    ev = tr.events
    kfree = ev["event"] == EVENT_CODE["kfree"]
    assert int((kfree & (ev["ptr"] == 0)).sum()) == tr.quirks["kfree_null"] == 114_837
    assert np.array_equal(ev["is_null"], (ev["event"] >= 5) & (ev["ptr"] == 0))
    assert tr.snapshot_dir == fixture_dir("trace-slab") / "pre-snapshot"
    names = np.array(tr.strings)
    alloc = ev["event"] == EVENT_CODE["kmem_cache_alloc"]
    assert "dentry" in set(names[ev["cache"][alloc]])
    assert (ev["cache"][ev["event"] == EVENT_CODE["kmalloc"]] == -1).all()
    assert (ev["bytes_alloc"][alloc] >= ev["bytes_req"][alloc]).all()
    # README example line: kmalloc ... gfp_flags=GFP_KERNEL_ACCOUNT|__GFP_ZERO
    first_kmalloc = np.flatnonzero(ev["event"] == EVENT_CODE["kmalloc"])[0]
    assert int(ev["ptr"][first_kmalloc]) == 0xFFFF88810478C300
    assert int(ev["gfp"][first_kmalloc]) == 0x400CC0 | 0x100
    assert tr.strings[ev["call_site"][first_kmalloc]] == "alloc_pipe_info+0x5d"


def per_cpu_window(a, b, cpu):
    """Rows of a and b on ``cpu`` inside the time window both cover (1 µs inside)."""
    ta = a.events["time"][a.events["cpu"] == cpu]
    tb = b.events["time"][b.events["cpu"] == cpu]
    lo, hi = max(ta.min(), tb.min()) + 1000, min(ta.max(), tb.max()) - 1000

    def rows(tr):
        ev, names = tr.events, np.array(tr.strings + [""], dtype=object)
        m = (ev["cpu"] == cpu) & (ev["time"] >= lo) & (ev["time"] <= hi)
        cols = [ev[k][m] for k in ("event", "pid", "pfn", "order", "gfp", "migratetype",
                                   "ptr", "bytes_req", "bytes_alloc")]
        return list(zip(*[c.tolist() for c in cols], names[ev["cache"][m]],
                        names[ev["call_site"][m]], strict=True)), ev["time"][m]
    return rows(a), rows(b)


@pytest.mark.parametrize("other,dialect", [("trace-cmd-report.txt", "trace-cmd-report"),
                                           ("perf-script.txt", "perf-script")])
def test_three_tools_agree(other, dialect):
    """tracefs text, trace-cmd report and perf script of the same events read the same."""
    base = read_text(SMALL / "trace.txt")
    tr = read_text(SMALL / other)
    assert (base.source_format, tr.source_format) == ("tracefs-text", dialect)
    assert tr.skipped_lines == 0 and tr.other_events == {}
    for cpu in (0, 1):
        (ra, ta), (rb, tb) = per_cpu_window(base, tr, cpu)
        assert len(ra) > 200 and ra == rb
        assert np.abs(ta - tb).max() <= 1000      # µs printed; perf truncates, ftrace rounds
    if dialect == "trace-cmd-report":
        assert tr.markers["text"] == ["memdesc-gen start"]


def test_lost_markers_of_every_tool():
    pipe = read_text(LOST / "trace_pipe-lost.txt")
    assert [(x.cpu, x.count, x.where) for x in pipe.lost] == \
        [(0, 24661, "line 1"), (1, 149451, "line 294")]
    for lost in pipe.lost:       # time: the next event of that CPU
        ev = pipe.events
        first = ev["time"][ev["cpu"] == lost.cpu][0] if lost.cpu == 0 else None
        if first is not None:
            assert lost.time == first
    ow = read_text(LOST / "trace-overwrite.txt")
    assert [(x.cpu, x.count, x.where) for x in ow.lost] == [(1, -1, "line 305")]
    assert ow.header_entries == (533, 174645)
    assert any("174,645 written" in p for p in ow.problems())
    tc = read_text(LOST / "trace-cmd-report.txt")
    assert [(x.cpu, x.count) for x in tc.lost] == [(0, 24663), (1, -1)]
    perf = read_text(LOST / "perf-script.txt")
    text = (LOST / "perf-script.txt").read_text().splitlines()
    expect = [(i + 1, int(line.split()[-1])) for i, line in enumerate(text)
              if "PERF_RECORD_LOST" in line]
    assert [(int(x.where.split()[1]), x.count) for x in perf.lost] == expect
    assert all(x.time > 0 for x in perf.lost)
    assert len(perf) + len(expect) == len(text)
    assert sum(len(t.lost) for t in (pipe, ow, tc, perf)) == 10


def test_overruns_from_stats_files():
    tr = read_trace(SMALL)           # a folder: raw/ + formats/ + stats.cpuN.txt
    assert tr.overruns[0]["dropped_events"] == 1829 and tr.overruns[1]["dropped_events"] == 881
    assert any("dropped_events=1,829" in p for p in tr.problems())


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def write(tmp_path: Path, lines: list[bytes], name: str = "t.txt") -> Path:
    p = tmp_path / name
    p.write_bytes(b"".join(lines))
    return p


def test_garbled_line_error_and_lenient(tmp_path):
    lines = lines_of(SMALL / "trace.txt")
    lines.insert(100, b"this is not a trace line\n")
    lines[200] = lines[200].replace(b"order=0", b"order=zz")
    p = write(tmp_path, lines)
    with pytest.raises(InputError, match=r"line 101: not a trace line"):
        read_text(p)
    tr = read_text(p, lenient=True)
    assert tr.skipped_lines == 2 and tr.skipped_where[0].startswith("line 101")
    assert tr.skipped_where[1].startswith("line 201: bad field value")
    assert len(tr) == len(read_text(SMALL / "trace.txt")) - 1
    assert main(["trace-info", str(p)]) == 2
    assert main(["trace-info", "--lenient", str(p)]) == 0


def test_truncated_last_line(tmp_path):
    lines = lines_of(SMALL / "trace.txt")
    cut = lines[:300] + [lines[300][:60]]          # ends mid-line, no newline
    with pytest.raises(InputError, match=r"line 301: truncated last line"):
        read_text(write(tmp_path, cut))
    tr = read_text(write(tmp_path, cut, "u.txt"), lenient=True)
    assert tr.skipped_lines == 1
    assert len(tr) + len(tr.markers["text"]) == 300 - 12      # 12 header lines


def test_unknown_gfp_name(tmp_path):
    lines = lines_of(SMALL / "trace.txt")
    i = next(i for i, ln in enumerate(lines) if b"gfp_flags=GFP_KERNEL " in ln)
    lines[i] = lines[i].replace(b"gfp_flags=GFP_KERNEL ", b"gfp_flags=GFP_KERNEL|__GFP_BOGUS ")
    p = write(tmp_path, lines)
    with pytest.raises(InputError, match=rf"line {i + 1}: unknown gfp flag '__GFP_BOGUS'"):
        read_text(p)
    assert read_text(p, lenient=True).skipped_lines == 1


def test_blocks_and_zstd_do_not_change_result(tmp_path):
    ref = read_text(SMALL / "trace.txt")
    zst = tmp_path / "trace.txt.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress((SMALL / "trace.txt").read_bytes()))
    for tr in (read_text(SMALL / "trace.txt", block_bytes=700), read_text(zst)):
        assert all(np.array_equal(ref.events[k], tr.events[k]) for k in ref.events
                   if k not in ("cache", "call_site"))
        names = np.array(ref.strings)
        assert (names[ref.events["cache"][ref.events["cache"] >= 0]] ==
                np.array(tr.strings)[tr.events["cache"][tr.events["cache"] >= 0]]).all()
        assert tr.markers["text"] == ref.markers["text"]


def test_page_address_and_failed_allocation(tmp_path):
    """Kernels printing only page= (struct page address), and a failed allocation (page NULL:
    __alloc_pages_noprof() traces failures too)."""
    lines = lines_of(SMALL / "trace.txt")
    i = next(i for i, ln in enumerate(lines) if b"mm_page_alloc:" in ln)
    no_pfn = re.sub(rb" pfn=0x[0-9a-f]+", b"", lines[i])
    failed = re.sub(rb"page=[0-9a-f]+ pfn=0x[0-9a-f]+", b"page=0000000000000000 pfn=0x0",
                    lines[i])
    tr = read_text(write(tmp_path, [lines[i], no_pfn, failed]))
    pfn = int(re.search(rb"pfn=0x([0-9a-f]+)", lines[i])[1], 16)
    page = int(re.search(rb"page=([0-9a-f]+)", lines[i])[1], 16)
    assert page == VMEMMAP_BASE + STRUCT_PAGE_SIZE * pfn
    assert tr.events["pfn"].tolist() == [pfn, pfn, -1]
    assert tr.events["is_null"].tolist() == [False, False, True]
    assert tr.quirks["page_alloc_failed"] == 1


def test_pid_of_every_task_column_form(tmp_path):
    """common_pid from the task column before [CPU], hand-checked: tracefs ``TASK-PID`` (a
    comm with '-', spaces and digits; ``<idle>-0``), the record-tgid form ``TASK-PID
    (TGID)``, trace-cmd's ``INSTANCE: TASK-PID`` and perf script's ``TASK PID``; a line
    without one reads -1."""
    body = b"mm_page_free: page=ffffea0000004000 pfn=0x100 order=0\n"
    lines = [b"  kworker/u4:1-x 2-123     [001] d..1.    10.000001: " + body,
             b"          <idle>-0       [000] d.s2.    10.000002: " + body,
             b"            bash-4567    (   4500) [000] .....    10.000003: " + body,
             b"inst-b-7639:          gen.sh-7639  [001]  10.000004: " + body,
             b"          gen.sh  7890 [000]    10.000005:    kmem:" + body,
             b"[000]    10.000006: " + body]
    tr = read_text(write(tmp_path, lines))
    assert tr.events["pid"].tolist() == [123, 0, 4567, 7639, 7890, -1]


def test_gfp_table_is_the_kernels():
    """The built-in 6.18 table equals the one evaluated from the fixture's format file."""
    fmt = load_formats(fixture_dir("trace-slab") / "formats")
    table = print_flags_table(fmt.events["mm_page_alloc"].print_fmt, "gfp_flags")
    assert table == list(GFP_NAMES_6_18)
    assert dict(table)["GFP_KERNEL"] == 0xCC0          # __GFP_RECLAIM | __GFP_IO | __GFP_FS


# --- round trip: lines printed the way the kernel prints them parse back to the values ------

GFP = [n for n, _ in GFP_NAMES_6_18]
comm = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="[]"),
               min_size=1, max_size=15)
page_event = st.tuples(st.sampled_from([0, 1, 3, 4]), st.integers(0, (1 << 36) - 1),
                       st.integers(0, 10), st.integers(0, 4),
                       st.lists(st.sampled_from(GFP), min_size=0, max_size=3))
slab_event = st.tuples(st.sampled_from([5, 6, 7, 8]), st.integers(0, (1 << 64) - 1),
                       st.integers(1, 1 << 22), st.sampled_from(["dentry", "filp", "x-y_z"]),
                       st.lists(st.sampled_from(GFP), min_size=1, max_size=3))


def fmt_line(task, pid, cpu, ns, ev) -> tuple[str, dict]:
    t = (ns + 500) // 1000                      # the kernel prints rounded µs
    head = f"{task:>16}-{pid:<7} [{cpu:03d}] d..2. {t // 10**6:5d}.{t % 10**6:06d}: "
    code = ev[0]
    name = EVENT_NAMES[code]
    if code <= 4:
        _, pfn, order, mt, gfp = ev
        body = f"page={VMEMMAP_BASE + 64 * pfn:016x} pfn=0x{pfn:x} order={order}"
        if code in (0, 3, 4):
            body += f" migratetype={mt}"
        if code == 0:
            body += f" gfp_flags={'|'.join(gfp) or 'none'}"
        want = {"pfn": pfn, "order": order, "migratetype": mt if code != 1 else -1}
    else:
        _, ptr, size, cache, gfp = ev
        body = f"call_site=foo+0x1/0x20 ptr={ptr:016x}"
        if code in (5, 6):
            body += f" name={cache}"
        if code in (5, 7):
            body += f" bytes_req={size} bytes_alloc={size} gfp_flags={'|'.join(gfp)} node=-1"
        want = {"ptr": ptr, "bytes_req": size if code in (5, 7) else -1}
    if code in (0, 5, 7):
        want["gfp"] = 0
        for g in gfp:
            want["gfp"] |= dict(GFP_NAMES_6_18)[g]
    want.update(event=code, cpu=cpu, time=t * 1000, pid=pid)
    return f"{head}{name}: {body}\n", want


@given(st.lists(st.tuples(comm, st.integers(1, 4_000_000), st.integers(0, 511),
                          st.integers(0, 10**12), st.one_of(page_event, slab_event)),
                min_size=1, max_size=40),
       st.integers(64, 4096))
def test_round_trip(tmp_path_factory, rows, block):
    lines, wants = zip(*[fmt_line(*r) for r in rows], strict=True)
    p = tmp_path_factory.mktemp("rt") / "t.txt"
    p.write_text("".join(lines))
    tr = read_text(p, block_bytes=block)
    assert len(tr) == len(rows)
    for i, want in enumerate(wants):
        for k, v in want.items():
            assert int(tr.events[k][i]) == v, (lines[i], k)
