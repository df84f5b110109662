"""Scenario files: a machine and a list of workload steps, run the same way at every stage.

The format is documented in docs/scenario-format.md (and examples/README.md). In short::

    # a file server
    machine 4G cpus=2
    pagecache 1G file=www order=4       # read 1 GiB of file "www" in order-4 folios
    anon 256M proc=nginx thp            # a process faults in 256 MiB of THP anon memory
    kmalloc churn count=200000 sizes=8-512 live=20000
    fork 20 touch=16M proc=worker       # 20 processes, 16 MiB anon each
    free half pagecache file=www        # evict every other folio of "www"

This module parses and validates a file into a :class:`Scenario` (line-numbered InputErrors for
anything wrong) and runs it at each requested stage (:func:`run_scenario`), recording the
observable results and the metadata bytes so the stages can be compared.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memdesc.errors import InputError
from memdesc.stages import PAGE_SIZE

# ---- values --------------------------------------------------------------------------------

_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)([kmgt]?)(i?b)?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")

#: Largest folio/allocation order the scenario may ask for (MAX_PAGE_ORDER).
MAX_ORDER = 10
#: THP order on x86-64 with 4 KiB pages (HPAGE_PMD_ORDER) [S].
HPAGE_PMD_ORDER = 9


class _Bad(ValueError):
    """A value that does not parse; the parser adds file and line."""


def parse_size(text: str) -> int:
    """Bytes in ``text``: a number with an optional binary suffix (K, M, G, T; KiB/KB/MB...).
    A bare number is bytes."""
    m = _SIZE_RE.match(text)
    if not m:
        raise _Bad(f"{text!r} is not a size (write e.g. 4096, 64K, 512M, 10G)")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value != int(value):
        raise _Bad(f"{text!r} is not a whole number of bytes")
    return int(value)


def parse_pages(text: str) -> int:
    """A memory size in whole pages (rounded up)."""
    size = parse_size(text)
    if size <= 0:
        raise _Bad(f"{text!r}: a memory size must be positive")
    return -(-size // PAGE_SIZE)


def parse_count(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise _Bad(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise _Bad(f"{text!r}: a count must be positive")
    return value


def parse_order(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise _Bad(f"order {text!r} is not a number") from None
    if not 0 <= value <= MAX_ORDER:
        raise _Bad(f"order {value} is outside 0..{MAX_ORDER} (MAX_PAGE_ORDER)")
    return value


def parse_name(text: str) -> str:
    if not _NAME_RE.match(text):
        raise _Bad(f"{text!r} is not a name (letters, digits, _ . -; not starting with a digit)")
    return text


def parse_byte_range(text: str) -> tuple[int, int]:
    """``N`` or ``A-B`` in bytes (each with an optional suffix), 1 <= A <= B."""
    lo, _, hi = text.partition("-")
    a = parse_size(lo)
    b = parse_size(hi) if hi else a
    if not 1 <= a <= b:
        raise _Bad(f"{text!r} is not a size range A-B with 1 <= A <= B")
    return a, b


def parse_fraction(text: str) -> float:
    """``all``, ``half`` or ``N%`` (0 < N <= 100) as a fraction."""
    if text == "all":
        return 1.0
    if text == "half":
        return 0.5
    if text.endswith("%"):
        try:
            pct = float(text[:-1])
        except ValueError:
            pct = -1.0
        if 0 < pct <= 100:
            return pct / 100
    raise _Bad(f"{text!r} is not an amount to free (all, half or N%)")


GFP_CONTEXTS = ("kernel", "atomic", "nowait")


def parse_gfp(text: str) -> str:
    if text not in GFP_CONTEXTS:
        raise _Bad(f"gfp={text!r}: use one of {', '.join(GFP_CONTEXTS)}")
    return text


# ---- the vocabulary ------------------------------------------------------------------------

@dataclass(frozen=True)
class Verb:
    """Grammar of one step: positional arguments, ``key=value`` options, bare flags."""

    name: str
    positional: tuple[tuple[str, Callable[[str], Any]], ...]
    options: dict[str, Callable[[str], Any]]
    flags: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    help: str = ""

    def usage(self) -> str:
        parts = [self.name, *(p.upper() for p, _ in self.positional)]
        parts += [f"{k}=" + ("..." if k not in self.required else k.upper()) for k in self.options]
        parts += [f"[{f}]" for f in self.flags]
        return " ".join(parts)


FREE_KINDS = ("pagecache", "anon", "kmalloc", "zsmalloc", "netpool", "vmalloc")


def _free_kind(text: str) -> str:
    if text not in FREE_KINDS:
        raise _Bad(f"cannot free {text!r}: kinds are {', '.join(FREE_KINDS)}")
    return text


VERBS: dict[str, Verb] = {v.name: v for v in (
    Verb("pagecache", (("size", parse_pages),),
         {"file": parse_name, "order": parse_order},
         defaults={"file": "file0", "order": 0},
         help="read SIZE more of FILE into the page cache in folios of ORDER (falls back "
              "to order 0 when a large folio cannot be allocated, as readahead does)"),
    Verb("anon", (("size", parse_pages),),
         {"proc": parse_name, "order": parse_order}, flags=("thp",),
         defaults={"proc": "proc0", "order": 0},
         help="process PROC faults in SIZE of anonymous memory (thp = order 9, falling back "
              "to order 0); its page tables are allocated as the walk needs them"),
    Verb("fork", (("count", parse_count),),
         {"touch": parse_pages, "proc": parse_name, "order": parse_order}, flags=("thp",),
         defaults={"proc": "task", "order": 0}, required=("touch",),
         help="COUNT new processes PROC.0, PROC.1, ... each fault in TOUCH of anon memory"),
    Verb("exit", (("amount", parse_fraction),), {"proc": parse_name},
         defaults={"proc": ""},
         help="ALL/HALF/N% of the processes whose name starts with PROC exit (oldest first): "
              "their memory and page tables are freed"),
    Verb("kmalloc", (("count", parse_count),),
         {"size": parse_byte_range, "tag": parse_name, "gfp": parse_gfp},
         defaults={"tag": "kmalloc", "gfp": "kernel"}, required=("size",),
         help="COUNT kmalloc() calls of SIZE bytes (or a random size in A-B), kept under TAG"),
    Verb("churn", (),
         {"count": parse_count, "sizes": parse_byte_range, "live": parse_count,
          "tag": parse_name, "gfp": parse_gfp},
         defaults={"live": 1000, "tag": "churn", "gfp": "kernel"}, required=("count", "sizes"),
         help="(written `kmalloc churn ...`) COUNT kmalloc() calls of random sizes in A-B; "
              "whenever more than LIVE are held a random one is kfree()d; LIVE stay at the end"),
    Verb("zsmalloc", (("size", parse_pages),), {"pool": parse_name},
         defaults={"pool": "zram0"},
         help="store SIZE of compressed data in zsmalloc POOL (zspages of zpdesc pages)"),
    Verb("netpool", (("size", parse_pages),),
         {"order": parse_order, "gfp": parse_gfp, "pool": parse_name},
         defaults={"order": 0, "gfp": "atomic", "pool": "rx0"},
         help="a page_pool takes SIZE of receive buffers (netmem_desc); softirq, so atomic"),
    Verb("vmalloc", (("size", parse_pages),), {"tag": parse_name},
         defaults={"tag": "vmalloc"},
         help="vmalloc(SIZE): order-0 Misc pages, no descriptor"),
    Verb("reserve", (("size", parse_pages),), {},
         help="SIZE of PageReserved (Misc) memory, as a driver's reservation would take"),
    Verb("free", (("amount", parse_fraction), ("kind", _free_kind)),
         {"file": parse_name, "proc": parse_name, "tag": parse_name, "pool": parse_name},
         help="free ALL/HALF/N% of KIND (every other unit for half, oldest first), "
              "optionally only FILE/PROC/TAG/POOL"),
    Verb("truncate", (), {"file": parse_name, "to": parse_size},
         defaults={"to": 0}, required=("file",),
         help="truncate FILE to TO bytes (default 0), removing its folios past the end"),
)}


@dataclass(frozen=True)
class Step:
    """One parsed step: ``verb`` with its arguments resolved (defaults filled in)."""

    lineno: int
    verb: str
    args: dict[str, Any]
    text: str

    @property
    def label(self) -> str:
        return f"{self.lineno}: {self.text}"


@dataclass(frozen=True)
class Scenario:
    """A parsed scenario file."""

    name: str
    machine: str          # Machine.from_spec() string, e.g. "4G" or "2x8G"
    cpus: int
    seed: int
    steps: tuple[Step, ...]


_MACHINE_RE = re.compile(r"^(?:(\d+)x)?(\d+(?:\.\d+)?[kmgt]?(?:i?b)?)$", re.IGNORECASE)


def _split_line(raw: str) -> list[str]:
    return raw.split("#", 1)[0].split()


def _parse_step(tokens: list[str], lineno: int, where: str) -> Step:
    word = tokens[0]
    if word == "kmalloc" and len(tokens) > 1 and tokens[1] == "churn":
        verb, rest = VERBS["churn"], tokens[2:]
    elif word in VERBS and word != "churn":
        verb, rest = VERBS[word], tokens[1:]
    else:
        known = ", ".join(sorted(v for v in VERBS if v != "churn"))
        raise InputError(f"{where}:{lineno}: unknown step {word!r}; steps are: {known}, "
                         f"kmalloc churn")
    args: dict[str, Any] = dict(verb.defaults)
    given: set[str] = set()
    pos = [t for t in rest if "=" not in t and t not in verb.flags]
    if len(pos) != len(verb.positional):
        raise InputError(f"{where}:{lineno}: {verb.name} takes {len(verb.positional)} "
                         f"argument(s) before its options, got {len(pos)}; usage: {verb.usage()}")
    try:
        for (name, conv), tok in zip(verb.positional, pos, strict=True):
            args[name] = conv(tok)
        for tok in rest:
            if tok in verb.flags:
                args[tok] = True
            elif "=" in tok:
                key, _, value = tok.partition("=")
                if key not in verb.options:
                    raise _Bad(f"{verb.name} has no option {key!r}; usage: {verb.usage()}")
                if key in given:
                    raise _Bad(f"option {key}= given twice")
                given.add(key)
                args[key] = verb.options[key](value)
    except _Bad as e:
        raise InputError(f"{where}:{lineno}: {e}") from None
    for f in verb.flags:
        args.setdefault(f, False)
    for key in verb.required:
        if key not in args:
            raise InputError(f"{where}:{lineno}: {verb.name} needs {key}=...; "
                             f"usage: {verb.usage()}")
    if args.get("thp"):
        if "order" in given:
            raise InputError(f"{where}:{lineno}: give either thp or order=, not both")
        args["order"] = HPAGE_PMD_ORDER
    return Step(lineno, verb.name, args, " ".join(tokens))


def parse_scenario(text: str, name: str = "<scenario>") -> Scenario:
    """Parse scenario text; every problem is an InputError naming ``name:line``."""
    machine: str | None = None
    cpus, seed = 2, 1
    steps: list[Step] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        tokens = _split_line(raw)
        if not tokens:
            continue
        word = tokens[0]
        if machine is None:
            if word != "machine":
                raise InputError(f"{name}:{lineno}: a scenario starts with `machine SIZE` "
                                 f"(e.g. `machine 4G` or `machine 2x8G`), found {word!r}")
            if len(tokens) < 2 or not _MACHINE_RE.match(tokens[1]):
                raise InputError(f"{name}:{lineno}: machine needs a size such as 4G or 2x8G")
            machine = tokens[1].upper().replace("IB", "").replace("B", "").replace("X", "x")
            for tok in tokens[2:]:
                key, _, value = tok.partition("=")
                if key != "cpus":
                    raise InputError(f"{name}:{lineno}: machine has only the option cpus=N")
                try:
                    cpus = parse_count(value)
                except _Bad as e:
                    raise InputError(f"{name}:{lineno}: cpus: {e}") from None
            continue
        if word == "machine":
            raise InputError(f"{name}:{lineno}: a scenario has one machine line, at the top")
        if word == "seed":
            if steps or len(tokens) != 2 or not tokens[1].isdigit():
                raise InputError(f"{name}:{lineno}: `seed N` (a number) goes before the steps")
            seed = int(tokens[1])
            continue
        steps.append(_parse_step(tokens, lineno, name))
    if machine is None:
        raise InputError(f"{name}: empty scenario; start with `machine SIZE`")
    if not steps:
        raise InputError(f"{name}: no steps after the machine line")
    return Scenario(name, machine, cpus, seed, tuple(steps))


def load_scenario(path: str | Path) -> Scenario:
    """Read and parse a scenario file (InputError if it cannot be read or parsed)."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise InputError(f"{p}: no such scenario file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: cannot read scenario ({e})") from None
    return parse_scenario(text, str(p))


