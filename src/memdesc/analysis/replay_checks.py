"""The replay's checks against the kernel: at the start, at every inner snapshot and at the end,
the emulated free lists per zone, order and migratetype against the kernel's own
/proc/buddyinfo and /proc/pagetypeinfo read at that moment (and the pcp page count against
zoneinfo's).

Check points (event index = where in the trace the kernel's files were read):

* ``start``: the pre-snapshot's ``.after`` files, read right after the kpage files (meta.json
  step ``after_read_begin``);
* ``inner NAME``: a state folder ``state-NAME/`` beside the trace, read after the trace marker
  ``memdesc state NAME``;
* ``end``: ``end-state/`` beside the trace (``memdesc record`` saves it after the workload),
  read after the marker ``memdesc state end``.

Every difference is listed: per zone the orders and (migratetype, order) cells that differ,
``mismatched_pages`` (pages that would have to move for the two to agree: the larger of the
surplus and the deficit over all cells), and the causes the replay can name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memdesc.errors import InputError
from memdesc.ingest import procfs
from memdesc.mm.gfp import MIGRATE_TYPES
from memdesc.mm.mmzone import NR_PAGE_ORDERS, NR_ZONES, ZONE_NAMES

MT_NAMES = ("Unmovable", "Movable", "Reclaimable", "HighAtomic", "Isolate")
STATE_MARKER = re.compile(r"^memdesc state (\S+) monotonic_ns=")
#: the files a state folder holds (memdesc record writes them)
STATE_FILES = ("buddyinfo", "pagetypeinfo", "zoneinfo", "meminfo", "vmstat")


@dataclass
class CheckPoint:
    """The kernel's state at one point of the trace."""

    at: str                                   # "start", "inner NAME", "end"
    event: int                                # trace event index where it was read
    reference: str                            # the files, for the report
    buddyinfo: dict[tuple[int, str], list[int]]
    pagetypeinfo: procfs.PageTypeInfo | None
    pcp: dict[tuple[int, str], int] = field(default_factory=dict)


def _read(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def _pcp(zoneinfo: str | None) -> dict[tuple[int, str], int]:
    if not zoneinfo:
        return {}
    return {(z.node, z.name): sum(p.count for p in z.pcp)
            for z in procfs.parse_zoneinfo(zoneinfo) if z.pcp}


def _state_point(at: str, folder: Path, event: int) -> CheckPoint | None:
    bi = _read(folder / "buddyinfo")
    if bi is None:
        return None
    pti = _read(folder / "pagetypeinfo")
    return CheckPoint(at, event, f"{folder.name}/ buddyinfo, pagetypeinfo",
                      procfs.parse_buddyinfo(bi),
                      procfs.parse_pagetypeinfo(pti) if pti else None,
                      _pcp(_read(folder / "zoneinfo")))


def check_points(trace, snapshot, steps: dict[str, int], n_events: int) -> list[CheckPoint]:
    """Every point of the trace where the kernel's free lists were read (module docstring)."""
    out = []
    pos = steps.get("after_read_begin")
    bi = snapshot.text("buddyinfo", "after")
    if pos is not None and bi is not None:
        pti = snapshot.text("pagetypeinfo", "after")
        out.append(CheckPoint("start", int(pos), "pre-snapshot buddyinfo.after, "
                              "pagetypeinfo.after (step after_read_begin)",
                              procfs.parse_buddyinfo(bi),
                              procfs.parse_pagetypeinfo(pti) if pti else None,
                              _pcp(snapshot.text("zoneinfo", "after"))))
    folder = Path(trace.path)
    if not folder.is_dir():
        return out
    m = trace.markers or {}
    for idx, text in zip(m.get("index", []), m.get("text", []), strict=False):
        g = STATE_MARKER.match(text)
        if not g:
            continue
        name = g[1]
        sub = folder / ("end-state" if name == "end" else f"state-{name}")
        p = _state_point("end" if name == "end" else f"inner {name}", sub,
                         min(int(idx), n_events))
        if p is not None:
            out.append(p)
    return out


def read_state_meta(folder: Path) -> dict:
    """A state folder's meta.json (when it was read, the marker), or {}."""
    f = folder / "meta.json"
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text())
    except ValueError as e:
        raise InputError(f"{f}: unreadable ({e})") from None


def _cells(diff: np.ndarray) -> list[dict]:
    return [{"migratetype": MT_NAMES[t], "order": o, "diff": int(diff[t, o])}
            for t in range(MIGRATE_TYPES) for o in range(NR_PAGE_ORDERS) if diff[t, o]]


