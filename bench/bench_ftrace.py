"""Trace reading speed: tracefs text (target >= 1 M lines/s) and raw ring-buffer pages
(target >= 10 M events/s), on the real trace-slab fixture (1.7 M events) and on >= 10 M
events synthesised from it (text lines repeated with shifted timestamps; raw pages repeated
with shifted page timestamps). Prints ``bench: ftrace.FIGURE = VALUE UNIT`` lines."""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zstandard

from memdesc.ingest.ftrace_raw import raw_files, read_raw
from memdesc.ingest.ftrace_text import read_text
from memdesc.ingest.trace_format import load_formats

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("MEMDESC_FIXTURES", REPO.parent / "shared" / "fixtures"))
TARGET_EVENTS = 10_000_000
SHIFT_S = 10                 # each copy starts 10 s after the previous (trace-slab: 6.6 s)


def _timed(fn, repeat: int = 1):
    """fn()'s result and its best time of ``repeat`` runs (sub-second reads are noisy on a
    shared machine)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def _synth_text(src: Path, dest: Path, copies: int) -> int:
    """Header + ``copies`` bodies, copy k with every timestamp + k*SHIFT_S s; returns lines."""
    text = zstandard.ZstdDecompressor().decompressobj().decompress(src.read_bytes())
    cut = text.index(b"\n", text.rindex(b"\n#", 0, 1 << 16) + 1) + 1
    head, body = text[:cut], text[cut:]
    secs = sorted({int(s) for s in re.findall(rb" (\d+)\.\d{6}: ", body)})
    with open(dest, "wb") as fh:
        fh.write(head)
        for k in range(copies):
            part = body
            for s in sorted(secs, reverse=True):      # new values never collide with old ones
                part = part.replace(b" %d." % s, b" %d." % (s + k * SHIFT_S))
            fh.write(part)
    return head.count(b"\n") + copies * body.count(b"\n")


def _synth_raw(src: Path, dest: Path, copies: int) -> None:
    """Per-CPU pages repeated ``copies`` times, page timestamps shifted by k*SHIFT_S s."""
    formats = load_formats(src / "formats")
    ps, ts_off = formats.page.page_size, formats.page.ts_offset
    (dest / "raw").mkdir(parents=True)
    shutil.copytree(src / "formats", dest / "formats")
    for cpu, path in raw_files(src / "raw").items():
        data = np.frombuffer(zstandard.ZstdDecompressor().decompressobj().decompress(
            path.read_bytes()), dtype=np.uint8)
        with open(dest / "raw" / f"trace_pipe_raw.cpu{cpu}.bin", "wb") as fh:
            for k in range(copies):
                pages = data.copy().reshape(-1, ps)
                ts = pages[:, ts_off:ts_off + 8].copy().view("<u8")[:, 0] + np.uint64(
                    k * SHIFT_S * 10**9)
                pages[:, ts_off:ts_off + 8] = ts.view(np.uint8).reshape(-1, 8)
                fh.write(pages.tobytes())


def _rss_alone(folder: Path) -> float:
    """Peak RSS (MiB) of a fresh interpreter that only reads ``folder`` with read_raw():
    its VmHWM (ru_maxrss would carry this process's peak over fork+exec)."""
    code = ("import re, sys; from memdesc.ingest.ftrace_raw import read_raw; "
            "read_raw(sys.argv[1] + '/raw', sys.argv[1] + '/formats'); "
            "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])")
    out = subprocess.run([sys.executable, "-c", code, str(folder)], check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[-1]) / 1024


def main() -> None:
    slab = FIXTURES / "trace-slab"
    if not slab.is_dir():
        print(f"bench: ftrace.skipped = 0 (fixture {slab} absent; set MEMDESC_FIXTURES)")
        return
    small = REPO / "tests" / "data" / "trace-small"
    read_raw(small / "raw", small / "formats")      # load the numba kernels (cache) first
    read_text(small / "trace.txt")

    text_lines = 1_696_498                           # lines of trace-slab/trace.txt
    tr, secs = _timed(lambda: read_text(slab / "trace.txt.zst"))
    print(f"bench: ftrace.text_lines_per_s = {text_lines / secs / 1e6:.2f} M lines/s "
          f"(trace-slab trace.txt.zst incl. zstd, {text_lines:,} lines in {secs:.2f} s)")
    n_slab = len(tr) + len(tr.markers["text"])
    tr, secs = _timed(lambda: read_raw(slab / "raw", slab / "formats"), 3)
    assert len(tr) + len(tr.markers["text"]) == n_slab
    print(f"bench: ftrace.raw_events_per_s = {n_slab / secs / 1e6:.2f} M events/s "
          f"(trace-slab raw .zst incl. zstd, {n_slab:,} events in {secs:.2f} s, best of 3)")
    del tr

    copies = -(-TARGET_EVENTS // n_slab)
    with tempfile.TemporaryDirectory(prefix="memdesc-bench-ftrace-") as tmp:
        tmp = Path(tmp)
        _synth_raw(slab, tmp / "one", 1)               # the fixture's pages, decompressed
        tr, secs = _timed(lambda: read_raw(tmp / "one" / "raw", tmp / "one" / "formats"), 3)
        print(f"bench: ftrace.raw_events_per_s_uncompressed = {n_slab / secs / 1e6:.2f} "
              f"M events/s (trace-slab pages as .bin, {secs:.2f} s, best of 3)")
        del tr
        shutil.rmtree(tmp / "one")
        lines = _synth_text(slab / "trace.txt.zst", tmp / "trace.txt", copies)
        tr, secs = _timed(lambda: read_text(tmp / "trace.txt"))
        n = len(tr) + len(tr.markers["text"])
        assert n == copies * n_slab and tr.skipped_lines == 0
        assert np.all(np.diff(tr.events["time"]) >= 0)
        print(f"bench: ftrace.text_lines_per_s_10m = {lines / secs / 1e6:.2f} M lines/s "
              f"({lines:,} lines, {(tmp / 'trace.txt').stat().st_size / 2**30:.2f} GiB "
              f"uncompressed, in {secs:.2f} s)")
        del tr
        (tmp / "trace.txt").unlink()
        _synth_raw(slab, tmp / "rec", copies)
        tr, secs = _timed(lambda: read_raw(tmp / "rec" / "raw", tmp / "rec" / "formats"))
        assert len(tr) + len(tr.markers["text"]) == copies * n_slab
        assert tr.quirks["free_batched_dup"] == copies * 37_822
        print(f"bench: ftrace.raw_events_per_s_10m = {copies * n_slab / secs / 1e6:.2f} "
              f"M events/s ({copies * n_slab:,} events, uncompressed pages, in {secs:.2f} s)")
        mem = sum(a.nbytes for a in tr.events.values())
        print(f"bench: ftrace.columns_bytes_per_event = {mem / len(tr):.0f} B")
        del tr
        rss = _rss_alone(tmp / "rec")
        print(f"bench: ftrace.raw_10m_peak_rss = {rss:.0f} MiB (read_raw of the "
              f"{copies * n_slab:,} events alone, fresh process; columns {mem / 2**20:.0f} MiB)")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"bench: ftrace.peak_rss = {rss:.0f} MiB")


if __name__ == "__main__":
    main()
