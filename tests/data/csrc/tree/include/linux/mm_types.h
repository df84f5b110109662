/* A cut-down struct page/folio for the tests: the nesting mirrors 6.12's mm_types.h. */
struct address_space;
struct list_head { struct list_head *next, *prev; };
struct page {
	unsigned long flags;
	union {
		struct {
			union {
				struct list_head lru;
				struct list_head buddy_list;
			};
			struct address_space *mapping;
			union {
				pgoff_t index;
				unsigned long share;
			};
			unsigned long private;
		};
		struct {
			unsigned long pp_magic;
			struct page_pool *pp;
		};
		struct {
			unsigned long compound_head;
		};
	};
	atomic_t _mapcount;
	atomic_t _refcount;
};
struct folio {
	union {
		struct {
			unsigned long flags;
			struct list_head lru;
			struct address_space *mapping;
			pgoff_t index;
			void *private;
		};
		struct page page;
	};
};
struct buffer_head {
	struct buffer_head *b_this_page;
	struct page *b_page;
	struct folio *b_folio;
};
struct vm_fault {
	struct page *page;
	unsigned long address;
};
typedef struct page *pgtable_t;
struct page *alloc_pages(unsigned int gfp, unsigned int order);
extern struct page *mem_map;
#define vmemmap ((struct page *)0xffffea0000000000UL)
#define pfn_to_page(pfn) (vmemmap + (pfn))
#define virt_to_page(kaddr) pfn_to_page(__pa(kaddr) >> PAGE_SHIFT)
#define page_folio(p) ((struct folio *)compound_head(p))
