"""Parsers for the /proc text files a snapshot keeps (meminfo, zoneinfo, buddyinfo, ...).

Each parser takes the file's text and returns plain data; bad input raises
:class:`memdesc.errors.InputError` naming the file and line ("zoneinfo: line 12: expected ...").
The formats are the ones the kernel prints; each parser names the function it reads back
[S: torvalds/linux mm/vmstat.c, fs/proc/meminfo.c, mm/slab_common.c, kernel/resource.c].
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from memdesc.errors import InputError
from memdesc.stages import PAGE_SHIFT, PAGE_SIZE

#: pagetypeinfo_showfree_print() stops counting a free list at this many entries and prints
#: ">100000" [S: mm/vmstat.c].
PAGETYPEINFO_FREE_CAP = 100000


class ParseError(InputError):
    """A /proc file that does not parse: ``FILE:LINE: what is wrong``.

    Parsers only see text, so ``file`` is the /proc name; :meth:`at` names the real file
    (a snapshot folder's ``meminfo.before``, or ``/proc/meminfo``) once the caller knows it.
    """

    def __init__(self, file: str, lineno: int | None, what: str):
        self.file, self.lineno, self.what = file, lineno, what
        super().__init__(self._text(file))

    def _text(self, where: str) -> str:
        return f"{where}:{self.lineno}: {self.what}" if self.lineno else f"{where}: {self.what}"

    def at(self, path: object) -> InputError:
        """The same error naming ``path`` instead of the bare /proc name."""
        return InputError(self._text(str(path)))


def _bad(file: str, lineno: int | None, what: str) -> ParseError:
    return ParseError(file, lineno, what)


def _int(file: str, lineno: int, token: str, what: str = "a number") -> int:
    try:
        return int(token)
    except ValueError:
        raise _bad(file, lineno, f"expected {what}, found {token!r}") from None


def _lines(text: str) -> Iterable[tuple[int, str]]:
    """(1-based line number, line) for each non-blank line."""
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield i, line


def _require(file: str, text: str, found: object) -> None:
    if not found:
        raise _bad(file, None, f"no data found ({len(text)} bytes); is this really /proc/{file}?")


# --- meminfo, vmstat -------------------------------------------------------------------------

def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo as {key: value}; values in kB as printed (HugePages_* are counts).

    Reads back meminfo_proc_show() in fs/proc/meminfo.c ("Key:   value kB").
    """
    out: dict[str, int] = {}
    for n, line in _lines(text):
        key, sep, rest = line.partition(":")
        parts = rest.split()
        if not sep or not key or not parts or len(parts) > 2 or (len(parts) == 2
                                                                  and parts[1] != "kB"):
            raise _bad("meminfo", n, f"expected 'Key:  value [kB]', found {line.strip()!r}")
        out[key.strip()] = _int("meminfo", n, parts[0])
    _require("meminfo", text, out)
    return out


def parse_vmstat(text: str) -> dict[str, int]:
    """/proc/vmstat as {name: value}. Reads back vmstat_show() in mm/vmstat.c ("name value")."""
    out: dict[str, int] = {}
    for n, line in _lines(text):
        parts = line.split()
        if len(parts) != 2:
            raise _bad("vmstat", n, f"expected 'name value', found {line.strip()!r}")
        out[parts[0]] = _int("vmstat", n, parts[1])
    _require("vmstat", text, out)
    return out


# --- zoneinfo --------------------------------------------------------------------------------

@dataclass
class PcpInfo:
    """One CPU's per_cpu_pages of a zone, as zoneinfo prints it ("pagesets")."""

    cpu: int
    count: int
    high: int
    batch: int
    high_min: int | None = None
    high_max: int | None = None
    stat_threshold: int | None = None    # "vm stats threshold" (per_cpu_zonestat, CONFIG_SMP)


@dataclass
class ZoneInfo:
    """One zone of /proc/zoneinfo. Unpopulated zones (spanned 0) print no stats, pagesets or
    start_pfn; they read back with ``start_pfn`` 0, empty ``pcp`` and ``stats``."""

    node: int
    name: str
    start_pfn: int
    spanned: int
    present: int
    managed: int
    free_pages: int
    min: int
    low: int
    high: int
    pcp: list[PcpInfo]
    stats: dict[str, int]                 # zone stat items and NUMA events ("nr_free_pages" ...)
    boost: int = 0
    promo: int = 0
    cma: int = 0
    protection: list[int] = field(default_factory=list)   # lowmem_reserve[] per zone index
    node_stats: dict[str, int] = field(default_factory=dict)  # "per-node stats" (first
    node_unreclaimable: int = 0                                # populated zone of a node only)

    @property
    def end_pfn(self) -> int:
        """zone_end_pfn(): start_pfn + spanned."""
        return self.start_pfn + self.spanned

    @property
    def populated(self) -> bool:
        """populated_zone(): the zone has present pages."""
        return self.present > 0


_ZONE_HEAD = re.compile(r"^Node\s+(\d+),\s+zone\s+(\S+)\s*$")
_ZONE_WATERMARKS = ("free", "boost", "min", "low", "high", "promo", "spanned", "present",
                    "managed", "cma")
_PCP_KEYS = ("count", "high", "batch", "high_min", "high_max")


def parse_zoneinfo(text: str) -> list[ZoneInfo]:
    """/proc/zoneinfo as one :class:`ZoneInfo` per zone, in file order (every zone, populated or
    not). Reads back zoneinfo_show_print() in mm/vmstat.c."""
    zones: list[ZoneInfo] = []
    cur: dict | None = None
    section = ""            # "node", "zone" or "pagesets": where a "      name value" line goes

    def finish() -> None:
        if cur is None:
            return
        missing = [k for k in ("spanned", "present", "managed", "free", "min", "low", "high")
                   if k not in cur["wm"]]
        if missing:
            raise _bad("zoneinfo", cur["line"], f"zone {cur['name']} lacks "
                       f"{', '.join(missing)} (file cut short?)")
        if cur["wm"]["present"] and cur["start_pfn"] is None:
            raise _bad("zoneinfo", cur["line"], f"populated zone {cur['name']} has no start_pfn "
                       "line (file cut short?)")
        wm = cur["wm"]
        zones.append(ZoneInfo(
            node=cur["node"], name=cur["name"], start_pfn=cur["start_pfn"] or 0,
            spanned=wm["spanned"], present=wm["present"], managed=wm["managed"],
            free_pages=wm["free"], min=wm["min"], low=wm["low"], high=wm["high"],
            pcp=cur["pcp"], stats=cur["stats"], boost=wm.get("boost", 0),
            promo=wm.get("promo", 0), cma=wm.get("cma", 0), protection=cur["protection"],
            node_stats=cur["node_stats"], node_unreclaimable=cur["unreclaimable"]))

    for n, line in _lines(text):
        m = _ZONE_HEAD.match(line)
        if m:
            finish()
            cur = {"node": int(m[1]), "name": m[2], "line": n, "wm": {}, "stats": {},
                   "node_stats": {}, "pcp": [], "protection": [], "start_pfn": None,
                   "unreclaimable": 0}
            section = "zone"
            continue
        if cur is None:
            raise _bad("zoneinfo", n, f"expected 'Node N, zone NAME', found {line.strip()!r}")
        s = line.strip()
        parts = s.split()
        if s == "per-node stats":
            section = "node"
        elif s == "pagesets":
            section = "pagesets"
        elif parts[0] == "pages" and len(parts) == 3 and parts[1] == "free":
            cur["wm"]["free"] = _int("zoneinfo", n, parts[2])
            section = "zone"
        elif parts[0] == "protection:":
            inner = s[len("protection:"):].strip()
            if not (inner.startswith("(") and inner.endswith(")")):
                raise _bad("zoneinfo", n, f"expected 'protection: (N, ...)', found {s!r}")
            cur["protection"] = [_int("zoneinfo", n, t.strip())
                                 for t in inner[1:-1].split(",")]
        elif parts[0] == "cpu:" and len(parts) == 2:
            cur["pcp"].append({"cpu": _int("zoneinfo", n, parts[1])})
        elif parts[0].endswith(":") and parts[0][:-1] in _PCP_KEYS and len(parts) == 2:
            if not cur["pcp"]:
                raise _bad("zoneinfo", n, f"{parts[0]} outside a 'cpu:' block")
            cur["pcp"][-1][parts[0][:-1]] = _int("zoneinfo", n, parts[1])
        elif s.startswith("vm stats threshold:") and len(parts) == 4:
            if not cur["pcp"]:
                raise _bad("zoneinfo", n, "'vm stats threshold' outside a 'cpu:' block")
            cur["pcp"][-1]["stat_threshold"] = _int("zoneinfo", n, parts[3])
        elif parts[0] == "node_unreclaimable:" and len(parts) == 2:
            cur["unreclaimable"] = _int("zoneinfo", n, parts[1])
        elif parts[0] == "start_pfn:" and len(parts) == 2:
            cur["start_pfn"] = _int("zoneinfo", n, parts[1])
        elif len(parts) == 2 and parts[0] in _ZONE_WATERMARKS and section == "zone" \
                and parts[0] not in cur["wm"]:
            cur["wm"][parts[0]] = _int("zoneinfo", n, parts[1])
        elif len(parts) == 2 and re.fullmatch(r"[a-z_0-9]+", parts[0]):
            target = cur["node_stats"] if section == "node" else cur["stats"]
            target[parts[0]] = _int("zoneinfo", n, parts[1])
        else:
            raise _bad("zoneinfo", n, f"expected a zoneinfo field, found {s!r}")
    finish()
    _require("zoneinfo", text, zones)
    for z in zones:
        pcps = []
        for p in z.pcp:
            missing = [k for k in ("count", "high", "batch") if k not in p]
            if missing:
                raise _bad("zoneinfo", None, f"zone {z.name} cpu {p['cpu']} lacks "
                           f"{', '.join(missing)}")
            pcps.append(PcpInfo(**p))
        z.pcp = pcps
    return zones


def zones_max_pfn(zones: Iterable[ZoneInfo]) -> int:
    """max_pfn as the zones see it: the highest zone_end_pfn() of any populated zone."""
    return max((z.end_pfn for z in zones if z.spanned), default=0)


# --- buddyinfo, pagetypeinfo -----------------------------------------------------------------

_BUDDY_ROW = re.compile(r"^Node\s+(\d+),\s+zone\s+(\S+)((?:\s+\d+)+)\s*$")


def parse_buddyinfo(text: str) -> dict[tuple[int, str], list[int]]:
    """/proc/buddyinfo as {(node, zone name): [nr_free per order]}. Reads back
    frag_show_print() in mm/vmstat.c (populated zones only; NR_PAGE_ORDERS columns)."""
    out: dict[tuple[int, str], list[int]] = {}
    for n, line in _lines(text):
        m = _BUDDY_ROW.match(line)
        if not m:
            raise _bad("buddyinfo", n, f"expected 'Node N, zone NAME  counts...', "
                       f"found {line.strip()!r}")
        out[(int(m[1]), m[2])] = [int(t) for t in m[3].split()]
    _require("buddyinfo", text, out)
    return out


@dataclass
class PageTypeInfo:
    """/proc/pagetypeinfo: free blocks per (node, zone, migratetype) and order, and pageblocks
    per (node, zone) and migratetype."""

    pageblock_order: int
    pages_per_block: int
    free: dict[tuple[int, str, str], list[int]]
    blocks: dict[tuple[int, str], dict[str, int]]
    #: (node, zone, migratetype, order) whose count was capped: printed as ">100000".
    free_capped: set[tuple[int, str, str, int]] = field(default_factory=set)
    #: "Number of mixed blocks" (CONFIG_PAGE_OWNER with page_owner=on only), else empty.
    mixed: dict[tuple[int, str], dict[str, int]] = field(default_factory=dict)


_PTI_FREE = re.compile(r"^Node\s+(\d+),\s+zone\s+(\S+),\s+type\s+(\S+)((?:\s+>?\d+)+)\s*$")
_PTI_BLOCKS = re.compile(r"^Node\s+(\d+),\s+zone\s+(\S+)((?:\s+\d+)+)\s*$")


def parse_pagetypeinfo(text: str) -> PageTypeInfo:
    """Reads back pagetypeinfo_show() in mm/vmstat.c (header, free counts, block counts, and
    the optional mixed-block counts; repeated once per node with memory)."""
    order = per_block = None
    free: dict[tuple[int, str, str], list[int]] = {}
    capped: set[tuple[int, str, str, int]] = set()
    tables: dict[str, dict[tuple[int, str], dict[str, int]]] = {"blocks": {}, "mixed": {}}
    table, types = "blocks", []
    for n, line in _lines(text):
        s = line.strip()
        if s.startswith("Page block order:"):
            order = _int("pagetypeinfo", n, s.split(":")[1].strip())
        elif s.startswith("Pages per block:"):
            per_block = _int("pagetypeinfo", n, s.split(":")[1].strip())
        elif s.startswith("Free pages count per migrate type at order"):
            pass
        elif s.startswith(("Number of blocks type", "Number of mixed blocks")):
            table = "blocks" if s.startswith("Number of blocks") else "mixed"
            types = s.split()[4:]
        elif m := _PTI_FREE.match(line):
            key = (int(m[1]), m[2], m[3])
            counts = []
            for o, t in enumerate(m[4].split()):
                if t.startswith(">"):
                    capped.add((*key, o))
                counts.append(int(t.lstrip(">")))
            free[key] = counts
        elif m := _PTI_BLOCKS.match(line):
            vals = [int(t) for t in m[3].split()]
            if len(vals) != len(types):
                raise _bad("pagetypeinfo", n, f"expected {len(types)} block counts (one per "
                           f"migratetype of the header), found {len(vals)}")
            tables[table][(int(m[1]), m[2])] = dict(zip(types, vals, strict=True))
        else:
            raise _bad("pagetypeinfo", n, f"expected a pagetypeinfo row, found {s!r}")
    if order is None or per_block is None:
        raise _bad("pagetypeinfo", None, "no 'Page block order' / 'Pages per block' header; "
                   "is this really /proc/pagetypeinfo?")
    return PageTypeInfo(order, per_block, free, tables["blocks"], capped, tables["mixed"])


# --- slabinfo --------------------------------------------------------------------------------

@dataclass
class SlabCache:
    """One /proc/slabinfo row (slabinfo version 2.1)."""

    name: str
    active_objs: int
    num_objs: int
    objsize: int
    objperslab: int
    pagesperslab: int
    active_slabs: int
    num_slabs: int


def parse_slabinfo(text: str) -> list[SlabCache]:
    """Reads back slabinfo_show()/print_slabinfo_header() in mm/slab_common.c: the
    "slabinfo - version: 2.1" header, then one row per cache
    ``name active_objs num_objs objsize objperslab pagesperslab : tunables ... : slabdata
    active_slabs num_slabs sharedavail``."""
    lines = list(_lines(text))
    if not lines or not lines[0][1].startswith("slabinfo - version: "):
        raise _bad("slabinfo", 1, "expected 'slabinfo - version: 2.1' header")
    version = lines[0][1].split(":", 1)[1].strip()
    if version != "2.1":
        raise _bad("slabinfo", 1, f"version {version} is not the 2.1 format we read")
    out = []
    for n, line in lines[1:]:
        if line.startswith("#"):
            continue
        head, sep1, rest = line.partition(" : tunables ")
        _tun, sep2, slabdata = rest.partition(" : slabdata ")
        h, d = head.split(), slabdata.split()
        if not sep1 or not sep2 or len(h) != 6 or len(d) < 2:
            raise _bad("slabinfo", n, f"expected a slabinfo 2.1 row, found {line.strip()!r}")
        nums = [_int("slabinfo", n, t) for t in (*h[1:], d[0], d[1])]
        out.append(SlabCache(h[0], *nums))
    _require("slabinfo", text, out)
    return out


# --- iomem -----------------------------------------------------------------------------------

@dataclass
class IomemRange:
    """One /proc/iomem resource: inclusive [start, end], its name and nesting depth."""

    start: int
    end: int
    name: str
    depth: int


_IOMEM = re.compile(r"^( *)([0-9a-fA-F]+)-([0-9a-fA-F]+) : (.*)$")


def parse_iomem(text: str) -> list[IomemRange]:
    """Reads back r_show() in kernel/resource.c: two spaces of indent per nesting level,
    ``start-end : name`` in hex."""
    out = []
    for n, line in _lines(text):
        m = _IOMEM.match(line)
        if not m or len(m[1]) % 2:
            raise _bad("iomem", n, f"expected '[indent]start-end : name', found {line!r}")
        out.append(IomemRange(int(m[2], 16), int(m[3], 16), m[4], len(m[1]) // 2))
    _require("iomem", text, out)
    return out


def iomem_is_hidden(ranges: Iterable[IomemRange]) -> bool:
    """True when every address reads 0: the kernel hides /proc/iomem addresses from readers
    without CAP_SYS_ADMIN (r_show() in kernel/resource.c)."""
    return all(r.start == 0 and r.end == 0 for r in ranges)


def system_ram_pfn_ranges(ranges: Iterable[IomemRange]) -> list[tuple[int, int]]:
    """Top-level "System RAM" resources as [start_pfn, end_pfn), partial pages excluded.

    Mirrors walk_system_ram_range() in kernel/resource.c: PFN_UP(res.start),
    PFN_DOWN(res.end + 1); empty results are dropped.
    """
    out = []
    for r in ranges:
        if r.depth == 0 and r.name == "System RAM":
            start, end = (r.start + PAGE_SIZE - 1) >> PAGE_SHIFT, (r.end + 1) >> PAGE_SHIFT
            if end > start:
                out.append((start, end))
    return out
