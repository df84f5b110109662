"""The free-page tracking options of page8 side by side on a real trace (policy replay of
trace-pagecache): the list-order options agree with packed, bitmap's differences are
measured and named, slist's walks are counted; the report fits 80 columns; the plot."""

from __future__ import annotations

import pytest

from conftest import fixture_dir
from memdesc.analysis import ft_compare
from memdesc.analysis import replay as rp
from memdesc.ingest.ftrace import read_trace
from memdesc.report import ft_compare_out
from memdesc.stages import parse_stages


@pytest.fixture(scope="module")
def result() -> rp.ReplayResult:
    inp = rp.load_replay_input(read_trace(fixture_dir("trace-pagecache")))
    return rp.replay(inp, parse_stages("page8/*"), "policy", samples=12)


@pytest.fixture(scope="module")
def cmp(result) -> ft_compare.FtComparison:
    got = ft_compare.compare(result)
    assert got is not None
    return got


def test_every_page8_option_is_compared_with_packed(cmp):
    rows = {r.option: r for r in cmp.rows}
    assert set(rows) == {"packed", "inpage", "bitmap", "slist"}
    assert cmp.reference == "page8"
    assert rows["inpage"].identical and rows["slist"].identical
    assert not rows["bitmap"].identical
    assert rows["packed"].walks is None and rows["inpage"].walks is None
    walks, steps, longest, ops = rows["slist"].walks
    assert 0 < walks <= ops and longest <= steps and longest > 0
    assert rows["bitmap"].walks[2] > 0
    assert rows["packed"].side_bytes == 0 < rows["bitmap"].side_bytes < rows["slist"].side_bytes


def test_speed_is_the_better_of_two_loops(cmp, result):
    """Every option's loop ran twice (the replay's run, the first of which also loaded the
    kernels, and a re-run): page ops per second of the shorter loop, never of a longer one."""
    for r, run in zip(cmp.rows, result.runs, strict=True):
        assert 0 < r.seconds <= run.seconds and r.ops_per_s == cmp.ops / r.seconds


def test_report_answers_first_in_80_columns(cmp):
    text = ft_compare_out.table(cmp, width=80)
    lines = text.splitlines()
    assert lines[0].startswith("free-page tracking options of page8 side by side")
    assert "identical observables: inpage, slist" in text
    assert "bitmap: chooses blocks by address, not list order" in text
    assert max(len(line) for line in lines) <= 80
    brief = ft_compare_out.table(cmp, width=80, brief=True)
    assert text.startswith(brief) and "free blocks per order" not in brief


def test_plot_is_a_png(cmp):
    assert ft_compare_out.render_png(cmp)[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_comparison_without_two_options_of_a_stage():
    from memdesc.stages import get_stage
    assert ft_compare.groups_of([get_stage("page8"), get_stage("page16")]) is None
    assert ft_compare.groups_of(parse_stages("page16,page8/*")) == "page8"