# ---- running a scenario ---------------------------------------------------------------------

_GFP_OF = {"kernel": "GFP_KERNEL", "atomic": "GFP_ATOMIC", "nowait": "GFP_NOWAIT"}
#: Contexts that may not reclaim: a failure there is the plan's price, not a model artefact.
ATOMIC_CONTEXTS = ("atomic", "nowait")
#: Compressed object sizes zsmalloc steps store (uniform, bytes) [I: ~2.5:1 compression].
ZS_OBJECT_SIZES = (256, 3072)


def _digest(obj: Any) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


class World:
    """One emulated kernel running a scenario: the kernel and the users the steps drive."""

    def __init__(self, scenario: Scenario, stage, *, debug: bool = False, fault=None,
                 check: bool = False):
        from memdesc.mm.filemap import PageCache
        from memdesc.mm.memory import AnonMemory
        from memdesc.mm.mm_init import Kernel
        from memdesc.mm.mmzone import Machine
        from memdesc.mm.vmalloc import Vmalloc

        try:
            machine = Machine.from_spec(scenario.machine, nr_cpus=scenario.cpus)
        except ValueError as e:
            raise InputError(f"{scenario.name}: machine {scenario.machine}: {e}") from None
        self.scenario = scenario
        self.k = Kernel(machine, stage, debug=debug or check, check_every=0)
        self.check = check
        self.vm = Vmalloc(self.k)
        self.zero_pfn = self.vm.zero_page()
        self.pc = PageCache(self.k)
        self.anon = AnonMemory(self.k, self.vm)
        from memdesc.mm.zsmalloc import create_caches

        create_caches(self.k.slub)
        if fault is not None:
            self.k.arm_faults(fault)
        self.zs: dict[str, Any] = {}
        self.net: dict[str, Any] = {}
        self.kmalloc: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self.vmalloc: dict[str, list[Any]] = {}
        self.reserved: list[np.ndarray] = []
        self.counters: dict[str, int] = {}

    # ---- helpers ---------------------------------------------------------------------------
    def _gfp(self, context: str) -> int:
        from memdesc.mm import gfp

        return getattr(gfp, _GFP_OF[context])

    def _rng(self, step: Step) -> np.random.Generator:
        return np.random.default_rng([self.scenario.seed, step.lineno])

    def _new_proc_name(self, prefix: str) -> str:
        n = self.counters.get(prefix, 0)
        self.counters[prefix] = n + 1
        return f"{prefix}.{n}"

    def _procs(self, prefix: str) -> list[str]:
        return [n for n in self.anon.procs if n.startswith(prefix)]

    # ---- steps -------------------------------------------------------------------------------
    def run(self, step: Step) -> dict[str, Any]:
        """Run one step; the observable result of the step itself."""
        a = step.args
        fn = getattr(self, f"_step_{step.verb}")
        result = fn(step, a)
        if self.check:
            self.k.check()
        return result

    def _step_pagecache(self, step, a):
        f = self.pc.file(a["file"])
        if f is None:
            return {"ok": 0, "failed": 1, "why": "no inode"}
        r = self.pc.read(f, a["size"], a["order"])
        return {"ok": r["folios"], "fallback_units": r["fallback"], "failed_pages": r["failed"]}

    def _step_anon(self, step, a):
        p = self.anon.procs.get(a["proc"]) or self.anon.fork(a["proc"])
        if p is None:
            return {"ok": 0, "failed": 1, "why": "fork failed"}
        r = self.anon.fault(p, a["size"], a["order"])
        return {"ok": r["folios"], "fallback_units": r["fallback"], "failed_units": r["failed"]}

    def _step_fork(self, step, a):
        ok = failed = faults_failed = fallback = 0
        for _ in range(a["count"]):
            p = self.anon.fork(self._new_proc_name(a["proc"]))
            if p is None:
                failed += 1
                continue
            ok += 1
            r = self.anon.fault(p, a["touch"], a["order"])
            faults_failed += r["failed"]
            fallback += r["fallback"]
        return {"ok": ok, "failed": failed, "failed_units": faults_failed,
                "fallback_units": fallback}

    def _step_exit(self, step, a):
        from memdesc.mm.memory import pick_fraction

        names = self._procs(a["proc"])
        chosen = pick_fraction(np.arange(len(names)), a["amount"])
        for i in chosen.tolist():
            self.anon.exit(names[i])
        return {"ok": int(chosen.size)}

    def _step_kmalloc(self, step, a):
        lo, hi = a["size"]
        sizes = self._rng(step).integers(lo, hi + 1, a["count"])
        addrs = self.k.slub.kmalloc(sizes, self._gfp(a["gfp"]))
        self.kmalloc.setdefault(a["tag"], []).append((addrs, sizes))
        return {"ok": int((addrs != 0).sum()), "failed": int((addrs == 0).sum())}

    def _step_churn(self, step, a):
        rng = self._rng(step)
        lo, hi = a["sizes"]
        n, live_max = a["count"], a["live"]
        sizes = rng.integers(lo, hi + 1, n)
        kinds, arg, slots = [], [], []
        live: list[int] = []
        picks = rng.random(n)
        for i in range(n):
            kinds.append(0)
            arg.append(int(sizes[i]))
            slots.append(i)
            live.append(i)
            if len(live) > live_max:
                j = int(picks[i] * len(live))
                live[j], live[-1] = live[-1], live[j]
                kinds.append(1)
                arg.append(0)
                slots.append(live.pop())
        slot_addr = self.k.slub.kmalloc_ops(kinds, arg, slots, n, self._gfp(a["gfp"]))
        keep = np.array(sorted(live), np.int64)
        addrs = slot_addr[keep]
        failed_live = int((addrs == 0).sum())
        self.kmalloc.setdefault(a["tag"], []).append((addrs, sizes[keep]))
        return {"ok": int(n), "live": int((addrs != 0).sum()), "failed_live": failed_live}

    def _step_zsmalloc(self, step, a):
        from memdesc.mm.zsmalloc import ZsPool

        pool = self.zs.get(a["pool"])
        if pool is None:
            pool = self.zs[a["pool"]] = ZsPool(self.k, a["pool"], len(self.zs) + 1)
        want = a["size"] * 4096
        rng = self._rng(step)
        est = int(want // (sum(ZS_OBJECT_SIZES) / 2) * 1.2) + 16
        sizes = rng.integers(ZS_OBJECT_SIZES[0], ZS_OBJECT_SIZES[1] + 1, est)
        sizes = sizes[: int(np.searchsorted(np.cumsum(sizes), want)) + 1]
        stored = pool.store(sizes)
        return {"ok": stored, "failed": int(len(sizes) - stored)}

    def _step_netpool(self, step, a):
        from memdesc.mm.page_pool import PagePool

        key = a["pool"]
        pool = self.net.get(key)
        n = -(-a["size"] // (1 << a["order"]))
        if pool is None:
            try:
                pool = self.net[key] = PagePool(self.k, key, len(self.net) + 1, a["order"])
            except MemoryError:
                return {"ok": 0, "failed": n, "why": "page_pool_create failed"}
        elif pool.order != a["order"]:
            raise InputError(f"{self.scenario.name}:{step.lineno}: page_pool {key} has order "
                             f"{pool.order}; a pool has one order")
        from memdesc.mm import gfp

        g = self._gfp(a["gfp"]) | gfp.GFP.NOWARN
        ok = pool.alloc(a["size"], g)
        return {"ok": ok, "failed": n - ok}

    def _step_vmalloc(self, step, a):
        from memdesc.mm import gfp

        tag = a["tag"]
        tag_id = 1000 + list(self.vmalloc).index(tag) if tag in self.vmalloc else \
            1000 + len(self.vmalloc)
        area = self.vm.vmalloc(a["size"] * 4096, gfp.GFP_KERNEL, tag_id)
        self.vmalloc.setdefault(tag, [])
        if area is None:
            return {"ok": 0, "failed": 1}
        self.vmalloc[tag].append(area)
        return {"ok": 1, "failed": 0}

    def _step_reserve(self, step, a):
        from memdesc.mm import gfp

        pages = self.vm.reserve(a["size"], gfp.GFP_KERNEL, 1 + len(self.reserved))
        if pages is None:
            return {"ok": 0, "failed": 1}
        self.reserved.append(pages)
        return {"ok": 1, "failed": 0}

    def _step_truncate(self, step, a):
        f = self.pc.files.get(a["file"])
        if f is None:
            return {"ok": 0, "why": "no such file"}
        return {"ok": self.pc.truncate(f, -(-a["to"] // 4096))}

    def _step_free(self, step, a):
        from memdesc.mm.memory import pick_fraction

        kind, frac = a["kind"], a["amount"]
        n = 0
        if kind == "pagecache":
            for name, f in self.pc.files.items():
                if a.get("file") in (None, name):
                    starts, _ = self.pc.heads(f)
                    n += self.pc.evict(f, pick_fraction(starts, frac))
        elif kind == "anon":
            for name in self._procs(a.get("proc", "")):
                n += self.anon.madvise_dontneed(self.anon.procs[name], frac)
        elif kind == "kmalloc":
            for tag, chunks in self.kmalloc.items():
                if a.get("tag") not in (None, tag):
                    continue
                addrs = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros(0)
                sizes = np.concatenate([c[1] for c in chunks]) if chunks else np.zeros(0)
                live = np.flatnonzero(addrs != 0)
                doomed = pick_fraction(live, frac)
                self.k.slub.kfree(addrs[doomed])
                keep = np.ones(addrs.shape[0], np.bool_)
                keep[doomed] = False
                self.kmalloc[tag] = [(addrs[keep], sizes[keep])]
                n += int(doomed.size)
        elif kind == "zsmalloc":
            for name, pool in self.zs.items():
                if a.get("pool") in (None, name):
                    n += pool.free(frac)
        elif kind == "netpool":
            for name, pool in self.net.items():
                if a.get("pool") in (None, name):
                    n += pool.release(frac)
        elif kind == "vmalloc":
            for tag, areas in self.vmalloc.items():
                if a.get("tag") not in (None, tag):
                    continue
                doomed = set(pick_fraction(np.arange(len(areas)), frac).tolist())
                for i in sorted(doomed):
                    self.vm.vfree(areas[i])
                self.vmalloc[tag] = [ar for i, ar in enumerate(areas) if i not in doomed]
                n += len(doomed)
        return {"ok": n}

    # ---- observables -----------------------------------------------------------------------
    def observe(self) -> dict[str, Any]:
        """Everything a user could observe now, read back through the stage's structures
        (never a PFN: the same data may sit elsewhere when descriptors take pages)."""
        from memdesc.mm.vmalloc import readback_pages

        state: dict[str, Any] = {
            "files": {n: self.pc.observe(f) for n, f in sorted(self.pc.files.items())},
            "procs": {n: self.anon.observe(p) for n, p in sorted(self.anon.procs.items())},
            "kmalloc": {t: {"objects": int(sum(int((c[0] != 0).sum()) for c in chunks)),
                            "bytes": int(sum(int(c[1][c[0] != 0].sum()) for c in chunks))}
                        for t, chunks in sorted(self.kmalloc.items())},
            "zsmalloc": {n: p.observe() for n, p in sorted(self.zs.items())},
            "netpool": {n: p.observe() for n, p in sorted(self.net.items())},
            "vmalloc": {t: readback_pages(self.k, [ar.pages for ar in areas])
                        for t, areas in sorted(self.vmalloc.items())},
            "reserved": readback_pages(self.k, self.reserved),
        }
        return state


def _accounting(world: World) -> dict[str, Any]:
    from memdesc.mm.accounting import account

    return account(world.k).to_dict()


@dataclass
class StageRun:
    """What one stage did with the scenario."""

    stage: str
    steps: list[dict[str, Any]]
    final_state: dict[str, Any]
    accounting: dict[str, Any]
    peak_metadata_bytes: int
    census: Any
    stats: dict[str, int]
    seconds: float

    def observables(self) -> list[tuple[Any, str]]:
        return [(s["result"], s["state_digest"]) for s in self.steps]


def run_stage(scenario: Scenario, stage, *, check: bool = False, fault_factory=None,
              progress=None) -> StageRun:
    """Run every step of ``scenario`` at ``stage``; record results, state digests, metadata."""
    import time

    from memdesc.analysis.sim_census import census_of_world
    from memdesc.mm.memdesc_alloc import ST_DESC_FAIL_UNWIND, ST_PAGE_FAILS

    t0 = time.perf_counter()
    world = World(scenario, stage, fault=fault_factory() if fault_factory else None,
                  check=check)
    records = []
    peak = 0
    for step in scenario.steps:
        result = world.run(step)
        state = world.observe()
        acct = _accounting(world)
        peak = max(peak, acct["total_bytes"])
        records.append({"line": step.lineno, "step": step.text, "verb": step.verb,
                        "gfp": step.args.get("gfp", "atomic" if step.verb == "netpool"
                                             else "kernel"),
                        "result": result, "state_digest": _digest(state),
                        "metadata_bytes": acct["total_bytes"],
                        "descriptor_bytes": acct["descriptor_bytes"]})
        if progress:
            progress(1)
    state = world.observe()
    stats = {"page_alloc_failures": int(world.k.stats[ST_PAGE_FAILS]),
             "descriptor_unwinds": int(world.k.stats[ST_DESC_FAIL_UNWIND]),
             "faults_injected": world.k.fault.failures()}
    return StageRun(world.k.stage.id, records, state, _accounting(world), peak,
                    census_of_world(world), stats, time.perf_counter() - t0)


def compare_runs(runs: list[StageRun], reference: str = "v6.18") -> dict[str, Any]:
    """Compare every stage's observables with the reference stage's, step by step.

    A differing step is a divergence. One in an atomic (no-reclaim) context is counted as
    ``atomic``: the plan's price (the descriptor allocation needed memory the zone could not
    give without reclaim). One in a context that may reclaim is counted as ``reclaim``: the
    kernel would have reclaimed there (the emulator models no reclaim)."""
    ref = next((r for r in runs if r.stage == reference), runs[0])
    divergences: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        diffs = []
        for a, b in zip(ref.steps, r.steps, strict=True):
            if (a["result"], a["state_digest"]) != (b["result"], b["state_digest"]):
                kind = "atomic" if b["gfp"] in ATOMIC_CONTEXTS else "reclaim"
                diffs.append({"line": b["line"], "step": b["step"], "kind": kind,
                              "reference": a["result"], "this_stage": b["result"]})
        divergences[r.stage] = diffs
    identical = all(not d for d in divergences.values())
    counts = {s: {"atomic": sum(1 for d in ds if d["kind"] == "atomic"),
                  "reclaim": sum(1 for d in ds if d["kind"] == "reclaim")}
              for s, ds in divergences.items()}
    return {"reference": ref.stage, "identical_across_stages": identical,
            "divergences": divergences, "divergence_counts": counts}
