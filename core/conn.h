/* conn.h — a client connection: socket, expiry time, parser state and the one
 * request it is serving. Requests on a connection are served one at a time,
 * so pipelined responses leave in request order. */
#ifndef MR_CONN_H
#define MR_CONN_H

#include "moonring.h"
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
  size_t head_bytes;            /* counted against max_header_size */
  mr_hpair hdr[MR_MAX_HEADERS];
} mr_parse;

enum {
  CONN_CLOSING    = 1 << 0,     /* uv_close called or about to be */
  CONN_SHUTDOWN   = 1 << 1,     /* write side shut; reading only to drain */
  CONN_READ_EOF   = 1 << 2,     /* the client will send nothing more */
  CONN_READING    = 1 << 3,     /* uv_read_start active */
  CONN_PROCESSING = 1 << 4,     /* conn_process is on the stack */
  CONN_LINGER     = 1 << 6,     /* shutdown done: draining input a moment */
};

/* What made the parser pause: the end of a head (a body follows), the end of
 * a message, or both at once (a request without a body). */
enum { CONN_EV_NONE, CONN_EV_HEADERS, CONN_EV_MESSAGE, CONN_EV_WHOLE };

typedef struct mr_conn {
  uv_tcp_t tcp;                 /* tcp.data = this */
  llhttp_t parser;
  struct mr_conn *prev, *next;
  mr_parse *ps;                 /* head being parsed or served, NULL when idle */
  struct mr_request *req;       /* request being served, NULL when none */
  char *in;                     /* input not parsed yet (waiting for a response) */
  size_t in_len;
  unsigned flags;
  uint8_t event;                /* set by a parser callback that paused */
  uint16_t error_status;        /* status a parser callback chose for bad input */
  unsigned writes;              /* uv_write requests in flight */
  uint64_t expire;              /* loop time (ms) of the next timeout, 0 = none */
  uint64_t queued_bytes;        /* ever handed to uv_write */
  uint64_t sent_mark;           /* bytes of those sent when the timeout was armed */
  char remote[46];
} mr_conn;

/* Output backpressure: a streamed body's write() parks above HIGH_WATER
 * bytes queued for the client and is resumed once it drains to LOW_WATER. */
#define CONN_HIGH_WATER (64 * MR_KIB)
#define CONN_LOW_WATER  (16 * MR_KIB)

void conn_accept(mr_server *s);
/* Queue bytes for the client: tries to write at once, copies what remains.
 * The buffers may be reused as soon as this returns. Returns 0 or a uv error. */
int conn_write(mr_conn *c, const uv_buf_t *bufs, unsigned n);
size_t conn_queued(const mr_conn *c);
enum {
  CONN_CLOSE_GRACEFUL,          /* after what is queued is written; then drain input a moment */
  CONN_CLOSE_RESET,             /* at once, with a reset: the client sees a cut response */
  CONN_CLOSE_NOW,               /* at once, plain close (idle connections) */
};
void conn_close(mr_conn *c, int how);
/* A request ended (its coroutine finished or was cancelled). */
void conn_request_ended(mr_conn *c);
/* The response head went out: the request deadline no longer applies. */
void conn_response_started(mr_conn *c);
void conn_start_deadline(mr_conn *c);
/* A handler whose response has started waits for body bytes: they must
 * come within --idle-timeout. */
void conn_start_body_wait(mr_conn *c);
/* Called by the server's sweep once c->expire has passed. */
void conn_timeout(mr_conn *c);

/* parser.c */
void parser_init(mr_conn *c);
void parser_release(mr_conn *c);         /* return c->ps to the pool */
/* Status for a parse failure (400, 413, 431, 501, ...). */
int parser_error_status(mr_conn *c, llhttp_errno_t err);

#endif
