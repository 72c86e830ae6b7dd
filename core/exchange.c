/* exchange.c — where HTTP hands a request to Lua: what HTTP tells the
 * bridge (a head, body bytes, drained output, the end of an exchange), the
 * main task that runs serve(handle) and turns its outcome into the
 * response or a 500, the request table (built inside the main task, so a
 * failure there is an ordinary error), and req.on_close. When HTTP ends an
 * exchange, everything still running for the request is cancelled. */
#include "request.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REQ_MT "moonring.request"

static const mr_task_ops main_ops;

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
  if (r->main.state != TASK_DONE) task_cancel(&r->main);
  for (mr_task *t = r->tasks; t; t = t->sib_next) task_cancel(t);
  if (r->readers.head) body_wake_all(r);
  if (r->drainers.head) stream_wake_all(r);
  if (r->on_close_ref != LUA_NOREF) run_on_close(r);
  request_unref(r);
}

static void on_body(mr_exchange *ex, const char *p, size_t n) { body_received(request_of(ex), p, n); }

static void on_drained(mr_exchange *ex) { stream_drained(request_of(ex)); }

/* A head is parsed: the main task starts serve(handle) at once (or,
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
  lua_pushinteger(co, request_handle(r));
  task_start(t, 1);
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
/* HTTP may move on once the response is whole: a 500 in place of one never
 * started, a reset for one cut short (a cut body must look cut). */
static void settle(mr_exchange *ex, const char *body500) {
  if (!ex->http) return;
  if (!(ex->flags & EX_HEAD_SENT)) {
    http_reply(ex, 500, body500);
  } else if (!(ex->flags & EX_RESP_DONE)) {
    http_abort(ex);
    return;
  }
  if (ex->http) http_handled(ex);
}

/* serve returned (its response is complete: serve finishes what it
 * starts) or failed: logged, and answered or cut by settle(). */
static void main_ended(mr_task *t, int status, int nres) {
  mr_request *r = main_request(t);
  mr_exchange *ex = &r->ex;
  lua_State *L = mr_srv.L;
  if (status == LUA_OK) {
    lua_pop(t->co, nres);
    settle(ex, "Internal Server Error\n");
    return;
  }
  if ((t->flags & TF_CANCELLED) && task_is_cancel_error(t->co, -1)) return;   /* stopped, as asked */
  const char *trace = task_push_failure(t, L);
  request_log_failure(r, t, trace);
  if (ex->flags & EX_RESP_DONE) ex->flags &= ~EX_KEEP_ALIVE;   /* complete: let it out, then close */
  settle(ex, mr_srv.cfg.dev ? trace : "Internal Server Error\n");
  lua_pop(L, 1);
}

static void main_release(mr_task *t) { request_unref(main_request(t)); }

static const mr_task_ops main_ops = { main_ended, main_release };

/* ---- the request table ------------------------------------------------ */

/* Field stores below are "push key (an interned string upvalue, STR(S_X)),
 * push value, lua_rawset(t)". */

/* Stores uri and query_string; for an absolute-form target, sets *authority
 * (RFC 9112 3.2.2: it, not the Host header, names the server). */
static void push_target(lua_State *L, int t, mr_http *h, const char *target, size_t n,
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
  lua_pushvalue(L, STR(S_URI));
  if (uend == path || (path != target && *path != '/')) lua_pushvalue(L, STR(S_SLASH));
  else lua_pushlstring(L, path, (size_t)(uend - path));
  lua_rawset(L, t);
  if (q) {
    lua_pushvalue(L, STR(S_QUERY_STRING));
    lua_pushlstring(L, q + 1, (size_t)(end - q - 1));
    lua_rawset(L, t);
  }
}

/* headers: lower-case names; repeats joined with ", " (cookie: "; "). */
static void push_headers(lua_State *L, mr_parse *ps, const char **host, size_t *hostlen) {
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
      lua_pushvalue(L, STR(cookie ? S_SEMICOLON : S_COMMA));
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
int request_build(lua_State *L) {
  mr_request *r = request_check(L, 1);
  mr_http *h = r->ex.http;
  if (!h) return task_raise_cancelled(L);    /* the client left before it started */
  mr_parse *ps = h->ps;
  llhttp_t *p = &h->parser;
  int minor = llhttp_get_http_minor(p);
  int method = llhttp_get_method(p);
  lua_createtable(L, 0, 16);
  int t = lua_gettop(L);
  lua_pushvalue(L, STR(S_REQUEST_METHOD));
  if (method < S_METHODS_MAX) lua_rawgeti(L, STR(S__COUNT), S__COUNT + method);
  else lua_pushstring(L, llhttp_method_name((llhttp_method_t)method));
  lua_rawset(L, t);
  const char *host = NULL, *authority = NULL;
  size_t hostlen = 0, alen = 0;
  push_target(L, t, h, ps->bytes.data, ps->target_len, &authority, &alen);
  lua_pushvalue(L, STR(S_HEADERS));
  push_headers(L, ps, &host, &hostlen);
  lua_rawset(L, t);
  if (authority) {
    host = authority;
    hostlen = alen;
  }
  if (r->ex.flags & EX_HAS_BODY) {
    lua_pushvalue(L, STR(S_BODY));
    body_push_reader(L, r);
    lua_rawset(L, t);
  }
  lua_pushvalue(L, STR(S_SCHEME));
  lua_pushvalue(L, STR(S_HTTP));
  lua_rawset(L, t);
  lua_pushvalue(L, STR(S_PROTOCOL));
  lua_pushvalue(L, STR(minor == 0 ? S_HTTP10 : S_HTTP11));
  lua_rawset(L, t);
  lua_pushvalue(L, STR(S_REMOTE_ADDR));
  lua_pushstring(L, h->conn.remote);
  lua_rawset(L, t);
  lua_pushvalue(L, STR(S_SERVER_NAME));
  push_server_name(L, host, hostlen);
  lua_rawset(L, t);
  lua_pushvalue(L, STR(S_SERVER_PORT));
  lua_pushinteger(L, mr_srv.port);
  lua_rawset(L, t);
  lua_pushvalue(L, STR(S_PARAMS));
  lua_createtable(L, 0, 0);
  lua_rawset(L, t);
  lua_pushvalue(L, STR(S_ID));
  lua_pushinteger(L, (lua_Integer)r->ex.id);
  lua_rawset(L, t);
  lua_pushvalue(L, STR(S_REQ_MT));
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
