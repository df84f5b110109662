"""What a scenario may ask for, checked before any work (docs/scenario-format.md, "Limits").

Four kinds of limit, each reported as ``FILE:LINE: what is wrong`` with what would fit:

* what a stage can represent: ``MAX_NUMNODES`` nodes (NODES_SHIFT 10 in the page flags and the
  memdesc word), ``NR_CPUS`` CPUs (8192 with MAXSMP), 288 CPUs and zones below 2^28 pages at
  page8 (packed list heads and links), physical addresses below 2^46 (x86-64 with 4-level
  paging: the direct map is 64 TiB);
* what the emulated machine holds: one step may not ask for more memory than the machine has
  (allocations that merely *run out* on the way are the workload's business and are recorded);
* what this computer holds: the emulator keeps a few words per emulated page and the bytes of
  every page the kernel interprets (slab, page tables); the estimate must fit MemAvailable;
* what finishes: steps whose estimated run time, at every stage asked for, exceeds
  :data:`MAX_SECONDS`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from memdesc.analysis.scenario_parse import Scenario
from memdesc.errors import InputError
from memdesc.mm.free_tracking import MAX_PACKED_BLOCKS, max_cpus
from memdesc.mm.mm_types import NODES_WIDTH
from memdesc.mm.mmzone import Machine
from memdesc.stages import PAGE_SHIFT, PAGE_SIZE, Stage

#: MAX_NUMNODES = 1 << CONFIG_NODES_SHIFT (10 on the fixture kernel) [M, S: numa.h].
MAX_NUMNODES = 1 << NODES_WIDTH
#: CONFIG_NR_CPUS upper bound on x86-64 (MAXSMP) [S: arch/x86/Kconfig NR_CPUS_RANGE_END].
NR_CPUS_MAX = 8192
#: MAX_PHYSMEM_BITS with 4-level paging [S: arch/x86/include/asm/sparsemem.h].
MAX_PHYSMEM_BITS = 46
#: Host bytes the emulator keeps per emulated PFN: 82 measured at v6.18 (RSS growth of an
#: emulated 8 GiB machine's boot: mem_map words, content tag, slot index, pageblock and list
#: state; page8 takes 25) plus 30 for the users' per-page maps (page cache index, anon units,
#: read-back temporaries).
HOST_BYTES_PER_PFN = 112
#: Host bytes per object a kmalloc step keeps (address and size).
HOST_BYTES_PER_OBJECT = 16
#: Share of MemAvailable a simulation may plan to use.
HOST_SHARE = 0.8
#: Kernel memory one forked process takes before it touches anything: kernel stack (16 KiB,
#: vmalloc), PGD page, task_struct, mm_struct, VMA, anon_vma [S: kernel/fork.c].
FORK_KERNEL_BYTES = 16 * 1024 + PAGE_SIZE + 8 * 1024
#: Longest estimated run (all stages) accepted, in seconds.
MAX_SECONDS = 3600.0
#: Speeds of the emulator, per stage, set below what bench/bench_simulate.py measured on the
#: project machine under load (8 GiB; slowest of v6.18 and page16): 737 K page cache pages/s,
#: 812 K anon pages/s, 3,300 forks/s touching 64 KiB, 463 K kmalloc(8..1024)/s, 1.9 M churn
#: calls/s; so the "would run for hours" estimate is not optimistic.
PAGES_PER_S = 3.0e5
FORKS_PER_S = 500.0
KMALLOCS_PER_S = 3.0e5
CHURN_OPS_PER_S = 1.0e6


def _size(b: float) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if b >= 1 << shift:
            return f"{b / (1 << shift):.3g} {unit}"
    return f"{int(b)} B"


def _pages(a: dict[str, Any], key: str = "size") -> int:
    return int(a.get(key, 0))


#: verb -> (bytes the step asks for at once, what they are)
REQUEST: dict[str, Callable[[dict[str, Any]], int]] = {
    "pagecache": lambda a: _pages(a) * PAGE_SIZE,
    "anon": lambda a: _pages(a) * PAGE_SIZE,
    "zsmalloc": lambda a: _pages(a) * PAGE_SIZE,
    "netpool": lambda a: _pages(a) * PAGE_SIZE,
    "vmalloc": lambda a: _pages(a) * PAGE_SIZE,
    "reserve": lambda a: _pages(a) * PAGE_SIZE,
    "fork": lambda a: a["count"] * (_pages(a, "touch") * PAGE_SIZE + FORK_KERNEL_BYTES),
    "kmalloc": lambda a: a["count"] * a["size"][0],
    "churn": lambda a: min(a["live"], a["count"]) * a["sizes"][0],
}

#: verb -> estimated seconds per stage
SECONDS: dict[str, Callable[[dict[str, Any]], float]] = {
    "pagecache": lambda a: _pages(a) / PAGES_PER_S,
    "anon": lambda a: _pages(a) / PAGES_PER_S,
    "zsmalloc": lambda a: _pages(a) / PAGES_PER_S,
    "netpool": lambda a: _pages(a) / PAGES_PER_S,
    "vmalloc": lambda a: _pages(a) / PAGES_PER_S,
    "reserve": lambda a: _pages(a) / PAGES_PER_S,
    "fork": lambda a: a["count"] / FORKS_PER_S + a["count"] * _pages(a, "touch") / PAGES_PER_S,
    "kmalloc": lambda a: a["count"] / KMALLOCS_PER_S,
    "churn": lambda a: a["count"] / CHURN_OPS_PER_S,
}

#: verb -> host bytes the step's own bookkeeping and kernel-interpreted pages may take
HOST: dict[str, Callable[[dict[str, Any]], int]] = {
    "kmalloc": lambda a: a["count"] * (HOST_BYTES_PER_OBJECT + a["size"][1]),
    "churn": lambda a: a["count"] * 6 * 8 + min(a["live"], a["count"]) * a["sizes"][1],
    "fork": lambda a: a["count"] * (FORK_KERNEL_BYTES + 2048),
    # a page-table page per 2 MiB mapped
    "anon": lambda a: _pages(a) // 512 * PAGE_SIZE,
}


def mem_available() -> int:
    """MemAvailable of this computer in bytes (physical pages when /proc/meminfo is absent)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _where(sc: Scenario, line: int) -> str:
    return f"{sc.name}:{line}"


