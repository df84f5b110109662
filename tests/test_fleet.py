"""`memdesc fleet survey` with the local Dask engine: inputs, same numbers as `memdesc survey`,
faults, cache, Ctrl-C, and the fleet's answer (the real cluster is in test_fleet_dask.py)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import REPO, fixture_dir
from memdesc.analysis.fleet import FleetTotals, GroupBy, fleet_answer, percentiles
from memdesc.cli import main
from memdesc.errors import InputError
from memdesc.ingest.fleet import find_snapshots

PNG = b"\x89PNG\r\n\x1a\n"
OURS = ("m01-idle", "m02-pagecache-4g", "m04-anon4k-3g", "m06-shmem-1g", "m08-slab-300k",
        "m10-fragmented")
#: The survey's JSON fields a fleet machine record carries unchanged.
SAME_FIELDS = ("kernel", "pfns", "ram_pages", "memmap_pages", "nr_cpus", "pages_by_class",
               "skipped")
STAGE_FIELDS = ("id", "struct_page_size", "total_bytes", "saving_bytes", "saving_percent",
                "percent_of_ram", "by_type", "in_use")


@pytest.fixture(scope="module")
def fleet_dir() -> Path:
    return fixture_dir("fleet")


def fleet_cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["fleet", "survey", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def link_fleet(dest: Path, sources: list[Path]) -> Path:
    """A fleet folder of symlinks to snapshot folders (a folder per source)."""
    dest.mkdir(parents=True, exist_ok=True)
    for i, src in enumerate(sources):
        (dest / f"s{i:03d}-{src.name}").symlink_to(src.resolve(), target_is_directory=True)
    return dest


def damaged_copy(src: Path, dest: Path, cut: bool) -> Path:
    """A copy of a snapshot folder whose kpageflags.bin.zst is cut in half or has 64 bytes
    flipped in its middle."""
    shutil.copytree(src, dest)
    path = dest / "kpageflags.bin.zst"
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    if cut:
        del data[len(data) // 2:]
    else:
        for i in range(len(data) // 2, len(data) // 2 + 64):
            data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    return dest


# --- inputs -----------------------------------------------------------------------------------

def test_find_snapshots_in_both_layouts(fleet_dir):
    found, unlisted = find_snapshots([str(fleet_dir)])
    assert unlisted == []
    assert [(Path(f.path).name, f.layout, f.host, f.label) for f in found] == [
        ("11-29-2026-15-42-36", "mansi", "host-v1", "host-v1"),
        ("11-29-2026-15-43-58", "mansi", "host-v2", "host-v2"),
        *[(n, "memdesc", "vm", n) for n in OURS]]
    assert found[0].taken == "2026-11-29T15:42:36"        # the folder name, machine local time
    assert found[3].taken == "2026-11-29T15:42:34Z"       # meta.json's first CLOCK_REALTIME


def test_globs_kpage_files_and_repeats(fleet_dir):
    found, _ = find_snapshots([f"{fleet_dir}/ours/m0*", f"{fleet_dir}/ours/m0*/",
                               str(fleet_dir / "mansi/host-v2/11-29-2026-15-43-58/kpageflags.gz")])
    assert [Path(f.path).name for f in found] == [
        "m01-idle", "m02-pagecache-4g", "m04-anon4k-3g", "m06-shmem-1g", "m08-slab-300k",
        "11-29-2026-15-43-58"]
    found, _ = find_snapshots([f"{fleet_dir}/**/kpageflags.gz"])
    assert [f.host for f in found] == ["host-v1", "host-v2"]


@pytest.mark.parametrize("arg, message", [
    ("missing", "does not exist; pass snapshot folders"),
    ("nothing*", ": the pattern matches nothing"),
    ("empty", ": no snapshot found (a snapshot folder holds kpageflags.bin"),
    ("file.txt", " is not a folder; pass snapshot folders"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, capsys, arg, message):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "file.txt").write_text("x")
    rc, out, err = fleet_cli(capsys, str(tmp_path / arg), "--json", str(tmp_path / "f.json"),
                             "--cache", str(tmp_path / "c"))
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file.txt"]


# --- the same numbers as `memdesc survey` ---------------------------------------------------------

def test_each_machine_equals_memdesc_survey_json(fleet_dir, tmp_path, capsys):
    """Per machine, the fleet's record holds the survey's own numbers, field for field."""
    rc, _, err = fleet_cli(capsys, str(fleet_dir), "--json", str(tmp_path / "f.json"),
                           "--no-cache")
    assert rc == 0, err
    fleet = json.loads((tmp_path / "f.json").read_text())
    assert len(fleet["machines"]) == 8 and fleet["failed"] == []
    for m in fleet["machines"]:
        assert main(["survey", "--snapshot", m["source"], "--json"]) == 0
        d = json.loads(capsys.readouterr().out)
        for k in SAME_FIELDS:
            assert m[k] == d[k], (m["source"], k)
        assert m["folio_orders"] == {k: d["folio_orders"][k]
                                     for k in ("units_by_order", "pages_by_order")}
        assert [{k: s[k] for k in STAGE_FIELDS} for s in d["stages"]] == \
            [{k: s[k] for k in STAGE_FIELDS} for s in m["stages"]]
        assert m["consistency"] == {c["name"]: c["status"] for c in d["consistency"]}
        assert m["kpageflags_only"] == (m["layout"] == "mansi")
    # The study's layout holds two of our captures again (same kpageflags): same classes.
    by_label = {m["label"]: m for m in fleet["machines"]}
    assert by_label["host-v1"]["pages_by_class"]["file"] == \
        by_label["m02-pagecache-4g"]["pages_by_class"]["file"]


# --- the fleet's answer -----------------------------------------------------------------------

def _machine(host: str, label: str, page16: float, page16_in_use: float) -> dict:
    """A hand-made machine record: 1,000 PFNs, two stages."""
    def stage(sid, total, saving, pct, iu_total, iu_saving, iu_pct):
        return {"id": sid, "total_bytes": total, "saving_bytes": saving, "saving_percent": pct,
                "by_type": {"memmap": total},
                "in_use": {"total_bytes": iu_total, "saving_bytes": iu_saving,
                           "saving_percent": iu_pct, "by_class": {"file": iu_total}}}
    return {"host": host, "label": label, "pfns": 1000, "ram_pages": 900, "memmap_pages": 1000,
            "kpageflags_only": False,
            "pages_by_class": {"free": 600, "file": 400},
            "folio_orders": {"units_by_order": [100, 50] + [0] * 17,
                             "pages_by_order": [100, 100] + [0] * 17},
            "stages": [stage("v6.18", 64_000, 0, 0.0, 32_000, 0, 0.0),
                       stage("page16", 64_000 - int(640 * page16), int(640 * page16), page16,
                             32_000 - int(320 * page16_in_use), int(320 * page16_in_use),
                             page16_in_use)]}


def test_fleet_totals_and_percentiles_by_hand():
    a, b = _machine("dc1-a", "web", 75.0, 50.0), _machine("dc2-b", "db", 25.0, -10.0)
    f = FleetTotals().add(a).add(b).to_dict()
    page16 = f["stages"][1]
    # 128,000 B today; saves 48,000 + 16,000 = 64,000 B: 50 %.
    assert (page16["total_bytes"], page16["saving_bytes"], page16["saving_percent"]) == \
        (64_000, 64_000, 50.0)
    # In use: 64,000 B today; saves 16,000 - 3,200 = 12,800 B: 20 %.
    assert page16["in_use"]["saving_bytes"] == 12_800
    assert page16["in_use"]["saving_percent"] == 20.0
    assert page16["saving_percent_percentiles"]["p50"] == 50.0          # mean of 25 and 75
    assert page16["in_use"]["saving_percent_percentiles"]["p10"] == pytest.approx(-4.0)
    assert f["pages_by_class"]["file"] == 800 and f["hosts"] == 2
    assert f["folio_orders"]["units_by_order"][:2] == [200, 100]
    # Mergeable: any grouping gives the same totals.
    assert FleetTotals().add(b).merge(FleetTotals().add(a)).to_dict()["stages"][1]["total_bytes"] \
        == 64_000
    assert percentiles([]) is None and percentiles([3.0])["p90"] == 3.0


def test_group_by_host_pattern_and_label():
    machines = [_machine("dc1-a", "web", 75.0, 50.0), _machine("dc1-b", "db", 65.0, 30.0),
                _machine("lab", "web", 25.0, -10.0)]
    groups = fleet_answer(machines, [], GroupBy.parse(r"host:^(dc\d+)-"))["groups"]
    assert [(g["key"], g["machines"]) for g in groups] == [("(no match)", 1), ("dc1", 2)]
    assert groups[1]["stages"][1]["saving_percent_percentiles"]["p50"] == 70.0
    groups = fleet_answer(machines, [], GroupBy.parse("label"))["groups"]
    assert [(g["key"], g["machines"]) for g in groups] == [("db", 1), ("web", 2)]
    for bad in ("rack", "host:(unclosed"):
        with pytest.raises(InputError, match="--group-by"):
            GroupBy.parse(bad)


def test_outputs_table_csv_plot_and_80_columns(fleet_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    rc, text, err = fleet_cli(capsys, str(fleet_dir), "--json", str(out / "f.json"),
                              "--csv", str(out / "m.csv"), "--plot", str(out / "f.png"),
                              "--group-by", "label:^(m\\d)", "--cache", str(tmp_path / "c"))
    assert rc == 0, err
    lines = text.splitlines()
    assert lines[0] == "memdesc fleet survey: 8 snapshots of 3 hosts (2 kpageflags-only), " \
                       "0 failed"
    assert lines[1].startswith("page16 saves ")
    assert max(len(line) for line in lines) <= 80
    for word in ("memory in use", "whole machine", "Fleet memory by class", "Folio pages by "
                 "order", "Groups (--group-by label:^(m\\d))", "m04-anon4k-3g", "host-v1*",
                 "* kpageflags-only"):
        assert word in text
    rows = list(csv.DictReader((out / "m.csv").open()))
    assert [r["label"] for r in rows][:3] == ["host-v1", "host-v2", "m01-idle"]
    d = json.loads((out / "f.json").read_text())
    assert [float(r["page16_in_use_saving_percent"]) for r in rows] == pytest.approx(
        [m["stages"][4]["in_use"]["saving_percent"] for m in d["machines"]], abs=1e-6)
    assert [g["key"] for g in d["groups"]] == ["(no match)", "m0", "m1"]
    assert d["schema_version"] == 1 and d["fleet"]["machines"] == 8
    assert (out / "f.png").read_bytes().startswith(PNG)
    assert sorted(p.name for p in out.iterdir()) == ["f.json", "f.png", "m.csv"]


def test_parquet_equals_csv(fleet_dir, tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed")
    rc, _, err = fleet_cli(capsys, f"{fleet_dir}/ours/m0[12]*", "--csv", str(tmp_path / "m.csv"),
                           "--parquet", str(tmp_path / "m.parquet"), "--no-cache")
    assert rc == 0, err
    table = pq.read_table(tmp_path / "m.parquet").to_pylist()
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert [r["page8_total_bytes"] for r in table] == [int(r["page8_total_bytes"]) for r in rows]


# --- faults -----------------------------------------------------------------------------------

def test_corrupt_and_truncated_snapshots_are_listed_and_the_run_goes_on(fleet_dir, tmp_path,
                                                                      capsys):
    fleet = link_fleet(tmp_path / "fleet", [fleet_dir / "ours" / n for n in OURS[:2]])
    damaged_copy(fleet_dir / "ours" / "m04-anon4k-3g", fleet / "x-corrupt", cut=False)
    damaged_copy(fleet_dir / "ours" / "m06-shmem-1g", fleet / "y-truncated", cut=True)
    rc, text, err = fleet_cli(capsys, str(fleet), "--json", str(tmp_path / "f.json"),
                              "--cache", str(tmp_path / "c"))
    assert rc == 0, err
    d = json.loads((tmp_path / "f.json").read_text())
    assert [m["label"] for m in d["machines"]] == ["m01-idle", "m02-pagecache-4g"]
    (corrupt, cut), = [d["failed"]]
    assert corrupt["source"].endswith("x-corrupt")
    assert "kpageflags.bin.zst: corrupt zstd data (" in corrupt["reason"]
    assert cut["reason"].endswith("kpageflags.bin.zst: the zstd data stops inside a frame: the "
                                  "file is truncated; copy or capture it again")
    assert "2 snapshots could not be surveyed (not in the numbers above):" in text
    assert d["fleet"]["failed"] == 2 and d["fleet"]["machines"] == 2


def test_nothing_surveyed_exits_2_and_writes_nothing(fleet_dir, tmp_path, capsys):
    bad = damaged_copy(fleet_dir / "ours" / "m01-idle", tmp_path / "fleet" / "bad", cut=True)
    rc, text, err = fleet_cli(capsys, str(bad.parent), "--json", str(tmp_path / "f.json"),
                              "--no-cache")
    assert rc == 2
    assert text.startswith("memdesc fleet survey: 0 snapshots of 0 hosts, 1 failed\n")
    assert "no snapshot could be surveyed" in err
    assert not (tmp_path / "f.json").exists()


def test_cache_rerun_redoes_only_what_is_missing(fleet_dir, tmp_path, capsys):
    fleet = link_fleet(tmp_path / "fleet", [fleet_dir / "ours" / n for n in OURS[:3]])
    cache = tmp_path / "cache"
    args = (str(fleet), "--json", str(tmp_path / "f.json"), "--cache", str(cache))
    rc, _, err = fleet_cli(capsys, *args)
    assert rc == 0 and "memdesc: 3 surveyed (dask threads" in err
    first = (tmp_path / "f.json").read_bytes()
    results = sorted((cache / "results").rglob("*.json"))
    assert len(results) == 3
    rc, _, err = fleet_cli(capsys, *args)
    assert "memdesc: 0 surveyed (no engine needed), 3 from the cache" in err
    assert (tmp_path / "f.json").read_bytes() == first
    results[0].unlink()                                   # as if interrupted before it
    rc, _, err = fleet_cli(capsys, *args)
    assert "memdesc: 1 surveyed (dask threads" in err and ", 2 from the cache" in err
    assert (tmp_path / "f.json").read_bytes() == first
    # A copy elsewhere has the same content hash: found in the cache without a survey.
    shutil.copytree(fleet_dir / "ours" / OURS[0], tmp_path / "copy" / "m01")
    rc, _, err = fleet_cli(capsys, str(tmp_path / "copy"), "--cache", str(cache))
    assert rc == 0 and "memdesc: 0 surveyed (no engine needed), 1 from the cache" in err
    # Another descriptor table changes the answer: nothing cached may be reused.
    from memdesc.analysis.descriptors import default_path
    table = tmp_path / "descriptors.toml"
    table.write_text(default_path().read_text().replace("bytes = 80\n", "bytes = 96\n", 1))
    rc, _, err = fleet_cli(capsys, *args, "--descriptors", str(table))
    assert rc == 0 and "memdesc: 3 surveyed (dask threads" in err
    assert json.loads((tmp_path / "f.json").read_text())["machines"][0]["stages"][2][
        "by_type"]["folio"] > json.loads(first)["machines"][0]["stages"][2]["by_type"]["folio"]


def _terminal_sigint() -> None:
    """The child's SIGINT as a terminal's foreground command has it: a test run that was
    itself started in the background of a shell (which ignores SIGINT there, and children
    inherit an ignored signal) must still see Ctrl-C reach the command."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("local", ["threads", "processes"])
