"""One PFN-indexed kpage file as stored: raw, zstd or gzip; its size and a streaming reader.

The kernel exports one little-endian u64 per PFN (fs/proc/page.c, KPMSIZE). Captures keep them
raw (``NAME.bin``), zstd-compressed (``NAME.bin.zst``, what ``memdesc snapshot save`` writes) or
gzip-compressed (``NAME.bin.gz``; ``kpageflags.gz`` is the layout of the public fleet study,
Mansi & Swift 2024). Every reader streams in bounded memory and turns a bad file into one
:class:`~memdesc.errors.InputError` line that says which of two things happened:

* **truncated**: the data stops early but what is there decodes (the copy or the capture was cut
  short);
* **corrupt**: the data itself is damaged (a decoder error, a checksum or length mismatch, a block
  header no encoder writes).

Sizes: a zstd frame usually records its content size and the block headers are walked without
decompressing (RFC 8878 §3.1); a frame without it, and every gzip file, is decompressed once to
count (gzip's ISIZE is the size modulo 2^32 of the last member only, RFC 1952 §2.3.1, so it
cannot size a multi-member or > 4 GiB file).
"""

from __future__ import annotations

import contextlib
import io
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import zstandard

from memdesc.errors import InputError, PermissionProblem

try:            # zlib-ng inflates the same bytes 3-5x faster than zlib (bench/bench_fleet.py)
    from zlib_ng import zlib_ng as inflate
except ImportError:                     # pragma: no cover (a regular dependency)
    inflate = zlib

KPF_BYTES = 8                      # one u64 per PFN [S: fs/proc/page.c KPMSIZE]
PROC = Path("/proc")

#: File-name endings of a kpage file NAME and the codec of each, in the order a folder is
#: searched. ``NAME.gz`` (no ``.bin``) is the Mansi & Swift fleet-study layout.
KPAGE_FORMS: tuple[tuple[str, str], ...] = (
    (".bin", "raw"), (".bin.zst", "zstd"), (".bin.gz", "gzip"), (".gz", "gzip"),
)

_ZSTD_SKIPPABLE = range(0x184D2A50, 0x184D2A60)   # skippable-frame magic numbers [S: RFC 8878]
_ZSTD_BLOCK_MAX = 128 * 1024                      # Block_Maximum_Size cap [S: RFC 8878 §3.1.1.2]
_READ = 1 << 20                                   # compressed bytes read per step


@dataclass
class KpageFile:
    path: Path
    codec: str                     # "raw" | "zstd" | "gzip"
    nbytes: int                    # decompressed length

    @property
    def compressed(self) -> bool:
        return self.codec != "raw"


# --- errors -----------------------------------------------------------------------------------

def truncated(f: KpageFile, got: int) -> InputError:
    if got % KPF_BYTES:
        return not_whole(f.path, got)
    return InputError(f"{f.path}: ends after {got // KPF_BYTES:,} PFNs, expected "
                      f"{f.nbytes // KPF_BYTES:,}: the file is truncated; copy or capture it "
                      "again")


def not_whole(path: Path, nbytes: int) -> InputError:
    return InputError(f"{path}: {nbytes:,} bytes is not a whole number of 8-byte PFN entries: "
                      "the file is truncated; copy or capture it again")


def corrupt(path: Path, codec: str, e: Exception | str) -> InputError:
    return InputError(f"{path}: corrupt {codec} data ({e}); copy or capture the snapshot again")


def cut_short(path: Path, codec: str, where: str) -> InputError:
    """The compressed data stops inside a frame/member and what precedes decodes."""
    return InputError(f"{path}: the {codec} data stops inside {where}: the file is truncated; "
                      "copy or capture it again")


# --- low-level file access with one-line errors ---------------------------------------------------

def permission(path: Path) -> PermissionProblem:
    if str(path).startswith(f"{PROC}/"):
        return PermissionProblem(f"{path} is not readable (it needs root): run as root or pass "
                                 "--snapshot DIR")
    return PermissionProblem(f"{path} is not readable by this user: fix its permissions or "
                             "run as a user who may read it")


