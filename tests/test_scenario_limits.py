"""Bad scenario input is one line `FILE:LINE: what is wrong`, before any work (issue 13)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from conftest import examples
from memdesc.analysis.scenario import churn_ops, parse_scenario
from memdesc.analysis.scenario_limits import check_scenario, host_bytes
from memdesc.cli import main as cli_main
from memdesc.cli.options import check_output
from memdesc.errors import InputError
from memdesc.stages import STAGES, get_stage

ALL = list(STAGES)
PLENTY = 1 << 50            # host bytes: as if this computer could hold anything


def _check(text: str, stages=ALL, available=PLENTY) -> str:
    sc = parse_scenario(text, "s.scenario")
    with pytest.raises(InputError) as e:
        check_scenario(sc, stages, available=available)
    return str(e.value)


@pytest.mark.parametrize("text, line, words", [
    # what a stage can represent
    ("machine 512M cpus=100000\nvmalloc 1M", 1, ["NR_CPUS=8192"]),
    ("machine 512M cpus=1000\nvmalloc 1M", 1, ["page8", "at most 288 CPUs", "cpus=288"]),
    ("machine 2048x1G\nvmalloc 1M", 1, ["2048 nodes", "at most 1024"]),
    ("machine 64T\nvmalloc 1M", 1, ["65,537 GiB", "65,536 GiB (64 TiB)",
                                     "MAX_PHYSMEM_BITS 46"]),
    ("machine 2T\nvmalloc 1M", 1, ["28-bit", "page8", "per zone"]),
    # requests larger than the machine
    ("machine 512M\nkmalloc 1000000000000 size=8", 2, ["7.28 TiB", "512 MiB"]),
    ("machine 4G\nseed 3\npagecache 2T", 3, ["pagecache 2T", "2 TiB", "4 GiB of RAM"]),
    ("machine 4G\nfork 100000000 touch=4K", 2, ["fork 100000000", "more than"]),
    ("machine 4G\nanon 5G proc=x", 2, ["5 GiB"]),
    # counts that would run for hours
    ("machine 64G\nkmalloc churn count=100000000000 sizes=8-16 live=10", 2,
     ["would run for about", "h at 6 stage(s)", "smaller"]),
])
def test_limits_name_the_line_and_what_fits(text, line, words):
    msg = _check(text)
    assert msg.startswith(f"s.scenario:{line}: "), msg
    for w in words:
        assert w in msg, msg


def test_cpu_limit_is_per_stage():
    sc = parse_scenario("machine 512M cpus=1000\nvmalloc 1M", "s")
    check_scenario(sc, [get_stage(s) for s in ("v6.18", "page16")], available=PLENTY)
    assert "page8" in _check("machine 512M cpus=289\nvmalloc 1M", [get_stage("page8")])
    check_scenario(parse_scenario("machine 512M cpus=288\nvmalloc 1M", "s"),
                   [get_stage("page8")], available=PLENTY)


def test_host_memory_limit_says_what_would_fit():
    msg = _check("machine 64G\nvmalloc 1M", available=1 << 30)
    assert msg.startswith("s.scenario:1: machine 64G")
    assert "819 MiB is available" in msg and "enough for a machine of about" in msg
    # the machine fits, a step's objects do not: the step is named
    msg = _check("machine 1G\nvmalloc 1M\nkmalloc 40000000 size=8-16", available=1 << 30)
    assert msg.startswith("s.scenario:3: kmalloc 40000000 size=8-16: needs about 1.19 GiB")
    # 8 GiB of RAM: 2.36 M PFNs (sections up to 9 GiB) at 112 B each, nothing else
    sc = parse_scenario("machine 8G\nvmalloc 1M", "s")
    from memdesc.analysis.scenario_limits import HOST_BYTES_PER_PFN, check_machine
    assert host_bytes(sc, check_machine(sc, ALL)) == 2_359_296 * HOST_BYTES_PER_PFN


def test_examples_fit():
    from conftest import REPO

    for p in sorted((REPO / "examples").glob("*.scenario")):
        sc = parse_scenario(p.read_text(), p.name)
        check_scenario(sc, ALL, available=8 << 30)


@pytest.mark.parametrize("text, words", [
    ("machine 1G\nseed banana\nvmalloc 1M", "seed takes one whole number"),
    ("machine 1G\nvmalloc 1M\nseed 3", "goes before the steps"),
])
def test_seed_messages(text, words):
    with pytest.raises(InputError, match=words):
        parse_scenario(text, "s")


@pytest.mark.parametrize("body", [
    "machine 512M cpus=100000\nvmalloc 1M\n",
    "machine 64T\nvmalloc 1M\n",
    "machine 2048x1G\nvmalloc 1M\n",
    "machine 512M\nkmalloc 1000000000000 size=8\n",
    "machine 4G\npagecache 2T\n",
    "machine 4G\nfork 100000000 touch=1M\n",
    "machine 1G\nseed banana\nvmalloc 1M\n",
])
def test_cli_refuses_before_any_work(tmp_path, capsys, body):
    sc = tmp_path / "bad.scenario"
    sc.write_text(body)
    out = tmp_path / "out.json"
    t0 = time.monotonic()
    assert cli_main(["simulate", str(sc), "--json", str(out)]) == 2
    assert time.monotonic() - t0 < 5
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"memdesc: {sc}:"), cap.err
    assert "Traceback" not in cap.err and cap.out == ""
    assert not out.exists()


def test_output_folder_must_exist(tmp_path, capsys):
    missing = tmp_path / "no" / "such"
    with pytest.raises(InputError, match="does not exist"):
        check_output(str(missing / "x.json"), "json")
    from conftest import REPO

    assert cli_main(["simulate", str(REPO / "examples" / "mixed.scenario"), "--json",
                     str(missing / "x.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def _churn_reference(sizes, picks, live_max):
    """The Python loop churn_ops replaced (the oracle)."""
    kinds, arg, slots, live = [], [], [], []
    for i in range(len(sizes)):
        kinds.append(0)
        arg.append(int(sizes[i]))
        slots.append(i)
        live.append(i)
        if len(live) > live_max:
            j = int(picks[i] * len(live))
            live[j], live[-1] = live[-1], live[j]
            kinds.append(1)
            arg.append(0)
            slots.append(live.pop())
    return kinds, arg, slots, sorted(live)


def test_churn_ops_hand_worked():
    # live_max 2: op 2 makes three held [0, 1, 2]; pick 0.5 * 3 -> position 1 (slot 1) freed
    kinds, arg, slots, keep = churn_ops(np.array([8, 16, 24]), np.array([0.0, 0.0, 0.5]), 2)
    assert kinds.tolist() == [0, 0, 0, 1]
    assert arg.tolist() == [8, 16, 24, 0]
    assert slots.tolist() == [0, 1, 2, 1]
    assert keep.tolist() == [0, 2]


@settings(max_examples=examples(40), deadline=None)
@given(hs.lists(hs.integers(1, 4096), min_size=1, max_size=60), hs.integers(1, 10),
       hs.randoms(use_true_random=False))
def test_churn_ops_matches_the_python_loop(sizes, live_max, rnd):
    picks = np.array([rnd.random() for _ in sizes])
    got = churn_ops(np.array(sizes, np.int64), picks, live_max)
    want = _churn_reference(sizes, picks, live_max)
    assert [g.tolist() for g in got] == list(want)
