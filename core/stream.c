/* stream.c — writing a streamed response body: chunk framing, backpressure
 * and the end of the body. Every write is bounded: a writer parks while more
 * than --write-buffer bytes wait for the client, and is woken when the
 * backlog drops to a quarter of that (the request's drainers queue). The
 * writer handed to stream bodies (`out`) is a userdata holding the request's
 * handle, so one kept past its request answers nil, "closed". serve drives
 * iterator bodies through write/finish with the handle itself. */
#include "request.h"

#define OUT_MT "moonring.out"

typedef struct mr_out {
  lua_Integer handle;
} mr_out;

static const void *out_mt;                      /* compared by address */

static mr_out *check_out(lua_State *L) { return check_udata(L, 1, out_mt, OUT_MT); }

static int closed(lua_State *L, const char *why) {
  lua_pushnil(L);
  lua_pushstring(L, why);
  return 2;
}

static void wake_drainers(mr_request *r) {
  while (r->drainers.head) {
    mr_wnode *n = r->drainers.head;
    waitq_remove(n);
    task_wake(n->task, 0);
  }
}

void stream_drained(mr_request *r) {
  if (r->drainers.head && http_queued(&r->ex) <= mr_srv.cfg.write_buffer / 4) wake_drainers(r);
}

void stream_wake_all(mr_request *r) { wake_drainers(r); }

static void unqueue(mr_task *t) { waitq_remove(&t->node); }

static int write_k(lua_State *L, int status, lua_KContext handle) {
  if (task_woke_cancelled(L)) return closed(L, "cancelled");
  mr_request *r = request_from_handle((lua_Integer)handle);
  if (!r || !r->ex.http) return closed(L, "closed");
  lua_pushboolean(L, 1);
  return 1;
}

lua_Integer stream_out_handle(lua_State *L, int idx) {
  return ((mr_out *)check_udata(L, idx, out_mt, OUT_MT))->handle;
}

int stream_park_drain(lua_State *L, mr_request *r, lua_KFunction k, lua_KContext ctx) {
  mr_task *t = task_current(L);
  t->node = (mr_wnode){.task = t, .co = L};
  waitq_push(&r->drainers, &t->node);
  return task_park(L, t, WAIT_DRAIN, unqueue, r, k, ctx);
}

/* Queues one chunk of r's body (chunk framing when chunked). Returns 0, or
 * -1 when the write failed: the client is gone. */
static int put_chunk(mr_request *r, const char *s, size_t len) {
  mr_exchange *ex = &r->ex;
  char size[24];
  uv_buf_t bufs[3];
  unsigned n = 0;
  if (ex->flags & EX_CHUNKED) {
    /* the size line in hex, written backwards (no snprintf per chunk) */
    int i = sizeof size;
    size[--i] = '\n';
    size[--i] = '\r';
    size_t v = len;
    do size[--i] = "0123456789abcdef"[v & 15]; while ((v >>= 4) && i > 0);
    bufs[n++] = uv_buf_init(size + i, (unsigned)(sizeof size - (size_t)i));
    bufs[n].base = (char *)s;                 /* not uv_buf_init: lengths over 4 GiB */
    bufs[n++].len = len;
    bufs[n++] = uv_buf_init("\r\n", 2);
  } else {
    bufs[n].base = (char *)s;
    bufs[n++].len = len;
  }
  http_write(ex, bufs, n);
  ex->bytes_out += len;
  task_note_output(len);
  return ex->http ? 0 : -1;
}

/* Writes the string at `idx` as the next piece of r's body. Returns true,
 * or nil, "closed" once the client is gone; parks first while the client is
 * slower than the producer. */
