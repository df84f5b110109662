"""Typing expressions with tree-sitter: hand-worked cases for memdesc.ingest.csource."""

from __future__ import annotations

from memdesc.ingest.csource import Interest, index_header, scan_source
from memdesc.ingest.ctypes_index import Decls

HEADER = b"""
struct page { unsigned long flags; struct address_space *mapping; };
struct folio { struct page page; };
typedef struct page *pgtable_t;
typedef pgtable_t pgtable2_t;
struct page *alloc_pages(int gfp, int order);
#define self_ref self_ref
#define twice(p) (p)
"""
WANT = Interest(frozenset({"mapping", "flags"}))


def uses(body: bytes, index: Decls | None = None) -> list[tuple[int, str, str | None]]:
    idx = index if index is not None else Decls()
    if index is None:
        idx.merge(index_header(HEADER), "include/linux")
    return [(u.line, u.name, u.base) for u in scan_source(body, idx, "fs/x", WANT)
            if u.kind == "field"]


def test_typedef_of_a_typedef():
    assert uses(b"int f(pgtable2_t t) { return t->mapping != 0; }") == [
        (1, "mapping", "struct page")]


def test_macro_argument_substitution_and_self_reference():
    got = uses(b"int f(struct page *p) {\n return twice(p)->flags + self_ref->flags; }")
    assert got == [(2, "flags", "struct page"), (2, "flags", None)]


def test_dot_on_a_pointer_and_arrow_on_an_object_do_not_type():
    got = uses(b"int f(struct page *p, struct page q) {\n return p.flags + q->flags; }")
    assert got == [(2, "flags", None), (2, "flags", None)]


def test_function_pointer_is_not_followed():
    got = uses(b"int f(struct page *(*get)(void)) {\n return get()->flags; }")
    assert got == [(2, "flags", None)]


def test_without_the_index_a_header_struct_member_is_unknown():
    body = b"int f(struct folio *folio) {\n return folio->page.flags; }"
    assert uses(body) == [(2, "flags", "struct page")]
    assert uses(body, Decls()) == [(2, "flags", None)]


def test_nearest_definition_wins_on_a_clash():
    index = Decls()
    index.merge(index_header(b"struct priv { struct page *buf; };"), "drivers/a")
    index.merge(index_header(b"struct priv { struct folio *buf; };"), "drivers/b")
    body = b"int f(struct priv *p) { return p->buf->mapping != 0; }"
    assert [u.base for u in scan_source(body, index, "drivers/a", WANT)] == ["struct page"]
    assert [u.base for u in scan_source(body, index, "drivers/b", WANT)] == ["struct folio"]


def test_pointer_depth_is_checked_along_a_chain():
    index = Decls()
    index.merge(index_header(HEADER + b"struct foo { struct page *pg; };"), "include/linux")
    body = b"int f(struct foo **pf, struct foo *f) {\n return pf->pg->mapping + f->pg->mapping; }"
    assert [u.base for u in scan_source(body, index, "fs/x", WANT)] == [None, "struct page"]


def test_a_declaration_applies_from_where_it_is_written():
    body = (b"int f(struct page *page) {\n int x = page->flags;\n"
            b" struct folio *page2, *page = 0;\n return x + page->flags; }")
    assert uses(body) == [(2, "flags", "struct page"), (4, "flags", "struct folio")]
