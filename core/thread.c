/* thread.c — moonring.run_in_thread(module, function_name, ...): runs
 * require(module)[function_name](...) in a Lua state of its own on libuv's
 * thread pool (as OpenResty's ngx.run_worker_thread) and parks the calling
 * task until it ends, fails, or its timeout passes. Arguments and results
 * cross as bytes (copy.c): the server's lua_State is touched only on the
 * loop thread, a thread state only by the work callback that runs on it.
 *
 * Owns the jobs: malloc'd by the call, freed once libuv is done with both
 * the work request (after_work ran) and the timeout timer (closed) — whether
 * the task took the results, timed out or was cancelled. Owns the thread
 * states: cached in a mutex-protected free list, each lent to one job at a
 * time, closed instead of reused when the app reloaded since it was made or
 * its job was stopped, all freed by thread_close_all at exit. At most
 * --threads jobs run at once; up to QUEUE_MAX more wait in a FIFO. */
#include "copy.h"
#include "request.h"
#include <lualib.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_THREADS 4
#define DEFAULT_TIMEOUT_MS 30000
#define QUEUE_MAX 1024
#define STOP_SIGNAL (SIGRTMIN + 3)    /* budget.c has SIGRTMIN + 2 */

enum { J_WAITING, J_RUNNING, J_DONE };

typedef struct job {
  struct job *next, *prev;      /* in `waiting` or `running` (loop thread) */
  uv_work_t work;
  uv_timer_t timer;             /* the timeout */
  mr_task *t;                   /* the task parked on it; NULL once detached */
  int state;
  int timer_closed;
  atomic_int stop;              /* set on the loop thread: its Lua must stop */
  int on_thread;                /* under `mu`: a worker (`tid`) runs its Lua now */
  pthread_t tid;
  mr_buf in, out;               /* arguments; results (written by the worker) */
  const char *fn;               /* into names */
  char names[];                 /* "module\0function\0" */
} job;

typedef struct jlist {
  job *head, *tail;
  unsigned n;
} jlist;

/* A cached thread state. `job` is only read by its worker thread. */
typedef struct tstate {
  lua_State *L;
  struct tstate *next;
  unsigned gen;                 /* the app's code generation it was made for */
  job *job;                     /* the job it runs now */
} tstate;

static struct {
  jlist waiting, running;
  unsigned max;                 /* --threads */
  char *path, *cpath;           /* package.path and cpath of new thread states */
  int opened;
} pool;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;   /* idle, job->on_thread */
static tstate *idle;
static atomic_uint generation;
static _Thread_local tstate *volatile current;           /* the state a worker runs */
static _Thread_local int signal_ready;

static void jlist_push(jlist *l, job *j) {
  j->next = NULL;
  j->prev = l->tail;
  if (l->tail) l->tail->next = j; else l->head = j;
  l->tail = j;
  l->n++;
}

static void jlist_remove(jlist *l, job *j) {
  if (j->prev) j->prev->next = j->next; else l->head = j->next;
  if (j->next) j->next->prev = j->prev; else l->tail = j->prev;
  j->next = j->prev = NULL;
  l->n--;
}

/* ---- thread states (worker threads) ----------------------------------- */

static void stop_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  luaL_error(L, "timeout");
}

/* On a worker thread, sent by stop_job: the hook raises at the next
 * instruction of the job's Lua (lua_sethook is safe in a signal handler). A
 * signal that arrives late, after the job, finds no stopped job and does
 * nothing. The state is closed after a stopped job, so the hook never
 * outlives it. */
static void on_stop_signal(int sig) {
  (void)sig;
  tstate *s = current;
  if (s && s->job && atomic_load_explicit(&s->job->stop, memory_order_relaxed))
    lua_sethook(s->L, stop_hook, LUA_MASKCOUNT, 1);
}

static int init_state(lua_State *L) {
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_pushstring(L, pool.path);
  lua_setfield(L, -2, "path");
  lua_pushstring(L, pool.cpath);
  lua_setfield(L, -2, "cpath");
  return 0;
}

static tstate *new_state(unsigned gen) {
  tstate *s = malloc(sizeof *s);
  if (!s) return NULL;
  s->L = luaL_newstate();
  if (!s->L) {
    free(s);
    return NULL;
  }
  lua_pushcfunction(s->L, init_state);
  if (lua_pcall(s->L, 0, 0, 0) != LUA_OK) {
    lua_close(s->L);
    free(s);
    return NULL;
  }
  s->gen = gen;
  s->next = NULL;
  s->job = NULL;
  return s;
}

static void close_state(tstate *s) {
  lua_close(s->L);
  free(s);
}

