/* conn.c — the transport: accepts a client, reads into the server's shared
 * slab and hands the bytes up, writes with try-then-queue, and closes
 * gracefully (shutdown, then drain the client's leftovers for a moment) or by
 * reset. Timeouts are an expiry time per connection, checked by the server's
 * sweep timer (no timer handle per connection); a send that makes no
 * progress is this layer's own timeout, the rest belong to the layer above.
 * The connection (allocated with the layer above's state around it) is freed
 * in its socket's close callback, after on_close let go of it. */
#include "conn.h"
#include <errno.h>
#include <sys/sendfile.h>
#include <netinet/in.h>
#include <malloc.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define READBUF_SIZE  (64 * MR_KIB)
#define LINGER_MS     2000     /* how long a closing connection drains input */

static const mr_conn_events *ev;

/* Memory given back by closed connections and finished writes since the
 * last malloc_trim: glibc keeps freed heap memory mapped, so after 3,000
 * slow clients leave, RSS would stay where their peak put it. */
#define TRIM_AFTER (1024 * MR_KIB)
static size_t freed;

void conn_trim(void) {
  if (freed < TRIM_AFTER) return;
  freed = 0;
  malloc_trim(0);
}

void conn_set_events(const mr_conn_events *events) { ev = events; }

int conn_idle(const mr_conn *c) { return ev->idle(c); }

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

void conn_arm(mr_conn *c, uint64_t ms) { c->expire = ms ? uv_now(mr_srv.loop) + ms : 0; }

/* Bytes of queued output the socket has taken so far. */
static uint64_t sent_bytes(const mr_conn *c) { return c->queued_bytes - c->tcp.write_queue_size; }

/* The send timeout has a deadline of its own: it must not replace (or be
 * replaced by) the layer above's, e.g. the request deadline of a pipelined
 * request whose predecessor's response is still being written. */
static void arm_send(mr_conn *c) {
  c->sent_mark = sent_bytes(c);
  c->send_expire = uv_now(mr_srv.loop) + mr_srv.cfg.idle_timeout_ms;
}

void conn_expired(mr_conn *c, uint64_t now) {
  if (c->send_expire && now >= c->send_expire) {
    c->send_expire = 0;
    if (c->writes && sent_bytes(c) > c->sent_mark) {
      arm_send(c);                     /* a slow reader, but a reader: more time */
    } else if (c->writes || (c->flags & CONN_SHUTDOWN)) {
      /* The client stopped reading our output (or the last writes are
       * stuck): a reset, so it cannot take a cut body for a whole one
       * (HTTP/1.0 close-delimited), even after a graceful close began. */
      conn_close(c, c->writes ? CONN_CLOSE_RESET : CONN_CLOSE_NOW);
      return;
    }
  }
  if (!c->expire || now < c->expire) return;
  c->expire = 0;
  if (c->flags & CONN_SHUTDOWN) conn_close(c, CONN_CLOSE_NOW);   /* linger over */
  else if (c->writes) c->expire = c->send_expire;   /* output still moving: after it */
  else ev->on_expired(c);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  if (!mr_srv.readbuf) mr_srv.readbuf = malloc(READBUF_SIZE);
  buf->base = mr_srv.readbuf;
  buf->len = mr_srv.readbuf ? READBUF_SIZE : 0;
}

static void read_start(mr_conn *c) {
  if (c->flags & (CONN_READING | CONN_READ_EOF | CONN_CLOSING)) return;
  if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) == 0) c->flags |= CONN_READING;
}

static void read_stop(mr_conn *c) {
  if (!(c->flags & CONN_READING)) return;
  uv_read_stop((uv_stream_t *)&c->tcp);
  c->flags &= ~CONN_READING;
}

void conn_hold(mr_conn *c) {
  c->flags |= CONN_HELD;
  read_stop(c);
}

void conn_release(mr_conn *c) {
  c->flags &= ~CONN_HELD;
  read_start(c);
}

/* TCP_INFO tells whether a reset arrived while we were not reading. */
void conn_check_reset(mr_conn *c) {
  if (!(c->flags & CONN_HELD) || (c->flags & (CONN_CLOSING | CONN_SHUTDOWN))) return;
  uv_os_fd_t fd;
  struct tcp_info info;
  socklen_t len = sizeof info;
  if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0 &&
      getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) == 0 && info.tcpi_state == TCP_CLOSE)
    conn_close(c, CONN_CLOSE_RESET);
}

static void close_cb(uv_handle_t *h) {
  mr_conn *c = h->data;
  mr_server *s = &mr_srv;
  if (c->prev) c->prev->next = c->next; else s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  s->nconns--;
  free(c);
  freed += ev->size + READBUF_SIZE / 16;   /* the struct, and a share of what the layer above freed */
  server_conn_closed(s);
}

