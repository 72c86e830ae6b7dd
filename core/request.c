/* request.c — turns a parsed head into the Lua request table (DESIGN 4.2),
 * starts the request's coroutine, implements the body reader, and owns the
 * pool of mr_request structs (reused, never left to Lua's GC: the request
 * path allocates no userdata unless the request has a body). */
#include "runner.h"
#include <lauxlib.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#define BODY_MT "moonring.body"

/* Field stores below are "push key (from the interned strings at S), push
 * value, lua_rawset(t)". */

/* Stores uri and query_string; for an absolute-form target, sets *authority
 * (RFC 9112 3.2.2: it, not the Host header, names the server). */
static void push_target(lua_State *L, int t, int S, mr_conn *c, const char *target, size_t n,
                        const char **authority, size_t *alen) {
  /* origin form "/p?q"; absolute form "http://host/p?q" (uri is its path);
   * authority form "host:port" (CONNECT) and asterisk form "*" kept as sent. */
  const char *path = target, *end = target + n;
  if (n && target[0] != '/' && target[0] != '*' && llhttp_get_method(&c->parser) != HTTP_CONNECT) {
    const char *scheme = memchr(target, ':', n);
    if (scheme && end - scheme >= 3 && scheme[1] == '/' && scheme[2] == '/') {
      path = memchr(scheme + 3, '/', (size_t)(end - scheme - 3));
      if (!path) {
        const char *q = memchr(scheme + 3, '?', (size_t)(end - scheme - 3));
        path = q ? q : end;
      }
      *authority = scheme + 3;
      *alen = (size_t)(path - *authority);
    }
  }
  const char *q = memchr(path, '?', (size_t)(end - path));
  const char *uend = q ? q : end;
  lua_rawgeti(L, S, S_URI);
  if (uend == path || (path != target && *path != '/')) lua_rawgeti(L, S, S_SLASH);
  else lua_pushlstring(L, path, (size_t)(uend - path));
  lua_rawset(L, t);
  if (q) {
    lua_rawgeti(L, S, S_QUERY_STRING);
    lua_pushlstring(L, q + 1, (size_t)(end - q - 1));
    lua_rawset(L, t);
  }
}

/* headers: lower-case names; repeats joined with ", " (cookie: "; "). */
static void push_headers(lua_State *L, int S, mr_parse *ps, const char **host, size_t *hostlen) {
  lua_createtable(L, 0, (int)ps->nhdr);
  int h_idx = lua_gettop(L);
  for (unsigned i = 0; i < ps->nhdr; i++) {
    mr_hpair *h = &ps->hdr[i];
    char *name = ps->bytes.data + h->name_off;
    for (uint32_t k = 0; k < h->name_len; k++)
      if (name[k] >= 'A' && name[k] <= 'Z') name[k] |= 0x20;
    const char *value = ps->bytes.data + h->value_off;
    lua_pushlstring(L, name, h->name_len);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, h_idx) == LUA_TNIL) {
      lua_pop(L, 1);
      lua_pushlstring(L, value, h->value_len);
    } else {
      int cookie = h->name_len == 6 && memcmp(name, "cookie", 6) == 0;
      lua_rawgeti(L, S, cookie ? S_SEMICOLON : S_COMMA);
      lua_pushlstring(L, value, h->value_len);
      lua_concat(L, 3);
    }
    lua_rawset(L, h_idx);
    if (h->name_len == 4 && memcmp(name, "host", 4) == 0) {
      *host = value;
      *hostlen = h->value_len;
    }
  }
}

static void push_server_name(lua_State *L, const char *host, size_t n) {
  if (!host || !n) {
    lua_pushstring(L, mr_srv.cfg.host);
    return;
  }
  size_t len = n;
  if (host[0] == '[') {                      /* [v6]:port */
    const char *close = memchr(host, ']', n);
    len = close ? (size_t)(close - host) + 1 : n;
  } else {
    const char *colon = memchr(host, ':', n);
    if (colon) len = (size_t)(colon - host);
  }
  lua_pushlstring(L, host, len);
}

static int has_expect_continue(mr_parse *ps) {
  for (unsigned i = 0; i < ps->nhdr; i++) {
    mr_hpair *h = &ps->hdr[i];
    if (h->name_len == 6 && strncasecmp(ps->bytes.data + h->name_off, "expect", 6) == 0 &&
        h->value_len == 12 && strncasecmp(ps->bytes.data + h->value_off, "100-continue", 12) == 0)
      return 1;
  }
  return 0;
}

/* The pool: every mr_request ever needed, by slot; free slots are stacked. */
static mr_request **slots;
static uint32_t nslots, slots_cap, *free_slots, nfree;

