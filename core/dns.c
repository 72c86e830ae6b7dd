/* dns.c — name lookups that never block the loop: uv_getaddrinfo runs the
 * system resolver on libuv's thread pool, and a small per-worker cache keeps
 * answers for a TTL (getaddrinfo does not tell the record's own; default
 * 30 s, moonring.dns{ ttl = s } to change it, 0 to not cache). IPv4
 * addresses come first, so "localhost" reaches a server bound to 127.0.0.1.
 *
 * Ownership: a lookup in flight (mr_dnsq) is malloc'd and freed by its own
 * callback, always. It answers the link that asked (a connecting socket, or
 * the temporary link behind moonring.resolve) unless that link closed
 * meanwhile (dns_detach), when the answer only fills the cache. */
#include "link.h"
#include <stdlib.h>
#include <string.h>

#define CACHE_MAX 256
#define RESOLVE_TIMEOUT_MS 10000

typedef struct mr_dnsq {
  uv_getaddrinfo_t req;
  mr_link *link;                /* who waits; NULL once it let go */
  uint64_t ttl_ms;
  char name[];
} mr_dnsq;

typedef struct dns_entry {
  struct dns_entry *next;
  uint64_t expires;             /* loop time, ms */
  int n;
  struct sockaddr_storage addrs[LINK_ADDRS];
  char name[];
} dns_entry;

static dns_entry *cache;        /* most recently stored first */
static uint64_t ttl_default = 30000;

uint64_t dns_default_ttl(void) { return ttl_default; }

static dns_entry *cache_get(const char *name) {
  uint64_t now = uv_now(mr_srv.loop);
  for (dns_entry *e = cache; e; e = e->next)
    if (strcmp(e->name, name) == 0) return e->expires > now ? e : NULL;
  return NULL;
}

static void cache_put(const char *name, const struct sockaddr_storage *addrs, int n, uint64_t ttl) {
  dns_entry **pp = &cache, *e;
  unsigned i = 0;
  /* drop an older answer for the name, and the oldest entry when full */
  while ((e = *pp)) {
    if (strcmp(e->name, name) == 0 || ++i >= CACHE_MAX) {
      *pp = e->next;
      free(e);
      continue;
    }
    pp = &e->next;
  }
  size_t len = strlen(name) + 1;
  e = malloc(sizeof *e + len);
  if (!e) mr_oom();
  memcpy(e->name, name, len);
  memcpy(e->addrs, addrs, sizeof *addrs * (size_t)n);
  e->n = n;
  e->expires = uv_now(mr_srv.loop) + ttl;
  e->next = cache;
  cache = e;
}

/* IPv4 answers, then IPv6, at most LINK_ADDRS. */
static int pick(const struct addrinfo *res, struct sockaddr_storage *out) {
  int n = 0;
  for (int fam = 0; fam < 2; fam++)
    for (const struct addrinfo *a = res; a && n < LINK_ADDRS; a = a->ai_next)
      if (a->ai_family == (fam ? AF_INET6 : AF_INET)) memcpy(&out[n++], a->ai_addr, a->ai_addrlen);
  return n;
}

static void dns_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  mr_dnsq *q = req->data;
  struct sockaddr_storage addrs[LINK_ADDRS];
  int n = status == 0 ? pick(res, addrs) : 0;
  if (res) uv_freeaddrinfo(res);
  if (status == 0 && n == 0) status = UV_EAI_NODATA;
  if (status == 0 && q->ttl_ms) cache_put(q->name, addrs, n, q->ttl_ms);
  mr_link *k = q->link;
  free(q);
  if (!k) return;
  k->dnsq = NULL;
  memcpy(k->addrs, addrs, sizeof *addrs * (size_t)n);
  k->naddrs = n;
  k->cerr = status;
  k->flags |= L_RESOLVED;
  mr_task *t = k->reader;
  k->reader = NULL;
  if (t) task_wake(t, 0);                    /* its timer runs on: it bounds the connect too */
}

int dns_lookup_for(mr_link *k, const char *name, uint64_t ttl_ms) {
  dns_entry *e = ttl_ms ? cache_get(name) : NULL;
  if (e) {
    memcpy(k->addrs, e->addrs, sizeof *e->addrs * (size_t)e->n);
    k->naddrs = e->n;
    return 1;
  }
  size_t len = strlen(name) + 1;
  mr_dnsq *q = malloc(sizeof *q + len);
  if (!q) mr_oom();
  memcpy(q->name, name, len);
  q->link = k;
  q->ttl_ms = ttl_ms;
  q->req.data = q;
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  int rc = uv_getaddrinfo(mr_srv.loop, &q->req, dns_cb, name, NULL, &hints);
  if (rc < 0) {
    free(q);
    return rc;
  }
  k->dnsq = q;
  return 0;
}

