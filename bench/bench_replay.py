"""Trace replay speed per stage (target >= 5 M events/s per stage in placement mode), on the
real trace-slab fixture (1.7 M events), on a >= 10 M-event trace made by concatenating it
(copy k shifted by k trace durations; the snapshot chunk markers of the first copy are kept, so
copies 2.. replay on top of the state the first left, with the mismatch paths exercised), and
on trace-pagecache (page events only, 2 GiB of order-8/9 folios: the densest allocator work).

Speed is trace events (page and slab events, as the kernel emitted them) per second of the
replay loop, excluding the one-off setup (emulated mem_map, start state from the snapshot)
and reported also as a multiple of the trace's own real time: the events per second the
kernel produced them. Prints ``bench: replay.FIGURE = VALUE UNIT`` lines.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from memdesc.analysis import replay as rp
from memdesc.ingest.ftrace import read_trace
from memdesc.ingest.trace_events import Trace
from memdesc.stages import STAGES

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("MEMDESC_FIXTURES", REPO.parent / "shared" / "fixtures"))
TARGET_EVENTS = 10_000_000


def concatenate(tr: Trace, copies: int) -> Trace:
    """``copies`` back-to-back copies of ``tr`` (timestamps shifted by whole durations)."""
    span = tr.duration_ns + 1000
    ev = {}
    for k, v in tr.events.items():
        parts = [v] * copies
        if k == "time":
            parts = [v + np.int64(i * span) for i in range(copies)]
        ev[k] = np.concatenate(parts)
    return replace(tr, events=ev, duration_ns=copies * span - 1000,
                   path=Path(f"{tr.path} x{copies}"))


def _line(fig: str, value: float, unit: str) -> None:
    print(f"bench: replay.{fig} = {value:.3g} {unit}", flush=True)


def _bench(label: str, tr: Trace, modes=("placement",)) -> None:
    t0 = time.perf_counter()
    inp = rp.load_replay_input(tr)
    _line(f"{label}.prepare_seconds", time.perf_counter() - t0, "s")
    _line(f"{label}.events", len(tr), "events")
    kernel_rate = len(tr) / (tr.duration_ns / 1e9)
    _line(f"{label}.kernel_rate", kernel_rate / 1e6, "Mevents/s")
    # steady state: the first replay in a process runs ~20 % slower (cold caches); warm once
    rp.replay_stage(inp, STAGES[-1], modes[0], samples=2)
    for mode in modes:
        for s in STAGES:
            run = rp.replay_stage(inp, s, mode, samples=100)
            ev_s = len(tr) / run.seconds
            _line(f"{label}.{mode}.{s.id}.events_per_s", ev_s / 1e6, "Mevents/s")
            _line(f"{label}.{mode}.{s.id}.ops_per_s", len(inp.ops) / run.seconds / 1e6,
                  "Mops/s")
            _line(f"{label}.{mode}.{s.id}.realtime", ev_s / kernel_rate, "x")
            _line(f"{label}.{mode}.{s.id}.setup_seconds", run.setup_seconds, "s")
            bad = sum(v for k, v in run.mismatches.items() if k not in rp.EXPECTED)
            _line(f"{label}.{mode}.{s.id}.disagreements", bad, "events")


def main() -> None:
    src = FIXTURES / "trace-slab"
    if not src.is_dir():
        print(f"bench: replay skipped: {src} is absent (set MEMDESC_FIXTURES)")
        return
    tr = read_trace(src)
    _bench("slab", tr, ("placement", "policy"))
    copies = -(-TARGET_EVENTS // len(tr))
    _bench(f"slab_x{copies}", concatenate(tr, copies))
    pc = FIXTURES / "trace-pagecache"
    if pc.is_dir():              # page events only: the densest allocator work per event
        _bench("pagecache", read_trace(pc))


if __name__ == "__main__":
    main()
