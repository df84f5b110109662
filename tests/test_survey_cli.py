"""`memdesc survey` end to end: outputs, --explain, partial snapshots, and bad input."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from conftest import fixture_dir
from memdesc.analysis.census import CLASSES
from memdesc.cli import main
from memdesc.stages import STAGE_IDS

PNG = b"\x89PNG\r\n\x1a\n"
STAGE_KEYS = {"id", "struct_page_bytes", "descriptor_bytes", "total_bytes", "percent_of_ram",
              "by_type"}


def test_survey_writes_json_plot_map_and_explains(tmp_path, capsys):
    snap = fixture_dir("snapshot-idle")
    out = tmp_path / "out"
    out.mkdir()
    rc = main(["survey", "--snapshot", str(snap), "--json", str(out / "s.json"),
               "--plot", str(out / "costs.png"), "--map", str(out / "map.png"),
               "--explain", "page16"])
    assert rc == 0
    text = capsys.readouterr().out
    for word in ("Physical memory by memdesc class", "uninitialised", "page16",
                 "Consistency with the kernel's counters", "--explain page16",
                 "struct slab fixed point", "(stable)"):
        assert word in text
    d = json.loads((out / "s.json").read_text())
    assert d["schema_version"] == 2
    assert d["pfns"] == 6_553_600 == sum(d["pages_by_class"].values())
    assert list(d["pages_by_class"]) == list(CLASSES)
    assert [s["id"] for s in d["stages"]] == list(STAGE_IDS)
    for s in d["stages"]:
        assert set(s) >= STAGE_KEYS
        assert s["total_bytes"] == s["struct_page_bytes"] + s["descriptor_bytes"] \
            == sum(s["by_type"].values())
    assert {c["name"] for c in d["consistency"]} >= {"anonymous", "slab", "free", "slab heads"}
    assert [b["zone"] for b in d["buddy_reconciliation"]] == ["DMA", "DMA32", "Normal"]
    assert d["kernel"] == "6.18.44-fc-v657" and d["skipped"] == []
    for name in ("costs.png", "map.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000
    assert sorted(p.name for p in out.iterdir()) == ["costs.png", "map.png", "s.json"]


def test_json_to_stdout_is_pure_json(capsys):
    rc = main(["survey", "--snapshot", str(fixture_dir("snapshot-idle-early")), "--json",
               "--stages", "v6.18,page8"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert [s["id"] for s in d["stages"]] == ["v6.18", "page8"]
    assert d["pages_by_class"]["uninitialised"] == 5_242_880


def test_folder_with_only_kpageflags_says_what_it_skipped(tmp_path, capsys):
    os.symlink(fixture_dir("snapshot-idle") / "kpageflags.bin.zst",
               tmp_path / "kpageflags.bin.zst")
    rc = main(["survey", "--snapshot", str(tmp_path), "--json", str(tmp_path / "s.json")])
    assert rc == 0
    text = capsys.readouterr().out
    skipped = [line for line in text.splitlines() if "skipped zoneinfo" in line]
    assert len(skipped) == 1
    d = json.loads((tmp_path / "s.json").read_text())
    assert d["skipped"] == ["zoneinfo", "iomem", "meminfo", "slabinfo", "buddyinfo",
                            "pagetypeinfo", "vmstat"]
    p = d["pages_by_class"]
    assert p["uninitialised"] == 0 and p["untyped"] >= 3_407_872
    assert p["free"] == 2_829_378 and d["consistency"] == []


def _no_outputs(tmp_path):
    return [p.name for p in tmp_path.rglob("*") if p.suffix in (".json", ".png", ".tmp")]


@pytest.mark.parametrize("case", ["empty", "truncated", "bad-zoneinfo", "corrupt-zstd",
                                  "stages", "json-dir", "descriptors"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    snap = tmp_path / "snap"
    snap.mkdir()
    src = fixture_dir("snapshot-idle")
    extra = []
    if case == "truncated":
        (snap / "kpageflags.bin").write_bytes(b"\0" * (8 * 1000 + 3))
    elif case == "bad-zoneinfo":
        shutil.copy(src / "kpageflags.bin.zst", snap)
        (snap / "zoneinfo.before").write_text("Node 0, zone Normal\n  pages free banana\n")
    elif case == "corrupt-zstd":
        data = bytearray((src / "kpageflags.bin.zst").read_bytes())
        for i in range(len(data) // 2, len(data) // 2 + 64):
            data[i] ^= 0x5A
        (snap / "kpageflags.bin.zst").write_bytes(bytes(data))
    elif case in ("stages", "json-dir", "descriptors"):
        os.symlink(src / "kpageflags.bin.zst", snap / "kpageflags.bin.zst")
        extra = {"stages": ["--stages", "page9"],
                 "json-dir": ["--json", str(tmp_path)],
                 "descriptors": ["--descriptors", str(tmp_path / "nope.toml")]}[case]
    out = tmp_path / "out"
    out.mkdir()
    rc = main(["survey", "--snapshot", str(snap), "--plot", str(out / "c.png"),
               "--map", str(out / "m.png"), *(extra or ["--json", str(out / "s.json")])])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("memdesc: ")
    assert _no_outputs(tmp_path) == []


@pytest.mark.live
def test_live_survey_when_root(capsys):
    if not os.access("/proc/kpageflags", os.R_OK):
        pytest.skip("/proc/kpageflags is not readable (needs root)")
    assert main(["survey", "--json", "--stages", "v6.18"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["kind"] == "live" and d["source"] == "/proc"
    assert sum(d["pages_by_class"].values()) == d["pfns"]


def test_an_output_that_fails_late_takes_the_others_with_it(tmp_path, capsys):
    """/proc passes the up-front checks as root (a writable folder) but refuses new files: the
    JSON written just before must not stay behind half a result set, and no traceback."""
    src = fixture_dir("snapshot-idle")
    rc = main(["survey", "--snapshot", str(src), "--json", str(tmp_path / "s.json"),
               "--map", "/proc/memdesc-map.png"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("memdesc: "), err
    assert list(tmp_path.iterdir()) == []


def test_outputs_under_proc_or_sys_are_refused_before_any_work(tmp_path, capsys):
    """Root passes os.access() on /proc; the tool must still never write there."""
    from memdesc.cli import main

    for bad in ("/proc/memdesc.json", "/sys/kernel/memdesc.png"):
        rc = main(["survey", "--snapshot", "bundled", "--json", bad])
        assert rc == 2
        assert "never writes" in capsys.readouterr().err
