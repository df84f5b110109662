"""report/console.py: terminal width, tables fitted to it, numbers never split from units."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from memdesc.report.console import (
    NBSP,
    PIPE_WIDTH,
    Column,
    fit_table,
    qty,
    table_width,
    terminal_width,
)


def _render(table, width: int) -> list[str]:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None).print(table)
    return buf.getvalue().splitlines()


COLS = [Column("stage", "left"), Column("struct page", short="page"),
        Column("memmap"), Column("total"), Column("saving vs v6.18", short="saving"),
        Column("largest descriptor types", "left", short="largest", priority=2, wrap=True),
        Column("% of RAM", short="%RAM", priority=1)]
ROWS = [["v6.18", qty("64", "B"), qty("384.0", "MiB"), qty("384.0", "MiB"),
         f"{qty('0.0', 'MiB')} ({qty('+0.0', '%')})", "", "1.562"],
        ["page16", qty("16", "B"), qty("96.0", "MiB"), qty("150.2", "MiB"),
         f"{qty('233.8', 'MiB')} ({qty('+60.9', '%')})",
         f"folio {qty('40.1', 'MiB')}, large_folio {qty('3.2', 'MiB')}, "
         f"slab {qty('2.0', 'MiB')}", "0.611"]]


def test_terminal_width_columns_env_wins(monkeypatch):
    monkeypatch.setenv("COLUMNS", "83")
    assert terminal_width(io.StringIO()) == 83


def test_terminal_width_piped_is_fixed(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert terminal_width(io.StringIO()) == PIPE_WIDTH == 100


def test_wide_table_keeps_every_column():
    t = fit_table(COLS, ROWS, 200)
    assert [c.header for c in t.columns][0] == "stage"
    assert len(t.columns) == len(COLS)
    assert "largest descriptor types" in {str(c.header) for c in t.columns}


@pytest.mark.parametrize("width", [80, 70, 120])
def test_fits_and_never_splits_a_number_from_its_unit(width):
    t = fit_table(COLS, ROWS, width)
    assert table_width(t) <= width
    text = "\n".join(_render(t, width))
    assert all(len(line) <= width for line in text.splitlines())
    # every quantity printed whole, on one line
    assert NBSP not in text                     # printed as plain spaces
    for q in ("384.0 MiB", "150.2 MiB", "233.8 MiB", "+60.9 %"):
        assert q in text
    for line in text.splitlines():
        assert not line.rstrip().endswith(("384.0", "150.2", "233.8"))
        assert "…" not in line


def test_at_60_columns_abbreviates_then_drops_by_priority():
    t = fit_table(COLS, ROWS, 60)
    heads = [str(c.header) for c in t.columns]
    assert "page" in heads and "struct page" not in heads       # abbreviated
    assert "%RAM" not in heads and "% of RAM" not in heads        # priority 1 dropped last...
    assert "stage" in heads and "total" in heads                 # priority 0 kept


def test_prose_wraps_between_words_only():
    t = fit_table(COLS[:1] + COLS[5:6], [r[:1] + r[5:6] for r in ROWS], 40)
    lines = _render(t, 40)
    text = "\n".join(lines)
    assert "folio 40.1 MiB," in text and "slab 2.0 MiB" in text
    for line in lines:
        assert not line.rstrip().endswith(("40.1", "3.2", "2.0"))


def test_row_of_wrong_length_is_refused():
    with pytest.raises(ValueError):
        fit_table(COLS, [["x"]], 80)


def test_size_and_percent_text_keep_units_attached():
    from memdesc.report.console import percent_text, size_text
    assert size_text(384 * 2**20) == "384.0\u00a0MiB"
    assert size_text(-1_300_000, signed=True) == "-1.2\u00a0MiB"
    assert size_text(3 * 2**30) == "3.00\u00a0GiB"
    assert size_text(512, signed=True) == "+512\u00a0B"
    assert percent_text(60.94) == "+60.9\u00a0%" and percent_text(None) == "—"