void dns_detach(mr_link *k) {
  if (k->dnsq) k->dnsq->link = NULL;
  k->dnsq = NULL;
}

void dns_free_all(void) {
  while (cache) {
    dns_entry *e = cache;
    cache = e->next;
    free(e);
  }
}

/* ---- moonring.resolve ------------------------------------------------- */

static void resolve_cancel(mr_task *t) { link_close(t->wait_data); }

static void resolve_timeout(uv_timer_t *tm) {
  mr_link *k = tm->data;
  k->flags |= L_RTIMEDOUT;
  mr_task *t = k->reader;
  k->reader = NULL;
  if (t) task_wake(t, 0);
}

static int push_addrs(lua_State *L, const struct sockaddr_storage *addrs, int n) {
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    char text[64] = "";
    if (addrs[i].ss_family == AF_INET) uv_ip4_name((const struct sockaddr_in *)&addrs[i], text, sizeof text);
    else uv_ip6_name((const struct sockaddr_in6 *)&addrs[i], text, sizeof text);
    lua_pushstring(L, text);
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static int resolve_k(lua_State *L, int status, lua_KContext ctx) {
  if (task_woke_cancelled(L)) return task_raise_cancelled(L);
  mr_link *k = (mr_link *)ctx;
  int nres;
  if (k->flags & L_RTIMEDOUT) {
    lua_pushnil(L);
    lua_pushliteral(L, "timeout");
    nres = 2;
  } else if (k->cerr) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s could not be resolved (%s)", lua_tostring(L, 1), uv_strerror(k->cerr));
    nres = 2;
  } else {
    nres = push_addrs(L, k->addrs, k->naddrs);
  }
  link_close(k);
  return nres;
}

static uint64_t opt_ms(lua_State *L, int opts, const char *field, uint64_t dflt) {
  if (!opts) return dflt;
  lua_getfield(L, opts, field);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return dflt;
  }
  lua_Number sec = lua_tonumber(L, -1);
  if (!lua_isnumber(L, -1) || !(sec >= 0))
    luaL_error(L, "resolve: opts.%s must be a number of seconds >= 0", field);
  lua_pop(L, 1);
  return sec > 1e9 ? (uint64_t)1e12 : (uint64_t)(sec * 1000.0 + 0.5);   /* over 30 years: as good as never */
}

/* moonring.resolve(name [, { ttl = s, timeout = s }]) → { "addr", ... }, or nil, err */
static int l_resolve(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  int opts = lua_istable(L, 2) ? 2 : 0;
  if (!opts) luaL_argcheck(L, lua_isnoneornil(L, 2), 2, "expected an options table");
  uint64_t ttl = opt_ms(L, opts, "ttl", ttl_default);
  uint64_t timeout = opt_ms(L, opts, "timeout", RESOLVE_TIMEOUT_MS);
  struct sockaddr_storage lit;
  if (uv_ip4_addr(name, 0, (struct sockaddr_in *)&lit) == 0 ||
      uv_ip6_addr(name, 0, (struct sockaddr_in6 *)&lit) == 0)
    return push_addrs(L, &lit, 1);
  dns_entry *e = ttl ? cache_get(name) : NULL;
  if (e) return push_addrs(L, e->addrs, e->n);
  mr_task *t = task_check(L, "moonring.resolve");
  task_check_yieldable(L, "moonring.resolve");
  if (t->flags & TF_CANCELLED) return task_raise_cancelled(L);
  mr_link *k = link_new();
  int rc = dns_lookup_for(k, name, ttl);
  if (rc < 0) {
    link_close(k);
    lua_pushnil(L);
    lua_pushfstring(L, "%s could not be resolved (%s)", name, uv_strerror(rc));
    return 2;
  }
  k->reader = t;
  if (timeout) sock_arm(&k->rtimer, (uint32_t)(timeout > UINT32_MAX ? UINT32_MAX : timeout), resolve_timeout);
  lua_settop(L, 1);
  return task_park(L, t, WAIT_SOCKET, resolve_cancel, k, resolve_k, (lua_KContext)k);
}

/* moonring.dns{ ttl = s }: the cache's TTL for later lookups (0: no cache). */
static int l_dns(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  ttl_default = opt_ms(L, 1, "ttl", ttl_default);
  return 0;
}

const luaL_Reg dns_funcs[] = {
  {"resolve", l_resolve},
  {"dns", l_dns},
  {NULL, NULL},
};
