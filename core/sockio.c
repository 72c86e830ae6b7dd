/* sockio.c — the cosockets' data path: reading into a link's input buffer
 * while a task waits in receive / receiveany / receiveuntil, and send. The
 * socket object, connect, close and keepalive are socket.c's; the link and
 * its ownership are described in link.h.
 *
 * A parked receive records what it waits for in the link (mr_readop); the
 * read callback only appends bytes and checks, with the same scan() the
 * receive itself uses, whether that is now complete, and wakes the task.
 * The continuation then takes the data: no Lua runs in a libuv callback. */
#define _GNU_SOURCE                          /* memmem */
#include "link.h"
#include <stdlib.h>
#include <string.h>

#define READ_CHUNK (64 * MR_KIB)
#define READ_AHEAD (64 * MR_KIB)
/* A line (receive "*l") or a receiveuntil without a size longer than this
 * fails with "line too long": a peer must not make us buffer without end. */
#define MAX_LINE (1024 * MR_KIB)

/* ---- reading ---------------------------------------------------------- */

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  mr_link *k = h->data;
  mr_buf *in = &k->in;
  if (k->in_off == in->len) {
    in->len = k->in_off = 0;
  } else if (k->in_off > READ_CHUNK && k->in_off * 2 > in->len) {
    memmove(in->data, in->data + k->in_off, in->len - k->in_off);
    in->len -= k->in_off;
    k->in_off = 0;
  }
  mr_buf_reserve(in, READ_CHUNK);
  *buf = uv_buf_init(in->data + in->len, (unsigned)(in->cap - in->len));
}

/* How much of the input `op` takes now: returns 1 and sets *take (bytes
 * returned) and *skip (bytes consumed, >= take) and *found (the pattern of
 * receiveuntil was met), or 0 when it must wait for more. */
static int scan(const mr_link *k, const mr_readop *op, size_t *take, size_t *skip, int *found) {
  const char *p = k->in.data + k->in_off;
  size_t avail = k->in.len - k->in_off;
  *found = 0;
  switch (op->kind) {
  case PAT_LINE: {
    const char *nl = avail ? memchr(p, '\n', avail) : NULL;
    if (!nl) return 0;
    *skip = (size_t)(nl - p) + 1;
    *take = *skip - 1;
    if (*take && p[*take - 1] == '\r') (*take)--;
    return 1;
  }
  case PAT_ALL:
    return 0;                                /* only the end completes it */
  case PAT_COUNT:
    if (avail < op->n) return 0;
    *take = *skip = op->n;
    return 1;
  case PAT_ANY:
    if (!avail) return 0;
    *take = *skip = avail < op->n ? avail : op->n;
    return 1;
  case PAT_UNTIL: {
    const char *m = avail >= op->plen ? memmem(p, avail, op->pat, op->plen) : NULL;
    if (m) {
      size_t at = (size_t)(m - p);
      if (!op->n || at <= op->n) {
        *take = at;
        *skip = at + op->plen;
        *found = 1;
        return 1;
      }
      *take = *skip = op->n;
      return 1;
    }
    /* bytes that cannot begin a match: all but the last plen - 1 */
    size_t safe = avail >= op->plen ? avail - op->plen + 1 : 0;
    if (op->n && safe >= op->n) {
      *take = *skip = op->n;
      return 1;
    }
    return 0;
  }
  }
  return 0;
}

static int too_long(const mr_link *k, const mr_readop *op) {
  return (op->kind == PAT_LINE || (op->kind == PAT_UNTIL && !op->n)) &&
         k->in.len - k->in_off > MAX_LINE;
}

/* The parked reader can go on: its read completes, or nothing more comes. */
static int read_ready(const mr_link *k) {
  size_t take, skip;
  int found;
  return (k->flags & (L_EOF | L_RTIMEDOUT)) || k->rerr || scan(k, &k->rop, &take, &skip, &found) ||
         too_long(k, &k->rop);
}

