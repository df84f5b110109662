"""The kernel's MAINTAINERS file: which entry (maintainers, list) takes a patch to a file.

Mirrors scripts/get_maintainer.pl (``-f FILE``): ``F:``/``X:`` patterns have ``.`` escaped,
``*`` turned into ``.*`` and ``?`` into ``.``; a pattern naming a directory gets a trailing
``/``; a pattern ending in ``/`` matches everything under it, any other pattern must match from
the start *and* have as many ``/`` as the file (file_match_pattern()). ``N:`` is a regular
expression searched anywhere in the path (depth 0). An entry with a matching ``X:`` is skipped.
Of the matching entries, the one whose pattern is deepest comes first (``value_pd``, with
``.*``-led patterns at -1); ties keep the file's order, where get_maintainer.pl's order is a
Perl hash's. ``K:`` (content keywords) is not read: it applies to patches, not files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from memdesc.errors import InputError

_TYPE_LINE = re.compile(r"^([A-Z]):\s*(.*)")
_LITERAL = re.compile(r"[\w-]+")


@dataclass
class Entry:
    """One MAINTAINERS section."""

    title: str
    line: int
    maintainers: list[str] = field(default_factory=list)
    lists: list[str] = field(default_factory=list)
    status: str = ""
    files: list[tuple[re.Pattern, str, int]] = field(default_factory=list)
    excludes: list[tuple[re.Pattern, str]] = field(default_factory=list)
    names: list[re.Pattern] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"title": self.title, "maintainers": self.maintainers, "lists": self.lists,
                "status": self.status}


def _pattern(value: str, root: Path) -> str:
    regex = value.replace(".", r"\.").replace("*", ".*").replace("?", ".")
    if not regex.endswith("/") and (root / value).is_dir():
        regex += "/"
    return regex


def file_match_pattern(path: str, regex: re.Pattern, raw: str) -> bool:
    """Mirrors get_maintainer.pl file_match_pattern()."""
    if not regex.match(path):
        return False
    return raw.endswith("/") or path.count("/") == raw.count("/")


def _top(regex: str) -> str:
    """The literal first path component of a pattern, or ``*`` when it has wildcards."""
    first = regex.split("/", 1)[0]
    return first if _LITERAL.fullmatch(first) else "*"


def _depth(raw: str) -> int:
    if raw.startswith(".*"):
        return -1
    return raw.count("/") + (0 if raw.endswith("/") else 1)


class Maintainers:
    """Parsed MAINTAINERS with a per-file lookup (:meth:`entry_for`)."""

    def __init__(self, entries: list[Entry]):
        self.entries = entries
        self._cache: dict[str, Entry | None] = {}
        self._by_top: dict[str, list[int]] = {}
        for i, e in enumerate(entries):
            tops = {_top(raw) for _, raw, _ in e.files}
            if e.names:
                tops.add("*")
            for t in tops:
                self._by_top.setdefault(t, []).append(i)

    @classmethod
    def read(cls, path: str | Path, root: str | Path | None = None) -> Maintainers:
        path = Path(path)
        root = Path(root) if root is not None else path.parent
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as e:
            raise InputError(f"{path}: cannot read the MAINTAINERS file ({e.strerror})") from None
        return cls(parse(lines, root))

    def matches(self, path: str) -> list[Entry]:
        """Every entry that takes ``path``, most specific first (get_maintainer.pl -f)."""
        depth: dict[int, int] = {}
        candidates = sorted(set(self._by_top.get(path.split("/", 1)[0], []))
                            | set(self._by_top.get("*", [])))
        for i in candidates:
            e = self.entries[i]
            if any(file_match_pattern(path, rx, raw) for rx, raw in e.excludes):
                continue
            for rx, raw, pd in e.files:
                if file_match_pattern(path, rx, raw):
                    depth[i] = pd
            for rx in e.names:
                if rx.search(path):
                    depth[i] = 0
        order = sorted(depth, key=lambda i: (-depth[i], i))
        return [self.entries[i] for i in order]

    def entry_for(self, path: str) -> Entry | None:
        """The most specific entry for ``path`` (the first one get_maintainer.pl prints)."""
        if path not in self._cache:
            found = self.matches(path)
            self._cache[path] = found[0] if found else None
        return self._cache[path]


def parse(lines: list[str], root: Path) -> list[Entry]:
    """Sections of MAINTAINERS: a title line followed by ``X:`` lines."""
    entries: list[Entry] = []
    current: Entry | None = None
    prev: tuple[str, int] | None = None
    for number, line in enumerate(lines, 1):
        m = _TYPE_LINE.match(line)
        if m is None:
            current = None
            if line.strip() and not line.startswith((" ", "\t")):
                prev = (line.strip(), number)
            continue
        if current is None:
            if prev is None:
                continue
            current = Entry(*prev)
            entries.append(current)
            prev = None
        _add(current, m.group(1), m.group(2).strip(), root)
    return entries


def _add(entry: Entry, kind: str, value: str, root: Path) -> None:
    if kind == "M":
        entry.maintainers.append(value)
    elif kind == "L":
        entry.lists.append(value.split()[0] if value else value)
    elif kind == "S":
        entry.status = value
    elif kind in ("F", "X"):
        regex = _pattern(value, root)
        try:
            compiled = re.compile(regex)
        except re.error:
            return
        if kind == "F":
            entry.files.append((compiled, regex, _depth(regex)))
        else:
            entry.excludes.append((compiled, regex))
    elif kind == "N":
        try:
            entry.names.append(re.compile(value, re.X))
        except re.error:
            return
