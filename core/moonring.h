/* moonring.h — the cross-file API of the core: configuration, the server
 * (one per worker process: one libuv loop, one lua_State), the small growable
 * buffer every module uses, and logging. Each layer's own types live in its
 * header: conn.h (transport), http.h (HTTP), request.h and task.h (the Lua
 * bridge). */
#ifndef MOONRING_H
#define MOONRING_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <uv.h>
#include <lua.h>

#define MR_KIB 1024u

typedef struct mr_config {
  const char *host;
  int port;
  int dev;                      /* error bodies carry message + traceback */
  int watch;                    /* reload when a file under APP changes (on with dev) */
  int workers;                  /* >0: run a supervisor with this many workers */
  int listen_fd;                /* a worker: the supervisor's listening socket (else -1) */
  int ready_fd;                 /* a worker: told "ready" once serving (else -1) */
  long worker_id;               /* a worker: the supervisor's number for it (else 0) */
  const char *access_log;       /* "-" = stderr, NULL = off, else a path */
  const char *app;              /* a route directory or a single Lua file */
  size_t max_header_size;       /* request line + headers; over it: 431 */
  size_t max_body_size;         /* over it: 413 */
  size_t write_buffer;          /* output queued per connection before a writer parks */
  uint64_t header_timeout_ms;   /* head not complete in time: 408 */
  uint64_t idle_timeout_ms;     /* keep-alive connection without a request */
  uint64_t request_timeout_ms;  /* response not started in time: 504 */
  uint64_t grace_ms;            /* SIGTERM drain bound */
  uint64_t cpu_budget_ms;       /* Lua run without yielding before it is stopped */
  unsigned max_connections;     /* over it: 503 and close */
  unsigned max_inflight;        /* requests being handled; over it: 503 + Retry-After */
  unsigned threads;             /* run_in_thread jobs running at once (0: the default, 4) */
} mr_config;

struct mr_conn;
struct mr_parse;

typedef struct mr_server {
  uv_loop_t *loop;
  lua_State *L;
  mr_config cfg;
  uv_tcp_t listener;
  int port;                     /* the bound port (the real one for --port 0) */
  struct mr_conn *conns;        /* every open connection, doubly linked */
  unsigned nconns;
  unsigned inflight;            /* requests started and not finished (http.c) */
  int draining;                 /* SIGTERM seen: finish in-flight, then exit */
  uint64_t next_request_id;
  char *readbuf;                /* one read slab shared by all connections */
  struct mr_parse *parse_pool;  /* free head-parse states, reused */
  unsigned parse_pool_len;
  int serve_ref;                /* registry: serve bound to the app, run by each main task */
  int strings_ref;              /* registry: interned hot-path strings (strings.c) */
  void (*on_stopped)(void);     /* drained: the bridge stops every task still running */
  uv_signal_t sig_term, sig_int;
  uv_timer_t grace_timer;
  uv_timer_t sweep;             /* checks connection expiry times */
  uv_check_t log_flush;
} mr_server;

/* The worker's server. There is exactly one per process. */
extern mr_server mr_srv;

/* Growable byte buffer. `data` is NULL until the first append. */
typedef struct mr_buf {
  char *data;
  size_t len, cap;
} mr_buf;

void mr_buf_grow(mr_buf *b, size_t extra);
static inline void mr_buf_reserve(mr_buf *b, size_t extra) {
  if (b->len + extra > b->cap) mr_buf_grow(b, extra);
}
static inline void mr_buf_append(mr_buf *b, const void *p, size_t n) {
  mr_buf_reserve(b, n);
  memcpy(b->data + b->len, p, n);
  b->len += n;
}
void mr_buf_free(mr_buf *b);
#define mr_buf_lit(b, s) mr_buf_append((b), (s), sizeof(s) - 1)

/* Out of memory outside Lua (which raises its own error): nothing sane is
 * left to do. */
void mr_oom(void) __attribute__((noreturn));

/* RFC 9110 token: what a header field name may be made of. */
static inline int mr_is_token(const char *s, size_t n) {
  if (!n) return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'z') continue;
    if (ch >= '0' && ch <= '9') continue;
    switch (ch) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
    case '-': case '.': case '^': case '_': case '`': case '|': case '~':
      continue;
    default:
      return 0;
    }
  }
  return 1;
}

/* server.c */
int server_start(mr_server *s);          /* bind, listen, print the listening line */
void server_drain(mr_server *s);         /* stop accepting, close idle connections */
void server_conn_closed(mr_server *s);   /* a connection finished closing */
void server_print_listening(const char *host, int port);   /* the startup line on stdout */

/* alloc.c: the Lua state's allocator, and freeing its cache at exit. */
void *mr_lua_alloc(void *ud, void *ptr, size_t osize, size_t nsize);
void mr_lua_alloc_release(void);

/* lmoonring.c: opens the `moonring.core` module and loads serve + app. */
int mr_lua_init(mr_server *s, const char *lua_dir, char *err, size_t errlen);
void mr_teardown(void);                  /* after the loop ends: free everything */

/* reload.c: the app reloaded in place on SIGHUP and, with --watch, on save. */
void reload_bind(lua_State *L, int serve_idx, int app_idx);  /* serve() and moonring.app */
int reload_start(mr_server *s);
void reload_stop(void);

/* supervisor.c: --workers N runs N workers of this binary on one socket. */
int supervisor_run(mr_config *cfg, int argc, char **argv);

/* log.c */
int log_open(const char *access_log);
int log_access_enabled(void);            /* false with --access-log off */
void log_access(const char *remote, const char *method, size_t mlen, const char *target,
                size_t tlen, int major, int minor, int status, uint64_t bytes,
                uint64_t start_ns, uint64_t id);
void log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
typedef struct mr_lograte {
  uint64_t last_ms;
  unsigned suppressed;
} mr_lograte;
void log_error_rate(mr_lograte *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_flush(void);
const char *log_http_date(void);        /* "Sun, 22 Nov 2026 04:14:44 GMT", cached per second */

#endif
