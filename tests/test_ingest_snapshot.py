"""Opening snapshots (live, folder, bundled), streaming their PFN files, and refusing bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import examples
from memdesc.cli import main
from memdesc.errors import InputError
from memdesc.ingest.procfs import parse_zoneinfo, zones_max_pfn
from memdesc.ingest.snapshot import (
    CHUNK_PFNS,
    KPAGE_FILES,
    PROCFS_FILES,
    bundled_snapshot,
    open_snapshot,
)

PFNS = 6_553_600


def whole(path: Path) -> np.ndarray:
    """A kpage file loaded in one piece, by another route than Snapshot.chunks()."""
    data = path.read_bytes()
    if path.suffix == ".zst":
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return np.frombuffer(data, dtype="<u8")


def write_folder(folder: Path, arrays: dict[str, np.ndarray], compress: bool = False,
                 **extra: str) -> Path:
    """A snapshot folder holding ``arrays`` as kpage files (zstd with content size if asked)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        data = arr.astype("<u8").tobytes()
        if compress:
            (folder / f"{name}.bin.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
        else:
            (folder / f"{name}.bin").write_bytes(data)
    for fname, text in extra.items():
        (folder / fname.replace("_", ".")).write_text(text)
    return folder


@pytest.fixture(scope="module")
def idle_flags() -> np.ndarray:
    from conftest import fixture_dir
    return whole(fixture_dir("snapshot-idle") / "kpageflags.bin.zst")


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


# --- real folders -----------------------------------------------------------------------------

@pytest.mark.parametrize("chunk_pfns", [CHUNK_PFNS, 1_000_003])
def test_chunks_equal_whole_file(snapshot_dir, chunk_pfns):
    snap = open_snapshot(snapshot_dir)
    assert (snap.kind, snap.source, snap.pfn_count) == ("folder", str(snapshot_dir), PFNS)
    parts = {n: [] for n in KPAGE_FILES}
    expect_start = 0
    for start, arrays in snap.chunks(KPAGE_FILES, chunk_pfns=chunk_pfns):
        assert start == expect_start and set(arrays) == set(KPAGE_FILES)
        lengths = {len(a) for a in arrays.values()}
        assert len(lengths) == 1 and lengths.pop() <= chunk_pfns
        for n, a in arrays.items():
            assert a.dtype == np.uint64
            parts[n].append(a)
        expect_start += len(arrays["kpageflags"])
    assert expect_start == PFNS
    for n in KPAGE_FILES:
        assert np.array_equal(np.concatenate(parts[n]), whole(snapshot_dir / f"{n}.bin.zst"))


def test_chunks_sub_range(snapshot_dir):
    snap = open_snapshot(snapshot_dir)
    ref = whole(snapshot_dir / "kpagecount.bin.zst")
    start, end = 1_048_573, 1_048_573 + 3 * 65_537 + 11          # odd, unaligned
    got = list(snap.chunks(["kpagecount"], chunk_pfns=65_537, start_pfn=start, end_pfn=end))
    assert [s for s, _ in got] == [start + i * 65_537 for i in range(4)]
    assert np.array_equal(np.concatenate([a["kpagecount"] for _, a in got]), ref[start:end])
    assert list(snap.chunks(start_pfn=PFNS)) == []
    tail = list(snap.chunks(start_pfn=PFNS - 5, end_pfn=PFNS + 100))
    assert len(tail) == 1 and np.array_equal(tail[0][1]["kpageflags"],
                                             whole(snapshot_dir / "kpageflags.bin.zst")[-5:])
    with pytest.raises(ValueError):
        list(snap.chunks(chunk_pfns=0))
    with pytest.raises(ValueError):
        snap.chunks(["pagemap"])


def test_folder_metadata_and_text(snapshot_dir):
    snap = open_snapshot(snapshot_dir)
    assert snap.kernel == "6.18.44-fc-v657" and snap.note is None
    assert snap.skipped == [] and all(snap.has(n) for n in KPAGE_FILES + PROCFS_FILES)
    for name in ("meminfo", "zoneinfo", "buddyinfo", "pagetypeinfo", "vmstat"):
        assert snap.text(name) == (snapshot_dir / f"{name}.before").read_text()
        assert snap.text(name, "after") == (snapshot_dir / f"{name}.after").read_text()
    assert snap.text("slabinfo", "after") == (snapshot_dir / "slabinfo.txt").read_text()
    assert snap.text("iomem") == (snapshot_dir / "iomem.txt").read_text()
    assert snap.text("cmdline") == (snapshot_dir / "cmdline.txt").read_text()
    assert snap.text("no-such-file") is None
    with pytest.raises(ValueError):
        snap.text("meminfo", "during")
    with pytest.raises(ValueError):
        snap.has("pagemap")


def test_text_fallbacks(tmp_path, idle_flags):
    folder = write_folder(tmp_path / "s", {"kpageflags": idle_flags[:4096]},
                          meminfo_after="MemTotal: 1 kB\n", vmstat="nr_free_pages 3\n")
    snap = open_snapshot(folder)
    assert snap.text("meminfo", "before") == "MemTotal: 1 kB\n"    # only .after: falls back
    assert snap.text("vmstat", "after") == "nr_free_pages 3\n"     # plain NAME
    assert snap.kernel is None


def test_bundled_equals_fixture():
    from conftest import fixture_dir
    fixture = fixture_dir("snapshot-idle")
    for snap in (bundled_snapshot(), open_snapshot("bundled"),
                 open_snapshot("bundled:snapshot-idle")):
        assert (snap.kind, snap.source, snap.pfn_count) == ("bundled", "bundled:snapshot-idle",
                                                            PFNS)
        assert snap.kernel == "6.18.44-fc-v657" and snap.skipped == []
    snap = bundled_snapshot()
    for f in sorted(snap.root.iterdir()):   # every bundled file is a byte copy of the capture
        assert hashlib.sha256(f.read_bytes()).digest() == \
            hashlib.sha256((fixture / f.name).read_bytes()).digest(), f.name
    assert {f.name for f in snap.root.iterdir()} >= {f"{n}.bin.zst" for n in KPAGE_FILES}
    mine = np.concatenate([a["kpagecgroup"] for _, a in snap.chunks(["kpagecgroup"])])
    assert np.array_equal(mine, whole(fixture / "kpagecgroup.bin.zst"))
    total = sum(p.stat().st_size for p in snap.root.iterdir())
    assert total < 200_000                  # "keep it small"


def test_only_kpageflags_is_valid(tmp_path, idle_flags):
    folder = write_folder(tmp_path / "s", {"kpageflags": idle_flags[:70_000]}, compress=True)
    snap = open_snapshot(folder)
    assert snap.pfn_count == 70_000
    assert snap.skipped == ["kpagecount", "kpagecgroup", *PROCFS_FILES]
    got = np.concatenate([a["kpageflags"] for _, a in snap.chunks(chunk_pfns=4097)])
    assert np.array_equal(got, idle_flags[:70_000])
    with pytest.raises(InputError, match=r"has no kpagecount; available: kpageflags$"):
        list(snap.chunks(["kpageflags", "kpagecount"]))


def test_multi_frame_zst(tmp_path, idle_flags):
    """Concatenated zstd frames (and a skippable frame between them) read as one stream."""
    folder = tmp_path / "s"
    folder.mkdir()
    c = zstandard.ZstdCompressor(write_checksum=True)
    skippable = (0x184D2A50).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"memdc"
    part = idle_flags[:50_000]
    (folder / "kpageflags.bin.zst").write_bytes(
        c.compress(part[:20_000].tobytes()) + skippable + c.compress(part[20_000:].tobytes()))
    snap = open_snapshot(folder)
    assert snap.pfn_count == 50_000
    got = np.concatenate([a["kpageflags"] for _, a in snap.chunks(chunk_pfns=7_777,
                                                                  start_pfn=15_000)])
    assert np.array_equal(got, part[15_000:])


# --- bad input: one line, nothing written -----------------------------------------------------

def test_missing_and_not_a_folder(tmp_path):
    with pytest.raises(InputError) as e:
        open_snapshot(tmp_path / "missing")
    assert one_line_error(e) == (f"snapshot folder {tmp_path / 'missing'} does not exist; pass a "
                                 "folder written by `memdesc snapshot save`")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is not a folder"):
        open_snapshot(tmp_path / "file")


def test_empty_folder_and_no_kpageflags(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as e:
        open_snapshot(tmp_path / "empty")
    assert one_line_error(e) == (f"snapshot folder {tmp_path / 'empty'} is empty; pass a folder "
                                 "written by `memdesc snapshot save`")
    folder = write_folder(tmp_path / "s", {"kpagecount": np.zeros(8)}, meminfo_before="A: 1\n")
    with pytest.raises(InputError) as e:
        open_snapshot(folder)
    assert one_line_error(e) == (f"{folder}: a snapshot needs kpageflags.bin, "
                                     "kpageflags.bin.zst, kpageflags.bin.gz or kpageflags.gz")


def test_length_not_multiple_of_8(tmp_path, idle_flags):
    folder = write_folder(tmp_path / "raw", {"kpageflags": idle_flags[:1000]})
    with open(folder / "kpageflags.bin", "ab") as f:
        f.write(b"\0\0\0")
    with pytest.raises(InputError) as e:
        open_snapshot(folder)
    assert one_line_error(e) == (f"{folder / 'kpageflags.bin'}: 8,003 bytes is not a whole number "
                                 "of 8-byte PFN entries: the file is truncated; copy or capture "
                                 "it again")
    # zstd with a content size in the frame header: caught from the header alone.
    zfolder = tmp_path / "zst"
    zfolder.mkdir()
    (zfolder / "kpageflags.bin.zst").write_bytes(
        zstandard.ZstdCompressor().compress(idle_flags[:1000].tobytes() + b"\1"))
    with pytest.raises(InputError, match=r"8,001 bytes is not a whole number"):
        open_snapshot(zfolder)
    # zstd without a content size (like the captures): caught by decompressing at open.
    nfolder = tmp_path / "nosize"
    nfolder.mkdir()
    cobj = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    data = cobj.compress(idle_flags[:1000].tobytes() + b"\1\2") + cobj.flush()
    assert zstandard.get_frame_parameters(data).content_size == zstandard.CONTENTSIZE_UNKNOWN
    (nfolder / "kpageflags.bin.zst").write_bytes(data)
    with pytest.raises(InputError, match=r"8,002 bytes is not a whole number"):
        open_snapshot(nfolder)


def test_mismatched_lengths(tmp_path, idle_flags):
    folder = write_folder(tmp_path / "s", {"kpageflags": idle_flags[:1000],
                                           "kpagecount": np.zeros(999)})
    with pytest.raises(InputError) as e:
        open_snapshot(folder)
    assert one_line_error(e) == (f"{folder}: kpage files hold different numbers of PFNs "
                                 "(kpageflags.bin 1,000, kpagecount.bin 999); they come from "
                                 "different captures or one is truncated")


def test_meta_pfn_count_mismatch(tmp_path, idle_flags):
    folder = write_folder(tmp_path / "s", {"kpageflags": idle_flags[:1000]},
                          meta_json=json.dumps({"pfn_count": 2000}))
    with pytest.raises(InputError, match=r"meta.json records 2,000 PFNs but the kpage files "
                                         r"hold 1,000"):
        open_snapshot(folder)


def corrupt_copy(src: Path, dest: Path, cut: bool = False) -> Path:
    data = bytearray(src.read_bytes())
    if cut:
        del data[len(data) // 2:]
    else:
        for i in range(len(data) // 2, len(data) // 2 + 64):   # flip bits in the middle
            data[i] ^= 0x5A
    dest.write_bytes(bytes(data))
    return dest


def test_corrupt_zst_capture_caught_at_open(tmp_path):
    """Damaged bytes are called corrupt, a copy cut short is called truncated."""
    from conftest import fixture_dir
    src = fixture_dir("snapshot-idle") / "kpageflags.bin.zst"
    for cut in (False, True):
        folder = tmp_path / f"cut{cut}"
        folder.mkdir()
        path = corrupt_copy(src, folder / "kpageflags.bin.zst", cut=cut)
        with pytest.raises(InputError) as e:
            open_snapshot(folder)
        msg = one_line_error(e)
        if cut:
            assert msg == (f"{path}: the zstd data stops inside a frame: the file is "
                           "truncated; copy or capture it again")
        else:
            assert msg.startswith(f"{path}: corrupt zstd data (")
            assert msg.endswith("); copy or capture the snapshot again")


def _zst_block_headers(data: bytes) -> list[int]:
    """Offsets of the block headers of a one-frame zstd file (RFC 8878 §3.1.1.2)."""
    pos, heads = zstandard.frame_header_size(data[:18]), []
    while True:
        v = int.from_bytes(data[pos:pos + 3], "little")
        heads.append(pos)
        pos += 3 + (1 if (v >> 1) & 3 == 1 else v >> 3)
        if v & 1:
            return heads


def test_corrupt_block_header_is_not_called_truncated(tmp_path):
    """Issue 13: a corrupted (not truncated) zstd file was reported as truncated ("the file
    ends inside a frame") when a damaged block header pointed past the end of the file. Every
    single-bit flip in the first 8 block headers of a real capture is now called corrupt."""
    from conftest import fixture_dir
    src = (fixture_dir("fleet/ours/m01-idle") / "kpageflags.bin.zst").read_bytes()
    heads = _zst_block_headers(src)
    folder = tmp_path / "s"
    folder.mkdir()
    path = folder / "kpageflags.bin.zst"
    # Hand-worked: bit 23 of header 0 is bit 20 of its 21-bit size, so the size grows by 2^20.
    data = bytearray(src)
    size0 = int.from_bytes(src[heads[0]:heads[0] + 3], "little") >> 3
    data[heads[0] + 2] ^= 0x80
    path.write_bytes(bytes(data))
    with pytest.raises(InputError) as e:
        open_snapshot(folder)
    assert one_line_error(e) == (f"{path}: corrupt zstd data (block of {size0 + 2**20:,} bytes, "
                                 "more than the 131,072 allowed); copy or capture the snapshot "
                                 "again")
    for head in heads[:8]:
        for bit in range(24):
            data = bytearray(src)
            data[head + bit // 8] ^= 1 << (bit % 8)
            path.write_bytes(bytes(data))
            with pytest.raises(InputError) as e:
                list(open_snapshot(folder).chunks())
            assert "corrupt zstd data (" in one_line_error(e), (head, bit)


def test_corrupt_zst_with_size_caught_while_streaming(tmp_path, idle_flags, capsys):
    """A frame that records its size and is intact in structure opens without decompressing;
    damaged content (here: its checksum) is found while streaming, as one line naming the
    file, and the CLI prints no partial table."""
    folder = tmp_path / "s"
    folder.mkdir()
    data = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(idle_flags.tobytes()))
    data[-1] ^= 0xFF
    path = folder / "kpageflags.bin.zst"
    path.write_bytes(bytes(data))
    snap = open_snapshot(folder)
    assert snap.pfn_count == PFNS
    with pytest.raises(InputError) as e:
        list(snap.chunks())
    assert one_line_error(e).startswith(f"{path}: corrupt zstd data (")
    before = sorted(p.name for p in folder.iterdir())
    assert main(["kpageflags", "--snapshot", str(folder)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"memdesc: {path}: corrupt zstd data (")
    assert err.count("\n") == 1
    assert sorted(p.name for p in folder.iterdir()) == before


def test_file_shrinking_after_open(tmp_path, idle_flags):
    folder = write_folder(tmp_path / "s", {"kpageflags": idle_flags[:100_000]})
    snap = open_snapshot(folder)
    os.truncate(folder / "kpageflags.bin", 8 * 60_000 + 4)
    with pytest.raises(InputError, match=r"kpageflags.bin: 480,004 bytes is not a whole number"):
        list(snap.chunks(chunk_pfns=50_000))
    os.truncate(folder / "kpageflags.bin", 8 * 60_000)
    with pytest.raises(InputError, match=r"kpageflags.bin: ends after 60,000 PFNs, expected "
                                         r"100,000: the file is truncated"):
        list(snap.chunks(chunk_pfns=50_000))


# --- permissions (we run as root, so check as the unprivileged user "nobody") -----------------

#: Child preamble: import everything first (the interpreter lives under /root, which "nobody"
#: may not read), then drop to "nobody" when we are root.
_DROP_PRIVILEGES = """
import os, pwd
from importlib import resources
import memdesc.cli, memdesc.ingest.kpageflags, memdesc.ingest.save, memdesc.ingest.snapshot
import memdesc.cli.progress, memdesc.ingest.record  # the CLI imports them when a command runs
memdesc.cli.build_parser()
resources.files("memdesc").joinpath("data")
if os.geteuid() == 0:
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)
"""


def run_unprivileged(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter as the user "nobody" (as ourselves if not root)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp",
           "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-c", _DROP_PRIVILEGES + textwrap.dedent(code)],
                          capture_output=True, text=True, env=env, cwd="/", timeout=120)


@pytest.fixture
def shared_tmp():
    """A temporary folder an unprivileged user can enter (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="memdesc-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.mark.skipif(not Path("/proc/kpageflags").exists(), reason="no /proc/kpageflags here")
def test_not_root_falls_back_to_bundled_or_refuses():
    r = run_unprivileged("""
        from memdesc.errors import PermissionProblem
        from memdesc.ingest.snapshot import open_snapshot
        s = open_snapshot(None)
        print(s.kind, s.source, s.pfn_count)
        print(s.note)
        try:
            open_snapshot("/proc")
        except PermissionProblem as e:
            print("PermissionProblem:", e)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "bundled bundled:snapshot-idle 6553600",
        "not root: /proc/kpageflags is not readable; surveying the bundled Linux 6.18 snapshot "
        "snapshot-idle",
        "PermissionProblem: /proc/kpageflags is not readable (it needs root): run as root or "
        "pass --snapshot DIR",
    ]


@pytest.mark.skipif(not Path("/proc/kpageflags").exists(), reason="no /proc/kpageflags here")
def test_not_root_cli_kpageflags_uses_bundled():
    r = run_unprivileged("""
        import sys
        from memdesc.cli import main
        sys.exit(main(["kpageflags"]))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ("memdesc: not root: /proc/kpageflags is not readable; surveying the "
                        "bundled Linux 6.18 snapshot snapshot-idle\n")
    assert r.stdout == (bundled_snapshot().root / "page-types-r.txt").read_text()


def test_unreadable_file_in_folder(shared_tmp, idle_flags):
    folder = write_folder(shared_tmp / "s", {"kpageflags": idle_flags[:1000]})
    folder.chmod(0o755)
    (folder / "kpageflags.bin").chmod(0o000)
    r = run_unprivileged(f"""
        from memdesc.errors import PermissionProblem
        from memdesc.ingest.snapshot import open_snapshot
        try:
            open_snapshot({str(folder)!r})
        except PermissionProblem as e:
            print(e)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (f"{folder / 'kpageflags.bin'} is not readable by this user: fix its "
                        "permissions or run as a user who may read it\n")


# --- live -------------------------------------------------------------------------------------

@pytest.mark.live
@pytest.mark.skipif(not os.access("/proc/kpageflags", os.R_OK), reason="/proc/kpageflags is "
                    "not readable (needs root)")
def test_live_snapshot():
    snap = open_snapshot(None)
    assert (snap.kind, snap.source, snap.note) == ("live", "/proc", None)
    assert snap.kernel == os.uname().release and snap.has("zoneinfo")
    zones = parse_zoneinfo(snap.text("zoneinfo"))
    # get_max_dump_pfn(): max_pfn rounded up to a memory section (2^15 PFNs on x86-64 [S]).
    section = 1 << 15
    assert snap.pfn_count == -(-zones_max_pfn(zones) // section) * section
    (start, arrays), = list(snap.chunks(KPAGE_FILES, start_pfn=4096, end_pfn=4096 + 5000))
    assert start == 4096 and all(len(a) == 5000 for a in arrays.values())
    assert snap.text("meminfo", "after") is not None
    assert open_snapshot("/proc").kind == "live"


def test_both_raw_and_compressed_copies_are_ambiguous(tmp_path, idle_flags):
    """kpageflags.bin beside kpageflags.bin.zst (say a half-finished `zstd -d`): which one is
    the capture? Refuse in one line rather than silently survey one of them."""
    folder = write_folder(tmp_path / "s", {"kpageflags": idle_flags[:4096]}, compress=True)
    write_folder(folder, {"kpageflags": idle_flags[:100]})
    with pytest.raises(InputError) as e:
        open_snapshot(folder)
    msg = one_line_error(e)
    assert "kpageflags.bin" in msg and "kpageflags.bin.zst" in msg


# --- gzip and the fleet study's layout (Mansi & Swift 2024) -----------------------------------

MANSI_V1 = "fleet/mansi/host-v1/11-29-2026-15-42-36"


def test_mansi_sample_folder_opens_and_equals_our_capture():
    """The fleet study's sample folder (kpageflags.gz, meminfo, info) holds the same capture as
    our m02-pagecache-4g folder: gzip streaming gives the same PFNs as zstd streaming."""
    from conftest import fixture_dir
    mansi = open_snapshot(fixture_dir(MANSI_V1))
    ours = open_snapshot(fixture_dir("fleet/ours/m02-pagecache-4g"))
    assert (mansi.pfn_count, mansi.kernel) == (PFNS, "6.18.44-fc-v669")
    assert mansi.kpage_path("kpageflags").name == "kpageflags.gz"
    assert mansi.skipped == ["kpagecount", "kpagecgroup", "zoneinfo", "buddyinfo",
                             "pagetypeinfo", "slabinfo", "iomem", "vmstat"]
    assert mansi.text("meminfo").startswith("MemTotal:       24684084 kB\n")
    for (sa, a), (sb, b) in zip(mansi.chunks(chunk_pfns=1_000_003),
                                ours.chunks(chunk_pfns=1_000_003), strict=True):
        assert sa == sb and np.array_equal(a["kpageflags"], b["kpageflags"])


def test_folder_host_and_input_files():
    from conftest import fixture_dir
    from memdesc.ingest.snapshot import folder_host, input_files
    root = fixture_dir(MANSI_V1)
    assert folder_host(root) == "host-v1"                  # first line of `info`
    assert [p.name for p in input_files(root)] == ["info", "kpageflags.gz", "meminfo"]
    ours = fixture_dir("fleet/ours/m01-idle")
    assert folder_host(ours) == "vm"                       # node name of uname.txt
    names = [p.name for p in input_files(ours)]
    assert "kpageflags.bin.zst" in names and "summary.txt" not in names


def _gzip_members(data: bytes, cuts: list[int]) -> bytes:
    import gzip
    edges = [0, *cuts, len(data)]
    return b"".join(gzip.compress(data[a:b]) for a, b in zip(edges, edges[1:], strict=False))


def test_gzip_multi_member_and_padding(tmp_path, idle_flags):
    """Several gzip members (as `cat a.gz b.gz` makes) and trailing zero padding read as one
    stream, in every chunking, equal to the source."""
    flags = idle_flags[:300_000]
    data = _gzip_members(flags.tobytes(), [8 * 1000, 8 * 123_457]) + bytes(4096)
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "kpageflags.bin.gz").write_bytes(data)
    snap = open_snapshot(folder)
    assert snap.pfn_count == 300_000
    for chunk in (7_777, 1 << 20):
        got = np.concatenate([a["kpageflags"] for _, a in snap.chunks(chunk_pfns=chunk)])
        assert np.array_equal(got, flags)
    (start, arrays), = list(snap.chunks(start_pfn=123_000, end_pfn=124_500))
    assert np.array_equal(arrays["kpageflags"], flags[123_000:124_500])


def test_gzip_truncated_and_corrupt_are_told_apart(tmp_path, idle_flags):
    import gzip
    data = gzip.compress(idle_flags[:200_000].tobytes())
    folder = tmp_path / "s"
    folder.mkdir()
    path = folder / "kpageflags.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as e:
        open_snapshot(folder)
    assert one_line_error(e) == (f"{path}: the gzip data stops inside a member: the file is "
                                 "truncated; copy or capture it again")
    bad = bytearray(data)
    bad[-6] ^= 0x01                                   # CRC-32 of the member (RFC 1952 §2.3.1)
    path.write_bytes(bytes(bad))
    with pytest.raises(InputError) as e:
        open_snapshot(folder)
    assert one_line_error(e) == (f"{path}: corrupt gzip data (Error -3 while decompressing "
                                 "data: incorrect data check); copy or capture the snapshot again")
    path.write_bytes(b"not gzip at all")
    with pytest.raises(InputError, match="corrupt gzip data .*incorrect header check"):
        open_snapshot(folder)
    path.write_bytes(b"")
    with pytest.raises(InputError, match="kpageflags.gz: empty file, not gzip data"):
        open_snapshot(folder)


@settings(max_examples=examples(25))
@given(st.lists(st.integers(1, 39_999), max_size=4, unique=True),
       st.integers(1_000, 9_000), st.integers(0, 3))
def test_gzip_any_members_any_chunks_equal_the_source(cuts, chunk, padding):
    """However the file is cut into members and read in chunks, gzip streams the source."""
    import gzip
    flags = np.arange(40_000, dtype="<u8") * np.uint64(0x9E3779B97F4A7C15)
    data = b"".join(gzip.compress(flags[a:b].tobytes()) for a, b in
                    zip([0, *sorted(cuts)], [*sorted(cuts), 40_000], strict=True))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "kpageflags.bin.gz").write_bytes(data + bytes(512 * padding))
        snap = open_snapshot(tmp)
        got = np.concatenate([a["kpageflags"] for _, a in snap.chunks(chunk_pfns=chunk)])
    assert np.array_equal(got, flags)
