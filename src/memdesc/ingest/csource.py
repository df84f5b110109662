"""Typed uses of kernel structures in one C file, read with tree-sitter (no regular expressions).

:func:`scan_source` parses a file and reports every *use* the caller is interested in:

- ``field``: ``E->f`` / ``E.f`` with the struct type of ``E`` when it can be told (a local, a
  parameter, a global, a struct member, a function's return, a cast, a typedef, a simple
  ``#define``), or the reason it cannot;
- ``call``: a call of a named function or macro, with the type of its first argument;
- ``cast``: ``(struct T *)E`` with the type of ``E``;
- ``decl``: a local, parameter or struct member declared with one of the watched types.

A use whose object is a different struct with a field of the same name (``folio->mapping``,
``struct foo *p; p->mapping``) comes back with that other struct as ``base``: the rules in
:mod:`memdesc.analysis.path_rules` decide what counts. Iterator macros of ``<linux/list.h>`` that
take a member name (``list_for_each_entry(page, head, lru)``) are read as the member access they
expand to; see :data:`MEMBER_MACROS`.

Departures from a compiler: every branch of ``#if`` is read (tree-sitter keeps them all); a
name defined differently in two headers takes the definition nearest the file
(:meth:`Decls.nearest`); statement-like macros other than :data:`MEMBER_MACROS` are not expanded.
"""

from __future__ import annotations

from dataclasses import dataclass

from tree_sitter import Node, Query, QueryCursor

from memdesc.ingest.ctypes_index import (
    LANGUAGE,
    CType,
    Decls,
    collect,
    declarators,
    parser,
    specifier_base,
    text,
    unwrap_declarator,
)

#: Macros that name a member of their first argument's type: name -> (object arg, member arg).
#: Mirrors the expansions in include/linux/list.h (list_next_entry(pos, member) is
#: list_entry((pos)->member.next, typeof(*(pos)), member)).
MEMBER_MACROS: dict[str, tuple[int, int]] = {
    name: (0, 2) for name in (
        "list_for_each_entry", "list_for_each_entry_reverse", "list_for_each_entry_continue",
        "list_for_each_entry_continue_reverse", "list_for_each_entry_from",
        "list_for_each_entry_from_reverse", "hlist_for_each_entry",
        "list_prepare_entry", "list_for_each_entry_rcu")
} | {
    name: (0, 3) for name in (
        "list_for_each_entry_safe", "list_for_each_entry_safe_reverse",
        "list_for_each_entry_safe_continue", "list_for_each_entry_safe_from",
        "hlist_for_each_entry_safe")
} | {name: (0, 1) for name in ("list_next_entry", "list_prev_entry", "list_safe_reset_next")}

#: Macros whose result is a pointer to the type named by one argument, and whose member argument
#: is a field of that type: name -> (type arg, member arg). include/linux/container_of.h, list.h.
CONTAINER_MACROS: dict[str, tuple[int, int]] = {
    name: (1, 2) for name in (
        "container_of", "container_of_const", "list_entry", "list_first_entry",
        "list_last_entry", "list_first_entry_or_null", "list_last_entry_or_null",
        "hlist_entry", "hlist_entry_safe", "list_entry_rcu", "llist_entry",
        "list_first_or_null_rcu", "rb_entry", "rb_entry_safe")
}

_DECL_QUERY = """
(declaration) @decl
(parameter_declaration) @param
(field_declaration) @member
"""
#: Casts worth typing: to a pointer of one of these structs.
CAST_TAGS = ("page", "folio", "slab", "ptdesc", "zpdesc")

_SCOPES = frozenset({"compound_statement", "for_statement", "function_definition"})
_MAX_DEPTH = 12


@dataclass(frozen=True, slots=True)
class Use:
    """One use found in a file. ``base`` is the resolved struct (``"struct page"``) of the object
    for ``field``, of the first argument for ``call``, of the operand for ``cast`` and of the
    declared object for ``decl``; None when it cannot be told, then ``via`` says why."""

    kind: str
    line: int
    name: str
    base: str | None
    via: str
    addr: bool = False
    op: str = ""

    @property
    def resolved(self) -> bool:
        return self.base is not None


