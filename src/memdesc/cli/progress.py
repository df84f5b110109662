"""Progress display for long work: a rich bar on stderr, shown only after about a second."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn


class LazyProgress:
    """``with LazyProgress("classifying", total) as tick: tick(n)``.

    Nothing is drawn for work that ends within ``delay`` seconds or when stderr is not a
    terminal (then a single line is printed at the end of long work instead).
    """

    def __init__(self, description: str, total: int, unit: str = "PFNs", delay: float = 1.0):
        self.description, self.total, self.unit, self.delay = description, total, unit, delay
        self.done = 0
        self._bar: Progress | None = None
        self._task = None
        self._start = 0.0

    def __enter__(self) -> Callable[[int], None]:
        self._start = time.monotonic()
        return self.tick

    def tick(self, n: int) -> None:
        self.done += n
        late = time.monotonic() - self._start > self.delay
        if self._bar is None and sys.stderr.isatty() and late:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.completed:,}/{task.total:,} " + self.unit),
                                 TimeRemainingColumn(), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total,
                                            completed=self.done)
        elif self._bar is not None:
            self._bar.update(self._task, completed=self.done)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
        elapsed = time.monotonic() - self._start
        if exc[0] is None and elapsed > self.delay and not sys.stderr.isatty():
            print(f"memdesc: {self.description}: {self.done:,} {self.unit} in {elapsed:.1f} s",
                  file=sys.stderr)
