/* http.c — the message flow of a connection: feeds input to the parser, starts
 * one exchange at a time (pipelined input waits, so responses leave in
 * request order), answers what never reaches a handler (bad input 4xx,
 * deadline 504, overload 503), decides keep-alive, and writes the access
 * log. It owns mr_http (allocated by the transport around mr_conn) and its
 * unparsed input; exchanges belong to the bridge, which HTTP points at from
 * http_attach until on_end. */
#include "http.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define INPUT_CAP (64 * MR_KIB)   /* unparsed input kept while a response is pending */

static const mr_http_events *hev;
static void process(mr_http *h, char *data, size_t len);
static void finish(mr_http *h);

/* Parses the input kept while a response was pending. */
static void process_kept(mr_http *h) {
  char *data = h->in;
  size_t len = h->in_len;
  h->in = NULL;
  h->in_len = 0;
  process(h, data, len);
  free(data);
}

static inline mr_http *of(mr_conn *c) { return (mr_http *)c; }

const char *http_method(const mr_http *h) {
  return llhttp_method_name(llhttp_get_method((llhttp_t *)&h->parser));
}

const char *http_target(const mr_http *h, size_t *len) {
  *len = h->ps ? h->ps->target_len : 0;
  return h->ps ? h->ps->bytes.data : "";
}

static void log_line(mr_http *h, int status, uint64_t bytes, uint64_t start_ns, uint64_t id) {
  if (!log_access_enabled()) return;       /* no method lookup per request for nothing */
  const char *method = http_method(h);
  size_t tlen;
  const char *target = http_target(h, &tlen);
  log_access(h->conn.remote, method, strlen(method), target, tlen, llhttp_get_http_major(&h->parser),
             llhttp_get_http_minor(&h->parser), status, bytes, start_ns, id);
}

/* ---- exchanges -------------------------------------------------------- */

void http_attach(mr_http *h, mr_exchange *ex) {
  llhttp_t *p = &h->parser;
  mr_server *s = &mr_srv;
  ex->http = h;
  ex->flags = 0;
  ex->status = 0;
  ex->bytes_out = 0;
  ex->id = ++s->next_request_id;
  ex->start_ns = log_access_enabled() ? uv_hrtime() : 0;   /* only the log uses it */
  int minor = llhttp_get_http_minor(p);
  int method = llhttp_get_method(p);
  /* CONNECT and Upgrade are not served as tunnels: answer, then close. */
  int upgrade = method == HTTP_CONNECT || ((p->flags & F_UPGRADE) && (p->flags & F_CONNECTION_UPGRADE));
  if (llhttp_should_keep_alive(p) && !upgrade) ex->flags |= EX_KEEP_ALIVE;
  if (minor == 0) ex->flags |= EX_HTTP10;
  if (method == HTTP_HEAD) ex->flags |= EX_IS_HEAD;
  if (h->hflags & H_MSG_DONE) ex->flags |= EX_BODY_DONE;
  if ((p->flags & F_CHUNKED) || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0)) {
    ex->flags |= EX_HAS_BODY;
    mr_parse *ps = h->ps;
    for (unsigned i = 0; minor >= 1 && i < ps->nhdr; i++) {
      mr_hpair *hp = &ps->hdr[i];
      if (hp->name_len == 6 && strncasecmp(ps->bytes.data + hp->name_off, "expect", 6) == 0 &&
          hp->value_len == 12 && strncasecmp(ps->bytes.data + hp->value_off, "100-continue", 12) == 0)
        ex->flags |= EX_CONTINUE;
    }
  }
  h->ex = ex;
  s->inflight++;
  /* The deadline runs from the start: a handler that never parks costs only
   * this store, and one that never answers meets it. */
  conn_arm(&h->conn, s->cfg.request_timeout_ms);
  ex->deadline = h->conn.expire;
}

/* HTTP lets go of the exchange; the rest of its message body, if any, is
 * read and dropped. The bridge hears of it last. */
