"""Descriptor sizes for the dynamic stages of the Path, loaded from a documented TOML table.

The default table is ``memdesc/data/descriptors.toml`` (each entry carries its source);
``--descriptors FILE`` replaces it with a file of the same keys. Sizes are C sizes; the cost
model rounds them up to the descriptor caches' alignment (16 bytes: the memdesc word keeps its
type in the pointer's low four bits).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from memdesc.errors import InputError
from memdesc.stages import DESCRIPTOR_TYPES


def required() -> tuple[str, ...]:
    """Descriptor types the cost model needs a size for: those of stages.DESCRIPTOR_TYPES
    whose pages the census can see (the others are shown but have no allocation units in
    kpageflags)."""
    return tuple(t.key for t in DESCRIPTOR_TYPES if t.census_classes)
SCHEMA = 1


@dataclass(frozen=True)
class Descriptor:
    name: str
    bytes: int
    source: str


@dataclass(frozen=True)
class CachePolicy:
    """How descriptor slab caches are created (see the [slab_cache] table)."""

    align: int = 16
    typesafe_by_rcu: bool = True
    use_freeptr_offset: bool = True
    min_order: int = 0
    max_order: int = 3
    min_objects: int = 0
    source: str = ""


@dataclass(frozen=True)
class DescriptorTable:
    descriptors: dict[str, Descriptor]
    cache: CachePolicy
    path: str

    def __getitem__(self, name: str) -> Descriptor:
        return self.descriptors[name]

    def size(self, name: str) -> int:
        """Object size of ``name`` rounded up to the cache alignment."""
        a = self.cache.align
        return -(-self.descriptors[name].bytes // a) * a


def default_path() -> Path:
    return Path(str(resources.files("memdesc").joinpath("data", "descriptors.toml")))


def _positive_int(where: str, key: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InputError(f"{where}: {key} must be a positive integer, found {value!r}")
    return value


def load_descriptors(path: str | os.PathLike | None = None) -> DescriptorTable:
    """Read the descriptor table (the bundled one when ``path`` is None).

    Raises InputError (one line) when the file is missing, not TOML, of another schema, or
    lacks a size the cost model needs.
    """
    p = Path(path) if path is not None else default_path()
    try:
        with open(p, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise InputError(f"descriptor table {p} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"descriptor table {p} is a folder, expected a TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"descriptor table {p}: not valid TOML ({e})") from None
    if data.get("schema", SCHEMA) != SCHEMA:
        raise InputError(f"descriptor table {p}: schema {data.get('schema')!r}, this memdesc "
                         f"reads schema {SCHEMA}")
    descs: dict[str, Descriptor] = {}
    for name, entry in data.items():
        if name in ("schema", "slab_cache"):
            continue
        if not isinstance(entry, dict) or "bytes" not in entry:
            raise InputError(f"descriptor table {p}: [{name}] needs 'bytes = N'")
        descs[name] = Descriptor(name, _positive_int(f"descriptor table {p}", f"[{name}] bytes",
                                                     entry["bytes"]),
                                 str(entry.get("source", "(no source given)")))
    need = required()
    for t in DESCRIPTOR_TYPES:           # a registered type may carry its own size
        if t.key not in descs and t.bytes is not None:
            descs[t.key] = Descriptor(t.key, t.bytes, "(registered descriptor type)")
    missing = [n for n in need if n not in descs]
    if missing:
        raise InputError(f"descriptor table {p}: no size for {', '.join(missing)} "
                         f"(needs [{'], ['.join(need)}])")
    c = data.get("slab_cache", {})
    if not isinstance(c, dict):
        raise InputError(f"descriptor table {p}: [slab_cache] must be a table")
    align = _positive_int(f"descriptor table {p}", "[slab_cache] align", c.get("align", 16))
    if align & (align - 1):
        raise InputError(f"descriptor table {p}: [slab_cache] align {align} is not a power of 2")
    policy = CachePolicy(
        align=align,
        typesafe_by_rcu=bool(c.get("typesafe_by_rcu", True)),
        use_freeptr_offset=bool(c.get("use_freeptr_offset", True)),
        min_order=int(c.get("min_order", 0)), max_order=int(c.get("max_order", 3)),
        min_objects=int(c.get("min_objects", 0)), source=str(c.get("source", "")))
    if not 0 <= policy.min_order <= policy.max_order <= 10:
        raise InputError(f"descriptor table {p}: [slab_cache] needs 0 <= min_order <= "
                         f"max_order <= 10")
    return DescriptorTable(descs, policy, str(p))
