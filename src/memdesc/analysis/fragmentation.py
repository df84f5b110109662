"""Fragmentation metrics from per-zone free-block counts (``free_area[order].nr_free``).

The input is what /proc/buddyinfo prints and what the emulator keeps: for each zone the number
of free blocks of each order 0..MAX_PAGE_ORDER. From it:

* the kernel's **unusable free space index** and **fragmentation index** per order, with the
  exact integer arithmetic of mm/vmstat.c (fill_contig_page_info(), unusable_free_index(),
  __fragmentation_index()): values are thousandths, and :func:`format_index` prints them as
  debugfs ``extfrag/unusable_index`` and ``extfrag/extfrag_index`` do ("%d.%03d");
* **free 2 MiB blocks**: free pageblocks (order >= pageblock_order blocks, counted in
  pageblocks), i.e. ``free_blocks_suitable`` at pageblock_order;
* the **LLFree free-huge / optimal score** [S: luhsra/llfree-rs bench/src/bin/replay.rs]:
  100 * free huge frames / (free frames >> HUGE_ORDER), with huge frames = pageblocks.

All functions accept arrays whose last axis is the order (shape ``[..., NR_PAGE_ORDERS]``), so
a whole replay's samples (samples x zones x orders) are computed in one vectorised call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: MAX_PAGE_ORDER / pageblock_order on x86-64 with 4 KiB pages [S: include/linux/mmzone.h,
#: include/linux/pageblock-flags.h; M: buddyinfo has 11 columns, pagetypeinfo "Page block
#: order: 9"].
MAX_PAGE_ORDER = 10
NR_PAGE_ORDERS = MAX_PAGE_ORDER + 1
PAGEBLOCK_ORDER = 9


def _counts(nr_free) -> np.ndarray:
    a = np.asarray(nr_free, dtype=np.int64)
    if a.shape[-1:] != (NR_PAGE_ORDERS,):
        raise ValueError(f"expected {NR_PAGE_ORDERS} free-block counts per zone (orders "
                         f"0..{MAX_PAGE_ORDER}), got shape {a.shape}")
    if (a < 0).any():
        raise ValueError("free-block counts must not be negative")
    return a


@dataclass(frozen=True)
class ContigPageInfo:
    """struct contig_page_info of mm/vmstat.c for one zone and one suitable order."""

    free_pages: int
    free_blocks_total: int
    free_blocks_suitable: int


def fill_contig_page_info(nr_free, suitable_order: int) -> ContigPageInfo:
    """Mirrors fill_contig_page_info() in mm/vmstat.c for one zone's ``nr_free`` counts."""
    a = _counts(nr_free)
    fp, total, suitable = contig_arrays(a, suitable_order)
    return ContigPageInfo(int(fp), int(total), int(suitable))