static void end_exchange(mr_http *h, int why) {
  mr_exchange *ex = h->ex;
  if (!ex) return;
  /* 499 (nginx's "client closed request") when no status went out */
  log_line(h, (ex->flags & EX_HEAD_SENT) ? ex->status : 499, ex->bytes_out, ex->start_ns, ex->id);
  h->ex = NULL;
  ex->http = NULL;
  mr_srv.inflight--;
  h->hflags &= ~(H_KEEP | H_BODY_WAIT);
  /* a finished response, or the server's 504 in its place, allows keep-alive */
  if ((ex->flags & EX_KEEP_ALIVE) && why != HTTP_END_GONE) h->hflags |= H_KEEP;
  if (!(h->hflags & H_MSG_DONE)) h->hflags |= H_DISCARD;
  hev->on_end(ex, why);
}

int http_write(mr_exchange *ex, const uv_buf_t *bufs, unsigned n) {
  if (!ex->http) return UV_EPIPE;
  return conn_write(&ex->http->conn, bufs, n);
}

int http_write_kept(mr_exchange *ex, const uv_buf_t *bufs, unsigned n, unsigned first_kept,
                    mr_release_fn release, void *arg) {
  if (!ex->http) {
    release(arg, 0);
    return UV_EPIPE;
  }
  return conn_write_kept(&ex->http->conn, bufs, n, first_kept, release, arg);
}

ssize_t http_sendfile(mr_exchange *ex, int fd, int64_t *off, size_t len) {
  if (!ex->http) return UV_EPIPE;
  return conn_sendfile(&ex->http->conn, fd, off, len);
}

size_t http_queued(const mr_exchange *ex) {
  return ex->http ? conn_queued(&ex->http->conn) : 0;
}

void http_head_sent(mr_exchange *ex, int status) {
  ex->flags = (ex->flags | EX_HEAD_SENT) & ~EX_CONTINUE;
  ex->status = status;
  mr_http *h = ex->http;
  if (h) conn_disarm(&h->conn);             /* a queued head is the send timeout's business */
}

void http_body_wait(mr_exchange *ex) {
  mr_http *h = ex->http;
  if (!h) return;
  h->hflags |= H_BODY_WAIT;
  if (!conn_armed(&h->conn)) conn_arm(&h->conn, mr_srv.cfg.idle_timeout_ms);
}

void http_body_unwait(mr_exchange *ex) {
  mr_http *h = ex->http;
  if (!h || !(h->hflags & H_BODY_WAIT)) return;
  h->hflags &= ~H_BODY_WAIT;
  if (ex->flags & EX_HEAD_SENT) conn_disarm(&h->conn);
}

void http_continue(mr_exchange *ex) {
  if (!(ex->flags & EX_CONTINUE) || (ex->flags & EX_HEAD_SENT) || !ex->http) return;
  ex->flags &= ~EX_CONTINUE;
  static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
  uv_buf_t b = uv_buf_init((char *)cont, sizeof cont - 1);
  conn_write(&ex->http->conn, &b, 1);
}

/* The exchange's response is complete (its own, or the server's 504). */
static void exchange_over(mr_http *h, int why) {
  end_exchange(h, why);
  if (h->hflags & H_MSG_DONE) {
    finish(h);
  } else {
    /* The rest of the body is still arriving: it is read and dropped, the
     * message's end finishes the request, and a client that stops sending
     * it is closed after --header-timeout. */
    conn_arm(&h->conn, mr_srv.cfg.header_timeout_ms);
  }
}

void http_handled(mr_exchange *ex) {
  if (ex->http) exchange_over(ex->http, HTTP_END_DONE);
}

void http_abort(mr_exchange *ex) {
  if (ex->http) conn_close(&ex->http->conn, CONN_CLOSE_RESET);
}

void http_reply(mr_exchange *ex, int status, const char *body) {
  if (!ex->http || (ex->flags & EX_HEAD_SENT)) return;
  if (mr_srv.draining) ex->flags &= ~EX_KEEP_ALIVE;
  ex->flags |= EX_RESP_DONE;
  http_head_sent(ex, status);
  ex->bytes_out += head_simple(&ex->http->conn, status, body, "", ex->flags);
}

