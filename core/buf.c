/* buf.c — the growable byte buffer (mr_buf). The caller owns the buffer and
 * frees it with mr_buf_free; allocation failure aborts, as Lua's does. */
#include "moonring.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void mr_buf_grow(mr_buf *b, size_t extra) {
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + extra) cap *= 2;
  char *p = realloc(b->data, cap);
  if (!p) mr_oom();
  b->data = p;
  b->cap = cap;
}

void mr_buf_free(mr_buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

void mr_oom(void) {
  fputs("moonring: out of memory\n", stderr);
  abort();
}
