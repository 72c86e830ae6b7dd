/* promise.c — the rendezvous behind async handlers: promise() returns
 * respond, raise and wait, three functions sharing one small userdata.
 * respond(response) and raise(err) may be called from any task, now or much
 * later; the first call wins, later ones are logged once and ignored, and
 * neither ever throws (Ring issue 535). wait() parks the calling task until
 * one of them was called, then returns the response or raises the error
 * (with the traceback of the place raise was called from, for the log). The
 * values live in the userdata's user values; the waiting task is kept only
 * while it waits (its cancellation unhooks it). */
#include "request.h"

#define PROMISE_MT "moonring.promise"

enum { P_PENDING, P_RESPONDED, P_RAISED };

typedef struct mr_promise {
  int state;
  int warned;                   /* a late call was logged */
  mr_task *waiter;              /* the task parked in wait(), if any */
  uint64_t request_id;          /* for log lines (0: not in a request) */
} mr_promise;

static mr_promise *upvalue_promise(lua_State *L) {
  return lua_touserdata(L, lua_upvalueindex(1));
}

static void late(mr_promise *p, const char *what) {
  if (p->warned) return;
  p->warned = 1;
  log_warn("request %llu: %s called after the request was already %s (ignored)",
           (unsigned long long)p->request_id, what,
           p->state == P_RESPONDED ? "responded to" : "failed by raise");
}

/* Ends the promise with the value on top of L (popped) as user value 1. */
static void settle(lua_State *L, mr_promise *p, int state) {
  lua_setiuservalue(L, lua_upvalueindex(1), 1);
  p->state = state;
  mr_task *w = p->waiter;
  if (w) {
    p->waiter = NULL;
    task_wake(w, 0);                         /* wait's continuation reads the outcome */
  }
}

static int l_respond(lua_State *L) {
  mr_promise *p = upvalue_promise(L);
  if (p->state != P_PENDING) {
    late(p, "respond");
    return 0;
  }
  lua_settop(L, 1);
  settle(L, p, P_RESPONDED);
  return 0;
}

static int l_raise(lua_State *L) {
  mr_promise *p = upvalue_promise(L);
  if (p->state != P_PENDING) {
    late(p, "raise");
    return 0;
  }
  lua_settop(L, 1);
  if (lua_isnil(L, 1)) {
    lua_pushliteral(L, "raise called with nil");
    lua_replace(L, 1);
  }
  /* where the error was thrown if that was noted, else where raise was
   * called: for the log line */
  if (!task_push_noted(task_current(L), L, 1)) luaL_traceback(L, L, NULL, 1);
  lua_setiuservalue(L, lua_upvalueindex(1), 2);
  settle(L, p, P_RAISED);
  return 0;
}

/* The outcome: the response, or the error raised in the waiting task. */
static int outcome(lua_State *L, mr_promise *p) {
  lua_getiuservalue(L, lua_upvalueindex(1), 1);
  if (p->state == P_RESPONDED) return 1;
  mr_task *t = task_current(L);
  if (t) {
    lua_getiuservalue(L, lua_upvalueindex(1), 2);
    task_note_error(t, L, -2);
  }
  return lua_error(L);
}

static void unwait(mr_task *t) {
  mr_promise *p = t->wait_data;
  if (p->waiter == t) p->waiter = NULL;
}

static int wait_k(lua_State *L, int status, lua_KContext ctx) {
  if (task_woke_cancelled(L)) return task_raise_cancelled(L);
  return outcome(L, upvalue_promise(L));
}

static int l_wait(lua_State *L) {
  mr_promise *p = upvalue_promise(L);
  if (p->state != P_PENDING) return outcome(L, p);
  mr_task *t = task_check(L, "waiting for respond/raise");
  if (p->waiter) return luaL_error(L, "another task already waits for this response");
  task_check_yieldable(L, "waiting for respond/raise");
  if (t->flags & TF_CANCELLED) return task_raise_cancelled(L);
  p->waiter = t;
  lua_settop(L, 0);
  return task_park(L, t, WAIT_PROMISE, unwait, p, wait_k, 0);
}

/* promise() → respond, raise, wait */
static int l_promise(lua_State *L) {
  mr_promise *p = lua_newuserdatauv(L, sizeof *p, 2);
  mr_task *t = task_current(L);
  *p = (mr_promise){.request_id = t && t->req ? t->req->ex.id : 0};
  luaL_setmetatable(L, PROMISE_MT);
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, l_respond, 1);
  lua_pushvalue(L, -2);
  lua_pushcclosure(L, l_raise, 1);
  lua_pushvalue(L, -3);
  lua_pushcclosure(L, l_wait, 1);
  return 3;
}

const luaL_Reg promise_funcs[] = {
  {"promise", l_promise},
  {NULL, NULL},
};

void promise_open(lua_State *L) {
  luaL_newmetatable(L, PROMISE_MT);
  lua_pop(L, 1);
}
