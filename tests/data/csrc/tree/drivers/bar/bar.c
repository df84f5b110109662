// Lines that must count carry the marker and their rule ids; no other line may count.
#include <linux/mm_types.h>

struct bar_priv {
	unsigned long private;
	struct page *rx_page;
};

static void bar_rx(struct bar_priv *priv, struct sk_buff *skb)
{
	unsigned long v = priv->private;
	v += priv->rx_page->private;		// expect: 3.desc_field 7.private
	set_page_private(priv->rx_page, v);	// expect: 7.private_helpers
	v += page_private(priv->rx_page);	// expect: 7.private_helpers
	v += skb->private;
	v += page_zone(priv->rx_page) != 0;	// expect: 6.flag_callers
}