@dataclass(frozen=True)
class Interest:
    """What to report: field names, call names (exact or by prefix), cast targets, decl types."""

    fields: frozenset[str]
    calls: frozenset[str] = frozenset()
    call_prefixes: tuple[str, ...] = ()
    cast_targets: frozenset[str] = frozenset()
    decl_bases: frozenset[str] = frozenset()

    def wants_call(self, name: str) -> bool:
        return name in self.calls or (
            name.startswith(self.call_prefixes) and _page_flag_name(name, self.call_prefixes))


def _page_flag_name(name: str, prefixes: tuple[str, ...]) -> bool:
    """``PageLocked``, ``SetPageDirty``, ``__ClearPageReferenced``: prefix then a capital."""
    for p in prefixes:
        if name.startswith(p) and len(name) > len(p) and name[len(p)].isupper():
            return True
    return False


_queries: dict[Interest, Query] = {}
_decl_query: Query | None = None


def _quoted(names) -> str:
    return " ".join(f'"{n}"' for n in sorted(names))


def _use_query(want: Interest) -> Query:
    """Candidates only (tree-sitter filters by name in C): fields and calls the caller wants,
    the macros of :data:`MEMBER_MACROS`/:data:`CONTAINER_MACROS`, casts to watched structs."""
    if want not in _queries:
        calls = set(want.calls) | set(MEMBER_MACROS) | set(CONTAINER_MACROS)
        src = (f"((field_expression field: (field_identifier) @field) @fe "
               f"(#any-of? @field {_quoted(want.fields)}))\n"
               f"((call_expression function: (identifier) @callee) @call "
               f"(#any-of? @callee {_quoted(calls)}))\n"
               f"((cast_expression type: (type_descriptor type: (struct_specifier name: "
               f"(type_identifier) @tag)) value: (_) @cvalue) @cast "
               f"(#any-of? @tag {_quoted(CAST_TAGS)}))\n")
        if want.call_prefixes:
            alts = "|".join(want.call_prefixes)
            src += (f"((call_expression function: (identifier) @callee) @call "
                    f'(#match? @callee "^({alts})[A-Z]"))\n')
        _queries[want] = Query(LANGUAGE, src)
    return _queries[want]


def _decls_query() -> Query:
    global _decl_query
    if _decl_query is None:
        _decl_query = Query(LANGUAGE, _DECL_QUERY)
    return _decl_query