/* ---- the message flow ------------------------------------------------- */

/* Both the exchange and its message are over: keep the connection for the
 * next request, or close it. */
static void finish(mr_http *h) {
  mr_conn *c = &h->conn;
  /* After the client's EOF, input already received (pipelined) is still
   * served: in h->in, or in process()'s hands when it is running, which
   * then closes the connection once that input is used up. */
  int keep = (h->hflags & H_KEEP) && !mr_srv.draining &&
             !((c->flags & CONN_READ_EOF) && !h->in_len && !(h->hflags & H_PROCESSING));
  parser_release(h);
  h->hflags &= ~(H_MSG_DONE | H_DISCARD | H_KEEP);
  h->hflags |= H_SERVED;
  if (!keep) {
    conn_close(c, CONN_CLOSE_GRACEFUL);
    return;
  }
  conn_arm(c, mr_srv.cfg.idle_timeout_ms);
  if (c->flags & CONN_HELD) conn_release(c);
  if (!(h->hflags & H_PROCESSING) && h->in_len) process_kept(h);
  if ((c->flags & CONN_READ_EOF) && !(c->flags & (CONN_CLOSING | CONN_SHUTDOWN | CONN_GONE)) &&
      !(h->hflags & H_PROCESSING) && !h->ex && !h->ps)
    conn_close(c, CONN_CLOSE_GRACEFUL);
}

/* Bad input: answer `status` (unless the response already started, then
 * reset) and close. The exchange being served, if any, is cancelled. */
static void reject(mr_http *h, int status) {
  mr_conn *c = &h->conn;
  mr_exchange *ex = h->ex;
  if (h->hflags & H_DISCARD) {
    conn_close(c, CONN_CLOSE_GRACEFUL);      /* its response was complete: let it out */
    return;
  }
  if (ex && (ex->flags & EX_HEAD_SENT)) {
    /* a complete response is let out; a partial one is cut visibly */
    conn_close(c, (ex->flags & EX_RESP_DONE) ? CONN_CLOSE_GRACEFUL : CONN_CLOSE_RESET);
    return;
  }
  char body[64];
  snprintf(body, sizeof body, "%s\n", head_reason(status));
  size_t n = head_simple(c, status, body, "", ex ? (ex->flags & EX_IS_HEAD) : 0);
  if (ex) {                                  /* logged as it ends, in on_close */
    ex->status = status;
    ex->flags |= EX_HEAD_SENT | EX_RESP_DONE;
    ex->bytes_out += n;
  } else if (h->ps) {                        /* refused before a request existed */
    log_line(h, status, n, uv_hrtime(), 0);
  }
  conn_close(c, CONN_CLOSE_GRACEFUL);
}

/* Over --max-inflight: 503 with Retry-After, no handler runs. The
 * connection is kept when the request has no body to read past. */
static void shed(mr_http *h) {
  mr_conn *c = &h->conn;
  llhttp_t *p = &h->parser;
  unsigned flags = llhttp_should_keep_alive(p) && (h->hflags & H_MSG_DONE) ? EX_KEEP_ALIVE : 0;
  if (llhttp_get_http_minor(p) == 0) flags |= EX_HTTP10;
  if (mr_srv.draining) flags = 0;
  if (llhttp_get_method(p) == HTTP_HEAD) flags |= EX_IS_HEAD;
  size_t n = head_simple(c, 503, "Service Unavailable\n", "Retry-After: 1\r\n", flags);
  log_line(h, 503, n, uv_hrtime(), 0);
  if (!(flags & EX_KEEP_ALIVE)) {
    conn_close(c, CONN_CLOSE_GRACEFUL);
    return;
  }
  h->hflags |= H_KEEP;
  finish(h);
}

static void start_request(mr_http *h, int complete) {
  if (mr_srv.inflight >= mr_srv.cfg.max_inflight) {
    if (complete) shed(h);
    else reject(h, 503);
    return;
  }
  hev->on_request(h, complete);
}

