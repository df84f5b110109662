"""``memdesc snapshot save``: a real capture of this machine, and captures of a /proc-like
folder built from the real fixture files (so the failure paths can be exercised)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zstandard

from memdesc.cli import main
from memdesc.errors import InputError
from memdesc.ingest.kpageflags import flag_counts
from memdesc.ingest.procfs import parse_zoneinfo
from memdesc.ingest.save import WINDOW_FILES, save_snapshot
from memdesc.ingest.snapshot import KPAGE_FILES, PROCFS_FILES, open_snapshot
from test_ingest_snapshot import run_unprivileged, shared_tmp, whole  # noqa: F401 (fixture)

N_PFNS = 70_001        # a prefix of the real capture: small, odd, more than one chunk


@pytest.fixture(scope="module")
def fake_proc(tmp_path_factory) -> Path:
    """A folder laid out like /proc (kpageflags, kpagecount, kpagecgroup, meminfo, ...) holding
    the first N_PFNS PFNs and the .before text files of the real snapshot-idle capture."""
    from conftest import fixture_dir
    src = fixture_dir("snapshot-idle")
    proc = tmp_path_factory.mktemp("proc")
    for n in KPAGE_FILES:
        (proc / n).write_bytes(whole(src / f"{n}.bin.zst")[:N_PFNS].tobytes())
    for n in PROCFS_FILES:
        f = src / f"{n}.before" if (src / f"{n}.before").exists() else src / f"{n}.txt"
        shutil.copy(f, proc / n)
    return proc


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def check_saved(dest: Path, source_proc: Path | None) -> dict:
    """Checks every saved folder must pass; returns its meta.json."""
    meta = json.loads((dest / "meta.json").read_text())
    names = {p.name for p in dest.iterdir()}
    assert names == set(meta["files"]) | {"meta.json"}
    for fname, info in meta["files"].items():          # sha256 of each file as written
        data = (dest / fname).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (info["bytes"], info["sha256"])
    steps = [s["step"] for s in meta["steps"]]
    assert steps == ["start", "pfn_count_done", "before_read_begin", "before_read_end",
                     "kpage_begin", "kpage_end", "after_read_begin", "after_read_end", "written"]
    for clock in ("realtime_ns", "monotonic_ns"):
        t = [s[clock] for s in meta["steps"]]
        assert t == sorted(t)
    assert meta["kernel"] == os.uname().release and meta["memdesc_version"]
    assert dest.stat().st_mode & 0o777 == 0o777 & ~_umask()
    snap = open_snapshot(dest)
    assert snap.pfn_count == meta["pfn_count"] and snap.skipped == []
    for n in KPAGE_FILES:
        f = snap.kpage_path(n)
        content = b"".join(a[n].tobytes() for _, a in snap.chunks([n]))
        assert hashlib.sha256(content).hexdigest() == meta["files"][f.name]["content_sha256"]
        if source_proc is not None:
            assert content == (source_proc / n).read_bytes()
    for n in WINDOW_FILES:
        assert {f"{n}.before", f"{n}.after"} <= names
    parse_zoneinfo(snap.text("zoneinfo", "after"))
    if source_proc is not None:
        for n in PROCFS_FILES:
            assert snap.text(n) == (source_proc / n).read_text()
    assert sum(flag_counts(snap).values()) == snap.pfn_count
    return meta


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("compress", [True, False])
def test_save_from_proc_folder(tmp_path, fake_proc, compress):
    dest = tmp_path / "snap"
    ticks = []
    assert save_snapshot(dest, compress=compress, chunk_pfns=9_999, proc=fake_proc,
                         tick=ticks.append) == dest
    assert ticks == [9_999] * 7 + [8] and sum(ticks) == N_PFNS
    meta = check_saved(dest, fake_proc)
    assert meta["pfn_count"] == N_PFNS and meta["chunk_pfns"] == 9_999
    suffix = ".bin.zst" if compress else ".bin"
    assert {f"{n}{suffix}" for n in KPAGE_FILES} <= set(meta["files"])
    if compress:
        frame = (dest / "kpageflags.bin.zst").read_bytes()[:18]
        assert zstandard.get_frame_parameters(frame).content_size == 8 * N_PFNS
    assert leftovers(tmp_path) == ["snap"]


def test_save_refuses_existing_dir(tmp_path, fake_proc):
    dest = tmp_path / "snap"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep")
    with pytest.raises(InputError) as e:
        save_snapshot(dest, proc=fake_proc)
    assert str(e.value) == (f"{dest} already exists; snapshot save never overwrites: choose a "
                            "new folder")
    assert leftovers(dest) == ["mine.txt"] and leftovers(tmp_path) == ["snap"]


def test_save_failure_leaves_nothing(tmp_path, fake_proc):
    """A kpage file shorter than kpageflags (the machine changed under us) is one InputError
    line, and neither DIR nor a temporary folder remains."""
    proc = tmp_path / "proc"
    shutil.copytree(fake_proc, proc)
    os.truncate(proc / "kpagecount", 8 * 50_000)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError) as e:
        save_snapshot(out / "snap", proc=proc, chunk_pfns=20_000)
    assert str(e.value) == (f"{proc / 'kpagecount'}: ends after 50,000 PFNs, expected 70,001: "
                            "the file is truncated; copy or capture it again")
    assert leftovers(out) == []


def test_save_interrupted_leaves_nothing(tmp_path, fake_proc):
    def interrupt(n: int) -> None:
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        save_snapshot(tmp_path / "snap", proc=fake_proc, chunk_pfns=10_000, tick=interrupt)
    assert leftovers(tmp_path) == []
    with pytest.raises(InputError, match="--chunk-pfns must be a positive number"):
        save_snapshot(tmp_path / "snap", proc=fake_proc, chunk_pfns=0)
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(not Path("/proc/kpageflags").exists(), reason="no /proc/kpageflags here")
def test_save_not_root(shared_tmp):  # noqa: F811 (pytest fixture)
    dest = shared_tmp / "snap"
    r = run_unprivileged(f"""
        import sys
        from memdesc.cli import main
        sys.exit(main(["snapshot", "save", {str(dest)!r}]))
    """)
    assert r.returncode == 2 and r.stdout == ""
    # snapshot save has no --snapshot option: the message must not suggest one (issue 13)
    assert r.stderr == ("memdesc: snapshot save reads /proc/kpageflags, which only root may "
                        f"read: run it as root (e.g. sudo ./memdesc.sh snapshot save {dest})\n")
    assert "--snapshot" not in r.stderr
    assert leftovers(shared_tmp) == []


@pytest.mark.live
@pytest.mark.skipif(not os.access("/proc/kpageflags", os.R_OK), reason="/proc/kpageflags is "
                    "not readable (needs root)")
def test_save_live(tmp_path, capsys):
    """The real thing: capture this machine (reads 3 x 8 bytes per PFN) through the CLI."""
    dest = tmp_path / "live"
    assert main(["snapshot", "save", str(dest)]) == 0
    assert capsys.readouterr().err.endswith(f"memdesc: saved {dest}\n")
    meta = check_saved(dest, None)
    zones = parse_zoneinfo((dest / "zoneinfo.before").read_text())
    assert meta["pfn_count"] >= max(z.start_pfn + z.spanned for z in zones)
    assert meta["compression"].startswith("zstd")
    flags = np.concatenate([a["kpageflags"] for _, a in open_snapshot(dest).chunks()])
    assert len(flags) == meta["pfn_count"] and (flags != 0).any()


def test_save_where_no_folder_can_be_made_is_one_line(tmp_path, fake_proc):
    """DIR under a regular file (or in /proc): one InputError line, not a traceback."""
    (tmp_path / "afile").write_text("x")
    dest = tmp_path / "afile" / "snap"
    with pytest.raises(InputError) as e:
        save_snapshot(dest, proc=fake_proc)
    assert "\n" not in str(e.value) and str(dest) in str(e.value)
    assert leftovers(tmp_path) == ["afile"]