/* An idle state made for the running code, or a new one. */
static tstate *take_state(void) {
  unsigned gen = atomic_load(&generation);
  for (;;) {
    pthread_mutex_lock(&mu);
    tstate *s = idle;
    if (s) idle = s->next;
    pthread_mutex_unlock(&mu);
    if (!s) return new_state(gen);
    if (s->gen == gen) return s;
    close_state(s);                          /* it holds the code of before a reload */
  }
}

static void give_state(tstate *s) {
  pthread_mutex_lock(&mu);
  s->next = idle;
  idle = s;
  pthread_mutex_unlock(&mu);
}

/* Protected, in the thread state: (job) → nothing; the results go to
 * job->out. */
static int call_job(lua_State *L) {
  job *j = lua_touserdata(L, 1);
  lua_settop(L, 0);
  lua_getglobal(L, "require");
  lua_pushstring(L, j->names);
  lua_call(L, 1, 1);                         /* 1: the module */
  int type = lua_type(L, 1);
  if (type != LUA_TTABLE && type != LUA_TUSERDATA)
    return luaL_error(L, "module '%s' returned a %s, not a table of functions", j->names,
                      lua_typename(L, type));
  lua_getfield(L, 1, j->fn);                 /* 2: the function */
  if (lua_type(L, 2) != LUA_TFUNCTION && !luaL_getmetafield(L, 2, "__call"))
    return luaL_error(L, "module '%s' has no function '%s'", j->names, j->fn);
  lua_settop(L, 2);
  int nargs = copy_decode(L, &j->in);
  lua_call(L, nargs, LUA_MULTRET);
  const char *why;
  int bad = copy_encode(L, 2, lua_gettop(L), &j->out, &why);
  if (bad) return luaL_error(L, "result #%d of %s.%s: %s", bad, j->names, j->fn, why);
  return 0;
}

static void run_job(tstate *s, job *j) {
  lua_State *L = s->L;
  lua_settop(L, 0);
  lua_pushcfunction(L, call_job);
  lua_pushlightuserdata(L, j);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    char msg[64];
    const char *text = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    if (!text) {
      snprintf(msg, sizeof msg, "(error object is a %s value)", luaL_typename(L, -1));
      text = msg;
    }
    copy_failure(&j->out, text);
  }
  lua_settop(L, 0);
}

static void work_cb(uv_work_t *w) {
  job *j = w->data;
  if (!signal_ready) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, STOP_SIGNAL);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    signal_ready = 1;
  }
  tstate *s = take_state();
  if (!s) {
    copy_failure(&j->out, "cannot create a Lua state for the thread");
    return;
  }
  s->job = j;
  current = s;
  pthread_mutex_lock(&mu);
  j->tid = pthread_self();
  j->on_thread = 1;
  pthread_mutex_unlock(&mu);
  /* stopped before stop_job could signal this thread: do not start */
  if (atomic_load(&j->stop)) copy_failure(&j->out, "timeout");
  else run_job(s, j);
  pthread_mutex_lock(&mu);
  j->on_thread = 0;
  pthread_mutex_unlock(&mu);
  current = NULL;
  s->job = NULL;
  if (atomic_load(&j->stop) || s->gen != atomic_load(&generation)) close_state(s);
  else give_state(s);
}

/* ---- jobs (loop thread) ----------------------------------------------- */

static void job_free(job *j) {
  mr_buf_free(&j->in);
  mr_buf_free(&j->out);
  free(j);
}

static void timer_closed_cb(uv_handle_t *h) {
  job *j = h->data;
  j->timer_closed = 1;
  if (j->state == J_DONE) job_free(j);
}

/* The job is done with the pool (ran, or never will): free it once its
 * timer has closed. */
static void job_done(job *j) {
  j->state = J_DONE;
  if (j->timer_closed) job_free(j);
  else if (!uv_is_closing((uv_handle_t *)&j->timer)) uv_close((uv_handle_t *)&j->timer, timer_closed_cb);
}

/* Its Lua stops at its next instruction; a C call it is in goes on. */
static void stop_job(job *j) {
  pthread_mutex_lock(&mu);
  atomic_store(&j->stop, 1);
  if (j->on_thread) pthread_kill(j->tid, STOP_SIGNAL);
  pthread_mutex_unlock(&mu);
}

/* Ends the task's wait with nil, msg. */
static void wake_failed(job *j, const char *msg) {
  mr_task *t = j->t;
  j->t = NULL;
  lua_pushnil(t->co);
  lua_pushstring(t->co, msg);
  task_wake(t, 2);
}

static int decode_protected(lua_State *L) {
  const mr_buf *b = lua_touserdata(L, 1);
  lua_settop(L, 0);
  return copy_decode(L, b);
}

/* Ends the task's wait with the job's results, decoded on the server's
 * state under protection (a memory error is nil, message) and moved over. */
