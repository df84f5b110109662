// Lines that must count carry the marker and their rule ids; no other line may count.
#include <linux/mm_types.h>

typedef struct page page_t;
#define to_pg(x) ((page_t *)(x))

struct folio *page_to_folio(struct page *page)
{
	struct page *pages[4];
	pgtable_t pt;
	page_t *t = to_pg(0);
	int nid = page_to_nid(page);		// expect: 6.flag_callers
	struct list_head *l;

	nid += page->private;			// expect: 3.desc_field
	set_page_private(page, 0);
	nid += pages[1]->index;			// expect: 2.mapping_index 3.desc_field 5.leaves_32
	nid += pt->_mapcount.counter;		// expect: 3.desc_field 5.leaves_32
	nid += t->flags;			// expect: 6.flags
	nid += mem_map[3].flags;		// expect: 6.flags
	nid += page->compound_head;		// expect: 3.desc_field
	nid += page->_refcount.counter;		// expect: 5.leaves_32
	nid += compound_head(page) != 0;	// expect: 3.compound_head
	list_for_each_entry(t, l, lru) {	// expect: 3.desc_field 5.leaves_32
		nid++;
	}
	t = container_of(l, struct page, lru);	// expect: 3.desc_field 5.leaves_32
	t = container_of(l, struct folio, lru);
	{
		struct folio *page = 0;		/* shadows the parameter in this block */
		nid += page->index;
	}
	nid += page->index;			// expect: 2.mapping_index 3.desc_field 5.leaves_32
	return (struct folio *)page;		// expect: 4.overlay_cast
}

struct page *folio_first(struct folio *folio)
{
	return (struct page *)folio;		// expect: 4.page_cast
}

static void offline(struct hstate *h)
{
	struct page *page;

	for_each_hstate(h) {	/* tree-sitter reads this as a nested function definition */
		list_for_each_entry(page, &h->list, lru)	// expect: 3.desc_field 5.leaves_32
			move(page);
	}
}
