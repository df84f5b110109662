"""Raw per-CPU ring-buffer pages (trace_pipe_raw) decoded with the format files: checked against
the text of the same recordings (fixtures and tests/data/trace-small), against event-counts.txt,
and on pages built entry by entry to exercise every entry type and flag."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import zstandard

from conftest import fixture_dir
from memdesc.errors import InputError
from memdesc.ingest import ftrace_raw
from memdesc.ingest.ftrace import read_trace
from memdesc.ingest.ftrace_raw import read_raw
from memdesc.ingest.ftrace_text import read_text
from memdesc.ingest.trace_events import EVENT_CODE
from memdesc.ingest.trace_format import load_formats
from test_ftrace_text import check_against_event_counts, fixture_text

SMALL = Path(__file__).parent / "data" / "trace-small"
PAGE = 4096


def fixture_pair(name: str):
    return read_trace(fixture_dir(name)), fixture_text(name)


def assert_same_events(raw, text):
    """Same events in the same order: every column equal, times equal to the printed µs
    (the kernel rounds ns to µs), call sites one symbol per address."""
    assert len(raw) == len(text)
    for k in raw.events:
        if k not in ("time", "cache", "call_site"):
            assert np.array_equal(raw.events[k], text.events[k]), k
    assert np.array_equal((raw.events["time"] + 500) // 1000 * 1000, text.events["time"])
    rs, ts = np.array(raw.strings + [""]), np.array(text.strings + [""])
    assert np.array_equal(rs[raw.events["cache"]], ts[text.events["cache"]])
    pairs = set(zip(raw.events["call_site"].tolist(), text.events["call_site"].tolist(),
                    strict=True))
    assert len({a for a, _ in pairs}) == len(pairs)          # address -> one symbol
    assert raw.markers["text"] == text.markers["text"]
    assert np.array_equal(raw.markers["index"], text.markers["index"])
    assert raw.quirks == text.quirks


@pytest.mark.parametrize("name", ["trace-pagecache", "trace-slab"])
def test_fixture_raw_equals_text(name):
    raw, text = fixture_pair(name)
    assert raw.source_format == "raw" and raw.skipped_lines == 0 and raw.lost == []
    assert_same_events(raw, text)
    check_against_event_counts(raw, fixture_dir(name))
    for cpu, stats in raw.overruns.items():      # per_cpu/cpuN/stats entries = what we decoded
        n = int((raw.events["cpu"] == cpu).sum() + (raw.markers["cpu"] == cpu).sum())
        assert stats["entries"] == n and stats["overrun"] == stats["dropped_events"] == 0
    assert raw.events["time"].dtype == np.int64 and raw.events["time"][0] % 1000 != 0
    # common_pid, equal in both readers above; the first line, read by hand:
    # " trace_record.sh-19133   [000] .....  2547.194685: kmem_cache_free: ..." (trace-slab),
    # " trace_record.sh-18376   [000] .....  2504.253502: mm_page_alloc: ..." (trace-pagecache)
    assert raw.events["pid"][0] == {"trace-slab": 19133, "trace-pagecache": 18376}[name]
    assert (raw.events["pid"] >= 0).all() and len(np.unique(raw.events["pid"])) > 10


def test_small_raw_equals_text():
    raw = read_raw(SMALL / "raw", SMALL / "formats")
    assert_same_events(raw, read_text(SMALL / "trace.txt"))
    assert raw.markers["text"] == ["memdesc-gen start"]


# --- pages built entry by entry --------------------------------------------------------------

def entry(delta: int, payload: bytes) -> bytes:
    """A data entry (type_len = words, or 0 with the length in array[0] when > 112 bytes)."""
    assert len(payload) % 4 == 0
    if len(payload) <= 112:
        return struct.pack("<I", len(payload) // 4 | delta << 5) + payload
    return struct.pack("<II", delta << 5, len(payload) + 4) + payload


def special(type_len: int, value: int) -> bytes:
    """time_extend (30) / time_stamp (31): value split as array[0] << 27 | time_delta."""
    return struct.pack("<II", type_len | (value & ((1 << 27) - 1)) << 5, value >> 27)


def padding(total: int) -> bytes:
    """A discarded event (padding with non-zero time_delta) of ``total`` bytes."""
    return struct.pack("<II", 29 | 1 << 5, total - 4) + bytes(total - 8)


def page(ts: int, body: bytes, flags: int = 0, missed: int | None = None) -> bytes:
    extra = struct.pack("<Q", missed) if missed is not None else b""
    raw = struct.pack("<QQ", ts, len(body) | flags) + body + extra
    return raw + bytes(PAGE - len(raw))


def record(fmt, name: str, **values) -> bytes:
    """A record laid out by the event's format file."""
    ev = fmt.events[name]
    size = max(f.offset + f.size for f in ev.fields.values())
    buf = bytearray((size + 3) // 4 * 4)
    struct.pack_into("<H", buf, ev.fields["common_type"].offset, ev.id)
    for k, v in values.items():
        f = ev.fields[k]
        buf[f.offset:f.offset + f.size] = (v & ((1 << 8 * f.size) - 1)).to_bytes(f.size, "little")
    return bytes(buf)


def write_raw(tmp_path: Path, pages: dict[int, bytes], formats: Path = SMALL / "formats") -> Path:
    (tmp_path / "raw").mkdir()
    for cpu, data in pages.items():
        (tmp_path / "raw" / f"trace_pipe_raw.cpu{cpu}.bin").write_bytes(data)
    shutil.copytree(formats, tmp_path / "formats")
    return tmp_path


def test_entry_types(tmp_path):
    fmt = load_formats(SMALL / "formats")
    free = record(fmt, "mm_page_free", pfn=0x1234, order=3)
    big = record(fmt, "mm_page_free", pfn=0x99, order=1) + bytes(120)     # > 112: type_len 0
    t0 = 5_000_000_000
    body = (entry(7, free)                                  # t0 + 7
            + padding(24)                                   # discarded: no time added
            + special(30, 3 << 27 | 11) + entry(2, free)    # extend: + (3<<27 | 11) + 2
            + special(31, t0 + 10**9) + entry(5, big)       # absolute time stamp, then + 5
            + entry(0, record(fmt, "mm_page_alloc", pfn=-1, order=0, gfp_flags=0xCC0,
                              migratetype=1)))
    tail = struct.pack("<I", 29)                             # null padding: rest is empty
    tr = read_trace(write_raw(tmp_path, {0: page(t0, body + tail)}))
    ev = tr.events
    t1 = t0 + 7
    t2 = t1 + (3 << 27 | 11) + 2
    t3 = t0 + 10**9 + 5
    assert ev["time"].tolist() == [t1, t2, t3, t3]
    assert ev["pfn"].tolist() == [0x1234, 0x1234, 0x99, -1]
    assert ev["order"].tolist() == [3, 3, 1, 0]
    assert ev["gfp"].tolist() == [0, 0, 0, 0xCC0] and ev["migratetype"].tolist()[3] == 1
    assert tr.quirks["page_alloc_failed"] == 1 and ev["is_null"].tolist()[3]


def test_field_offsets_come_from_the_format_files(tmp_path):
    """Move mm_page_free's fields in its format file: the decoder must follow."""
    fmt_dir = tmp_path / "fmt"
    shutil.copytree(SMALL / "formats", fmt_dir)
    f = fmt_dir / "kmem.mm_page_free.format"
    text = f.read_text()
    text = text.replace("unsigned long pfn;\toffset:8;", "unsigned long pfn;\toffset:16;")
    text = text.replace("unsigned int order;\toffset:16;", "unsigned int order;\toffset:8;")
    f.write_text(text)
    fmt = load_formats(fmt_dir)
    assert (fmt.events["mm_page_free"].fields["pfn"].offset,
            fmt.events["mm_page_free"].fields["order"].offset) == (16, 8)
    rec = record(fmt, "mm_page_free", pfn=0xABCDE, order=9)
    out = tmp_path / "out"
    out.mkdir()
    tr = read_trace(write_raw(out, {1: page(1000, entry(1, rec))}, fmt_dir))
    assert (tr.events["pfn"].tolist(), tr.events["order"].tolist()) == ([0xABCDE], [9])
    assert tr.events["cpu"].tolist() == [1]


def small_pages() -> bytes:
    return (SMALL / "raw" / "trace_pipe_raw.cpu1.bin").read_bytes()


def test_missed_events_flags(tmp_path):
    data = bytearray(small_pages())
    commit = struct.unpack_from("<Q", data, PAGE + 8)[0]
    struct.pack_into("<Q", data, PAGE + 8, commit | 1 << 31 | 1 << 30)     # count stored
    struct.pack_into("<Q", data, PAGE + 16 + commit, 4242)
    commit2 = struct.unpack_from("<Q", data, 2 * PAGE + 8)[0]
    struct.pack_into("<Q", data, 2 * PAGE + 8, commit2 | 1 << 31)          # count unknown
    tr = read_trace(write_raw(tmp_path, {1: bytes(data)}))
    ts = [struct.unpack_from("<Q", data, k * PAGE)[0] for k in (1, 2)]
    assert [tuple(x) for x in tr.lost] == [(1, ts[0], 4242, f"cpu1+{hex(PAGE)}"),
                                           (1, ts[1], -1, f"cpu1+{hex(2 * PAGE)}")]
    assert len(tr) == int((read_raw(SMALL / "raw", SMALL / "formats").events["cpu"] == 1).sum())
    assert "4,242 events lost" in tr.problems()[0]


def test_truncated_file(tmp_path):
    data = small_pages()
    cut = data[:2 * PAGE + 100]
    with pytest.raises(InputError, match=rf"byte offset {2 * PAGE}: truncated: 100 bytes"):
        read_trace(write_raw(tmp_path, {1: cut}))
    tr = read_trace(tmp_path, lenient=True)
    assert tr.skipped_lines == 1
    whole = read_raw(SMALL / "raw", SMALL / "formats").events
    n_first_pages = len(tr)
    assert 0 < n_first_pages < int((whole["cpu"] == 1).sum())
    assert np.array_equal(tr.events["pfn"], whole["pfn"][whole["cpu"] == 1][:n_first_pages])


def test_corrupt_commit_and_entry(tmp_path):
    data = bytearray(small_pages())
    struct.pack_into("<Q", data, PAGE + 8, 9999)                # commit > 4080
    hdr_off = 2 * PAGE + 16
    struct.pack_into("<I", data, hdr_off, 0 | 1 << 5)           # type_len 0 ...
    struct.pack_into("<I", data, hdr_off + 4, 60000)            # ... with a huge length
    with pytest.raises(InputError, match=rf"byte offset {PAGE + 8}: page commit larger"):
        read_trace(write_raw(tmp_path, {1: bytes(data)}))
    tr = read_trace(tmp_path, lenient=True)
    assert tr.skipped_lines == 2
    assert f"byte offset {hdr_off}: entry runs past" in tr.skipped_where[1]
    assert len(tr) > 0


def test_missing_formats(tmp_path):
    (tmp_path / "raw").mkdir()
    shutil.copy(SMALL / "raw" / "trace_pipe_raw.cpu0.bin", tmp_path / "raw")
    with pytest.raises(InputError, match="neither raw/ with formats/"):
        read_trace(tmp_path)
    with pytest.raises(InputError, match="no formats/ folder"):
        read_trace(tmp_path / "raw")


def test_event_codes_are_the_documented_ones():
    assert [EVENT_CODE[n] for n in ("mm_page_alloc", "mm_page_free", "mm_page_free_batched",
                                    "mm_page_alloc_zone_locked", "mm_page_pcpu_drain",
                                    "kmem_cache_alloc", "kmem_cache_free", "kmalloc",
                                    "kfree")] == list(range(9))


# --- streaming: chunks of a few pages decode exactly like whole files ------------------------

def assert_identical(a, b):
    assert a.events.keys() == b.events.keys()
    for k in a.events:
        assert a.events[k].dtype == b.events[k].dtype and np.array_equal(a.events[k],
                                                                         b.events[k]), k
    assert a.strings == b.strings and a.lost == b.lost and a.quirks == b.quirks
    assert a.markers["text"] == b.markers["text"]
    for k in ("time", "cpu", "index"):
        assert np.array_equal(a.markers[k], b.markers[k]), k
    assert (a.other_events, a.skipped_lines, a.skipped_where) == \
        (b.other_events, b.skipped_lines, b.skipped_where)


@pytest.mark.parametrize("zst", [False, True])
def test_chunks_of_a_few_pages_equal_whole_files(tmp_path, monkeypatch, zst):
    """Chunk edges fall between missed-events pages (count stored / unknown) and the rest;
    with RETAIN_BYTES 0 pass 2 re-reads (and re-decompresses) every file."""
    data = bytearray(small_pages())
    for pg, flags in ((1, 1 << 31 | 1 << 30), (2, 1 << 31), (3, 1 << 31)):
        commit = struct.unpack_from("<Q", data, pg * PAGE + 8)[0]
        struct.pack_into("<Q", data, pg * PAGE + 8, commit | flags)
        if flags & 1 << 30:
            struct.pack_into("<Q", data, pg * PAGE + 16 + commit, 1000 + pg)
    pages = {0: (SMALL / "raw" / "trace_pipe_raw.cpu0.bin").read_bytes(), 1: bytes(data)}
    write_raw(tmp_path, pages)
    if zst:
        for f in (tmp_path / "raw").iterdir():
            f.with_name(f.name + ".zst").write_bytes(zstandard.compress(f.read_bytes()))
            f.unlink()
    whole = read_raw(tmp_path / "raw", tmp_path / "formats", chunk_bytes=1 << 30)
    assert len(whole.lost) == 3 and len(whole) > 100 and whole.markers["text"]
    for chunk, retain in ((PAGE, 0), (3 * PAGE, 0), (2 * PAGE, 1 << 30), (PAGE + 5, 0)):
        monkeypatch.setattr(ftrace_raw, "RETAIN_BYTES", retain)
        assert_identical(read_raw(tmp_path / "raw", tmp_path / "formats", chunk_bytes=chunk),
                         whole)


def test_chunks_on_fixture(monkeypatch):
    folder = fixture_dir("trace-slab")
    whole = read_raw(folder / "raw", folder / "formats", chunk_bytes=1 << 30)
    monkeypatch.setattr(ftrace_raw, "RETAIN_BYTES", 0)
    parts = read_raw(folder / "raw", folder / "formats", chunk_bytes=1 << 20)
    assert_identical(parts, whole)
    assert len(parts.strings) > 10 and len(parts) == 1_696_486 - len(parts.markers["text"])


def test_truncated_tail_with_small_chunks(tmp_path):
    data = small_pages()[:3 * PAGE + 100]
    with pytest.raises(InputError, match=rf"byte offset {3 * PAGE}: truncated: 100 bytes"):
        read_raw(write_raw(tmp_path, {1: data}) / "raw", tmp_path / "formats",
                 chunk_bytes=PAGE)
    a = read_raw(tmp_path / "raw", tmp_path / "formats", lenient=True, chunk_bytes=PAGE)
    b = read_raw(tmp_path / "raw", tmp_path / "formats", lenient=True)
    assert a.skipped_lines == 1 and len(a) > 0
    assert_identical(a, b)
