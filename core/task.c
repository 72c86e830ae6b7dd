/* task.c — the scheduler. Lends coroutines to tasks, keeps the run queue,
 * and resumes tasks; resume() is the one place that decides what a resume
 * meant (parked, finished, failed) and hands the outcome to the task's kind
 * (request.c for a request's main task, spawn.c for spawned ones). Nothing
 * here frees a task: its kind does, in ops->release, after the scheduler
 * has given its coroutine back. */
#include "task.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char task_park_marker;
static char idle_marker;        /* extra space of a pooled coroutine */
static char parked_marker;      /* extra space of a nested coroutine parked in a primitive */

/* ---- the coroutine pool ----------------------------------------------- */

/* Coroutines live in one registry table for good and are lent to tasks by
 * slot, so a running coroutine is anchored without any per-task bookkeeping
 * in Lua. One that returned normally is reused (its stack is empty); a failed
 * or cancelled one is dropped from its slot and the slot refilled when next
 * lent. At most POOL_MAX idle coroutines are kept. */
#define POOL_MAX 256
static int threads_ref = LUA_NOREF;
static lua_State **threads;                 /* by slot; NULL = empty slot */
static int *ready, *empty;                  /* idle slots with / without a coroutine */
static int nthreads, cap, nready, nempty;

static void threads_grow(void) {
  int c = cap ? cap * 2 : 256;
  lua_State **t = realloc(threads, sizeof *t * (size_t)(c + 1));
  if (!t) mr_oom();
  threads = t;
  int *r = realloc(ready, sizeof *r * (size_t)c);
  if (!r) mr_oom();
  ready = r;
  int *e = realloc(empty, sizeof *e * (size_t)c);
  if (!e) mr_oom();
  empty = e;
  cap = c;
}

static void set_slot(int i, int make) {
  lua_State *L = mr_srv.L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, threads_ref);
  /* lua_newthread may run a __gc that spawns a task and regrows `threads` */
  lua_State *co = make ? lua_newthread(L) : NULL;
  if (!make) lua_pushnil(L);
  threads[i] = co;
  lua_rawseti(L, -2, i);
  lua_pop(L, 1);
}

lua_State *task_take_thread(mr_task *t) {
  int i;
  if (nready) {
    i = ready[--nready];
  } else {
    if (nempty) {
      i = empty[--nempty];
    } else {
      if (nthreads == cap) threads_grow();
      i = ++nthreads;
    }
    set_slot(i, 1);
  }
  t->thread = i;
  t->co = threads[i];
  *(mr_task **)lua_getextraspace(t->co) = t;
  return t->co;
}

static mr_task *running;        /* the task inside lua_resume */
static lua_State *co_now;       /* the innermost coroutine running for it */
static int chain_ok;            /* every resumer between the task and co_now may yield */

/* The coroutine of t is done; `reusable` when it returned normally. A failed
 * one is reset first, which runs its pending __close handlers: as part of
 * the task (its CPU budget applies) but unable to wait (the task is marked
 * cancelled, and a reset cannot yield). */
static void give_back(mr_task *t, int reusable) {
  lua_State *co = t->co;
  int i = t->thread;
  if (!reusable) {
    running = t;
    co_now = co;
    chain_ok = 0;
    budget_enter(t, co, 0);
    lua_resetthread(co);
    budget_leave();
    running = NULL;
    co_now = NULL;
  }
  t->co = NULL;
  if (lua_gethook(co)) lua_sethook(co, NULL, 0, 0);
  *(void **)lua_getextraspace(co) = &idle_marker;
  if (reusable && nready < POOL_MAX && lua_gettop(co) == 0) {
    ready[nready++] = i;
  } else {
    set_slot(i, 0);
    empty[nempty++] = i;
  }
}

/* ---- the run queue ---------------------------------------------------- */

static mr_task *rq_head, *rq_tail;
static int draining;
static size_t slice_out;        /* output bytes written by the running slice */
static mr_waitq turn_waiters;   /* tasks giving the loop a turn (task_yield_turn) */
static uv_idle_t turn_idle;     /* wakes them on the next iteration */
static uv_prepare_t rq_prepare;
static uv_check_t rq_check;
static uv_idle_t rq_idle;       /* active while tasks wait for the next drain: poll must not block */
static int rq_armed;

static void resume(mr_task *t);

static void rq_cb(void) { task_run(); }
static void prepare_cb(uv_prepare_t *h) { rq_cb(); }
static void check_cb(uv_check_t *h) { rq_cb(); }

