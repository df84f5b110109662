"""Native measurement of the trace-slab stream at every stage (issue 9): whole-process seconds
(target <= 60 s on 2 cores) and the measured ns per operation class, v6.18 beside the others.

What is measured: metadata access cost on this CPU (memdesc.analysis.native_timing), not a
kernel build.

STAND-IN STREAM (until the emulator's access accounting lands, memdesc.mm.access.drain
through the replay's access_sink): the operations are the real trace's own events, in
trace order, on its real PFNs and object addresses (fixtures/trace-slab, 1.7 M events);
their metadata accesses follow the small address model of :func:`standin_stream` below,
written from the kernel functions each class mirrors but far simpler than the emulator:

* alloc_pages.pcp / .buddy (mm_page_alloc): pcp or free_area list head (PTR), the page's
  list word (DEP, PTR), list_del stores, then prep_new_page(): one store per page of the
  block (v6.18..page32: page->flags of the head, compound_head of tails; page16/page8: the
  memdesc word), capped at 512;
* alloc_pages.refill (mm_page_alloc_zone_locked): free_area head (PTR), page list word
  (DEP, PTR), page->private (order), stores to both lists;
* free_pages.pcp / .buddy (mm_page_free): page->flags (or memdesc word) load, pcp head
  (PTR), list stores; free_pages.drain (mm_page_pcpu_drain): pcp head (PTR), page list word
  (DEP), the buddy's order word (p ^ 1 << order), list stores;
* kmem_cache_alloc (kmem_cache_alloc, kmalloc): the cpu freelist (PTR), the object's free
  pointer (DEP, PTR), freelist store;
* kmem_cache_free (kmem_cache_free, kfree; NULL frees skipped): virt_to_slab(): the page's
  compound_head word (PTR), then slab->slab_cache (DEP) in the head struct page (overlay
  stages) or in the slab descriptor (dynamic stages: a direct-map address beyond the RAM,
  64 B per PFN: a stand-in, the emulator knows where it really put it); cpu freelist (PTR),
  the object's free pointer store.

List heads, cpu freelists: HEADS_BASE + (cpu, order / cache) like the emulator's heads.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from memdesc.analysis import native_timing as nt
from memdesc.ingest.ftrace import read_trace
from memdesc.ingest.snapshot import open_snapshot
from memdesc.mm.access import KIND_DEP, KIND_PTR, KIND_STORE, OP_CLASS_ID, AccessStream
from memdesc.mm.ft_common import HEADS_BASE
from memdesc.mm.kmem import PAGE_OFFSET, VMEMMAP_START
from memdesc.stages import STAGES, Stage

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("MEMDESC_FIXTURES", REPO.parent / "shared" / "fixtures"))
BLOCK = 1 << 18                 # operations per add(), like the replay's sink per block
REPEATS = 7
PCP_ORDERS = (0, 1, 2, 3, 9)    # pcp_allowed_order() with THP [M: fixtures README, 9.]
LD, ST = 0, KIND_STORE
PTR, DEP, DEPPTR = KIND_PTR, KIND_DEP, KIND_DEP | KIND_PTR
DESC_BYTES = 64


def _members(stage: Stage) -> dict[str, int]:
    """Offsets the model uses: list word, flags word (or memdesc word), order word."""
    p = stage.page
    link = (p.field("buddy_list") or p.field("memdesc")).offset
    flags = p.field("flags").offset if p.has("flags") else p.field("memdesc").offset
    order = p.field("private").offset if p.has("private") else link
    tail = p.field("compound_head").offset if p.has("compound_head") else \
        p.field("memdesc").offset
    return {"link": link, "flags": flags, "order": order, "tail": tail}


class _Builder:
    """Collects (op index, seq, addr, kind) segments; ``stream()`` orders them."""

    def __init__(self, nops: int):
        self.nops, self.parts = nops, []

    def add(self, ops: np.ndarray, seq: int, addr: np.ndarray, kind: int) -> None:
        self.parts.append((ops, np.full(len(ops), seq, np.int32),
                           np.asarray(addr, np.uint64), np.full(len(ops), kind, np.uint8)))

    def stream(self, op_class: np.ndarray) -> AccessStream:
        op, seq, addr, kind = (np.concatenate(c) for c in zip(*self.parts, strict=True))
        order = np.lexsort((seq, op))
        first = np.zeros(self.nops + 1, np.int64)
        np.cumsum(np.bincount(op, minlength=self.nops), out=first[1:])
        return AccessStream(addr[order], kind[order], op_class, first)


def standin_stream(ev: dict, stage: Stage, nr_pfns: int) -> AccessStream:
    """The stand-in access stream of ``ev`` (Trace.events) at ``stage`` (module doc)."""
    e, o = ev["event"], ev["order"].astype(np.int64)
    live = ~ev["is_null"] & ~ev["dup_of_prev_free"] & (e <= 8) & (e != 2)
    idx = np.flatnonzero(live)
    e, o, cpu = e[idx], o[idx], ev["cpu"][idx].astype(np.uint64)
    pfn = ev["pfn"][idx].astype(np.int64)
    ptr = ev["ptr"][idx]
    opfn = np.where(ptr > 0, (ptr - np.uint64(PAGE_OFFSET)) >> np.uint64(12), 0).astype(np.int64)
    pcp_ok = np.isin(o, PCP_ORDERS)
    cls = np.select(
        [(e == 0) & pcp_ok, e == 0, e == 3, (e == 1) & pcp_ok, e == 1, e == 4,
         (e == 5) | (e == 7)],
        [OP_CLASS_ID[n] for n in ("alloc_pages.pcp", "alloc_pages.buddy", "alloc_pages.refill",
                                  "free_pages.pcp", "free_pages.buddy", "free_pages.drain",
                                  "kmem_cache_alloc")],
        OP_CLASS_ID["kmem_cache_free"]).astype(np.uint8)
    m, sz = _members(stage), np.uint64(stage.struct_page_bytes)
    pfn_ok = np.clip(pfn, 0, nr_pfns - 1).astype(np.uint64)
    page = np.uint64(VMEMMAP_START) + pfn_ok * sz
    buddy = np.uint64(VMEMMAP_START) + (pfn_ok ^ (np.uint64(1) << o.clip(0).astype(np.uint64))
                                        ).clip(0, nr_pfns - 1) * sz
    heads = np.uint64(HEADS_BASE)
    pcp_head = heads + cpu * np.uint64(1024) + o.clip(0).astype(np.uint64) * np.uint64(16)
    area_head = heads + np.uint64(1 << 16) + o.clip(0).astype(np.uint64) * np.uint64(80)
    cache = np.maximum(ev["cache"][idx], 0).astype(np.uint64)
    freelist = heads + np.uint64(1 << 20) + cache * np.uint64(128) + cpu * np.uint64(8)
    b = _Builder(len(idx))

    def sel(mask, seq, addr, kind):
        w = np.flatnonzero(mask)
        b.add(w, seq, addr[w] if isinstance(addr, np.ndarray) else addr, kind)

    alloc, refill = e == 0, e == 3
    free_pg, drain = e == 1, e == 4
    head_of_list = np.where(alloc & ~pcp_ok | refill, area_head, pcp_head)
    sel(alloc | refill | drain, 0, head_of_list, PTR)
    sel(alloc | refill | drain, 1, page + np.uint64(m["link"]), DEPPTR)
    sel(refill, 2, page + np.uint64(m["order"]), LD)
    sel(drain, 2, buddy + np.uint64(m["order"]), LD)
    sel(alloc | refill | drain, 3, head_of_list, ST)
    sel(alloc | refill | drain, 4, page + np.uint64(m["link"]), ST)
    sel(free_pg, 0, page + np.uint64(m["flags"]), LD)
    sel(free_pg, 1, pcp_head, PTR)
    sel(free_pg, 2, page + np.uint64(m["link"]), ST)
    sel(free_pg, 3, pcp_head, ST)
    _prep_new_page(b, np.flatnonzero(alloc & (pfn >= 0)), pfn_ok, o, m, sz)
    salloc = (e == 5) | (e == 7)
    sfree = (e == 6) | (e == 8)
    sel(salloc | sfree, 10, freelist, PTR)
    sel(salloc, 11, ptr, DEPPTR)
    sel(salloc | sfree, 12, freelist, ST)
    opage = np.uint64(VMEMMAP_START) + np.clip(opfn, 0, nr_pfns - 1).astype(np.uint64) * sz
    sel(sfree, 5, opage + np.uint64(m["tail"]), PTR)
    if stage.dynamic:
        desc = (np.uint64(PAGE_OFFSET) + np.uint64(nr_pfns << 12)
                + opfn.astype(np.uint64) * np.uint64(DESC_BYTES) + np.uint64(8))
        sel(sfree, 6, desc, DEP)
    else:
        sel(sfree, 6, opage + np.uint64(8), DEP)       # struct slab.slab_cache overlay
    sel(sfree, 13, ptr, ST)
    return b.stream(cls)


def _prep_new_page(b: _Builder, ops: np.ndarray, pfn: np.ndarray, order: np.ndarray,
                   m: dict, sz: np.uint64) -> None:
    """One store per page of each allocated block (at most 512), head first."""
    n = np.minimum(1 << order[ops].clip(0), 512)
    op = np.repeat(ops, n)
    k = np.arange(len(op)) - np.repeat(np.cumsum(n) - n, n)
    last = np.uint64(len(pfn) and pfn.max())
    addr = (np.uint64(VMEMMAP_START) + np.minimum(pfn[op] + k.astype(np.uint64), last) * sz
            + np.where(k == 0, m["flags"], m["tail"]).astype(np.uint64))
    b.parts.append((op, (20 + np.minimum(k, 1000)).astype(np.int32), addr,
                    np.full(len(op), ST, np.uint8)))


def _line(fig: str, value: float, unit: str) -> None:
    print(f"bench: timing.{fig} = {value:.4g} {unit}", flush=True)


def main() -> None:
    """Run :func:`inner` in a fresh process (numba cache warm) and time the whole process."""
    t0 = time.perf_counter()
    rc = subprocess.run([sys.executable, __file__, "--inner"], check=False).returncode
    if rc == 0:
        _line("whole_process_seconds", time.perf_counter() - t0, "s (target <= 60)")


def inner() -> None:
    t0 = time.perf_counter()
    src = FIXTURES / "trace-slab"
    if not src.is_dir():
        print(f"bench: timing skipped: {src} is absent (set MEMDESC_FIXTURES)")
        return
    tr = read_trace(src)
    nr_pfns = open_snapshot(tr.snapshot_dir).pfn_count
    run = nt.NativeRun(STAGES, nr_pfns)
    for s in STAGES:
        stream = standin_stream(tr.events, s, nr_pfns)
        for lo in range(0, stream.nr_ops, BLOCK):
            hi = min(lo + BLOCK, stream.nr_ops)
            a, z = stream.op_first[lo], stream.op_first[hi]
            run.add(s.id, AccessStream(stream.addr[a:z], stream.kind[a:z],
                                       stream.op_class[lo:hi], stream.op_first[lo:hi + 1] - a))
    t_meas = time.perf_counter()
    res = run.measure(REPEATS, progress=lambda d, n: print(f"repeat {d}/{n}", file=sys.stderr))
    _report(res, time.perf_counter() - t_meas, time.perf_counter() - t0)


def _report(res: nt.NativeResult, measure_s: float, total_s: float) -> None:
    print(f"# {res.what} (stand-in stream of trace-slab, see bench_timing.py)")
    med, ratio = res.median, res.ratio()
    tot = res.total_ns()
    ref = res.stages.index(res.reference)
    for s, sid in enumerate(res.stages):
        for c, name in enumerate(res.classes):
            if res.ops[s, c]:
                spread = (res.hi[s, c] - res.lo[s, c]) / 2
                _line(f"{sid}.{name}.ns", med[s, c], f"ns/op (+-{spread:.1f}, x{ratio[s, c]:.2f})")
        q = np.nanmedian(tot[s] / tot[ref])
        _line(f"{sid}.whole_trace_ms", np.median(tot[s]) / 1e6, f"ms (x{q:.3f} of v6.18)")
    _line("sampled_accesses_per_stage", res.accesses.mean(), "accesses")
    _line("sample_period", res.period, f"windows of {res.window} ops")
    _line("empty_op", float(np.median(res.empty_ns)), "ns (subtracted)")
    _line("memory", res.memory_bytes.sum() / 2**20, "MiB")
    _line("huge_page_fraction", min(f for f in res.huge_fraction if f is not None), "min")
    _line("measure_seconds", measure_s, "s")
    _line("in_process_seconds", total_s, "s (trace read + streams + measurement)")


if __name__ == "__main__":
    inner() if sys.argv[1:] == ["--inner"] else main()
