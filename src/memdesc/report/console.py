"""Terminal output shared by every command: the width, tables fitted to it, and ``--brief``.

Width (:func:`terminal_width`): ``COLUMNS`` when set to a number (what the user asked for),
else the terminal's size when stdout is a terminal, else :data:`PIPE_WIDTH` (100) columns, so
piped output is the same wherever it runs (documented in README.md and docs/survey.md).

Tables (:func:`fit_table`): columns are described by :class:`Column` (header, an abbreviation,
a drop priority, whether the cell is prose that may wrap between words). The table is fitted
to the width in steps, each tried only when the previous one is still too wide:

1. full headers, headers wrapped between words onto two lines;
2. the abbreviated headers;
3. prose columns wrapped between words (never inside a word);
4. columns dropped, highest ``priority`` first (priority 0 is never dropped).

Cells never break inside a word or between a number and its unit: every cell is ``no_wrap``
(prose cells are wrapped here, by :mod:`textwrap`, which does not break at a non-breaking
space); :func:`qty` joins a number to its unit with U+00A0, printed as a plain space once
the lines are decided. A table that still does not fit
after every step is printed as is (rich cuts cells with an ellipsis, it does not fold them).

``--brief`` (:func:`add_brief_option`): a command prints only its answer, the few lines it
opens with, and nothing after them.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

#: Width of output that does not go to a terminal (pipes, files), and without COLUMNS.
PIPE_WIDTH = 100
#: Narrowest width honoured; below it tables are printed as at this width.
MIN_WIDTH = 40
#: Joins a number to its unit so that no wrapping separates them.
NBSP = "\u00a0"

Cell = str | Text | None


def terminal_width(stream: IO | None = None) -> int:
    """Columns to fit output to: ``COLUMNS``, else the terminal's width, else PIPE_WIDTH."""
    env = os.environ.get("COLUMNS", "").strip()
    if env.isdigit() and int(env) > 0:
        return max(MIN_WIDTH, int(env))
    stream = stream if stream is not None else sys.stdout
    try:
        if stream.isatty():
            return max(MIN_WIDTH, os.get_terminal_size(stream.fileno()).columns)
    except (AttributeError, OSError, ValueError):
        pass
    return PIPE_WIDTH


def make_console(stream: IO | None = None, width: int | None = None) -> Console:
    """A rich Console writing to ``stream`` (stdout) at ``width`` (terminal_width())."""
    stream = stream if stream is not None else sys.stdout
    return Console(file=stream, width=width or terminal_width(stream), highlight=False,
                   soft_wrap=False)


def qty(value: str, unit: str) -> str:
    """``"384.0", "MiB"`` -> ``"384.0 MiB"`` joined by a non-breaking space."""
    return f"{value}{NBSP}{unit}"


