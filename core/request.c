/* request.c — the bridge's side of a request: the pool of mr_request structs
 * (reused, never left to Lua's GC), their handles, the main task that runs
 * serve(app, handle), what HTTP tells the bridge (head, body, drained, end),
 * the request table itself (built inside the main task, so a failure there is
 * an ordinary error), and req.on_close. A request is released when its count
 * of owners (HTTP, its tasks) drops to zero. */
#include "request.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REQ_MT "moonring.request"

static const mr_task_ops main_ops;

/* ---- the pool --------------------------------------------------------- */

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
      if (!sp) mr_oom();
      slots = sp;
      uint32_t *fp = realloc(free_slots, sizeof *fp * cap);
      if (!fp) mr_oom();
      free_slots = fp;
      slots_cap = cap;
    }
    r = calloc(1, sizeof *r);
    if (!r) mr_oom();
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
  r->on_close_ref = LUA_NOREF;
  r->main.results_ref = LUA_NOREF;
  r->main.note_ref = LUA_NOREF;
  return r;
}

static void unref(mr_request *r) {
  if (--r->refs > 0) return;
  r->live = 0;
  r->gen++;
  if (r->on_close_ref != LUA_NOREF) {
    luaL_unref(mr_srv.L, LUA_REGISTRYINDEX, r->on_close_ref);
    r->on_close_ref = LUA_NOREF;
  }
  if (r->body.cap > 16 * MR_KIB) mr_buf_free(&r->body);   /* keep small buffers */
  free_slots[nfree++] = r->slot;
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

lua_Integer request_handle(const mr_request *r) {
  return (lua_Integer)(((uint64_t)r->gen << 32) | r->slot);
}

mr_request *request_from_handle(lua_Integer h) {
  uint32_t slot = (uint32_t)((uint64_t)h & 0xffffffffu), gen = (uint32_t)((uint64_t)h >> 32);
  if (slot >= nslots) return NULL;
  mr_request *r = slots[slot];
  return r->live && r->gen == gen ? r : NULL;
}

mr_request *request_check(lua_State *L, int idx) {
  int isnum;
  lua_Integer h = lua_tointegerx(L, idx, &isnum);
  mr_request *r = isnum ? request_from_handle(h) : NULL;
  if (!r) luaL_argerror(L, idx, "not a live request handle");
  return r;
}

/* ---- ownership -------------------------------------------------------- */

void request_adopt(mr_request *r, mr_task *t) {
  t->req = r;
  t->sib_prev = NULL;
  t->sib_next = r->tasks;
  if (r->tasks) r->tasks->sib_prev = t;
  r->tasks = t;
  r->refs++;
  if (r->ended) task_cancel(t);              /* spawned after the end: stops at its first wait */
}

void request_disown(mr_task *t) {
  mr_request *r = t->req;
  if (!r) return;
  if (t->sib_prev) t->sib_prev->sib_next = t->sib_next; else r->tasks = t->sib_next;
  if (t->sib_next) t->sib_next->sib_prev = t->sib_prev;
  t->sib_next = t->sib_prev = NULL;
  t->req = NULL;
  unref(r);
}

/* Runs the on_close callbacks once, in a server task of their own (the
 * request's tasks are being cancelled). */
static void run_on_close(mr_request *r) {
  if (r->on_close_ref == LUA_NOREF) return;
  lua_State *L = mr_srv.L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, r->on_close_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, r->on_close_ref);
  r->on_close_ref = LUA_NOREF;
  lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, i);
    lua_pushstring(L, r->end_reason);
    spawn_detached(L, 1);
  }
  lua_pop(L, 1);
}

/* HTTP is done with the request: whatever still runs for it stops. */
static void on_end(mr_exchange *ex, int why) {
  mr_request *r = request_of(ex);
  r->ended = 1;
  r->end_reason = why == HTTP_END_DONE ? "done" : why == HTTP_END_TIMEOUT ? "timeout" : "closed";
  task_cancel(&r->main);
  for (mr_task *t = r->tasks; t; t = t->sib_next) task_cancel(t);
  body_wake_all(r);
  stream_wake_all(r);
  run_on_close(r);
  unref(r);
}

static void on_body(mr_exchange *ex, const char *p, size_t n) { body_received(request_of(ex), p, n); }

static void on_drained(mr_exchange *ex) { stream_drained(request_of(ex)); }

/* A head is parsed: the main task starts serve(app, handle) at once (or,
 * during a drain, when its turn comes). */
