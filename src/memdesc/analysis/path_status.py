"""Where a kernel tree stands on the Path: every step's remaining sites, who owns them, and the
progress between two trees.

Two passes over the tree, each in parallel over files (``jobs`` processes, fork):

1. the *index*: struct members, typedefs, prototypes, globals and macros of every header that
   mentions ``page`` (:func:`memdesc.ingest.csource.index_header`);
2. the *scan*: every ``.c``/``.h`` file that passes :class:`Gate` is parsed and its typed uses
   are matched against :data:`memdesc.analysis.path_rules.RULES`.

The gate is a byte-level prefilter, never the finding itself: a file is parsed when it spells
``struct page``, names a call or struct the rules look for, or accesses a rule's field directly
on a name that the index types as ``struct page`` (a member, function, global or macro: in a
file that never spells ``struct page`` no local can hold one). ``prefilter=False`` parses every
file that mentions ``page``: the tests check that both give the same sites on their tree, and on
linux-source-6.12 no site of the unfiltered scan is in a file the gate skips.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from memdesc.analysis.path_rules import RULES, STEPS, Rule, descriptor, interest
from memdesc.errors import InputError
from memdesc.ingest.csource import Interest, Use, index_header, scan_source
from memdesc.ingest.ctypes_index import Decls
from memdesc.ingest.ktree import KernelTree
from memdesc.ingest.maintainers import Maintainers

#: Bytes a file must contain to be parsed (see the module docstring).
GATE = (b"page", b"Page")
IDENT = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")
_TAIL = re.compile(rb"[A-Za-z0-9_]+$")


@dataclass(frozen=True, slots=True)
class Site:
    """One remaining blocker: a use matched by a rule."""

    file: str
    line: int
    step: int
    rule: str
    kind: str
    name: str
    via: str
    descriptor: str | None
    code: str
    op: str = ""

    @property
    def field(self) -> str | None:
        return self.name if self.kind == "field" else None

    def key(self) -> tuple:
        """Identity across trees: line numbers move, the file, rule, name and code stay."""
        return (self.file, self.rule, self.name, " ".join(self.code.split()))


@dataclass
class ScanStats:
    files: int = 0
    parsed: int = 0
    bytes_parsed: int = 0
    headers_indexed: int = 0
    seconds: float = 0.0


@dataclass
class TreeStatus:
    """Result of :func:`scan` on one tree."""

    tree: KernelTree
    sites: list[Site]
    stats: ScanStats
    maintainers: Maintainers | None = None
    owners: dict[str, str] = field(default_factory=dict)
    index: Decls | None = None

    def remaining(self) -> dict[int, int]:
        counts = Counter(s.step for s in self.sites)
        return {step.id: counts.get(step.id, 0) for step in STEPS}

    def files_per_step(self) -> dict[int, int]:
        files: dict[int, set[str]] = {step.id: set() for step in STEPS}
        for s in self.sites:
            files[s.step].add(s.file)
        return {k: len(v) for k, v in files.items()}


def subsystem(path: str) -> str:
    """``fs/ext4``, ``mm``, ``include/linux``, ``drivers/gpu``: the first two folders."""
    parts = path.split("/")[:-1]
    return "/".join(parts[:2]) if parts else "(top)"


def match_rules(path: str, uses: Iterable[Use], lines: list[bytes],
                rules: tuple[Rule, ...] = RULES) -> list[Site]:
    """The sites in one file: each use against each rule (a use may block several steps)."""
    sites = []
    for use in uses:
        for rule in rules:
            if rule.matches(use, path):
                code = lines[use.line - 1].decode("utf-8", "replace").strip()[:120] \
                    if use.line <= len(lines) else ""
                sites.append(Site(path, use.line, rule.step, rule.id, use.kind, use.name,
                                  use.via, descriptor(path, use), code, use.op))
    return sites


# -- worker side: globals set before the pool forks ------------------------------------------
_TREE: KernelTree | None = None
_INDEX: Decls | None = None
_INTEREST: Interest | None = None


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the pool on Ctrl-C


@dataclass(frozen=True)
class Gate:
    """Which files are worth parsing (see the module docstring)."""

    strong: frozenset[bytes]
    prefixes: tuple[bytes, ...]
    sources: frozenset[bytes]
    access: re.Pattern
    enabled: bool = True

    @classmethod
    def build(cls, index: Decls, want: Interest, rules: tuple[Rule, ...], enabled: bool = True
              ) -> Gate:
        sources = page_sources(index)
        typedefs = {n for n in sources if n in index.typedefs}
        strong = set(want.calls) | typedefs | {"b_page"} | {
            t.split()[-1] for t in want.cast_targets} | {
            b.split()[-1] for r in rules if r.bases for b in r.bases}
        strong.discard("page")  # spelled as "struct page", checked first
        access = re.compile(rb"(?:->|\.)\s*(?:" + b"|".join(
            sorted(f.encode() for f in want.fields)) + rb")\b")
        return cls(frozenset(x.encode() for x in strong),
                   tuple(p.encode() for p in want.call_prefixes),
                   frozenset(x.encode() for x in sources), access, enabled)

    def passes(self, data: bytes) -> bool:
        if not any(g in data for g in GATE):
            return False
        if not self.enabled or b"struct page" in data:
            return True
        ids = set(IDENT.findall(data))
        if ids & self.strong or any(i.startswith(self.prefixes) for i in ids):
            return True
        if not ids & self.sources:
            return False
        for m in self.access.finditer(data):
            before = data[max(0, m.start() - 64):m.start()].rstrip()
            if before.endswith((b")", b"]")):
                return True  # f(...)->field, a[i]->field: let the parser tell
            tail = _TAIL.search(before)
            if tail is not None and tail.group() in self.sources:
                return True
        return False


_GATE: Gate | None = None


def _index_one(rel: str):
    try:
        data = _TREE.read(rel)
    except InputError as e:
        return rel, 0, str(e)
    if b"page" not in data:
        return rel, 0, None
    return rel, len(data), index_header(data)


def _scan_one(rel: str):
    try:
        data = _TREE.read(rel)
    except InputError as e:
        return rel, 0, str(e)
    if not _GATE.passes(data):
        return rel, 0, []
    uses = scan_source(data, _INDEX, os.path.dirname(rel), _INTEREST, _wants_decls(rel))
    return rel, len(data), match_rules(rel, uses, data.split(b"\n"))


def _wants_decls(rel: str, rules: tuple[Rule, ...] = RULES) -> bool:
    """Whether a ``decl`` rule applies to this file (then every declaration is reported)."""
    return any(r.kind == "decl" and (not r.under or rel.startswith(r.under))
               and not (r.outside and rel.startswith(r.outside)) for r in rules)


_CHUNK = 16


def _call_chunk(job: tuple[Callable, list[str]]) -> list:
    func, chunk = job
    return [func(item) for item in chunk]


def _parallel(func: Callable, items: list[str], jobs: int, tick: Callable[[int], None]
              ) -> Iterator:
    """``func`` over ``items`` in ``jobs`` forked processes, results as they come; Ctrl-C
    terminates the workers at once."""
    if jobs <= 1:
        for item in items:
            yield func(item)
            tick(1)
        return
    ctx = multiprocessing.get_context("fork")
    pool = ctx.Pool(jobs, initializer=_init_worker)
    try:
        # chunksize=1 keeps the iterator whose next() takes a timeout; the chunks are ours.
        results = pool.imap_unordered(_call_chunk, [(func, items[i:i + _CHUNK])
                                                    for i in range(0, len(items), _CHUNK)])
        while True:
            # Wake up often: a SIGINT that lands on one of the pool's threads only sets a flag
            # that the main thread acts on when it runs Python code again.
            try:
                done = results.next(timeout=0.1)
            except multiprocessing.TimeoutError:
                continue
            except StopIteration:
                break
            yield from done
            tick(len(done))
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _noop(_n: int) -> None:
    pass


def build_index(tree: KernelTree, files: list[str], jobs: int = 2,
                progress: Callable | None = None) -> tuple[Decls, int]:
    """The tree-wide declaration index from every header that mentions ``page``."""
    global _TREE
    _TREE = tree
    headers = [f for f in files if f.endswith(".h")]
    index, used = Decls(), 0
    with _progress(progress, "indexing headers", len(headers)) as tick:
        for rel, _size, decls in _parallel(_index_one, headers, jobs, tick):
            if isinstance(decls, str):
                raise InputError(decls)
            if decls is not None:
                used += 1
                index.merge(decls, os.path.dirname(rel))
    return index, used


def scan(tree: KernelTree, jobs: int = 2, progress: Callable | None = None,
         rules: tuple[Rule, ...] = RULES, prefilter: bool = True) -> TreeStatus:
    """Every rule's sites in ``tree``. ``progress(description, total)`` is a context manager
    that yields a ``tick(n)`` function (memdesc.cli.progress.LazyProgress)."""
    global _INDEX, _INTEREST, _TREE, _GATE
    start = time.perf_counter()
    files = tree.c_files()
    stats = ScanStats(files=len(files))
    _INDEX, stats.headers_indexed = build_index(tree, files, jobs, progress)
    _INTEREST, _TREE = interest(rules), tree
    _GATE = Gate.build(_INDEX, _INTEREST, rules, prefilter)
    sites: list[Site] = []
    with _progress(progress, f"scanning {tree.root.name}", len(files)) as tick:
        for _rel, size, found in _parallel(_scan_one, files, jobs, tick):
            if isinstance(found, str):
                raise InputError(found)
            if size:
                stats.parsed += 1
                stats.bytes_parsed += size
            sites.extend(found)
    sites.sort(key=lambda s: (s.step, s.file, s.line, s.rule, s.name))
    stats.seconds = time.perf_counter() - start
    return TreeStatus(tree, sites, stats, index=_INDEX)


class _NoProgress:
    def __enter__(self):
        return _noop

    def __exit__(self, *exc):
        return None


def _progress(factory: Callable | None, description: str, total: int):
    return factory(description, total) if factory is not None else _NoProgress()


def attach_owners(status: TreeStatus) -> None:
    """The MAINTAINERS entry (most specific, as get_maintainer.pl -f) of every file with
    sites, from the tree's own MAINTAINERS."""
    m = Maintainers.read(status.tree.root / "MAINTAINERS", status.tree.root)
    status.maintainers = m
    for path in sorted({s.file for s in status.sites}):
        entry = m.entry_for(path)
        status.owners[path] = entry.title if entry is not None else "(no entry)"


