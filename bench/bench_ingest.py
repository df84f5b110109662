"""Snapshot ingest speed: opening, streaming kpage chunks (zstd folder and live /proc), and
counting flags. Prints ``bench: ingest.FIGURE = VALUE UNIT`` lines."""

from __future__ import annotations

import os
import resource
import time

from memdesc.ingest.kpageflags import flag_counts
from memdesc.ingest.snapshot import KPAGE_FILES, bundled_snapshot, open_snapshot


def _stream(snap, names) -> tuple[float, int]:
    start = time.perf_counter()
    n = 0
    for _pfn, arrays in snap.chunks(names):
        n += len(next(iter(arrays.values())))
    return time.perf_counter() - start, n


def main() -> None:
    start = time.perf_counter()
    snap = bundled_snapshot()
    print(f"bench: ingest.open_bundled = {1e3 * (time.perf_counter() - start):.1f} ms")

    secs, n = _stream(snap, KPAGE_FILES)
    print(f"bench: ingest.zstd_chunks_3_files = {n / secs / 1e6:.1f} MPFN/s "
          f"({3 * 8 * n / secs / 2**20:.0f} MiB/s decompressed)")

    start = time.perf_counter()
    counts = flag_counts(snap)
    secs = time.perf_counter() - start
    print(f"bench: ingest.flag_counts_bundled = {snap.pfn_count / secs / 1e6:.1f} MPFN/s "
          f"({len(counts)} distinct values)")

    if os.access("/proc/kpageflags", os.R_OK):
        start = time.perf_counter()
        live = open_snapshot("/proc")
        print(f"bench: ingest.open_live = {1e3 * (time.perf_counter() - start):.1f} ms")
        secs, n = _stream(live, ("kpageflags",))
        print(f"bench: ingest.live_pread_kpageflags = {n / secs / 1e6:.1f} MPFN/s "
              f"({8 * n / secs / 2**20:.0f} MiB/s)")
        secs, n = _stream(live, KPAGE_FILES)
        print(f"bench: ingest.live_pread_3_files = {n / secs / 1e6:.1f} MPFN/s")
    else:
        print("bench: ingest.live_pread_kpageflags = skipped (not root)")

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"bench: ingest.peak_rss = {rss:.0f} MiB")
