/* runner.c — the coroutine runner. Each request's coroutine runs
 * serve(app, req, handle); it parks inside primitives (runner_park) and is
 * resumed from libuv callbacks (runner_wake). runner_resume is the one place
 * that interprets a resume: parked, finished, or failed. */
#include "runner.h"
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Coroutines live in one registry table for good and are lent to requests
 * by slot, so a running coroutine is anchored without any per-request
 * bookkeeping in Lua. A coroutine that returned normally is reused (its
 * stack is empty); a failed or cancelled one is dropped from its slot and the
 * slot refilled when next lent. At most POOL_MAX idle coroutines are kept. */
#define POOL_MAX 256
static int threads_ref = LUA_NOREF;
static lua_State **threads;                 /* by slot; NULL = empty slot */
static int *ready, *empty;                  /* idle slots with / without a coroutine */
static int nthreads, cap, nready, nempty;

static void threads_grow(void) {
  int c = cap ? cap * 2 : 256;
  lua_State **t = realloc(threads, sizeof *t * (size_t)(c + 1));
  int *r = t ? realloc(ready, sizeof *r * (size_t)c) : NULL;
  int *e = r ? realloc(empty, sizeof *e * (size_t)c) : NULL;
  if (t) threads = t;
  if (r) ready = r;
  if (!t || !r || !e) { fputs("moonring: out of memory\n", stderr); abort(); }
  empty = e;
  cap = c;
}

static void set_slot(int i, int make) {
  lua_State *L = mr_srv.L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, threads_ref);
  if (make) threads[i] = lua_newthread(L);
  else { lua_pushnil(L); threads[i] = NULL; }
  lua_rawseti(L, -2, i);
  lua_pop(L, 1);
}

lua_State *runner_take(mr_request *r) {
  int i;
  if (nready) {
    i = ready[--nready];
  } else {
    if (nempty) {
      i = empty[--nempty];
    } else {
      if (threads_ref == LUA_NOREF) {
        lua_newtable(mr_srv.L);
        threads_ref = luaL_ref(mr_srv.L, LUA_REGISTRYINDEX);
      }
      if (nthreads == cap) threads_grow();
      i = ++nthreads;
    }
    set_slot(i, 1);
  }
  r->thread = i;
  r->co = threads[i];
  *(mr_request **)lua_getextraspace(r->co) = r;
  return r->co;
}

/* The coroutine of r is done; `reusable` when it returned normally. */
static void give_back(mr_request *r, int reusable) {
  if (!r->co) return;                        /* already given back (cancelled) */
  int i = r->thread;
  *(mr_request **)lua_getextraspace(threads[i]) = NULL;
  if (reusable && nready < POOL_MAX && lua_gettop(threads[i]) == 0) {
    ready[nready++] = i;
  } else {
    set_slot(i, 0);
    empty[nempty++] = i;
  }
  r->co = NULL;
}

void runner_free(void) {
  free(threads);
  free(ready);
  free(empty);
  threads = NULL;
  ready = empty = NULL;
  nthreads = cap = nready = nempty = 0;
  threads_ref = LUA_NOREF;
}

mr_request *runner_current(lua_State *L) {
  return *(mr_request **)lua_getextraspace(L);
}

void runner_check_yieldable(lua_State *L, const char *what) {
  if (!lua_isyieldable(L))
    luaL_error(L, "%s cannot wait here (inside a metamethod, an iterator of a C "
                  "function such as table.sort or string.gsub, or a __close handler)", what);
}

int runner_park(lua_State *L, mr_request *r, int wait, void (*cancel)(mr_request *),
                void *data, lua_KFunction k, lua_KContext ctx) {
  r->wait = (uint8_t)wait;
  r->wait_cancel = cancel;
  r->wait_data = data;
  /* The deadline costs nothing for handlers that answer without waiting. */
  if (r->conn && !(r->flags & REQ_HEAD_SENT)) conn_start_deadline(r->conn);
  else if (r->conn && wait == WAIT_BODY) conn_start_body_wait(r->conn);
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
  r->flags |= REQ_ENDED;
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
  lua_resetthread(r->co);                    /* closes pending to-be-closed variables */
  give_back(r, 0);
  r->flags |= REQ_ENDED;
}

/* Pushes req.route of the failed request: req is the second argument of
 * serve, the coroutine's outermost frame (the stack is not unwound after an
 * error, so the frame is still there). */
static void push_route(lua_State *L, lua_State *co) {
  lua_Debug ar;
  int level = 0;
  while (lua_getstack(co, level + 1, &ar)) level++;
  if (lua_getstack(co, level, &ar) && lua_getlocal(co, &ar, 2)) {
    if (lua_istable(co, -1)) {
      lua_pushliteral(co, "route");
      lua_rawget(co, -2);                    /* raw: no metamethod can fail here */
    } else {
      lua_pushnil(co);
    }
    lua_xmove(co, L, 1);
    lua_pop(co, 1);
  } else {
    lua_pushnil(L);
  }
}

/* A handler error or a bad response: log once with a traceback; answer 500
 * if nothing was sent yet, else abort so the client sees a cut body. */
/* The error object as text, under a protected call: its __tostring may
 * itself fail, and an unprotected error here would abort the process. */
static int error_text(lua_State *L) {
  luaL_tolstring(L, 1, NULL);
  return 1;
}

static const char *push_error_text(lua_State *L, lua_State *co) {
  lua_pushcfunction(L, error_text);
  lua_pushvalue(co, -1);
  lua_xmove(co, L, 1);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK || !lua_isstring(L, -1)) {
    lua_pop(L, 1);
    lua_pushfstring(L, "(error object is a %s value)", luaL_typename(co, -1));
  }
  return lua_tostring(L, -1);
}

static void failed(mr_request *r, lua_State *co) {
  lua_State *L = mr_srv.L;
  const char *msg = push_error_text(L, co);
  luaL_traceback(L, co, msg, 0);
  lua_remove(L, -2);
  const char *trace = lua_tostring(L, -1);
  push_route(L, co);
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
    /* a cut body must look cut; a complete one is let out (detaches r) */
    conn_close(c, (r->flags & REQ_RESP_DONE) ? CONN_CLOSE_GRACEFUL : CONN_CLOSE_RESET);
  }
  lua_pop(L, 2);
}

void runner_resume(mr_request *r, int nargs) {
  lua_State *co = r->co;
  if (!co) return;                           /* ended meanwhile: nothing to resume */
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
  if (status != LUA_OK) {
    failed(r, co);
    if (r->co) lua_resetthread(co);          /* runs pending __close handlers */
  } else {
    lua_settop(co, 0);
  }
  give_back(r, status == LUA_OK);
  ended(r);
}