class FileTypes:
    """Types of expressions in one parsed file, against the tree-wide index."""

    def __init__(self, root: Node, index: Decls, folder: str):
        self.index, self.folder = index, folder
        self.own = collect(root)
        self.scoped: dict[str, list[tuple[int, int, int, CType, str]]] = {}
        self._macro_trees: dict[str, Node | None] = {}

    # -- name tables ------------------------------------------------------------------------
    def _lookup(self, table: str, name: str):
        value = getattr(self.own, table).get(name)
        if value is None and name in getattr(self.index, table):
            value = self.index.nearest(table, name, self.folder)
        return value

    def resolve(self, ctype: CType | None) -> CType | None:
        if ctype is None:
            return None
        base, ptr = ctype
        if base in self.own.typedefs and self.own.typedefs[base][0] != base:
            t = self.own.typedefs[base]
            return self.resolve((t[0], t[1] + ptr))
        return self.index.resolve(ctype, self.folder)

    def members(self, base: str) -> dict[str, CType] | None:
        return self._lookup("structs", base)

    def add_scoped(self, name: str, scope: Node, start: int, ctype: CType, via: str) -> None:
        self.scoped.setdefault(name, []).append(
            (scope.start_byte, scope.end_byte, start, ctype, via))

    # -- expressions ------------------------------------------------------------------------
    def type_of(self, node: Node, env: dict | None = None, depth: int = 0
                ) -> tuple[CType | None, str]:
        """``(type, via)``: the resolved type of an expression and how it was found, or
        ``(None, reason)``."""
        if depth > _MAX_DEPTH:
            return None, "macro nesting too deep"
        handler = _EXPR.get(node.type)
        if handler is None:
            return None, f"{node.type} not typed"
        t, via = handler(self, node, env, depth)
        return self.resolve(t), via

    def _identifier(self, node: Node, env, depth):
        name = text(node)
        if env and name in env:
            arg, caller_env = env[name]
            return self.type_of(arg, caller_env, depth + 1) if arg is not None else (
                None, f"macro argument {name} missing")
        pos, best = node.start_byte, None
        for start, end, decl, ctype, via in self.scoped.get(name, ()):
            if start <= pos < end and decl <= pos and (best is None or start >= best[0]):
                best = (start, ctype, via)
        if best is not None:
            return best[1], best[2]
        value = self._lookup("globals", name)
        if value is not None:
            return value, "global"
        macro = self._lookup("macros", name)
        if macro is not None and macro[0] is None:
            body = self._macro_body(name, macro[1])
            if body is not None:
                t, via = self.type_of(body, {}, depth + 1)
                return t, f"macro {name}" if t is not None else via
        return None, f"{name} not declared in this file or an indexed header"

    def _field(self, node: Node, env, depth):
        obj = node.child_by_field_name("argument")
        op = text(node.child_by_field_name("operator"))
        name = text(node.child_by_field_name("field"))
        t, via = self.type_of(obj, env, depth + 1)
        if t is None:
            return None, via
        base, ptr = t
        if ptr != (1 if op == "->" else 0):
            return None, f"{text(obj)[:40]} is {base} {'*' * ptr}, not a struct for {op}"
        members = self.members(base)
        if members is None:
            return None, f"definition of {base} not found"
        mt = members.get(name)
        if mt is None:
            return None, f"{base} has no member {name}"
        return mt, f"member {base.split(' ', 1)[-1]}.{name}"

    def _call(self, node: Node, env, depth):
        fn = node.child_by_field_name("function")
        if fn.type != "identifier":
            return None, "call through a pointer"
        name = text(fn)
        args = node.child_by_field_name("arguments")
        if name in CONTAINER_MACROS:
            t = self.type_arg(args, CONTAINER_MACROS[name][0])
            return ((t[0], t[1] + 1), f"macro {name}") if t else (None, f"{name} type not read")
        ret = self._lookup("functions", name)
        if ret is not None:
            return ret, f"return of {name}()"
        macro = self._lookup("macros", name)
        if macro is not None and macro[0] is not None:
            body = self._macro_body(name, macro[1])
            if body is None:
                return None, f"macro {name} is not an expression"
            actual = _arguments(args)
            inner_env = {p: (actual[i] if i < len(actual) else None, env)
                         for i, p in enumerate(macro[0])}
            t, via = self.type_of(body, inner_env, depth + 1)
            return (t, f"macro {name}") if t is not None else (None, via)
        return None, f"{name}() not declared in this file or an indexed header"

    def _macro_body(self, name: str, body: str) -> Node | None:
        if name not in self._macro_trees:
            src = f"void __m(void) {{ __m0 = ({body}); }}".encode()
            tree = parser().parse(src)
            node = _first_assignment_value(tree.root_node)
            self._macro_trees[name] = node
        return self._macro_trees[name]

    def type_arg(self, args: Node, index: int) -> CType | None:
        """The type named by argument ``index`` of ``container_of(ptr, struct page, lru)``."""
        groups = _raw_arguments(args)
        if index >= len(groups):
            return None
        words = [text(n) for g in groups[index] for n in _leaves(g)]
        if len(words) >= 2 and words[0] in ("struct", "union"):
            return self.resolve((f"{words[0]} {words[1]}", words.count("*")))
        if words and words[0] not in ("struct", "union", "typeof", "__typeof__"):
            return self.resolve((words[0], words.count("*")))
        return None

    def cast_type(self, descriptor: Node) -> CType | None:
        base = specifier_base(descriptor.child_by_field_name("type"))
        if base is None:
            return None
        _, ptr, params = unwrap_declarator(descriptor.child_by_field_name("declarator"))
        return None if params is not None else self.resolve((base, ptr))


def _first_assignment_value(root: Node) -> Node | None:
    stack = [root]
    while stack:
        n = stack.pop()
        if n.type == "assignment_expression":
            value = n.child_by_field_name("right")
            while value is not None and value.type == "parenthesized_expression" \
                    and value.named_child_count == 1:
                value = value.named_children[0]
            return None if value is None or value.has_error else value
        stack.extend(reversed(n.children))
    return None


def _raw_arguments(args: Node) -> list[list[Node]]:
    groups: list[list[Node]] = [[]]
    for c in args.children[1:-1]:
        if c.type == ",":
            groups.append([])
        else:
            groups[-1].append(c)
    return groups


