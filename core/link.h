/* link.h — one outbound connection (TCP or unix socket) as the cosockets
 * see it, shared by socket.c (the Lua socket object and its operations) and
 * keepalive.c (the per-worker pool of idle connections).
 *
 * Ownership: an mr_link is malloc'd and owns its uv handle, its two timers
 * and its input buffer. At any moment it belongs to exactly one of
 *   - a Lua socket (sock->link == link), and then also to the request whose
 *     task connected it (link->owner, listed in the request's `links`);
 *   - the keepalive pool (link->kp != NULL), idle;
 *   - nobody, while its handles close (L_CLOSING): the last close callback
 *     frees it.
 * Waits on it (a connect, a receive, a send) are parked tasks named in
 * link->reader / link->writer; whatever ends the wait only sets flags and
 * wakes the task, and the primitive's continuation reads the outcome from
 * the link, so no Lua runs inside a libuv callback. */
#ifndef MR_LINK_H
#define MR_LINK_H

#include "request.h"

enum {
  L_CONNECTED = 1 << 0,         /* connect completed */
  L_EOF       = 1 << 1,         /* the peer will send nothing more */
  L_READING   = 1 << 2,         /* uv_read_start active */
  L_CLOSING   = 1 << 3,         /* handles closing; freed when all closed */
  L_RTIMEDOUT = 1 << 4,         /* the read (or connect) timer fired */
  L_WTIMEDOUT = 1 << 5,         /* the send timer fired */
  L_CDONE     = 1 << 6,         /* the connect completed (status in cerr) */
  L_RESOLVED  = 1 << 7,         /* the name lookup completed (status in cerr) */
  L_PIPE      = 1 << 8,         /* a unix socket (h.pipe), else TCP (h.tcp) */
};

/* What a parked receive waits for; kept in the link while it waits. The
 * pattern of receiveuntil points into a Lua string the iterator holds. */
enum { PAT_LINE, PAT_ALL, PAT_COUNT, PAT_ANY, PAT_UNTIL };
typedef struct mr_readop {
  int kind;
  size_t n;                     /* COUNT: bytes; ANY: at most; UNTIL: chunk size (0: all) */
  const char *pat;              /* UNTIL */
  size_t plen;
} mr_readop;

#define LINK_ADDRS 4

struct mr_kpool;
struct mr_dnsq;

typedef struct mr_link {
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } h;
  uv_timer_t rtimer;            /* connect, receive */
  uv_timer_t wtimer;            /* send */
  int open_handles;             /* handles not yet closed; freed at 0 */
  unsigned flags;
  int rerr, werr, cerr;         /* uv errors of the read side, the write, the connect */
  mr_buf in;                    /* received: in.data[in_off .. in.len) not consumed */
  size_t in_off;
  mr_task *reader;              /* parked in connect or receive */
  mr_task *writer;              /* parked in send */
  mr_readop rop;
  uv_connect_t creq;
  uv_write_t wreq;
  char *wcopy;                  /* what the write in flight sends (ours) */
  struct sockaddr_storage addrs[LINK_ADDRS];   /* where connect goes: IPv4 first */
  int naddrs;
  struct mr_dnsq *dnsq;         /* the lookup in flight, if any */
  unsigned reused;              /* times taken from the pool */
  uint64_t idle_until;          /* pooled: loop time it is closed at (0: never) */
  unsigned pool_size;           /* connect's opts.pool_size (0: none given) */
  size_t wlen;                  /* bytes of the send that waits for the write */
  struct mr_request *owner;     /* the request whose task connected it */
  struct mr_link *own_prev, *own_next;
  struct mr_kpool *kp;          /* the pool it idles in */
  struct mr_link *kp_prev, *kp_next;
  char *key;                    /* pool key: "host:port", "unix:/path" or opts.pool */
  struct mr_socket *sock;       /* the Lua socket it is attached to, if any */
} mr_link;

mr_link *link_new(void);
/* A timer of k fired: it is one of k's two. */
static inline mr_link *link_of_rtimer(uv_timer_t *t) {
  return (mr_link *)((char *)t - offsetof(mr_link, rtimer));
}

