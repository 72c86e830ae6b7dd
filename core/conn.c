/* conn.c — one client connection: reads into the server's shared slab, feeds
 * the parser, serves one request at a time (so pipelined responses stay in
 * order), writes with try-then-queue, and closes gracefully (shutdown, then
 * drain the client's leftovers for a moment) or by reset. Timeouts are an
 * expiry time per connection, checked by the server's sweep timer (no timer
 * handle per connection). The mr_conn is freed in its socket's close
 * callback; a request still holding it is detached first (req->conn = NULL). */
#include "runner.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define READBUF_SIZE  (64 * MR_KIB)
#define LINGER_MS     2000     /* how long a closing connection drains input */
#define INPUT_CAP     (64 * MR_KIB)   /* unparsed input kept while a response is pending */

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void conn_process(mr_conn *c, char *data, size_t len);
static void reject(mr_conn *c, int status);

static void arm(mr_conn *c, uint64_t ms) { c->expire = uv_now(mr_srv.loop) + ms; }
static void disarm(mr_conn *c) { c->expire = 0; }

/* The connection's expiry passed. Header timeout, idle timeout, request
 * deadline, unread-body timeout and linger share it; which one it was
 * follows from the connection's state. */
/* Bytes of queued output the socket has taken so far. */
static uint64_t sent_bytes(const mr_conn *c) { return c->queued_bytes - c->tcp.write_queue_size; }

static void arm_send(mr_conn *c) {
  c->sent_mark = sent_bytes(c);
  arm(c, mr_srv.cfg.idle_timeout_ms);
}

void conn_timeout(mr_conn *c) {
  c->expire = 0;
  if (c->writes && sent_bytes(c) > c->sent_mark) {
    arm_send(c);                     /* a slow reader, but a reader: more time */
    return;
  }
  if (c->flags & CONN_SHUTDOWN) {
    conn_close(c, CONN_CLOSE_NOW);   /* linger over, or the last writes are stuck */
  } else if (c->writes) {
    conn_close(c, CONN_CLOSE_RESET); /* the client stopped reading our output */
  } else if (c->req && (c->req->flags & REQ_ENDED)) {
    conn_close(c, CONN_CLOSE_RESET); /* the rest of an unread body stopped coming */
  } else if (c->req && (c->req->flags & REQ_HEAD_SENT)) {
    /* a handler streaming its response while it reads a body that stopped coming */
    if (c->req->wait == WAIT_BODY) conn_close(c, CONN_CLOSE_RESET);
  } else if (c->req) {
    mr_request *r = c->req;          /* request deadline */
    log_error("request %llu: no response within %.3gs: 504, handler cancelled",
              (unsigned long long)r->id, mr_srv.cfg.request_timeout_ms / 1000.0);
    runner_cancel(r);
    r->status = 504;
    r->flags |= REQ_HEAD_SENT | REQ_RESP_DONE;
    response_simple(c, 504, "Gateway Timeout\n", r->flags);
    conn_request_ended(c);
  } else if (c->ps) {
    reject(c, 408);
  } else {
    conn_close(c, CONN_CLOSE_NOW);   /* idle keep-alive, or connected and silent */
  }
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

static void close_cb(uv_handle_t *h) {
  mr_conn *c = h->data;
  mr_server *s = &mr_srv;
  if (c->prev) c->prev->next = c->next; else s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  s->nconns--;
  free(c);
  server_conn_closed(s);
}

void conn_accept(mr_server *s) {
  mr_conn *c = calloc(1, sizeof *c);
  if (!c) return;
  uv_tcp_init(s->loop, &c->tcp);
  c->tcp.data = c;
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  s->nconns++;
  if (uv_accept((uv_stream_t *)&s->listener, (uv_stream_t *)&c->tcp) < 0) {
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
  parser_init(c);
  if (s->nconns > s->cfg.max_connections) {
    log_error("%u connections: over --max-connections, answering 503", s->nconns);
    response_simple(c, 503, "Service Unavailable\n", 0);
    conn_close(c, CONN_CLOSE_GRACEFUL);
    return;
  }
  read_start(c);
  arm(c, s->cfg.header_timeout_ms);
}

/* ---- writing ---------------------------------------------------------- */

typedef struct write_req {
  uv_write_t req;
  uv_buf_t buf;
  char data[];
} write_req;

size_t conn_queued(const mr_conn *c) { return c->tcp.write_queue_size; }

static void write_cb(uv_write_t *req, int status) {
  mr_conn *c = req->handle->data;
  free(req);
  c->writes--;
  if (c->flags & CONN_CLOSING) return;
  if (status < 0) {
    conn_close(c, CONN_CLOSE_RESET);
    return;
  }
  mr_request *r = c->req;
  if (c->writes) arm_send(c);        /* output moves: more time */
  else if (r && (r->flags & REQ_HEAD_SENT) && r->wait != WAIT_BODY) disarm(c);
  if (r && r->wait == WAIT_DRAIN && conn_queued(c) <= CONN_LOW_WATER) runner_wake(r, 0);
}

int conn_write(mr_conn *c, const uv_buf_t *bufs, unsigned n) {
  if (c->flags & (CONN_CLOSING | CONN_SHUTDOWN)) return UV_EPIPE;
  size_t total = 0, done = 0;
  for (unsigned i = 0; i < n; i++) total += bufs[i].len;
  if (c->writes == 0) {
    int rc = uv_try_write((uv_stream_t *)&c->tcp, bufs, n);
    if (rc >= 0) {
      done = (size_t)rc;
    } else if (rc != UV_EAGAIN) {
      conn_close(c, CONN_CLOSE_RESET);
      return rc;
    }
  }
  if (done == total) return 0;
  /* The socket is full: copy what is left, since the caller's buffers
   * (often Lua strings) may go away once we return. */
  write_req *w = malloc(sizeof *w + (total - done));
  if (!w) { conn_close(c, CONN_CLOSE_RESET); return UV_ENOMEM; }
  size_t off = 0, skip = done;
  for (unsigned i = 0; i < n; i++) {
    size_t l = bufs[i].len;
    if (skip >= l) { skip -= l; continue; }
    memcpy(w->data + off, bufs[i].base + skip, l - skip);
    off += l - skip;
    skip = 0;
  }
  w->buf = uv_buf_init(w->data, (unsigned)off);
  int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &w->buf, 1, write_cb);
  if (rc < 0) {
    free(w);
    conn_close(c, CONN_CLOSE_RESET);
    return rc;
  }
  c->writes++;
  c->queued_bytes += off;
  /* Output the client takes none of for --idle-timeout ends the connection. */
  arm_send(c);
  return 0;
}

/* ---- closing ---------------------------------------------------------- */

static void log_request(mr_conn *c, mr_request *r, int status) {
  if (!log_access_enabled()) return;       /* no method lookup per request for nothing */
  mr_parse *ps = c->ps;
  const char *method = llhttp_method_name(llhttp_get_method(&c->parser));
  log_access(c, method, strlen(method), ps ? ps->bytes.data : "", ps ? ps->target_len : 0,
             status, r->bytes_out, r->start_ns, r->id);
}

/* Gives the request up: from now on it is Lua's alone. */
static void detach_request(mr_conn *c) {
  mr_request *r = c->req;
  if (!r) return;
  /* 499 (nginx's "client closed request") when no status went out */
  log_request(c, r, (r->flags & REQ_HEAD_SENT) ? r->status : 499);
  c->req = NULL;
  r->conn = NULL;
  if (!(r->flags & REQ_ENDED)) runner_cancel(r);
  request_release(r);
}

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
  read_start(c);
  arm(c, LINGER_MS);
}

