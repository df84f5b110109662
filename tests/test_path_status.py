"""memdesc path-status on a small kernel-like tree written for the tests (tests/data/csrc/tree).

Every C line there that must count carries ``// expect: RULE...``; every other line must not
count: the tests compare the whole set, so a missed use and a same-named field on another
struct both fail.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from memdesc.analysis.path_rules import RULES, STEPS
from memdesc.analysis.path_status import attach_owners, progress_between, scan
from memdesc.cli import main
from memdesc.ingest.ktree import KernelTree

TREE = Path(__file__).parent / "data" / "csrc" / "tree"
_EXPECT = re.compile(r"expect:\s*(.*)$")


def expected(tree: Path) -> set[tuple[str, int, str]]:
    out = set()
    for path in sorted(tree.rglob("*.c")):
        rel = path.relative_to(tree).as_posix()
        for n, line in enumerate(path.read_text().splitlines(), 1):
            m = _EXPECT.search(line)
            if m:
                out.update((rel, n, rule) for rule in m.group(1).split())
    return out


@pytest.fixture(scope="module")
def status():
    st = scan(KernelTree.open(TREE), jobs=1)
    attach_owners(st)
    return st


def test_every_rule_finds_exactly_the_marked_lines(status):
    found = {(s.file, s.line, s.rule) for s in status.sites}
    want = expected(TREE)
    assert found - want == set(), "counted but not marked"
    assert want - found == set(), "marked but not counted"


def test_every_rule_has_a_positive_case_and_a_source():
    marked = {rule for _, _, rule in expected(TREE)}
    assert marked == {r.id for r in RULES}
    for rule in RULES:
        assert rule.source.split(":")[0] in ("seed", "mail", "LWN") and rule.text


def test_field_and_via_of_a_member_chain(status):
    site = next(s for s in status.sites if s.file == "fs/foofs/inode.c" and s.line == 24
                and s.rule == "2.mapping_index")
    assert (site.field, site.via) == ("index", "member buffer_head.b_page")
    assert site.code == "x += bh->b_page->index;\t\t// expect: 1.b_page 2.mapping_index " \
                        "3.desc_field 5.leaves_32"


def test_owners_from_the_tree_maintainers(status):
    assert status.owners["fs/foofs/inode.c"] == "FOOFS FILE SYSTEM"
    assert status.owners["mm/util.c"] == "MEMORY MANAGEMENT"
    assert status.owners["drivers/bar/bar.c"] == "BAR DRIVER"


def test_prefilter_off_gives_the_same_sites(status):
    loose = scan(KernelTree.open(TREE), jobs=1, prefilter=False)
    assert loose.sites == status.sites


def test_two_processes_give_the_same_sites(status):
    assert scan(KernelTree.open(TREE), jobs=2).sites == status.sites


def _edit(tree: Path, rel: str, old: str, new: str) -> None:
    p = tree / rel
    p.write_text(p.read_text().replace(old, new))


def test_progress_counts_removed_and_added_per_step(tmp_path, status):
    new = tmp_path / "new"
    shutil.copytree(TREE, new)
    # One page->mapping converted to a folio; one page->index added; lines shift by one.
    _edit(new, "fs/foofs/inode.c", "x += page->mapping != 0;",
          "x += folio->mapping != 0;\n\tx += page->index;")
    after = scan(KernelTree.open(new), jobs=1)
    rows, removed, added = progress_between(status, after)
    by = {r.step: r for r in rows}
    assert (by[2].removed, by[2].added) == (1, 1)
    assert (by[3].removed, by[3].added) == (1, 1)
    assert (by[1].removed, by[1].added, by[6].removed) == (0, 0, 0)
    assert {s.name for s in removed} == {"mapping"} and {s.name for s in added} == {"index"}


def test_cli_json_and_table(tmp_path, capsys):
    out = tmp_path / "ps.json"
    assert main(["path-status", str(TREE), "--json", str(out), "--by", "maintainer"]) == 0
    text = capsys.readouterr().out
    first = text.splitlines()[0]
    assert first.startswith("linux 9.1.0-test: ")
    assert max(len(line) for line in text.splitlines()) <= 80
    doc = json.loads(out.read_text())
    assert doc["tree"] == str(TREE.resolve())
    assert [s["id"] for s in doc["steps"]] == [s.id for s in STEPS]
    assert {"id", "title", "rule", "remaining"} <= set(doc["steps"][0])
    assert sum(s["remaining"] for s in doc["steps"]) == len(doc["sites"])
    site = doc["sites"][0]
    assert {"file", "line", "step", "field"} <= set(site)
    assert not Path(site["file"]).is_absolute()
    assert doc["maintainers"]["BAR DRIVER"]["lists"] == ["bar-devel@example.org"]


def test_cli_two_trees_and_plot(tmp_path, capsys):
    png = tmp_path / "ps.png"
    assert main(["path-status", str(TREE), str(TREE), "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    assert "0 sites removed and 0 added" in text.splitlines()[0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_not_a_kernel_tree_is_one_line(tmp_path, capsys):
    assert main(["path-status", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a kernel source tree" in err[0]


def test_unreadable_file_is_one_line(tmp_path, capsys):
    tree = tmp_path / "t"
    shutil.copytree(TREE, tree)
    (tree / "fs" / "foofs" / "gone.c").symlink_to(tmp_path / "nowhere.c")
    json_out = tmp_path / "out.json"
    assert main(["path-status", str(tree), "--json", str(json_out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gone.c: cannot read" in err[0]
    assert not json_out.exists()
