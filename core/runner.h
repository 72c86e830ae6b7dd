/* runner.h — runs each request in its own coroutine. A primitive that waits
 * parks the coroutine with runner_park; the libuv callback that ends the wait
 * calls runner_wake. Resumes happen only from loop callbacks, and after each
 * resume runner_resume alone decides what the result means. */
#ifndef MR_RUNNER_H
#define MR_RUNNER_H

#include "request.h"

/* Lends r a coroutine ready to run (reused or new); r->co is set. */
lua_State *runner_take(mr_request *r);
void runner_free(void);
/* Resumes a parked or new coroutine with `nargs` values on its stack. */
void runner_resume(mr_request *r, int nargs);
/* Raises a clear error if a primitive called from L could not park it (a
 * C boundary: metamethod, table.sort comparator, __close handler). Call it
 * before the primitive has any side effect. */
void runner_check_yieldable(lua_State *L, const char *what);
/* From inside a primitive: park the calling coroutine until runner_wake.
 * `cancel` (may be NULL) undoes the wait if the request is cancelled.
 * Use as `return runner_park(L, r, WAIT_X, cancel, data, k, ctx);` */
int runner_park(lua_State *L, mr_request *r, int wait, void (*cancel)(mr_request *),
                void *data, lua_KFunction k, lua_KContext ctx);
void runner_wake(mr_request *r, int nargs);
/* Stop the request's coroutine; deferred if it is running right now. */
void runner_cancel(mr_request *r);
/* The request whose coroutine is `L`, or NULL (main thread, user coroutines). */
mr_request *runner_current(lua_State *L);

#endif
