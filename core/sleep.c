/* sleep.c — moonring.sleep(seconds): parks the calling request coroutine on
 * a libuv timer. The timer is allocated apart from Lua and freed in its close
 * callback, whether it fired or the request was cancelled first. */
#include "runner.h"
#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>

typedef struct sleeper {
  uv_timer_t timer;
  mr_request *r;
} sleeper;

static void free_cb(uv_handle_t *h) { free(h->data); }

static void sleep_cb(uv_timer_t *t) {
  sleeper *z = t->data;
  mr_request *r = z->r;
  uv_close((uv_handle_t *)t, free_cb);
  if (r->wait == WAIT_SLEEP && r->wait_data == z) runner_wake(r, 0);
}

static void sleep_cancel(mr_request *r) {
  sleeper *z = r->wait_data;
  uv_close((uv_handle_t *)&z->timer, free_cb);
}

static int sleep_k(lua_State *L, int status, lua_KContext ctx) { return 0; }

static int l_sleep(lua_State *L) {
  lua_Number sec = luaL_checknumber(L, 1);
  luaL_argcheck(L, sec >= 0 && sec == sec, 1, "expected a number of seconds >= 0");
  mr_request *r = runner_current(L);
  if (!r) return luaL_error(L, "moonring.sleep: not inside a request's coroutine");
  runner_check_yieldable(L, "moonring.sleep");
  sleeper *z = malloc(sizeof *z);
  if (!z) return luaL_error(L, "moonring.sleep: out of memory");
  uv_timer_init(mr_srv.loop, &z->timer);
  z->timer.data = z;
  z->r = r;
  double ms = ceil(sec * 1000.0);
  uv_timer_start(&z->timer, sleep_cb, ms > 1e12 ? (uint64_t)1e12 : (uint64_t)ms, 0);
  return runner_park(L, r, WAIT_SLEEP, sleep_cancel, z, sleep_k, 0);
}

const luaL_Reg sleep_funcs[] = {
  {"sleep", l_sleep},
  {NULL, NULL},
};
