/* body.c — req.body, the request body reader. Bytes arrive from HTTP into the
 * request's buffer (body_received) and wait there for a reader; a task that
 * reads before they arrive parks in the request's reader queue. The reader
 * is a small userdata holding the request's handle, so a reader kept past its
 * request answers nil, "closed" instead of reaching freed memory. */
#include "request.h"

#define BODY_MT "moonring.body"

typedef struct mr_body {
  lua_Integer handle;
} mr_body;

static const void *body_mt;                     /* compared by address */

static mr_body *body_check(lua_State *L, int idx) { return check_udata(L, idx, body_mt, BODY_MT); }

void body_push_reader(lua_State *L, mr_request *r) {
  mr_body *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->handle = request_handle(r);
  luaL_setmetatable(L, BODY_MT);
}

static void wake_readers(mr_request *r) {
  while (r->readers.head) {
    mr_wnode *n = r->readers.head;
    waitq_remove(n);
    task_wake(n->task, 0);                 /* the read starts over and finds what is there */
  }
}

void body_received(mr_request *r, const char *p, size_t n) {
  if (n) mr_buf_append(&r->body, p, n);
  wake_readers(r);
}

void body_wake_all(mr_request *r) { wake_readers(r); }

static void unqueue(mr_task *t) {
  mr_request *r = t->wait_data;
  waitq_remove(&t->node);
  if (!r->readers.head) http_body_unwait(&r->ex);   /* nobody waits for the body now */
}

static int closed(lua_State *L, const char *why) {
  lua_pushnil(L);
  lua_pushstring(L, why);
  return 2;
}

/* req.body:read() → next chunk or nil at the end;
 * req.body:read("a") → the rest as one string ("" when nothing is left). */
static int read_k(lua_State *L, int status, lua_KContext all);

static int read_now(lua_State *L, int all) {
  mr_body *b = body_check(L, 1);
  mr_request *r = request_from_handle(b->handle);
  if (!r) return closed(L, "closed");        /* the request is over */
  mr_exchange *ex = &r->ex;
  if (r->body.len && (!all || (ex->flags & EX_BODY_DONE))) {
    lua_pushlstring(L, r->body.data, r->body.len);
    r->body.len = 0;
    return 1;
  }
  if (ex->flags & EX_BODY_DONE) {
    if (all) lua_pushliteral(L, "");
    else lua_pushnil(L);
    return 1;
  }
  if (!ex->http) return closed(L, "closed");
  mr_task *t = task_check(L, "req.body:read()");
  if (t->flags & TF_CANCELLED) return closed(L, "cancelled");
  task_check_yieldable(L, "req.body:read()");
  http_continue(ex);
  if (!ex->http) return closed(L, "closed");
  if (ex->flags & EX_HEAD_SENT) http_body_wait(ex);
  t->node.task = t;
  t->node.co = L;
  waitq_push(&r->readers, &t->node);
  return task_park(L, t, WAIT_BODY, unqueue, r, read_k, all);
}

static int read_k(lua_State *L, int status, lua_KContext all) {
  if (task_woke_cancelled(L)) return closed(L, "cancelled");
  return read_now(L, (int)all);
}

static int body_read(lua_State *L) {
  body_check(L, 1);
  int all = 0;
  if (!lua_isnoneornil(L, 2)) {
    const char *fmt = luaL_checkstring(L, 2);
    if (fmt[0] == '*') fmt++;
    if (fmt[0] != 'a') return luaL_argerror(L, 2, "expected \"a\" or nothing");
    all = 1;
  }
  lua_settop(L, 1);
  return read_now(L, all);
}

static int body_tostring(lua_State *L) {
  mr_body *b = body_check(L, 1);
  lua_pushfstring(L, "moonring.body (request %d)", (int)(b->handle & 0xffffffff));
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

void body_open(lua_State *L) {
  luaL_newmetatable(L, BODY_MT);
  body_mt = lua_topointer(L, -1);            /* anchored in the registry */
  luaL_setfuncs(L, body_meta, 0);
  luaL_newlib(L, body_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}
