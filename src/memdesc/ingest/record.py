"""``memdesc record``: trace the kmem allocation events of this machine into a folder.

Sequence (all in a private tracefs instance ``instances/memdesc-<pid>``; the top-level buffer,
its events, options and sizes are never touched):

1. find tracefs in /proc/mounts or mount it on a private temporary folder;
2. create the instance: tracing off, ``buffer_size_kb`` sized for the run, ``trace_clock``
   mono (= CLOCK_MONOTONIC, so snapshot timestamps line up with trace timestamps),
   ``options/overwrite`` 0 (a full buffer drops *new* events and counts them), ``hash-ptr`` 0
   (real pointers), the kmem page events (+ slab events with ``--slab``, + the lookup
   events of LOOKUP_EVENTS with ``--lookups``: page cache, LRU, page faults);
2b. the event rate measured for half a second with those events (memdesc.ingest.record_state)
   and the buffer sized from it (see default_buffer_kb());
3. tracing on, marker ``memdesc record start``, the pre-snapshot (memdesc.ingest.save) with
   markers ``memdesc snapshot begin``, ``memdesc snapshot chunk start_pfn=0x.. npfn=N`` after
   each chunk of kpage files is read, and ``memdesc snapshot end``; then ``memdesc workload
   begin``, the command (or the duration), ``memdesc workload end``, the end state
   (``end-state/``: buddyinfo, pagetypeinfo, zoneinfo, meminfo, vmstat, kpageflags when
   quick; after the marker ``memdesc state end``), tracing off;
4. per_cpu/cpuN/stats (overrun, commit overrun, dropped events) checked and saved; the text
   (``trace``, non-consuming) then the raw pages (``per_cpu/cpuN/trace_pipe_raw``) copied,
   zstd-compressed, plus ``formats/`` (header_page, header_event, event format files,
   ``SYSTEM.NAME.format``);
5. the instance removed and tracefs unmounted if we mounted it -- also on error, Ctrl-C or
   SIGTERM/SIGHUP. Output goes to a temporary folder renamed to DIR only when complete.

DIR layout: trace.txt.zst, raw/trace_pipe_raw.cpuN.bin.zst, formats/, per-cpu-stats.txt,
pre-snapshot/ (unless --no-snapshot), end-state/, meta.json.
memdesc.ingest.ftrace.read_trace(DIR) reads it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from memdesc import __version__
from memdesc.atomic import atomic_dir
from memdesc.errors import InputError, MemdescError, PermissionProblem
from memdesc.ingest.record_state import (
    measure_rate,
    needed_buffer_kb,
    read_cpu_stats,
    save_state,
)
from memdesc.ingest.trace_events import LOSS_COUNTERS, parse_cpu_stats
from memdesc.ingest.tracefs import Instance, Tracefs

PAGE_EVENTS = ("mm_page_alloc", "mm_page_free", "mm_page_free_batched",
               "mm_page_alloc_zone_locked", "mm_page_pcpu_drain")
SLAB_EVENTS = ("kmem_cache_alloc", "kmem_cache_free", "kmalloc", "kfree")
#: --lookups: events of kernel paths that look pages up (docs/replay.md "Lookups"), as
#: (tracefs system, event); each carries a pfn, a mapping + index range or a virtual address.
LOOKUP_EVENTS = (
    ("filemap", "mm_filemap_add_to_page_cache"), ("filemap", "mm_filemap_delete_from_page_cache"),
    ("filemap", "mm_filemap_get_pages"), ("filemap", "mm_filemap_map_pages"),
    ("filemap", "mm_filemap_fault"), ("pagemap", "mm_lru_insertion"),
    ("pagemap", "mm_lru_activate"), ("exceptions", "page_fault_user"),
    ("exceptions", "page_fault_kernel"),
)
FORMAT = "memdesc-trace 1"
ZSTD_LEVEL = 3
SNAPSHOT_CHUNK_PFNS = 1 << 16        # one marker per 65,536 PFNs, as in the fixtures
# Busy-CPU event rates seen on the fixtures' machine ([M] per-cpu-stats: ~0.5-2 MB/s of page
# events, ~13 MB/s with slab events); x2 headroom.
RATE_KB_S = {False: 4 * 1024, True: 32 * 1024}
# Without a duration the run length is unknown: the fixtures' size for slab traces (1 GB per
# CPU), a quarter of it for page events; --buffer-kb overrides.
UNKNOWN_RUN_KB = {False: 256 * 1024, True: 1024 * 1024}
MIN_BUFFER_KB, MAX_BUFFER_KB = 4 * 1024, 4 * 1024 * 1024


@dataclass
class RecordOptions:
    out: Path
    slab: bool = False
    duration_s: float | None = None
    command: list[str] = field(default_factory=list)
    buffer_kb: int | None = None
    snapshot: bool = True
    #: save an inner state (state-N/, no kpageflags) every this many seconds of the workload
    state_every_s: float | None = None
    #: also record the lookup events (LOOKUP_EVENTS)
    lookups: bool = False


class Terminated(KeyboardInterrupt):
    """SIGTERM/SIGHUP, handled like Ctrl-C so every cleanup runs."""


#: a run of unknown length (a command) is sized for this long at the measured rate
UNKNOWN_RUN_S = 60.0
#: seconds the pre-snapshot and end state add to the run
SNAPSHOT_S = 5.0


def default_buffer_kb(slab: bool, duration_s: float | None, ncpu: int,
                      mem_available_kb: int, rate_kb_s: float | None = None) -> int:
    """Per-CPU ring-buffer size: the expected volume of the run (``rate_kb_s``, the busiest
    CPU's measured rate, x2 over the duration plus the snapshots; a command of unknown length
    is sized for UNKNOWN_RUN_S), at most a quarter of MemAvailable across all CPUs."""
    return min(buffer_cap_kb(ncpu, mem_available_kb),
               wanted_buffer_kb(slab, duration_s, rate_kb_s))


def buffer_cap_kb(ncpu: int, mem_available_kb: int) -> int:
    return max(MIN_BUFFER_KB, min(MAX_BUFFER_KB, mem_available_kb // 4 // max(ncpu, 1)))


def wanted_buffer_kb(slab: bool, duration_s: float | None, rate_kb_s: float | None) -> int:
    """What the run needs per CPU, before the memory cap."""
    if rate_kb_s is None:            # not measured: the fixtures' machine's busy rates
        want = UNKNOWN_RUN_KB[slab] if duration_s is None else int(RATE_KB_S[slab] * duration_s)
        return max(MIN_BUFFER_KB, want)
    seconds = (UNKNOWN_RUN_S if duration_s is None else duration_s) + SNAPSHOT_S
    want = int(2 * rate_kb_s * seconds)
    if duration_s is None:
        want = max(want, UNKNOWN_RUN_KB[slab])
    return max(MIN_BUFFER_KB, want)


def _mem_available_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 1 << 20


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGINT into KeyboardInterrupt and SIGTERM/SIGHUP into Terminated for the block
    (explicitly: a process started in the background may inherit SIGINT ignored)."""
    def handler(signum, frame):
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(signal.Signals(signum).name)
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _shielded() -> Iterator[None]:
    """Ignore further Ctrl-C/SIGTERM while cleaning up (a second signal must not leave the
    instance behind)."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, signal.SIG_IGN) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class _Markers:
    """trace_marker writes (one write = one ftrace:print event)."""

    def __init__(self, inst: Instance):
        self.fd = os.open(inst.file("trace_marker"), os.O_WRONLY)
        self.failed = 0

    def __call__(self, text: str) -> None:
        try:
            os.write(self.fd, text.encode() + b"\n")
        except OSError:          # EBADF when the buffer is full (overwrite off)
            self.failed += 1

    def close(self) -> None:
        os.close(self.fd)


def _configure(inst: Instance, events: tuple[tuple[str, str], ...], buffer_kb: int
               ) -> list[str]:
    """Set up the instance with ``events`` ((system, name) pairs); returns the names of those
    that exist on this kernel (the kmem ones are required, at least one of them)."""
    inst.write("tracing_on", "0")
    try:
        inst.write("buffer_size_kb", str(buffer_kb))
    except OSError as e:
        raise InputError(f"cannot allocate a {buffer_kb} KB per-CPU trace buffer ({e.strerror})"
                         "; choose a smaller --buffer-kb") from None
    inst.write("trace_clock", "mono")
    for opt, val in (("overwrite", "0"), ("hash-ptr", "0"), ("irq-info", "1"),
                     ("record-tgid", "0")):
        if inst.file(f"options/{opt}").exists():
            inst.write(f"options/{opt}", val)
    have = [(s, e) for s, e in events if inst.file(f"events/{s}/{e}/enable").exists()]
    if not any(s == "kmem" for s, _ in have):
        raise InputError("this kernel has none of the kmem tracepoints (CONFIG_TRACEPOINTS?)")
    for s, e in have:
        inst.write(f"events/{s}/{e}/enable", "1")
    return [e for _, e in have]


def _save_formats(inst: Instance, dest: Path, others: tuple[tuple[str, str], ...] = ()
                  ) -> None:
    """header_page, header_event, every kmem event's format, ftrace/print and the formats of
    ``others`` ((system, name) pairs this kernel has) as ``SYSTEM.NAME.format``."""
    dest.mkdir()
    events = inst.file("events")
    for name in ("header_page", "header_event"):
        shutil.copyfile(events / name, dest / name)
    for fmt in sorted((events / "kmem").glob("*/format")):
        shutil.copyfile(fmt, dest / f"kmem.{fmt.parent.name}.format")
    for system, name in others:
        if (events / system / name / "format").is_file():
            shutil.copyfile(events / system / name / "format", dest / f"{system}.{name}.format")
    shutil.copyfile(events / "ftrace" / "print" / "format", dest / "ftrace.print.format")


def _copy_compressed(src: Path, dest: Path, nonblock: bool, chunk: int) -> int:
    """Copy ``src`` into ``dest`` (zstd), reading ``chunk`` bytes at a time; returns bytes."""
    flags = os.O_RDONLY | (os.O_NONBLOCK if nonblock else 0)
    fd = os.open(src, flags)
    total = 0
    try:
        with open(dest, "wb") as fh, zstandard.ZstdCompressor(
                level=ZSTD_LEVEL, write_checksum=True).stream_writer(fh) as out:
            while True:
                try:
                    data = os.read(fd, chunk)
                except BlockingIOError:
                    break
                if not data:
                    break
                out.write(data)
                total += len(data)
    finally:
        os.close(fd)
    return total


class _InnerStates:
    """Inner states during the workload: ``state-N/`` every ``every`` seconds, each after
    the marker ``memdesc state N monotonic_ns=...`` (memdesc.ingest.record_state)."""

    def __init__(self, tmp: Path | None, every: float | None, mark: Callable[[str], None]):
        self.tmp, self.every, self.mark = tmp, every, mark
        self.next = time.monotonic() + every if every else float("inf")
        self.saved: list[dict] = []

    def poll(self) -> float:
        """Save the states that are due; returns seconds until the next one (inf: none)."""
        now = time.monotonic()
        if self.tmp is None or now < self.next:
            return self.next - now
        name = str(len(self.saved) + 1)
        self.saved.append(save_state(self.tmp / f"state-{name}", name, self.mark,
                                     kpageflags=False))
        self.next = now + self.every
        return self.every


def _run_workload(opts: RecordOptions, log: Callable[[str], None],
                  states: _InnerStates | None = None) -> int | None:
    """Run the command (or sleep for the duration), saving inner states when due; returns
    the command's exit status."""
    states = states or _InnerStates(None, None, lambda s: None)
    if not opts.command:
        deadline = time.monotonic() + (opts.duration_s or 0)
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(max(0.0, min(left, 0.2, states.poll())))
        return None
    try:
        child = subprocess.Popen(opts.command)
    except OSError as e:
        raise InputError(f"cannot run {opts.command[0]!r}: {e.strerror}") from None
    try:
        while True:
            try:
                return child.wait(timeout=max(0.01, min(0.2, states.poll())))
            except subprocess.TimeoutExpired:
                continue
    except BaseException:
        with _shielded():
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(5)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        raise