def contig_arrays(nr_free, suitable_order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(free_pages, free_blocks_total, free_blocks_suitable) over the leading axes.

    Mirrors fill_contig_page_info(): free_pages = Σ nr_free[o] << o, free_blocks_total =
    Σ nr_free[o], free_blocks_suitable = Σ_{o >= suitable} nr_free[o] << (o - suitable).
    """
    a = _counts(nr_free)
    orders = np.arange(NR_PAGE_ORDERS, dtype=np.int64)
    free_pages = (a << orders).sum(axis=-1)
    total = a.sum(axis=-1)
    k = int(suitable_order)
    suitable = (a[..., k:] << orders[: NR_PAGE_ORDERS - k]).sum(axis=-1)
    return free_pages, total, suitable


def unusable_free_index(nr_free) -> np.ndarray:
    """Thousandths per order ([..., NR_PAGE_ORDERS] int64). Mirrors unusable_free_index():
    1000 when nothing is free, else (free_pages - (suitable << order)) * 1000 / free_pages
    (div_u64: truncating)."""
    a = _counts(nr_free)
    out = np.empty(a.shape, np.int64)
    for order in range(NR_PAGE_ORDERS):
        fp, _, suitable = contig_arrays(a, order)
        safe = np.where(fp == 0, 1, fp)
        out[..., order] = np.where(fp == 0, 1000, (fp - (suitable << order)) * 1000 // safe)
    return out


def fragmentation_index(nr_free) -> np.ndarray:
    """Thousandths per order ([..., NR_PAGE_ORDERS] int64). Mirrors __fragmentation_index():
    0 with no free blocks, -1000 when a block of the order is free (the index only means
    something when the allocation would fail), else
    1000 - (1000 + free_pages * 1000 / 2^order) / free_blocks_total (integer divisions)."""
    a = _counts(nr_free)
    out = np.empty(a.shape, np.int64)
    for order in range(NR_PAGE_ORDERS):
        fp, total, suitable = contig_arrays(a, order)
        safe = np.where(total == 0, 1, total)
        idx = 1000 - (1000 + (fp * 1000 >> order)) // safe
        out[..., order] = np.where(total == 0, 0, np.where(suitable > 0, -1000, idx))
    return out


def format_index(index: int, width: int = 0) -> str:
    """One value as debugfs prints it: ``"%d.%03d"`` (unusable_index) or ``"%2d.%03d"``
    (extfrag_index, ``width=2``) of ``index / 1000, index % 1000`` with C's truncating
    division and remainder (-1000 prints as "-1.000")."""
    index = int(index)
    q = abs(index) // 1000 * (1 if index >= 0 else -1)
    r = abs(index) % 1000
    return f"{q:{width}d}.{r:03d}"


def free_pageblocks(nr_free, pageblock_order: int = PAGEBLOCK_ORDER) -> np.ndarray:
    """Free 2 MiB (pageblock) blocks: free blocks of order >= pageblock_order counted in
    pageblocks (free_blocks_suitable at pageblock_order)."""
    return contig_arrays(nr_free, pageblock_order)[2]


def free_huge_score(nr_free, huge_order: int = PAGEBLOCK_ORDER) -> np.ndarray:
    """LLFree's score in percent: 100 * free huge frames / optimal, optimal = free pages >>
    huge_order (the huge frames the free memory would fill if it were perfectly compact).
    NaN where less than one huge frame is free (the score is undefined)."""
    fp, _, suitable = contig_arrays(nr_free, huge_order)
    optimal = fp >> huge_order
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(optimal > 0, 100.0 * suitable / np.maximum(optimal, 1), np.nan)


@dataclass
class ZoneFragmentation:
    """Every metric of one zone (indices in thousandths)."""

    node: int
    zone: str
    nr_free: list[int]
    free_pages: int
    unusable_index: list[int]
    extfrag_index: list[int]
    free_2m_blocks: int
    free_huge_percent: float | None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def zone_fragmentation(node: int, zone: str, nr_free) -> ZoneFragmentation:
    a = _counts(nr_free)
    score = float(free_huge_score(a))
    return ZoneFragmentation(
        node, zone, [int(x) for x in a], int(contig_arrays(a, 0)[0]),
        [int(x) for x in unusable_free_index(a)], [int(x) for x in fragmentation_index(a)],
        int(free_pageblocks(a)), None if np.isnan(score) else score)


def buddyinfo_fragmentation(buddyinfo: dict[tuple[int, str], list[int]]
                            ) -> list[ZoneFragmentation]:
    """Metrics for every zone of a parsed /proc/buddyinfo (memdesc.ingest.procfs)."""
    return [zone_fragmentation(node, zone, counts) for (node, zone), counts in buddyinfo.items()]


def debugfs_text(zones: list[ZoneFragmentation], which: str = "unusable") -> str:
    """The text of debugfs ``extfrag/unusable_index`` (``which="unusable"``) or
    ``extfrag/extfrag_index`` (``"extfrag"``). Mirrors unusable_show_print() /
    extfrag_show_print(): "Node %d, zone %8s " then one value per order."""
    if which not in ("unusable", "extfrag"):
        raise ValueError(f"which must be 'unusable' or 'extfrag', not {which!r}")
    lines = []
    for z in zones:
        vals, width = ((z.unusable_index, 0) if which == "unusable"
                       else (z.extfrag_index, 2))
        lines.append(f"Node {z.node}, zone {z.zone:>8s} "
                     + "".join(format_index(v, width) + " " for v in vals))
    return "\n".join(lines) + ("\n" if lines else "")
