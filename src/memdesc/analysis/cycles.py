"""The CPU's cycle counter inside numba code, and its rate in nanoseconds.

:func:`fenced_cycles` reads ``llvm.readcyclecounter`` (``rdtsc`` on x86-64) between two
``lfence`` instructions: the first waits until every earlier instruction (the loads of the
operation just timed) has completed, the second keeps later instructions (the next
operation's loads) from starting before the counter is read. This is the usual way of
timing short code with the TSC (Intel, "How to Benchmark Code Execution Times", 2010, uses
cpuid/rdtscp; AMD documents ``lfence`` as dispatch-serializing when the kernel sets
MSR C001_1029[1], which Linux does for Spectre v1 on every AMD CPU it supports). On other
architectures the fences are left out and the read is whatever LLVM lowers
readcyclecounter to (0 where there is no counter: :func:`counter_works` says so).

The TSC counts at a constant rate whatever the core's clock when the CPU has
``constant_tsc`` and ``nonstop_tsc`` (/proc/cpuinfo); then one calibration against
``time.perf_counter_ns`` (:func:`calibrate`) converts cycles to ns. Without them the caller
converts each measured chunk with its own wall-clock time (see native_timing).
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")


def _call(builder, name: str, ret) -> object:
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, []), name)
    return builder.call(fn, [])


@intrinsic
def _fenced_readcyclecounter(typingctx):
    """lfence; rdtsc; lfence (x86), else a bare llvm.readcyclecounter."""
    def codegen(context, builder, signature, args):
        if X86:
            _call(builder, "llvm.x86.sse2.lfence", ir.VoidType())
        value = _call(builder, "llvm.readcyclecounter", ir.IntType(64))
        if X86:
            _call(builder, "llvm.x86.sse2.lfence", ir.VoidType())
        return value
    return types.uint64(), codegen


@njit(cache=True)
def fenced_cycles():
    """The cycle counter, read after every earlier instruction has completed."""
    return _fenced_readcyclecounter()


def tsc_invariant(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when the counter ticks at a constant rate through frequency and sleep states
    (x86 ``constant_tsc`` and ``nonstop_tsc`` flags)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return X86 and {"constant_tsc", "nonstop_tsc"} <= flags
    return False


def counter_works() -> bool:
    """True when the counter advances (it reads 0 on targets without one)."""
    a = int(fenced_cycles())
    time.sleep(0.001)
    return int(fenced_cycles()) > a


def calibrate(duration_s: float = 0.02, rounds: int = 3) -> float:
    """Nanoseconds per counter tick: the median over ``rounds`` busy waits of
    ``duration_s`` each, timed by both the counter and time.perf_counter_ns."""
    ratios = []
    for _ in range(rounds):
        t0, c0 = time.perf_counter_ns(), int(fenced_cycles())
        end = t0 + int(duration_s * 1e9)
        while time.perf_counter_ns() < end:
            pass
        t1, c1 = time.perf_counter_ns(), int(fenced_cycles())
        ratios.append((t1 - t0) / max(c1 - c0, 1))
    return sorted(ratios)[len(ratios) // 2]