static void on_request(mr_http *h, int complete) {
  mr_request *r = request_alloc();
  http_attach(h, &r->ex);
  r->refs = 2;                               /* HTTP and the main task */
  mr_task *t = &r->main;
  t->ops = &main_ops;
  t->req = r;
  lua_State *co = task_take_thread(t);
  lua_rawgeti(co, LUA_REGISTRYINDEX, mr_srv.serve_ref);
  lua_rawgeti(co, LUA_REGISTRYINDEX, mr_srv.app_ref);
  lua_pushinteger(co, request_handle(r));
  task_start(t, 2);
}

static const mr_http_events http_events = {
  .on_request = on_request,
  .on_body = on_body,
  .on_drained = on_drained,
  .on_end = on_end,
};

/* ---- the main task ---------------------------------------------------- */

static mr_request *main_request(mr_task *t) {
  return (mr_request *)((char *)t - offsetof(mr_request, main));
}

/* Pushes req.route of r, read from the req local of serve's frame (the
 * outermost of the main coroutine) while that coroutine is still there. */
static void push_route(lua_State *L, mr_request *r) {
  lua_State *co = r->main.co;
  lua_Debug ar;
  int level = 0;
  const char *name = NULL;
  if (co) {
    while (lua_getstack(co, level + 1, &ar)) level++;
    if (lua_getstack(co, level, &ar)) name = lua_getlocal(co, &ar, 3);
  }
  if (name && strcmp(name, "req") == 0 && lua_istable(co, -1)) {
    lua_pushliteral(co, "route");
    lua_rawget(co, -2);                      /* raw: no metamethod can fail here */
    lua_xmove(co, L, 1);
    lua_pop(co, 1);
    return;
  }
  if (name) lua_pop(co, 1);
  lua_pushnil(L);
}

void request_log_failure(mr_request *r, mr_task *t, const char *trace) {
  lua_State *L = mr_srv.L;
  push_route(L, r);
  const char *route = lua_tostring(L, -1);
  const char *method = "-", *target = "";
  size_t tlen = 0;
  if (r->ex.http) {
    method = http_method(r->ex.http);
    target = http_target(r->ex.http, &tlen);
  }
  log_error("request %llu %s %.*s (route %s%s): %s", (unsigned long long)r->ex.id, method,
            (int)tlen, target, route ? route : "-", t == &r->main ? "" : ", spawned task", trace);
  lua_pop(L, 1);
}

/* serve returned or failed: the response is complete, or becomes a 500, or
 * (if it had started) is cut. */
static void main_ended(mr_task *t, int status, int nres) {
  mr_request *r = main_request(t);
  mr_exchange *ex = &r->ex;
  lua_State *L = mr_srv.L;
  if (status != LUA_OK) {
    if ((t->flags & TF_CANCELLED) && task_is_cancel_error(t->co, -1)) return;   /* stopped, as asked */
    const char *trace = task_push_failure(t, L);
    request_log_failure(r, t, trace);
    if (ex->http && !(ex->flags & EX_HEAD_SENT)) {
      http_reply(ex, 500, mr_srv.cfg.dev ? trace : "Internal Server Error\n");
      http_handled(ex);
    } else if (ex->http && !(ex->flags & EX_RESP_DONE)) {
      http_abort(ex);                        /* a cut body must look cut */
    } else if (ex->http) {
      ex->flags &= ~EX_KEEP_ALIVE;           /* complete: let it out, then close */
      http_handled(ex);
    }
    lua_pop(L, 1);
    return;
  }
  lua_pop(t->co, nres);
  if (!ex->http) return;
  if (!(ex->flags & EX_RESP_DONE)) {
    /* serve always finishes its response; this is a cancelled serve that
     * caught the error and returned */
    if (ex->flags & EX_HEAD_SENT) http_abort(ex);
    else http_reply(ex, 500, "Internal Server Error\n");
  }
  if (ex->http) http_handled(ex);
}

static void main_release(mr_task *t) { unref(main_request(t)); }

static const mr_task_ops main_ops = { main_ended, main_release };

/* ---- the request table ------------------------------------------------ */

/* Field stores below are "push key (from the interned strings at S), push
 * value, lua_rawset(t)". */

/* Stores uri and query_string; for an absolute-form target, sets *authority
 * (RFC 9112 3.2.2: it, not the Host header, names the server). */