def _arguments(args: Node) -> list[Node | None]:
    return [g[0] if len(g) == 1 else None for g in _raw_arguments(args)]


def _leaves(node: Node) -> list[Node]:
    if node.child_count == 0:
        return [node]
    return [leaf for c in node.children for leaf in _leaves(c)]


def _named(node: Node, env, depth, types: FileTypes, idx: int = 0):
    kids = node.named_children
    return types.type_of(kids[idx], env, depth + 1) if len(kids) > idx else (None, "empty")


def _pointer(types: FileTypes, node: Node, env, depth):
    t, via = types.type_of(node.child_by_field_name("argument"), env, depth + 1)
    if t is None:
        return None, via
    step = 1 if text(node.child_by_field_name("operator")) == "&" else -1
    return ((t[0], t[1] + step), via) if t[1] + step >= 0 else (None, "dereference of non-pointer")


def _subscript(types: FileTypes, node: Node, env, depth):
    t, via = types.type_of(node.child_by_field_name("argument"), env, depth + 1)
    return ((t[0], t[1] - 1), via) if t is not None and t[1] > 0 else (None, via)


def _binary(types: FileTypes, node: Node, env, depth):
    if text(node.child_by_field_name("operator")) not in ("+", "-"):
        return None, "arithmetic result"
    for side in ("left", "right"):
        t, via = types.type_of(node.child_by_field_name(side), env, depth + 1)
        if t is not None and t[1] > 0:
            return t, via
    return None, "pointer arithmetic on unknown operands"


def _conditional(types: FileTypes, node: Node, env, depth):
    reason = "conditional"
    for side in ("consequence", "alternative"):
        part = node.child_by_field_name(side)
        if part is not None:
            t, reason = types.type_of(part, env, depth + 1)
            if t is not None:
                return t, reason
    return None, reason


def _cast(types: FileTypes, node: Node, env, depth):
    t = types.cast_type(node.child_by_field_name("type"))
    return (t, "cast") if t is not None else (None, "cast to an unread type")


_EXPR = {
    "identifier": FileTypes._identifier,
    "field_expression": FileTypes._field,
    "call_expression": FileTypes._call,
    "parenthesized_expression": lambda s, n, e, d: _named(n, e, d, s),
    "pointer_expression": _pointer,
    "subscript_expression": _subscript,
    "binary_expression": _binary,
    "conditional_expression": _conditional,
    "cast_expression": _cast,
    "assignment_expression": lambda s, n, e, d: s.type_of(n.child_by_field_name("left"), e,
                                                          d + 1),
    "comma_expression": lambda s, n, e, d: s.type_of(n.child_by_field_name("right"), e, d + 1),
}


def _scope_of(node: Node) -> Node | None:
    parent = node.parent
    while parent is not None:
        if parent.type in _SCOPES:
            return parent
        if parent.type in ("declaration", "field_declaration", "type_definition"):
            return None  # a parameter of a prototype or of a function pointer
        parent = parent.parent
    return None


def _declare(types: FileTypes, node: Node, kind: str, interest: Interest, out: list) -> None:
    spec = node.child_by_field_name("type")
    base = specifier_base(spec)
    if base is None:
        return
    scope = _scope_of(node) if kind != "member" else None
    if kind != "member" and scope is None:
        return
    for d in declarators(node):
        name, ptr, params = unwrap_declarator(d)
        if name is None or params is not None:
            continue
        ctype = types.resolve((base, ptr))
        via = kind if ctype == (base, ptr) else f"{kind}, typedef {base}"
        if kind != "member":
            types.add_scoped(name, scope, node.start_byte, ctype, via)
        if ctype is not None and ctype[0] in interest.decl_bases:
            out.append(Use("decl", node.start_point.row + 1, name, ctype[0], via))


def _field_use(types: FileTypes, node: Node, interest: Interest, out: list) -> None:
    obj = node.child_by_field_name("argument")
    op = text(node.child_by_field_name("operator"))
    t, via = types.type_of(obj)
    base = None
    if t is not None:
        if t[1] == (1 if op == "->" else 0):
            base = t[0]
        else:
            via = f"{text(obj)[:40]} is {t[0]} {'*' * t[1]}"
    parent = node.parent
    addr = parent is not None and parent.type == "pointer_expression" and \
        text(parent.child_by_field_name("operator")) == "&"
    name = text(node.child_by_field_name("field"))
    out.append(Use("field", node.start_point.row + 1, name, base, via, addr, op))