void conn_close(mr_conn *c, int how) {
  if (c->flags & CONN_CLOSING) return;
  detach_request(c);
  parser_release(c);
  free(c->in);
  c->in = NULL;
  c->in_len = 0;
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
  if (how == CONN_CLOSE_RESET && !(c->flags & CONN_SHUTDOWN))
    uv_tcp_close_reset(&c->tcp, close_cb);
  else
    uv_close((uv_handle_t *)&c->tcp, close_cb);
}

/* ---- requests --------------------------------------------------------- */

void conn_start_deadline(mr_conn *c) {
  if (!c->expire) arm(c, mr_srv.cfg.request_timeout_ms);
}

void conn_start_body_wait(mr_conn *c) {
  if (!c->expire) arm(c, mr_srv.cfg.idle_timeout_ms);
}

void conn_response_started(mr_conn *c) { disarm(c); }

/* The request's coroutine is done and its message fully read: log it, then
 * keep the connection for the next request or close it. */
static void finish_request(mr_conn *c) {
  mr_request *r = c->req;
  /* After the client's EOF, input already received (pipelined) is still
   * served: in c->in, or in conn_process's hands when it is running, which
   * then closes the connection once that input is used up. */
  int keep = (r->flags & REQ_KEEP_ALIVE) && !mr_srv.draining &&
             !((c->flags & CONN_READ_EOF) && !c->in_len && !(c->flags & CONN_PROCESSING));
  detach_request(c);
  parser_release(c);
  if (!keep) {
    conn_close(c, CONN_CLOSE_GRACEFUL);
    return;
  }
  arm(c, mr_srv.cfg.idle_timeout_ms);
  read_start(c);
  if (!(c->flags & CONN_PROCESSING) && c->in_len) {
    char *data = c->in;
    size_t len = c->in_len;
    c->in = NULL;
    c->in_len = 0;
    conn_process(c, data, len);
    free(data);
  }
  if ((c->flags & (CONN_READ_EOF | CONN_PROCESSING)) == CONN_READ_EOF && !c->req)
    conn_close(c, CONN_CLOSE_GRACEFUL);
}

void conn_request_ended(mr_conn *c) {
  if (c->req && (c->req->flags & REQ_MSG_DONE)) {
    finish_request(c);
  } else {
    /* The rest of the body is still arriving: it is read and dropped, the
     * message's end finishes the request, and a client that stops sending
     * it is closed after --header-timeout. */
    arm(c, mr_srv.cfg.header_timeout_ms);
  }
}

