/* http.h — the HTTP layer: turns a connection's bytes into request heads and
 * bodies (parser.c, llhttp glue), serves one exchange at a time so pipelined
 * responses leave in order, answers bad input and timeouts itself (4xx/5xx),
 * and writes the access log (http.c). Heads are formatted by head.c.
 *
 * An exchange is one request/response as HTTP sees it. It lives inside the
 * Lua bridge's request; HTTP points at it from http_attach until it calls
 * on_end, and never touches it after. The bridge hears of heads, body bytes,
 * drained output and the end of an exchange only through mr_http_events. */
#ifndef MR_HTTP_H
#define MR_HTTP_H

#include "conn.h"
#include <llhttp.h>

#define MR_MAX_HEADERS 100

typedef struct mr_hpair {
  uint32_t name_off, name_len, value_off, value_len;
} mr_hpair;

/* The head of the request being parsed: target and header bytes copied out of
 * the shared read slab, since a head may span several reads. */
typedef struct mr_parse {
  struct mr_parse *next;        /* free list link */
  mr_buf bytes;                 /* target, then header names and values */
  uint32_t target_len;          /* the target is at offset 0 */
  unsigned nhdr;
  int in_value;                 /* last data callback was a header value */
  int has_version;              /* the request line ended with HTTP/x.y */
  char last_byte;               /* the last byte of the previous input (obs-fold check) */
  size_t head_bytes;            /* counted against max_header_size */
  uint64_t body_bytes;          /* counted against max_body_size */
  mr_hpair hdr[MR_MAX_HEADERS];
} mr_parse;

enum {
  EX_HAS_BODY    = 1 << 0,
  EX_BODY_DONE   = 1 << 1,      /* the whole request body has arrived */
  EX_HEAD_SENT   = 1 << 2,
  EX_RESP_DONE   = 1 << 3,      /* the last byte of the response is queued */
  EX_CHUNKED     = 1 << 4,      /* the response uses chunked encoding */
  EX_IS_HEAD     = 1 << 5,
  EX_KEEP_ALIVE  = 1 << 6,      /* the connection may serve another request */
  EX_HTTP10      = 1 << 7,
  EX_CONTINUE    = 1 << 8,      /* the client expects 100-continue before the body */
};

typedef struct mr_exchange {
  struct mr_http *http;         /* NULL once HTTP is done with the exchange */
  unsigned flags;               /* EX_* */
  int status;
  uint64_t id;
  uint64_t start_ns;            /* for the access log */
  uint64_t bytes_out;           /* body bytes, for the access log */
  uint64_t deadline;            /* loop time (ms) by which the response must start */
} mr_exchange;

enum {
  H_PROCESSING = 1 << 0,        /* process() is on the stack */
  H_MSG_DONE   = 1 << 1,        /* the parser saw the end of the current message */
  H_DISCARD    = 1 << 2,        /* the exchange ended; the rest of its body is dropped */
  H_KEEP       = 1 << 3,        /* the ended exchange allows keep-alive */
  H_BODY_WAIT  = 1 << 4,        /* a handler whose response started waits for body bytes */
  H_SERVED     = 1 << 5,        /* a request has been answered on this connection */
};

/* What made the parser pause: the end of a head (a body follows), the end of
 * a message, or both at once (a request without a body). */
enum { HTTP_EV_NONE, HTTP_EV_HEADERS, HTTP_EV_MESSAGE, HTTP_EV_WHOLE };

typedef struct mr_http {
  mr_conn conn;                 /* first: the transport allocates the whole struct */
  llhttp_t parser;
  mr_parse *ps;                 /* head being parsed or served, NULL when idle */
  mr_exchange *ex;              /* exchange being served, NULL when none */
  char *in;                     /* input not parsed yet (waiting for a response) */
  size_t in_len;
  unsigned hflags;              /* H_* */
  uint8_t event;                /* set by a parser callback that paused */
  uint16_t error_status;        /* status a parser callback chose for bad input */
} mr_http;

/* Why an exchange ended (on_end). */
enum {
  HTTP_END_DONE,                /* its response is complete */
  HTTP_END_GONE,                /* the client left (reset, EOF, failed write) */
  HTTP_END_TIMEOUT,             /* no response within --request-timeout: 504 sent */
};

