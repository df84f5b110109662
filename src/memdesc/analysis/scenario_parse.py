"""Scenario files, parsed: a machine and a list of workload steps (docs/scenario-format.md).

In short::

    # a file server
    machine 4G cpus=2
    pagecache 1G file=www order=4       # read 1 GiB of file "www" in order-4 folios
    anon 256M proc=nginx thp            # a process faults in 256 MiB of THP anon memory
    kmalloc churn count=200000 sizes=8-512 live=20000
    fork 20 touch=16M proc=worker       # 20 processes, 16 MiB anon each
    free half pagecache file=www        # evict every other folio of "www"

:func:`parse_scenario` turns text into a :class:`Scenario`; anything that does not parse is
an InputError ``FILE:LINE: what is wrong``. Whether the scenario fits the machine, the stages
and this computer is checked by :mod:`memdesc.analysis.scenario_limits`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
#: Most NUMA nodes a scenario machine may have (MAX_NODES of the slab model).
MAX_SCENARIO_NODES = 64


def parse_node(text: str) -> int:
    """``node=N``: the NUMA node the step's task runs on (0 <= N; the machine's node count is
    checked by scenario_limits.check_requests)."""
    if not text.isdigit() or int(text) >= MAX_SCENARIO_NODES:
        raise _Bad(f"node={text!r} is not a node number (0, 1, ...)")
    return int(text)


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
         {"file": parse_name, "order": parse_order, "node": parse_node},
         defaults={"file": "file0", "order": 0},
         help="read SIZE more of FILE into the page cache in folios of ORDER (falls back "
              "to order 0 when a large folio cannot be allocated, as readahead does)"),
    Verb("anon", (("size", parse_pages),),
         {"proc": parse_name, "order": parse_order, "node": parse_node}, flags=("thp",),
         defaults={"proc": "proc0", "order": 0},
         help="process PROC faults in SIZE of anonymous memory (thp = order 9, falling back "
              "to order 0); its page tables are allocated as the walk needs them"),
    Verb("fork", (("count", parse_count),),
         {"touch": parse_pages, "proc": parse_name, "order": parse_order, "node": parse_node},
         flags=("thp",),
         defaults={"proc": "task", "order": 0}, required=("touch",),
         help="COUNT new processes PROC.0, PROC.1, ... each fault in TOUCH of anon memory"),
    Verb("exit", (("amount", parse_fraction),), {"proc": parse_name},
         defaults={"proc": ""},
         help="ALL/HALF/N% of the processes whose name starts with PROC exit (oldest first): "
              "their memory and page tables are freed"),
    Verb("kmalloc", (("count", parse_count),),
         {"size": parse_byte_range, "tag": parse_name, "gfp": parse_gfp, "node": parse_node},
         flags=("thisnode",), defaults={"tag": "kmalloc", "gfp": "kernel"},
         required=("size",),
         help="COUNT kmalloc() calls of SIZE bytes (or a random size in A-B), kept under TAG"),
    Verb("churn", (),
         {"count": parse_count, "sizes": parse_byte_range, "live": parse_count,
          "tag": parse_name, "gfp": parse_gfp, "node": parse_node},
         defaults={"live": 1000, "tag": "churn", "gfp": "kernel"}, required=("count", "sizes"),
         help="(written `kmalloc churn ...`) COUNT kmalloc() calls of random sizes in A-B; "
              "whenever more than LIVE are held a random one is kfree()d; LIVE stay at the end"),
    Verb("zsmalloc", (("size", parse_pages),), {"pool": parse_name, "node": parse_node},
         defaults={"pool": "zram0"},
         help="store SIZE of compressed data in zsmalloc POOL (zspages of zpdesc pages)"),
    Verb("netpool", (("size", parse_pages),),
         {"order": parse_order, "gfp": parse_gfp, "pool": parse_name, "node": parse_node},
         defaults={"order": 0, "gfp": "atomic", "pool": "rx0"},
         help="a page_pool takes SIZE of receive buffers (netmem_desc); softirq, so atomic"),
    Verb("vmalloc", (("size", parse_pages),), {"tag": parse_name, "node": parse_node},
         defaults={"tag": "vmalloc"},
         help="vmalloc(SIZE): order-0 Misc pages, no descriptor"),
    Verb("reserve", (("size", parse_pages),), {"node": parse_node},
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
    machine_line: int = 1   # line number of the machine statement


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
    if "node" in verb.options:
        args.setdefault("node", 0)
    for key in verb.required:
        if key not in args:
            raise InputError(f"{where}:{lineno}: {verb.name} needs {key}=...; "
                             f"usage: {verb.usage()}")
    if args.get("thisnode") and "node" not in given:
        raise InputError(f"{where}:{lineno}: thisnode needs node=N (the node it may not "
                         "leave)")
    if args.get("thp"):
        if "order" in given:
            raise InputError(f"{where}:{lineno}: give either thp or order=, not both")
        args["order"] = HPAGE_PMD_ORDER
    return Step(lineno, verb.name, args, " ".join(tokens))


def parse_scenario(text: str, name: str = "<scenario>") -> Scenario:
    """Parse scenario text; every problem is an InputError naming ``name:line``."""
    machine: str | None = None
    cpus, seed, machine_line = 2, 1, 1
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
            machine_line = lineno
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
            if len(tokens) != 2 or not tokens[1].isdigit():
                raise InputError(f"{name}:{lineno}: seed takes one whole number, as in "
                                 f"`seed 7`; got {' '.join(tokens[1:])!r}")
            if steps:
                raise InputError(f"{name}:{lineno}: `seed N` goes before the steps")
            seed = int(tokens[1])
            continue
        steps.append(_parse_step(tokens, lineno, name))
    if machine is None:
        raise InputError(f"{name}: empty scenario; start with `machine SIZE`")
    if not steps:
        raise InputError(f"{name}: no steps after the machine line")
    return Scenario(name, machine, cpus, seed, tuple(steps), machine_line)


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