static mr_request *request_alloc(void) {
  mr_request *r;
  if (nfree) {
    r = slots[free_slots[--nfree]];
  } else {
    if (nslots == slots_cap) {
      uint32_t cap = slots_cap ? slots_cap * 2 : 64;
      mr_request **sp = realloc(slots, sizeof *sp * cap);
      uint32_t *fp = sp ? realloc(free_slots, sizeof *fp * cap) : NULL;
      if (sp) slots = sp;
      if (!sp || !fp) { fputs("moonring: out of memory\n", stderr); abort(); }
      free_slots = fp;
      slots_cap = cap;
    }
    r = calloc(1, sizeof *r);
    if (!r) { fputs("moonring: out of memory\n", stderr); abort(); }
    r->slot = nslots;
    slots[nslots++] = r;
  }
  uint32_t slot = r->slot, gen = r->gen;
  mr_buf body = r->body;
  memset(r, 0, sizeof *r);
  r->slot = slot;
  r->gen = gen;
  r->body = body;
  r->body.len = 0;
  r->live = 1;
  return r;
}

void request_pool_free(void) {
  for (uint32_t i = 0; i < nslots; i++) {
    mr_buf_free(&slots[i]->body);
    free(slots[i]);
  }
  free(slots);
  free(free_slots);
  slots = NULL;
  free_slots = NULL;
  nslots = slots_cap = nfree = 0;
}

static lua_Integer handle_of(const mr_request *r) {
  return (lua_Integer)(((uint64_t)r->gen << 32) | r->slot);
}

static mr_request *from_handle(lua_Integer h) {
  uint32_t slot = (uint32_t)((uint64_t)h & 0xffffffffu), gen = (uint32_t)((uint64_t)h >> 32);
  if (slot >= nslots) return NULL;
  mr_request *r = slots[slot];
  return r->live && r->gen == gen ? r : NULL;
}

mr_request *request_check(lua_State *L, int idx) {
  int isnum;
  lua_Integer h = lua_tointegerx(L, idx, &isnum);
  mr_request *r = isnum ? from_handle(h) : NULL;
  if (!r) luaL_argerror(L, idx, "not a live request handle");
  return r;
}

/* req.body: the reader userdata, created only for requests with a body. */
typedef struct mr_body {
  uint32_t slot, gen;
} mr_body;

static const void *body_mt;                     /* compared by address */

static mr_body *body_check(lua_State *L, int idx) {
  void *p = lua_touserdata(L, idx);
  if (p && lua_getmetatable(L, idx)) {
    int ok = lua_topointer(L, -1) == body_mt;
    lua_pop(L, 1);
    if (ok) return p;
  }
  luaL_typeerror(L, idx, BODY_MT);
  return NULL;
}

void request_start(mr_conn *c, int complete) {
  mr_server *s = &mr_srv;
  mr_parse *ps = c->ps;
  llhttp_t *p = &c->parser;

  mr_request *r = request_alloc();
  r->conn = c;
  r->id = ++s->next_request_id;
  if (log_access_enabled()) r->start_ns = uv_hrtime();   /* only the log uses it */
  c->req = r;

  int minor = llhttp_get_http_minor(p);
  int method = llhttp_get_method(p);
  /* CONNECT and Upgrade are not served as tunnels: answer, then close. */
  int upgrade = method == HTTP_CONNECT || ((p->flags & F_UPGRADE) && (p->flags & F_CONNECTION_UPGRADE));
  if (llhttp_should_keep_alive(p) && !upgrade) r->flags |= REQ_KEEP_ALIVE;
  if (minor == 0) r->flags |= REQ_HTTP10;
  if (method == HTTP_HEAD) r->flags |= REQ_IS_HEAD;
  if (complete) r->flags |= REQ_MSG_DONE | REQ_BODY_DONE;
  int has_body = (p->flags & F_CHUNKED) || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0);
  if (has_body) {
    r->flags |= REQ_HAS_BODY;
    if (minor >= 1 && has_expect_continue(ps)) r->flags |= REQ_CONTINUE;
  }

  lua_State *co = runner_take(r);

  lua_rawgeti(co, LUA_REGISTRYINDEX, s->serve_ref);
  lua_rawgeti(co, LUA_REGISTRYINDEX, s->app_ref);
  int S = strings_push(co);

  lua_createtable(co, 0, 16);
  int t = S + 1;
  lua_rawgeti(co, S, S_REQUEST_METHOD);
  if (method < S_METHODS_MAX) lua_rawgeti(co, S, S__COUNT + method);
  else lua_pushstring(co, llhttp_method_name((llhttp_method_t)method));
  lua_rawset(co, t);
  const char *host = NULL, *authority = NULL;
  size_t hostlen = 0, alen = 0;
  push_target(co, t, S, c, ps->bytes.data, ps->target_len, &authority, &alen);
  lua_rawgeti(co, S, S_HEADERS);
  push_headers(co, S, ps, &host, &hostlen);
  lua_rawset(co, t);
  if (authority) {
    host = authority;
    hostlen = alen;
  }
  if (has_body) {
    lua_rawgeti(co, S, S_BODY);
    mr_body *b = lua_newuserdatauv(co, sizeof *b, 0);
    b->slot = r->slot;
    b->gen = r->gen;
    lua_rawgeti(co, LUA_REGISTRYINDEX, s->body_mt_ref);
    lua_setmetatable(co, -2);
    lua_rawset(co, t);
  }
  lua_rawgeti(co, S, S_SCHEME);
  lua_rawgeti(co, S, S_HTTP);
  lua_rawset(co, t);
  lua_rawgeti(co, S, S_PROTOCOL);
  lua_rawgeti(co, S, minor == 0 ? S_HTTP10 : S_HTTP11);
  lua_rawset(co, t);
  lua_rawgeti(co, S, S_REMOTE_ADDR);
  lua_pushstring(co, c->remote);
  lua_rawset(co, t);
  lua_rawgeti(co, S, S_SERVER_NAME);
  push_server_name(co, host, hostlen);
  lua_rawset(co, t);
  lua_rawgeti(co, S, S_SERVER_PORT);
  lua_pushinteger(co, s->port);
  lua_rawset(co, t);
  lua_rawgeti(co, S, S_PARAMS);
  lua_createtable(co, 0, 0);
  lua_rawset(co, t);
  lua_rawgeti(co, S, S_ID);
  lua_pushinteger(co, (lua_Integer)r->id);
  lua_rawset(co, t);
  lua_remove(co, S);                         /* serve, app, req */
  lua_pushinteger(co, handle_of(r));         /* serve(app, req, handle) */
  runner_resume(r, 3);
}