/* The parser reached the end of the current message. */
static void message_done(mr_http *h) {
  if (h->ex) {
    h->ex->flags |= EX_BODY_DONE;
    h->hflags &= ~H_BODY_WAIT;
    hev->on_body(h->ex, NULL, 0);
  } else if (h->hflags & H_DISCARD) {
    finish(h);
  }
}

/* Feeds `data` to the parser until it is used up or a request must finish
 * before the next one may start; keeps the rest in h->in. Lua runs here only
 * between llhttp_execute calls, never inside a parser callback. */
static void process(mr_http *h, char *data, size_t len) {
  mr_conn *c = &h->conn;
  h->hflags |= H_PROCESSING;
  /* After the pause at the end of a head the parser may have work left that
   * needs no input, so it runs once more even when len is 0. */
  int resumed = 0;
  while ((len > 0 || resumed) && !(c->flags & (CONN_CLOSING | CONN_SHUTDOWN | CONN_GONE))) {
    resumed = 0;
    if (h->hflags & H_MSG_DONE) break;                /* pipelined: wait for the response */
    if (!h->ps && len) conn_arm(c, mr_srv.cfg.header_timeout_ms);   /* a new head */
    llhttp_errno_t err = parser_execute(h, data, len);
    size_t used = err == HPE_OK ? len : (size_t)(llhttp_get_error_pos(&h->parser) - data);
    data += used;
    len -= used;
    if (err == HPE_PAUSED) {
      llhttp_resume(&h->parser);
      uint8_t ev = h->event;
      h->event = HTTP_EV_NONE;
      resumed = ev == HTTP_EV_HEADERS;
      if (ev == HTTP_EV_HEADERS || ev == HTTP_EV_WHOLE) start_request(h, ev == HTTP_EV_WHOLE);
      else if (ev == HTTP_EV_MESSAGE) message_done(h);
    } else if (err == HPE_PAUSED_UPGRADE) {
      /* CONNECT or Upgrade: not served here; the request gets its answer
       * and the connection closes after it. */
      if (h->ex) h->ex->flags &= ~EX_KEEP_ALIVE;
      h->hflags &= ~H_KEEP;
      len = 0;
    } else if (err != HPE_OK) {
      reject(h, parser_error_status(h, err));
      break;
    }
  }
  h->hflags &= ~H_PROCESSING;
  if (c->flags & (CONN_CLOSING | CONN_SHUTDOWN | CONN_GONE)) return;
  if ((c->flags & CONN_READ_EOF) && !h->ex) {
    conn_close(c, CONN_CLOSE_GRACEFUL);      /* the client sent its last request */
    return;
  }
  if (len) {
    char *in = malloc(h->in_len + len);
    if (!in) { conn_close(c, CONN_CLOSE_RESET); return; }
    memcpy(in + h->in_len, data, len);
    if (h->in_len) memcpy(in, h->in, h->in_len);
    free(h->in);
    h->in = in;
    h->in_len += len;
    if (h->in_len > INPUT_CAP) conn_hold(c);  /* released when the request finishes */
  }
}

/* ---- transport events ------------------------------------------------- */

static void on_open(mr_conn *c) {
  mr_http *h = of(c);
  parser_init(h);
  if (mr_srv.nconns > mr_srv.cfg.max_connections) {
    static mr_lograte over;
    log_error_rate(&over, "%u connections: over --max-connections, answering 503", mr_srv.nconns);
    head_simple(c, 503, "Service Unavailable\n", "", 0);
    conn_close(c, CONN_CLOSE_GRACEFUL);
    return;
  }
  conn_arm(c, mr_srv.cfg.header_timeout_ms);
}

