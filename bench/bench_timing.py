"""Native measurement of the trace-slab stream at every stage (issue 9): whole-process seconds
(target <= 60 s on 2 cores) and the measured ns per operation class, v6.18 beside the others.

What is measured: metadata access cost on this CPU (memdesc.analysis.native_timing), not a
kernel build.

The stream is the emulator's own (memdesc.mm.access): fixtures/trace-slab replayed at every
stage in ``policy`` mode (the trace's allocation requests through the emulated allocator)
with NativeRun.sink() as the replay's access_sink, then measured. ``placement`` mode records
no operations (its loop moves the trace's blocks itself, not through the counted allocator
entry points), and the replay does not replay the trace's slab events, so the classes are
the page allocator's. The child process runs the pipeline; the parent times it whole.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("MEMDESC_FIXTURES", REPO.parent / "shared" / "fixtures"))
REPEATS = 7


def _line(fig: str, value: float, unit: str) -> None:
    print(f"bench: timing.{fig} = {value:.4g} {unit}", flush=True)


def main() -> None:
    """Run :func:`inner` in a fresh process (numba cache warm) and time the whole process."""
    src = FIXTURES / "trace-slab"
    if not src.is_dir():
        print(f"bench: timing skipped: {src} is absent (set MEMDESC_FIXTURES)")
        return
    t0 = time.perf_counter()
    rc = subprocess.run([sys.executable, __file__, "--inner", str(src)], check=False).returncode
    if rc == 0:
        _line("whole_process_seconds", time.perf_counter() - t0, "s (target <= 60)")


def inner(src: Path) -> None:
    from memdesc.analysis import native_timing as nt
    from memdesc.analysis import replay as rp
    from memdesc.ingest.ftrace import read_trace
    from memdesc.stages import STAGES

    t0 = time.perf_counter()
    inp = rp.load_replay_input(read_trace(src))
    run = nt.NativeRun(STAGES, inp.machine.nr_pfns)
    t1 = time.perf_counter()
    rp.replay(inp, list(STAGES), mode="policy", access_sink=run.sink())
    t2 = time.perf_counter()
    res = run.measure(REPEATS, progress=lambda d, n: print(f"repeat {d}/{n}", file=sys.stderr))
    t3 = time.perf_counter()
    _report(res)
    _line("input_seconds", t1 - t0, "s")
    _line("replay_seconds", t2 - t1, "s (6 stages, accounting on)")
    _line("measure_seconds", t3 - t2, f"s ({REPEATS} repeats + warm-up)")


def _report(res) -> None:
    print(f"# {res.what}; trace-slab, policy replay")
    med, ratio, lo, hi = res.median, res.ratio(), res.lo, res.hi
    floor = res.floor
    tot = res.total_ns()
    ref = res.stages.index(res.reference)
    for s, sid in enumerate(res.stages):
        for c, name in enumerate(res.classes):
            if res.ops[s, c]:
                _line(f"{sid}.{name}.ns", med[s, c],
                      f"ns/op ({lo[s, c]:.1f}..{hi[s, c]:.1f}, x{ratio[s, c]:.3f} of v6.18, "
                      f"L1 floor {floor[s, c]:.1f}, {res.ops_seen[s, c]} ops)")
        q = np.nanmedian(tot[s] / tot[ref])
        _line(f"{sid}.whole_trace_ms", np.median(tot[s]) / 1e6, f"ms (x{q:.3f} of v6.18)")
    _line("sampled_accesses_per_stage", res.accesses.mean(), "accesses")
    _line("sample_period", res.period, f"windows of {res.window} ops")
    _line("empty_op", float(np.median(res.empty_ns)), "ns (subtracted)")
    _line("interrupted_op_times", res.interrupted, "replaced by the op's median")
    _line("dropped_blocks", res.dropped_blocks, "blocks")
    _line("memory", res.memory_bytes.sum() / 2**20, "MiB")
    known = [f for f in res.huge_fraction if f is not None]
    if known:
        _line("huge_page_fraction", min(known), "min over stages")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--inner"]:
        inner(Path(sys.argv[2]))
    else:
        main()
