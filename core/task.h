/* task.h — the unit the runner schedules: a coroutine, the request that owns
 * it (NULL: the server), and the one thing it waits for. A primitive that
 * waits parks the task (task_park); whatever ends the wait pushes the results
 * on the task's coroutine and calls task_wake, which only queues the task.
 * The run queue is drained from the loop (task_run, and a prepare + check
 * handle for wakes that happen outside a drain), so no coroutine is ever
 * resumed from inside another's primitive. After each resume one function
 * decides what happened: parked, finished, or failed.
 *
 * Cancelling a task wakes it with "cancelled": the primitive it waits in
 * raises it (or returns nil, "cancelled"), so pcall and <close> unwind
 * normally. Cancellation stops waiting only: a primitive that completes
 * without waiting still works in a cancelled task. */
#ifndef MR_TASK_H
#define MR_TASK_H

#include "moonring.h"
#include <lauxlib.h>

struct mr_request;
typedef struct mr_task mr_task;

enum { TASK_NEW, TASK_READY, TASK_RUNNING, TASK_PARKED, TASK_DONE };

enum {
  TF_CANCELLED = 1 << 0,        /* its waits end with "cancelled" from now on */
  TF_STRUCK    = 1 << 1,        /* over its CPU budget once: "cpu budget exceeded" raised */
  TF_KILLED    = 1 << 2,        /* over it again: stopped at the next yield */
  TF_WROTE     = 1 << 3,        /* it wrote part of its request's response body */
  TF_OBJECT    = 1 << 4,        /* a Lua task object names it (spawn.c) */
  TF_QUEUED    = 1 << 5,        /* in the run queue */
  TF_RELEASED  = 1 << 6,        /* the scheduler is done with it (spawn.c) */
};

enum { WAIT_NONE, WAIT_SLEEP, WAIT_BODY, WAIT_DRAIN, WAIT_JOIN, WAIT_CHANNEL, WAIT_SELECT,
       WAIT_PROMISE, WAIT_TURN, WAIT_SOCKET, WAIT_THREAD, WAIT_FS };
enum { WAKE_OK, WAKE_CANCEL };

/* A task's place in one wait queue. A task waiting on one thing uses the node
 * in its struct; select uses one node per operation. */
typedef struct mr_waitq mr_waitq;
typedef struct mr_wnode {
  struct mr_wnode *next, *prev;
  mr_waitq *q;                  /* NULL when not queued */
  mr_task *task;
  lua_State *co;                /* the coroutine that waits (the task's own, or nested) */
  int index;                    /* select: the operation (1-based); 0 for a plain wait */
  int vidx;                     /* put: stack index of the value in `co` */
} mr_wnode;

struct mr_waitq {
  mr_wnode *head, *tail;
};

static inline void waitq_push(mr_waitq *q, mr_wnode *n) {
  n->q = q;
  n->next = NULL;
  n->prev = q->tail;
  if (q->tail) q->tail->next = n; else q->head = n;
  q->tail = n;
}

static inline void waitq_remove(mr_wnode *n) {
  mr_waitq *q = n->q;
  if (!q) return;
  if (n->prev) n->prev->next = n->next; else q->head = n->next;
  if (n->next) n->next->prev = n->prev; else q->tail = n->prev;
  n->q = NULL;
  n->next = n->prev = NULL;
}

/* What a kind of task does when its function ends, and when the scheduler
 * lets go of it. */
typedef struct mr_task_ops {
  /* The function returned (status LUA_OK, `nres` results on top of t->co)
   * or failed (the error on top of t->co, whose stack is not unwound yet). */
  void (*ended)(mr_task *t, int status, int nres);
  /* The scheduler is done with t: its coroutine is given back. */
  void (*release)(mr_task *t);
} mr_task_ops;

typedef void (*mr_wait_cancel)(mr_task *t);

struct mr_task {
  lua_State *co;                /* NULL once given back */
  int thread;                   /* the coroutine's slot in the runner's table */
  struct mr_request *req;       /* owner; NULL for server tasks */
  mr_task *sib_next, *sib_prev; /* the owner's list of tasks */
  mr_task *run_next;            /* run queue link */
  const mr_task_ops *ops;
  uint32_t slot, gen;           /* handle of a spawned task (spawn.c) */
  uint8_t state, wait, wake;
  unsigned flags;
  int nargs;                    /* values pushed on co for the next resume */
  mr_wait_cancel wait_cancel;   /* undoes the wait when the task is cancelled */
  void *wait_data;
  mr_wnode node;                /* the task's place in a single wait */
  mr_waitq joiners;             /* tasks waiting in join() (spawn.c) */
  int results_ref;              /* registry: results or error kept for join() */
  int note_ref;                 /* registry: {error, traceback} noted by raise() */
};

/* The coroutine library wrapper and the runner share one marker: a
 * primitive that parks yields it, and a wrapped resume that sees it parks
 * its own coroutine in turn, up to the task. */
