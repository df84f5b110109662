"""vmstat's periodic work on the per-cpu pagesets: the pcp->high decay.

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
"""

from __future__ import annotations

from numba import njit

from memdesc.mm import page_alloc as pa
from memdesc.mm.free_tracking import px, zx

#: sysctl_stat_interval: HZ, i.e. one second (mm/vmstat.c)
STAT_INTERVAL_NS = 1_000_000_000


@njit(cache=True, nogil=True)
def decay_pcp_high(mem, S, gz, cpu):
    """Mirrors decay_pcp_high(): pcp->high = max3(count - (batch << CONFIG_PCP_BATCH_SCALE_MAX),
    high - high / 8, high_min) while above high_min; pages above the new high are freed
    to the buddy from pindex 0 on. Returns the pages freed (the kernel returns only
    whether work remains)."""
    pc = px(S, gz, cpu)
    high_min = S[pc + pa.P_HIGH_MIN]
    batch = S[pc + pa.P_BATCH]
    high = S[pc + pa.P_HIGH]
    if high > high_min:
        S[pc + pa.P_HIGH] = max(S[pc + pa.P_COUNT] - (batch << pa.CONFIG_PCP_BATCH_SCALE_MAX),
                                high - (high >> 3), high_min)
    to_drain = S[pc + pa.P_COUNT] - S[pc + pa.P_HIGH]
    if to_drain > 0:
        before = S[pc + pa.P_COUNT]
        pa.free_pcppages_bulk(mem, S, gz, cpu, to_drain, 0)
        return before - S[pc + pa.P_COUNT]
    return 0


@njit(cache=True, nogil=True)
def refresh_cpu_vm_stats(mem, S, cpu):
    """The pagesets part of refresh_cpu_vm_stats(true) on ``cpu``: decay_pcp_high() for
    every populated zone. Returns the pages freed."""
    freed = 0
    for gz in range(S[pa.C_NZ]):
        if S[zx(S, gz) + pa.Z_MANAGED] > 0:
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
        for cpu in range(S[pa.C_NCPU]):
            freed += refresh_cpu_vm_stats(mem, S, cpu)
    return next_ns + n * STAT_INTERVAL_NS, freed


def decay_pcp_high_mm(mm: pa.MemMap, nid: int = 0, zone: int | str = "Normal",
                      cpu: int = 0) -> int:
    """decay_pcp_high() on one zone's pageset of ``cpu`` (Python entry)."""
    return int(decay_pcp_high(mm.mem, mm.S, mm.zone_index(nid, zone), cpu))


__all__ = ["STAT_INTERVAL_NS", "decay_pcp_high", "refresh_cpu_vm_stats",
           "vmstat_update_until", "decay_pcp_high_mm"]