def _take_snapshot(dest: Path, mark: _Markers) -> dict:
    """The pre-snapshot, with markers tying each kpage chunk to the trace."""
    from memdesc.ingest.save import save_snapshot  # imported late: only needed here

    done = [0]

    def tick(n: int) -> None:
        mark(f"memdesc snapshot chunk start_pfn=0x{done[0]:x} npfn={n}")
        done[0] += n

    mark(f"memdesc snapshot begin monotonic_ns={time.monotonic_ns()}")
    try:
        save_snapshot(dest, chunk_pfns=SNAPSHOT_CHUNK_PFNS, tick=tick)
    except MemdescError as e:
        mark("memdesc snapshot failed")
        return {"taken": False, "error": str(e)}
    mark(f"memdesc snapshot end monotonic_ns={time.monotonic_ns()}")
    return {"taken": True, "folder": dest.name, "chunk_pfns": SNAPSHOT_CHUNK_PFNS}


def _size_buffer(inst: Instance, opts: RecordOptions, ncpu: int, meta: dict,
                 log: Callable[[str], None]) -> int:
    """Measure this machine's event rate with the chosen events (half a second) and size
    the per-CPU buffer for the run; say what to pass when memory caps it."""
    rate = measure_rate(lambda: read_cpu_stats(inst.file("per_cpu")),
                        lambda on: inst.write("tracing_on", "1" if on else "0"),
                        lambda: inst.write("trace", ""))
    rate_kb = rate / 1024
    cap = buffer_cap_kb(ncpu, _mem_available_kb())
    want = wanted_buffer_kb(opts.slab, opts.duration_s, rate_kb)
    meta["measured_rate_kb_s"] = round(rate_kb, 1)
    if want > cap:
        span = f"{opts.duration_s:g} s" if opts.duration_s else f"{UNKNOWN_RUN_S:g} s"
        log(f"memdesc: warning: events arrive at {rate_kb / 1024:.1f} MB/s per CPU here; "
            f"{span} need --buffer-kb {want} but a quarter of MemAvailable allows {cap}: "
            "expect lost events (shorten the run or free memory)")
    kb = min(cap, want)
    inst.write("buffer_size_kb", str(kb))
    return kb


