"""The survey as JSON, schema documented in docs/survey-json.md (bump SCHEMA_VERSION on change)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from memdesc import __version__
from memdesc.analysis.census import CLASSES
from memdesc.analysis.in_use import class_pages, in_use_pages
from memdesc.atomic import atomic_file
from memdesc.errors import InputError
from memdesc.stages import PAGE_SIZE

if TYPE_CHECKING:
    from memdesc.analysis.survey import SurveyResult

SCHEMA_VERSION = 2


def survey_dict(r: SurveyResult) -> dict[str, Any]:
    """Everything the survey found, as plain JSON-able data."""
    c = r.census
    t = r.descriptors
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": f"memdesc {__version__}",
        "source": r.source,
        "kind": r.kind,
        "kernel": r.kernel,
        "notes": [n for n in ([r.note] if r.note else []) + c.notes if n],
        "skipped": list(r.skipped),
        "skipped_line": r.skipped_line,
        "page_size": PAGE_SIZE,
        "pfns": c.pfns,
        "ram_pages": c.ram_pages,
        "memmap_pages": c.memmap_pages,
        "nr_cpus": c.nr_cpus,
        "pages_by_class": {k: int(c.pages_by_class[k]) for k in CLASSES},
        "units_by_class": {k: [int(x) for x in c.units_by_class[k]] for k in CLASSES},
        "folio_orders": r.folio_orders,
        "zones": [z.to_dict() for z in c.zones],
        "in_use_pages": in_use_pages(c),
        "class_pages": class_pages(c),
        "stages": [s.to_dict() for s in r.costs],
        "break_even_orders": r.break_even,
        "cost_terms": r.terms.to_dict() if r.terms is not None else None,
        "base_pages": [b.to_dict(r.reference_4k) for b in r.base_pages],
        "consistency": [ch.to_dict() for ch in r.checks],
        "buddy_reconciliation": [b.to_dict() for b in r.buddy],
        "descriptors": {
            "path": t.path,
            "types": {n: {"bytes": d.bytes, "size": t.size(n), "source": d.source}
                      for n, d in t.descriptors.items()},
            "slab_cache": dict(t.cache.__dict__),
        },
        "extras": c.extras,
        "map": {"cell_pfns": c.cell_pfns, "cells": len(c.cells)},
    }


def survey_json(r: SurveyResult) -> str:
    return json.dumps(survey_dict(r), indent=1) + "\n"


def write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``dest`` atomically (a temporary file renamed over it). A character
    device such as /dev/null is written directly: there is nothing to make atomic.
    InputError (one line) when the file system refuses it."""
    try:
        if os.path.exists(dest) and not os.path.isfile(dest) and not os.path.isdir(dest):
            with open(dest, "wb") as f:
                f.write(data)
            return
        with atomic_file(dest, "wb") as f:
            f.write(data)
    except OSError as e:
        raise InputError(f"cannot write {dest}: {e.strerror or e}; choose another file") \
            from None


def write_json(r: SurveyResult, dest: str | os.PathLike | None) -> None:
    """Write the survey JSON to ``dest`` atomically, or to stdout when ``dest`` is None/"-"."""
    text = survey_json(r)
    if dest is None or str(dest) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_bytes(dest, text.encode())


def write_all(outputs: list[tuple[str, bytes]]) -> None:
    """Write every ``(path, data)`` with :func:`write_bytes`, all or nothing: if one write
    fails, the files this call created before it are removed (files it replaced stay new)."""
    created: list[str] = []
    try:
        for path, data in outputs:
            is_new = not os.path.lexists(path)
            write_bytes(path, data)
            if is_new:
                created.append(path)
    except BaseException:
        for p in created:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        raise