void conn_accept(mr_server *s) {
  mr_conn *c = calloc(1, ev->size);
  if (!c) return;
  uv_tcp_init(s->loop, &c->tcp);
  c->tcp.data = c;
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  s->nconns++;
  if (uv_accept((uv_stream_t *)&s->listener, (uv_stream_t *)&c->tcp) < 0) {
    c->flags |= CONN_GONE;                   /* the layer above never saw it */
    conn_close(c, CONN_CLOSE_NOW);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  struct sockaddr_storage peer;
  int len = sizeof peer;
  strcpy(c->remote, "-");
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&peer, &len) == 0) {
    if (peer.ss_family == AF_INET6)
      uv_ip6_name((struct sockaddr_in6 *)&peer, c->remote, sizeof c->remote);
    else
      uv_ip4_name((struct sockaddr_in *)&peer, c->remote, sizeof c->remote);
  }
  read_start(c);
  ev->on_open(c);
}

/* ---- writing ---------------------------------------------------------- */

/* One queued write: what was left of the caller's buffers when the socket
 * was full. Copied bytes live in `data`; kept ones are written from where
 * the caller has them, until `release` says they may go. */
typedef struct write_req {
  uv_write_t req;
  size_t bytes;                 /* counted in c->pending */
  mr_release_fn release;        /* NULL: nothing kept */
  void *arg;
  size_t kept;                  /* bytes written from the caller's memory */
  unsigned nbufs;
  uv_buf_t *bufs;               /* in the same block, after `data` */
  char data[];
} write_req;

static void write_cb(uv_write_t *req, int status) {
  mr_conn *c = req->handle->data;
  write_req *w = (write_req *)req;
  c->pending -= w->bytes;
  freed += w->bytes - w->kept;
  if (w->release) w->release(w->arg, w->kept);
  free(w);
  c->writes--;
  if (c->flags & CONN_CLOSING) return;
  if (status < 0) {
    conn_close(c, CONN_CLOSE_RESET);
    return;
  }
  if (c->writes) arm_send(c);        /* output moves: more time */
  else c->send_expire = 0;
  if (!(c->flags & CONN_GONE)) ev->on_drained(c);
}

static uv_buf_t buf_at(const char *p, size_t len) {   /* uv_buf_init takes 32 bits */
  uv_buf_t b;
  b.base = (char *)p;
  b.len = len;
  return b;
}

int conn_write_kept(mr_conn *c, const uv_buf_t *bufs, unsigned n, unsigned first_kept,
                    mr_release_fn release, void *arg) {
  size_t total = 0, done = 0;
  if (c->flags & (CONN_CLOSING | CONN_SHUTDOWN)) {
    if (release) release(arg, 0);
    return UV_EPIPE;
  }
  for (unsigned i = 0; i < n; i++) total += bufs[i].len;
  if (c->writes == 0) {
    int rc = uv_try_write((uv_stream_t *)&c->tcp, bufs, n);
    if (rc >= 0) {
      done = (size_t)rc;
    } else if (rc != UV_EAGAIN) {
      if (release) release(arg, 0);
      conn_close(c, CONN_CLOSE_RESET);
      return rc;
    }
  }
  if (done == total) {
    if (release) release(arg, 0);
    return 0;
  }
  /* The socket is full. What is left of the copied buffers is copied (the
   * caller may reuse them once we return); the kept ones are referenced. */
  size_t copy = 0, skip = done;
  unsigned nkept = 0;
  for (unsigned i = 0; i < n; i++) {
    size_t l = bufs[i].len, rest = skip >= l ? 0 : l - skip;
    skip = skip >= l ? skip - l : 0;
    if (!rest) continue;
    if (i < first_kept) copy += rest;
    else nkept++;
  }
  size_t nb = (copy ? 1 : 0) + nkept;
  write_req *w = malloc(sizeof *w + copy + nb * sizeof(uv_buf_t) + sizeof(uv_buf_t));
  if (!w) {
    if (release) release(arg, 0);
    conn_close(c, CONN_CLOSE_RESET);
    return UV_ENOMEM;
  }
  /* the buffer list after the copied bytes, aligned */
  size_t at = (copy + sizeof(uv_buf_t) - 1) / sizeof(uv_buf_t) * sizeof(uv_buf_t);
  w->bufs = (uv_buf_t *)(w->data + at);
  w->nbufs = 0;
  w->kept = 0;
  size_t off = 0;
  skip = done;
  for (unsigned i = 0; i < n; i++) {
    size_t l = bufs[i].len;
    if (skip >= l) { skip -= l; continue; }
    if (i < first_kept) {
      memcpy(w->data + off, bufs[i].base + skip, l - skip);
      off += l - skip;
    } else {
      if (off && w->nbufs == 0) w->bufs[w->nbufs++] = buf_at(w->data, off);
      w->bufs[w->nbufs++] = buf_at(bufs[i].base + skip, l - skip);
      w->kept += l - skip;
    }
    skip = 0;
  }
  if (off && w->nbufs == 0) w->bufs[w->nbufs++] = buf_at(w->data, off);
  w->bytes = off + w->kept;
  w->release = w->kept ? release : NULL;
  w->arg = arg;
  if (!w->kept && release) release(arg, 0);
  int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, w->bufs, w->nbufs, write_cb);
  if (rc < 0) {
    if (w->release) w->release(arg, 0);
    free(w);
    conn_close(c, CONN_CLOSE_RESET);
    return rc;
  }
  c->writes++;
  c->pending += w->bytes;
  c->queued_bytes += w->bytes;
  /* Output the client takes none of for --idle-timeout ends the connection. */
  arm_send(c);
  return 0;
}

