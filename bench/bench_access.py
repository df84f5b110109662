"""Access accounting cost (issue 9): the policy-mode replay of the real trace-slab fixture with
accounting off, on (counters only) and on with the access log drained after every block, side
by side in one process at v6.18, page16 and page8 (interleaved repeats, medians; target: on <=
2x off, where "off" runs the same side operations uncounted: the trace's 1.35 M slab events
run only in a replay with a sink); and, with accounting off, this tree against the tree
before accounting (git archive of the ref in MEMDESC_BENCH_BASE, default 993afa0: main when
the accounting work began, the commit of the mm/access contract; ``none`` skips it), run in
a subprocess with its own numba cache (target: off costs < 3 %, issue 13's replay speed is
measured with it off).

Prints ``bench: access.FIGURE = VALUE UNIT`` lines.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from memdesc.analysis import replay as rp
from memdesc.ingest.ftrace import read_trace
from memdesc.mm import access
from memdesc.stages import get_stage

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("MEMDESC_FIXTURES", REPO.parent / "shared" / "fixtures"))
STAGE_IDS = ("v6.18", "page16", "page8")
REPEATS = 3
#: the tree before access accounting (main at 993afa0 had only the mm/access contract)
BASE = "993afa0"
#: interleaved subprocess runs per tree against the base (the machine is shared: noisy)
BASE_REPEATS = 5
#: the replay seconds of each stage in both modes, off: the snippet both trees run
SNIPPET = """
import sys, time
from memdesc.analysis import replay as rp
from memdesc.ingest.ftrace import read_trace
from memdesc.stages import get_stage
inp = rp.load_replay_input(read_trace(sys.argv[1]))
rp.replay_stage(inp, get_stage("page8"), "policy", samples=2)
for mode in ("placement", "policy"):
    for sid in sys.argv[2:]:
        print(mode, sid, rp.replay_stage(inp, get_stage(sid), mode, samples=2).seconds)
"""


def _line(fig: str, value: float, unit: str) -> None:
    print(f"bench: access.{fig} = {value:.4g} {unit}", flush=True)


class CountSink:
    """Counters only (the sink drains nothing)."""

    log_capacity = 0

    def __call__(self, stage_id, mm):
        pass


class UncountedSink:
    """Accounting off, but the accounted replay's work: its side operations (the trace's
    slab events and lookups run only in a replay with a sink) -- the like-for-like baseline."""

    log_capacity = 0
    counting = False

    def __call__(self, stage_id, mm):
        pass


class LogSink:
    """The access log, drained after every block (what the cache model consumes)."""

    log_capacity = 1 << 22

    def __init__(self):
        self.accesses = 0

    def __call__(self, stage_id, mm):
        self.accesses += access.drain(mm).nr_accesses


def side_by_side(inp) -> None:
    """Off, counters, log: interleaved repeats per stage, median seconds of the replay loop."""
    rp.replay_stage(inp, get_stage("page8"), "policy", samples=2)        # warm
    rp.replay_stage(inp, get_stage("page8"), "policy", samples=2, access_sink=LogSink())
    for sid in STAGE_IDS:
        st = get_stage(sid)
        t = {"off": [], "off_side": [], "counters": [], "log": []}
        acc = 0
        for _ in range(REPEATS):
            t["off"].append(rp.replay_stage(inp, st, "policy", samples=2).seconds)
            t["off_side"].append(rp.replay_stage(inp, st, "policy", samples=2,
                                                 access_sink=UncountedSink()).seconds)
            t["counters"].append(rp.replay_stage(inp, st, "policy", samples=2,
                                                 access_sink=CountSink()).seconds)
            sink = LogSink()
            t["log"].append(rp.replay_stage(inp, st, "policy", samples=2,
                                            access_sink=sink).seconds)
            acc = sink.accesses
        med = {k: float(np.median(v)) for k, v in t.items()}
        for k, v in med.items():
            _line(f"slab.policy.{sid}.{k}_seconds", v, "s")
        # the target (<= 2x) compares the same work: the slab events and lookups run only
        # in a replay with a sink, so "off_side" is the baseline; "off" is the plain replay
        _line(f"slab.policy.{sid}.counters_over_off", med["counters"] / med["off_side"], "x")
        _line(f"slab.policy.{sid}.log_over_off", med["log"] / med["off_side"], "x")
        _line(f"slab.policy.{sid}.side_ops_over_plain", med["off_side"] / med["off"], "x")
        _line(f"slab.policy.{sid}.accesses", acc, "accesses")


def _tree_seconds(src: Path, cache: Path, trace: Path) -> dict[tuple[str, str], float]:
    env = dict(os.environ, PYTHONPATH=str(src), NUMBA_CACHE_DIR=str(cache))
    out = subprocess.run([sys.executable, "-c", SNIPPET, str(trace), *STAGE_IDS], env=env,
                         check=True, capture_output=True, text=True).stdout
    return {(m, sid): float(s) for m, sid, s in (ln.split() for ln in out.splitlines())}


def against_base(trace: Path) -> None:
    """Accounting off: this tree vs the base ref, interleaved subprocess runs (the first of
    each compiles its numba cache and is not counted)."""
    ref = os.environ.get("MEMDESC_BENCH_BASE", BASE)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        base.mkdir()
        arch = subprocess.run(["git", "-C", str(REPO), "archive", ref, "src"], check=True,
                              capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=arch, check=True)
        trees = {"base": (base / "src", Path(tmp) / "cache-base"),
                 "head": (REPO / "src", REPO / ".venv" / "numba-cache")}
        runs: dict[str, list[dict[tuple[str, str], float]]] = {k: [] for k in trees}
        for src, cache in trees.values():                         # compile / warm
            _tree_seconds(src, cache, trace)
        for _ in range(BASE_REPEATS):
            for name, (src, cache) in trees.items():
                runs[name].append(_tree_seconds(src, cache, trace))
    for mode in ("placement", "policy"):
        for sid in STAGE_IDS:
            b = float(np.median([r[mode, sid] for r in runs["base"]]))
            h = float(np.median([r[mode, sid] for r in runs["head"]]))
            _line(f"slab.{mode}.{sid}.off_seconds_{ref}", b, "s")
            _line(f"slab.{mode}.{sid}.off_seconds_head", h, "s")
            _line(f"slab.{mode}.{sid}.off_cost_vs_{ref}", 100 * (h / b - 1), "%")


def main() -> None:
    src = FIXTURES / "trace-slab"
    if not src.is_dir():
        print(f"bench: access skipped: {src} is absent (set MEMDESC_FIXTURES)")
        return
    t0 = time.perf_counter()
    inp = rp.load_replay_input(read_trace(src))
    _line("slab.prepare_seconds", time.perf_counter() - t0, "s")
    _line("slab.ops", len(inp.ops), "ops")
    side_by_side(inp)
    if os.environ.get("MEMDESC_BENCH_BASE", BASE) != "none":
        against_base(src)
    _line("load_average_1min", os.getloadavg()[0], "")


if __name__ == "__main__":
    main()
