"""Declarations of a C source file read with tree-sitter: struct members, typedefs, function
return types, globals and ``#define`` bodies. The kernel-wide index (every header that mentions
``page``) and each file's own declarations are both built here; :mod:`memdesc.ingest.csource`
uses them to tell the type of an expression.

A type is a pair ``(base, ptr)``: ``("struct page", 1)`` is ``struct page *``; arrays count as one
level of pointer (what subscripting and decay do). Typedef names are kept as written and resolved
on lookup (:meth:`Decls.resolve`), because a header's typedef may come from another header.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import tree_sitter_c
from tree_sitter import Language, Node, Parser, Query, QueryCursor

CType = tuple[str, int]

LANGUAGE = Language(tree_sitter_c.language())

#: Where a top-level declaration may sit (conditional compilation keeps it top-level).
_TOP = frozenset({"translation_unit", "preproc_if", "preproc_ifdef", "preproc_else",
                  "preproc_elif", "preproc_elifdef", "linkage_specification",
                  "declaration_list"})

_DECL_QUERY = """
(struct_specifier name: (type_identifier) @tag body: (field_declaration_list) @body) @struct
(union_specifier name: (type_identifier) @tag body: (field_declaration_list) @body) @union
(type_definition) @typedef
(declaration) @decl
(function_definition) @fndef
(preproc_def name: (identifier) @mname value: (preproc_arg) @mbody) @objmacro
(preproc_function_def name: (identifier) @fname parameters: (preproc_params) @fparams
    value: (preproc_arg) @fbody) @fnmacro
