"""The shape every analysis report prints in: the answer in a few lines first, then (unless
brief) a blank line, the tables fitted to the console's width, and the notes that explain them.
`memdesc simulate` and `memdesc timing` print through :func:`print_answer_then_tables`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from rich.console import Console
from rich.table import Table

from memdesc.report.console import make_console, print_lines


def print_answer_then_tables(answer: Sequence[str], tables: Callable[[int], Iterable[Table]],
                             notes: Callable[[], Sequence[str]],
                             console: Console | None = None, brief: bool = False) -> None:
    """Print ``answer``; unless ``brief``, a blank line, then ``tables(width)`` (each fitted to
    the console's width) and the ``notes()`` lines wrapped at that width."""
    con = console or make_console()
    print_lines(answer, con)
    if brief:
        return
    con.print()
    for table in tables(con.width):
        con.print(table)
    print_lines(notes(), con)
