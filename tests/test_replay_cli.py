"""`memdesc replay` / `trace-info` for a user: the answer first, --brief, 80 columns, a plot
whose coinciding stages are one line, Ctrl-C between blocks, and bad input as one line."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from conftest import fixture_dir
from memdesc.analysis import replay as rp
from memdesc.cli import main
from memdesc.ingest.ftrace import read_trace
from memdesc.report import replay_out
from memdesc.stages import get_stage


@pytest.fixture(scope="module")
def result() -> rp.ReplayResult:
    inp = rp.load_replay_input(read_trace(fixture_dir("trace-pagecache")))
    return rp.replay(inp, [get_stage("v6.18"), get_stage("folio"), get_stage("page8")],
                     samples=12)


def test_answer_first_and_brief(result):
    text = replay_out.table(result, width=80)
    lines = text.splitlines()
    assert lines[0].startswith("replay (placement) of ")
    head = "\n".join(lines[:8])
    assert "metadata at the end" in head and "page8 49.1 MiB" in head
    assert "kernel check start (event 30,943): by order exact in 3 of 3 zones" in head
    assert max(len(line) for line in lines) <= 80
    brief = replay_out.table(result, width=80, brief=True)
    assert text.startswith(brief) and "per stage" not in brief and len(brief.splitlines()) < 9


def test_plot_draws_coinciding_stages_as_one_line(result):
    png = replay_out.render_png(result)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    groups = replay_out._groups(result, [s.free_2m_blocks for s in result.series])
    assert groups == [(["v6.18", "folio", "page8"], 0)]
    assert replay_out._label(groups[0][0], 3) == "all 3 stages (identical)"
    meta = replay_out._groups(result, [s.total_bytes for s in result.series])
    assert meta == [(["v6.18", "folio"], 0), (["page8"], 2)]
    labels = [lab for _, lab in replay_out._phase_marks(
        result, result.inp.trace.events["time"], 0.0)]
    assert "write-2GiB" in labels and "cold-read" in labels
    assert not any("snapshot" in lab for lab in labels)


def test_replay_blocks_are_short_enough_for_ctrl_c(result):
    """The loop runs in blocks of rp.BLOCK_OPS ops and Python (and so SIGINT) gets control
    between them: each block takes well under a second."""
    inp = result.inp
    stamps = []
    rp.replay_stage(inp, get_stage("page8"), block=1 << 16,
                    progress=lambda n: stamps.append(time.monotonic()))
    assert len(stamps) >= len(inp.ops) // (1 << 16)
    assert np.diff(stamps).max() < 1.0
    assert rp.BLOCK_OPS <= 1 << 18


def test_too_many_samples_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["replay", str(fixture_dir("trace-pagecache")), "--samples", "10000000",
                 "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--samples 10,000,000: at most 10,000" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_trace_info_on_binary_junk_is_one_clear_line(tmp_path, capsys):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 40)
    assert main(["trace-info", str(junk)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"memdesc: {junk}: binary data, not a trace: give a recording "
                                "folder, raw per-CPU pages with formats/, or tracefs/trace-cmd"
                                "/perf script text"]
    bad = tmp_path / "bad.zst"
    bad.write_bytes(b"\x28\xb5\x2f\xfd" + b"\xff" * 60)
    assert main(["trace-info", str(bad)]) == 2
    assert "not a valid zstd file" in capsys.readouterr().err


def test_text_trace_still_reads(tmp_path):
    f = Path(tmp_path / "t.txt")
    f.write_text("# tracer: nop\n          <idle>-0       [001] d..2.  2504.253502: "
                 "mm_page_free: page=ffffea0004000000 pfn=0x100000 order=0\n")
    assert len(read_trace(f)) == 1
