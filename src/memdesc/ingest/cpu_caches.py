"""This machine's data caches, from sysfs, and the ``--cache`` option that overrides them.

The kernel describes every cache of a CPU in ``/sys/devices/system/cpu/cpuN/cache/indexM/``
(drivers/base/cacheinfo.c: ``level``, ``type`` -- Data, Instruction or Unified --, ``size``
printed as ``"%uK"``, ``ways_of_associativity``, ``coherency_line_size``, ``number_of_sets``,
``shared_cpu_list``). :func:`read_sysfs_caches` reads cpu0's data and unified caches, one per
level, closest first. Instruction caches are left out: the metadata accesses the cache model
replays are data accesses.

When the folder is absent (a container without sysfs, another OS) :data:`DEFAULT_CACHES` is
used: one core of an AMD EPYC 9004 ("Genoa", Zen 4), the CPU this project was measured on --
L1d 32 KiB 8-way, L2 1 MiB 8-way, L3 32 MiB 16-way, 64-byte lines.

``--cache L1=48K/12,L2=2M/16,L3=32M/16`` (:func:`parse_cache_spec`) replaces or adds levels:
``NAME=SIZE/WAYS[/LINE][/victim]``; a level named like an existing one (L1, L2, L3, ...)
replaces it, ``/victim`` makes the level a victim cache of the level above it (AMD Zen's L3:
filled only with the lines L2 evicts; see memdesc.analysis.cache_model).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from memdesc.errors import InputError

SYSFS_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")


class CacheLevel(NamedTuple):
    """One level of the data-cache hierarchy."""

    name: str               # "L1", "L2", ...
    size: int               # bytes
    ways: int
    line: int = 64          # bytes
    victim: bool = False    # filled only with the victims of the level above (AMD L3)
    shared_cpus: int = 1    # CPUs sharing it (shared_cpu_list); the model is one core's view

    @property
    def sets(self) -> int:
        return self.size // (self.ways * self.line)

    def spec(self) -> str:
        """The ``--cache`` spelling of this level."""
        extra = ("" if self.line == 64 else f"/{self.line}") + ("/victim" if self.victim else "")
        return f"{self.name}={format_size(self.size)}/{self.ways}{extra}"


#: used when sysfs has no cache folder (see the module docstring)
DEFAULT_CACHES: tuple[CacheLevel, ...] = (
    CacheLevel("L1", 32 << 10, 8),
    CacheLevel("L2", 1 << 20, 8),
    CacheLevel("L3", 32 << 20, 16, shared_cpus=8),
)

_SIZE = re.compile(r"^(\d+)([KMG]?)$", re.IGNORECASE)
_SHIFT = {"": 0, "K": 10, "M": 20, "G": 30}


def parse_size(text: str) -> int:
    """``"32K"`` -> 32768 (sysfs prints ``%uK``; K/M/G are powers of 1024)."""
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a size like 32K, 2M or 32768")
    return int(m.group(1)) << _SHIFT[m.group(2).upper()]


def format_size(n: int) -> str:
    """32768 -> ``"32K"``, the largest unit that divides ``n``."""
    for unit in ("G", "M", "K"):
        if n and n % (1 << _SHIFT[unit]) == 0:
            return f"{n >> _SHIFT[unit]}{unit}"
    return str(n)


def cpu_list_len(text: str) -> int:
    """How many CPUs a cpulist names (``"0-3,8"`` -> 5), the format of shared_cpu_list."""
    n = 0
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


def _read(folder: Path, name: str) -> str:
    try:
        return (folder / name).read_text().strip()
    except OSError as e:
        raise InputError(f"{folder / name}: cannot read ({e.strerror})") from None


def read_sysfs_caches(root: Path = SYSFS_CACHE) -> tuple[CacheLevel, ...] | None:
    """cpu0's data and unified caches under ``root``, L1 first; None when ``root`` is absent.

    A present but malformed file is an error naming it. The size is checked against
    ``number_of_sets * ways * line`` (the kernel derives one from the others).
    """
    if not root.is_dir():
        return None
    levels: dict[int, CacheLevel] = {}
    for folder in sorted(root.glob("index*")):
        if _read(folder, "type") not in ("Data", "Unified"):
            continue
        try:
            level = int(_read(folder, "level"))
            size = parse_size(_read(folder, "size"))
            ways = int(_read(folder, "ways_of_associativity"))
            line = int(_read(folder, "coherency_line_size"))
            sets = int(_read(folder, "number_of_sets"))
            shared = (cpu_list_len(_read(folder, "shared_cpu_list"))
                      if (folder / "shared_cpu_list").exists() else 1)
        except ValueError as e:
            raise InputError(f"{folder}: {e}") from None
        if sets * ways * line != size or ways < 1:
            raise InputError(f"{folder}: size {size} is not number_of_sets {sets} x ways "
                             f"{ways} x line {line}")
        levels.setdefault(level, CacheLevel(f"L{level}", size, ways, line, shared_cpus=shared))
    return tuple(levels[k] for k in sorted(levels)) or None


def machine_cache_levels(root: Path = SYSFS_CACHE) -> tuple[tuple[CacheLevel, ...], str]:
    """This machine's data caches and where they came from (the sysfs folder, or "default")."""
    found = read_sysfs_caches(root)
    return (found, str(root)) if found else (DEFAULT_CACHES, "default")


_LEVEL = re.compile(r"^(?P<name>[A-Za-z][\w.-]*)=(?P<size>\d+[KMGkmg]?)/(?P<ways>\d+)"
                    r"(?:/(?P<line>\d+))?(?P<victim>/victim)?$")


def parse_cache_spec(spec: str, base: tuple[CacheLevel, ...] = ()) -> tuple[CacheLevel, ...]:
    """``"L1=48K/12,L2=2M/16"`` applied on ``base``: each named level replaces the level of
    the same name (case-insensitive) or is added; the result is ordered by name (L1, L2, ...).

    A malformed level is an error naming it and the expected form.
    """
    levels = {lv.name.upper(): lv for lv in base}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        m = _LEVEL.match(part)
        if not m:
            raise InputError(f"--cache: {part!r} is not NAME=SIZE/WAYS[/LINE][/victim] "
                             f"(e.g. L2=2M/16)")
        name = m["name"].upper()
        old = levels.get(name)
        level = CacheLevel(name, parse_size(m["size"]), int(m["ways"]),
                           int(m["line"] or 64), bool(m["victim"]),
                           old.shared_cpus if old else 1)
        check_level(level, part)
        levels[name] = level
    return tuple(levels[k] for k in sorted(levels, key=_level_key))


def _level_key(name: str) -> tuple[int, str]:
    digits = re.sub(r"\D", "", name)
    return (int(digits) if digits else 99, name)


def check_level(level: CacheLevel, what: str) -> None:
    """One level that a set-associative cache can have, else an error naming ``what``."""
    line, ways = level.line, level.ways
    if line < 8 or line & (line - 1):
        raise InputError(f"--cache: {what}: the line size must be a power of two >= 8")
    if ways < 1 or level.size % (ways * line) or level.size < ways * line:
        raise InputError(f"--cache: {what}: the size must be a multiple of ways x line "
                         f"({ways} x {line} bytes)")