"""

#: Declarators that add one level of indirection (arrays decay to pointers).
_POINTERISH = frozenset({"pointer_declarator", "abstract_pointer_declarator",
                         "array_declarator", "abstract_array_declarator"})

_parser: Parser | None = None
_query: Query | None = None


def parser() -> Parser:
    """One tree-sitter C parser per process (parsers are not shared across processes)."""
    global _parser
    if _parser is None:
        _parser = Parser(LANGUAGE)
    return _parser


def decl_query() -> Query:
    global _query
    if _query is None:
        _query = Query(LANGUAGE, _DECL_QUERY)
    return _query


def text(node: Node) -> str:
    return node.text.decode("utf-8", "replace")


def specifier_base(node: Node | None) -> str | None:
    """The base type a type specifier names: ``struct page``, ``pgoff_t``, ``int``; None for an
    anonymous struct/union or a specifier we do not read (``typeof``, macro types)."""
    if node is None:
        return None
    kind = node.type
    if kind in ("struct_specifier", "union_specifier", "enum_specifier"):
        name = node.child_by_field_name("name")
        return f"{kind.split('_')[0]} {text(name)}" if name is not None else None
    if kind in ("type_identifier", "primitive_type"):
        return text(node)
    if kind == "sized_type_specifier":
        return "int"
    return None


def unwrap_declarator(node: Node | None) -> tuple[str | None, int, Node | None]:
    """``(name, pointer levels, parameter_list or None)`` of a declarator.

    ``struct page *(*fn)(void)`` is a function pointer: its name is returned with params set,
    which callers treat as "not a plain object".
    """
    ptr, params = 0, None
    while node is not None:
        kind = node.type
        if kind in ("identifier", "field_identifier", "type_identifier"):
            return text(node), ptr, params
        if kind in _POINTERISH:
            ptr += 1
        elif kind in ("function_declarator", "abstract_function_declarator"):
            if params is None:
                params = node.child_by_field_name("parameters")
            else:  # a function returning a function pointer: not an object we follow
                return None, 0, params
        elif kind not in ("init_declarator", "parenthesized_declarator",
                          "attributed_declarator", "abstract_parenthesized_declarator"):
            return None, ptr, params
        nxt = node.child_by_field_name("declarator")
        if nxt is None and kind == "parenthesized_declarator":
            nxt = next((c for c in node.named_children if c.type != "attribute_specifier"), None)
        node = nxt
    return None, ptr, params


def declarators(node: Node) -> list[Node]:
    return node.children_by_field_name("declarator")


@dataclass
class Decls:
    """Name tables of one file, or of the whole tree (merged, see :meth:`merge`).

    Each table maps a name to its value; :attr:`dirs` remembers the folder of each definition
    so that a clash (two drivers' ``struct priv``) resolves to the nearest one.
    """

    structs: dict[str, dict[str, CType]] = field(default_factory=dict)
    typedefs: dict[str, CType] = field(default_factory=dict)
    functions: dict[str, CType] = field(default_factory=dict)
    globals: dict[str, CType] = field(default_factory=dict)
    macros: dict[str, tuple[tuple[str, ...] | None, str]] = field(default_factory=dict)
    alternatives: dict[tuple[str, str], list[tuple[str, object]]] = field(default_factory=dict)

    TABLES = ("structs", "typedefs", "functions", "globals", "macros")

    def merge(self, other: Decls, folder: str) -> None:
        """Add ``other`` (declarations of one file in ``folder``); clashes keep every variant."""
        for table in self.TABLES:
            mine, theirs = getattr(self, table), getattr(other, table)
            for name, value in theirs.items():
                old = mine.get(name)
                if old is None:
                    mine[name] = value
                    self.alternatives[(table, name)] = [(folder, value)]
                elif old != value:
                    self.alternatives.setdefault((table, name), []).append((folder, value))
                    if table == "structs" and len(value) > len(old):
                        mine[name] = value  # the full definition beats a partial one

    def nearest(self, table: str, name: str, folder: str):
        """The definition of ``name`` from the folder sharing the longest prefix with
        ``folder`` (``include/`` wins ties, as the kernel's include path would)."""
        alts = self.alternatives.get((table, name))
        if not alts or len(alts) == 1:
            return getattr(self, table).get(name)
        best, best_score = None, -1
        for where, value in alts:
            score = _common_prefix(where, folder) * 2 + where.startswith("include")
            if score > best_score:
                best, best_score = value, score
        return best

    def resolve(self, ctype: CType | None, folder: str = "", depth: int = 0) -> CType | None:
        """Follow typedefs: ``pgtable_t`` -> ``("struct page", 1)`` on most architectures."""
        if ctype is None or depth > 8:
            return ctype
        base, ptr = ctype
        target = self.nearest("typedefs", base, folder) if base in self.typedefs else None
        if target is None or target[0] == base:
            return ctype
        return self.resolve((target[0], target[1] + ptr), folder, depth + 1)


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split("/"), b.split("/"), strict=False):
        if x != y:
            break
        n += 1
    return n


def _is_top(node: Node) -> bool:
    parent = node.parent
    while parent is not None and parent.type in ("preproc_if", "preproc_ifdef", "preproc_else",
                                                 "preproc_elif", "preproc_elifdef"):
        parent = parent.parent
    return parent is None or parent.type in _TOP


def struct_members(body: Node, decls: Decls, owner: str) -> dict[str, CType]:
    """Members of a ``field_declaration_list``; anonymous struct/union members are flattened
    (``page->mapping`` sits three unions deep in struct page)."""
    members: dict[str, CType] = {}
    for child in body.named_children:
        if child.type.startswith("preproc_"):
            members.update(struct_members(child, decls, owner))
            continue
        if child.type != "field_declaration":
            continue
        spec = child.child_by_field_name("type")
        base = specifier_base(spec)
        outs = declarators(child)
        inner = spec.child_by_field_name("body") if spec is not None else None
        if base is None and inner is not None:
            if not outs:  # anonymous struct/union: its members are the owner's
                members.update(struct_members(inner, decls, owner))
                continue
            base = f"struct <{owner}.{text(outs[0])[:40]}>"
            decls.structs[base] = struct_members(inner, decls, base)
        if base is None:
            continue
        for d in outs:
            name, ptr, params = unwrap_declarator(d)
            if name is not None and params is None:
                members[name] = (base, ptr)
    return members


def _typedef(node: Node, decls: Decls) -> None:
    spec = node.child_by_field_name("type")
    base = specifier_base(spec)
    for d in declarators(node):
        name, ptr, params = unwrap_declarator(d)
        if name is None or params is not None:
            continue
        if base is None and spec is not None and spec.child_by_field_name("body") is not None:
            base = f"struct <{name}>"
            decls.structs[base] = struct_members(spec.child_by_field_name("body"), decls, base)
        if base is not None:
            decls.typedefs[name] = (base, ptr)


def _declaration(node: Node, decls: Decls) -> None:
    base = specifier_base(node.child_by_field_name("type"))
    if base is None:
        return
    for d in declarators(node):
        name, ptr, params = unwrap_declarator(d)
        if name is None:
            continue
        if params is not None:
            decls.functions[name] = (base, ptr)
        else:
            decls.globals[name] = (base, ptr)


def _function(node: Node, decls: Decls) -> None:
    base = specifier_base(node.child_by_field_name("type"))
    name, ptr, params = unwrap_declarator(node.child_by_field_name("declarator"))
    if base is not None and name is not None:
        decls.functions[name] = (base, ptr)


def _macro_params(node: Node) -> tuple[str, ...]:
    return tuple(text(c) for c in node.named_children if c.type == "identifier")


def collect(root: Node, decls: Decls | None = None) -> Decls:
    """Every struct, typedef, prototype, global and macro declared in the tree of one file."""
    decls = decls if decls is not None else Decls()
    for _, caps in QueryCursor(decl_query()).matches(root):
        if "struct" in caps or "union" in caps:
            kind = "struct" if "struct" in caps else "union"
            tag = f"{kind} {text(caps['tag'][0])}"
            decls.structs[tag] = struct_members(caps["body"][0], decls, tag)
        elif "typedef" in caps:
            _typedef(caps["typedef"][0], decls)
        elif "decl" in caps:
            if _is_top(caps["decl"][0]):
                _declaration(caps["decl"][0], decls)
        elif "fndef" in caps:
            _function(caps["fndef"][0], decls)
        elif "objmacro" in caps:
            decls.macros.setdefault(text(caps["mname"][0]), (None, text(caps["mbody"][0])))
        elif "fnmacro" in caps:
            decls.macros.setdefault(text(caps["fname"][0]),
                                    (_macro_params(caps["fparams"][0]), text(caps["fbody"][0])))
    return decls