/* sendfile(2) from `fd` at *off, at most len bytes, straight to the socket:
 * only when everything queued before has reached the kernel (the order of
 * the bytes is kept). Returns the bytes sent (*off advanced), UV_EAGAIN
 * when the socket or the queue is full (nothing sent), or another uv error
 * (the connection is then closing). */
ssize_t conn_sendfile(mr_conn *c, int fd, int64_t *off, size_t len) {
  if (c->flags & (CONN_CLOSING | CONN_SHUTDOWN)) return UV_EPIPE;
  if (c->tcp.write_queue_size) return UV_EAGAIN;
  uv_os_fd_t sock;
  int rc = uv_fileno((uv_handle_t *)&c->tcp, &sock);
  if (rc < 0) return rc;
  off_t o = (off_t)*off;
  ssize_t n;
  do n = sendfile(sock, fd, &o, len); while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return UV_EAGAIN;
    rc = -errno;
    conn_close(c, CONN_CLOSE_RESET);
    return rc;
  }
  *off = (int64_t)o;
  c->queued_bytes += (uint64_t)n;   /* sent already: the send timeout sees progress */
  return n;
}

int conn_write(mr_conn *c, const uv_buf_t *bufs, unsigned n) {
  return conn_write_kept(c, bufs, n, n, NULL, NULL);
}

/* ---- closing ---------------------------------------------------------- */

static void shutdown_cb(uv_shutdown_t *req, int status) {
  mr_conn *c = req->handle->data;
  free(req);
  if (c->flags & CONN_CLOSING) return;
  if (status < 0 || (c->flags & CONN_READ_EOF)) {
    conn_close(c, status < 0 ? CONN_CLOSE_RESET : CONN_CLOSE_NOW);
    return;
  }
  /* Keep reading (and discarding) for a moment so unread input does not turn
   * our close into a reset that destroys the response in flight. */
  c->flags |= CONN_LINGER;
  c->flags &= ~CONN_HELD;
  read_start(c);
  conn_arm(c, LINGER_MS);
}

void conn_close(mr_conn *c, int how) {
  if (c->flags & CONN_CLOSING) return;
  if (how == CONN_CLOSE_GRACEFUL && (c->flags & CONN_SHUTDOWN)) return;   /* under way */
  if (!(c->flags & CONN_GONE)) {
    c->flags |= CONN_GONE;
    ev->on_close(c);
    if (c->flags & CONN_CLOSING) return;     /* on_close closed it harder */
  }
  /* Even after the client's EOF: the shutdown waits for queued writes, which
   * a plain close would cancel (a half-closed client still reads). */
  if (how == CONN_CLOSE_GRACEFUL && !(c->flags & CONN_SHUTDOWN) &&
      uv_is_writable((uv_stream_t *)&c->tcp)) {
    uv_shutdown_t *req = malloc(sizeof *req);
    if (req && uv_shutdown(req, (uv_stream_t *)&c->tcp, shutdown_cb) == 0) {
      c->flags |= CONN_SHUTDOWN;
      arm_send(c);                            /* bounds writes still queued */
      return;
    }
    free(req);
  }
  c->flags |= CONN_CLOSING;
  read_stop(c);
  if (how == CONN_CLOSE_RESET && !(c->flags & CONN_SHUTDOWN) &&
      uv_tcp_close_reset(&c->tcp, close_cb) == 0)
    return;
  if (how == CONN_CLOSE_RESET) {
    /* libuv refuses uv_tcp_close_reset once a shutdown is pending: the
     * same by hand (a zero linger makes close send RST). */
    uv_os_fd_t fd;
    struct linger l = {1, 0};
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
      setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  }
  uv_close((uv_handle_t *)&c->tcp, close_cb);
}

/* ---- reading ---------------------------------------------------------- */

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  mr_conn *c = stream->data;
  if (nread == 0) return;
  if (nread < 0) {
    if (nread == UV_EOF && (c->flags & CONN_SHUTDOWN) && !(c->flags & CONN_LINGER)) {
      /* Our shutdown still waits for queued output: shutdown_cb closes. */
      c->flags |= CONN_READ_EOF;
      read_stop(c);
      return;
    }
    if (nread != UV_EOF || (c->flags & CONN_SHUTDOWN)) {
      conn_close(c, nread != UV_EOF ? CONN_CLOSE_RESET : CONN_CLOSE_NOW);
      return;
    }
    c->flags |= CONN_READ_EOF;
    read_stop(c);
    ev->on_eof(c);
    return;
  }
  if (c->flags & CONN_SHUTDOWN) return;           /* lingering: drop input */
  ev->on_data(c, buf->base, (size_t)nread);
}
