"""The replay's numba loops over the emulated allocator: placement (the trace's PFNs drive
the buddy and pcp lists) and policy (the emulator places the requests). See
memdesc.analysis.replay for the meaning of each event."""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.analysis.replay_folios import (
    is_folio_class,
    is_start_folio,
    release_start_folios_in,
    replay_folio_alloc,
    replay_folio_put,
)
from memdesc.analysis.replay_ops import (
    M_ALLOC_CLAIMED,
    M_ALLOC_FAILED,
    M_ALLOC_OF_ALLOCATED,
    M_ALLOC_SNAPSHOT_PCP,
    M_DRAIN_CLAIMED,
    M_DRAIN_NOT_PCP,
    M_DRAIN_SNAPSHOT_PCP,
    M_FREE_AFTER_BULK,
    M_FREE_OF_FREE,
    M_FREE_UNKNOWN,
    M_ORDER_MISMATCH,
    M_PAGEBLOCK_MT_LEARNED,
    M_SNAPSHOT_UNIT_ORDER,
    M_TAKE_FROM_PCP,
    M_TAKE_NOT_FREE,
    M_TAKE_PARTIAL,
    M_UNMANAGED,
    OP_ALLOC,
    OP_DRAIN,
    OP_FREE,
    OP_TAKE,
    ST_ALLOC,
    ST_NONE,
    ST_PCP,
    ST_SNAP,
    ST_TAKEN,
)
from memdesc.mm import page_alloc as pa
from memdesc.mm.free_tracking import (
    clear_buddy,
    free_state,
    page_zone_index,
    prep_new_page,
    unmanaged,
)
from memdesc.mm.gfp import (
    MIGRATE_HIGHATOMIC,
    MIGRATE_ISOLATE,
    MIGRATE_MOVABLE,
    MIGRATE_PCPTYPES,
)
from memdesc.mm.mmzone import NR_PAGE_ORDERS, pageblock_order
from memdesc.mm.page_take import (
    claim_whole_block,
    free_head_of,
    pcp_list_add,
    pcp_list_del,
    pcp_pages,
    take_range,
    zone_nr_free,
)
from memdesc.mm.vmstat import STAT_INTERVAL_NS, vmstat_update_until

#: the columns of ``mism`` [mismatch, column]: how many, the first and the last op index
MISM_COUNT, MISM_FIRST, MISM_LAST = 0, 1, 2
#: the slots of the policy loop's ``vm``: the next vmstat interval (trace clock ns, < 0:
#: vmstat off), the pages decay_pcp_high() freed, the intervals run
VM_NEXT, VM_FREED, VM_INTERVALS = 0, 1, 2


# ---- unit accounting (both modes) ---------------------------------------------------------------

@njit(cache=True, nogil=True)
def _unit_add(ucls, uord, units, p, o, c):
    ucls[p] = c
    uord[p] = o
    units[c, o] += 1


@njit(cache=True, nogil=True)
def _unit_drop(ucls, uord, units, p, o):
    """Remove the units whose heads lie in [p, p + 2^o)."""
    if ucls[p] >= 0 and uord[p] == o:
        units[ucls[p], uord[p]] -= 1
        ucls[p] = -1
        return
    for q in range(p, p + (np.int64(1) << o)):
        if ucls[q] >= 0:
            units[ucls[q], uord[q]] -= 1
            ucls[q] = -1


# ---- placement ---------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _count(mism, slot, i):
    """Count a mismatch and keep the first and last op index where it happened."""
    if mism[slot, MISM_COUNT] == 0:
        mism[slot, MISM_FIRST] = i
    mism[slot, MISM_COUNT] += 1
    mism[slot, MISM_LAST] = i


@njit(cache=True, nogil=True)
def _pcp_unlink(mem, S, st, blk, pcpu, p):
    """Take block ``p`` off the pcp list it sits on (list_del + per_cpu_pages.count)."""
    pcp_list_del(mem, S, p, np.int64(blk[p]), page_zone_index(mem, S, p), pcpu[p])
    st[p] = ST_NONE


@njit(cache=True, nogil=True)
def _pcp_link(mem, S, st, blk, pcpu, p, o, gz, cpu, mt, tail):
    """Put block ``p`` on ``cpu``'s pcp list for (mt, o) (rmqueue_bulk() adds at the tail,
    free_frozen_page_commit() at the head: memdesc.mm.page_take.pcp_list_add())."""
    pcp_list_add(mem, S, p, o, gz, cpu, mt, tail)
    st[p] = ST_PCP
    blk[p] = o
    pcpu[p] = cpu


