/* timer.c — moonring.sleep(seconds), which parks the calling task on a libuv
 * timer, and moonring.timeout(seconds), a deadline object for select. The
 * timer is allocated apart from Lua and freed in its close callback, whether
 * it fired or the task was cancelled first. A timeout object only holds its
 * deadline; select arms a timer for it while it waits (channel.c). */
#include "request.h"
#include <math.h>
#include <stdlib.h>

#define TIMEOUT_MT "moonring.timeout"

typedef struct sleeper {
  uv_timer_t timer;
  mr_task *t;
} sleeper;

/* Seconds (fractions allowed) as whole milliseconds, rounded up. */
static uint64_t check_ms(lua_State *L, int idx) {
  lua_Number sec = luaL_checknumber(L, idx);
  luaL_argcheck(L, sec >= 0 && sec == sec, idx, "expected a number of seconds >= 0");
  double ms = ceil(sec * 1000.0);
  return ms > 1e12 ? (uint64_t)1e12 : (uint64_t)ms;
}

static void free_cb(uv_handle_t *h) { free(h->data); }

static void sleep_cb(uv_timer_t *tm) {
  sleeper *z = tm->data;
  mr_task *t = z->t;
  uv_close((uv_handle_t *)tm, free_cb);
  if (t->wait == WAIT_SLEEP && t->wait_data == z) task_wake(t, 0);
}

static void sleep_cancel(mr_task *t) {
  sleeper *z = t->wait_data;
  uv_close((uv_handle_t *)&z->timer, free_cb);
}

static int sleep_k(lua_State *L, int status, lua_KContext ctx) {
  if (task_woke_cancelled(L)) return task_raise_cancelled(L);
  return 0;
}

static int l_sleep(lua_State *L) {
  uint64_t ms = check_ms(L, 1);
  mr_task *t = task_check(L, "moonring.sleep");
  task_check_yieldable(L, "moonring.sleep");
  if (t->flags & TF_CANCELLED) return task_raise_cancelled(L);
  sleeper *z = malloc(sizeof *z);
  if (!z) return luaL_error(L, "moonring.sleep: out of memory");
  uv_timer_init(mr_srv.loop, &z->timer);
  z->timer.data = z;
  z->t = t;
  uv_update_time(mr_srv.loop);               /* from now: Lua may have run a while this turn */
  if (uv_timer_start(&z->timer, sleep_cb, ms, 0) < 0) {
    uv_close((uv_handle_t *)&z->timer, free_cb);
    return luaL_error(L, "moonring.sleep: cannot start a timer");
  }
  return task_park(L, t, WAIT_SLEEP, sleep_cancel, z, sleep_k, 0);
}

/* ---- timeouts --------------------------------------------------------- */

static const void *timeout_mt;   /* compared by address: no registry lookup per call */
static int timeout_mt_ref = LUA_NOREF;

typedef struct mr_timeout {
  uint64_t deadline;            /* loop time, ms */
} mr_timeout;

int timeout_deadline(lua_State *L, int idx, uint64_t *deadline) {
  mr_timeout *o = lua_touserdata(L, idx);
  if (!o || !lua_getmetatable(L, idx)) return 0;
  int ok = lua_topointer(L, -1) == timeout_mt;
  lua_pop(L, 1);
  if (!ok) return 0;
  *deadline = o->deadline;
  return 1;
}

/* moonring.timeout(seconds) → a deadline that many seconds from now. */
static int l_timeout(lua_State *L) {
  uint64_t ms = check_ms(L, 1);
  mr_timeout *o = lua_newuserdatauv(L, sizeof *o, 0);
  uv_update_time(mr_srv.loop);
  o->deadline = uv_now(mr_srv.loop) + ms;
  lua_rawgeti(L, LUA_REGISTRYINDEX, timeout_mt_ref);
  lua_setmetatable(L, -2);
  return 1;
}

/* timeout:remaining() → seconds left (0 once expired). */
static int timeout_remaining(lua_State *L) {
  mr_timeout *o = check_udata(L, 1, timeout_mt, TIMEOUT_MT);
  uint64_t now = uv_now(mr_srv.loop);
  lua_pushnumber(L, o->deadline > now ? (lua_Number)(o->deadline - now) / 1000.0 : 0.0);
  return 1;
}

static int timeout_expired(lua_State *L) {
  mr_timeout *o = check_udata(L, 1, timeout_mt, TIMEOUT_MT);
  lua_pushboolean(L, uv_now(mr_srv.loop) >= o->deadline);
  return 1;
}

static int timeout_tostring(lua_State *L) {
  mr_timeout *o = check_udata(L, 1, timeout_mt, TIMEOUT_MT);
  uint64_t now = uv_now(mr_srv.loop);
  lua_pushfstring(L, "moonring.timeout (%f s left)",
                  o->deadline > now ? (lua_Number)(o->deadline - now) / 1000.0 : 0.0);
  return 1;
}

static const luaL_Reg timeout_methods[] = {
  {"remaining", timeout_remaining},
  {"expired", timeout_expired},
  {NULL, NULL},
};

/* moonring.now() → seconds since the epoch, with a fraction (the wall
 * clock, read at each call: for timestamps and durations in handlers). */
static int l_now(lua_State *L) {
  uv_timeval64_t tv;
  if (uv_gettimeofday(&tv) < 0) return luaL_error(L, "moonring.now: the clock cannot be read");
  lua_pushnumber(L, (lua_Number)tv.tv_sec + (lua_Number)tv.tv_usec / 1e6);
  return 1;
}

/* deadline() → seconds left before the calling task's request meets its
 * deadline (504), or nil: outside a request, or once its response started
 * (no deadline applies any more). */
static int l_deadline(lua_State *L) {
  mr_task *t = task_current(L);
  mr_request *r = t ? t->req : NULL;
  if (!r || r->ended || (r->ex.flags & EX_HEAD_SENT) || !r->ex.deadline) return 0;
  uint64_t now = uv_now(mr_srv.loop);
  lua_pushnumber(L, r->ex.deadline > now ? (lua_Number)(r->ex.deadline - now) / 1000.0 : 0.0);
  return 1;
}

/* clock() → seconds on the loop's monotonic clock (brought up to date):
 * for deadlines kept as plain numbers (the HTTP client's). */
static int l_clock(lua_State *L) {
  uv_update_time(mr_srv.loop);
  lua_pushnumber(L, (lua_Number)uv_now(mr_srv.loop) / 1000.0);
  return 1;
}

const luaL_Reg timer_funcs[] = {
  {"clock", l_clock},
  {"sleep", l_sleep},
  {"deadline", l_deadline},
  {"now", l_now},
  {"timeout", l_timeout},
  {NULL, NULL},
};

void timer_open(lua_State *L) {
  luaL_newmetatable(L, TIMEOUT_MT);
  timeout_mt = lua_topointer(L, -1);
  lua_pushvalue(L, -1);
  timeout_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushcfunction(L, timeout_tostring);
  lua_setfield(L, -2, "__tostring");
  luaL_newlib(L, timeout_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}