def check_machine(sc: Scenario, stages: Iterable[Stage]) -> Machine:
    """The scenario's machine, if every stage can represent it; InputError otherwise."""
    at = f"{_where(sc, sc.machine_line)}: machine {sc.machine}"
    nodes = int(sc.machine.split("x")[0]) if "x" in sc.machine else 1
    if nodes > MAX_NUMNODES:
        raise InputError(f"{at}: {nodes} nodes; the kernel has at most {MAX_NUMNODES} "
                         f"(MAX_NUMNODES, NODES_SHIFT {NODES_WIDTH})")
    if sc.cpus > NR_CPUS_MAX:
        raise InputError(f"{at} cpus={sc.cpus}: x86-64 builds at most NR_CPUS={NR_CPUS_MAX}")
    for st in stages:
        limit = max_cpus(st)
        if limit is not None and sc.cpus > limit:
            raise InputError(f"{at} cpus={sc.cpus}: {st.id} names per-CPU list heads with "
                             f"12 bits, so it holds at most {limit} CPUs; use cpus={limit} or "
                             f"fewer, or --stages without {st.id}")
    try:
        machine = Machine.from_spec(sc.machine, nr_cpus=sc.cpus)
    except ValueError as e:
        raise InputError(f"{at}: {e}") from None
    top = machine.max_pfn << PAGE_SHIFT
    if top > 1 << MAX_PHYSMEM_BITS:
        raise InputError(f"{at}: its RAM would end at {top >> 30:,} GiB (after the PCI hole), "
                         f"above the {1 << (MAX_PHYSMEM_BITS - 30):,} GiB (64 TiB) x86-64 "
                         f"addresses with 4-level paging (MAX_PHYSMEM_BITS {MAX_PHYSMEM_BITS})")
    packed = [st.id for st in stages if st.free_tracking == "packed"]
    widest = max((z.spanned for z in machine.zones), default=0)
    if packed and widest > MAX_PACKED_BLOCKS:
        raise InputError(f"{at}: a zone spans {_size(widest * PAGE_SIZE)}; {packed[0]} links "
                         f"free blocks with 28-bit indices, at most "
                         f"{_size(MAX_PACKED_BLOCKS * PAGE_SIZE)} per zone; use more nodes "
                         f"(e.g. machine {2 * nodes}x...) or --stages without {packed[0]}")
    return machine