void link_wake_reader(mr_link *k) {
  mr_task *t = k->reader;
  k->reader = NULL;
  uv_timer_stop(&k->rtimer);
  if (t) task_wake(t, 0);
}

static size_t buffered(const mr_link *k) { return k->in.len - k->in_off; }

/* A connected link keeps reading, into its buffer, until READ_AHEAD bytes
 * wait there unread (or more, while a receive needs them): no epoll change
 * per request on a pooled connection, and a peer faster than its reader is
 * still held back by TCP flow control. */
static void read_cb(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
  mr_link *k = st->data;
  if (n > 0) k->in.len += (size_t)n;
  else if (n == UV_EOF) k->flags |= L_EOF;
  else if (n < 0) k->rerr = (int)n;
  else return;
  if (k->kp) {                               /* pooled: the peer closed, or spoke out of turn */
    link_close(k);
    return;
  }
  if (n < 0) link_read_stop(k);
  if (k->reader && read_ready(k)) link_wake_reader(k);
  if (!k->reader && buffered(k) >= READ_AHEAD) link_read_stop(k);
}

void link_read_start(mr_link *k) {
  if (k->flags & (L_READING | L_EOF | L_CLOSING) || k->rerr) return;
  int rc = uv_read_start(&k->h.stream, alloc_cb, read_cb);
  if (rc < 0) k->rerr = rc;
  else k->flags |= L_READING;
}

void link_read_stop(mr_link *k) {
  if (!(k->flags & L_READING)) return;
  uv_read_stop(&k->h.stream);
  k->flags &= ~L_READING;
}

void link_rtimer_cb(uv_timer_t *tm) {
  mr_link *k = tm->data;
  k->flags |= L_RTIMEDOUT;
  link_wake_reader(k);
}

/* ---- receive ---------------------------------------------------------- */

/* Pushes the outcome of a read on s, or parks (continuing in `kfn`, whose
 * context is the socket's epoch: see sock_same_link). `found` (may be NULL) is
 * set when receiveuntil met its pattern. */
static int do_receive(lua_State *L, mr_socket *s, const mr_readop *op, int *found,
                      lua_KFunction kfn) {
  mr_link *k = s->link;
  if (!k || !(k->flags & L_CONNECTED)) return sock_fail(L, "closed");
  if (k->reader) return sock_fail(L, "socket busy reading");
  size_t take, skip;
  int met;
  if (scan(k, op, &take, &skip, &met)) {
    k->flags &= ~L_RTIMEDOUT;                /* a timer that fired as the data came: moot */
    lua_pushlstring(L, k->in.data + k->in_off, take);
    k->in_off += skip;
    if (found) *found = met;
    if (!(k->flags & L_READING) && buffered(k) < READ_AHEAD) link_read_start(k);
    return 1;
  }
  const char *err = NULL;
  int keep = 0;                              /* a timeout leaves the connection usable, as OpenResty's */
  if (k->flags & L_RTIMEDOUT) {
    k->flags &= ~L_RTIMEDOUT;
    err = "timeout";
    keep = 1;
  } else if (k->rerr) {
    err = uv_strerror(k->rerr);
  } else if (k->flags & L_EOF) {
    if (op->kind == PAT_ALL) {
      lua_pushlstring(L, k->in.data + k->in_off, k->in.len - k->in_off);
      k->in_off = k->in.len;
      return 1;
    }
    err = "closed";
  } else if (too_long(k, op)) {
    err = "line too long";
  }
  if (err) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    lua_pushlstring(L, k->in.data + k->in_off, k->in.len - k->in_off);
    k->in_off = k->in.len;
    if (!keep) link_close(k);
    return 3;
  }
  mr_task *t = task_check(L, "receive");
  task_check_yieldable(L, "receive");
  link_read_start(k);
  if (k->rerr) return do_receive(L, s, op, found, kfn);   /* it could not start: the error */
  k->rop = *op;
  k->reader = t;
  sock_arm(&k->rtimer, s->rt, link_rtimer_cb);
  return task_park(L, t, WAIT_SOCKET, link_wait_cancel, k, kfn, (lua_KContext)s->epoch);
}