@njit(cache=True, nogil=True)
def _reset_pages(mem, S, st, blk, pcpu, p, o):
    """Every page of [p, p + 2^o) to the free-tail state. Blocks the replay still tracks
    inside it (a snapshot unit, an allocation or a pcp block of its own, the trace's block
    being larger) are forgotten first, pcp blocks unlinked: a later event on one of them
    then sees memory the emulator already holds, never a stale state (freeing it twice
    would corrupt the free lists)."""
    for q in range(p + 1, p + (np.int64(1) << o)):
        if st[q] == ST_PCP:
            _pcp_unlink(mem, S, st, blk, pcpu, q)
        st[q] = ST_NONE
    for q in range(p, p + (np.int64(1) << o)):
        free_state(mem, S, q)


@njit(cache=True, nogil=True)
def _to_buddy(mem, S, p, o, gz):
    """A block leaves the allocator's hands for the buddy lists (__free_one_page() with the
    pageblock's migratetype; split per pageblock above pageblock_order)."""
    if o > pageblock_order:
        pa.split_large_buddy(mem, S, p, gz, o, pa.FPI_NONE)
    else:
        pa.__free_one_page(mem, S, p, gz, o, pa.get_pfnblock_migratetype(S, p), pa.FPI_NONE)


@njit(cache=True, nogil=True)
def _sample(S, units, k, nr_free, pcp, units_s):
    """Free blocks per zone and order, pcp pages per zone and the unit counts, into slot k."""
    for gz in range(S[pa.C_NZ]):
        for o in range(NR_PAGE_ORDERS):
            nr_free[k, gz, o] = zone_nr_free(S, gz, o)
        pcp[k, gz] = pcp_pages(S, gz)
    units_s[k] = units


@njit(cache=True, nogil=True)
def _samples_until(S, units, k, event, spos, nr_free, pcp, units_s):
    """Take every sample whose position is at or before ``event`` (before that op is
    applied), from slot ``k``; returns the next slot."""
    while k < spos.shape[0] and event >= spos[k]:
        _sample(S, units, k, nr_free, pcp, units_s)
        k += 1
    return k


@njit(cache=True, nogil=True)
def _learn_mt(mem, S, gz, p, emt):
    """A drain's migratetype is its pageblock's at that moment (free_pcppages_bulk() reads
    get_pfnblock_migratetype()); move the emulated pageblock when it disagrees, unless the
    pageblock sits inside a larger free block. Returns True when moved."""
    pmt = pa.get_pfnblock_migratetype(S, p)
    if not (0 <= emt < MIGRATE_PCPTYPES) or pmt >= MIGRATE_PCPTYPES or emt == pmt:
        return False
    h, o = free_head_of(mem, S, p)
    if o > pageblock_order:
        return False
    return pa.move_freepages_block(mem, S, gz, p, pmt, emt) >= 0


