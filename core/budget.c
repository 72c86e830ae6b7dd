/* budget.c — the CPU budget (--cpu-budget). A count hook on every task would
 * make the VM trap on every instruction, so none is set while tasks behave.
 * Instead each resume starts a "slice" (a counter bump and two stores), and a
 * watchdog thread looks at the counter a few times per budget: a slice it
 * sees running past the budget gets the loop thread a signal, whose handler
 * sets a count hook on the coroutine running then (lua_sethook is safe in a
 * signal handler). The hook raises "cpu budget exceeded" in the task, so
 * pcall and <close> unwind normally; if the task catches that and keeps
 * running, the hook strikes again and yields it, and the runner stops it.
 * The watchdog owns nothing but its thread; the hook removes itself when it
 * fires in a later, well-behaved slice. A reload's loading of the app is a
 * slice without a task (budget_enter(NULL, ...)): struck, never killed. */
#include "task.h"
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

#define TICKS_PER_BUDGET 8
#define RESTRIKE_COUNT   1000           /* instructions between strikes once struck */

static atomic_uint slice;               /* bumped at each slice start (loop thread only) */
static mr_task *slice_task;             /* the task of the slice (loop thread only) */
static int slice_can_yield;             /* the coroutine chain up to the task may yield */
static atomic_int busy;                 /* a slice is running Lua */
static _Atomic(lua_State *) slice_co;   /* the coroutine running Lua now */
static atomic_uint flagged;             /* slice + 1 found over budget, 0 = none */
static int signo;
static pthread_t loop_thread, watchdog;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv;
static int started, stopping;
static uint64_t budget_ns, tick_ns;

void budget_enter(mr_task *t, lua_State *co, int can_yield) {
  slice_task = t;
  slice_can_yield = can_yield;
  atomic_store_explicit(&slice_co, co, memory_order_relaxed);
  atomic_store_explicit(&slice, atomic_load_explicit(&slice, memory_order_relaxed) + 1,
                        memory_order_relaxed);
  atomic_store_explicit(&busy, 1, memory_order_relaxed);
}

void budget_switch(lua_State *co, int can_yield) {
  slice_can_yield = can_yield;
  atomic_store_explicit(&slice_co, co, memory_order_relaxed);
}

void budget_leave(void) {
  slice_task = NULL;
  atomic_store_explicit(&busy, 0, memory_order_relaxed);
  atomic_store_explicit(&slice_co, NULL, memory_order_relaxed);
}

static int over_budget(void) {
  return atomic_load_explicit(&busy, memory_order_relaxed) &&
         atomic_load_explicit(&flagged, memory_order_relaxed) ==
             atomic_load_explicit(&slice, memory_order_relaxed) + 1;
}

static void hook(lua_State *L, lua_Debug *ar) {
  mr_task *t = slice_task;
  if (!over_budget()) {
    lua_sethook(L, NULL, 0, 0);              /* left from an earlier slice */
    return;
  }
  /* No task: the app's code loading on a reload. It cannot be yielded or
   * killed: it is struck once per watchdog tick (the hook is set again by
   * the next signal), which leaves the reload's own clean-up a tick to run
   * after the error has unwound to it. */
  lua_sethook(L, t ? hook : NULL, t ? LUA_MASKCOUNT : 0, t ? RESTRIKE_COUNT : 0);
  if (t && (t->flags & TF_STRUCK)) {
    t->flags |= TF_KILLED;                   /* it caught the error and went on */
    if (slice_can_yield && lua_isyieldable(L)) {
      lua_yield(L, 0);                       /* the runner stops it there */
      return;
    }
  }
  if (t) t->flags |= TF_STRUCK;
  luaL_where(L, 0);                          /* in a hook, level 0 is the looping function */
  lua_pushliteral(L, "cpu budget exceeded");
  lua_concat(L, 2);
  lua_error(L);
}

static void on_signal(int sig) {
  if (!over_budget()) return;
  lua_State *co = atomic_load_explicit(&slice_co, memory_order_relaxed);
  if (co) lua_sethook(co, hook, LUA_MASKCOUNT, 1);
}

static void *watch(void *arg) {
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);
  unsigned last = 0;
  uint64_t ran = 0;
  pthread_mutex_lock(&mu);
  while (!stopping) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t ns = (uint64_t)ts.tv_nsec + tick_ns;
    ts.tv_sec += (time_t)(ns / 1000000000u);
    ts.tv_nsec = (long)(ns % 1000000000u);
    pthread_cond_timedwait(&cv, &mu, &ts);
    if (stopping) break;
    unsigned s = atomic_load_explicit(&slice, memory_order_relaxed);
    if (!atomic_load_explicit(&busy, memory_order_relaxed) || s != last) {
      last = s;
      ran = 0;
      continue;
    }
    ran += tick_ns;
    if (ran >= budget_ns) {
      /* every tick until the slice ends: the hook may have landed on a
       * coroutine that stopped running meanwhile */
      atomic_store_explicit(&flagged, s + 1, memory_order_relaxed);
      pthread_kill(loop_thread, signo);
    }
  }
  pthread_mutex_unlock(&mu);
  return NULL;
}

int budget_start(uint64_t budget_ms) {
  if (!budget_ms) return 0;                  /* --cpu-budget 0: no limit */
  budget_ns = budget_ms * 1000000u;
  tick_ns = budget_ns / TICKS_PER_BUDGET;
  if (tick_ns < 2000000u) tick_ns = 2000000u;
  signo = SIGRTMIN + 2;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  if (sigaction(signo, &sa, NULL) < 0) return -1;
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&cv, &ca);
  pthread_condattr_destroy(&ca);
  loop_thread = pthread_self();
  if (pthread_create(&watchdog, NULL, watch, NULL) != 0) return -1;
  started = 1;
  return 0;
}

void budget_stop(void) {
  if (!started) return;
  pthread_mutex_lock(&mu);
  stopping = 1;
  pthread_cond_signal(&cv);
  pthread_mutex_unlock(&mu);
  pthread_join(watchdog, NULL);
  pthread_cond_destroy(&cv);
  started = 0;
}