def test_ctrl_c_stops_soon_and_leaves_no_half_written_output(fleet_dir, tmp_path, local):
    """Ctrl-C in a terminal (SIGINT to the whole process group) during the surveys: exit 130
    within seconds with one line, no worker traceback, no output file and no temporary file
    beside it, and every cache entry written is whole."""
    sources = [fleet_dir / "ours" / n for n in OURS] * 10
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    for i, src in enumerate(sources):          # distinct folders, so 60 distinct tasks
        (fleet / f"s{i:02d}").mkdir()
        for f in src.iterdir():
            (fleet / f"s{i:02d}" / f.name).symlink_to(f)
        (fleet / f"s{i:02d}" / "uname.txt").unlink()
        (fleet / f"s{i:02d}" / "uname.txt").write_text(f"Linux host{i} 6.18.44-fc-v669\n")
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from memdesc.cli import main; "
                             "sys.exit(main())", "fleet", "survey", str(fleet),
                             "--json", str(out / "f.json"), "--csv", str(out / "m.csv"),
                             "--cache", str(tmp_path / "cache"), "--local", local],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            start_new_session=True, preexec_fn=_terminal_sigint)
    deadline = time.monotonic() + 60
    cache = tmp_path / "cache" / "results"
    while time.monotonic() < deadline and not (cache.exists() and any(cache.rglob("*.json"))):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    t = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert time.monotonic() - t < 5
    assert err.decode().splitlines()[-1:] == ["memdesc: interrupted"]
    assert "Traceback" not in err.decode()
    assert list(out.iterdir()) == []
    entries = list((tmp_path / "cache").rglob("*"))
    assert not [p for p in entries if p.name.endswith(".tmp")]
    for p in cache.rglob("*.json"):
        assert json.loads(p.read_text())["summary"]["pfns"] == 6_553_600