def record(opts: RecordOptions, log: Callable[[str], None] = print) -> Path:
    """Record into the new folder ``opts.out``; returns it. See the module docstring. A
    tracefs file that disappears under us (the instance removed or tracefs unmounted by
    another process) is one clear error, and nothing is left behind."""
    try:
        return _record(opts, log)
    except FileNotFoundError as e:
        raise InputError(f"{e.filename}: vanished while recording (was the tracefs instance "
                         "removed or tracefs unmounted by another process?); nothing saved"
                         ) from None


def _record(opts: RecordOptions, log: Callable[[str], None]) -> Path:
    out = Path(opts.out)
    if out.exists():
        raise InputError(f"{out} already exists; record never overwrites: choose a new folder")
    if opts.command and opts.duration_s is not None:
        raise InputError("give either --duration or a command, not both")
    if not opts.command and opts.duration_s is None:
        raise InputError("nothing to record: give --duration 30s or -- COMMAND ...")
    lookups = LOOKUP_EVENTS if opts.lookups else ()
    events = tuple(("kmem", e) for e in PAGE_EVENTS + (SLAB_EVENTS if opts.slab else ())
                   ) + lookups
    ncpu = os.cpu_count() or 1
    buffer_kb = opts.buffer_kb or MIN_BUFFER_KB           # sized below from the event rate
    meta: dict = {"format": FORMAT, "memdesc_version": __version__,
                  "kernel": " ".join(os.uname()[2:4]), "command": opts.command or None,
                  "duration_s": opts.duration_s, "buffer_size_kb": buffer_kb,
                  "trace_clock": "mono", "overwrite": 0}
    if os.geteuid() != 0:
        raise PermissionProblem("memdesc record needs root (tracefs instances, /proc/kpage*)")
    with _signals_raise(), contextlib.ExitStack() as stack:
        try:
            tmp = stack.enter_context(atomic_dir(out))
        except OSError as e:
            raise InputError(f"cannot create {out}: {e.strerror}") from None
        root = stack.enter_context(_CleanExit(Tracefs()))
        inst = stack.enter_context(_CleanExit(Instance(root, f"memdesc-{os.getpid()}")))
        meta["events"] = _configure(inst, events, buffer_kb)
        missing = [e for _, e in lookups if e not in meta["events"]]
        if missing:
            log(f"memdesc: warning: this kernel has no {', '.join(missing)} tracepoint(s); "
                "recording the other lookup events")
        if opts.buffer_kb is None:
            buffer_kb = _size_buffer(inst, opts, ncpu, meta, log)
            meta["buffer_size_kb"] = buffer_kb
        log(f"memdesc: recording in {inst.path} ({buffer_kb:,} KB per CPU)")
        meta["instance"] = str(inst.path)
        _save_formats(inst, tmp / "formats", lookups)
        mark = _Markers(inst)
        stack.callback(mark.close)
        t0 = (time.clock_gettime_ns(time.CLOCK_REALTIME), time.monotonic_ns())
        inst.write("tracing_on", "1")
        mark(f"memdesc record start pid={os.getpid()}")
        meta["snapshot"] = (_take_snapshot(tmp / "pre-snapshot", mark) if opts.snapshot
                            else {"taken": False})
        if meta["snapshot"].get("error"):
            log(f"memdesc: warning: no pre-snapshot: {meta['snapshot']['error']}")
        meta["workload_begin_monotonic_ns"] = time.monotonic_ns()
        mark("memdesc workload begin")
        try:
            states = _InnerStates(tmp, opts.state_every_s, mark)
            meta["exit_status"] = _run_workload(opts, log, states)
            meta["inner_states"] = len(states.saved)
        finally:
            meta["workload_end_monotonic_ns"] = time.monotonic_ns()
            mark("memdesc workload end")
            try:
                meta["end_state"] = save_state(tmp / "end-state", "end", mark)
            finally:
                inst.write("tracing_on", "0")
        meta["start_realtime_ns"], meta["start_monotonic_ns"] = t0
        meta["markers_failed"] = mark.failed
        meta.update(_collect(inst, tmp, log))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out