def os_open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY)
    except PermissionError:
        raise permission(path) from None
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None


def open_file(path: Path):
    try:
        return open(path, "rb", buffering=0)  # noqa: SIM115 (returned to a with-statement)
    except PermissionError:
        raise permission(path) from None
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder, expected a file") from None


# --- readers ----------------------------------------------------------------------------------

class _PreadReader:
    """Sequential reads of an uncompressed kpage file by pread: /proc needs 8-byte aligned
    offsets and counts (kpageflags_read() in fs/proc/page.c) and has no meaningful size."""

    def __init__(self, path: Path, offset: int):
        self.fd = os_open(path)
        self.offset = offset

    def readinto(self, view: memoryview) -> int:
        n = os.preadv(self.fd, [view], self.offset)
        self.offset += n
        return n

    def close(self) -> None:
        os.close(self.fd)


class GzipReader:
    """Streaming gunzip with ``readinto``: every member of a multi-member file in turn
    (RFC 1952 §2.2), each member's CRC-32 and ISIZE checked by zlib (``wbits=31``), zero
    padding after the last member ignored (as gzip(1) does). Inflates with zlib-ng
    (:data:`inflate`, zlib where it is absent: same output, same error messages). Raises
    ``inflate.error`` on damaged data and ``EOFError`` when the input stops inside a member."""

    def __init__(self, fh):
        self.fh = fh
        self.d = inflate.decompressobj(31)
        self.tail = b""                       # input not consumed yet

    def _next_input(self) -> bytes:
        data, self.tail = self.tail or self.fh.read(_READ), b""
        return data

    def readinto(self, view: memoryview) -> int:
        n = 0
        while n < len(view):
            if self.d.eof:                    # a member ended: another, padding, or the end
                rest = self.d.unused_data or self.fh.read(_READ)
                while rest and not rest.strip(b"\0"):
                    rest = self.fh.read(_READ)
                if not rest:
                    return n
                self.d, self.tail = inflate.decompressobj(31), rest
            data = self._next_input()
            if not data:
                raise EOFError("the input ends inside a gzip member")
            out = self.d.decompress(data, len(view) - n)
            self.tail = self.d.unconsumed_tail
            view[n:n + len(out)] = out
            n += len(out)
        return n


#: Decoder errors of each codec (damaged data).
_DECODE_ERRORS = (zstandard.ZstdError, zlib.error, inflate.error)


def _decompressor(codec: str, fh):
    if codec == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
    return GzipReader(fh)


@contextlib.contextmanager
def open_reader(f: KpageFile, offset: int) -> Iterator:
    """A reader with ``readinto`` positioned at byte ``offset`` of the decompressed data."""
    if f.codec == "raw":
        reader = _PreadReader(f.path, offset)
        try:
            yield reader
        finally:
            reader.close()
        return
    with open_file(f.path) as fh:
        stream = _decompressor(f.codec, fh)
        _skip(stream, offset, f)
        yield stream


def _skip(stream, nbytes: int, f: KpageFile) -> None:
    """Decompress and drop ``nbytes`` (compressed streams cannot seek)."""
    scratch = memoryview(bytearray(min(nbytes, 1 << 22) or 1))
    while nbytes:
        got = _readinto(stream, scratch[:min(nbytes, len(scratch))], f)
        if not got:
            raise truncated(f, f.nbytes - nbytes)
        nbytes -= got


def _readinto(reader, view: memoryview, f: KpageFile) -> int:
    try:
        return reader.readinto(view)
    except _DECODE_ERRORS as e:
        raise corrupt(f.path, f.codec, e) from None
    except EOFError:
        raise cut_short(f.path, f.codec, "a member") from None


def read_exact(reader, view: memoryview, f: KpageFile, pfn: int) -> None:
    """Fill ``view`` from ``reader`` or raise InputError: the file ended early or is corrupt."""
    done = 0
    try:
        while done < len(view):
            got = _readinto(reader, view[done:], f)
            if not got:
                raise truncated(f, pfn * KPF_BYTES + done)
            done += got
    except OSError as e:
        raise InputError(f"{f.path}: read failed at PFN {pfn}: {e.strerror}") from None


