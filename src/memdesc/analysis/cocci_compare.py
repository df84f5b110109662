"""path-status against Coccinelle on one rule, ``struct page *p; p->mapping|index|private|lru``:
agreement per top-level directory and every disagreement with its cause.

Our side of the rule is the ``3.desc_field`` sites of those four fields written ``E->field`` or
``E.field`` (spatch's isomorphism ``E[i].f == (E+i)->f`` makes ``p->f`` match ``page[i].lru``);
members named inside ``list_for_each_entry()``/``container_of()`` arguments are not what the
SmPL pattern matches and are listed as disagreements of their own kind.
Sites are compared as (file, line) multisets.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from dataclasses import dataclass, field

from memdesc.analysis.path_status import Site, TreeStatus, build_index
from memdesc.ingest.coccinelle import FIELDS
from memdesc.ingest.csource import Interest, scan_source

RULE = "3.desc_field"


@dataclass(frozen=True)
class Disagreement:
    file: str
    line: int
    found_by: str      # "path-status" or "coccinelle"
    kind: str          # the cause, in a few words
    cause: str         # the cause for this site
    code: str = ""


@dataclass
class Comparison:
    both: Counter = field(default_factory=Counter)        # directory -> sites
    ours_only: Counter = field(default_factory=Counter)
    cocci_only: Counter = field(default_factory=Counter)
    disagreements: list[Disagreement] = field(default_factory=list)

    def agreement(self, directory: str | None = None) -> float:
        keys = [directory] if directory else set(self.both) | set(self.ours_only) | set(
            self.cocci_only)
        both = sum(self.both[k] for k in keys)
        total = both + sum(self.ours_only[k] + self.cocci_only[k] for k in keys)
        return both / total if total else 1.0

    def directories(self) -> list[str]:
        keys = set(self.both) | set(self.ours_only) | set(self.cocci_only)
        return sorted(keys, key=lambda k: (-(self.both[k] + self.ours_only[k]
                                             + self.cocci_only[k]), k))


def our_sites(status: TreeStatus) -> list[Site]:
    return [s for s in status.sites if s.rule == RULE and s.name in FIELDS]


def _top(path: str) -> str:
    return path.split("/", 1)[0] if "/" in path else "."


_OUR_CAUSES = {
    "member": ("member from an unread header",
               "object typed through {via}: its struct is declared in a header spatch does "
               "not read (local includes only)"),
    "macro": ("macro expansion", "object is the expansion of {via}; spatch does not expand "
                                 "macros"),
    "return": ("return type from an unread header",
               "object is the {via}, declared in a header spatch does not read"),
    "global": ("global from an unread header",
               "object is a global declared in a header spatch does not read"),
    "cast": ("cast", "object is a cast expression spatch did not type"),
}


def _our_cause(site: Site, given: set[str]) -> tuple[str, str]:
    """(kind, detail) of a site path-status counts and Coccinelle does not."""
    if site.op == "macro":
        return ("member named in macro arguments",
                f"{site.via}(..., {site.name}) names the member; not written p->{site.name}")
    if site.file not in given:
        return "file not given to spatch", "no ->field token in the file (prefilter)"
    if site.op == ".":
        return "'.' access", "a struct page object accessed with '.', not a pointer with '->'"
    if ", typedef " in site.via:
        return ("typedef from an unread header",
                f"object declared with {site.via.split(', ')[1]}, defined in a header spatch "
                "does not read")
    if site.file.endswith(".h"):
        return ("header", "in a header; spatch did not match it (it types a header's code "
                          "only with what the header itself declares)")
    kind, detail = _OUR_CAUSES.get(site.via.split(" ", 1)[0], (
        "spatch did not match the function",
        "object typed as a {via} here; spatch did not match in this function (a construct "
        "it could not parse, or an #if branch)"))
    return kind, detail.format(via=site.via)


def _cocci_cause(status: TreeStatus, path: str, line: int, data: bytes) -> tuple[str, str]:
    uses = [u for u in scan_source(data, status.index, path.rsplit("/", 1)[0],
                                   Interest(frozenset(FIELDS)))
            if u.kind == "field" and u.line == line]
    if not uses:
        return ("not in tree-sitter's parse",
                "no ->field access on this line in tree-sitter's parse (error recovery)")
    typed = [u for u in uses if u.base is not None]
    if typed:
        return "typed as another struct", f"path-status typed the object as {typed[0].base}"
    return "object not typed", f"path-status could not type the object: {uses[0].via}"


def compare(status: TreeStatus, cocci: Counter, given: list[str], jobs: int = 2) -> Comparison:
    """``cocci`` maps (file, line) to Coccinelle's matches; ``given`` lists the files it read."""
    given_set = set(given)
    ours = our_sites(status)
    # spatch's isomorphism E[i].f == (E+i)->f lets p->f match '.' accesses too.
    arrow = Counter((s.file, s.line) for s in ours if s.op in ("->", "."))
    result = Comparison()
    for key in arrow.keys() | cocci.keys():
        both = min(arrow[key], cocci[key])
        result.both[_top(key[0])] += both
    by_key: dict[tuple[str, int], list[Site]] = {}
    for s in ours:
        by_key.setdefault((s.file, s.line), []).append(s)
    for key, n in (arrow - cocci).items():
        for s in [x for x in by_key[key] if x.op in ("->", ".")][-n:]:
            _add(result, s, *_our_cause(s, given_set))
    for s in ours:
        if s.op == "macro":
            _add(result, s, *_our_cause(s, given_set))
    only_cocci = sorted((cocci - arrow).items())
    if only_cocci and status.index is None:  # a status read back from JSON
        status.index, _ = build_index(status.tree, status.tree.c_files(), jobs)
    for (path, line), n in only_cocci:
        data = status.tree.read(path)
        lines = data.split(b"\n")
        code = lines[line - 1].decode("utf-8", "replace").strip() if line <= len(lines) else ""
        kind, cause = _cocci_cause(status, path, line, data)
        for _ in range(n):
            result.cocci_only[_top(path)] += 1
            result.disagreements.append(Disagreement(path, line, "coccinelle", kind, cause,
                                                     code))
    result.disagreements.sort(key=lambda d: (d.file, d.line, d.found_by))
    return result


def _add(result: Comparison, site: Site, kind: str, cause: str) -> None:
    result.ours_only[_top(site.file)] += 1
    result.disagreements.append(Disagreement(site.file, site.line, "path-status", kind, cause,
                                             site.code))


def render(result: Comparison, width: int = 80) -> list[str]:
    """Agreement per directory, then every disagreement with its cause."""
    out = [f"{'directory':<16}{'both':>7}{'ours only':>11}{'spatch only':>13}{'agree':>8}"]
    for d in result.directories():
        out.append(f"{d:<16}{result.both[d]:>7}{result.ours_only[d]:>11}"
                   f"{result.cocci_only[d]:>13}{100 * result.agreement(d):>7.1f}%")
    out.append(f"{'all':<16}{sum(result.both.values()):>7}{sum(result.ours_only.values()):>11}"
               f"{sum(result.cocci_only.values()):>13}{100 * result.agreement():>7.1f}%")
    causes = Counter((d.found_by, d.kind) for d in result.disagreements)
    out.append("")
    out.append("Disagreements by cause:")
    for (who, cause), n in causes.most_common():
        out.append(f"  {n:>4}  only {who}: {cause}"[:width])
    out.append("")
    out.append("Every disagreement:")
    for d in result.disagreements:
        out.extend(textwrap.wrap(f"{d.file}:{d.line}: only {d.found_by}: {d.cause}", width,
                                 initial_indent="  ", subsequent_indent="      "))
    return out
