/* coro.c — coroutine.resume, coroutine.wrap and coroutine.close for code
 * running in tasks. A moonring primitive called inside a coroutine a handler
 * made (a generator written with coroutine.wrap, say) parks that coroutine
 * with the park marker; the wrapped resume that sees the marker parks its
 * own coroutine the same way, up to the task, which the runner then holds.
 * The wake comes back down the same chain: each level's continuation resumes
 * the level below with the values the primitive returns.
 *
 * The same functions refuse coroutines that are not the user's to drive: a
 * task's own coroutine (stashed from coroutine.running()), a pooled one, and
 * one parked in a primitive. Everything else behaves as Lua's own. */
#include "task.h"

static lua_State *get_co(lua_State *L, int idx) {
  lua_State *co = lua_tothread(L, idx);
  luaL_argexpected(L, co, idx, "coroutine");
  return co;
}

/* Why co may not be resumed or closed from Lua, or NULL. */
static const char *refusal(lua_State *co) {
  if (!*(void **)lua_getextraspace(co)) return NULL;
  if (task_nested_parked(co)) return "cannot resume a coroutine that waits in a moonring primitive";
  return "cannot resume or close a coroutine that belongs to moonring's runner";
}

/* Resumes co with the `narg` values on top of L. Returns the number of
 * results moved onto L, -1 with an error on top of L, or -2 when co parked
 * in a primitive (or its task is being stopped) and L must park in turn. */
static int resume_co(lua_State *L, lua_State *co, int narg) {
  if (!lua_checkstack(co, narg)) {
    lua_pushliteral(L, "too many arguments to resume");
    return -1;
  }
  lua_xmove(L, co, narg);
  lua_State *saved;
  int saved_ok = task_nested_enter(L, co, &saved);
  int nres, status = lua_resume(co, L, narg, &nres);
  task_nested_leave(saved, saved_ok);
  if (status == LUA_OK || status == LUA_YIELD) {
    if (status == LUA_YIELD &&
        (task_killed() || (nres == 1 && lua_islightuserdata(co, -1) &&
                           lua_touserdata(co, -1) == &task_park_marker))) {
      lua_pop(co, nres);
      return -2;
    }
    if (!lua_checkstack(L, nres + 1)) {
      lua_pop(co, nres);
      lua_pushliteral(L, "too many results to resume");
      return -1;
    }
    lua_xmove(co, L, nres);
    return nres;
  }
  lua_xmove(co, L, 1);                       /* the error */
  return -1;
}

/* co parked: park L too, keeping its first `base` stack slots; the wake
 * resumes L in `k` with the values meant for co on top. */
static int park_up(lua_State *L, int base, lua_KFunction k) {
  lua_settop(L, base);
  task_mark_parked(L);
  lua_pushlightuserdata(L, &task_park_marker);
  return lua_yieldk(L, 1, base, k);
}

/* ---- coroutine.resume ------------------------------------------------- */

static int resume_done(lua_State *L, int r) {
  if (r < 0) {
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_insert(L, -(r + 1));
  return r + 1;
}

static int resume_k(lua_State *L, int status, lua_KContext base) {
  lua_State *co = get_co(L, 1);
  task_nested_unpark(co);
  int r = resume_co(L, co, lua_gettop(L) - (int)base);
  if (r == -2) return park_up(L, (int)base, resume_k);
  return resume_done(L, r);
}

static int l_resume(lua_State *L) {
  lua_State *co = get_co(L, 1);
  const char *why = refusal(co);
  if (why) {
    lua_pushboolean(L, 0);
    lua_pushstring(L, why);
    return 2;
  }
  int r = resume_co(L, co, lua_gettop(L) - 1);
  if (r == -2) return park_up(L, 1, resume_k);
  return resume_done(L, r);
}

/* ---- coroutine.wrap --------------------------------------------------- */

/* As Lua's own: an error closes the coroutine's pending variables and is
 * raised again in the caller, with its position when it is a string. */
static int wrap_done(lua_State *L, lua_State *co, int r) {
  if (r >= 0) return r;
  int st = lua_status(co);
  if (st != LUA_OK && st != LUA_YIELD) {
    lua_State *saved;                        /* its __close handlers run on co: the */
    int saved_ok = task_nested_enter(L, co, &saved);   /* CPU budget must watch co */
    st = lua_resetthread(co);
    task_nested_leave(saved, saved_ok);
    if (lua_gettop(co) > 0) {
      lua_pop(L, 1);
      lua_xmove(co, L, 1);
    }
  }
  if (st != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
    luaL_where(L, 1);
    lua_insert(L, -2);
    lua_concat(L, 2);
  }
  return lua_error(L);
}

static int wrap_k(lua_State *L, int status, lua_KContext base) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  if (!co) return luaL_error(L, "coroutine.wrap: its coroutine was replaced (debug.setupvalue)");
  task_nested_unpark(co);
  int r = resume_co(L, co, lua_gettop(L));
  if (r == -2) return park_up(L, 0, wrap_k);
  return wrap_done(L, co, r);
}

static int wrap_call(lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  const char *why = refusal(co);
  if (why) return luaL_error(L, "%s", why);
  int r = resume_co(L, co, lua_gettop(L));
  if (r == -2) return park_up(L, 0, wrap_k);
  return wrap_done(L, co, r);
}

static int l_wrap(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_State *co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  lua_pushcclosure(L, wrap_call, 1);
  return 1;
}

/* ---- coroutine.close -------------------------------------------------- */

/* Lua's own close: kept in C, not as an upvalue debug.getupvalue would hand
 * out. */
static lua_CFunction lua_close_fn;

static int l_close(lua_State *L) {
  lua_State *co = get_co(L, 1);
  const char *why = refusal(co);
  if (why) return luaL_error(L, "%s", why);
  lua_pushcfunction(L, lua_close_fn);
  lua_insert(L, 1);
  /* co's pending __close handlers run on co: the CPU budget must watch it */
  lua_State *saved;
  int saved_ok = task_nested_enter(L, co, &saved);
  int st = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
  task_nested_leave(saved, saved_ok);
  if (st != LUA_OK) return lua_error(L);
  return lua_gettop(L);
}

void coro_open(lua_State *L) {
  lua_getglobal(L, "coroutine");
  lua_pushcfunction(L, l_resume);
  lua_setfield(L, -2, "resume");
  lua_pushcfunction(L, l_wrap);
  lua_setfield(L, -2, "wrap");
  lua_getfield(L, -1, "close");
  lua_close_fn = lua_tocfunction(L, -1);
  lua_pop(L, 1);
  lua_pushcfunction(L, l_close);
  lua_setfield(L, -2, "close");
  lua_pop(L, 1);
}
