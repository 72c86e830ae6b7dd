/* spawn.c — tasks made from Lua: moonring.spawn(fn, ...) (owned by the
 * request of the task that spawns it, or by the server outside requests) and
 * moonring.background(fn, ...) (always the server's), with task:join() and
 * task:cancel(). The mr_task structs live in a C pool named to Lua by slot
 * and generation, held in a small userdata. A struct is freed once both the
 * scheduler (ops->release) and the userdata (__gc) are done with it; until
 * then it keeps the task's results, or its error, for join().
 *
 * An uncaught error in a spawned task is its result: join() returns nil and
 * the error. Nobody waiting to join it when it fails, it is logged at once
 * (a later join still gets it). A task that wrote part of its request's
 * response body and then fails cuts the connection, as the main task would. */
#include "request.h"
#include "pool.h"
#include <stdlib.h>

#define TASK_MT "moonring.task"

typedef struct mr_taskref {
  uint32_t slot, gen;
} mr_taskref;

static const mr_task_ops spawn_ops;

/* ---- the pool --------------------------------------------------------- */

static mr_pool pool = { .size = sizeof(mr_task) };

static mr_task *task_alloc(void) {
  uint32_t slot;
  mr_task *t = pool_take(&pool, &slot);
  uint32_t gen = t->gen;
  memset(t, 0, sizeof *t);
  t->slot = slot;
  t->gen = gen;
  t->ops = &spawn_ops;
  t->results_ref = LUA_NOREF;
  t->note_ref = LUA_NOREF;
  t->state = TASK_NEW;
  return t;
}

static void task_free(mr_task *t) {
  if (t->results_ref != LUA_NOREF) {
    luaL_unref(mr_srv.L, LUA_REGISTRYINDEX, t->results_ref);
    t->results_ref = LUA_NOREF;
  }
  t->gen++;
  t->state = TASK_DONE;
  t->co = NULL;
  pool_give(&pool, t->slot);
}

static mr_task *from_ref(const mr_taskref *ref) {
  mr_task *t = pool_at(&pool, ref->slot);
  return t && t->gen == ref->gen ? t : NULL;
}

static mr_task *check_task(lua_State *L, int idx) {
  mr_task *t = from_ref(luaL_checkudata(L, idx, TASK_MT));
  if (!t) luaL_argerror(L, idx, "stale task");
  return t;
}

void spawn_pool_free(void) { pool_free(&pool, NULL); }

void spawn_cancel_all(void) {
  for (uint32_t i = 0; i < pool.n; i++) {
    mr_task *t = pool.items[i];
    if (t->co) task_cancel(t);
  }
}

/* ---- the end of a spawned task ---------------------------------------- */

/* Pushes the kept results onto co as join returns them: the function's
 * results, or nil and the error. Returns how many. */
static int push_results(mr_task *t, lua_State *co) {
  lua_rawgeti(co, LUA_REGISTRYINDEX, t->results_ref);
  lua_getfield(co, -1, "n");
  int n = (int)lua_tointeger(co, -1);
  lua_pop(co, 1);
  lua_checkstack(co, n + 2);
  int ok = lua_rawgeti(co, -1, 1) == LUA_TBOOLEAN && lua_toboolean(co, -1);
  lua_pop(co, 1);
  int base = lua_gettop(co);
  if (!ok) lua_pushnil(co);
  for (int i = 1; i <= n; i++) lua_rawgeti(co, base, i + 1);
  lua_remove(co, base);
  return ok ? n : n + 1;
}

/* Keeps {ok, v1..vn, n = n} from the top n values of t->co (popped). */
static void keep_results(mr_task *t, int ok, int n) {
  lua_State *co = t->co;
  lua_createtable(co, n + 1, 1);
  lua_insert(co, -(n + 1));
  for (int i = n; i >= 1; i--) lua_rawseti(co, -(i + 1), i + 1);   /* vi, from the top */
  lua_pushboolean(co, ok);
  lua_rawseti(co, -2, 1);
  lua_pushinteger(co, n);
  lua_setfield(co, -2, "n");
  t->results_ref = luaL_ref(co, LUA_REGISTRYINDEX);
}

static void spawn_ended(mr_task *t, int status, int nres) {
  lua_State *co = t->co, *L = mr_srv.L;
  int joined = t->joiners.head != NULL;
  if (status == LUA_OK) {
    keep_results(t, 1, nres);
  } else {
    int quiet = (t->flags & TF_CANCELLED) && task_is_cancel_error(co, -1);
    mr_request *r = t->req;
    /* It wrote part of the body: the body is cut short, which cancels its
     * joiners too, so the error is logged even if one waits. */
    int cuts = !quiet && r && (t->flags & TF_WROTE) && r->ex.http &&
               (r->ex.flags & EX_HEAD_SENT) && !(r->ex.flags & EX_RESP_DONE);
    if (!quiet && (!joined || cuts)) {
      const char *trace = task_push_failure(t, L);
      if (r) request_log_failure(r, t, trace);
      else log_error("task %u: %s", (unsigned)t->slot, trace);
      lua_pop(L, 1);
    }
    if (cuts) http_abort(&r->ex);
    lua_pushvalue(co, -1);
    keep_results(t, 0, 1);
  }
  while (t->joiners.head) {
    mr_wnode *n = t->joiners.head;
    waitq_remove(n);
    task_wake(n->task, push_results(t, n->task->co));
  }
}