void request_release(mr_request *r) {
  if (r->conn || !(r->flags & REQ_ENDED) || !r->live) return;
  r->live = 0;
  r->gen++;
  if (r->body.cap > 16 * MR_KIB) mr_buf_free(&r->body);   /* keep small buffers */
  free_slots[nfree++] = r->slot;
}

void request_body(mr_request *r, const char *p, size_t n) {
  mr_buf_append(&r->body, p, n);
}

void request_body_notify(mr_request *r) {
  if (r->wait == WAIT_BODY && (r->body.len || (r->flags & REQ_BODY_DONE))) runner_wake(r, 0);
}

/* req.body:read() → next chunk or nil at the end;
 * req.body:read("a") → the rest as one string ("" when nothing is left). */
static int body_read_k(lua_State *L, int status, lua_KContext all);

static int closed(lua_State *L) {
  lua_pushnil(L);
  lua_pushliteral(L, "closed");
  return 2;
}

static int body_read_now(lua_State *L, mr_request *r, int all) {
  if (!r) return closed(L);                  /* the request is over */
  if (runner_current(L) != r)
    return luaL_error(L, "req.body:read() must be called from its own request's coroutine");
  if (r->body.len && (!all || (r->flags & REQ_BODY_DONE))) {
    lua_pushlstring(L, r->body.data, r->body.len);
    r->body.len = 0;
    return 1;
  }
  if (r->flags & REQ_BODY_DONE) {
    if (all) lua_pushliteral(L, "");
    else lua_pushnil(L);
    return 1;
  }
  if (!r->conn) return closed(L);
  runner_check_yieldable(L, "req.body:read()");
  if ((r->flags & REQ_CONTINUE) && !(r->flags & REQ_HEAD_SENT)) {
    r->flags &= ~REQ_CONTINUE;
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    uv_buf_t b = uv_buf_init((char *)cont, sizeof cont - 1);
    conn_write(r->conn, &b, 1);
    if (!r->conn) return closed(L);
  }
  return runner_park(L, r, WAIT_BODY, NULL, NULL, body_read_k, all);
}

static mr_request *body_request(lua_State *L) {
  mr_body *b = body_check(L, 1);
  return from_handle((lua_Integer)(((uint64_t)b->gen << 32) | b->slot));
}

static int body_read_k(lua_State *L, int status, lua_KContext all) {
  return body_read_now(L, body_request(L), (int)all);
}

static int body_read(lua_State *L) {
  mr_request *r = body_request(L);
  int all = 0;
  if (!lua_isnoneornil(L, 2)) {
    const char *fmt = luaL_checkstring(L, 2);
    if (fmt[0] == '*') fmt++;
    if (fmt[0] != 'a') return luaL_argerror(L, 2, "expected \"a\" or nothing");
    all = 1;
  }
  lua_settop(L, 1);
  return body_read_now(L, r, all);
}

static int body_tostring(lua_State *L) {
  mr_body *b = body_check(L, 1);
  lua_pushfstring(L, "moonring.body (slot %d)", (int)b->slot);
  return 1;
}

static const luaL_Reg body_methods[] = {
  {"read", body_read},
  {NULL, NULL},
};

static const luaL_Reg body_meta[] = {
  {"__tostring", body_tostring},
  {NULL, NULL},
};

void request_open(lua_State *L) {
  luaL_newmetatable(L, BODY_MT);
  body_mt = lua_topointer(L, -1);            /* anchored in the registry */
  luaL_setfuncs(L, body_meta, 0);
  luaL_newlib(L, body_methods);
  lua_setfield(L, -2, "__index");
  mr_srv.body_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  strings_init(L);
}