extern char task_park_marker;

void task_init(lua_State *L);
void task_free_all(void);
/* Lends t a coroutine (reused or new) and sets t->co; the function and its
 * arguments are then pushed on it. Returns t->co. */
lua_State *task_take_thread(mr_task *t);
/* Starts a task whose coroutine holds the function and `nargs` arguments:
 * runs it now when no drain is under way, else queues it. */
void task_start(mr_task *t, int nargs);
/* As task_start, but always queued: the caller goes on first. */
void task_queue(mr_task *t, int nargs);
/* The task running now, when L is its coroutine (or a coroutine it resumed
 * through the coroutine library); NULL elsewhere. */
mr_task *task_current(lua_State *L);
/* As task_current, but raises "<what>: not inside a task" instead of NULL. */
mr_task *task_check(lua_State *L, const char *what);
/* Raises a clear error if a primitive called from L could not park it (a
 * C boundary: metamethod, table.sort comparator, __close handler). Call it
 * before the primitive has any side effect. */
void task_check_yieldable(lua_State *L, const char *what);
/* From inside a primitive in coroutine L: park the task until task_wake.
 * Raises "cancelled" when the task is cancelled already (after calling
 * `cancel` to undo what the primitive set up). `cancel` (may be NULL) undoes
 * the wait if the task is cancelled meanwhile.
 * Use as `return task_park(L, t, WAIT_X, cancel, data, k, ctx);` */
int task_park(lua_State *L, mr_task *t, int wait, mr_wait_cancel cancel, void *data,
              lua_KFunction k, lua_KContext ctx);
/* Ends t's wait: `nargs` values already pushed on t->co become the
 * results of the primitive it waits in. Only queues t. */
void task_wake(mr_task *t, int nargs);
/* In a primitive's continuation: true when this resume is a cancellation. */
int task_woke_cancelled(lua_State *L);
/* Raises the string "cancelled" (no position: callers match it exactly). */
int task_raise_cancelled(lua_State *L);
/* Wakes t with "cancelled" if it waits; else it sees it at its next wait. */
void task_cancel(mr_task *t);
/* Runs queued tasks until none is left. */
void task_run(void);
/* Output written by the running slice: a task that writes fast to a fast
 * client never waits, so after enough of it, it gives the loop a turn. */
void task_note_output(size_t n);
int task_output_heavy(void);
/* Parks t until the loop's next iteration (I/O is read, other tasks run),
 * then resumes it in `k`. Use as `return task_yield_turn(L, t, k, ctx);` */
int task_yield_turn(lua_State *L, mr_task *t, lua_KFunction k, lua_KContext ctx);
/* Pushes onto L "message\nstack traceback..." for t's failure (the error on
 * top of t->co); uses a traceback noted by raise() when it names the same
 * error. Never raises. */
const char *task_push_failure(mr_task *t, lua_State *L);
/* Keeps `traceback` (a string on top of L, popped) as the place where the
 * error at `eidx` in L came from, for the failure report. */
void task_note_error(mr_task *t, lua_State *L, int eidx);
/* If a traceback was noted for the error at `eidx`, pushes it and returns 1. */
int task_push_noted(mr_task *t, lua_State *L, int eidx);
/* True for the error value a cancelled wait raises. */
int task_is_cancel_error(lua_State *L, int idx);
extern const luaL_Reg task_funcs[];

/* For coro.c and budget.c: a resume of a nested coroutine `co` from `from`
 * (the innermost one running for the task) begins and ends; a coroutine in
 * the chain of one parked in a primitive is marked so that only the wrapper
 * carrying the wake resumes it. */
int task_nested_enter(lua_State *from, lua_State *co, lua_State **saved);
void task_nested_leave(lua_State *saved, int saved_ok);
void task_mark_parked(lua_State *L);
int task_nested_parked(lua_State *co);
void task_nested_unpark(lua_State *co);
int task_killed(void);                   /* the running task is being stopped */
int task_can_yield(lua_State *L);        /* L and every resumer up to the task may yield */

/* coro.c: replaces coroutine.resume/wrap/close so that moonring primitives
 * work inside coroutines a handler makes, and task coroutines cannot be
 * resumed or closed from Lua. */
void coro_open(lua_State *L);

/* budget.c: the CPU budget. A watchdog thread sees a slice (one resume) run
 * past --cpu-budget and signals the loop thread, whose handler sets a count
 * hook on the coroutine running then; the hook raises "cpu budget exceeded"
 * and, if that is caught, stops the task. */
int budget_start(uint64_t budget_ms);
void budget_stop(void);
/* A resume of t's coroutine co begins: a new slice. `can_yield`: every
 * coroutine between the task and the one running may yield. */
void budget_enter(mr_task *t, lua_State *co, int can_yield);
void budget_switch(lua_State *co, int can_yield);   /* the slice goes on in another coroutine */
void budget_leave(void);                 /* no task runs Lua any more */

#endif