/* The Lua socket: its link while it has one, and its timeouts. */
typedef struct mr_socket {
  mr_link *link;                /* NULL: closed (never connected, closed, or pooled) */
  uint32_t ct, st, rt;          /* connect, send, read timeouts in ms; 0: none */
  uint32_t epoch;               /* changes whenever its link does: a wait that began
                                 * on an older link finds the socket closed */
} mr_socket;

#define SOCKET_MT "moonring.socket"

extern const void *socket_mt;   /* the metatable, compared by address (check_udata) */
static inline mr_socket *sock_check(lua_State *L) { return check_udata(L, 1, socket_mt, SOCKET_MT); }

static inline int sock_fail(lua_State *L, const char *err) {
  lua_pushnil(L);
  lua_pushstring(L, err);
  return 2;
}

/* A continuation's socket still has the link its wait began on (the epoch
 * the wait was parked with): not closed, and not connected again (by
 * another task) meanwhile. */
static inline int sock_same_link(const mr_socket *s, lua_KContext ctx) {
  return s->link && s->epoch == (uint32_t)ctx;
}

/* Timers count from now, not from the loop's cached time: Lua may have run
 * for a while in this turn of the loop. */
static inline void sock_arm(uv_timer_t *tm, uint32_t ms, uv_timer_cb cb) {
  if (!ms) return;
  uv_update_time(mr_srv.loop);
  uv_timer_start(tm, cb, ms, 0);
}

/* socket.c */
/* Idempotent. Whoever is parked on k is woken and finds its socket closed. */
void link_close(mr_link *k);
/* A task waiting on k was cancelled: the connection is closed. */
void link_wait_cancel(mr_task *t);
/* k (attached to a socket) back to the pool: 1, or 0 when it was not fit
 * to keep (not connected, busy, unread input, closed by the peer) and was
 * closed instead. */
int socket_pool(mr_link *k, uint64_t idle_ms, unsigned size);
/* A new socket (pushed on L) on the pooled connection for `key`, owned by
 * the calling task's request, every timeout `ms`; NULL (nothing pushed)
 * when the pool has none. */
mr_socket *socket_take_pooled(lua_State *L, const char *key, uint32_t ms);

/* sockio.c */
void link_read_start(mr_link *k);
void link_read_stop(mr_link *k);
void link_wake_reader(mr_link *k);             /* the read or connect wait is over */
void link_rtimer_cb(uv_timer_t *tm);           /* the read or connect timeout */
void link_wtimer_cb(uv_timer_t *tm);           /* the send timeout */
/* Writes len bytes at p (block: the same bytes in a malloc'd block that
 * becomes the link's, or NULL when p is the caller's): 1 when the kernel
 * took them all, 0 when the rest is queued (the caller parks as k->writer
 * until the write completes, then calls link_send_done), or a negative uv
 * error (the link is closed). */
int link_send(mr_link *k, const char *p, size_t len, char *block);
/* After a queued write: 0, or a uv error (UV_ETIMEDOUT: the send timer);
 * the link is then closed. */
int link_send_done(mr_link *k);
const char *link_error(int err);               /* "timeout" for UV_ETIMEDOUT, else libuv's text */
extern const luaL_Reg sockio_methods[];

/* keepalive.c */
/* Puts k (connected, idle, input consumed) in the pool named k->key, which
 * holds at most `size`; closes the least recently used over it. idle_ms 0:
 * no idle timeout. */
void keepalive_put(mr_link *k, uint64_t idle_ms, unsigned size);
/* The most recently pooled connection for `key`, taken out, or NULL. */
mr_link *keepalive_take(const char *key);
void keepalive_remove(mr_link *k);             /* k is leaving the pool (closing) */
void keepalive_free_all(void);                 /* exit: close every pooled link */

/* dns.c */
/* Looks `name` up for connect: 1 when the cache answered (k->addrs set, port
 * 0), 0 when a lookup started (k->dnsq; L_RESOLVED is set and
 * k->reader woken when it completes), or a negative uv error. */
int dns_lookup_for(mr_link *k, const char *name, uint64_t ttl_ms);
void dns_detach(mr_link *k);                   /* k closes: its lookup's answer is dropped */
void dns_free_all(void);
uint64_t dns_default_ttl(void);   /* ms; 0: no cache */
extern const luaL_Reg dns_funcs[];

#endif