static void enqueue(mr_task *t) {
  if (t->flags & TF_QUEUED) return;
  t->flags |= TF_QUEUED;
  t->run_next = NULL;
  if (rq_tail) rq_tail->run_next = t; else rq_head = t;
  rq_tail = t;
  /* Outside a drain, the loop drains before it next blocks: in the prepare
   * phase after timers, in the check phase after I/O callbacks. */
  if (!draining && !rq_armed) {
    uv_prepare_start(&rq_prepare, prepare_cb);
    uv_check_start(&rq_check, check_cb);
    rq_armed = 1;
  }
}

static void idle_cb(uv_idle_t *h) { (void)h; }

/* One drain runs the tasks queued when it starts and at most DRAIN_EXTRA
 * more that they wake; the rest run in the next drain, after the loop
 * polled. Tasks that keep waking each other (a put/take ping-pong) never
 * wait, so no slice grows past the CPU budget, and an unbounded drain would
 * starve every connection; a short chain (a pipelined request started as
 * the previous one ends) still runs in the same drain. */
#define DRAIN_EXTRA 64

void task_run(void) {
  if (draining) return;
  draining = 1;
  mr_task *last = rq_tail;
  int extra = last ? -1 : 0;                 /* counts once past `last` */
  while (rq_head && extra < DRAIN_EXTRA) {
    mr_task *t = rq_head;
    if (extra < 0 && t == last) extra = 0;
    else if (extra >= 0) extra++;
    rq_head = t->run_next;
    if (!rq_head) rq_tail = NULL;
    t->flags &= ~TF_QUEUED;
    resume(t);
  }
  draining = 0;
  if (rq_head) {
    if (!rq_armed) {
      uv_prepare_start(&rq_prepare, prepare_cb);
      uv_check_start(&rq_check, check_cb);
      rq_armed = 1;
    }
    uv_idle_start(&rq_idle, idle_cb);
  } else if (rq_armed) {
    uv_prepare_stop(&rq_prepare);
    uv_check_stop(&rq_check);
    uv_idle_stop(&rq_idle);
    rq_armed = 0;
  }
}

void task_start(mr_task *t, int nargs) {
  t->state = TASK_NEW;
  t->nargs = nargs;
  t->wake = WAKE_OK;
  if (draining) {
    enqueue(t);
    return;
  }
  draining = 1;
  resume(t);
  draining = 0;
  task_run();
}

void task_queue(mr_task *t, int nargs) {
  t->state = TASK_NEW;
  t->nargs = nargs;
  t->wake = WAKE_OK;
  enqueue(t);
}

/* ---- giving the loop a turn ------------------------------------------ */

void task_note_output(size_t n) { slice_out += n; }

int task_output_heavy(void) { return slice_out > 16 * mr_srv.cfg.write_buffer; }

/* Runs in the idle phase, so the poll that follows does not block: the
 * waiters are queued and run in the prepare phase, after the I/O callbacks
 * of the previous poll and before the next one. */
static void turn_cb(uv_idle_t *h) {
  uv_idle_stop(h);
  while (turn_waiters.head) {
    mr_wnode *n = turn_waiters.head;
    waitq_remove(n);
    task_wake(n->task, 0);
  }
}

static void turn_cancel(mr_task *t) { waitq_remove(&t->node); }

int task_yield_turn(lua_State *L, mr_task *t, lua_KFunction k, lua_KContext ctx) {
  t->node = (mr_wnode){.task = t, .co = L};
  waitq_push(&turn_waiters, &t->node);
  uv_idle_start(&turn_idle, turn_cb);
  return task_park(L, t, WAIT_TURN, turn_cancel, NULL, k, ctx);
}

void task_init(lua_State *L) {
  lua_newtable(L);
  threads_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  uv_prepare_init(mr_srv.loop, &rq_prepare);
  uv_check_init(mr_srv.loop, &rq_check);
  uv_idle_init(mr_srv.loop, &turn_idle);
  uv_idle_init(mr_srv.loop, &rq_idle);
}

void task_free_all(void) {
  free(threads);
  free(ready);
  free(empty);
  threads = NULL;
  ready = empty = NULL;
  nthreads = cap = nready = nempty = 0;
  threads_ref = LUA_NOREF;
}

/* ---- parking and waking ----------------------------------------------- */

mr_task *task_current(lua_State *L) {
  return running && L == co_now ? running : NULL;
}

mr_task *task_check(lua_State *L, const char *what) {
  mr_task *t = task_current(L);
  if (!t)
    luaL_error(L, "%s: not inside a task (call it from a handler, or from a function "
                  "run by moonring.spawn)", what);
  return t;
}

void task_check_yieldable(lua_State *L, const char *what) {
  if (!lua_isyieldable(L) || !chain_ok)
    luaL_error(L, "%s cannot wait here (inside a metamethod, an iterator of a C "
                  "function such as table.sort or string.gsub, or a __close handler)", what);
}

