// Lines that must count carry the marker and their rule ids; no other line may count.
#include <linux/mm_types.h>

struct foo {
	struct address_space *mapping;	/* a same-named field on another struct */
	unsigned long index;
	struct page *pg;		// expect: 1.page_decl
};

static int foofs_read(struct page *page, struct folio *folio, struct foo *p) // expect: 1.page_decl
{
	struct buffer_head *bh;
	struct vm_fault *vmf;
	struct page *q = alloc_pages(0, 0);	// expect: 1.page_decl
	int x = 0;

	x += page->mapping != 0;	// expect: 2.mapping_index 3.desc_field 5.leaves_32
	x += folio->mapping != 0;
	x += p->mapping != 0;
	x += p->index;
	x += q->index;			// expect: 2.mapping_index 3.desc_field 5.leaves_32
	x += p->pg->index;		// expect: 2.mapping_index 3.desc_field 5.leaves_32
	x += vmf->page->index;		// expect: 2.mapping_index 3.desc_field 5.leaves_32
	x += bh->b_page->index;		// expect: 1.b_page 2.mapping_index 3.desc_field 5.leaves_32
	x += bh->b_folio->index;
	x += alloc_pages(0, 1)->index;	// expect: 2.mapping_index 3.desc_field 5.leaves_32
	x += virt_to_page(x)->index;	// expect: 2.mapping_index 3.desc_field 5.leaves_32
	x += (&folio->page)->flags;	// expect: 1.folio_page 4.embedded_page 6.flags
	x += folio->page.flags;		// expect: 4.embedded_page 6.flags
	x += PageLocked(page);		// expect: 1.page_flags 6.flag_callers
	x += folio_test_locked(folio);
	SetPageUptodate(q);		// expect: 1.page_flags 6.flag_callers
	x += PAGE_SIZE + Pageant(q);
	return x;
}
