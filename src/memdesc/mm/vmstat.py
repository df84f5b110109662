"""vmstat's periodic work on the per-cpu pagesets (the pcp->high decay), and the free-list
views of /proc/buddyinfo and /proc/pagetypeinfo.

Mirrors refresh_cpu_vm_stats(do_pagesets=true) in mm/vmstat.c as far as the page allocator
sees it: every ``sysctl_stat_interval`` (HZ, one second) vmstat_update() runs on each CPU and
calls decay_pcp_high() (mm/page_alloc.c) for every populated zone. decay_pcp_high() came
with pcp->high auto-tuning, commit 51a755c56dc0 "mm: tune PCP high automatically" (Huang
Ying, Linux 6.7, part of the "mm: PCP high auto-tuning" series): pcp->high, grown by
nr_pcp_alloc() while the zone is above its high watermark, decays by an eighth per interval
towards high_min, and whatever the pcp holds above the new high goes back to the buddy
(free_pcppages_bulk()).

Departures: the kernel's per-CPU timers are deferrable and stop on an idle CPU
(vmstat_shepherd() restarts them when a CPU has work); here every CPU runs at each whole
interval of the caller's clock. The counter folding of refresh_cpu_vm_stats() (NUMA and
zone statistics) has no allocator effect and is not modelled; nor is drain_zone_pages()
for remote nodes' pagesets (CONFIG_NUMA, pcp->expire).

The views mirror frag_show_print() (buddyinfo(): free_area[order].nr_free per zone) and
pagetypeinfo_showfree_print() (pagetypeinfo_free_nb(): blocks per migratetype and order,
counted by walking the lists); free_lists() is our own: every non-empty free and pcp list in
list order, to compare stages (a corrupt list raises VMBug).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numba import njit

from memdesc.mm import free_tracking as ft
from memdesc.mm.free_tracking import (
    C_NCPU,
    C_NZ,
    NR_PCP_LISTS,
    px,
    unmanaged,
    zx,
)
from memdesc.mm.gfp import MIGRATE_TYPES
from memdesc.mm.mmzone import (
    NR_PAGE_ORDERS,
    NR_ZONES,
    ZONE_NAMES,
)
from memdesc.mm.pcp import free_pcppages_bulk
from memdesc.mm.zone_state import (
    CONFIG_PCP_BATCH_SCALE_MAX,
    P_BATCH,
    P_COUNT,
    P_HIGH,
    P_HIGH_MIN,
    Z_END,
    Z_FREE,
    Z_MANAGED,
    Z_NRFREE,
    Z_START,
    VMBug,
    free_head,
    pcp_head,
    pindex_to_order,
)

if TYPE_CHECKING:
    from memdesc.mm.memmap_init import MemMap

#: sysctl_stat_interval: HZ, i.e. one second (mm/vmstat.c)
STAT_INTERVAL_NS = 1_000_000_000


@njit(cache=True, nogil=True)
def decay_pcp_high(mem, S, gz, cpu):
    """Mirrors decay_pcp_high(): pcp->high = max3(count - (batch << CONFIG_PCP_BATCH_SCALE_MAX),
    high - high / 8, high_min) while above high_min; pages above the new high are freed
    to the buddy from pindex 0 on. Returns the pages freed (the kernel returns only
    whether work remains)."""
    pc = px(S, gz, cpu)
    high_min = S[pc + P_HIGH_MIN]
    batch = S[pc + P_BATCH]
    high = S[pc + P_HIGH]
    if high > high_min:
        S[pc + P_HIGH] = max(S[pc + P_COUNT] - (batch << CONFIG_PCP_BATCH_SCALE_MAX),
                                high - (high >> 3), high_min)
    to_drain = S[pc + P_COUNT] - S[pc + P_HIGH]
    if to_drain > 0:
        before = S[pc + P_COUNT]
        free_pcppages_bulk(mem, S, gz, cpu, to_drain, 0)
        return before - S[pc + P_COUNT]
    return 0


@njit(cache=True, nogil=True)
def refresh_cpu_vm_stats(mem, S, cpu):
    """The pagesets part of refresh_cpu_vm_stats(true) on ``cpu``: decay_pcp_high() for
    every populated zone. Returns the pages freed."""
    freed = 0
    for gz in range(S[C_NZ]):
        if S[zx(S, gz) + Z_MANAGED] > 0:
            freed += decay_pcp_high(mem, S, gz, cpu)
    return freed


@njit(cache=True, nogil=True)
def vmstat_update_until(mem, S, now_ns, next_ns):
    """Run vmstat_update() on every CPU for each interval boundary up to ``now_ns``, the
    next one being ``next_ns``; returns (the following boundary, pages freed)."""
    freed = 0
    if now_ns < next_ns:
        return next_ns, freed
    # the interval count computed once (a while loop here made LLVM ask for a 128-bit
    # division, __udivti3, which numba does not link)
    n = (now_ns - next_ns) // STAT_INTERVAL_NS + 1
    for _ in range(n):
        for cpu in range(S[C_NCPU]):
            freed += refresh_cpu_vm_stats(mem, S, cpu)
    return next_ns + n * STAT_INTERVAL_NS, freed


def decay_pcp_high_mm(mm: MemMap, nid: int = 0, zone: int | str = "Normal",
                      cpu: int = 0) -> int:
    """decay_pcp_high() on one zone's pageset of ``cpu`` (Python entry)."""
    return int(decay_pcp_high(mm.mem, mm.S, mm.zone_index(nid, zone), cpu))


