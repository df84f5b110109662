"""Scenario format: parsing, errors with line numbers, and running at every stage."""

from __future__ import annotations

from pathlib import Path

import pytest

from memdesc.analysis.scenario import load_scenario, parse_scenario
from memdesc.errors import InputError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_examples_parse():
    names = sorted(p.name for p in EXAMPLES.glob("*.scenario"))
    assert {"fileserver.scenario", "database-thp.scenario", "container-host.scenario",
            "mixed.scenario"} <= set(names)
    for name in names:
        sc = load_scenario(EXAMPLES / name)
        assert sc.steps and sc.machine


def test_issue_examples_are_expressible():
    sc = parse_scenario("""
        machine 16G
        pagecache 10G order=4 file=db      # page cache 10 GiB in order-4 folios
        anon 2G thp                        # anon 2 GiB THP
        kmalloc churn count=1000000 sizes=8-512
        fork 100 touch=50M                 # 100 processes touching 50 MiB each
        free half pagecache
    """)
    verbs = [s.verb for s in sc.steps]
    assert verbs == ["pagecache", "anon", "churn", "fork", "free"]
    pc, anon, churn, fork, free = sc.steps
    assert (pc.args["size"], pc.args["order"], pc.args["file"]) == (10 << 18, 4, "db")
    assert (anon.args["size"], anon.args["order"]) == (2 << 18, 9)
    assert (churn.args["count"], churn.args["sizes"], churn.args["live"]) == (
        1_000_000, (8, 512), 1000)
    assert (fork.args["count"], fork.args["touch"]) == (100, 50 << 8)
    assert (free.args["amount"], free.args["kind"]) == (0.5, "pagecache")
    assert sc.machine == "16G" and sc.cpus == 2
    assert parse_scenario("machine 2x8GiB cpus=4\nvmalloc 1M").machine == "2x8G"


@pytest.mark.parametrize("text, line, words", [
    ("pagecache 1G", 1, "starts with `machine"),
    ("machine 1G\npagecache 1Q", 2, "not a size"),
    ("machine 1G\n\n# c\nanon 1G thp order=2", 4, "either thp or order"),
    ("machine 1G\npagecache 1G order=11", 2, "outside 0..10"),
    ("machine 1G\nfork 3", 2, "needs touch="),
    ("machine 1G\nkmalloc 10 size=9-3", 2, "size range"),
    ("machine 1G\nfree most anon", 2, "amount to free"),
    ("machine 1G\nfree all buddies", 2, "cannot free"),
    ("machine 1G\ndance 3", 2, "unknown step"),
    ("machine 1G\nanon 1G colour=red", 2, "no option 'colour'"),
    ("machine 1G\nvmalloc 1M\nmachine 2G", 3, "one machine line"),
    ("machine 1G\nvmalloc 1M\nseed 3", 3, "before the steps"),
    ("machine 1G\nnetpool 1M gfp=maybe", 2, "gfp="),
    ("machine 1G\nanon 1G order=2 order=3", 2, "given twice"),
])
def test_bad_lines_name_file_and_line(text, line, words):
    with pytest.raises(InputError) as e:
        parse_scenario(text, "bad.scenario")
    msg = str(e.value)
    assert msg.startswith(f"bad.scenario:{line}: "), msg
    assert words in msg


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(InputError, match="empty scenario"):
        parse_scenario("# nothing\n", "e")
    with pytest.raises(InputError, match="no steps"):
        parse_scenario("machine 1G\n", "e")
    with pytest.raises(InputError, match="no such scenario"):
        load_scenario(tmp_path / "absent.scenario")


# ---- running scenarios ------------------------------------------------------------------------

import json  # noqa: E402

from memdesc.analysis.scenario import compare_runs, run_stage  # noqa: E402
from memdesc.cli import main as cli_main  # noqa: E402
from memdesc.stages import STAGE_IDS  # noqa: E402