static void wake_results(job *j) {
  mr_task *t = j->t;
  lua_State *L = mr_srv.L;
  int top = lua_gettop(L);
  lua_pushcfunction(L, decode_protected);
  lua_pushlightuserdata(L, &j->out);
  int ok = lua_pcall(L, 1, LUA_MULTRET, 0) == LUA_OK;
  int n = lua_gettop(L) - top;
  if (ok && lua_checkstack(t->co, n)) {
    lua_xmove(L, t->co, n);
    j->t = NULL;
    task_wake(t, n);
    return;
  }
  const char *msg = ok ? "too many results" : lua_tostring(L, -1);
  char text[200];
  snprintf(text, sizeof text, "results could not be copied: %s", msg ? msg : "?");
  lua_settop(L, top);
  wake_failed(j, text);
}

static void dispatch(void);

static void after_work_cb(uv_work_t *w, int status) {
  job *j = w->data;
  jlist_remove(&pool.running, j);
  if (j->t) {
    if (status < 0) wake_failed(j, uv_strerror(status));
    else wake_results(j);
  }
  job_done(j);
  dispatch();
}

/* Hands j to libuv's pool. On failure (libuv refuses only bad arguments)
 * j is left to the caller, not running. */
static int submit(job *j) {
  j->state = J_RUNNING;
  jlist_push(&pool.running, j);
  int rc = uv_queue_work(mr_srv.loop, &j->work, work_cb, after_work_cb);
  if (rc < 0) jlist_remove(&pool.running, j);
  return rc;
}

/* Waiting jobs start, in order, while fewer than --threads run. */
static void dispatch(void) {
  while (pool.running.n < pool.max && pool.waiting.head) {
    job *j = pool.waiting.head;
    jlist_remove(&pool.waiting, j);
    int rc = submit(j);
    if (rc < 0) {
      if (j->t) wake_failed(j, uv_strerror(rc));
      job_done(j);
    }
  }
}

/* The timeout covers the wait in the FIFO and the run. A job running still
 * is told to stop; it keeps its slot until its worker returns. */
static void timeout_cb(uv_timer_t *tm) {
  job *j = tm->data;
  if (j->t) wake_failed(j, "timeout");
  if (j->state == J_WAITING) {
    jlist_remove(&pool.waiting, j);
    j->state = J_DONE;
  } else if (j->state == J_RUNNING) {
    stop_job(j);
  }
  uv_close((uv_handle_t *)tm, timer_closed_cb);
}

/* The task was cancelled (its request ended, or task:cancel()): a job not
 * started yet leaves the FIFO; a running one runs on (bounded by its
 * timeout) and its results are dropped. */
static void job_cancel(mr_task *t) {
  job *j = t->wait_data;
  j->t = NULL;
  if (j->state == J_WAITING) {
    jlist_remove(&pool.waiting, j);
    job_done(j);
  }
}

/* ---- the Lua function ------------------------------------------------- */

/* package.path for thread states: APP's directory first (APP is a directory
 * or one Lua file), then the server's path; the server's cpath. Read once,
 * on the loop thread, at the first call (after the app loaded). */
static void read_paths(lua_State *L) {
  if (pool.path) return;
  const char *app = mr_srv.cfg.app ? mr_srv.cfg.app : ".";
  size_t n = strlen(app);
  while (n > 1 && app[n - 1] == '/') n--;
  uv_fs_t req;
  int is_dir = uv_fs_stat(NULL, &req, app, NULL) == 0 && S_ISDIR(req.statbuf.st_mode);
  uv_fs_req_cleanup(&req);
  if (!is_dir) {
    while (n > 0 && app[n - 1] != '/') n--;
    while (n > 1 && app[n - 1] == '/') n--;
    if (n == 0) app = ".", n = 1;
  }
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  lua_getfield(L, -2, "cpath");
  const char *path = lua_tostring(L, -2), *cpath = lua_tostring(L, -1);
  if (!path) path = "";
  if (!cpath) cpath = "";
  size_t plen = 2 * n + strlen(path) + 32;
  char *p = malloc(plen), *c = strdup(cpath);
  if (!p || !c) mr_oom();
  snprintf(p, plen, "%.*s/?.lua;%.*s/?/init.lua;%s", (int)n, app, (int)n, app, path);
  lua_pop(L, 3);
  pool.path = p;
  pool.cpath = c;
  if (!pool.max) pool.max = mr_srv.cfg.threads ? mr_srv.cfg.threads : DEFAULT_THREADS;
}

/* Seconds as milliseconds, rounded up; > 0. */
static uint64_t check_timeout(lua_State *L, int idx) {
  int isnum;
  lua_Number sec = lua_tonumberx(L, idx, &isnum);
  if (!isnum || !(sec > 0)) luaL_argerror(L, 1, "timeout must be a number of seconds > 0");
  double ms = ceil(sec * 1000.0);
  return ms > 1e12 ? (uint64_t)1e12 : (uint64_t)ms;
}