/* receive's pattern (argument 2) as a read op; -1 for a count of 0 */
static int receive_op(lua_State *L, mr_readop *op) {
  *op = (mr_readop){.kind = PAT_LINE};
  if (lua_type(L, 2) == LUA_TNUMBER) {
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_argcheck(L, n >= 0, 2, "expected a byte count >= 0");
    if (n == 0) return -1;
    op->kind = PAT_COUNT;
    op->n = (size_t)n;
  } else if (!lua_isnoneornil(L, 2)) {
    const char *p = luaL_checkstring(L, 2);
    if (p[0] == '*') p++;
    if (strcmp(p, "l") == 0) op->kind = PAT_LINE;
    else if (strcmp(p, "a") == 0) op->kind = PAT_ALL;
    else return luaL_argerror(L, 2, "expected \"*l\", \"*a\" or a byte count");
  }
  return 0;
}

/* receiveany's (argument 2: at most that many bytes) */
static void receiveany_op(lua_State *L, mr_readop *op) {
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_argcheck(L, n > 0, 2, "expected a byte count > 0");
  *op = (mr_readop){.kind = PAT_ANY, .n = (size_t)n};
}

/* The continuations read their op again from their own arguments (the
 * link's may be another task's by now). */
static int receive_k(lua_State *L, int status, lua_KContext ctx) {
  mr_socket *s = sock_check(L);
  if (task_woke_cancelled(L)) return task_raise_cancelled(L);
  if (!sock_same_link(s, ctx)) return sock_fail(L, "closed");
  mr_readop op;
  receive_op(L, &op);
  return do_receive(L, s, &op, NULL, receive_k);
}

static int receiveany_k(lua_State *L, int status, lua_KContext ctx) {
  mr_socket *s = sock_check(L);
  if (task_woke_cancelled(L)) return task_raise_cancelled(L);
  if (!sock_same_link(s, ctx)) return sock_fail(L, "closed");
  mr_readop op;
  receiveany_op(L, &op);
  return do_receive(L, s, &op, NULL, receiveany_k);
}

/* sock:receive([pattern]) → data, or nil, err, partial */
static int l_receive(lua_State *L) {
  mr_socket *s = sock_check(L);
  mr_readop op;
  if (receive_op(L, &op) < 0) {
    lua_pushliteral(L, "");
    return 1;
  }
  lua_settop(L, 2);
  return do_receive(L, s, &op, NULL, receive_k);
}

/* sock:receiveany(max) → 1..max bytes as soon as any arrived */
static int l_receiveany(lua_State *L) {
  mr_socket *s = sock_check(L);
  mr_readop op;
  receiveany_op(L, &op);
  lua_settop(L, 2);
  return do_receive(L, s, &op, NULL, receiveany_k);
}

/* ---- receiveuntil ----------------------------------------------------- */

/* The iterator's state: its upvalues are the socket (1), the pattern (2)
 * and this. */
typedef struct until_state {
  int inclusive;
  int found;                    /* the last chunk ended at the pattern: next call says so */
  size_t size;                  /* the size the waiting call passed (0: none) */
} until_state;

static int until_finish(lua_State *L, mr_socket *s, until_state *u);

static int until_k(lua_State *L, int status, lua_KContext ctx) {
  if (task_woke_cancelled(L)) return task_raise_cancelled(L);
  mr_socket *s = lua_touserdata(L, lua_upvalueindex(1));
  until_state *u = lua_touserdata(L, lua_upvalueindex(3));
  if (!sock_same_link(s, ctx)) return sock_fail(L, "closed");
  return until_finish(L, s, u);
}

static int until_finish(lua_State *L, mr_socket *s, until_state *u) {
  size_t size = u->size;
  size_t plen;
  const char *pat = lua_tolstring(L, lua_upvalueindex(2), &plen);
  mr_readop op = { .kind = PAT_UNTIL, .n = size, .pat = pat, .plen = plen };
  int found = 0;
  int nres = do_receive(L, s, &op, &found, until_k);
  if (nres == 1 && found) {
    if (u->inclusive) {
      lua_pushlstring(L, pat, plen);
      lua_concat(L, 2);
    }
    if (size) u->found = 1;                  /* the next call returns nil: the end */
  }
  return nres;
}