static int write_chunk(lua_State *L, mr_request *r, int idx) {
  mr_exchange *ex = &r->ex;
  size_t len;
  const char *s = lua_tolstring(L, idx, &len);
  if (!ex->http || (ex->flags & EX_RESP_DONE)) return closed(L, "closed");
  if (!(ex->flags & EX_HEAD_SENT)) return luaL_error(L, "write before the response head was sent");
  mr_task *t = task_current(L);
  if (len) {
    if (t && t->req == r) t->flags |= TF_WROTE;
    if (put_chunk(r, s, len) < 0) return closed(L, "closed");
  }
  if (t && task_can_yield(L)) {
    int full = http_queued(ex) > mr_srv.cfg.write_buffer;
    if ((t->flags & TF_CANCELLED) && (full || task_output_heavy())) return closed(L, "cancelled");
    if (full) return stream_park_drain(L, r, write_k, (lua_KContext)request_handle(r));
    /* a fast client never makes it wait: after enough output, the others
     * get their turn anyway */
    if (task_output_heavy()) return task_yield_turn(L, t, write_k, (lua_KContext)request_handle(r));
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* Ends r's body: the terminating chunk, and the response is complete. */
static void finish_body(mr_request *r) {
  mr_exchange *ex = &r->ex;
  if (ex->flags & EX_RESP_DONE) return;
  ex->flags |= EX_RESP_DONE;
  if (ex->http && (ex->flags & EX_CHUNKED)) {
    uv_buf_t b = uv_buf_init("0\r\n\r\n", 5);
    http_write(ex, &b, 1);
  }
}

/* write(handle, chunk) → true, or false once the client is gone: for
 * iterator bodies, driven by serve. */
static int l_write(lua_State *L) {
  mr_request *r = request_from_handle(luaL_checkinteger(L, 1));
  if (lua_type(L, 2) != LUA_TSTRING) {
    lua_pushfstring(L, "bad response: the body produced a %s, expected a string",
                    luaL_typename(L, 2));
    return lua_error(L);
  }
  if (!r) return closed(L, "closed");
  return write_chunk(L, r, 2);
}

/* finish(handle): the streamed body is complete. */
static int l_finish(lua_State *L) {
  mr_request *r = request_from_handle(luaL_checkinteger(L, 1));
  if (r) finish_body(r);
  return 0;
}

/* writer(handle) → out, the writer handed to stream bodies. */
static int l_writer(lua_State *L) {
  lua_Integer h = luaL_checkinteger(L, 1);
  mr_out *o = lua_newuserdatauv(L, sizeof *o, 0);
  o->handle = h;
  luaL_setmetatable(L, OUT_MT);
  return 1;
}

/* out:write(s) → true, or nil, "closed" once the client is gone. */
static int out_write(lua_State *L) {
  mr_out *o = check_out(L);
  luaL_checklstring(L, 2, NULL);
  mr_request *r = request_from_handle(o->handle);
  if (!r) return closed(L, "closed");
  return write_chunk(L, r, 2);
}

/* out:try_write(s) → true; false, "full" (nothing written) while more than
 * --write-buffer bytes wait for this client; nil, "closed" once it is gone.
 * Never waits: for one task writing to many clients (fan-out), where a slow
 * one must not hold up the rest. */
static int out_try_write(lua_State *L) {
  mr_out *o = check_out(L);
  size_t len;
  const char *s = luaL_checklstring(L, 2, &len);
  mr_request *r = request_from_handle(o->handle);
  if (!r || !r->ex.http || (r->ex.flags & EX_RESP_DONE)) return closed(L, "closed");
  if (http_queued(&r->ex) > mr_srv.cfg.write_buffer) {
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "full");
    return 2;
  }
  if (len && put_chunk(r, s, len) < 0) return closed(L, "closed");
  lua_pushboolean(L, 1);
  return 1;
}

/* out:close(): ends the body (also done when the body function returns). */
static int out_close(lua_State *L) {
  mr_out *o = check_out(L);
  mr_request *r = request_from_handle(o->handle);
  if (r) finish_body(r);
  return 0;
}

/* out:closed() → true once nothing more can be written (client gone, or
 * the body ended). */
static int out_closed(lua_State *L) {
  mr_out *o = check_out(L);
  mr_request *r = request_from_handle(o->handle);
  lua_pushboolean(L, !r || !r->ex.http || (r->ex.flags & EX_RESP_DONE));
  return 1;
}

static int out_tostring(lua_State *L) {
  mr_out *o = check_out(L);
  lua_pushfstring(L, "moonring.out (request %d)", (int)(o->handle & 0xffffffff));
  return 1;
}

static const luaL_Reg out_methods[] = {
  {"write", out_write},
  {"try_write", out_try_write},
  {"close", out_close},
  {"closed", out_closed},
  {NULL, NULL},
};

const luaL_Reg stream_funcs[] = {
  {"write", l_write},
  {"finish", l_finish},
  {"writer", l_writer},
  {NULL, NULL},
};

void stream_open(lua_State *L) {
  luaL_newmetatable(L, OUT_MT);
  out_mt = lua_topointer(L, -1);             /* anchored in the registry */
  lua_pushcfunction(L, out_tostring);
  lua_setfield(L, -2, "__tostring");
  luaL_newlib(L, out_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}
