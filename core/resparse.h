/* resparse.h — the HTTP client's response parser (resparse.c), shared with
 * fetch.c, which feeds it straight from a cosocket's input buffer. */
#ifndef MR_RESPARSE_H
#define MR_RESPARSE_H

#include "request.h"
#include <llhttp.h>

#define PARSER_MT "moonring.http_parser"
#define MAX_HEAD (64 * MR_KIB)  /* status line + headers: over it, the response is refused */

typedef struct mr_resparse {
  llhttp_t p;
  int head_request;             /* the request was HEAD: no body follows */
  int state;                    /* 0 head, 1 head complete, 2 message complete */
  int interim;                  /* the head was a 1xx: skipped, the real one follows */
  unsigned nhdr;                /* header lines kept */
  int has_length;               /* the head announced a Content-Length ... */
  uint64_t length;              /* ... of this many bytes */
  size_t head_bytes;
  size_t extra;                 /* bytes fed after the message ended */
  mr_buf hdrs;                  /* "name\0value\0" ... */
  mr_buf body;                  /* body bytes not taken yet */
} mr_resparse;

mr_resparse *resparse_check(lua_State *L, int idx);
/* Parses n more bytes: 0, or -1 on a framing error (resparse_push_bad says
 * which). Bytes after the end of the message are counted in r->extra. */
int resparse_feed(mr_resparse *r, const char *s, size_t n);
/* The peer closed: 0 when the message is complete (a body read to EOF
 * ends here), 1 when it is not, -1 on a framing error. */
int resparse_finish(mr_resparse *r);
int resparse_push_bad(lua_State *L, mr_resparse *r);   /* nil, "bad response: ..." */
/* Pushes the status and the headers table (the head must be complete). */
void resparse_push_head(lua_State *L, mr_resparse *r);

#endif
