/* keepalive.c — the per-worker pool of idle outbound connections that
 * sock:setkeepalive fills and sock:connect takes from, keyed by "host:port"
 * (or the unix path, or the connect's `pool` option), as OpenResty's
 * cosocket pool. Each key keeps its links in least-recently-used order and at
 * most the size the last setkeepalive named; over it, the oldest is closed.
 *
 * Ownership: a pooled link belongs to the pool (link->kp). It reads while it
 * waits, so a peer that closes it (or sends anything unasked) closes it here,
 * It reads on when taken: reading is never switched off and on per request.
 * Idle timeouts are checked by one sweep timer for all pools (every
 * SWEEP_MS while any connection is pooled), not a timer per connection: a
 * pooled connection costs no timer operation on its way in or out. keepalive_take hands it back to a
 * socket; link_close takes it out of the pool. The pools themselves (a key
 * and a list each) live while they hold a connection. */
#include "link.h"
#include <stdlib.h>
#include <string.h>

typedef struct mr_kpool {
  struct mr_kpool *next;
  char *key;
  mr_link *head, *tail;         /* head: least recently pooled */
  unsigned n;
} mr_kpool;

static mr_kpool *pools;
static unsigned npooled;        /* connections in all pools */
static uv_timer_t sweep;
static int sweep_on, sweep_init;
static int stopped;             /* the worker stops: nothing is pooled any more */

#define SWEEP_MS 250            /* an idle connection lives at most this much past its timeout */

static mr_kpool *find(const char *key, int create) {
  for (mr_kpool *p = pools; p; p = p->next)
    if (strcmp(p->key, key) == 0) return p;
  if (!create) return NULL;
  mr_kpool *p = calloc(1, sizeof *p);
  if (!p || !(p->key = strdup(key))) mr_oom();
  p->next = pools;
  pools = p;
  return p;
}

static void pool_free(mr_kpool *p) {
  for (mr_kpool **pp = &pools; *pp; pp = &(*pp)->next) {
    if (*pp == p) {
      *pp = p->next;
      break;
    }
  }
  free(p->key);
  free(p);
}

void keepalive_remove(mr_link *k) {
  mr_kpool *p = k->kp;
  if (!p) return;
  if (k->kp_prev) k->kp_prev->kp_next = k->kp_next; else p->head = k->kp_next;
  if (k->kp_next) k->kp_next->kp_prev = k->kp_prev; else p->tail = k->kp_prev;
  k->kp_prev = k->kp_next = NULL;
  k->kp = NULL;
  if (--p->n == 0) pool_free(p);           /* keys come and go: an empty pool is not kept */
  if (--npooled == 0 && sweep_on) {
    uv_timer_stop(&sweep);
    sweep_on = 0;
  }
}

static void sweep_cb(uv_timer_t *tm) {
  uint64_t now = uv_now(mr_srv.loop);
  mr_kpool *p, *next_pool;
  for (p = pools; p; p = next_pool) {
    next_pool = p->next;                     /* closing its last link frees p */
    mr_link *k = p->head, *next;
    for (; k; k = next) {
      next = k->kp_next;
      if (k->idle_until && k->idle_until <= now) link_close(k);
    }
  }
}

void keepalive_put(mr_link *k, uint64_t idle_ms, unsigned size) {
  if (stopped) {
    link_close(k);
    return;
  }
  mr_kpool *p = find(k->key, 1);
  k->kp = p;
  k->kp_next = NULL;
  k->kp_prev = p->tail;
  if (p->tail) p->tail->kp_next = k; else p->head = k;
  p->tail = k;
  p->n++;
  npooled++;
  k->in.len = k->in_off = 0;
  k->flags &= ~(L_RTIMEDOUT | L_WTIMEDOUT);  /* stale: the next user must not see them */
  k->idle_until = idle_ms ? uv_now(mr_srv.loop) + idle_ms : 0;
  while (p->n > size) link_close(p->head);   /* the oldest: k itself stays */
  if (!sweep_init) {
    uv_timer_init(mr_srv.loop, &sweep);
    uv_unref((uv_handle_t *)&sweep);         /* pooled connections never keep a worker up */
    sweep_init = 1;
  }
  if (!sweep_on) {
    uv_timer_start(&sweep, sweep_cb, SWEEP_MS, SWEEP_MS);
    sweep_on = 1;
  }
  link_read_start(k);
}

mr_link *keepalive_take(const char *key) {
  mr_kpool *p = find(key, 0);
  mr_link *k = p ? p->tail : NULL;
  if (!k) return NULL;
  keepalive_remove(k);
  return k;                                  /* still reading: see sockio.c */
}

void keepalive_free_all(void) {
  stopped = 1;
  if (sweep_init) {
    uv_close((uv_handle_t *)&sweep, NULL);   /* a static handle: nothing to free */
    sweep_init = sweep_on = 0;
  }
  while (pools) link_close(pools->head);     /* a pool is freed with its last link */
}
