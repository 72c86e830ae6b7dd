/* request.h — a request being served. The mr_request lives in C, in a pool
 * reused across requests; Lua names it by an integer handle (slot and
 * generation, so a stale handle is refused) passed to the serve loop, and
 * `req.body` is a small userdata holding the same pair. `conn` is NULL once
 * the client is gone; the struct goes back to the pool when both the
 * connection and the coroutine are done with it (request_release). */
#ifndef MR_REQUEST_H
#define MR_REQUEST_H

#include "conn.h"
#include <lauxlib.h>

enum {
  REQ_HAS_BODY    = 1 << 0,
  REQ_BODY_DONE   = 1 << 1,     /* the whole request body has arrived */
  REQ_HEAD_SENT   = 1 << 2,
  REQ_RESP_DONE   = 1 << 3,     /* the last byte of the response is queued */
  REQ_CHUNKED     = 1 << 4,     /* response uses chunked encoding */
  REQ_IS_HEAD     = 1 << 5,
  REQ_KEEP_ALIVE  = 1 << 6,     /* the connection may serve another request */
  REQ_HTTP10      = 1 << 7,
  REQ_RUNNING     = 1 << 8,     /* inside lua_resume */
  REQ_CANCEL      = 1 << 9,     /* cancel as soon as the coroutine is suspended */
  REQ_ENDED       = 1 << 10,    /* coroutine finished or cancelled */
  REQ_MSG_DONE    = 1 << 11,    /* the parser saw the end of the request message */
  REQ_CONTINUE    = 1 << 12,    /* client expects 100-continue before the body */
};

enum { WAIT_NONE, WAIT_SLEEP, WAIT_BODY, WAIT_DRAIN };

typedef struct mr_request {
  mr_conn *conn;
  lua_State *co;                /* NULL once the coroutine has ended */
  int thread;                   /* the coroutine's slot in the runner's table */
  uint32_t slot, gen;           /* the handle; gen changes on every reuse */
  int live;
  unsigned flags;
  uint8_t wait;                 /* what the parked coroutine waits for */
  void (*wait_cancel)(struct mr_request *r);
  void *wait_data;
  int status;
  uint64_t id;
  uint64_t start_ns;
  uint64_t bytes_out;           /* body bytes, for the access log */
  mr_buf body;                  /* request body received and not read yet */
  size_t body_total;
} mr_request;

/* strings.c: interned strings, pushed with lua_rawgeti(L, strings_idx, S_X). */
enum {
  S_REQUEST_METHOD = 1, S_URI, S_QUERY_STRING, S_HEADERS, S_BODY, S_SCHEME, S_PROTOCOL,
  S_REMOTE_ADDR, S_SERVER_NAME, S_SERVER_PORT, S_PARAMS, S_ID, S_STATUS, S_HTTP,
  S_HTTP10, S_HTTP11, S_SLASH, S_COMMA, S_SEMICOLON,
  S__COUNT                      /* method names follow: S__COUNT + llhttp method */
};
#define S_METHODS_MAX 64
void strings_init(lua_State *L);
static inline int strings_push(lua_State *L) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, mr_srv.strings_ref);
  return lua_gettop(L);
}

/* Builds the Lua request from c->ps and starts its coroutine; `complete`
 * when the parser has already seen the end of the message (no body). */
void request_start(mr_conn *c, int complete);
/* The parser delivered body bytes, or the end of the body. */
void request_body(mr_request *r, const char *p, size_t n);
/* Wakes a coroutine waiting in req.body:read() if there is news for it. */
void request_body_notify(mr_request *r);
/* Returns the request to the pool once both the connection and the
 * coroutine are done with it; its handle is stale from then on. */
void request_release(mr_request *r);
/* The live request a handle names, or a Lua error. */
mr_request *request_check(lua_State *L, int idx);
void request_pool_free(void);
void request_open(lua_State *L);         /* creates the request-handle metatable */

/* response.c */
extern const luaL_Reg response_funcs[];
/* A complete short text/plain response; `rflags` (REQ_KEEP_ALIVE, REQ_HTTP10)
 * choose the Connection header. */
int response_simple(mr_conn *c, int status, const char *body, unsigned rflags);
const char *response_reason(int status);

/* sleep.c */
extern const luaL_Reg sleep_funcs[];

#endif