int task_raise_cancelled(lua_State *L) {
  lua_pushliteral(L, "cancelled");
  return lua_error(L);
}

int task_is_cancel_error(lua_State *L, int idx) {
  size_t n;
  const char *s = lua_type(L, idx) == LUA_TSTRING ? lua_tolstring(L, idx, &n) : NULL;
  if (!s) return 0;
  /* as raised, or with the position coroutine.wrap adds */
  return (n == 9 && memcmp(s, "cancelled", 9) == 0) ||
         (n > 11 && memcmp(s + n - 11, ": cancelled", 11) == 0);
}

int task_park(lua_State *L, mr_task *t, int wait, mr_wait_cancel cancel, void *data,
              lua_KFunction k, lua_KContext ctx) {
  if (t->flags & TF_CANCELLED) {
    /* undo what the primitive set up for the wait, so nothing is left
     * pointing at a task that is about to end */
    if (cancel) {
      t->wait_data = data;
      cancel(t);
      t->wait_data = NULL;
    }
    return task_raise_cancelled(L);
  }
  t->wait = (uint8_t)wait;
  t->wait_cancel = cancel;
  t->wait_data = data;
  /* A nested coroutine parked here may only be resumed by the wrapper that
   * carries the wake down to it, never by coroutine.resume. */
  task_mark_parked(L);
  lua_pushlightuserdata(L, &task_park_marker);
  return lua_yieldk(L, 1, ctx, k);
}

static void clear_wait(mr_task *t) {
  t->wait = WAIT_NONE;
  t->wait_cancel = NULL;
  t->wait_data = NULL;
}

void task_wake(mr_task *t, int nargs) {
  clear_wait(t);
  t->nargs = nargs;
  t->wake = WAKE_OK;
  t->state = TASK_READY;
  enqueue(t);
}

int task_woke_cancelled(lua_State *L) {
  return running && running->wake == WAKE_CANCEL;
}

void task_cancel(mr_task *t) {
  if (t->state == TASK_DONE) return;
  t->flags |= TF_CANCELLED;
  /* NEW: ends without running; READY: what woke it is delivered and its next
   * wait fails; RUNNING: likewise, at its next wait. */
  if (t->state != TASK_PARKED) return;
  if (t->wait_cancel) t->wait_cancel(t);
  clear_wait(t);
  t->nargs = 0;                              /* a cancel wakes with no values */
  t->wake = WAKE_CANCEL;
  t->state = TASK_READY;
  enqueue(t);
}

/* ---- the one place that reads a resume -------------------------------- */

/* Error text under a protected call: __tostring may itself fail. */
static int error_text(lua_State *L) {
  luaL_tolstring(L, 1, NULL);
  return 1;
}

static const char *push_error_text(mr_task *t, lua_State *L, lua_State *co) {
  lua_pushcfunction(L, error_text);
  lua_pushvalue(co, -1);
  lua_xmove(co, L, 1);
  budget_enter(t, L, 0);                     /* __tostring is the task's code: its budget applies */
  int st = lua_pcall(L, 1, 1, 0);
  budget_leave();
  if (lua_gethook(L)) lua_sethook(L, NULL, 0, 0);
  if (st != LUA_OK || !lua_isstring(L, -1)) {
    lua_pop(L, 1);
    lua_pushfstring(L, "(error object is a %s value)", luaL_typename(co, -1));
  }
  return lua_tostring(L, -1);
}

const char *task_push_failure(mr_task *t, lua_State *L) {
  lua_State *co = t->co;
  const char *msg = push_error_text(t, L, co);
  if (t->note_ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->note_ref);
    lua_rawgeti(L, -1, 1);
    lua_pushvalue(co, -1);
    lua_xmove(co, L, 1);
    int same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (same) {
      lua_rawgeti(L, -1, 2);
      lua_remove(L, -2);
      lua_pushliteral(L, "\n");
      lua_insert(L, -2);
      lua_concat(L, 3);                      /* msg "\n" traceback */
      return lua_tostring(L, -1);
    }
    lua_pop(L, 1);
  }
  luaL_traceback(L, co, msg, 0);
  lua_remove(L, -2);
  return lua_tostring(L, -1);
}

void task_note_error(mr_task *t, lua_State *L, int eidx) {
  eidx = lua_absindex(L, eidx);
  lua_createtable(L, 2, 0);
  lua_pushvalue(L, eidx);
  lua_rawseti(L, -2, 1);
  lua_insert(L, -2);                         /* note, traceback */
  lua_rawseti(L, -2, 2);
  if (t->note_ref == LUA_NOREF) t->note_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  else lua_rawseti(L, LUA_REGISTRYINDEX, t->note_ref);
}