static void on_data(mr_conn *c, char *data, size_t len) {
  mr_http *h = of(c);
  if (!h->in_len && !(h->hflags & H_MSG_DONE)) {
    process(h, data, len);
    return;
  }
  /* A response is pending: queue the bytes behind what is waiting. */
  char *in = realloc(h->in, h->in_len + len);
  if (!in) { conn_close(c, CONN_CLOSE_RESET); return; }
  memcpy(in + h->in_len, data, len);
  h->in = in;
  h->in_len += len;
  if (h->in_len > INPUT_CAP) conn_hold(c);
  if (!(h->hflags & (H_MSG_DONE | H_PROCESSING))) process_kept(h);
}

/* The client's end of input. With nothing received ahead of it, it means the
 * client is gone (as Go's net/http and nginx's lua_check_client_abort read
 * it): an unfinished exchange is cancelled. Requests received before it are
 * still answered, then the connection closes. */
static void on_eof(mr_conn *c) {
  mr_http *h = of(c);
  if (h->in_len) return;                            /* finish() and process() close later */
  mr_exchange *ex = h->ex;
  if (!ex) {
    conn_close(c, CONN_CLOSE_GRACEFUL);             /* idle, or a body nobody waits for */
    return;
  }
  if (ex->flags & EX_RESP_DONE) {
    ex->flags &= ~EX_KEEP_ALIVE;                    /* complete: let it out, then close */
    return;
  }
  /* a cut body must look cut; with nothing sent, a plain close will do */
  conn_close(c, (ex->flags & EX_HEAD_SENT) ? CONN_CLOSE_RESET : CONN_CLOSE_NOW);
}

static void on_drained(mr_conn *c) {
  mr_http *h = of(c);
  mr_exchange *ex = h->ex;
  if (!ex) return;
  /* Output moved: the only timeout left once the head is out is a body wait. */
  if (!c->writes && (ex->flags & EX_HEAD_SENT) && !(h->hflags & H_BODY_WAIT)) conn_disarm(c);
  hev->on_drained(ex);
}

static void on_expired(mr_conn *c) {
  mr_http *h = of(c);
  mr_exchange *ex = h->ex;
  if (ex && (ex->flags & EX_HEAD_SENT)) {
    /* a handler streaming its response while it reads a body that stopped coming */
    if (h->hflags & H_BODY_WAIT) conn_close(c, CONN_CLOSE_RESET);
  } else if (ex) {
    log_error("request %llu: no response within %.3gs: 504, handler cancelled",
              (unsigned long long)ex->id, mr_srv.cfg.request_timeout_ms / 1000.0);
    if (mr_srv.draining) ex->flags &= ~EX_KEEP_ALIVE;
    ex->flags |= EX_RESP_DONE;
    http_head_sent(ex, 504);
    ex->bytes_out += head_simple(c, 504, "Gateway Timeout\n", "", ex->flags);
    exchange_over(h, HTTP_END_TIMEOUT);
  } else if (h->hflags & H_DISCARD) {
    conn_close(c, CONN_CLOSE_RESET);   /* the rest of an unread body stopped coming */
  } else if (h->ps) {
    reject(h, 408);
  } else {
    conn_close(c, CONN_CLOSE_NOW);     /* idle keep-alive, or connected and silent */
  }
}

static void on_close(mr_conn *c) {
  mr_http *h = of(c);
  end_exchange(h, HTTP_END_GONE);
  parser_release(h);
  free(h->in);
  h->in = NULL;
  h->in_len = 0;
}

/* Closing it loses nothing: between requests of a keep-alive connection.
 * One that has had no request yet is not idle: its first request may be
 * on the way (accepted just before a drain began), so it is served, with
 * Connection: close, or ends by --header-timeout (nginx does the same). */
static int idle(const mr_conn *c) {
  const mr_http *h = (const mr_http *)c;
  return !h->ex && !h->ps && (h->hflags & H_SERVED);
}

static const mr_conn_events conn_events = {
  .size = sizeof(mr_http),
  .on_open = on_open,
  .on_data = on_data,
  .on_eof = on_eof,
  .on_drained = on_drained,
  .on_expired = on_expired,
  .on_close = on_close,
  .idle = idle,
};

void http_init(const mr_http_events *ev) {
  hev = ev;
  parser_set_events(ev);
  conn_set_events(&conn_events);
}
