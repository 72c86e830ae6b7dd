/* fetch.c — one HTTP exchange on a connected cosocket, for the HTTP client
 * (lua/moonring/http.lua): the request bytes are written and the response
 * is parsed straight from the socket's input buffer into a response parser
 * (resparse.c), in C, with no Lua string per read and no Lua call per step.
 * The Lua side then takes the head and body from the parser.
 *
 *   status, headers, body, keepalive = core.http_fetch(sock, parser, data, until_head,
 *                                                      total_ms, max_body)
 *   (until_head: status, headers; on a failure: nil, err, nothing)
 *
 * `data` (may be nil: already sent) is written first; then it reads until
 * the response is complete (or, with until_head, its head is, and the body
 * is left in the parser: p:body()). keepalive: the connection may carry
 * another request. Every wait
 * is bounded by the socket's own send/read timeout and by `total_ms` from
 * the call (0: none). Failures return nil, message, and whether no byte of
 * a response had arrived (the request may then be repeated elsewhere). On
 * any failure but the parser's, the connection is closed. */
#include "link.h"
#include "resparse.h"

/* The continuation's stack: 1 sock, 2 parser, 3 data, 4 until_head,
 * 5 total_ms, 6 max_body, 7 the absolute deadline (loop ms, 0: none);
 * http_pooled adds 8 idle_ms and 9 pool_size. Its context: the socket's
 * epoch (low 32 bits) and these flags. */
#define F_WRITING  (1ull << 32)
#define F_GOT_ANY  (1ull << 33)
#define F_POOL     (1ull << 34)           /* http_pooled: the connection goes back itself */

static int failed(lua_State *L, mr_link *k, const char *err, uint64_t flags) {
  if (k) link_close(k);
  lua_pushnil(L);
  lua_pushstring(L, err);
  lua_pushboolean(L, !(flags & F_GOT_ANY));
  return 3;
}

/* The timeout of the next wait in ms: the socket's own (`own`, 0: none),
 * but no later than the call's deadline; *expired when that has passed. */
static uint32_t bound(lua_State *L, uint32_t own, int *expired) {
  uint64_t deadline = (uint64_t)lua_tointeger(L, 7);
  *expired = 0;
  if (!deadline) return own;
  uv_update_time(mr_srv.loop);
  uint64_t now = uv_now(mr_srv.loop);
  if (now >= deadline) {
    *expired = 1;
    return 0;
  }
  uint64_t left = deadline - now;
  return own && own < left ? own : (uint32_t)(left > UINT32_MAX ? UINT32_MAX : left);
}

static int fetch_k(lua_State *L, int status, lua_KContext ctx);

/* Feeds what the socket holds to the parser until the goal is met, and
 * parks for more when it is not. */
static int fetch_read(lua_State *L, mr_socket *s, mr_resparse *r, uint64_t flags) {
  mr_link *k = s->link;
  int until_head = lua_toboolean(L, 4);
  lua_Integer max_body = lua_tointeger(L, 6);
  for (;;) {
    size_t n = k->in.len - k->in_off;
    if (n) {
      flags |= F_GOT_ANY;
      int rc = resparse_feed(r, k->in.data + k->in_off, n);
      k->in_off = k->in.len;
      if (rc < 0) {
        link_close(k);
        int nres = resparse_push_bad(L, r);
        lua_pushboolean(L, 0);
        return nres + 1;
      }
      if (!(k->flags & L_READING)) link_read_start(k);   /* it had paused, full */
    }
    if (max_body && (r->body.len > (size_t)max_body ||
                     (r->state >= 1 && r->has_length && !r->head_request &&
                      r->length > (uint64_t)max_body)))
      return failed(L, k, "body over max_body", flags);   /* at once when the head says so */
    if (until_head ? r->state >= 1 : r->state == 2) {
      k->flags &= ~L_RTIMEDOUT;              /* a timer that fired as the data came: moot */
      resparse_push_head(L, r);
      if (until_head) return 2;
      lua_pushlstring(L, r->body.data ? r->body.data : "", r->body.len);
      r->body.len = 0;
      int keep = !r->extra && llhttp_should_keep_alive(&r->p) && r->p.status_code != 101;
      lua_pushboolean(L, keep);
      if (flags & F_POOL) {
        if (!keep || !socket_pool(k, (uint64_t)lua_tointeger(L, 8), (unsigned)lua_tointeger(L, 9)))
          link_close(k);
      }
      return 4;
    }
    if (k->flags & L_RTIMEDOUT) {
      k->flags &= ~L_RTIMEDOUT;
      return failed(L, k, "timeout", flags);
    }
    if (k->rerr) return failed(L, k, uv_strerror(k->rerr), flags);
    if (k->flags & L_EOF) {
      if (resparse_finish(r) == 0) continue; /* a body read to the end of the connection */
      return failed(L, k, r->state >= 1          ? "closed before the end of the body"
                          : (flags & F_GOT_ANY) ? "closed before the end of the response head"
                                                : "closed",
                    flags);
    }
    break;
  }
  int expired;
  uint32_t ms = bound(L, s->rt, &expired);
  if (expired) return failed(L, k, "timeout", flags);
  mr_task *t = task_current(L);
  link_read_start(k);
  if (k->rerr) return failed(L, k, uv_strerror(k->rerr), flags);   /* it could not start */
  k->rop = (mr_readop){.kind = PAT_ANY, .n = 1};
  k->reader = t;
  sock_arm(&k->rtimer, ms, link_rtimer_cb);
  return task_park(L, t, WAIT_SOCKET, link_wait_cancel, k, fetch_k,
                   (lua_KContext)((flags & ~0xffffffffull) | s->epoch));
}

