"""MAINTAINERS lookup as scripts/get_maintainer.pl -f does it, on tests/data/csrc/tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from memdesc.errors import InputError
from memdesc.ingest.maintainers import Maintainers, parse

TREE = Path(__file__).parent / "data" / "csrc" / "tree"


@pytest.fixture(scope="module")
def m() -> Maintainers:
    return Maintainers.read(TREE / "MAINTAINERS", TREE)


def titles(m: Maintainers, path: str) -> list[str]:
    return [e.title for e in m.matches(path)]


def test_sections_and_their_fields(m):
    assert [e.title for e in m.entries] == [
        "BAR DRIVER", "FOOFS FILE SYSTEM", "FILESYSTEMS (VFS and infrastructure)",
        "MEMORY MANAGEMENT", "THE REST"]
    bar = m.entries[0]
    assert bar.maintainers == ["Bar Person <bar@example.org>"]
    assert bar.lists == ["bar-devel@example.org"] and bar.status == "Maintained"


def test_deepest_pattern_first(m):
    # fs/foofs/ (depth 2) beats fs/* (depth 2, but it needs as many '/' as the file: no match)
    assert titles(m, "fs/foofs/inode.c") == ["FOOFS FILE SYSTEM", "THE REST"]
    # fs/* matches a file directly under fs/ only
    assert titles(m, "fs/buffer.c") == ["FILESYSTEMS (VFS and infrastructure)", "THE REST"]


def test_wildcard_pattern_needs_the_same_number_of_slashes(m):
    assert titles(m, "include/linux/mm_types.h")[0] == "MEMORY MANAGEMENT"
    assert titles(m, "include/linux/sub/mm_x.h") == ["THE REST"]


def test_excluded_file_falls_through(m):
    assert titles(m, "drivers/bar/bar.c")[0] == "BAR DRIVER"
    assert titles(m, "drivers/bar/excluded.c") == ["THE REST"]


def test_n_regex_matches_anywhere_at_depth_zero(m):
    # N: pgtable (depth 0) outranks THE REST's "*" and "*/" (depth -1: they start with .*)
    assert titles(m, "arch/x86/mm/pgtable.c") == ["MEMORY MANAGEMENT", "THE REST"]


def test_directory_pattern_without_slash_gets_one(tmp_path):
    (tmp_path / "lib").mkdir()
    entries = parse(["LIB", "F:\tlib", "", "THE REST", "F:\t*", "F:\t*/"], tmp_path)
    assert entries[0].files[0][1] == "lib/"
    assert [e.title for e in Maintainers(entries).matches("lib/sub/x.c")][0] == "LIB"


def test_unreadable_maintainers_is_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="cannot read the MAINTAINERS file"):
        Maintainers.read(tmp_path / "MAINTAINERS")