static void push_target(lua_State *L, int t, int S, mr_http *h, const char *target, size_t n,
                        const char **authority, size_t *alen) {
  /* origin form "/p?q"; absolute form "http://host/p?q" (uri is its path);
   * authority form "host:port" (CONNECT) and asterisk form "*" kept as sent. */
  const char *path = target, *end = target + n;
  if (n && target[0] != '/' && target[0] != '*' && llhttp_get_method(&h->parser) != HTTP_CONNECT) {
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

/* request(handle) → the request table (DESIGN 4.2), from the parsed head. */
static int l_request(lua_State *L) {
  mr_request *r = request_check(L, 1);
  mr_http *h = r->ex.http;
  if (!h) return task_raise_cancelled(L);    /* the client left before it started */
  mr_parse *ps = h->ps;
  llhttp_t *p = &h->parser;
  int minor = llhttp_get_http_minor(p);
  int method = llhttp_get_method(p);
  int S = strings_push(L);
  lua_createtable(L, 0, 16);
  int t = S + 1;
  lua_rawgeti(L, S, S_REQUEST_METHOD);
  if (method < S_METHODS_MAX) lua_rawgeti(L, S, S__COUNT + method);
  else lua_pushstring(L, llhttp_method_name((llhttp_method_t)method));
  lua_rawset(L, t);
  const char *host = NULL, *authority = NULL;
  size_t hostlen = 0, alen = 0;
  push_target(L, t, S, h, ps->bytes.data, ps->target_len, &authority, &alen);
  lua_rawgeti(L, S, S_HEADERS);
  push_headers(L, S, ps, &host, &hostlen);
  lua_rawset(L, t);
  if (authority) {
    host = authority;
    hostlen = alen;
  }
  if (r->ex.flags & EX_HAS_BODY) {
    lua_rawgeti(L, S, S_BODY);
    body_push_reader(L, r);
    lua_rawset(L, t);
  }
  lua_rawgeti(L, S, S_SCHEME);
  lua_rawgeti(L, S, S_HTTP);
  lua_rawset(L, t);
  lua_rawgeti(L, S, S_PROTOCOL);
  lua_rawgeti(L, S, minor == 0 ? S_HTTP10 : S_HTTP11);
  lua_rawset(L, t);
  lua_rawgeti(L, S, S_REMOTE_ADDR);
  lua_pushstring(L, h->conn.remote);
  lua_rawset(L, t);
  lua_rawgeti(L, S, S_SERVER_NAME);
  push_server_name(L, host, hostlen);
  lua_rawset(L, t);
  lua_rawgeti(L, S, S_SERVER_PORT);
  lua_pushinteger(L, mr_srv.port);
  lua_rawset(L, t);
  lua_rawgeti(L, S, S_PARAMS);
  lua_createtable(L, 0, 0);
  lua_rawset(L, t);
  lua_rawgeti(L, S, S_ID);
  lua_pushinteger(L, (lua_Integer)r->ex.id);
  lua_rawset(L, t);
  lua_rawgeti(L, S, S_REQ_MT);
  lua_setmetatable(L, t);
  return 1;
}

/* ---- req.on_close ----------------------------------------------------- */

/* on_close(fn): fn(reason) runs once when the request ends ("done",
 * "closed" when the client left, "timeout" at the deadline). */
static int l_on_close(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  mr_request *r = request_from_handle(lua_tointeger(L, lua_upvalueindex(1)));
  if (!r || r->ex.id != (uint64_t)lua_tointeger(L, lua_upvalueindex(2)) || r->ended) {
    /* over already: run it soon, as it would have run */
    lua_pushvalue(L, 1);
    lua_pushstring(L, r && r->ended ? r->end_reason : "done");
    spawn_detached(L, 1);
    return 0;
  }
  if (r->on_close_ref == LUA_NOREF) {
    lua_newtable(L);
    r->on_close_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, r->on_close_ref);
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  return 0;
}

/* req.on_close is found through the request table's metatable, bound to the
 * request of the task asking: no closure is made for requests that never
 * look. */
static int req_index(lua_State *L) {
  const char *key = lua_tostring(L, 2);
  if (!key || strcmp(key, "on_close") != 0) return 0;
  mr_task *t = task_current(L);
  mr_request *r = t ? t->req : NULL;
  lua_pushliteral(L, "id");
  lua_rawget(L, 1);
  if (!r || lua_tointeger(L, -1) != (lua_Integer)r->ex.id)
    return luaL_error(L, "req.on_close: call it from a task of this request");
  lua_pushinteger(L, request_handle(r));
  lua_insert(L, -2);
  lua_pushcclosure(L, l_on_close, 2);
  return 1;
}

const luaL_Reg request_funcs[] = {
  {"request", l_request},
  {NULL, NULL},
};

void request_open(lua_State *L) {
  strings_init(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, mr_srv.strings_ref);
  luaL_newmetatable(L, REQ_MT);
  lua_pushcfunction(L, req_index);
  lua_setfield(L, -2, "__index");
  lua_rawseti(L, -2, S_REQ_MT);
  lua_pop(L, 1);
  http_init(&http_events);
}
