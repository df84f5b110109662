"""Parse tracefs self-description: event ``format`` files, ``header_page`` and ``header_event``.

The raw ring-buffer decoder takes every offset and size from these files (nothing hard-coded),
so a kernel that moves a field still decodes. The ``gfp_flags`` name table is read from the
``__print_flags(...)`` list in an event's ``print fmt`` (e.g. kmem/mm_page_alloc), so symbolic
gfp strings in text traces map back to the same integers the raw pages hold.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

from memdesc.errors import InputError

_FIELD_RE = re.compile(
    r"field:\s*(?P<decl>[^;]+);\s*offset:\s*(?P<off>\d+);\s*size:\s*(?P<size>\d+);"
    r"\s*signed:\s*(?P<signed>\d+);")


@dataclass(frozen=True)
class Field:
    """One field of an event record: ``name`` at ``offset`` of ``size`` bytes."""

    name: str
    offset: int
    size: int
    signed: bool
    data_loc: bool = False   # __data_loc: a u32 (len << 16 | offset) pointing into the record
    array: bool = False      # char buf[] style flexible/fixed arrays


@dataclass
class EventFormat:
    """An ``events/SYSTEM/NAME/format`` file."""

    system: str
    name: str
    id: int
    fields: dict[str, Field]
    print_fmt: str = ""


@dataclass(frozen=True)
class PageHeader:
    """``events/header_page``: the ring-buffer sub-buffer header (struct buffer_data_page)."""

    ts_offset: int
    ts_size: int
    commit_offset: int
    commit_size: int
    data_offset: int
    data_size: int

    @property
    def page_size(self) -> int:
        """Bytes per sub-buffer as trace_pipe_raw hands them out (header + data)."""
        return self.data_offset + self.data_size


@dataclass(frozen=True)
class EntryHeader:
    """``events/header_event``: the compressed ring_buffer_event header."""

    type_len_bits: int = 5
    time_delta_bits: int = 27
    padding: int = 29
    time_extend: int = 30
    time_stamp: int = 31
    data_max_type_len: int = 28


@dataclass
class Formats:
    """Everything read from a ``formats/`` folder: events by name, page and entry headers."""

    events: dict[str, EventFormat] = field(default_factory=dict)
    page: PageHeader | None = None
    entry: EntryHeader | None = None

    def by_id(self) -> dict[int, EventFormat]:
        return {e.id: e for e in self.events.values()}


def _field_name(decl: str) -> tuple[str, bool, bool]:
    """``'__data_loc char[] name'`` -> ('name', data_loc=True, array=True)."""
    decl = decl.strip()
    data_loc = decl.startswith("__data_loc")
    array = "[" in decl
    name = re.sub(r"\[.*?\]", "", decl).split()[-1].lstrip("*")
    return name, data_loc, array


def parse_event_format(text: str, *, system: str = "", source: str = "format") -> EventFormat:
    """Parse one event ``format`` file."""
    name = re.search(r"^name:\s*(\S+)", text, re.M)
    ident = re.search(r"^ID:\s*(\d+)", text, re.M)
    if not name or not ident:
        raise InputError(f"{source}: not a tracefs event format file (no 'name:'/'ID:' line)")
    fields = {}
    for m in _FIELD_RE.finditer(text):
        fname, data_loc, array = _field_name(m["decl"])
        fields[fname] = Field(fname, int(m["off"]), int(m["size"]), m["signed"] == "1",
                              data_loc, array)
    fmt = re.search(r"^print fmt:\s*(.*)$", text, re.M | re.S)
    return EventFormat(system, name[1], int(ident[1]), fields, fmt[1].strip() if fmt else "")


def parse_header_page(text: str, source: str = "header_page") -> PageHeader:
    """Parse ``events/header_page`` (timestamp, commit and data fields)."""
    fields = {}
    for m in _FIELD_RE.finditer(text):
        fields[_field_name(m["decl"])[0]] = (int(m["off"]), int(m["size"]))
    try:
        ts, commit, data = fields["timestamp"], fields["commit"], fields["data"]
    except KeyError as e:
        raise InputError(f"{source}: field {e} missing; is this events/header_page?") from None
    return PageHeader(ts[0], ts[1], commit[0], commit[1], data[0], data[1])


def parse_header_event(text: str, source: str = "header_event") -> EntryHeader:
    """Parse ``events/header_event`` (bit widths and the special type_len values)."""
    def num(pattern: str) -> int:
        m = re.search(pattern, text)
        if not m:
            raise InputError(f"{source}: no match for {pattern!r}; is this events/header_event?")
        return int(m[1])
    return EntryHeader(
        type_len_bits=num(r"type_len\s*:\s*(\d+)\s*bits"),
        time_delta_bits=num(r"time_delta\s*:\s*(\d+)\s*bits"),
        padding=num(r"padding\s*:\s*type\s*==\s*(\d+)"),
        time_extend=num(r"time_extend\s*:\s*type\s*==\s*(\d+)"),
        time_stamp=num(r"time_stamp\s*:\s*type\s*==\s*(\d+)"),
        data_max_type_len=num(r"data max type_len\s*==\s*(\d+)"),
    )


def load_formats(folder: str | Path) -> Formats:
    """Read a ``formats/`` folder as saved by ``memdesc record`` (and the fixtures).

    Event files are named ``SYSTEM.NAME.format`` (or a tracefs-like ``SYSTEM/NAME/format``
    tree); ``header_page`` and ``header_event`` sit at the top.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no formats folder")
    out = Formats()
    for path in sorted(folder.glob("*.format")) + sorted(folder.glob("*/*/format")):
        if path.name == "format":
            system = path.parent.parent.name
        else:
            system = path.name.split(".")[0] if path.name.count(".") >= 2 else ""
        ev = parse_event_format(path.read_text(errors="replace"), system=system,
                                source=str(path))
        out.events[ev.name] = ev
    if (folder / "header_page").is_file():
        out.page = parse_header_page((folder / "header_page").read_text(), str(folder))
    if (folder / "header_event").is_file():
        out.entry = parse_header_event((folder / "header_event").read_text(), str(folder))
    return out


