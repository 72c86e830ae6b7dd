/* request.c — what a request is to the rest of the bridge: the pool of
 * mr_request structs (reused, never left to Lua's GC), their handles (slot +
 * generation, so a stale one is refused), and ownership: a request is
 * released when its count of owners (HTTP, its main task, each spawned task)
 * drops to zero. Where HTTP hands requests to Lua is exchange.c. */
#include "request.h"
#include "pool.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the pool --------------------------------------------------------- */

static mr_pool pool = { .size = sizeof(mr_request) };

mr_request *request_alloc(void) {
  uint32_t slot;
  mr_request *r = pool_take(&pool, &slot);
  uint32_t gen = r->gen;
  mr_buf body = r->body;                     /* keep its buffer across requests */
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

void request_unref(mr_request *r) {
  if (--r->refs > 0) return;
  r->live = 0;
  r->gen++;
  if (r->links) socket_request_done(r);
  if (r->on_close_ref != LUA_NOREF) {
    luaL_unref(mr_srv.L, LUA_REGISTRYINDEX, r->on_close_ref);
    r->on_close_ref = LUA_NOREF;
  }
  if (r->body.cap > 16 * MR_KIB) mr_buf_free(&r->body);   /* keep small buffers */
  pool_give(&pool, r->slot);
}

static void free_body(void *item) { mr_buf_free(&((mr_request *)item)->body); }

void request_pool_free(void) { pool_free(&pool, free_body); }

lua_Integer request_handle(const mr_request *r) {
  return (lua_Integer)(((uint64_t)r->gen << 32) | r->slot);
}

mr_request *request_from_handle(lua_Integer h) {
  mr_request *r = pool_at(&pool, (uint32_t)((uint64_t)h & 0xffffffffu));
  return r && r->live && r->gen == (uint32_t)((uint64_t)h >> 32) ? r : NULL;
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
  request_unref(r);
}

/* Pushes req.route of r, read from the req local of serve's frame (the
 * outermost of the main coroutine) while that coroutine is still there. */
static void push_route(lua_State *L, mr_request *r) {
  lua_State *co = r->main.co;
  lua_Debug ar;
  int level = 0;
  const char *name = NULL;
  if (co && lua_getstack(co, 0, &ar)) {
    /* the deepest level, in O(log n) probes: each lua_getstack walks the
     * frames from the top, and a stack overflow leaves ~200000 of them */
    int lo = 0, hi = 1;
    while (lua_getstack(co, hi, &ar)) lo = hi, hi *= 2;
    while (hi - lo > 1) {
      int mid = lo + (hi - lo) / 2;
      if (lua_getstack(co, mid, &ar)) lo = mid; else hi = mid;
    }
    level = lo;
    if (lua_getstack(co, level, &ar)) name = lua_getlocal(co, &ar, 2);
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

