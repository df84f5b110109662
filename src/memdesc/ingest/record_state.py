"""What ``memdesc record`` saves besides the trace: the kernel's state at a point of the trace
(tied to it by a trace marker), and the ring-buffer size the run needs, from the event rate
measured on this machine.

A state folder (``end-state/``, written after the workload) holds the /proc files the replay
checks against (memdesc.analysis.replay_checks): buddyinfo first (read right after the
marker ``memdesc state NAME``), then pagetypeinfo, zoneinfo, meminfo, vmstat, and
``kpageflags.bin.zst`` when the whole file reads within a time budget (a few seconds);
``meta.json`` says when each was read (CLOCK_MONOTONIC ns, the trace clock) and whether
kpageflags was kept.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import zstandard

from memdesc.ingest.trace_events import parse_cpu_stats

PROC = Path("/proc")
STATE_FILES = ("buddyinfo", "pagetypeinfo", "zoneinfo", "meminfo", "vmstat")
#: kpageflags is kept in a state only when the whole file reads within this many seconds
KPAGEFLAGS_BUDGET_S = 3.0
KPF_CHUNK = 8 << 20


def save_state(dest: Path, name: str, mark: Callable[[str], None], proc: Path = PROC,
               kpageflags: bool = True) -> dict:
    """Write the kernel's state into the new folder ``dest`` after the marker
    ``memdesc state NAME`` (module docstring); returns its meta."""
    dest.mkdir()
    meta: dict = {"name": name, "marker": f"memdesc state {name}", "files": {}}
    mark(f"memdesc state {name} monotonic_ns={time.monotonic_ns()}")
    for f in STATE_FILES:
        t0 = time.monotonic_ns()
        try:
            text = (proc / f).read_text()
        except OSError as e:
            meta["files"][f] = {"error": e.strerror}
            continue
        (dest / f).write_text(text)
        meta["files"][f] = {"monotonic_ns": t0, "read_ns": time.monotonic_ns() - t0}
    if kpageflags:
        meta["kpageflags"] = _save_kpageflags(proc / "kpageflags", dest / "kpageflags.bin.zst")
    mark(f"memdesc state {name} done monotonic_ns={time.monotonic_ns()}")
    (dest / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def _save_kpageflags(src: Path, dest: Path, budget_s: float = KPAGEFLAGS_BUDGET_S) -> dict:
    """kpageflags compressed into ``dest`` if it reads within ``budget_s``; else nothing."""
    t0 = time.monotonic()
    cobj = zstandard.ZstdCompressor(level=3, write_checksum=True).compressobj()
    parts = []
    total = 0
    try:
        with open(src, "rb", buffering=0) as fh:
            while chunk := fh.read(KPF_CHUNK):
                parts.append(cobj.compress(chunk))
                total += len(chunk)
                if time.monotonic() - t0 > budget_s:
                    return {"kept": False, "why": f"reading it took over {budget_s:g} s "
                            f"({total >> 20} MiB read)"}
    except OSError as e:
        return {"kept": False, "why": e.strerror}
    parts.append(cobj.flush())
    dest.write_bytes(b"".join(parts))
    return {"kept": True, "seconds": round(time.monotonic() - t0, 3), "bytes": total}


def cpu_bytes(stats: dict[int, dict[str, int]]) -> dict[int, int]:
    """Bytes each CPU's ring buffer took (``bytes`` in per_cpu/cpuN/stats) plus what the
    dropped events would have taken, at the CPU's mean event size."""
    out = {}
    for c, s in stats.items():
        b = s.get("bytes", 0)
        n = s.get("entries", 0) + s.get("overrun", 0)
        lost = s.get("dropped_events", 0) + s.get("overrun", 0)
        mean = b / n if n else 64
        out[c] = int(b + lost * mean)
    return out


def needed_buffer_kb(stats: dict[int, dict[str, int]], headroom: float = 1.5) -> int:
    """The ``--buffer-kb`` that would have held every event of a run, with headroom."""
    per = cpu_bytes(stats)
    return int(max(per.values(), default=0) * headroom / 1024) + 1


def measure_rate(read_stats: Callable[[], dict[int, dict[str, int]]],
                 set_tracing: Callable[[bool], None], clear: Callable[[], None],
                 seconds: float = 0.5) -> float:
    """Bytes per second the busiest CPU writes into its ring buffer with the chosen events
    enabled, measured over ``seconds`` (the buffer is cleared afterwards)."""
    clear()
    set_tracing(True)
    t0 = time.monotonic()
    time.sleep(seconds)
    set_tracing(False)
    dt = time.monotonic() - t0
    per = cpu_bytes(read_stats())
    clear()
    return max(per.values(), default=0) / dt if dt > 0 else 0.0


def read_cpu_stats(per_cpu: Path) -> dict[int, dict[str, int]]:
    """per_cpu/cpuN/stats of an instance."""
    out = {}
    for d in sorted(per_cpu.glob("cpu*")):
        if d.name[3:].isdigit():
            out[int(d.name[3:])] = parse_cpu_stats((d / "stats").read_text())
    return out


__all__ = ["save_state", "needed_buffer_kb", "measure_rate", "read_cpu_stats"]