def group_counts(status: TreeStatus, by: str) -> dict[str, Counter]:
    """``{group: Counter(step -> sites)}`` for ``by`` in subsystem, maintainer, file."""
    key = {"subsystem": lambda s: subsystem(s.file),
           "maintainer": lambda s: status.owners.get(s.file, "(no entry)"),
           "file": lambda s: s.file}[by]
    groups: dict[str, Counter] = {}
    for s in status.sites:
        groups.setdefault(key(s), Counter())[s.step] += 1
    return groups


@dataclass
class StepProgress:
    step: int
    old: int
    new: int
    removed: int
    added: int


def progress_between(old: TreeStatus, new: TreeStatus
                     ) -> tuple[list[StepProgress], list[Site], list[Site]]:
    """Per step, the sites of ``old`` gone from ``new`` and the new ones, matched by
    :meth:`Site.key` (same file, rule, name and code line; line numbers may move)."""
    old_keys = Counter((s.step,) + s.key() for s in old.sites)
    new_keys = Counter((s.step,) + s.key() for s in new.sites)
    gone, came = old_keys - new_keys, new_keys - old_keys
    removed = _take(old.sites, gone)
    added = _take(new.sites, came)
    rows = []
    old_n, new_n = old.remaining(), new.remaining()
    rem_n, add_n = Counter(s.step for s in removed), Counter(s.step for s in added)
    for step in STEPS:
        rows.append(StepProgress(step.id, old_n[step.id], new_n[step.id],
                                 rem_n.get(step.id, 0), add_n.get(step.id, 0)))
    return rows, removed, added