class _CleanExit:
    """Run a context manager's exit with signals ignored (cleanup must finish)."""

    def __init__(self, cm):
        self.cm = cm

    def __enter__(self):
        return self.cm.__enter__()

    def __exit__(self, *exc):
        with _shielded():
            return self.cm.__exit__(*exc)


def _collect(inst: Instance, tmp: Path, log: Callable[[str], None]) -> dict:
    """Stats, text and raw pages out of the stopped instance."""
    cpus = inst.cpus()
    stats = {c: parse_cpu_stats(inst.read(f"per_cpu/cpu{c}/stats")) for c in cpus}
    (tmp / "per-cpu-stats.txt").write_text("".join(
        f"== cpu{c}\n" + inst.read(f"per_cpu/cpu{c}/stats") for c in cpus))
    warnings = []
    for c, s in stats.items():
        bad = {k: s.get(k, 0) for k in LOSS_COUNTERS if s.get(k, 0)}
        if bad:
            warnings.append(f"cpu{c}: lost events: "
                            + ", ".join(f"{k}={v:,}" for k, v in bad.items())
                            + f" (this run needed --buffer-kb {needed_buffer_kb(stats)})")
    for w in warnings:
        log(f"memdesc: warning: {w}")
    text_bytes = _copy_compressed(inst.file("trace"), tmp / "trace.txt.zst", False, 1 << 20)
    (tmp / "raw").mkdir()
    page = int(inst.read("buffer_subbuf_size_kb")) * 1024 \
        if inst.file("buffer_subbuf_size_kb").exists() else os.sysconf("SC_PAGE_SIZE")
    raw_bytes = {c: _copy_compressed(inst.file(f"per_cpu/cpu{c}/trace_pipe_raw"),
                                     tmp / "raw" / f"trace_pipe_raw.cpu{c}.bin.zst", True, page)
                 for c in cpus}
    entries = sum(s.get("entries", 0) for s in stats.values())
    log(f"memdesc: {entries:,} events recorded on {len(cpus)} CPUs "
        f"({sum(raw_bytes.values()) / 2**20:.1f} MiB raw, {text_bytes / 2**20:.1f} MiB text)")
    return {"cpus": cpus, "per_cpu_stats": {str(c): s for c, s in stats.items()},
            "lost_total": sum(s.get(k, 0) for s in stats.values() for k in LOSS_COUNTERS),
            "warnings": warnings, "text_bytes": text_bytes,
            "raw_bytes": {str(c): b for c, b in raw_bytes.items()}}
