/* pool.h — slot tables for items Lua names by handle (slot + generation). */
#ifndef MR_POOL_H
#define MR_POOL_H

#include "moonring.h"

typedef struct mr_pool {
  size_t size;                  /* bytes per item */
  void **items;                 /* by slot */
  uint32_t n, cap;
  uint32_t *free;               /* free slots, stacked */
  uint32_t nfree;
} mr_pool;

/* An item and its slot: new items are zeroed, reused ones are as released. */
void *pool_take(mr_pool *p, uint32_t *slot);
/* The item at `slot` may be taken again. */
void pool_give(mr_pool *p, uint32_t slot);
/* The item at `slot`, or NULL when the slot was never used. */
static inline void *pool_at(const mr_pool *p, uint32_t slot) {
  return slot < p->n ? p->items[slot] : NULL;
}
/* Frees every item (after `each`, if given) and the table. */
void pool_free(mr_pool *p, void (*each)(void *item));

#endif