def _take(sites: list[Site], wanted: Counter) -> list[Site]:
    left = Counter(wanted)
    out = []
    for s in sites:
        k = (s.step,) + s.key()
        if left.get(k, 0) > 0:
            left[k] -= 1
            out.append(s)
    return out


def page_sources(index: Decls, base: str = "struct page") -> frozenset[str]:
    """Names through which a file can reach a ``base`` without spelling it: struct members,
    functions, globals and typedefs of that type, and macros whose bodies use one of those
    (to a fixed point). A file naming none of them, nor ``struct page``, is not parsed."""
    names = {n for n, t in index.typedefs.items() if index.resolve(t)[0] == base}
    for table in (index.functions, index.globals):
        names.update(n for n, t in table.items() if index.resolve(t)[0] == base)
    for members in index.structs.values():
        names.update(n for n, t in members.items() if index.resolve(t)[0] == base)
    bodies = {name: set(IDENT.findall(body.encode())) for name, (_, body) in index.macros.items()}
    names.update(name for name, (_, body) in index.macros.items() if "struct page" in body)
    changed = True
    while changed:
        changed = False
        encoded = {n.encode() for n in names}
        for name, idents in bodies.items():
            if name not in names and idents & encoded:
                names.add(name)
                changed = True
    return frozenset(names)