def _call_use(types: FileTypes, node: Node, name: str, interest: Interest, out: list) -> None:
    args = node.child_by_field_name("arguments")
    line = node.start_point.row + 1
    if name in MEMBER_MACROS:
        obj_i, mem_i = MEMBER_MACROS[name]
        actual = _arguments(args)
        member = actual[mem_i] if mem_i < len(actual) else None
        if member is not None and member.type == "identifier" and text(member) in interest.fields:
            t, via = types.type_of(actual[obj_i]) if actual[obj_i] is not None else (None, "")
            base = t[0] if t is not None and t[1] == 1 else None
            out.append(Use("field", line, text(member), base,
                           f"macro {name}" if base else via, op="macro"))
        return
    if name in CONTAINER_MACROS:
        type_i, mem_i = CONTAINER_MACROS[name]
        groups = _raw_arguments(args)
        member = groups[mem_i] if mem_i < len(groups) else []
        if len(member) == 1 and text(member[0]) in interest.fields:
            t = types.type_arg(args, type_i)
            out.append(Use("field", line, text(member[0]), t[0] if t else None,
                           f"macro {name}" if t else f"{name}: type argument not read",
                           op="macro"))
        return
    if not interest.wants_call(name):
        return
    first = _arguments(args)[:1]
    t, via = types.type_of(first[0]) if first and first[0] is not None else (None, "no argument")
    out.append(Use("call", line, name, t[0] if t is not None and t[1] == 1 else None, via))


def _enclosing_functions(nodes: list[Node], root: Node) -> list[Node]:
    """The function definitions holding ``nodes``; the whole file when one of them is outside
    any (a function tree-sitter could only recover as an ERROR node, a global initialiser)."""
    seen: dict[int, Node] = {}
    for node in nodes:
        outer, parent = None, node.parent
        while parent is not None:  # the outermost: `for_each_hstate(h) {` parses as a nested one
            if parent.type == "function_definition":
                outer = parent
            parent = parent.parent
        if outer is None:
            return [root]
        seen.setdefault(outer.start_byte, outer)
    return [seen[k] for k in sorted(seen)]


def scan_source(data: bytes, index: Decls, folder: str, interest: Interest,
                all_decls: bool = False) -> list[Use]:
    """Every use in ``data`` (a C file from ``folder`` of the tree) that ``interest`` names.

    Declarations are read in the functions that hold a candidate use (their scopes type it),
    or in the whole file with ``all_decls`` (to report ``decl`` uses)."""
    root = parser().parse(data).root_node
    matches = QueryCursor(_use_query(interest)).matches(root)
    if not matches and not all_decls:
        return []
    types = FileTypes(root, index, folder)
    out: list[Use] = []
    ranges = [root] if all_decls else _enclosing_functions(
        [next(iter(caps.values()))[0] for _, caps in matches], root)
    for node in ranges:
        cursor = QueryCursor(_decls_query())
        cursor.set_byte_range(node.start_byte, node.end_byte)
        for _, caps in cursor.matches(node):
            for kind, key in (("local", "decl"), ("param", "param"), ("member", "member")):
                if key in caps:
                    _declare(types, caps[key][0], kind, interest, out)
    for _, caps in matches:
        if "fe" in caps:
            _field_use(types, caps["fe"][0], interest, out)
        elif "call" in caps:
            _call_use(types, caps["call"][0], text(caps["callee"][0]), interest, out)
        elif "cast" in caps:
            _cast_use(types, caps["cast"][0], caps["cvalue"][0], interest, out)
    out.sort(key=lambda u: (u.line, u.kind, u.name))
    return out


def _cast_use(types: FileTypes, node: Node, value: Node, interest: Interest, out: list) -> None:
    target = types.cast_type(node.child_by_field_name("type"))
    if target is not None and target[1] == 1 and target[0] in interest.cast_targets:
        t, via = types.type_of(value)
        out.append(Use("cast", node.start_point.row + 1, target[0],
                       t[0] if t is not None and t[1] == 1 else None, via))


def index_header(data: bytes) -> Decls:
    """The declarations of one header, for the tree-wide index."""
    return collect(parser().parse(data).root_node)