# --- sizes ------------------------------------------------------------------------------------

def _zst_blocks(fh, path: Path, pos: int, size: int, block_max: int) -> int:
    """Walk the block headers of one frame from ``pos`` (3 bytes each, RFC 8878 §3.1.1.2);
    return the position after its last block. A header no encoder writes is corruption; a
    plausible chain that runs past the end of the file is truncation."""
    while True:
        fh.seek(pos)
        bh = fh.read(3)
        if len(bh) < 3:
            raise cut_short(path, "zstd", "a frame")
        v = int.from_bytes(bh, "little")
        btype, bsize = (v >> 1) & 3, v >> 3
        if btype == 3:
            raise corrupt(path, "zstd", "reserved block type")
        if bsize > block_max:
            raise corrupt(path, "zstd", f"block of {bsize:,} bytes, more than the "
                                        f"{block_max:,} allowed")
        pos += 3 + (1 if btype == 1 else bsize)
        if pos > size:
            raise cut_short(path, "zstd", "a frame")
        if v & 1:
            return pos


def zst_content_size(path: Path) -> int | None:
    """Decompressed size of a zstd file from its frame headers, or None when a frame does not
    record it. Walks every frame and block header (RFC 8878 §3.1) so truncation is caught
    without decompressing; raises InputError on anything that is not zstd."""
    total: int | None = 0
    # Buffered: the headers of a file's few hundred blocks are then read with a few syscalls.
    with open_file(path) as raw, io.BufferedReader(raw, _READ) as fh:
        size = os.fstat(fh.fileno()).st_size
        pos = 0
        try:
            while pos < size:
                fh.seek(pos)
                head = fh.read(18)                      # the largest frame header
                magic = int.from_bytes(head[:4], "little")
                if magic in _ZSTD_SKIPPABLE:
                    pos += 8 + int.from_bytes(head[4:8], "little")
                    continue
                params = zstandard.get_frame_parameters(head)
                if params.content_size == zstandard.CONTENTSIZE_UNKNOWN:
                    total = None
                elif total is not None:
                    total += params.content_size
                pos += zstandard.frame_header_size(head)
                block_max = min(_ZSTD_BLOCK_MAX, params.window_size or _ZSTD_BLOCK_MAX)
                pos = _zst_blocks(fh, path, pos, size, block_max)
                pos += 4 if params.has_checksum else 0
        except zstandard.ZstdError as e:
            raise corrupt(path, "zstd", e) from None
        if pos > size:
            raise cut_short(path, "zstd", "a frame")
    return total


def stream_size(path: Path, codec: str) -> int:
    """Decompressed size by decompressing (bounded memory); InputError if damaged or cut."""
    n = 0
    buf = memoryview(bytearray(1 << 22))
    f = KpageFile(path, codec, 0)
    with open_file(path) as fh:
        stream = _decompressor(codec, fh)
        while got := _readinto(stream, buf, f):
            n += got
    return n


def _check_not_empty(path: Path, codec: str) -> None:
    try:
        empty = path.stat().st_size == 0
    except PermissionError:
        raise permission(path) from None
    if empty:
        raise InputError(f"{path}: empty file, not {codec} data; copy or capture it again")


def kpage_file(path: Path, codec: str) -> KpageFile:
    """Open-time check of one kpage file: readable, its decompressed size a whole number of
    PFN entries, and for zstd its frame structure intact."""
    if codec == "raw":
        try:
            nbytes = path.stat().st_size
        except PermissionError:
            raise permission(path) from None
        with open_file(path):
            pass                                        # readable?
    else:
        _check_not_empty(path, codec)
        nbytes = zst_content_size(path) if codec == "zstd" else None
        if nbytes is None:
            nbytes = stream_size(path, codec)
    if nbytes % KPF_BYTES:
        raise not_whole(path, nbytes)
    return KpageFile(path, codec, nbytes)
