"""The survey in an 80- and a 120-column terminal, and piped: answer first, nothing wider
than the terminal, no number split from its unit (issue 13)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, fixture_dir
from memdesc.cli import main
from memdesc.report.console import PIPE_WIDTH

UNIT_SPLIT = re.compile(r"\d\s*$")      # a line ending in a number whose unit went below


def _survey(capsys, monkeypatch, columns: int | None, *extra: str) -> list[str]:
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", str(columns))
    rc = main(["survey", "--snapshot", str(fixture_dir("snapshot-idle")), *extra])
    assert rc == 0
    return capsys.readouterr().out.splitlines()


def _answer_rows(lines: list[str]) -> list[str]:
    return [ln for ln in lines if re.match(r"\s+(v6\.18|folio|dynamic|page32|page16|page8)\s",
                                           ln)]


@pytest.mark.parametrize("columns", [80, 120, None])
def test_fits_and_leads_with_the_answer(capsys, monkeypatch, columns):
    lines = _survey(capsys, monkeypatch, columns, "--explain", "page16")
    width = columns or PIPE_WIDTH
    assert max(len(ln) for ln in lines) <= width
    head = "\n".join(lines[:16])
    assert "in use" in head and "machine" in head
    assert len(_answer_rows(lines[:16])) == 6           # every stage within the first lines
    for ln in lines:
        if "MiB" in ln or "GiB" in ln or "KiB" in ln:
            assert not re.search(r"\d\n", ln)
    # a byte figure never ends a line while its unit starts the next one
    for a, b in zip(lines, lines[1:], strict=False):
        if re.search(r"\d$", a.rstrip()):
            assert not re.match(r"\s*(B|KiB|MiB|GiB|%)\b", b), (a, b)


def test_brief_prints_only_the_answer(capsys, monkeypatch):
    full = _survey(capsys, monkeypatch, 80)
    brief = _survey(capsys, monkeypatch, 80, "--brief")
    assert len(brief) < 25 and brief == full[:len(brief)]
    assert len(_answer_rows(brief)) == 6
    assert not any("Consistency" in ln for ln in brief)


def test_brief_json_is_unchanged(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["survey", "--snapshot", str(fixture_dir("snapshot-idle")), "--json",
                 "--brief"]) == 0
    assert json.loads(capsys.readouterr().out)["schema_version"] == 2


@pytest.mark.skipif(shutil.which("script") is None, reason="util-linux script(1) not installed")
@pytest.mark.parametrize("columns", [80, 120])
def test_real_terminal(columns):
    """Through a pseudo-terminal (script(1)) sized with stty, without COLUMNS."""
    snap = fixture_dir("snapshot-idle")
    cmd = (f"stty cols {columns} rows 50; {sys.executable} -c "
           f"'import sys; from memdesc.cli import main; "
           f"sys.exit(main([\"survey\", \"--snapshot\", \"{snap}\", \"--brief\"]))'")
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".venv" / "numba-cache"))
    r = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:]
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", r.stdout).replace("\r", "")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert max(len(ln) for ln in lines) <= columns
    assert len(_answer_rows(lines)) == 6
