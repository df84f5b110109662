"""Free-page tracking ``inpage`` (page8): the links live in the free memory itself.

The struct page word is ``packed``'s without links (type Buddy:4 | order:4); next/prev of a
free block are the first 16 bytes of its first page, reached through the direct map, as
SLUB keeps its freelist inside free objects. The emulator keeps those bytes in a region of S
(S[C_OFF_SIDE], two words per PFN): they are page contents, not metadata, so the option
has no side memory; it keeps the kernel's list order exactly.

Blockers in the kernel [S: Wilcox, linux-mm 2025-11-17 "64 bit struct buddy"]: HIGHMEM
(free highmem pages have no permanent mapping to hold the links), debug_pagealloc (free pages
are unmapped from the direct map), free page reporting (a reported page's contents are
discarded by the hypervisor), and init_on_free/page poisoning (they overwrite free pages).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.mm.ft_common import C_OFF_SIDE, acc_inpage
from memdesc.mm.ft_packed import (  # noqa: F401 -- the page word is packed's
    buddy_order_of,
    clear_buddy,
    free_range,
    free_state,
    init_reserved,
    is_pcp_page,
    mark_pcp,
    prep_new_page,
    set_buddy_order,
    tail_ok,
)

NAME = "inpage"


def configure(stage, cfg: np.ndarray) -> None:
    """Nothing beyond the layout slots."""


def side_words(nr_pfns: int) -> int:
    """Words of S for the in-page links (next, prev per PFN)."""
    return 2 * nr_pfns


@njit(cache=True)
def link_get(mem, S, node, which, gz, order):
    to = S[S[C_OFF_SIDE] + 2 * node + which]
    acc_inpage(S, node, which, to, False)
    return to


@njit(cache=True)
def link_set(mem, S, node, which, to, gz, order):
    S[S[C_OFF_SIDE] + 2 * node + which] = to
    acc_inpage(S, node, which, to, True)