# ---- /proc/buddyinfo, /proc/pagetypeinfo and the list walk --------------------------------------

@njit(cache=True)
def walk_list_nb(mem, S, h, gz, order, out):
    """PFNs of list ``h`` in order into ``out``; returns the count (-2 if the back links are
    inconsistent, -3 if longer than ``out``)."""
    mem, S = unmanaged(mem), unmanaged(S)
    n = 0
    prev = -1 - h
    node = ft.fl_next(mem, S, prev, h, gz, order)
    while node != -1 - h:
        if n >= out.shape[0]:
            return -3
        if not ft.fl_linked_ok(mem, S, node, prev, h, gz, order):
            return -2
        out[n] = node
        n += 1
        prev = node
        node = ft.fl_next(mem, S, node, h, gz, order)
    if ft.fl_last(mem, S, h, gz, order) != prev:
        return -2
    return n


@njit(cache=True, nogil=True)
def pagetypeinfo_free_nb(mem, S, gz, out):
    """Mirrors pagetypeinfo_showfree_print(): ``out[mt, order]`` = blocks on
    zone->free_area[order].free_list[mt], counted by walking the list (without the kernel's
    cap at 100,000). Returns False when a list is longer than the zone could hold (a
    corrupt list: a cycle)."""
    mem, S = unmanaged(mem), unmanaged(S)
    limit = S[zx(S, gz) + Z_END] - S[zx(S, gz) + Z_START]
    for order in range(NR_PAGE_ORDERS):
        for mt in range(MIGRATE_TYPES):
            h = free_head(S, gz, order, mt)
            n = 0
            node = ft.fl_next(mem, S, -1 - h, h, gz, order)
            while node != -1 - h:
                n += 1
                if n > limit:
                    return False
                node = ft.fl_next(mem, S, node, h, gz, order)
            out[mt, order] = n
    return True


def free_lists(mm: MemMap) -> dict:
    """Every non-empty list in list order (to compare stages): keys ("free", nid, zone type,
    order, migratetype) and ("pcp", nid, zone type, cpu, pindex), values lists of PFNs."""
    cfg, zs = mm.cfg, mm.zs
    out: dict = {}
    buf = np.empty(mm.nr_pfns, np.int64)
    for gz in range(int(cfg[C_NZ])):
        if zs[gz, Z_MANAGED] == 0:
            continue
        nid, zt = divmod(gz, NR_ZONES)
        for order in range(NR_PAGE_ORDERS):
            for mt in range(MIGRATE_TYPES):
                n = walk_list_nb(mm.mem, mm.S, free_head(cfg, gz, order, mt), gz, order, buf)
                if n < 0:
                    raise VMBug(f"free list {ZONE_NAMES[zt]} order {order} mt {mt} is corrupt")
                if n:
                    out[("free", nid, zt, order, mt)] = buf[:n].tolist()
        for cpu in range(int(cfg[C_NCPU])):
            for pindex in range(NR_PCP_LISTS):
                order = pindex_to_order(pindex)
                n = walk_list_nb(mm.mem, mm.S, pcp_head(cfg, gz, cpu, pindex), gz, order, buf)
                if n < 0:
                    raise VMBug(f"pcp list {ZONE_NAMES[zt]} cpu {cpu} {pindex} is corrupt")
                if n:
                    out[("pcp", nid, zt, cpu, pindex)] = buf[:n].tolist()
    return out


def free_area_counts(mm: MemMap) -> np.ndarray:
    """nr_free[zone, order] as /proc/buddyinfo shows it (zones indexed nid*4 + type)."""
    return mm.zs[:, Z_NRFREE:Z_NRFREE + NR_PAGE_ORDERS].copy()


def zone_free_pages(mm: MemMap) -> np.ndarray:
    """NR_FREE_PAGES per zone."""
    return mm.zs[:, Z_FREE].copy()


def zone_managed_pages(mm: MemMap) -> np.ndarray:
    """Mirrors zone_managed_pages() [include/linux/mmzone.h] per zone (zones indexed
    nid*4 + type): the pages the buddy allocator manages (0: an empty or absent zone)."""
    return mm.zs[:, Z_MANAGED].copy()


def pcp_count(mm: MemMap) -> np.ndarray:
    """Pages on pcp lists per zone (summed over CPUs)."""
    return mm.pcp[:, :, P_COUNT].sum(axis=1)


def buddyinfo(mm: MemMap) -> str:
    """The free lists in /proc/buddyinfo's format (frag_show_print())."""
    lines = []
    counts = free_area_counts(mm)
    for gz, z in enumerate(mm.machine.zones):
        if z.managed:
            cols = "".join(f"{c:7d}" for c in counts[gz])
            lines.append(f"Node {z.node}, zone {z.name:>8}{cols}")
    return "\n".join(lines) + "\n"


__all__ = ["STAT_INTERVAL_NS", "decay_pcp_high", "refresh_cpu_vm_stats",
           "vmstat_update_until", "decay_pcp_high_mm", "walk_list_nb", "pagetypeinfo_free_nb",
           "free_lists", "free_area_counts", "zone_free_pages", "pcp_count", "buddyinfo"]