/* Bad input: answer `status` (unless the response already started, then
 * reset) and close. The request being served, if any, is cancelled. */
static void reject(mr_conn *c, int status) {
  mr_request *r = c->req;
  if (r && (r->flags & REQ_HEAD_SENT)) {
    /* a complete response is let out; a partial one is cut visibly */
    conn_close(c, (r->flags & REQ_RESP_DONE) ? CONN_CLOSE_GRACEFUL : CONN_CLOSE_RESET);
    return;
  }
  if (r) {
    r->status = status;
    r->flags |= REQ_HEAD_SENT | REQ_RESP_DONE;
  } else if (c->ps) {                /* refused before a request existed */
    const char *method = llhttp_method_name(llhttp_get_method(&c->parser));
    log_access(c, method, strlen(method), c->ps->bytes.data, c->ps->target_len, status, 0,
               uv_hrtime(), 0);
  }
  char body[64];
  snprintf(body, sizeof body, "%s\n", response_reason(status));
  response_simple(c, status, body, 0);
  conn_close(c, CONN_CLOSE_GRACEFUL);
}

/* Feeds `data` to the parser until it is used up or a request must finish
 * before the next one may start; keeps the rest in c->in. Lua runs here only
 * between llhttp_execute calls, never inside a parser callback. */
static void conn_process(mr_conn *c, char *data, size_t len) {
  c->flags |= CONN_PROCESSING;
  /* After the pause at the end of a head the parser may have work left that
   * needs no input, so it runs once more even when len is 0. */
  int resumed = 0;
  while ((len > 0 || resumed) && !(c->flags & (CONN_CLOSING | CONN_SHUTDOWN))) {
    resumed = 0;
    if (c->req && (c->req->flags & REQ_MSG_DONE)) break;   /* pipelined: wait */
    if (!c->ps && !c->req && len) arm(c, mr_srv.cfg.header_timeout_ms);   /* a new head */
    llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
    size_t used = err == HPE_OK ? len : (size_t)(llhttp_get_error_pos(&c->parser) - data);
    data += used;
    len -= used;
    if (err == HPE_PAUSED) {
      llhttp_resume(&c->parser);
      uint8_t ev = c->event;
      c->event = CONN_EV_NONE;
      resumed = ev == CONN_EV_HEADERS;
      if (ev == CONN_EV_HEADERS || ev == CONN_EV_WHOLE) {
        disarm(c);
        request_start(c, ev == CONN_EV_WHOLE);
      } else if (ev == CONN_EV_MESSAGE && c->req) {
        request_body_notify(c->req);
        if (c->req && (c->req->flags & REQ_ENDED)) finish_request(c);
      }
    } else if (err == HPE_PAUSED_UPGRADE) {
      /* CONNECT or Upgrade: not served here; the request gets its answer
       * and the connection closes after it. */
      if (c->req) c->req->flags &= ~REQ_KEEP_ALIVE;
      len = 0;
    } else if (err != HPE_OK) {
      reject(c, parser_error_status(c, err));
      break;
    } else if (c->req) {
      request_body_notify(c->req);
    }
  }
  c->flags &= ~CONN_PROCESSING;
  if ((c->flags & CONN_READ_EOF) && !c->req && !(c->flags & (CONN_CLOSING | CONN_SHUTDOWN))) {
    conn_close(c, CONN_CLOSE_GRACEFUL);      /* the client sent its last request */
    return;
  }
  if (len && !(c->flags & (CONN_CLOSING | CONN_SHUTDOWN))) {
    char *in = malloc(c->in_len + len);
    if (!in) { conn_close(c, CONN_CLOSE_RESET); return; }
    memcpy(in + c->in_len, data, len);
    if (c->in_len) memcpy(in, c->in, c->in_len);
    free(c->in);
    c->in = in;
    c->in_len += len;
    if (c->in_len > INPUT_CAP) read_stop(c);   /* resumes when the request finishes */
  }
}

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
    /* A request whose body can no longer arrive cannot be served; one whose
     * message is complete finishes, then the connection closes. */
    if (!c->req || !(c->req->flags & REQ_MSG_DONE)) conn_close(c, CONN_CLOSE_GRACEFUL);
    return;
  }
  if (c->flags & CONN_SHUTDOWN) return;           /* lingering: drop input */
  if (c->in_len || (c->req && (c->req->flags & REQ_MSG_DONE))) {
    /* A response is pending: queue the bytes behind what is waiting. */
    char *in = realloc(c->in, c->in_len + (size_t)nread);
    if (!in) { conn_close(c, CONN_CLOSE_RESET); return; }
    memcpy(in + c->in_len, buf->base, (size_t)nread);
    c->in = in;
    c->in_len += (size_t)nread;
    if (c->in_len > INPUT_CAP) read_stop(c);
    if (!(c->req && (c->req->flags & REQ_MSG_DONE)) && !(c->flags & CONN_PROCESSING)) {
      char *data = c->in;
      size_t len = c->in_len;
      c->in = NULL;
      c->in_len = 0;
      conn_process(c, data, len);
      free(data);
    }
    return;
  }
  conn_process(c, buf->base, (size_t)nread);
}