def size_text(b: int | float, signed: bool = False) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1, number and unit joined by
    a non-breaking space: ``"384.0 MiB"``, ``"+1.3 MiB"``, ``"-512 B"``."""
    sign = "+" if signed else ""
    a = abs(b)
    for div, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if a >= div:
            return qty(f"{b / div:{sign},.{2 if div >= 2**30 else 1}f}", unit)
    return qty(f"{b:{sign},.0f}", "B")


def percent_text(p: float | None, signed: bool = True, digits: int = 1) -> str:
    """``"+60.9 %"`` (number and sign joined to the unit), ``"—"`` for None."""
    if p is None:
        return "—"
    return qty(f"{p:{'+' if signed else ''}.{digits}f}", "%")


def add_brief_option(parser: argparse.ArgumentParser) -> None:
    """The ``--brief`` convention: print only the answer (the opening lines)."""
    parser.add_argument("--brief", action="store_true",
                        help="print only the answer (the first lines of the report)")


@dataclass(frozen=True)
class Column:
    """One column of a fitted table.

    ``priority`` 0: never dropped; higher numbers are dropped first when the table is too wide.
    ``wrap``: the cells are prose and may wrap between words (others stay on one line).
    """

    header: str
    justify: str = "right"
    short: str | None = None
    priority: int = 0
    wrap: bool = False
    style: str | None = None
    #: prose columns are not squeezed below this many cells (a column is dropped instead)
    min_wrap: int = 18


def _text(cell: Cell) -> Text:
    if cell is None:
        return Text("")
    return cell.copy() if isinstance(cell, Text) else Text(cell)


def _longest_word(s: str) -> int:
    return max((cell_len(w) for w in s.split()), default=0)


def _plain_spaces(t: Text) -> Text:
    """Once wrapping is decided (cells are no_wrap), print NBSP as an ordinary space so the
    output greps and copies like normal text."""
    if NBSP not in t.plain:
        return t
    out = t.copy()
    out.plain = t.plain.replace(NBSP, " ")
    return out


def _wrap(t: Text, width: int) -> Text:
    """Wrap ``t`` between words (spaces only: NBSP keeps a number with its unit)."""
    lines = []
    for para in t.plain.split("\n"):
        lines.extend(textwrap.wrap(para, width, break_long_words=False,
                                   break_on_hyphens=False) or [""])
    out = Text("\n".join(lines), style=t.style)
    return out


def _header(h: str, width: int | None) -> str:
    if width is None or cell_len(h) <= width:
        return h
    return "\n".join(textwrap.wrap(h, max(width, _longest_word(h)), break_long_words=False,
                                   break_on_hyphens=False))


def _natural(col: Column, header: str, cells: list[Text]) -> int:
    data = max((max((cell_len(x) for x in c.plain.split("\n")), default=0) for c in cells),
               default=0)
    return max(data, _longest_word(header))


def _minimum(col: Column, header: str, cells: list[Text]) -> int:
    """Narrowest the column gets: its longest word (prose) or its widest cell."""
    if not col.wrap:
        return _natural(col, header, cells)
    words = max([_longest_word(header)] + [_longest_word(c.plain) for c in cells])
    return min(_natural(col, header, cells), max(words, col.min_wrap))


def _build(cols: list[Column], idx: list[int], cells: list[list[Text] | None],
           styles: list[str | None], widths: dict[int, int], short: bool,
           title: str | None, limit: int, **kw) -> Table:
    t = Table(title=title, box=kw.pop("box", box.SIMPLE_HEAD), title_justify="left",
              **kw)
    if title:
        # A table at least as wide as its title (up to the width), so the title does not
        # wrap into a narrow column of words.
        t.min_width = min(cell_len(title), limit)
    for i in idx:
        c = cols[i]
        head = c.short if short and c.short else c.header
        t.add_column(_header(head, widths.get(i)), justify=c.justify, no_wrap=True,
                     overflow="ellipsis", style=c.style, max_width=widths.get(i))
    for row, style in zip(cells, styles, strict=True):
        if row is None:
            t.add_section()
            continue
        out = []
        for i in idx:
            cell = row[i]
            if cols[i].wrap and i in widths:
                cell = _wrap(cell, widths[i])
            out.append(_plain_spaces(cell))
        t.add_row(*out, style=style)
    return t


def table_width(table: Table, width: int = 10_000) -> int:
    """Columns ``table`` takes when given up to ``width``."""
    con = Console(width=width, file=open(os.devnull, "w"))  # noqa: SIM115 (closed below)
    try:
        return Measurement.get(con, con.options, table).maximum
    finally:
        con.file.close()


def fit_table(columns: Sequence[Column], rows: Sequence[Sequence[Cell] | None], width: int,
              title: str | None = None, styles: Sequence[str | None] | None = None,
              **table_kw) -> Table:
    """A rich Table of ``rows`` fitted to ``width`` columns (see the module docstring).

    ``rows`` holds one sequence of cells per row (str, rich Text or None), or None for a
    section line; ``styles`` an optional style per row.
    """
    cols = list(columns)
    cells: list[list[Text] | None] = [None if r is None else [_text(c) for c in r]
                                      for r in rows]
    for r in cells:
        if r is not None and len(r) != len(cols):
            raise ValueError(f"row of {len(r)} cells for {len(cols)} columns")
    sty = list(styles) if styles is not None else [None] * len(cells)
    idx = list(range(len(cols)))
    width = max(MIN_WIDTH, width)

    def col_cells(i: int) -> list[Text]:
        return [r[i] for r in cells if r is not None]

    def attempt(idx: list[int], short: bool, squeeze: bool) -> Table:
        widths: dict[int, int] = {}
        if squeeze:
            widths = _squeeze(cols, idx, col_cells, short, width, cells, sty, title, table_kw)
        return _build(cols, idx, cells, sty, widths, short, title, width, **dict(table_kw))

    while True:
        for short, squeeze in ((False, False), (True, False), (True, True)):
            t = attempt(idx, short, squeeze)
            if table_width(t) <= width:
                return t
        droppable = [i for i in idx if cols[i].priority > 0]
        if not droppable:
            return t
        drop = max(droppable, key=lambda i: (cols[i].priority, i))
        idx = [i for i in idx if i != drop]


def _squeeze(cols, idx, col_cells, short, width, cells, sty, title, table_kw) -> dict[int, int]:
    """Widths for the prose columns so the table fits ``width`` (not below a longest word)."""
    wrap = [i for i in idx if cols[i].wrap]
    if not wrap:
        return {}
    heads = {i: (cols[i].short if short and cols[i].short else cols[i].header) for i in idx}
    natural = {i: _natural(cols[i], heads[i], col_cells(i)) for i in wrap}
    minimum = {i: _minimum(cols[i], heads[i], col_cells(i)) for i in wrap}
    full = _build(cols, idx, cells, sty, {}, short, title, width, **dict(table_kw))
    excess = table_width(full) - width
    widths = dict(natural)
    # Take the excess from the widest prose column first, one column at a time.
    for i in sorted(wrap, key=lambda i: -natural[i]):
        if excess <= 0:
            break
        cut = min(excess, natural[i] - minimum[i])
        widths[i] = natural[i] - cut
        excess -= cut
    return widths


#: A number followed by a unit: the space between them must not break.
_NUMBER_UNIT = re.compile(r"(\d) (B|KiB|MiB|GiB|TiB|%|pages?|objects|slabs)(?=[\s),;:.]|$)")


def keep_units(text: str) -> str:
    """Join every number to the unit after it with a non-breaking space."""
    return _NUMBER_UNIT.sub(lambda m: f"{m[1]}{NBSP}{m[2]}", text)


def print_lines(lines: Sequence[str], console: Console) -> None:
    """Print plain lines (no markup), wrapped between words at the console's width (never
    between a number and its unit)."""
    for line in map(keep_units, lines):
        indent = len(line) - len(line.lstrip(" "))
        for part in textwrap.wrap(line, console.width, subsequent_indent=" " * (indent + 2),
                                  break_long_words=False, break_on_hyphens=False) or [""]:
            console.print(Text(part.replace(NBSP, " ")), soft_wrap=True)


def render_text(lines: Sequence[str], tables: Sequence[Table], width: int | None = None) -> str:
    """A report as text: ``lines`` (the answer, wrapped) then ``tables``, at ``width``
    columns (the terminal's by default)."""
    import io

    width = width or terminal_width()
    buf = io.StringIO()
    con = make_console(buf, width)
    print_lines(lines, con)
    for t in tables:
        con.print(t)
    return buf.getvalue().rstrip("\n").replace(NBSP, " ")
