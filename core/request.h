/* request.h — a request as the Lua bridge serves it. The mr_request lives in
 * C, in a pool reused across requests; Lua names it by an integer handle
 * (slot and generation, so a stale handle is refused) held by its serve
 * function, its body reader and its response writer. It embeds HTTP's
 * exchange and its main task, and owns the tasks spawned in it. It goes back
 * to the pool when HTTP and every one of its tasks are done with it: `refs`
 * counts them. */
#ifndef MR_REQUEST_H
#define MR_REQUEST_H

#include "http.h"
#include "task.h"

typedef struct mr_request {
  mr_exchange ex;               /* first: HTTP's view of it */
  mr_task main;                 /* runs serve(handle) */
  uint32_t slot, gen;           /* the handle; gen changes on every reuse */
  int live;
  int refs;                     /* HTTP until on_end, plus each task not yet released */
  int ended;                    /* HTTP is done with it; its tasks are cancelled */
  const char *end_reason;       /* "done", "closed" or "timeout", for on_close */
  mr_task *tasks;               /* the spawned tasks it owns, linked by sib_* */
  int on_close_ref;             /* registry: array of on_close callbacks, or LUA_NOREF */
  mr_buf body;                  /* request body received and not read yet */
  mr_waitq readers;             /* tasks waiting in req.body:read() */
  mr_waitq drainers;            /* tasks waiting in a write for the output to drain */
  struct mr_link *links;        /* outbound connections its tasks opened (socket.c) */
} mr_request;

static inline mr_request *request_of(mr_exchange *ex) { return (mr_request *)ex; }

/* The userdata at idx if its metatable is `mt` (compared by address: no
 * registry lookup by name on every call), else a type error naming `name`. */
static inline void *check_udata(lua_State *L, int idx, const void *mt, const char *name) {
  void *p = lua_touserdata(L, idx);
  if (p && lua_getmetatable(L, idx)) {
    int ok = lua_topointer(L, -1) == mt;
    lua_pop(L, 1);
    if (ok) return p;
  }
  luaL_typeerror(L, idx, name);
  return NULL;
}

/* strings.c: interned strings, pushed with lua_rawgeti(L, strings_idx, S_X). */
enum {
  S_REQUEST_METHOD = 1, S_URI, S_QUERY_STRING, S_HEADERS, S_BODY, S_SCHEME, S_PROTOCOL,
  S_REMOTE_ADDR, S_SERVER_NAME, S_SERVER_PORT, S_PARAMS, S_ID, S_STATUS, S_HTTP,
  S_HTTP10, S_HTTP11, S_SLASH, S_COMMA, S_SEMICOLON, S_REQ_MT,
  S__COUNT                      /* method names follow: S__COUNT + llhttp method */
};
#define S_METHODS_MAX 64
void strings_init(lua_State *L);
/* Pushes fn as a C closure whose upvalue S_X is that string (and upvalue
 * S__COUNT the table, for method names at S__COUNT + method). */
void strings_closure(lua_State *L, lua_CFunction fn);
#define STR(x) lua_upvalueindex(x)

/* request.c: the pool, handles and ownership. */
mr_request *request_alloc(void);         /* a fresh request; refs is 0 */
void request_unref(mr_request *r);       /* an owner is done with r; the last frees it */
lua_Integer request_handle(const mr_request *r);
mr_request *request_from_handle(lua_Integer h);   /* NULL when stale */
/* The live request a handle names, or a Lua error. */
mr_request *request_check(lua_State *L, int idx);
/* t (a spawned task) belongs to r from now on; r cancels it when it ends. */
void request_adopt(mr_request *r, mr_task *t);
/* The scheduler is done with t, a task r owned. */
void request_disown(mr_task *t);
/* Logs a task failure with the request's id, method, target and route. */
void request_log_failure(mr_request *r, mr_task *t, const char *trace);
void request_pool_free(void);

/* exchange.c: where HTTP hands requests to Lua. */
void request_open(lua_State *L);         /* metatables, strings, and HTTP's callbacks */
int request_build(lua_State *L);         /* request(handle) → req; a strings_closure */

/* body.c: req.body readers. */
void body_open(lua_State *L);
void body_push_reader(lua_State *L, mr_request *r);
void body_received(mr_request *r, const char *p, size_t n);   /* n == 0: the end */
void body_wake_all(mr_request *r);       /* the request ended: readers see "closed" */

/* response.c */
int response_send(lua_State *L);         /* send(handle, res); a strings_closure */

/* stream.c: the response writer. */
extern const luaL_Reg stream_funcs[];
void stream_open(lua_State *L);
void stream_drained(mr_request *r);       /* output dropped below the low-water mark */
void stream_wake_all(mr_request *r);     /* the request ended: writers see "closed" */
lua_Integer stream_out_handle(lua_State *L, int idx);   /* the request handle of a writer */
/* Parks the current task until r's output drains (as a full write does). */
int stream_park_drain(lua_State *L, mr_request *r, lua_KFunction k, lua_KContext ctx);

/* file.c: the file body kind (moonring.file) and static roots (core.dir). */
typedef struct mr_file mr_file;
extern const luaL_Reg file_funcs[];
void file_open(lua_State *L);
mr_file *file_test(lua_State *L, int idx);   /* the file at idx, or NULL */
int64_t file_body_length(const mr_file *f);  /* bytes it will send; -1: sent or closed */
void file_close(mr_file *f);
/* Sends what the socket takes now: 1 all sent, 0 the socket is full, 2 this
 * turn wrote enough, -1 the client is gone. */
int file_send_now(mr_exchange *ex, mr_file *f);
void file_push_pump(lua_State *L);       /* the body method that sends the rest */

/* spawn.c */
extern const luaL_Reg spawn_funcs[];
void spawn_open(lua_State *L);
/* Runs the function below the `nargs` values on top of L (all popped) as a
 * server task; queued, never run from inside the caller. */
void spawn_detached(lua_State *L, int nargs);
void spawn_cancel_all(void);             /* shutdown: every spawned task stops waiting */
void spawn_pool_free(void);

/* socket.c, keepalive.c, dns.c: cosockets (link.h has their internals). */
extern const luaL_Reg socket_funcs[];
extern const luaL_Reg dns_funcs[];
void socket_open(lua_State *L);
void socket_request_done(mr_request *r); /* released: close the connections it still holds */
void socket_stop_all(void);              /* drained: close the pooled connections */
void socket_free_all(void);              /* exit */
/* resparse.c: the HTTP client's response parser. */
extern const luaL_Reg resparse_funcs[];
extern const luaL_Reg fetch_funcs[];         /* fetch.c: one exchange on a cosocket */
extern const luaL_Reg crypto_funcs[];        /* crypto.c: HMAC, random bytes, base64url */
void resparse_open(lua_State *L);

/* thread.c: run_in_thread on libuv's pool; fs.c: moonring.fs. */
extern const luaL_Reg thread_funcs[];
extern const luaL_Reg fs_funcs[];
void thread_open(lua_State *L);
void thread_reloaded(void);              /* a reload succeeded: cached thread states are stale */
void thread_stop_all(void);              /* drained: running jobs' Lua stops */
void thread_close_all(void);             /* exit: the cached thread states */

/* timer.c, channel.c, promise.c */
int timeout_deadline(lua_State *L, int idx, uint64_t *deadline);   /* 0: not a timeout */
extern const luaL_Reg timer_funcs[];
extern const luaL_Reg channel_funcs[];
extern const luaL_Reg promise_funcs[];
void timer_open(lua_State *L);
void channel_open(lua_State *L);
void promise_open(lua_State *L);

#endif
