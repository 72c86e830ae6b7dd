/* socket.c — cosockets: moonring.tcp(), outbound TCP and unix-socket
 * connections in the API of OpenResty's ngx.socket.tcp (connect, send,
 * receive, receiveany, receiveuntil, settimeout(s), setkeepalive, close), so
 * its pure-Lua drivers run unchanged. Every wait parks the calling task
 * only; times here are milliseconds, as OpenResty's.
 *
 * Ownership: a socket is a Lua userdata (mr_socket) that points to its
 * connection (mr_link, link.h) while it has one. The link also belongs to
 * the request whose task connected it: when that request is released, its
 * links still open are closed (socket_request_done), so a handler that
 * forgets close() leaks nothing. A task cancelled while it waits on a
 * socket (deadline, disconnect) closes that socket's connection: what the
 * peer was in the middle of cannot be trusted any more. setkeepalive hands
 * the link to the pool (keepalive.c); the socket is then closed to Lua.
 *
 * Reads are bounded: a connected link reads into its input buffer until
 * 64 KiB wait there unread, so a slow handler slows its upstream
 * (backpressure) instead of buffering without bound. A send writes what the
 * kernel takes at once and parks for the rest (sockio.c: the data path;
 * this file: the object, connect, close, keepalive). */
#include "link.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#define DEFAULT_TIMEOUT_MS 60000

const void *socket_mt;
static int socket_mt_ref = LUA_NOREF;

/* ---- the link's life -------------------------------------------------- */

static void link_free(mr_link *k) {
  mr_buf_free(&k->in);
  free(k->wcopy);
  free(k->key);
  free(k);
}

static void close_cb(uv_handle_t *h) {
  mr_link *k = h->data;
  if (--k->open_handles == 0) link_free(k);
}

mr_link *link_new(void) {
  mr_link *k = calloc(1, sizeof *k);
  if (!k) mr_oom();
  uv_timer_init(mr_srv.loop, &k->rtimer);
  uv_timer_init(mr_srv.loop, &k->wtimer);
  k->rtimer.data = k->wtimer.data = k;
  k->open_handles = 2;
  return k;
}

static void detach(mr_link *k) {
  if (k->sock) {
    k->sock->link = NULL;
    k->sock->epoch++;
  }
  k->sock = NULL;
  mr_request *r = k->owner;
  if (r) {
    if (k->own_prev) k->own_prev->own_next = k->own_next; else r->links = k->own_next;
    if (k->own_next) k->own_next->own_prev = k->own_prev;
    k->own_prev = k->own_next = NULL;
    k->owner = NULL;
  }
}

static void attach(mr_socket *s, mr_link *k, mr_request *r) {
  s->link = k;
  s->epoch++;
  k->sock = s;
  k->owner = r;
  if (r) {
    k->own_next = r->links;
    if (r->links) r->links->own_prev = k;
    r->links = k;
  }
}

void link_close(mr_link *k) {
  if (k->flags & L_CLOSING) return;
  k->flags |= L_CLOSING;
  mr_task *r = k->reader, *w = k->writer;
  k->reader = k->writer = NULL;
  if (r) task_wake(r, 0);
  if (w && w != r) task_wake(w, 0);
  detach(k);
  if (k->kp) keepalive_remove(k);
  if (k->dnsq) dns_detach(k);
  uv_close((uv_handle_t *)&k->rtimer, close_cb);
  uv_close((uv_handle_t *)&k->wtimer, close_cb);
  if (k->h.handle.type != UV_UNKNOWN_HANDLE) uv_close(&k->h.handle, close_cb);
}

/* A task of another owner (a server task) may be parked on one of them:
 * it is woken and finds the socket closed. */
void socket_request_done(mr_request *r) {
  while (r->links) link_close(r->links);
}

void socket_stop_all(void) { keepalive_free_all(); }

void socket_free_all(void) { dns_free_all(); }

/* ---- waiting ---------------------------------------------------------- */

void link_wait_cancel(mr_task *t) {
  mr_link *k = t->wait_data;
  if (k->reader == t) k->reader = NULL;
  if (k->writer == t) k->writer = NULL;
  link_close(k);
}

/* ---- connect ---------------------------------------------------------- */

enum { STAGE_RESOLVE, STAGE_CONNECT };

static void connect_cb(uv_connect_t *req, int status) {
  mr_link *k = req->data;
  if (k->flags & L_CLOSING) return;
  k->cerr = status;
  k->flags |= L_CDONE;
  link_wake_reader(k);
}