# --- properties ---------------------------------------------------------------------------------


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(-50, 90),
                          st.floats(-50, 90)), min_size=1, max_size=8),
       st.integers(0, 8))
def test_totals_merge_in_any_grouping_equals_adding_one_by_one(specs, cut):
    """What a parallel reduction needs: sum(first part) merged with sum(rest) == sum(all)."""
    machines = [_machine(h, h, a, b) for h, a, b in specs]
    whole = FleetTotals()
    for m in machines:
        whole.add(m)
    left, right = FleetTotals(), FleetTotals()
    for m in machines[:cut]:
        left.add(m)
    for m in machines[cut:]:
        right.add(m)
    merged = right.merge(left).to_dict()
    expect = whole.to_dict()
    for s, e in zip(merged["stages"], expect["stages"], strict=True):
        assert (s["total_bytes"], s["in_use"]["saving_bytes"]) == \
            (e["total_bytes"], e["in_use"]["saving_bytes"])
        assert s["saving_percent_percentiles"] == e["saving_percent_percentiles"]
    assert merged["pages_by_class"] == expect["pages_by_class"]
    assert merged["folio_orders"] == expect["folio_orders"]
    assert (merged["machines"], merged["hosts"]) == (len(machines), len({h for h, *_ in specs}))


def test_batches_keep_every_worker_busy_to_the_end():
    """Snapshots go to dask.distributed up to BATCH_MAX (4) per task, as long as every worker
    still gets TASKS_PER_WORKER (8) tasks: 200 on 2 workers -> 50 tasks of 4; 40 -> 20 of 2;
    10 -> one each; in input order, every snapshot once."""
    from memdesc.analysis.fleet_engine import _Todo, batches

    def todo(n: int) -> list[_Todo]:
        return [_Todo(f"memdesc-survey-{i}", None, []) for i in range(n)]

    for n, workers, sizes in ((200, 2, [4] * 50), (40, 2, [2] * 20), (10, 2, [1] * 10),
                              (33, 1, [4] * 8 + [1]), (5, 0, [1] * 5)):
        got = batches(todo(n), workers)
        assert [len(b) for b in got] == sizes
        assert [t.key for b in got for t in b] == [f"memdesc-survey-{i}" for i in range(n)]


def test_gzip_inflates_the_same_with_zlib_ng_as_with_zlib(monkeypatch):
    """The study layout's kpageflags.gz reads (size and every PFN) the same through zlib-ng,
    the reader's inflater, as through the standard zlib, its fallback."""
    import zlib

    import numpy as np

    pytest.importorskip("zlib_ng", reason="zlib-ng is not installed (zlib is then the inflater)")
    from memdesc.ingest import kpagefile
    from memdesc.ingest.snapshot import open_folder

    folder = next((fixture_dir("fleet") / "mansi" / "host-v1").iterdir())

    def read() -> tuple[int, np.ndarray]:
        snap = open_folder(folder)
        return snap.pfn_count, np.concatenate([a["kpageflags"] for _, a in snap.chunks()])

    assert kpagefile.inflate.__name__ == "zlib_ng.zlib_ng"
    pfns, flags = read()
    monkeypatch.setattr(kpagefile, "inflate", zlib)
    pfns_zlib, flags_zlib = read()
    assert pfns == pfns_zlib == 6_553_600 and np.array_equal(flags, flags_zlib)
