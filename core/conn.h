/* conn.h — the transport: one client connection's socket, its reads, its
 * write queue, its expiry time and its closing. It knows nothing of HTTP:
 * the layer above allocates its own state around an mr_conn (the mr_conn
 * first, `size` bytes in all) and hears what happens through the callbacks
 * of mr_conn_events. Calls from above are direct. */
#ifndef MR_CONN_H
#define MR_CONN_H

#include "moonring.h"

enum {
  CONN_CLOSING    = 1 << 0,     /* uv_close called */
  CONN_SHUTDOWN   = 1 << 1,     /* write side shut; reading only to drain */
  CONN_READ_EOF   = 1 << 2,     /* the client will send nothing more */
  CONN_READING    = 1 << 3,     /* uv_read_start active */
  CONN_LINGER     = 1 << 4,     /* shutdown done: draining input a moment */
  CONN_HELD       = 1 << 5,     /* the layer above paused reading (conn_hold) */
  CONN_GONE       = 1 << 6,     /* on_close delivered: the layer above has let go */
};

typedef struct mr_conn {
  uv_tcp_t tcp;                 /* tcp.data = this */
  struct mr_conn *prev, *next;
  unsigned flags;
  unsigned writes;              /* uv_write requests in flight */
  size_t pending;               /* their bytes: freed only when their callback runs */
  uint64_t expire;              /* loop time (ms) of the layer above's timeout, 0 = none */
  uint64_t send_expire;         /* loop time (ms) by which queued output must move, 0 = none */
  uint64_t queued_bytes;        /* ever handed to uv_write */
  uint64_t sent_mark;           /* bytes of those sent when the send timeout was armed */
  char remote[46];
} mr_conn;

/* What the transport tells the layer above. Each is called with the
 * connection alive; none may free it (conn_close defers the free to libuv's
 * close callback). */
typedef struct mr_conn_events {
  size_t size;                                  /* bytes per connection, mr_conn first */
  void (*on_open)(mr_conn *c);                  /* accepted: set up the layer's state */
  void (*on_data)(mr_conn *c, char *data, size_t len);  /* data lives until return */
  void (*on_eof)(mr_conn *c);                   /* the client will send nothing more */
  void (*on_drained)(mr_conn *c);               /* a queued write completed */
  void (*on_expired)(mr_conn *c);               /* c->expire passed (not a send stall) */
  void (*on_close)(mr_conn *c);                 /* closing: let go of everything, once */
  int (*idle)(const mr_conn *c);                /* nothing in progress: safe to close */
} mr_conn_events;

void conn_set_events(const mr_conn_events *ev);
void conn_trim(void);            /* malloc_trim once enough connection memory was freed */
int conn_idle(const mr_conn *c);
void conn_accept(mr_server *s);
/* Queue bytes for the client: tries to write at once, copies what remains.
 * The buffers may be reused as soon as this returns. Returns 0 or a uv error
 * (the connection is then closing). */
int conn_write(mr_conn *c, const uv_buf_t *bufs, unsigned n);
/* As conn_write, but bufs[first_kept..n) are never copied: when the socket
 * is full they are written from where they are, so they must stay valid
 * until release(arg, bytes) is called. It is called exactly once, whatever
 * happens (at once when nothing had to wait, or on failure); `bytes` is how
 * much was written from the kept buffers after waiting (0: none). */
typedef void (*mr_release_fn)(void *arg, size_t bytes);
int conn_write_kept(mr_conn *c, const uv_buf_t *bufs, unsigned n, unsigned first_kept,
                    mr_release_fn release, void *arg);
/* sendfile(2) from fd at *off (at most len bytes) once nothing queued
 * waits: the bytes sent, UV_EAGAIN (socket or queue full: nothing sent), or
 * another uv error (the connection is then closing). */
ssize_t conn_sendfile(mr_conn *c, int fd, int64_t *off, size_t len);
/* Bytes handed to conn_write that this connection still holds: queued for
 * the socket, or written but not yet released by libuv's write callback
 * (which runs on a later loop iteration). What backpressure must bound. */
static inline size_t conn_queued(const mr_conn *c) { return c->pending; }
enum {
  CONN_CLOSE_GRACEFUL,          /* after what is queued is written; then drain input a moment */
  CONN_CLOSE_RESET,             /* at once, with a reset: the client sees a cut response */
  CONN_CLOSE_NOW,               /* at once, plain close (idle connections) */
};
void conn_close(mr_conn *c, int how);
/* Reading on/off for the layer above (a full input buffer). */
void conn_hold(mr_conn *c);
void conn_release(mr_conn *c);
/* The expiry the server's sweep checks; conn_arm(c, 0) disarms. */
void conn_arm(mr_conn *c, uint64_t ms);
static inline void conn_disarm(mr_conn *c) { c->expire = 0; }
static inline int conn_armed(const mr_conn *c) { return c->expire != 0; }
/* Called by the sweep once c->expire or c->send_expire has passed. */
void conn_expired(mr_conn *c, uint64_t now);
static inline int conn_due(const mr_conn *c, uint64_t now) {
  return (c->expire && now >= c->expire) || (c->send_expire && now >= c->send_expire);
}
/* Called by the sweep for a connection whose reading is held: a reset the
 * client sent meanwhile is noticed here rather than at the next read. */
void conn_check_reset(mr_conn *c);

#endif