@njit(cache=True, nogil=True)
def _placement_loop(mem, S, lo, hi, kind, pfn, order, mt, cpu, cls, evidx, applies, first,
                    managed, st, blk, pcpu, ucls, uord, units, mism, spos, snext, nr_free, pcp,
                    units_s):
    """Apply ops [lo, hi) as the kernel did (module docstring); record a sample before the
    first op at or past each sample position. Returns the next sample slot."""
    mem, S = unmanaged(mem), unmanaged(S)
    ncpu = S[pa.C_NCPU]
    k = snext
    for i in range(lo, hi):
        k = _samples_until(S, units, k, evidx[i], spos, nr_free, pcp, units_s)
        if not applies[i]:
            continue
        p = pfn[i]
        o = np.int64(order[i])
        if p < 0 or p + (np.int64(1) << o) > managed.shape[0] or not managed[p]:
            _count(mism, M_UNMANAGED, i)
            continue
        gz = page_zone_index(mem, S, p)
        c = cpu[i] % ncpu
        op = kind[i]
        s = st[p]
        if op == OP_TAKE:
            if s == ST_PCP:
                _count(mism, M_TAKE_FROM_PCP, i)
                _pcp_unlink(mem, S, st, blk, pcpu, p)
            else:
                r = take_range(mem, S, gz, p, o)
                if r == 0:
                    _count(mism, M_TAKE_NOT_FREE, i)
                elif r == 1:
                    _count(mism, M_TAKE_PARTIAL, i)
                if s in (ST_ALLOC, ST_SNAP):
                    _unit_drop(ucls, uord, units, p, o)
                    _reset_pages(mem, S, st, blk, pcpu, p, o)
            if pa.pcp_allowed_order(o):
                _pcp_link(mem, S, st, blk, pcpu, p, o, gz, c, mt[i], True)
            else:
                st[p] = ST_TAKEN
                blk[p] = o
        elif op == OP_ALLOC:
            if s == ST_PCP:
                if blk[p] != o:
                    _count(mism, M_ORDER_MISMATCH, i)
                small = blk[p] < o
                _pcp_unlink(mem, S, st, blk, pcpu, p)
                if small:
                    take_range(mem, S, gz, p, o)
            elif s == ST_TAKEN:
                if blk[p] != o:
                    _count(mism, M_ORDER_MISMATCH, i)
            elif s in (ST_SNAP, ST_ALLOC):
                if s == ST_SNAP and first[i]:
                    _count(mism, M_ALLOC_SNAPSHOT_PCP, i)
                else:
                    _count(mism, M_ALLOC_OF_ALLOCATED, i)
                _unit_drop(ucls, uord, units, p, o)
                _reset_pages(mem, S, st, blk, pcpu, p, o)
            else:
                _count(mism, M_ALLOC_CLAIMED, i)
                claim_whole_block(mem, S, gz, p, o, mt[i])
            prep_new_page(mem, S, p, o, o > 0, gz)
            st[p] = ST_ALLOC
            blk[p] = o
            _unit_add(ucls, uord, units, p, o, cls[i])
        elif op == OP_FREE:
            if s == ST_PCP:
                _count(mism, M_FREE_AFTER_BULK, i)
                _pcp_unlink(mem, S, st, blk, pcpu, p)
            elif s == ST_TAKEN:
                _count(mism, M_FREE_AFTER_BULK, i)
            elif s == ST_NONE:
                # it must have been allocated: take it as an untraced claim + bulk allocation
                _count(mism, M_FREE_OF_FREE, i)
                if claim_whole_block(mem, S, gz, p, o, pa.get_pfnblock_migratetype(S, p)) == 0:
                    continue
            elif blk[p] != o:
                _count(mism, M_SNAPSHOT_UNIT_ORDER if s == ST_SNAP else M_ORDER_MISMATCH, i)
            _unit_drop(ucls, uord, units, p, o)
            _reset_pages(mem, S, st, blk, pcpu, p, o)
            st[p] = ST_NONE
            pmt = pa.get_pfnblock_migratetype(S, p)
            if pa.pcp_allowed_order(o) and pmt != MIGRATE_ISOLATE:
                if pmt == MIGRATE_HIGHATOMIC:
                    pmt = MIGRATE_MOVABLE
                _pcp_link(mem, S, st, blk, pcpu, p, o, gz, c, pmt, False)
            else:
                _to_buddy(mem, S, p, o, gz)
        else:                                                     # OP_DRAIN
            if s == ST_PCP:
                if blk[p] != o:
                    _count(mism, M_ORDER_MISMATCH, i)
                _pcp_unlink(mem, S, st, blk, pcpu, p)
                clear_buddy(mem, S, p)
            elif s in (ST_SNAP, ST_ALLOC, ST_TAKEN):
                if s == ST_SNAP and first[i]:
                    _count(mism, M_DRAIN_SNAPSHOT_PCP, i)
                else:
                    _count(mism, M_DRAIN_NOT_PCP, i)
                _unit_drop(ucls, uord, units, p, o)
                _reset_pages(mem, S, st, blk, pcpu, p, o)
                st[p] = ST_NONE
            else:
                _count(mism, M_DRAIN_CLAIMED, i)
                if _learn_mt(mem, S, gz, p, mt[i]):
                    _count(mism, M_PAGEBLOCK_MT_LEARNED, i)
                continue
            if _learn_mt(mem, S, gz, p, mt[i]):
                _count(mism, M_PAGEBLOCK_MT_LEARNED, i)
            _to_buddy(mem, S, p, o, gz)
    return k


