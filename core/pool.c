/* pool.c — the slot tables behind moonring's handles. An item (a request, a
 * spawned task) is allocated once, keeps its slot for good and is reused;
 * Lua names it by slot and the item's generation, which its owner bumps on
 * every release, so a handle kept past its item is refused instead of
 * reaching memory that now serves someone else. Items are freed only by
 * pool_free, at exit. */
#include "pool.h"
#include <stdlib.h>

void *pool_take(mr_pool *p, uint32_t *slot) {
  if (p->nfree) {
    *slot = p->free[--p->nfree];
    return p->items[*slot];
  }
  if (p->n == p->cap) {
    uint32_t cap = p->cap ? p->cap * 2 : 64;
    void **items = realloc(p->items, sizeof *items * cap);
    if (!items) mr_oom();
    p->items = items;
    uint32_t *fr = realloc(p->free, sizeof *fr * cap);
    if (!fr) mr_oom();
    p->free = fr;
    p->cap = cap;
  }
  void *item = calloc(1, p->size);
  if (!item) mr_oom();
  *slot = p->n;
  p->items[p->n++] = item;
  return item;
}

void pool_give(mr_pool *p, uint32_t slot) { p->free[p->nfree++] = slot; }

void pool_free(mr_pool *p, void (*each)(void *item)) {
  for (uint32_t i = 0; i < p->n; i++) {
    if (each) each(p->items[i]);
    free(p->items[i]);
  }
  free(p->items);
  free(p->free);
  p->items = NULL;
  p->free = NULL;
  p->n = p->cap = p->nfree = 0;
}