def ram_bytes(machine: Machine) -> int:
    return sum(z.present for z in machine.zones) * PAGE_SIZE


def check_requests(sc: Scenario, machine: Machine) -> None:
    """No single step asks for more memory than the machine has, nor for a node it lacks."""
    ram = ram_bytes(machine)
    for step in sc.steps:
        if step.args.get("node", 0) >= machine.nr_nodes:
            raise InputError(f"{_where(sc, step.lineno)}: {step.text}: node="
                             f"{step.args['node']} but the machine has {machine.nr_nodes} "
                             "node(s) (write e.g. `machine 2x8G`)")
        want = REQUEST.get(step.verb, lambda a: 0)(step.args)
        if want > ram:
            raise InputError(f"{_where(sc, step.lineno)}: {step.text}: asks for "
                             f"{_size(want)}, more than the machine's {_size(ram)} of RAM")


def _host_of(step) -> int:
    return HOST.get(step.verb, lambda a: 0)(step.args)


def host_bytes(sc: Scenario, machine: Machine) -> int:
    """Estimated peak memory of one stage's emulation on this computer."""
    kernel = sum(_host_of(s) for s in sc.steps)
    return machine.nr_pfns * HOST_BYTES_PER_PFN + min(kernel, 2 * ram_bytes(machine))


def check_host(sc: Scenario, machine: Machine, available: int | None = None) -> None:
    """The emulation fits this computer's available memory: the machine first, then the
    steps' own bookkeeping (named when it is what does not fit)."""
    avail = int((mem_available() if available is None else available) * HOST_SHARE)
    need = host_bytes(sc, machine)
    if need <= avail:
        return
    base = machine.nr_pfns * HOST_BYTES_PER_PFN
    if base <= avail // 2:
        step = max(sc.steps, key=_host_of)
        raise InputError(f"{_where(sc, step.lineno)}: {step.text}: needs about "
                         f"{_size(_host_of(step))} of this computer's memory to emulate "
                         f"(its objects and the slab pages holding them); "
                         f"{_size(avail - base)} is left after the machine itself")
    fits = avail // HOST_BYTES_PER_PFN * PAGE_SIZE
    raise InputError(f"{_where(sc, sc.machine_line)}: machine {sc.machine} needs about "
                     f"{_size(need)} of this computer's memory to emulate "
                     f"({HOST_BYTES_PER_PFN} B per 4 KiB page, plus slab and page-table "
                     f"pages); {_size(avail)} is available, enough for a machine of about "
                     f"{_size(fits)}")


def check_time(sc: Scenario, nr_stages: int) -> None:
    """The whole run (every stage) is expected to finish within MAX_SECONDS."""
    est = [(SECONDS.get(s.verb, lambda a: 0.0)(s.args) * nr_stages, s) for s in sc.steps]
    total = sum(t for t, _ in est)
    if total <= MAX_SECONDS:
        return
    worst, step = max(est, key=lambda ts: ts[0])
    raise InputError(f"{_where(sc, step.lineno)}: {step.text}: would run for about "
                     f"{worst / 3600:.1f} h at {nr_stages} stage(s) (the whole scenario "
                     f"{total / 3600:.1f} h); make it about {worst / MAX_SECONDS:.0f}x "
                     f"smaller to finish within {MAX_SECONDS / 3600:.0f} h")


def check_scenario(sc: Scenario, stages: list[Stage], *, available: int | None = None
                   ) -> Machine:
    """Every limit above, in order; returns the machine. ``available``: host bytes (default
    MemAvailable)."""
    machine = check_machine(sc, stages)
    check_requests(sc, machine)
    check_time(sc, len(stages))
    check_host(sc, machine, available)
    return machine
