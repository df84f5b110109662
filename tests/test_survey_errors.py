"""Bad procfs texts in a snapshot folder: one line naming the file and its folder, before any
work, nothing written (issue 13)."""

from __future__ import annotations

import pytest

from conftest import fixture_dir
from memdesc.cli import main


def _copy_snapshot(src, dest):
    dest.mkdir()
    for f in src.iterdir():
        if f.is_file():
            (dest / f.name).symlink_to(f) if f.name.startswith("kpage") else \
                (dest / f.name).write_bytes(f.read_bytes())
    return dest


@pytest.mark.parametrize(("name", "line", "garbage", "what"), [
    ("meminfo.before", 3, "MemAvailable 123 kB", "expected 'Key:  value [kB]'"),
    ("vmstat.after", 2, "nr_free_pages", "expected 'name value'"),
    ("buddyinfo.before", 1, "Node 0, zone DMA x", "expected"),
])
def test_garbled_procfs_file_names_file_line_and_folder(tmp_path, capsys, name, line, garbage,
                                                         what):
    snap = _copy_snapshot(fixture_dir("snapshot-idle-early"), tmp_path / "snap")
    lines = (snap / name).read_text().splitlines()
    lines[line - 1] = garbage
    (snap / name).write_text("\n".join(lines) + "\n")
    out = tmp_path / "s.json"
    rc = main(["survey", "--snapshot", str(snap), "--json", str(out)])
    cap = capsys.readouterr()
    assert rc == 2 and cap.out == ""
    assert cap.err.startswith(f"memdesc: {snap}/{name}:{line}: {what}"), cap.err
    assert cap.err.count("\n") == 1
    assert not out.exists()


def test_output_in_a_missing_folder_is_refused_before_any_work(tmp_path, capsys):
    """Issue 13: `--json /nonexistent/dir/x.json` created /nonexistent/dir/."""
    missing = tmp_path / "no" / "such"
    for opt, name in (("--json", "s.json"), ("--plot", "p.png"), ("--map", "m.png")):
        rc = main(["survey", "--snapshot", "bundled", opt, str(missing / name)])
        cap = capsys.readouterr()
        assert rc == 2 and cap.out == ""
        assert cap.err == (f"memdesc: {opt} {missing / name}: folder {missing} does not exist; "
                           "create it or give a file in an existing folder\n")
    assert not (tmp_path / "no").exists()