static void set_port(struct sockaddr_storage *a, int port) {
  if (a->ss_family == AF_INET) ((struct sockaddr_in *)a)->sin_port = htons((uint16_t)port);
  else if (a->ss_family == AF_INET6) ((struct sockaddr_in6 *)a)->sin6_port = htons((uint16_t)port);
}

static int start_tcp_connect(mr_link *k, int port) {
  set_port(&k->addrs[0], port);
  k->creq.data = k;
  return uv_tcp_connect(&k->creq, &k->h.tcp, (struct sockaddr *)&k->addrs[0], connect_cb);
}

/* The connect failed (`err`): the link closes and Lua gets nil, err. */
static int connect_failed(lua_State *L, mr_link *k, const char *err) {
  link_close(k);
  return sock_fail(L, err);
}

/* ctx: the stage in its low byte, the port in the next two, the socket's
 * epoch above (another task may have closed or reconnected it meanwhile). */
#define CONNECT_CTX(stage, port, epoch) \
  ((lua_KContext)(((uint64_t)(epoch) << 32) | ((uint64_t)(port) << 8) | (uint64_t)(stage)))

static int connect_k(lua_State *L, int status, lua_KContext ctx) {
  mr_socket *s = sock_check(L);
  if (task_woke_cancelled(L)) return task_raise_cancelled(L);
  mr_link *k = s->link;
  if (!k || (uint32_t)((uint64_t)ctx >> 32) != s->epoch) return sock_fail(L, "closed");
  if (k->flags & L_RTIMEDOUT) {
    k->flags &= ~L_RTIMEDOUT;
    return connect_failed(L, k, "timeout");
  }
  int port = (int)((ctx >> 8) & 0xffff);
  if ((ctx & 0xff) == STAGE_RESOLVE) {
    if (!(k->flags & L_RESOLVED)) return sock_fail(L, "closed");   /* woken by a close */
    if (k->cerr) {
      lua_pushnil(L);
      lua_pushfstring(L, "%s could not be resolved (%s)", lua_tostring(L, 2), uv_strerror(k->cerr));
      link_close(k);
      return 2;
    }
    int rc = start_tcp_connect(k, port);
    if (rc < 0) return connect_failed(L, k, uv_strerror(rc));
    k->reader = task_current(L);
    return task_park(L, k->reader, WAIT_SOCKET, link_wait_cancel, k, connect_k,
                     CONNECT_CTX(STAGE_CONNECT, port, s->epoch));
  }
  if (!(k->flags & L_CDONE)) return sock_fail(L, "closed");
  uv_timer_stop(&k->rtimer);
  if (k->cerr) return connect_failed(L, k, uv_strerror(k->cerr));
  k->flags |= L_CONNECTED;
  if (!(k->flags & L_PIPE)) uv_tcp_nodelay(&k->h.tcp, 1);
  link_read_start(k);                        /* reads ahead from now on (sockio.c) */
  lua_pushinteger(L, 1);
  return 1;
}

/* The pool key: opts.pool, else "host:port" (or the unix path), in buf
 * when it fits (no Lua string made per connect), else pushed on L. */
static const char *pool_key(lua_State *L, int opts, const char *host, int port, int is_unix,
                            char *buf, size_t size) {
  if (opts) {
    lua_getfield(L, opts, "pool");
    if (!lua_isnil(L, -1)) {
      if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "connect: opts.pool must be a string");
      return lua_tostring(L, -1);
    }
    lua_pop(L, 1);
  }
  if (is_unix) return host;
  int n = snprintf(buf, size, "%s:%d", host, port);
  if (n >= 0 && (size_t)n < size) return buf;
  return lua_pushfstring(L, "%s:%d", host, port);
}

/* sock:connect(host, port [, opts]) or sock:connect("unix:/path" [, opts])
 * → 1, or nil, err. Takes a pooled connection for the same key first (and
 * then also returns how many times it was reused, as getreusedtimes). */
