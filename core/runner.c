/* runner.c — the coroutine runner. Each request's coroutine runs
 * serve(app, req, handle); it parks inside primitives (runner_park) and is
 * resumed from libuv callbacks (runner_wake). runner_resume is the one place
 * that interprets a resume: parked, finished, or failed. */
#include "runner.h"
#include <lauxlib.h>
#include <string.h>

/* Finished coroutines are kept for reuse: a new thread costs a stack and a
 * CallInfo chain to allocate and, later, to collect. Only coroutines that
 * returned normally are reused (their stack is empty); failed or cancelled
 * ones are left to the GC. The pool table (registry) anchors them. */
#define POOL_MAX 256
static int pool_ref = LUA_NOREF;
static int pool_len;

lua_State *runner_thread(lua_State *L) {
  if (pool_len) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, pool_ref);
    lua_rawgeti(L, -1, pool_len);
    lua_pushnil(L);
    lua_rawseti(L, -3, pool_len--);
    lua_remove(L, -2);
    return lua_tothread(L, -1);
  }
  return lua_newthread(L);
}

static void pool_put(lua_State *co) {
  lua_State *L = mr_srv.L;
  if (pool_len >= POOL_MAX || lua_status(co) != LUA_OK || lua_gettop(co) != 0) return;
  if (pool_ref == LUA_NOREF) {
    lua_createtable(L, POOL_MAX, 0);
    pool_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, pool_ref);
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  lua_rawseti(L, -2, ++pool_len);
  lua_pop(L, 1);
}

mr_request *runner_current(lua_State *L) {
  return *(mr_request **)lua_getextraspace(L);
}

int runner_park(lua_State *L, mr_request *r, int wait, void (*cancel)(mr_request *),
                void *data, lua_KFunction k, lua_KContext ctx) {
  r->wait = (uint8_t)wait;
  r->wait_cancel = cancel;
  r->wait_data = data;
  /* The deadline costs nothing for handlers that answer without waiting. */
  if (r->conn && !(r->flags & REQ_HEAD_SENT)) conn_start_deadline(r->conn);
  return lua_yieldk(L, 0, ctx, k);
}

void runner_wake(mr_request *r, int nargs) {
  r->wait = WAIT_NONE;
  r->wait_cancel = NULL;
  r->wait_data = NULL;
  runner_resume(r, nargs);
}

/* The coroutine will not run again: hand the request back to its owner. */
static void ended(mr_request *r) {
  if (r->co) *(mr_request **)lua_getextraspace(r->co) = NULL;
  r->flags |= REQ_ENDED;
  r->co = NULL;
  if (r->conn) conn_request_ended(r->conn);
  else request_release(r);
}

void runner_cancel(mr_request *r) {
  if (r->flags & REQ_ENDED) return;
  if (r->flags & REQ_RUNNING) {
    r->flags |= REQ_CANCEL;                  /* acted on when it next parks */
    return;
  }
  if (r->wait_cancel) r->wait_cancel(r);
  r->wait = WAIT_NONE;
  r->wait_cancel = NULL;
  *(mr_request **)lua_getextraspace(r->co) = NULL;
  lua_resetthread(r->co);                    /* closes pending to-be-closed variables */
  r->flags |= REQ_ENDED;
  r->co = NULL;
}

static void push_route(lua_State *L, mr_request *r) {
  request_push(L, r);
  lua_getiuservalue(L, -1, 2);
  lua_getfield(L, -1, "route");
  lua_replace(L, -3);
  lua_pop(L, 1);
}

/* A handler error or a bad response: log once with a traceback; answer 500
 * if nothing was sent yet, else abort so the client sees a cut body. */
static void failed(mr_request *r, lua_State *co) {
  lua_State *L = mr_srv.L;
  const char *msg = luaL_tolstring(co, -1, NULL);
  luaL_traceback(L, co, msg, 0);
  const char *trace = lua_tostring(L, -1);
  push_route(L, r);
  const char *route = lua_tostring(L, -1);
  const char *method = "-", *target = "";
  int tlen = 0;
  if (r->conn && r->conn->ps) {
    method = llhttp_method_name(llhttp_get_method(&r->conn->parser));
    target = r->conn->ps->bytes.data;
    tlen = (int)r->conn->ps->target_len;
  }
  log_error("request %llu %s %.*s (route %s): %s", (unsigned long long)r->id, method, tlen,
            target, route ? route : "-", trace);
  mr_conn *c = r->conn;
  if (c && !(r->flags & REQ_HEAD_SENT)) {
    r->status = 500;
    r->flags |= REQ_HEAD_SENT | REQ_RESP_DONE;
    response_simple(c, 500, mr_srv.cfg.dev ? trace : "Internal Server Error\n", r->flags);
  } else if (c) {
    r->flags &= ~REQ_KEEP_ALIVE;
    conn_close(c, CONN_CLOSE_RESET);                        /* detaches r */
  }
  lua_pop(L, 2);
}

void runner_resume(mr_request *r, int nargs) {
  lua_State *co = r->co;
  int nres = 0;
  r->flags |= REQ_RUNNING;
  int status = lua_resume(co, mr_srv.L, nargs, &nres);
  r->flags &= ~REQ_RUNNING;
  if (status == LUA_YIELD) {
    lua_pop(co, nres);
    if (r->wait != WAIT_NONE) {
      if (r->flags & REQ_CANCEL) {
        runner_cancel(r);
        ended(r);
      }
      return;
    }
    lua_pushliteral(co, "a handler yielded outside a moonring primitive "
                        "(coroutine.yield at the top of a request?)");
    status = LUA_ERRRUN;
  }
  if (status != LUA_OK) failed(r, co);
  else pool_put(co);
  ended(r);
}
