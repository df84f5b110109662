"""path-status against Coccinelle (spatch) on tests/data/csrc/tree; skipped without spatch."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from memdesc.analysis.cocci_compare import compare, render
from memdesc.analysis.path_status import scan
from memdesc.ingest import coccinelle
from memdesc.ingest.ktree import KernelTree

TREE = Path(__file__).parent / "data" / "csrc" / "tree"

pytestmark = pytest.mark.skipif(coccinelle.spatch_version() is None,
                                reason="Coccinelle (spatch) is not installed")


@pytest.fixture(scope="module")
def result():
    tree = KernelTree.open(TREE)
    files = coccinelle.candidates(tree.root, tree.c_files())
    run = coccinelle.run_spatch(tree.root, files, jobs=1)
    return run, compare(scan(tree, jobs=1), run.sites, files, jobs=1)


def test_spatch_finds_the_locally_typed_uses(result):
    run, _ = result
    # Locals, parameters, an array element and a member of a struct defined in the same file.
    assert sorted(run.sites) == [("drivers/bar/bar.c", 12), ("fs/foofs/inode.c", 17),
                                 ("fs/foofs/inode.c", 21), ("fs/foofs/inode.c", 22),
                                 ("mm/util.c", 15), ("mm/util.c", 17), ("mm/util.c", 33)]


def test_every_disagreement_has_its_cause(result):
    _, cmp = result
    assert sum(cmp.both.values()) == 7 and sum(cmp.cocci_only.values()) == 0
    kinds = Counter((d.file, d.line, d.kind) for d in cmp.disagreements)
    assert kinds == Counter({
        ("fs/foofs/inode.c", 23, "member from an unread header"): 1,     # vmf->page->index
        ("fs/foofs/inode.c", 24, "member from an unread header"): 1,     # bh->b_page->index
        ("fs/foofs/inode.c", 26, "return type from an unread header"): 1,  # alloc_pages()
        ("fs/foofs/inode.c", 27, "macro expansion"): 1,                  # virt_to_page()
        ("mm/util.c", 24, "member named in macro arguments"): 1,         # list_for_each_entry
        ("mm/util.c", 27, "member named in macro arguments"): 1,         # container_of
        ("mm/util.c", 47, "member named in macro arguments"): 1,         # list_for_each_entry
    })
    assert cmp.agreement("drivers") == 1.0 and cmp.agreement() == pytest.approx(7 / 14)
    assert render(cmp)[0].split() == ["directory", "both", "ours", "only", "spatch", "only",
                                      "agree"]
