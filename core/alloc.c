/* alloc.c — the Lua state's allocator: glibc malloc behind a cache of freed
 * small blocks, one free list per 16-byte size class. A request allocates
 * and frees a dozen small objects (tables, hash parts, the handle); taking
 * them from a list costs a fraction of malloc + free. Lua tells the
 * allocator each block's size on free and realloc, so blocks need no header.
 * Each class keeps at most CACHE_BYTES of free blocks; the rest go back to
 * malloc. Sanitizer builds bypass the cache so every free is seen. */
#include "moonring.h"
#include <stdlib.h>

#define CLASS_SHIFT 4
#define MAX_SMALL   512                     /* larger blocks go straight to malloc */
#define NCLASSES    (MAX_SMALL >> CLASS_SHIFT)
#define CACHE_BYTES (256 * MR_KIB)          /* per class */

typedef struct free_block { struct free_block *next; } free_block;

static free_block *lists[NCLASSES + 1];
static unsigned counts[NCLASSES + 1];

static inline unsigned class_of(size_t n) { return (unsigned)((n + 15) >> CLASS_SHIFT); }

static void *take(size_t n) {
#ifndef MOONRING_SANITIZE
  if (n && n <= MAX_SMALL) {
    unsigned k = class_of(n);
    free_block *b = lists[k];
    if (b) {
      lists[k] = b->next;
      counts[k]--;
      return b;
    }
    return malloc((size_t)k << CLASS_SHIFT);
  }
#endif
  return malloc(n);
}

static void give(void *p, size_t n) {
#ifndef MOONRING_SANITIZE
  if (n <= MAX_SMALL) {
    unsigned k = class_of(n);
    if (counts[k] < CACHE_BYTES / ((size_t)k << CLASS_SHIFT)) {
      free_block *b = p;
      b->next = lists[k];
      lists[k] = b;
      counts[k]++;
      return;
    }
  }
#endif
  free(p);
}

/* lua_Alloc: when ptr is NULL, osize is a type tag, not a size. */
void *mr_lua_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  if (nsize == 0) {
    if (ptr) give(ptr, osize);
    return NULL;
  }
  if (!ptr) return take(nsize);
#ifndef MOONRING_SANITIZE
  if (osize <= MAX_SMALL || nsize <= MAX_SMALL) {
    if (osize <= MAX_SMALL && nsize <= MAX_SMALL && class_of(osize) == class_of(nsize)) return ptr;
    void *q = take(nsize);
    if (!q) return NULL;
    memcpy(q, ptr, osize < nsize ? osize : nsize);
    give(ptr, osize);
    return q;
  }
#endif
  return realloc(ptr, nsize);
}

void mr_lua_alloc_release(void) {
  for (unsigned k = 0; k <= NCLASSES; k++) {
    while (lists[k]) {
      free_block *b = lists[k];
      lists[k] = b->next;
      free(b);
    }
    counts[k] = 0;
  }
}