static int l_connect(lua_State *L) {
  mr_socket *s = sock_check(L);
  const char *host = luaL_checkstring(L, 2);
  int is_unix = strncmp(host, "unix:", 5) == 0;
  int port = 0, opts = 0;
  if (is_unix) {
    if (lua_istable(L, 3)) opts = 3;
    else if (lua_istable(L, 4)) opts = 4;
  } else {
    lua_Integer p = luaL_checkinteger(L, 3);
    luaL_argcheck(L, p > 0 && p < 65536, 3, "expected a port number 1-65535");
    port = (int)p;
    if (!lua_isnoneornil(L, 4)) {
      luaL_checktype(L, 4, LUA_TTABLE);
      opts = 4;
    }
  }
  lua_Integer pool_size = 0;                 /* 0: setkeepalive's default */
  if (opts) {
    lua_getfield(L, opts, "pool_size");
    if (!lua_isnil(L, -1)) {
      pool_size = lua_tointeger(L, -1);
      if (pool_size <= 0 || pool_size > 1 << 20)
        return luaL_error(L, "connect: opts.pool_size must be an integer > 0");
    }
    lua_pop(L, 1);
  }
  if (is_unix && strlen(host + 5) >= sizeof(((struct sockaddr_un *)0)->sun_path))
    return sock_fail(L, "unix socket path too long");   /* libuv would cut it short */
  mr_task *t = task_check(L, "connect");
  task_check_yieldable(L, "connect");
  if (s->link) link_close(s->link);         /* connect on a connected socket starts over */
  char keybuf[256];
  const char *key = pool_key(L, opts, host, port, is_unix, keybuf, sizeof keybuf);

  mr_link *k = keepalive_take(key);
  if (k) {
    k->reused++;
    if (pool_size) k->pool_size = (unsigned)pool_size;
    attach(s, k, t->req);
    lua_pushinteger(L, 1);
    lua_pushinteger(L, k->reused);           /* beyond OpenResty: the reuse count, at no cost */
    return 2;
  }
  k = link_new();
  k->key = strdup(key);
  if (!k->key) mr_oom();
  k->pool_size = (unsigned)pool_size;
  attach(s, k, t->req);
  k->h.handle.data = k;
  uv_timer_t *tm = &k->rtimer;
  int stage = STAGE_CONNECT;
  if (is_unix) {
    uv_pipe_init(mr_srv.loop, &k->h.pipe, 0);
    uv_unref(&k->h.handle);                  /* see below */
    k->h.handle.data = k;
    k->open_handles++;
    k->flags |= L_PIPE;
    k->creq.data = k;
    uv_pipe_connect(&k->creq, &k->h.pipe, host + 5, connect_cb);
  } else {
    uv_tcp_init(mr_srv.loop, &k->h.tcp);
    /* A connection reading ahead must not keep a stopping worker alive: its
     * waits have timers (and connects and writes are requests) that do. */
    uv_unref(&k->h.handle);
    k->h.handle.data = k;
    k->open_handles++;
    int rc;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&k->addrs[0]) == 0 ||
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&k->addrs[0]) == 0) {
      k->naddrs = 1;
      rc = start_tcp_connect(k, port);
    } else {
      rc = dns_lookup_for(k, host, dns_default_ttl());
      if (rc == 1) rc = start_tcp_connect(k, port);
      else if (rc == 0) stage = STAGE_RESOLVE;
    }
    if (rc < 0) {
      if (stage == STAGE_CONNECT && k->naddrs == 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s could not be resolved (%s)", host, uv_strerror(rc));
        link_close(k);
        return 2;
      }
      return connect_failed(L, k, uv_strerror(rc));
    }
  }
  k->reader = t;
  sock_arm(tm, s->ct, link_rtimer_cb);
  lua_settop(L, 2);                          /* the host stays for the resolve error */
  return task_park(L, t, WAIT_SOCKET, link_wait_cancel, k, connect_k,
                   CONNECT_CTX(stage, port, s->epoch));
}

/* ---- the rest of the API ---------------------------------------------- */

/* sock:setkeepalive([idle_ms [, pool_size]]) → 1, or nil, err. The size
 * defaults to connect's opts.pool_size, else 30 (OpenResty's default). */
static int l_setkeepalive(lua_State *L) {
  mr_socket *s = sock_check(L);
  mr_link *k = s->link;
  lua_Integer idle = luaL_optinteger(L, 2, 60000);
  lua_Integer size = luaL_optinteger(L, 3, k && k->pool_size ? k->pool_size : 30);
  luaL_argcheck(L, idle >= 0, 2, "expected milliseconds >= 0 (0: no idle timeout)");
  luaL_argcheck(L, size > 0 && size <= 1 << 20, 3, "expected a pool size > 0");
  if (!k || !(k->flags & L_CONNECTED)) return sock_fail(L, "closed");
  if (k->reader || k->writer || k->wcopy) return sock_fail(L, "socket busy");
  if (k->in.len != k->in_off) return sock_fail(L, "unread data in buffer");
  if (!socket_pool(k, (uint64_t)idle, (unsigned)size)) return sock_fail(L, "closed");
  lua_pushinteger(L, 1);
  return 1;
}