/* it([size]) → data, or nil (the pattern was reached, with a size), or nil, err, partial */
static int until_iter(lua_State *L) {
  mr_socket *s = lua_touserdata(L, lua_upvalueindex(1));
  until_state *u = lua_touserdata(L, lua_upvalueindex(3));
  lua_Integer size = luaL_optinteger(L, 1, 0);
  luaL_argcheck(L, size >= 0, 1, "expected a size >= 0");
  if (u->found) {
    u->found = 0;
    lua_pushnil(L);
    return 1;
  }
  lua_settop(L, 0);
  u->size = (size_t)size;
  return until_finish(L, s, u);
}

/* sock:receiveuntil(pattern [, { inclusive = bool }]) → iterator */
static int l_receiveuntil(lua_State *L) {
  sock_check(L);
  size_t plen;
  luaL_checklstring(L, 2, &plen);
  luaL_argcheck(L, plen > 0, 2, "expected a non-empty pattern");
  int inclusive = 0;
  if (lua_istable(L, 3)) {
    lua_getfield(L, 3, "inclusive");
    inclusive = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  lua_settop(L, 2);
  until_state *u = lua_newuserdatauv(L, sizeof *u, 0);
  *u = (until_state){.inclusive = inclusive};
  lua_pushcclosure(L, until_iter, 3);
  return 1;
}

/* ---- send ------------------------------------------------------------- */

/* The bytes of `v` at idx (a string, a number, or an array of those,
 * nested): data_size measures and checks it, data_copy then copies it out
 * and cannot fail. Raw access only: no metamethod runs. */
static size_t data_size(lua_State *L, int idx, int depth) {
  int t = lua_type(L, idx);
  if (t == LUA_TSTRING || t == LUA_TNUMBER) {
    size_t n;
    lua_tolstring(L, idx, &n);               /* idx is a copy on the stack, or the argument */
    return n;
  }
  if (t != LUA_TTABLE || depth > 32)
    return (size_t)luaL_error(L, "bad argument #1 to 'send' (expected a string, number or "
                                 "array of them, got %s)",
                              depth > 32 ? "tables nested too deep" : luaL_typename(L, idx));
  size_t total = 0, n = lua_rawlen(L, idx);
  for (size_t i = 1; i <= n; i++) {
    lua_rawgeti(L, idx, (lua_Integer)i);
    total += data_size(L, lua_gettop(L), depth + 1);
    lua_pop(L, 1);
  }
  return total;
}

static char *data_copy(lua_State *L, int idx, char *p, char *end) {
  if (lua_type(L, idx) != LUA_TTABLE) {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    if (!s) return p;                        /* changed since measured (a finalizer): not ours */
    if (n > (size_t)(end - p)) n = (size_t)(end - p);
    memcpy(p, s, n);
    return p + n;
  }
  size_t n = lua_rawlen(L, idx);
  for (size_t i = 1; i <= n && p < end; i++) {
    lua_rawgeti(L, idx, (lua_Integer)i);
    p = data_copy(L, lua_gettop(L), p, end);
    lua_pop(L, 1);
  }
  return p;
}

static void write_cb(uv_write_t *req, int status) {
  mr_link *k = req->data;
  free(k->wcopy);
  k->wcopy = NULL;
  if (k->flags & L_CLOSING) return;
  uv_timer_stop(&k->wtimer);
  k->werr = status;
  mr_task *t = k->writer;
  k->writer = NULL;
  if (t) task_wake(t, 0);
}

void link_wtimer_cb(uv_timer_t *tm) {
  mr_link *k = tm->data;
  k->flags |= L_WTIMEDOUT;
  mr_task *t = k->writer;
  k->writer = NULL;
  if (t) task_wake(t, 0);
}

int link_send(mr_link *k, const char *p, size_t len, char *block) {
  uv_buf_t buf = uv_buf_init((char *)p, (unsigned)len);
  int n = uv_try_write(&k->h.stream, &buf, 1);
  if (n == (int)len || (n < 0 && n != UV_EAGAIN)) {
    free(block);
    if (n < 0) link_close(k);
    return n < 0 ? n : 1;
  }
  size_t done = n > 0 ? (size_t)n : 0;
  if (!block) {
    block = malloc(len - done);
    if (!block) {
      link_close(k);
      return UV_ENOMEM;
    }
    memcpy(block, p + done, len - done);
    buf = uv_buf_init(block, (unsigned)(len - done));
  } else {
    buf = uv_buf_init(block + done, (unsigned)(len - done));
  }
  k->wcopy = block;
  k->wreq.data = k;
  k->werr = 0;
  int rc = uv_write(&k->wreq, &k->h.stream, &buf, 1, write_cb);
  if (rc < 0) {
    free(k->wcopy);
    k->wcopy = NULL;
    link_close(k);
    return rc;
  }
  return 0;
}

int link_send_done(mr_link *k) {
  if (k->flags & L_WTIMEDOUT) {
    link_close(k);                           /* the write in flight cannot be taken back */
    return UV_ETIMEDOUT;
  }
  int err = k->werr;
  if (err) link_close(k);
  return err;
}

const char *link_error(int err) { return err == UV_ETIMEDOUT ? "timeout" : uv_strerror(err); }

static int send_k(lua_State *L, int status, lua_KContext ctx) {
  mr_socket *s = sock_check(L);
  if (task_woke_cancelled(L)) return task_raise_cancelled(L);
  if (!sock_same_link(s, ctx)) return sock_fail(L, "closed");
  mr_link *k = s->link;
  int err = link_send_done(k);
  if (err) return sock_fail(L, link_error(err));
  lua_pushinteger(L, (lua_Integer)k->wlen);
  return 1;
}

/* sock:send(data) → bytes sent, or nil, err. Parks until the kernel took
 * everything: the peer's pace is the sender's. */
static int l_send(lua_State *L) {
  mr_socket *s = sock_check(L);
  luaL_checkany(L, 2);
  size_t len;
  const char *p = NULL;
  if (lua_type(L, 2) == LUA_TSTRING) p = lua_tolstring(L, 2, &len);
  else len = data_size(L, 2, 0);
  mr_link *k = s->link;
  if (!k || !(k->flags & L_CONNECTED)) return sock_fail(L, "closed");
  if (k->writer || k->wcopy) return sock_fail(L, "socket busy writing");   /* wcopy: a write in flight */
  mr_task *t = task_check(L, "send");
  task_check_yieldable(L, "send");
  if (!len) {
    lua_pushinteger(L, 0);
    return 1;
  }
  if (len > UINT32_MAX) return luaL_error(L, "send: more than 4 GiB in one call");
  char *block = NULL;                        /* ours when data was not one string */
  if (!p) {
    block = malloc(len);
    if (!block) return luaL_error(L, "send: out of memory");
    len = (size_t)(data_copy(L, 2, block, block + len) - block);
    p = block;
  }
  int rc = link_send(k, p, len, block);
  if (rc < 0) return sock_fail(L, uv_strerror(rc));
  if (rc == 1) {
    lua_pushinteger(L, (lua_Integer)len);
    return 1;
  }
  k->writer = t;
  k->wlen = len;
  sock_arm(&k->wtimer, s->st, link_wtimer_cb);
  lua_settop(L, 1);
  return task_park(L, t, WAIT_SOCKET, link_wait_cancel, k, send_k, (lua_KContext)s->epoch);
}

const luaL_Reg sockio_methods[] = {
  {"receive", l_receive},
  {"receiveany", l_receiveany},
  {"receiveuntil", l_receiveuntil},
  {"send", l_send},
  {NULL, NULL},
};