static int fetch_k(lua_State *L, int status, lua_KContext ctx) {
  mr_socket *s = sock_check(L);
  if (task_woke_cancelled(L)) return task_raise_cancelled(L);
  uint64_t flags = (uint64_t)ctx & ~0xffffffffull;
  if (!sock_same_link(s, ctx)) return failed(L, NULL, "closed", flags);
  if (flags & F_WRITING) {
    int err = link_send_done(s->link);
    if (err) return failed(L, NULL, link_error(err), flags);
    flags &= ~F_WRITING;
  }
  return fetch_read(L, s, resparse_check(L, 2), flags);
}

/* Writes data (if any) and reads the response, the stack set up as the
 * continuation expects it. */
static int fetch_start(lua_State *L, mr_socket *s, mr_resparse *r, const char *data, size_t len,
                       lua_Integer total, uint64_t flags) {
  uint64_t deadline = 0;
  if (total > 0) {
    uv_update_time(mr_srv.loop);
    deadline = uv_now(mr_srv.loop) + (uint64_t)total;
  }
  lua_pushinteger(L, (lua_Integer)deadline);
  lua_replace(L, 7);
  mr_link *k = s->link;
  if (!k || !(k->flags & L_CONNECTED)) return failed(L, NULL, "closed", 0);
  if (k->reader || k->writer || k->wcopy) return failed(L, NULL, "socket busy", F_GOT_ANY);
  mr_task *t = task_check(L, "http_fetch");
  task_check_yieldable(L, "http_fetch");
  if (len) {
    if (len > UINT32_MAX) return luaL_error(L, "http_fetch: more than 4 GiB in one call");
    int rc = link_send(k, data, len, NULL);
    if (rc < 0) return failed(L, NULL, uv_strerror(rc), 0);
    if (rc == 0) {
      int expired;
      uint32_t ms = bound(L, s->st, &expired);
      k->writer = t;
      k->wlen = len;
      if (expired) ms = 1;                   /* the timer fails it at once */
      sock_arm(&k->wtimer, ms, link_wtimer_cb);
      return task_park(L, t, WAIT_SOCKET, link_wait_cancel, k, fetch_k,
                       (lua_KContext)(flags | F_WRITING | s->epoch));
    }
  }
  return fetch_read(L, s, r, flags);
}

static int l_http_fetch(lua_State *L) {
  mr_socket *s = sock_check(L);
  mr_resparse *r = resparse_check(L, 2);
  size_t len = 0;
  const char *data = luaL_optlstring(L, 3, NULL, &len);
  lua_Integer total = luaL_optinteger(L, 5, 0);
  luaL_optinteger(L, 6, 0);
  lua_settop(L, 7);
  return fetch_start(L, s, r, data, len, total, 0);
}

/* core.http_pooled(key, parser, data, total_ms, read_ms, max_body, idle_ms,
 * pool_size): http_fetch on the pooled connection for `key` (host:port),
 * which goes back to the pool by itself once the response allows it:
 * status, headers, body, keepalive; nil, err, retryable; or false when the
 * pool has no connection for key (then nothing was sent). One C call for
 * the HTTP client's common case: a buffered request to a host it already
 * talked to. */
static int l_http_pooled(lua_State *L) {
  const char *key = luaL_checkstring(L, 1);
  mr_resparse *r = resparse_check(L, 2);
  size_t len;
  const char *data = luaL_checklstring(L, 3, &len);
  lua_Integer total = luaL_checkinteger(L, 4), read_ms = luaL_checkinteger(L, 5);
  lua_Integer max_body = luaL_checkinteger(L, 6), idle = luaL_checkinteger(L, 7);
  lua_Integer size = luaL_checkinteger(L, 8);
  luaL_argcheck(L, read_ms >= 0 && read_ms <= (lua_Integer)UINT32_MAX, 5, "expected milliseconds");
  luaL_argcheck(L, idle >= 0 && size > 0 && size <= 1 << 20, 7, "expected an idle time and a pool size");
  task_check(L, "http_pooled");
  task_check_yieldable(L, "http_pooled");
  lua_settop(L, 8);
  mr_socket *s = socket_take_pooled(L, key, (uint32_t)read_ms);
  if (!s) {
    lua_pushboolean(L, 0);
    return 1;
  }
  lua_replace(L, 1);                         /* the stack of http_fetch, and 8, 9 */
  lua_pushboolean(L, 0);
  lua_replace(L, 4);
  lua_pushinteger(L, total);
  lua_replace(L, 5);
  lua_pushinteger(L, max_body);
  lua_replace(L, 6);
  lua_pushinteger(L, idle);
  lua_replace(L, 8);
  lua_pushinteger(L, size);
  return fetch_start(L, s, r, data, len, total, F_POOL);
}

const luaL_Reg fetch_funcs[] = {
  {"http_fetch", l_http_fetch},
  {"http_pooled", l_http_pooled},
  {NULL, NULL},
};
