"""The fleet survey on real dask.distributed clusters on loopback: a LocalCluster with worker
processes (one killed mid-run), and a scheduler and two workers started by hand with the
`dask scheduler` / `dask worker` commands, as docs/fleet.md tells users to."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import fixture_dir
from memdesc.analysis.descriptors import load_descriptors
from memdesc.analysis.fleet_cache import ResultCache, recipe
from memdesc.analysis.fleet_engine import _local_cluster, survey_fleet
from memdesc.cli import main
from memdesc.ingest.fleet import find_snapshots

distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")

OURS = ("m01-idle", "m02-pagecache-4g", "m04-anon4k-3g", "m06-shmem-1g", "m08-slab-300k",
        "m10-fragmented")


def distinct_fleet(dest: Path, copies: int) -> Path:
    """``copies`` snapshot folders cycling over our six captures, each its own folder (files
    symlinked, uname.txt its own) so that every one is a task of its own."""
    src = fixture_dir("fleet") / "ours"
    for i in range(copies):
        folder = dest / f"s{i:02d}"
        folder.mkdir(parents=True)
        for f in (src / OURS[i % len(OURS)]).iterdir():
            if f.name != "uname.txt":
                (folder / f.name).symlink_to(f)
        (folder / "uname.txt").write_text(f"Linux host{i:02d} 6.18.44-fc-v669\n")
    return dest


def _sigign_mask() -> int:
    """This process's ignored-signal mask, from /proc/self/status."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))


def test_worker_killed_mid_run_costs_a_retry_not_the_run(tmp_path, monkeypatch):
    """The local engine's cluster of two worker processes, fed tasks of up to 4 snapshots
    (4, 4, 2); when the first result arrives, the worker holding a task in flight is killed
    (SIGKILL). Its nanny restarts it, the scheduler runs the lost task again, and every
    machine comes out exactly as in a threaded run (one snapshot per task)."""
    from distributed import Client

    monkeypatch.setattr("memdesc.analysis.fleet_engine.TASKS_PER_WORKER", 1)

    inputs, _ = find_snapshots([str(distinct_fleet(tmp_path / "fleet", 10))])
    descriptors = load_descriptors()
    nocache = ResultCache(None, recipe(descriptors.path))
    reference = survey_fleet(inputs, descriptors, nocache, workers=2, local="threads")
    with _local_cluster(2) as cluster, Client(cluster) as client:
        # The local engine's workers ignore SIGINT: a terminal's Ctrl-C is memdesc's to handle.
        assert set(client.run(lambda: signal.getsignal(signal.SIGINT)).values()) == \
            {signal.SIG_IGN}
        # ... as the kernel sees it (the disposition inherited from the fork server, which
        # Python's own handler table need not show): bit SIGINT - 1 of SigIgn
        assert all(mask >> (signal.SIGINT - 1) & 1
                   for mask in client.run(_sigign_mask).values())
        killed: dict[str, list] = {}

        def kill_one(_n: int) -> None:
            if killed:
                return
            busy = {w: keys for w, keys in client.processing().items() if keys}
            if not busy:
                return
            victim, keys = next(iter(busy.items()))
            pid = client.run(os.getpid, workers=[victim])[victim]
            os.kill(pid, signal.SIGKILL)
            killed[victim] = list(keys)

        run = survey_fleet(inputs, descriptors, nocache, scheduler=cluster.scheduler_address,
                        progress=kill_one)
        assert killed, "no worker was busy when the first result came back"
        lost = next(iter(killed.values()))

        def rerun(key: str) -> bool:
            """The task was in flight on the dead worker, then ran again to completion."""
            steps = [(a, b, stim) for k, a, b, _, stim, *_ in cluster.scheduler.story(key)]
            lost_at = next((i for i, (a, b, stim) in enumerate(steps) if (a, b) ==
                            ("processing", "released") and stim.startswith("handle-worker-"
                                                                           "cleanup")), None)
            return lost_at is not None and ("processing", "memory") in \
                [(a, b) for a, b, _ in steps[lost_at:]]
        assert any(rerun(k) for k in lost), [cluster.scheduler.story(k) for k in lost]
    assert run.failed == [] and reference.failed == []
    assert run.machines == reference.machines
    assert [m["host"] for m in run.machines] == [f"host{i:02d}" for i in range(10)]


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_hand_started_scheduler_and_two_workers_give_the_same_json(tmp_path, capsys):
    dask = Path(sys.executable).parent / "dask"
    if not dask.exists():
        pytest.skip(f"{dask} is not installed")
    fleet = fixture_dir("fleet")
    inputs = [str(fleet / "mansi"), f"{fleet}/ours/m0[12]*"]       # both layouts
    assert main(["fleet", "survey", *inputs, "--json", str(tmp_path / "local.json"),
                 "--no-cache"]) == 0
    sched_file = tmp_path / "scheduler.json"
    procs = [_start([str(dask), "scheduler", "--host", "127.0.0.1", "--port", "0",
                     "--no-dashboard", "--scheduler-file", str(sched_file)],
                    tmp_path / "scheduler.log")]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        procs += [_start([str(dask), "worker", "--scheduler-file", str(sched_file),
                          "--nthreads", "1", "--no-dashboard", "--name", f"w{i}"],
                         tmp_path / f"worker{i}.log") for i in (1, 2)]
        address = json.loads(sched_file.read_text())["address"]
        from distributed import Client
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        capsys.readouterr()
        assert main(["fleet", "survey", *inputs, "--scheduler", address, "--json",
                     str(tmp_path / "cluster.json"), "--no-cache"]) == 0
        err = capsys.readouterr().err
        assert f"4 surveyed (dask.distributed at {address})" in err
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    assert (tmp_path / "cluster.json").read_bytes() == (tmp_path / "local.json").read_bytes()


def test_unreachable_scheduler_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("memdesc.analysis.fleet_engine.CONNECT_TIMEOUT", 1)
    rc = main(["fleet", "survey", str(fixture_dir("fleet") / "ours" / "m01-idle"),
               "--scheduler", "tcp://127.0.0.1:9", "--no-cache", "--json",
               str(tmp_path / "f.json")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("memdesc: --scheduler tcp://127.0.0.1:9: no Dask scheduler answered "
                          "there (")
    assert not (tmp_path / "f.json").exists()