static void spawn_release(mr_task *t) {
  request_disown(t);
  t->flags |= TF_RELEASED;
  if (!(t->flags & TF_OBJECT)) task_free(t);
}

static const mr_task_ops spawn_ops = { spawn_ended, spawn_release };

/* ---- Lua API ---------------------------------------------------------- */

/* A task for the function at `fidx` and the values above it (all moved). */
static mr_task *make(lua_State *L, int fidx, mr_request *owner) {
  int nargs = lua_gettop(L) - fidx;
  mr_task *t = task_alloc();
  lua_State *co = task_take_thread(t);
  lua_checkstack(co, nargs + 1);
  lua_xmove(L, co, nargs + 1);
  if (owner) request_adopt(owner, t);
  task_queue(t, nargs);
  return t;
}

static void push_object(lua_State *L, mr_task *t) {
  mr_taskref *ref = lua_newuserdatauv(L, sizeof *ref, 0);
  ref->slot = t->slot;
  ref->gen = t->gen;
  t->flags |= TF_OBJECT;
  luaL_setmetatable(L, TASK_MT);
}

void spawn_detached(lua_State *L, int nargs) {
  make(L, lua_gettop(L) - nargs, NULL);
}

static int spawn_with(lua_State *L, int detached) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  mr_task *cur = task_current(L);
  mr_request *owner = detached || !cur ? NULL : cur->req;
  mr_task *t = make(L, 1, owner);
  push_object(L, t);
  return 1;
}

/* moonring.spawn(fn, ...) → task: runs fn(...) in a task of its own, owned
 * by the current request (cancelled when it ends), or by the server. */
static int l_spawn(lua_State *L) { return spawn_with(L, 0); }

/* moonring.background(fn, ...) → task: the same, always owned by the server:
 * it outlives the request that started it. */
static int l_background(lua_State *L) { return spawn_with(L, 1); }

static int join_cancelled(lua_State *L) {
  lua_pushnil(L);
  lua_pushliteral(L, "cancelled");
  return 2;
}

static void unjoin(mr_task *t) { waitq_remove(&t->node); }

static int join_k(lua_State *L, int status, lua_KContext ctx) {
  if (task_woke_cancelled(L)) return join_cancelled(L);
  return lua_gettop(L) - 1;
}

/* task:join() → the function's results, or nil and its error. */
static int l_join(lua_State *L) {
  mr_task *t = check_task(L, 1);
  lua_settop(L, 1);
  if (t->state == TASK_DONE) return push_results(t, L);
  mr_task *cur = task_check(L, "task:join()");
  if (cur == t) return luaL_error(L, "a task cannot join itself");
  if (cur->flags & TF_CANCELLED) return join_cancelled(L);
  task_check_yieldable(L, "task:join()");
  cur->node = (mr_wnode){.task = cur, .co = L};
  waitq_push(&t->joiners, &cur->node);
  return task_park(L, cur, WAIT_JOIN, unjoin, t, join_k, 0);
}

/* task:cancel() → true if it was still running (it stops at its next wait:
 * its waits raise or return "cancelled"), false if it had ended. */
static int l_cancel(lua_State *L) {
  mr_task *t = check_task(L, 1);
  int live = t->state != TASK_DONE;
  task_cancel(t);
  lua_pushboolean(L, live);
  return 1;
}

/* task:status() → "running", "waiting", "cancelled" or "done". */
static int l_status(lua_State *L) {
  mr_task *t = check_task(L, 1);
  const char *s = t->state == TASK_DONE ? "done"
                : (t->flags & TF_CANCELLED) ? "cancelled"
                : t->state == TASK_PARKED ? "waiting" : "running";
  lua_pushstring(L, s);
  return 1;
}

static int task_gc(lua_State *L) {
  mr_task *t = from_ref(luaL_checkudata(L, 1, TASK_MT));
  if (!t) return 0;
  t->flags &= ~TF_OBJECT;
  if (t->flags & TF_RELEASED) task_free(t);
  return 0;
}

static int task_tostring(lua_State *L) {
  mr_taskref *ref = luaL_checkudata(L, 1, TASK_MT);
  lua_pushfstring(L, "moonring.task (%d)", (int)ref->slot);
  return 1;
}

static const luaL_Reg task_methods[] = {
  {"join", l_join},
  {"cancel", l_cancel},
  {"status", l_status},
  {NULL, NULL},
};

const luaL_Reg spawn_funcs[] = {
  {"spawn", l_spawn},
  {"background", l_background},
  {NULL, NULL},
};

void spawn_open(lua_State *L) {
  luaL_newmetatable(L, TASK_MT);
  lua_pushcfunction(L, task_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, task_tostring);
  lua_setfield(L, -2, "__tostring");
  luaL_newlib(L, task_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}