# --- __print_flags tables -------------------------------------------------------------------

_CAST_RE = re.compile(r"\(\s*(?:__force\s+)?(?:unsigned\s+long\s+long|unsigned\s+long|"
                      r"unsigned\s+int|unsigned|gfp_t|long|int|u32|u64)\s*\)")
_INT_SUFFIX_RE = re.compile(r"\b(0[xX][0-9a-fA-F]+|\d+)(?:[uU]?[lL]{0,2}|[lL]{1,2}[uU]?)\b")
_MASK64 = (1 << 64) - 1


def _eval_c_int(expr: str) -> int:
    """Evaluate a constant C integer expression of | & ~ << >> + - and literals."""
    expr = _INT_SUFFIX_RE.sub(r"\1", _CAST_RE.sub("", expr))
    node = ast.parse(expr.strip(), mode="eval").body

    def ev(n: ast.AST) -> int:
        if isinstance(n, ast.Constant) and isinstance(n.value, int):
            return n.value
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.Invert):
            return ~ev(n.operand) & _MASK64
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -ev(n.operand) & _MASK64
        if isinstance(n, ast.BinOp):
            a, b = ev(n.left), ev(n.right)
            ops = {ast.BitOr: a | b, ast.BitAnd: a & b, ast.LShift: a << b if b < 64 else 0,
                   ast.RShift: a >> b, ast.Add: a + b, ast.Sub: a - b, ast.BitXor: a ^ b}
            if type(n.op) in ops:
                return ops[type(n.op)] & _MASK64
        raise ValueError(f"not a constant integer expression: {ast.dump(n)[:80]}")
    return ev(node)


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split ``text`` on ``sep`` outside parentheses, braces and string literals."""
    parts, depth, cur, in_str = [], 0, [], False
    for ch in text:
        if in_str:
            cur.append(ch)
            in_str = ch != '"'
            continue
        if ch == '"':
            in_str = True
        elif ch in "({":
            depth += 1
        elif ch in ")}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def print_flags_table(print_fmt: str, field_name: str) -> list[tuple[str, int]]:
    """The ``(name, mask)`` list of ``__print_flags(REC->FIELD, "|", {mask, "name"}, ...)``.

    Order is kept: the kernel's trace_print_flags_seq() prints the first matching mask and
    clears its bits, so names in text traces are sums of these masks (plus an optional hex
    remainder). Returns [] when the print fmt has no such table or it cannot be evaluated.
    """
    m = re.search(r"__print_flags\(\s*REC->" + re.escape(field_name) + r"\s*,\s*\"[^\"]*\"\s*,",
                  print_fmt)
    if not m:
        return []
    depth, i = 1, m.end()
    while i < len(print_fmt) and depth:            # find the call's closing parenthesis
        depth += {"(": 1, ")": -1}.get(print_fmt[i], 0)
        i += 1
    table = []
    for entry in _split_top(print_fmt[m.end():i - 1]):
        entry = entry.strip()
        if not (entry.startswith("{") and entry.endswith("}")):
            continue
        parts = _split_top(entry[1:-1])
        if len(parts) != 2 or '"' not in parts[1]:
            continue                                # the { 0, NULL } terminator
        name = parts[1].strip().strip('"')
        try:
            table.append((name, _eval_c_int(parts[0])))
        except (ValueError, SyntaxError):
            return []
    return table
