"""The free-page tracking registry: a new option plugs in from this file alone.

``split`` is a toy page8 encoding defined here (not in memdesc): like ``packed`` one word per
page, but prev in bits 8..35 and next in bits 36..63, and other nibbles for tails (0xD) and
pcp pages (0xC). Registered before the allocator compiles (in a subprocess with a numba cache
of its own), it runs the property tests of tests/test_page_alloc_props.py, whose variant list
is derived from the registry: the same alloc/free/drain/isolate sequences give the same PFNs,
zone/pcp/pageblock state and free lists as every built-in option.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from numba import njit

from memdesc.mm import free_tracking as ft
from memdesc.mm.ft_common import C_BUDDY, C_F_MD, C_HPZ, C_W, Z_BASE, misc_word, zx
from memdesc.mm.ft_packed import HEADV0
from memdesc.mm.memdesc import MISC_SUBTYPE_ALLOC_PAGES, MISC_SUBTYPE_RESERVED
from memdesc.stages import TrackingOption, get_stage, tracking_variants

TOY_ENV = "MEMDESC_TOY_FREE_TRACKING"
_M28 = np.uint64((1 << 28) - 1)
_U4 = np.uint64(15)
NIB_TAIL, NIB_PCP = 0xD, 0xC


@njit
def _word(mem, S, pfn):
    return pfn * S[C_W] + S[C_F_MD]


@njit
def link_get(mem, S, node, which, gz, order):
    v = np.int64((mem[_word(mem, S, node)] >> np.uint64(36 - 28 * which)) & _M28)
    if v >= HEADV0:
        return -1 - (gz * S[C_HPZ] + (v - HEADV0))
    return S[zx(S, gz) + Z_BASE] + (v << order)


@njit
def link_set(mem, S, node, which, to, gz, order):
    if to >= 0:
        v = np.uint64((to - S[zx(S, gz) + Z_BASE]) >> order)
    else:
        v = np.uint64(HEADV0 + (-1 - to) - gz * S[C_HPZ])
    sh = np.uint64(36 - 28 * which)
    i = _word(mem, S, node)
    mem[i] = (mem[i] & ~(_M28 << sh)) | (v << sh)


@njit
def buddy_order_of(mem, S, pfn):
    w = mem[_word(mem, S, pfn)]
    o = np.int64((w >> np.uint64(4)) & _U4)
    return o if np.int64(w & _U4) == S[C_BUDDY] and o <= 10 else -1


@njit
def set_buddy_order(mem, S, pfn, order):
    i = _word(mem, S, pfn)
    mem[i] = (mem[i] & ~np.uint64(0xFF)) | np.uint64(S[C_BUDDY]) | np.uint64(order << 4)


@njit
def free_state(mem, S, pfn):
    mem[_word(mem, S, pfn)] = np.uint64(S[C_BUDDY]) | np.uint64(NIB_TAIL << 4)


@njit
def free_range(mem, S, pfn, n):
    for i in range(n):
        free_state(mem, S, pfn + i)


@njit
def clear_buddy(mem, S, pfn):
    free_state(mem, S, pfn)


@njit
def mark_pcp(mem, S, pfn):
    i = _word(mem, S, pfn)
    mem[i] = (mem[i] & ~np.uint64(0xF0)) | np.uint64(NIB_PCP << 4)


@njit
def is_pcp_page(mem, S, pfn):
    w = mem[_word(mem, S, pfn)]
    return 1 if np.int64(w & _U4) == S[C_BUDDY] and (w >> np.uint64(4)) & _U4 == NIB_PCP else 0


@njit
def tail_ok(mem, S, pfn):
    return np.int64(mem[_word(mem, S, pfn)] & _U4) == S[C_BUDDY]


@njit
def init_reserved(mem, S, pfn, gz):
    mem[_word(mem, S, pfn)] = misc_word(S, MISC_SUBTYPE_RESERVED, 0, gz)


@njit
def prep_new_page(mem, S, pfn, order, comp, gz):
    word = misc_word(S, MISC_SUBTYPE_ALLOC_PAGES, order, gz)
    for i in range(np.int64(1) << order):
        mem[_word(mem, S, pfn + i)] = word


def _module() -> types.ModuleType:
    mod = types.ModuleType("toy_split", "toy page8 encoding: prev/next swapped")
    mod.NAME = "split"
    mod.configure = lambda stage, cfg: None
    for op in ft.OPS:
        setattr(mod, op, globals()[op])
    return mod


if os.environ.get(TOY_ENV) == "1" and "split" not in ft.ENCODINGS:
    # loaded as a pytest plugin (-p) before the property tests import the allocator
    ft.register(_module(), TrackingOption("split", "toy: prev/next swapped"), ("page8",))
    print(f"toy variants: {' '.join(tracking_variants())}")


def test_unknown_encoding_name_is_an_error_when_the_config_is_built():
    from dataclasses import replace

    with pytest.raises(ValueError, match="unknown free-page tracking 'nope'"):
        ft.make_cfg(replace(get_stage("page8"), free_tracking="nope"), 2, 1)


def test_unknown_encoding_id_raises_in_numba():
    cfg = ft.make_cfg(get_stage("page8"), 2, 1)
    S = np.zeros(ft.NCFG + 64, np.int64)
    S[:ft.NCFG] = cfg
    S[ft.C_ENC] = len(ft.REGISTRY) + 3
    with pytest.raises(ValueError, match="unknown free-page tracking encoding id"):
        ft.buddy_order_of(np.zeros(16, np.uint64), S, 0)


def test_an_incomplete_module_is_refused():
    mod = types.ModuleType("half")
    mod.NAME, mod.configure, mod.link_get = "half", lambda s, c: None, link_get
    with pytest.raises(ValueError, match="lacks link_set"):
        ft.register(mod)


def test_registering_after_the_allocator_compiled_is_refused():
    ft.buddy_order_of(np.zeros(16, np.uint64), ft.make_cfg(get_stage("page8"), 2, 1), 0)
    with pytest.raises(RuntimeError, match="before the allocator runs"):
        ft.register(_module())


def test_layout_drives_the_word_indices():
    """The C_F_* slots are the layout's offsets / 8 (v6.18: page_type at 48, private 40)."""
    cfg = ft.make_cfg(get_stage("v6.18"), 2, 1)
    assert (cfg[ft.C_W], cfg[ft.C_F_FLAGS], cfg[ft.C_F_MD]) == (8, 0, -1)
    from memdesc.mm.ft_common import C_F_LINK, C_F_PRIV, C_F_PTYPE, C_REF_SHIFT
    assert (cfg[C_F_LINK], cfg[C_F_PRIV], cfg[C_F_PTYPE], cfg[C_REF_SHIFT]) == (1, 5, 6, 32)
    p16 = ft.make_cfg(get_stage("page16"), 2, 1)
    assert (p16[ft.C_W], p16[ft.C_F_FLAGS], p16[C_F_LINK], p16[ft.C_F_MD]) == (2, -1, 0, 0)


def test_a_toy_option_from_this_file_passes_the_property_tests(tmp_path):
    """Cold numba compile in a cache of its own (about a minute): cached allocator kernels
    of the main cache were compiled without the toy."""
    here = Path(__file__).resolve().parent
    env = {**os.environ, TOY_ENV: "1", "NUMBA_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")]),
           "HYPOTHESIS_PROFILE": "dev"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "test_free_tracking_toy",
                        "-p", "no:cacheprovider", str(here / "test_page_alloc_props.py")],
                       env=env, capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "page8/split" in r.stdout.split("toy variants:")[1]