def test_mixed_scenario_identical_at_all_six_stages():
    """Every step kind, every stage, every invariant checked after every step."""
    sc = load_scenario(EXAMPLES / "mixed.scenario")
    runs = [run_stage(sc, s, check=True) for s in STAGE_IDS]
    cmp = compare_runs(runs)
    assert cmp["identical_across_stages"], cmp["divergences"]
    ref = runs[0]
    final = ref.final_state
    # the observables are real: data read back through page tables / page cache / pools
    assert final["procs"]["db"]["mapped_pages"] == final["procs"]["db"][
        "pages_with_right_data"] > 0
    assert final["files"]["a"]["pages"] == final["files"]["a"]["pages_with_right_data"] > 0
    assert final["zsmalloc"]["z"]["pages"] == final["zsmalloc"]["z"]["pages_with_right_data"]
    for r in runs:
        assert r.census.extras["unaccounted_pages"] == 0        # no leak anywhere
        assert r.final_state == final
    totals = {r.stage: r.accounting["total_bytes"] for r in runs}
    assert totals["v6.18"] == totals["folio"] > totals["page32"] > totals["page16"] > \
        totals["page8"]
    assert totals["dynamic"] > totals["v6.18"]           # 64-byte pages plus descriptors
    desc = {r.stage: r.accounting["descriptor_bytes"] for r in runs}
    assert desc["v6.18"] == 0 and desc["dynamic"] == desc["page16"] > 0
    for r in runs:                          # the categories add up to the total
        assert sum(r.accounting["by_type"].values()) == r.accounting["total_bytes"]


def test_atomic_divergence_is_counted_not_hidden():
    sc = load_scenario(EXAMPLES / "atomic-pressure.scenario")
    runs = [run_stage(sc, s) for s in ("v6.18", "dynamic", "page16")]
    cmp = compare_runs(runs)
    assert not cmp["identical_across_stages"]
    assert cmp["divergence_counts"]["v6.18"] == {"injected": 0, "atomic": 0, "reclaim": 0,
                                                 "earlier": 0}
    for s in ("dynamic", "page16"):
        assert cmp["divergence_counts"][s]["reclaim"] == 0
        assert cmp["divergence_counts"][s]["injected"] == 0
        d = [x for x in cmp["divergences"][s] if x["line"] == 8]
        assert d and d[0]["kind"] == "atomic"
        assert d[0]["reference"]["failed"] == 0 < d[0]["this_stage"]["failed"]