/* Argument 1: "module.name" or { "module.name", timeout = seconds }. */
static const char *check_module(lua_State *L, uint64_t *ms) {
  if (lua_type(L, 1) == LUA_TSTRING) return lua_tostring(L, 1);
  if (lua_type(L, 1) == LUA_TTABLE) {
    lua_getfield(L, 1, "timeout");
    if (!lua_isnil(L, -1)) *ms = check_timeout(L, -1);
    lua_pop(L, 1);
    lua_rawgeti(L, 1, 1);                    /* kept on the stack while in use */
    if (lua_type(L, -1) == LUA_TSTRING) return lua_tostring(L, -1);
  }
  luaL_typeerror(L, 1, "module name (string) or { \"module.name\", timeout = seconds }");
  return NULL;
}

static int run_k(lua_State *L, int status, lua_KContext ctx) {
  if (task_woke_cancelled(L)) return task_raise_cancelled(L);
  return lua_gettop(L);
}

/* run_in_thread(module, function_name, ...) → the function's results, or
 * nil, message. */
static int l_run_in_thread(lua_State *L) {
  int nargs = lua_gettop(L);
  uint64_t ms = DEFAULT_TIMEOUT_MS;
  const char *module = check_module(L, &ms);
  luaL_argexpected(L, lua_type(L, 2) == LUA_TSTRING, 2, "function name (string)");
  const char *fn = lua_tostring(L, 2);
  mr_task *t = task_check(L, "moonring.run_in_thread");
  task_check_yieldable(L, "moonring.run_in_thread");
  if (t->flags & TF_CANCELLED) return task_raise_cancelled(L);
  read_paths(L);
  if (pool.running.n >= pool.max && pool.waiting.n >= QUEUE_MAX) {
    lua_pushnil(L);
    lua_pushliteral(L, "thread pool queue full");
    return 2;
  }
  mr_buf in = {0};
  const char *why;
  int bad = copy_encode(L, 3, nargs, &in, &why);   /* none when nargs < 3 */
  if (bad) return luaL_argerror(L, bad + 2, why);

  size_t mlen = strlen(module), flen = strlen(fn);
  job *j = calloc(1, sizeof *j + mlen + flen + 2);
  if (!j) {
    mr_buf_free(&in);
    return luaL_error(L, "moonring.run_in_thread: out of memory");
  }
  memcpy(j->names, module, mlen + 1);
  memcpy(j->names + mlen + 1, fn, flen + 1);
  j->fn = j->names + mlen + 1;
  j->in = in;
  j->t = t;
  j->work.data = j;
  atomic_init(&j->stop, 0);
  uv_timer_init(mr_srv.loop, &j->timer);
  j->timer.data = j;
  uv_timer_start(&j->timer, timeout_cb, ms, 0);
  if (pool.running.n >= pool.max) {
    j->state = J_WAITING;
    jlist_push(&pool.waiting, j);
  } else {
    int rc = submit(j);
    if (rc < 0) {
      j->t = NULL;
      job_done(j);
      lua_pushnil(L);
      lua_pushstring(L, uv_strerror(rc));
      return 2;
    }
  }
  lua_settop(L, 0);
  return task_park(L, t, WAIT_THREAD, job_cancel, j, run_k, 0);
}

const luaL_Reg thread_funcs[] = {
  {"run_in_thread", l_run_in_thread},
  {NULL, NULL},
};

/* ---- life cycle ------------------------------------------------------- */

void thread_open(lua_State *L) {
  (void)L;
  if (pool.opened) return;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(STOP_SIGNAL, &sa, NULL);
  pool.opened = 1;
}

void thread_reloaded(void) { atomic_fetch_add(&generation, 1); }

/* Drained: every task has been cancelled; jobs still running stop their Lua
 * so the loop (which waits for them) can end. */
void thread_stop_all(void) {
  for (job *j = pool.running.head; j; j = j->next) stop_job(j);
}

/* Exit: the loop has ended, so no job runs or waits; the cached states go. */
void thread_close_all(void) {
  while (pool.waiting.head) {                /* not reachable: their timers kept the loop */
    job *j = pool.waiting.head;
    jlist_remove(&pool.waiting, j);
    job_free(j);
  }
  pthread_mutex_lock(&mu);
  tstate *s = idle;
  idle = NULL;
  pthread_mutex_unlock(&mu);
  while (s) {
    tstate *next = s->next;
    close_state(s);
    s = next;
  }
  free(pool.path);
  free(pool.cpath);
  pool.path = pool.cpath = NULL;
}