int task_push_noted(mr_task *t, lua_State *L, int eidx) {
  if (!t || t->note_ref == LUA_NOREF) return 0;
  eidx = lua_absindex(L, eidx);
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->note_ref);
  lua_rawgeti(L, -1, 1);
  if (!lua_rawequal(L, -1, eidx)) {
    lua_pop(L, 2);
    return 0;
  }
  lua_pop(L, 1);
  lua_rawgeti(L, -1, 2);
  lua_remove(L, -2);
  return 1;
}

/* note(err) → err: an xpcall message handler that keeps where err was
 * thrown, for the log line if it is raised again later. */
static int l_note(lua_State *L) {
  mr_task *t = task_current(L);
  lua_settop(L, 1);
  if (t && !task_is_cancel_error(L, 1)) {
    luaL_traceback(L, L, NULL, 1);
    task_note_error(t, L, 1);
  }
  return 1;
}

/* cancelled(err) → true when err is the error of a cancelled wait in a
 * cancelled task: middleware passes it on untouched. */
static int l_cancelled(lua_State *L) {
  mr_task *t = task_current(L);
  lua_pushboolean(L, (!t || (t->flags & TF_CANCELLED)) && task_is_cancel_error(L, 1));
  return 1;
}

const luaL_Reg task_funcs[] = {
  {"note", l_note},
  {"cancelled", l_cancelled},
  {NULL, NULL},
};

static void resume(mr_task *t) {
  lua_State *co = t->co, *L = mr_srv.L;
  int nargs = t->nargs, nres = 0, status;
  t->nargs = 0;
  if (t->state == TASK_NEW && (t->flags & TF_CANCELLED)) {
    lua_settop(co, 0);                       /* cancelled before it ever ran */
    lua_pushliteral(co, "cancelled");
    status = LUA_ERRRUN;
  } else {
    t->state = TASK_RUNNING;
    running = t;
    co_now = co;
    chain_ok = 1;
    slice_out = 0;
    budget_enter(t, co, 1);
    status = lua_resume(co, L, nargs, &nres);
    budget_leave();
    running = NULL;
    co_now = NULL;
    if (status == LUA_YIELD) {
      lua_pop(co, nres);
      if (t->flags & TF_KILLED) {
        if (t->wait_cancel) t->wait_cancel(t);
        clear_wait(t);
        lua_pushliteral(co, "cpu budget exceeded");
        status = LUA_ERRRUN;
      } else if (t->wait != WAIT_NONE) {
        t->state = TASK_PARKED;
        return;
      } else {
        lua_pushliteral(co, "a task yielded outside a moonring primitive "
                            "(coroutine.yield in a handler's own function?)");
        status = LUA_ERRRUN;
      }
    }
  }
  if (t->wait != WAIT_NONE) {
    /* Parked in a coroutine that was resumed behind the library's back and
     * then abandoned: undo the wait so nothing wakes a finished task. */
    if (t->wait_cancel) t->wait_cancel(t);
    clear_wait(t);
  }
  t->state = TASK_DONE;
  t->ops->ended(t, status, nres);
  if (status != LUA_OK) t->flags |= TF_CANCELLED;
  give_back(t, status == LUA_OK);
  if (t->note_ref != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, t->note_ref);
    t->note_ref = LUA_NOREF;
  }
  t->ops->release(t);
}

/* ---- nested coroutines (coro.c) --------------------------------------- */

int task_nested_enter(lua_State *from, lua_State *co, lua_State **saved) {
  *saved = co_now;
  int saved_ok = chain_ok;
  if (running && from == co_now) {
    chain_ok = chain_ok && lua_isyieldable(from);
    co_now = co;
    budget_switch(co, chain_ok);
  }
  return saved_ok;
}

void task_nested_leave(lua_State *saved, int saved_ok) {
  if (running && co_now != saved) {
    co_now = saved;
    chain_ok = saved_ok;
    budget_switch(saved, saved_ok);
  }
}

int task_nested_parked(lua_State *co) {
  return *(void **)lua_getextraspace(co) == &parked_marker;
}

void task_nested_unpark(lua_State *co) { *(void **)lua_getextraspace(co) = NULL; }

void task_mark_parked(lua_State *L) {
  if (running && L != running->co) *(void **)lua_getextraspace(L) = &parked_marker;
}

int task_killed(void) { return running && (running->flags & TF_KILLED); }

int task_can_yield(lua_State *L) { return lua_isyieldable(L) && chain_ok; }