def compare(point: CheckPoint, nr_free: np.ndarray, free_mt: np.ndarray | None,
            pcp: np.ndarray, counters: dict[str, int], start_fit: dict[str, int]
            ) -> list[dict]:
    """One row per zone the kernel lists: ``nr_free[gz, order]``, ``free_mt[gz, mt, order]``
    and ``pcp[gz]`` are the emulated state at ``point.event``; ``counters`` the disagreement
    counters (non-zero ones) up to that point; ``start_fit`` the start rule's pages off
    pagetypeinfo per zone."""
    rows = []
    size = 1 << np.arange(NR_PAGE_ORDERS)
    for (node, zname), kcounts in point.buddyinfo.items():
        gz = node * NR_ZONES + ZONE_NAMES.index(zname)
        emu = nr_free[gz]
        kern = np.array(kcounts, np.int64)
        d_order = emu - kern
        row = {"at": point.at, "event": point.event, "reference": point.reference,
               "zone": f"{node}/{zname}",
               "by_order": {"kernel": kern.tolist(), "emulated": emu.tolist(),
                            "diff": d_order.tolist()},
               "free_pages": {"kernel": int(kern @ size), "emulated": int(emu @ size)},
               "pcp_pages": {"kernel": point.pcp.get((node, zname)),
                             "emulated": int(pcp[gz])}}
        pti = point.pagetypeinfo
        d_mt = None
        if pti is not None and free_mt is not None:
            kmt = np.array([pti.free.get((node, zname, MT_NAMES[t]), [0] * NR_PAGE_ORDERS)
                            for t in range(MIGRATE_TYPES)], np.int64)
            d_mt = free_mt[gz] - kmt
            row["by_migratetype"] = {
                MT_NAMES[t]: {"kernel": kmt[t].tolist(), "emulated": free_mt[gz, t].tolist(),
                              "free_pages_diff": int(d_mt[t] @ size)}
                for t in range(MIGRATE_TYPES)}
            pages = d_mt * size
            row["mismatched_pages"] = int(max(pages[pages > 0].sum(), -pages[pages < 0].sum()))
            row["mismatches"] = _cells(d_mt)
        else:
            row["by_migratetype"] = None
            pages = d_order * size
            row["mismatched_pages"] = int(max(pages[pages > 0].sum(), -pages[pages < 0].sum()))
            row["mismatches"] = [{"order": o, "diff": int(d_order[o])}
                                 for o in range(NR_PAGE_ORDERS) if d_order[o]]
        row["exact_by_order"] = not d_order.any()
        row["exact"] = row["mismatched_pages"] == 0 and row["exact_by_order"]
        row["causes"] = [] if row["exact"] else causes(
            row, d_order, d_mt, counters, start_fit.get(row["zone"], 0), point.at)
        rows.append(row)
    return rows


#: disagreement counters and what they do to the free lists
_COUNTER_EFFECT = {
    "take_not_free": "a zone_locked of a block the emulator did not hold free",
    "take_from_pcp": "blocks the kernel freed straight to the buddy (pcp lock contended)",
    "take_partial": "a zone_locked of a block only partly free in the emulator",
    "alloc_of_allocated": "an allocation of an allocated block (a free event is missing)",
    "free_of_free": "a free of a free block (an allocation event is missing)",
    "drain_not_pcp": "a drain of a block not on a pcp list (a free event is missing)",
    "order_mismatch": "an event whose order differs from the emulated block",
    "unmanaged_pfn": "events on PFNs the emulated buddy does not manage",
}
_TYPE_CHANGERS = ("alloc_claimed_untraced", "drain_claimed_untraced", "pageblock_mt_learned")


def causes(row: dict, d_order: np.ndarray, d_mt: np.ndarray | None, counters: dict[str, int],
           start_off: int, at: str) -> list[str]:
    """What the replay can name as the reasons for one zone's differences."""
    out = []
    if d_order.any():
        out.append("free blocks per order differ by "
                   + ", ".join(f"order {o}: {int(d):+d}" for o, d in enumerate(d_order) if d))
        for k, v in counters.items():
            if k in _COUNTER_EFFECT and v:
                out.append(f"{k} {v:,} before this point: {_COUNTER_EFFECT[k]}")
        kp, ep = row["pcp_pages"]["kernel"], row["pcp_pages"]["emulated"]
        if kp is not None and kp != ep:
            out.append(f"pcp lists: kernel {kp:,} pages (zoneinfo), emulated {ep:,}: the "
                       "emulated lists hold only blocks the trace showed entering them, so "
                       "blocks the kernel still held there may be free or merged here")
        out.append("kernel paths without kmem events (free page reporting, compaction, "
                   "pcp frees that bypass the lists) and the read window of the files")
    if d_mt is not None and np.abs(d_mt).sum() > np.abs(d_order).sum():
        moved = [f"{k} {counters[k]:,}" for k in _TYPE_CHANGERS if counters.get(k)]
        out.append("blocks sit on other migratetype lists than the kernel's: pageblock types "
                   "are in no /proc file per pageblock; the start rule chose them"
                   + (f" ({start_off:,} free pages off pagetypeinfo.before at the start)"
                      if start_off else "")
                   + (", changed since by " + ", ".join(moved) if moved else "")
                   + "; claims and steals that changed a pageblock without a later drain "
                   "(mm_page_alloc_extfrag is not recorded) stay unseen")
    return out
