"""Build the emulated machine (memdesc.mm.mmzone.Machine) from a snapshot's /proc/zoneinfo and
/proc/iomem, so the emulator starts from the zones, holes and pcp sizes of a real machine.

This is the bridge between ingest (parsers) and mm (the emulated kernel): mm imports nothing
from ingest, so the conversion lives here.
"""

from __future__ import annotations

from pathlib import Path

from memdesc.errors import InputError
from memdesc.ingest.procfs import (
    ZoneInfo,
    iomem_is_hidden,
    parse_iomem,
    parse_zoneinfo,
    system_ram_pfn_ranges,
)
from memdesc.mm.mmzone import ZONE_NAMES, Machine, ZoneSpec


def zone_specs(zones: list[ZoneInfo], keep_tunables: bool = True) -> list[ZoneSpec]:
    """ZoneSpecs of the buddy zones (ZONE_DEVICE has none). With ``keep_tunables`` the
    snapshot's watermarks, lowmem_reserve and pcp sizes are kept as they were; otherwise the
    emulator computes them the kernel's way from the managed page counts."""
    out = []
    for z in zones:
        if z.name not in ZONE_NAMES:
            continue
        extra: dict = {}
        if keep_tunables and z.spanned:
            extra = dict(min=z.min, low=z.low, high=z.high,
                         protection=tuple(z.protection) or None)
            if z.pcp:
                p = z.pcp[0]
                extra.update(batch=p.batch, high_min=p.high_min, high_max=p.high_max)
        out.append(ZoneSpec(z.node, z.name, z.start_pfn if z.spanned else 0, z.spanned,
                            z.present, z.managed, **extra))
    return out


def machine_from_text(zoneinfo: str, iomem: str, nr_cpus: int = 2, *,
                      keep_tunables: bool = True, name: str = "snapshot") -> Machine:
    """A Machine from the text of /proc/zoneinfo and /proc/iomem."""
    zones = parse_zoneinfo(zoneinfo)
    ranges = parse_iomem(iomem)
    if iomem_is_hidden(ranges):
        raise InputError("iomem: addresses read as 0 (captured without root); the machine's "
                         "RAM ranges are unknown - capture /proc/iomem as root")
    ram = system_ram_pfn_ranges(ranges)
    try:
        return Machine.from_zones(zone_specs(zones, keep_tunables), ram, nr_cpus=nr_cpus,
                                  name=name)
    except ValueError as e:
        raise InputError(f"zoneinfo/iomem do not describe a consistent machine: {e}") from None


def machine_from_snapshot(folder: str | Path, *, keep_tunables: bool = True,
                          which: str = "before") -> Machine:
    """A Machine from a snapshot folder (zoneinfo.before|after, iomem.txt, nproc.txt)."""
    folder = Path(folder)
    zi, io = folder / f"zoneinfo.{which}", folder / "iomem.txt"
    for f in (zi, io):
        if not f.is_file():
            raise InputError(f"{f}: missing; a snapshot folder needs zoneinfo.{which} and "
                             "iomem.txt (memdesc snapshot save writes both)")
    nproc = folder / "nproc.txt"
    cpus = int(nproc.read_text().split()[0]) if nproc.is_file() else 1
    return machine_from_text(zi.read_text(), io.read_text(), cpus,
                             keep_tunables=keep_tunables, name=folder.name)
