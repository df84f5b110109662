"""KPF bits, whole-file flag counts, and the page-types table against the kernel's own tool."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from memdesc.cli import main
from memdesc.errors import InputError
from memdesc.ingest import kpageflags as kpf
from memdesc.ingest.kpageflags import (
    KPF_NAMES,
    PAGE_TYPES_NAMES,
    expand_overloaded_flags,
    flag_counts,
    page_types_counts,
    page_types_r_table,
    page_types_table,
    parse_page_types,
    render_page_types,
    well_known_flags,
)
from memdesc.ingest.snapshot import open_snapshot


@pytest.fixture(scope="module")
def counts_by_dir():
    """flag_counts of each snapshot folder, computed once per module."""
    cache = {}

    def get(folder):
        if folder not in cache:
            cache[folder] = flag_counts(open_snapshot(folder))
        return cache[folder]
    return get


def test_kpf_names_are_linux_6_18():
    # Stable UAPI 0-26 and kernel-internal 32-42 [S: include/{uapi/,}linux/kernel-page-flags.h]
    assert sorted(KPF_NAMES) == [*range(27), *range(32, 43)]
    assert KPF_NAMES[10] == "KPF_BUDDY" and kpf.KPF_BUDDY == 10
    assert KPF_NAMES[34] == "KPF_OWNER_2" and kpf.KPF_MAPPEDTODISK == 34
    assert KPF_NAMES[26] == "KPF_PGTABLE" and KPF_NAMES[42] == "KPF_ARCH_3"
    for bit, name in KPF_NAMES.items():
        assert getattr(kpf, name) == bit
    # page-types' pseudo bits are not kernel bits.
    assert not set(KPF_NAMES) & {47, 48, 50, 51, 61, 62, 63}
    assert kpf.flag_names((1 << 10) | (1 << 32)) == ["KPF_BUDDY", "KPF_RESERVED"]


def test_page_types_r_oracle(snapshot_dir, counts_by_dir):
    """Our decoding reproduces `page-types -r -F kpageflags.bin` of the same capture: as a
    {flags: count} map and byte for byte (rows in page-types' hash-slot order)."""
    counts = counts_by_dir(snapshot_dir)
    oracle_text = (snapshot_dir / "page-types-r.txt").read_text()
    assert page_types_counts(counts, raw=True) == parse_page_types(oracle_text)
    ours = page_types_r_table(counts)
    assert set(ours.splitlines()) == set(oracle_text.splitlines())
    assert ours == oracle_text


def test_page_types_well_known_oracle(snapshot_dir, counts_by_dir):
    """Without -r page-types hides hacker bits and non-hugetlb compound bits."""
    counts = counts_by_dir(snapshot_dir)
    oracle_text = (snapshot_dir / "page-types.txt").read_text()
    assert page_types_counts(counts, raw=False) == parse_page_types(oracle_text)
    assert page_types_table(counts) == oracle_text


def test_flag_counts_facts(snapshot_dir, counts_by_dir):
    counts = counts_by_dir(snapshot_dir)
    assert sum(counts.values()) == 6_553_600
    assert next(iter(counts)) == 1 << kpf.KPF_RESERVED   # PFN 0 first: keys in PFN order
    bit_total = {b: sum(n for f, n in counts.items() if f >> b & 1) for b in KPF_NAMES}
    assert bit_total[kpf.KPF_NOPAGE] == 0       # README: no KPF_NOPAGE on this kernel
    assert bit_total[kpf.KPF_RESERVED] == 9_675
    if snapshot_dir.name == "snapshot-idle":    # numbers from its README / summary.txt
        assert bit_total[kpf.KPF_BUDDY] == 2_829_378
        assert bit_total[kpf.KPF_SLAB] == 4_759
        assert counts[0] == 3_693_315
        assert len(counts) == 77
    else:
        assert bit_total[kpf.KPF_BUDDY] == 887_125
        assert counts[0] == 5_516_370
        assert len(counts) == 94


def test_flag_counts_independent_of_chunking(counts_by_dir):
    from conftest import fixture_dir
    folder = fixture_dir("snapshot-idle")
    snap = open_snapshot(folder)
    whole = np.concatenate([a["kpageflags"] for _, a in snap.chunks(chunk_pfns=999_983)])
    values, n = np.unique(whole, return_counts=True)
    assert dict(zip(values.tolist(), n.tolist(), strict=True)) == counts_by_dir(folder)


def test_expand_overloaded_flags():
    b = 1 .__lshift__
    assert expand_overloaded_flags(b(12) | b(34)) == b(12) | b(47)        # anon_exclusive
    assert expand_overloaded_flags(b(34)) == b(34)                        # file: owner_2
    assert expand_overloaded_flags(b(7) | b(6) | b(1)) == b(7) | b(50) | b(51)
    assert expand_overloaded_flags(b(6)) == b(6)                          # not slab
    assert expand_overloaded_flags(b(9)) == b(48)                         # readahead
    assert expand_overloaded_flags(b(9) | b(8)) == b(9) | b(8)            # real reclaim
    assert well_known_flags(b(15) | b(5) | b(32)) == b(5)
    assert well_known_flags(b(15) | b(17)) == b(15) | b(17)               # hugetlb keeps it


def test_unknown_bit_refused_like_page_types():
    with pytest.raises(InputError, match=r"bit 42 \(KPF_ARCH_3\), which tools/mm/page-types"):
        page_types_r_table({1 << 42: 1})
    with pytest.raises(InputError, match=r"bit 39 \(KPF_UNCACHED\)"):
        page_types_r_table({1 << 39: 1})


def test_parse_page_types_bad_input():
    with pytest.raises(InputError, match="^page-types: line 2: expected '0xFLAGS"):
        parse_page_types("             flags\tpage-count\nbogus 1 2\n")
    with pytest.raises(InputError, match="^page-types: no 'total' line"):
        parse_page_types("0x0000000000000000\t 5 0  ___\t\n")
    with pytest.raises(InputError, match="^page-types: rows add up to 5 pages but the total"):
        parse_page_types("0x0000000000000000\t 5 0  ___\t\n             total\t 6 0\n")


_named = sorted(b for b in PAGE_TYPES_NAMES)


@given(st.dictionaries(
    st.lists(st.sampled_from(_named), max_size=6).map(lambda bits: sum({1 << b for b in bits})),
    st.integers(1, 10**7), min_size=1, max_size=60))
def test_render_parse_round_trip(counts):
    text = render_page_types(counts)
    assert parse_page_types(text) == counts
    rows = text.splitlines()[1:-1]
    assert len(rows) == len(counts)
    for row in rows:  # 0x%016llx\t%10lu %8lu  %s\t%s, symbolic has one column per named bit
        assert re.fullmatch(r"0x[0-9a-f]{16}\t[ \d]{10} [ \d]{8}  [^\t]{"
                            + str(len(_named)) + r"}\t[a-z_0-9,]*", row)


def test_cli_kpageflags(snapshot_dir, capsys):
    assert main(["kpageflags", "--snapshot", str(snapshot_dir)]) == 0
    out, err = capsys.readouterr()
    assert out == (snapshot_dir / "page-types-r.txt").read_text() and err == ""
    assert main(["kpageflags", "--snapshot", str(snapshot_dir), "--well-known"]) == 0
    assert capsys.readouterr().out == (snapshot_dir / "page-types.txt").read_text()


def test_cli_kpageflags_bad_snapshot(tmp_path, capsys):
    assert main(["kpageflags", "--snapshot", str(tmp_path / "nope")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"memdesc: snapshot folder {tmp_path / 'nope'} does not exist; pass a folder "
                   "written by `memdesc snapshot save`\n")