# ---- policy ------------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _policy_loop(mem, S, lo, hi, kind, pfn, order, cpu, gfp, cls, evidx, applies, pair,
                 managed, st, blk, ucls, uord, units, emu, mism, spos, snext, nr_free, pcp,
                 units_s, t, vm, HE, AE):
    """Replay only the requests (module docstring). ``emu[i]`` is the emulator's PFN for
    alloc op ``i`` (-1: failed / not yet / freed). With ``vm[VM_NEXT] >= 0`` (the next vmstat
    interval, trace clock ns) vmstat's periodic work runs as trace time passes
    (memdesc.mm.vmstat: decay_pcp_high() on every CPU each second); ``vm[VM_FREED]`` counts
    the pages it freed, ``vm[VM_INTERVALS]`` the intervals. File/anon units are folios
    (folio_alloc() and folio_put() of memdesc.analysis.replay_folios on ``HE``/``AE``), and
    so are the start units replay_start_folios() made: their free by the trace is a
    folio_put()."""
    mem, S = unmanaged(mem), unmanaged(S)
    ncpu = S[pa.C_NCPU]
    k = snext
    for i in range(lo, hi):
        k = _samples_until(S, units, k, evidx[i], spos, nr_free, pcp, units_s)
        if not applies[i]:
            continue
        if vm[VM_NEXT] >= 0 and t[i] >= vm[VM_NEXT]:
            before = vm[VM_NEXT]
            vm[VM_NEXT], freed = vmstat_update_until(mem, S, t[i], vm[VM_NEXT])
            vm[VM_FREED] += freed
            vm[VM_INTERVALS] += (vm[VM_NEXT] - before) // STAT_INTERVAL_NS
        op = kind[i]
        o = np.int64(order[i])
        if op == OP_ALLOC:
            if is_folio_class(cls[i]):
                q = replay_folio_alloc(HE, AE, gfp[i], o, cpu[i] % ncpu, cls[i])
            else:
                q = pa.alloc_pages_nb(mem, S, gfp[i], o, 0, cpu[i] % ncpu)
            emu[i] = q
            if q < 0:
                _count(mism, M_ALLOC_FAILED, i)
                continue
            st[q] = ST_ALLOC
            blk[q] = o
            _unit_add(ucls, uord, units, q, o, cls[i])
        elif op == OP_FREE:
            j = pair[i]
            if j >= 0 and applies[j]:
                q = emu[j]
                if q < 0:
                    _count(mism, M_FREE_UNKNOWN, i)
                    continue
                oo = np.int64(order[j])
                emu[j] = -1
                folio = is_folio_class(cls[j])
            else:
                q = pfn[i]                 # an allocation the snapshot holds at this pfn
                oo = o
                if q < 0 or q >= managed.shape[0] or not managed[q] or st[q] != ST_SNAP:
                    _count(mism, M_FREE_UNKNOWN, i)
                    continue
                folio = is_start_folio(ucls, uord, q)
                if folio:                  # folio_put() frees the folio's own order
                    oo = np.int64(uord[q])
                elif oo > 0:
                    release_start_folios_in(HE, AE, st, ucls, uord, q, oo)
            _unit_drop(ucls, uord, units, q, oo)
            st[q] = ST_NONE
            if folio:
                replay_folio_put(HE, AE, q, oo, cpu[i] % ncpu)
            else:
                pa.free_pages_nb(mem, S, q, oo, cpu[i] % ncpu)
    return k


@njit(cache=True, nogil=True)
def _policy_release_pcp(mem, S, kind, pfn, order, applies, first, managed, st, ucls, uord,
                        units):
    """Policy start: pages the snapshot shows in use that the trace first allocates or drains
    without a zone_locked were free on pcp lists; free them so both modes start with the same
    free memory. Returns the pages freed."""
    mem, S = unmanaged(mem), unmanaged(S)
    freed = 0
    for i in range(kind.shape[0]):
        if not (applies[i] and first[i]) or (kind[i] != OP_ALLOC and kind[i] != OP_DRAIN):
            continue
        p = pfn[i]
        o = np.int64(order[i])
        if p < 0 or p >= managed.shape[0] or not managed[p] or st[p] != ST_SNAP:
            continue
        _unit_drop(ucls, uord, units, p, o)
        st[p] = ST_NONE
        pa.free_pages_nb(mem, S, p, o, 0)
        freed += np.int64(1) << o
    return freed




@njit(cache=True, nogil=True)
def unit_counts_nb(ucls, uord, out):
    """``out[c, o] += 1`` for every PFN heading a unit of class ``c`` and order ``o``
    (``ucls >= 0``); returns the first PFN whose class or order does not fit ``out``, else
    -1 (then ``out`` is incomplete)."""
    for i in range(ucls.shape[0]):
        c = ucls[i]
        if c < 0:
            continue
        o = uord[i]
        if c >= out.shape[0] or o < 0 or o >= out.shape[1]:
            return i
        out[c, o] += 1
    return -1
