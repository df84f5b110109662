"""``memdesc snapshot save``: capture this machine into a snapshot folder.

Order of work, timestamped in meta.json (CLOCK_REALTIME and CLOCK_MONOTONIC, ns):
PFN count -> every /proc text file (``.before``; iomem and slabinfo are kept from this read as
``.txt``) -> the three kpage files, read interleaved chunk by chunk -> the ``.after`` copies ->
written.
The before/after pair bounds how much memory changed while the kpage files were read.

Compressed (the default), the capture window writes nothing to disk: each chunk goes through a
zstd compressor into memory, so the capture's own footprint is a few chunk buffers plus the
compressed output (tens of KB on an idle machine) and the page cache is not disturbed. With
``--no-compress`` the raw files (8 bytes per PFN each) are streamed to disk during the window.
Everything goes into a temporary folder beside DIR that is renamed only when complete
(memdesc.atomic.atomic_dir): an error or Ctrl-C leaves nothing. /proc is only ever read.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import zstandard

from memdesc import __version__
from memdesc.atomic import atomic_dir
from memdesc.errors import InputError
from memdesc.ingest.snapshot import (
    CHUNK_PFNS,
    KPAGE_FILES,
    KPF_BYTES,
    PROC,
    check_readable,
    live_pfn_count,
    open_live,
)

#: /proc text files saved as NAME.before / NAME.after around the kpage reads.
WINDOW_FILES = ("meminfo", "vmstat", "buddyinfo", "zoneinfo", "pagetypeinfo")
#: /proc text files saved once (their "before" copy) as NAME.txt.
STATIC_FILES = ("iomem", "slabinfo")
ZSTD_LEVEL = 3            # fast enough to keep the capture window short; zeros compress anyway
FORMAT = "memdesc-snapshot 1"


class _Steps:
    """Named timestamps of the capture, as the fixtures' meta.json records them."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def __call__(self, name: str) -> None:
        self.steps.append({"step": name,
                           "realtime_ns": time.clock_gettime_ns(time.CLOCK_REALTIME),
                           "monotonic_ns": time.clock_gettime_ns(time.CLOCK_MONOTONIC)})


class _Sink:
    """Where one kpage file's bytes go during the window: a zstd compressor into memory, or
    the raw file on disk. Hashes the content (decompressed) as it goes."""

    def __init__(self, path: Path, compress: bool, nbytes: int):
        self.path, self.compress = path, compress
        self.content = hashlib.sha256()
        if compress:
            self.buf = io.BytesIO()
            self.cobj = zstandard.ZstdCompressor(
                level=ZSTD_LEVEL, write_checksum=True, write_content_size=True,
            ).compressobj(size=nbytes)
        else:
            self.fh = open(path, "wb")  # noqa: SIM115 (closed in finish())

    def write(self, data: memoryview) -> None:
        self.content.update(data)
        if self.compress:
            self.buf.write(self.cobj.compress(data))
        else:
            self.fh.write(data)

    def finish(self) -> None:
        """Write out what was buffered (compressed) or close the raw file."""
        if self.compress:
            self.buf.write(self.cobj.flush())
            self.path.write_bytes(self.buf.getbuffer())
        self.close()

    def close(self) -> None:
        if not self.compress:
            self.fh.close()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _uname_line() -> str:
    u = os.uname()
    return f"{u.sysname} {u.nodename} {u.release} {u.version} {u.machine}\n"


def save_snapshot(dest: str | os.PathLike, *, compress: bool = True,
                  chunk_pfns: int = CHUNK_PFNS, proc: str | os.PathLike = PROC,
                  tick: Callable[[int], None] | None = None) -> Path:
    """Capture ``proc`` (this machine's /proc) into the new folder ``dest``; return its path.

    Refuses an existing ``dest``; PermissionProblem when the kpage files are not readable
    (not root). ``tick(n)`` is called after each chunk of ``n`` PFNs.
    """
    dest, proc = Path(dest), Path(proc)
    if chunk_pfns <= 0:
        raise InputError(f"--chunk-pfns must be a positive number of PFNs, not {chunk_pfns}")
    if dest.exists():
        raise InputError(f"{dest} already exists; snapshot save never overwrites: "
                         "choose a new folder")
    check_readable(proc / "kpageflags")
    step = _Steps()
    step("start")
    pfn_count = live_pfn_count(proc / "kpageflags")
    step("pfn_count_done")

    stack = contextlib.ExitStack()
    try:
        tmp = stack.enter_context(atomic_dir(dest))
    except OSError as e:
        raise InputError(f"cannot create {dest}: {e.strerror or e}; choose a folder on a "
                         "writable file system") from None
    with stack:
        step("before_read_begin")
        snap = open_live(proc, pfn_count=pfn_count)   # reads every /proc text file: "before"
        step("before_read_end")
        names = [n for n in KPAGE_FILES if snap.has(n)]
        suffix = ".bin.zst" if compress else ".bin"
        sinks = {n: _Sink(tmp / f"{n}{suffix}", compress, pfn_count * KPF_BYTES) for n in names}
        try:
            step("kpage_begin")
            for _pfn, arrays in snap.chunks(names, chunk_pfns=chunk_pfns):
                for n, arr in arrays.items():
                    sinks[n].write(memoryview(arr).cast("B"))
                if tick:
                    tick(len(arrays[names[0]]))
            step("kpage_end")
            step("after_read_begin")
            after = {n: snap.text(n, "after") for n in WINDOW_FILES}
            step("after_read_end")
            for sink in sinks.values():
                sink.finish()
        finally:
            for sink in sinks.values():
                sink.close()
        texts = {f"{n}.txt": snap.text(n) for n in STATIC_FILES}
        texts["uname.txt"] = _uname_line()
        for n in WINDOW_FILES:
            texts[f"{n}.before"] = snap.text(n, "before")
            texts[f"{n}.after"] = after[n]
        for fname, text in texts.items():
            if text is not None:
                (tmp / fname).write_text(text)
        step("written")
        files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256_file(p)}
                 for p in sorted(tmp.iterdir())}
        for sink in sinks.values():
            files[sink.path.name]["content_sha256"] = sink.content.hexdigest()
        meta = {
            "format": FORMAT,
            "memdesc_version": __version__,
            "kernel": snap.kernel,
            "pfn_count": pfn_count,
            "chunk_pfns": chunk_pfns,
            "compression": f"zstd level {ZSTD_LEVEL}" if compress else None,
            "skipped": [n for n in (*KPAGE_FILES, *WINDOW_FILES, *STATIC_FILES)
                        if not any(f.startswith(f"{n}.") for f in files)],
            "steps": step.steps,
            "files": files,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return dest