typedef struct mr_http_events {
  /* A head is parsed: attach an exchange (http_attach) and start its
   * handler. `complete`: the message has no body. */
  void (*on_request)(mr_http *h, int complete);
  /* Body bytes (valid until return), or n == 0 at the end of the body. */
  void (*on_body)(mr_exchange *ex, const char *p, size_t n);
  /* Queued output dropped; writers waiting for room may go on. */
  void (*on_drained)(mr_exchange *ex);
  /* HTTP is done with ex (ex->http is NULL already); its last touch. */
  void (*on_end)(mr_exchange *ex, int why);
} mr_http_events;

void http_init(const mr_http_events *ev);

/* Calls down from the bridge. */
void http_attach(mr_http *h, mr_exchange *ex);
/* 0, or a uv error once the client is gone (ex->http is then NULL). */
int http_write(mr_exchange *ex, const uv_buf_t *bufs, unsigned n);
/* http_write with bufs[first_kept..n) written in place (conn_write_kept). */
int http_write_kept(mr_exchange *ex, const uv_buf_t *bufs, unsigned n, unsigned first_kept,
                    mr_release_fn release, void *arg);
size_t http_queued(const mr_exchange *ex);
/* conn_sendfile for the exchange's connection (UV_EPIPE once it is gone). */
ssize_t http_sendfile(mr_exchange *ex, int fd, int64_t *off, size_t len);

/* The response head is queued: the request deadline no longer applies. */
void http_head_sent(mr_exchange *ex, int status);
/* A handler whose response started waits for body bytes: they must come
 * within --idle-timeout. */
void http_body_wait(mr_exchange *ex);
/* No handler waits for body bytes any more (the last reader was cancelled). */
void http_body_unwait(mr_exchange *ex);
/* Sends the interim 100 Continue if the client asked for it and it is due. */
void http_continue(mr_exchange *ex);
/* The handler side is finished and the response is complete. */
void http_handled(mr_exchange *ex);
/* Cut the response (an error after it started): reset the connection. */
void http_abort(mr_exchange *ex);
/* A short text/plain response as the whole answer (before any head). */
void http_reply(mr_exchange *ex, int status, const char *body);
/* The request line, for log lines: method and target. */
const char *http_method(const mr_http *h);
const char *http_target(const mr_http *h, size_t *len);

/* parser.c */
void parser_set_events(const mr_http_events *ev);
void parser_init(mr_http *h);
void parser_release(mr_http *h);         /* return h->ps to the pool */
void parser_pool_free(void);
int parser_error_status(mr_http *h, llhttp_errno_t err);
llhttp_errno_t parser_execute(mr_http *h, const char *data, size_t len);

/* head.c: response heads. A head is built in one scratch buffer, then
 * written; head_simple builds a whole short text/plain response. */
const char *head_reason(int status);
mr_buf *head_start(int status);          /* "HTTP/1.1 status reason\r\n" */

/* Decimal digits of `v` (snprintf costs more than the rest of a head). The
 * line helpers are inline: every response runs them. */
static inline void head_uint(mr_buf *b, uint64_t v) {
  char digits[24];
  int i = sizeof digits;
  do digits[--i] = (char)('0' + v % 10); while ((v /= 10) && i > 0);
  mr_buf_append(b, digits + i, sizeof digits - (size_t)i);
}

static inline void head_date(mr_buf *b) {
  mr_buf_lit(b, "Date: ");
  mr_buf_append(b, log_http_date(), 29);
  mr_buf_lit(b, "\r\n");
}

static inline void head_length(mr_buf *b, size_t len) {
  mr_buf_lit(b, "Content-Length: ");
  head_uint(b, len);
  mr_buf_lit(b, "\r\n");
}

static inline void head_connection(mr_buf *b, unsigned exflags) {
  if (!(exflags & EX_KEEP_ALIVE)) mr_buf_lit(b, "Connection: close\r\n");
  else if (exflags & EX_HTTP10) mr_buf_lit(b, "Connection: keep-alive\r\n");
}
/* Writes a complete short response; `extra` is a header block ("" or lines
 * ending in CRLF). No body for a HEAD request (EX_IS_HEAD). Returns the body
 * bytes written, for the access log. */
size_t head_simple(mr_conn *c, int status, const char *body, const char *extra, unsigned exflags);
void head_free(void);

#endif