int socket_pool(mr_link *k, uint64_t idle_ms, unsigned size) {
  if (!(k->flags & L_CONNECTED) || k->reader || k->writer || k->wcopy ||
      k->in.len != k->in_off || (k->flags & L_EOF) || k->rerr) {
    link_close(k);
    return 0;
  }
  detach(k);
  keepalive_put(k, idle_ms, size);
  return 1;
}

mr_socket *socket_take_pooled(lua_State *L, const char *key, uint32_t ms) {
  mr_task *t = task_current(L);
  mr_link *k = keepalive_take(key);
  if (!k) return NULL;
  mr_socket *s = lua_newuserdatauv(L, sizeof *s, 0);
  *s = (mr_socket){.ct = ms, .st = ms, .rt = ms};
  lua_rawgeti(L, LUA_REGISTRYINDEX, socket_mt_ref);
  lua_setmetatable(L, -2);
  k->reused++;
  attach(s, k, t ? t->req : NULL);
  return s;
}

static int l_close(lua_State *L) {
  mr_socket *s = sock_check(L);
  if (!s->link) return sock_fail(L, "closed");
  link_close(s->link);
  lua_pushinteger(L, 1);
  return 1;
}

static uint32_t check_ms(lua_State *L, int idx) {
  lua_Integer ms = luaL_checkinteger(L, idx);
  luaL_argcheck(L, ms >= 0 && ms <= (lua_Integer)UINT32_MAX, idx,
                "expected milliseconds >= 0 (0: no timeout)");
  return (uint32_t)ms;
}

/* sock:settimeout(ms): connect, send and read alike. */
static int l_settimeout(lua_State *L) {
  mr_socket *s = sock_check(L);
  s->ct = s->st = s->rt = check_ms(L, 2);
  return 0;
}

static int l_settimeouts(lua_State *L) {
  mr_socket *s = sock_check(L);
  s->ct = check_ms(L, 2);
  s->st = check_ms(L, 3);
  s->rt = check_ms(L, 4);
  return 0;
}

static int l_getreusedtimes(lua_State *L) {
  mr_socket *s = sock_check(L);
  if (!s->link) return sock_fail(L, "closed");
  lua_pushinteger(L, s->link->reused);
  return 1;
}

static int l_setoption(lua_State *L) {
  sock_check(L);
  lua_pushinteger(L, 1);
  return 1;
}

static int l_sslhandshake(lua_State *L) {
  sock_check(L);
  return sock_fail(L, "ssl is not supported (plain TCP only)");
}

/* __gc and __close (which Lua code may also call, with anything). */
static int l_gc(lua_State *L) {
  mr_socket *s = lua_touserdata(L, 1);
  if (!s || !lua_getmetatable(L, 1)) return 0;
  int ours = lua_topointer(L, -1) == socket_mt;
  lua_pop(L, 1);
  if (ours && s->link) link_close(s->link);
  return 0;
}

static int l_tostring(lua_State *L) {
  mr_socket *s = sock_check(L);
  if (s->link) lua_pushfstring(L, "moonring.socket (%s)", s->link->key ? s->link->key : "connecting");
  else lua_pushliteral(L, "moonring.socket (closed)");
  return 1;
}

/* moonring.tcp() → a socket, not connected */
static int l_tcp(lua_State *L) {
  mr_socket *s = lua_newuserdatauv(L, sizeof *s, 0);
  *s = (mr_socket){.ct = DEFAULT_TIMEOUT_MS, .st = DEFAULT_TIMEOUT_MS, .rt = DEFAULT_TIMEOUT_MS};
  lua_rawgeti(L, LUA_REGISTRYINDEX, socket_mt_ref);
  lua_setmetatable(L, -2);
  return 1;
}

static const luaL_Reg socket_methods[] = {
  {"connect", l_connect},
  {"setkeepalive", l_setkeepalive},
  {"close", l_close},
  {"settimeout", l_settimeout},
  {"settimeouts", l_settimeouts},
  {"getreusedtimes", l_getreusedtimes},
  {"setoption", l_setoption},
  {"sslhandshake", l_sslhandshake},
  {NULL, NULL},
};

const luaL_Reg socket_funcs[] = {
  {"tcp", l_tcp},
  {NULL, NULL},
};

void socket_open(lua_State *L) {
  luaL_newmetatable(L, SOCKET_MT);
  socket_mt = lua_topointer(L, -1);
  lua_pushvalue(L, -1);
  socket_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushcfunction(L, l_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, l_gc);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, l_tostring);
  lua_setfield(L, -2, "__tostring");
  luaL_newlib(L, socket_methods);
  luaL_setfuncs(L, sockio_methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}