def test_simulate_cli_json(tmp_path, capsys):
    out = tmp_path / "sim.json"
    rc = cli_main(["simulate", str(EXAMPLES / "mixed.scenario"), "--stages", "v6.18,page16",
                   "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert list(doc["stages"]) == ["v6.18", "page16"]
    assert doc["identical_across_stages"] is True
    s = doc["stages"]["page16"]
    assert s["accounting"]["struct_page_bytes"] < doc["stages"]["v6.18"]["accounting"][
        "struct_page_bytes"]
    assert s["cost_model"]["id"] == "page16" and "census" in s
    out = capsys.readouterr().out
    head = " ".join(line.strip() for line in out.splitlines()[:6])    # the answer first
    assert "observables: identical at every stage" in head
    assert "metadata (struct pages + descriptors): v6.18" in head and "page16" in head
    assert out.index("observables:") < out.index("Metadata per stage")
    # 80 columns: every line fits, no number is parted from its unit
    import io

    from memdesc.report.console import make_console
    from memdesc.report.simulate_out import render

    buf = io.StringIO()
    render(doc, make_console(buf, width=80))
    lines = buf.getvalue().splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    assert not any(line.lstrip().startswith(("MiB", "KiB", "GiB", "%")) for line in lines)
    assert any(line.lstrip().startswith("page16") for line in lines)      # the table is there


def test_simulate_cli_with_faults_reports_divergence(tmp_path, capsys):
    """identical_across_stages is computed: injected descriptor failures (dynamic stages
    only have descriptor caches) make the stages differ, and the document says so."""
    out = tmp_path / "sim.json"
    rc = cli_main(["simulate", str(EXAMPLES / "mixed.scenario"), "--stages", "v6.18,dynamic",
                   "--json", str(out), "--fail", "desc:probability=2,context=any,seed=7"])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["identical_across_stages"] is False
    assert doc["stages"]["dynamic"]["stats"]["faults_injected"] > 0
    assert doc["stages"]["dynamic"]["divergences"]
    assert doc["stages"]["v6.18"]["stats"]["faults_injected"] == 0
    # a divergence caused by --fail says so, and no divergence is blamed on reclaim
    kinds = {d["kind"] for d in doc["stages"]["dynamic"]["divergences"]}
    assert "injected" in kinds and "reclaim" not in kinds, kinds
    assert doc["divergence_counts"]["dynamic"]["injected"] >= 1
    text = capsys.readouterr().out
    assert "[injected fault]" in text and "{" not in text     # words, not Python dicts
    assert "observables: differ from v6.18 at dynamic" in text


def test_simulate_cli_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.scenario"
    bad.write_text("machine 1G\nanon 1Q\n")
    assert cli_main(["simulate", str(bad)]) == 2
    assert f"{bad}:2:" in capsys.readouterr().err
    assert cli_main(["simulate", str(EXAMPLES / "mixed.scenario"), "--fail", "nope:x=1"]) == 2


def test_ok_counts_successes_not_requests():
    """A 64 MiB machine with 40 MiB reserved cannot cache 32 MiB more: `ok` is what was
    cached (as the page cache reads it back), and ok + failed is what was asked."""
    from memdesc.analysis.scenario import World
    from memdesc.stages import get_stage

    sc = parse_scenario("machine 64M\nanon 1M proc=p\nreserve 40M\npagecache 32M file=f\n"
                        "free all pagecache\nanon 32M proc=p\n", "s")
    w = World(sc, get_stage("v6.18"))
    results = [w.run(step) for step in sc.steps]
    pc, anon = results[2], results[4]
    assert 0 < pc["ok"] < 8192 and pc["ok"] + pc["failed_pages"] == 8192
    assert pc["ok"] == sum(w.pc.observe(w.pc.files["f"])["folio_orders"]) + results[3]["ok"]
    assert 0 < anon["ok"] < 8192 and anon["ok"] + anon["failed_units"] == 8192
    assert anon["ok"] == w.observe()["procs"]["p"]["mapped_pages"] - 256


def test_ctrl_c_stops_a_long_step_within_a_second():
    """Python runs a signal handler (Ctrl-C's KeyboardInterrupt) only between bytecodes,
    never inside a numba kernel: a step that ran as one kernel call would finish first.
    Steps run in batches of mm.kmem.BATCH. The signal here is a real one (SIGALRM from a
    kernel timer, handled like SIGINT), so it arrives on time whatever holds the GIL."""
    import signal
    import time

    from memdesc.analysis.scenario import World
    from memdesc.stages import get_stage

    sc = parse_scenario("machine 2G\nkmalloc 6000000 size=8-16\n", "s")
    w = World(sc, get_stage("page16"))
    w.run(parse_scenario("machine 2G\nkmalloc 1000 size=8-16\n", "w").steps[0])  # compiled
    w.k.contents.grow(40_000)     # room for every slab page: the step never returns to grow
    w.k.slub._rebuild()

    def ctrl_c(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, ctrl_c)
    ended = []
    try:
        start = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            w.run(sc.steps[0])
            ended.append(True)
            time.sleep(5)       # (the step was too short to test anything: fail below)
        stopped = time.monotonic()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert not ended, "the step ended before the interrupt"
    assert stopped - (start + 0.3) < 1.0


def test_simulate_plot_fits_its_bars_and_keeps_zero_types_out(tmp_path, capsys):
    """The tallest bar (and cost-model mark) stays inside the axes with room for its saving
    label, a type that is zero at every stage is not in the legend, and the legend sits
    outside the bars."""
    import matplotlib.pyplot as plt

    from memdesc.report.simulate_out import plot_figure

    out, sc = tmp_path / "sim.json", tmp_path / "no-zram.scenario"
    sc.write_text("machine 256M\npagecache 16M order=2\nkmalloc 2000 size=64\n")
    assert cli_main(["simulate", str(sc), "--stages", "dynamic,page8", "--json", str(out),
                     "--brief"]) == 0
    doc = json.loads(out.read_text())
    fig = plot_figure(doc)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    zero = {k for k in doc["stages"]["dynamic"]["accounting"]["by_type"]
            if not any(s["accounting"]["by_type"].get(k) for s in doc["stages"].values())}
    assert zero and not zero & {x.replace(" ", "_") for x in labels}
    assert "memmap" in labels and "survey cost model" in labels
    tallest = max(max(s["accounting"]["total_bytes"], s["cost_model"]["total_bytes"])
                  for s in doc["stages"].values()) / 2**20          # the plot is in MiB here
    assert ax.get_ylim()[1] >= tallest * 1.15
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1 - 1                 # beside, not over
    plt.close(fig)
    text = capsys.readouterr().out
    assert "observables:" in text and "Metadata per stage" not in text   # --brief
