/* parser.c — llhttp glue. Callbacks copy the target and headers of the
 * request being parsed into an mr_parse (taken from a small pool), enforce
 * the head and body limits, hand body bytes to the exchange, and pause the
 * parser at the end of the head and of the message so that http.c, not a
 * callback, starts requests (no Lua ever runs inside a parser callback). */
#include "http.h"
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define PARSE_POOL_MAX 64

enum { H_NONE, H_FIELD, H_VALUE };

static llhttp_settings_t settings;
static const mr_http_events *hev;
static const char *exec_start;  /* the input of the llhttp_execute running now */

static int fail(mr_http *c, int status) {
  c->error_status = (uint16_t)status;
  return HPE_USER;
}

static int count_head(mr_http *c, size_t n, int status) {
  mr_parse *ps = c->ps;
  ps->head_bytes += n;
  return ps->head_bytes > mr_srv.cfg.max_header_size ? fail(c, status) : 0;
}

static int on_message_begin(llhttp_t *p) {
  mr_http *c = p->data;
  mr_server *s = &mr_srv;
  mr_parse *ps = s->parse_pool;
  if (ps) {
    s->parse_pool = ps->next;
    s->parse_pool_len--;
  } else {
    ps = calloc(1, sizeof *ps);
    if (!ps) return fail(c, 503);
  }
  ps->bytes.len = 0;
  ps->target_len = 0;
  ps->nhdr = 0;
  ps->in_value = H_NONE;
  ps->head_bytes = 0;
  ps->body_bytes = 0;
  ps->has_version = 0;
  ps->last_byte = 0;
  c->ps = ps;
  c->error_status = 0;
  return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n) {
  mr_http *c = p->data;
  if (count_head(c, n, 414)) return HPE_USER;
  mr_buf_append(&c->ps->bytes, at, n);
  c->ps->target_len += (uint32_t)n;
  return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n) {
  mr_http *c = p->data;
  mr_parse *ps = c->ps;
  if (count_head(c, n, 431)) return HPE_USER;
  if (ps->in_value != H_FIELD) {
    if (ps->nhdr == MR_MAX_HEADERS) return fail(c, 431);
    ps->hdr[ps->nhdr].name_off = (uint32_t)ps->bytes.len;
    ps->hdr[ps->nhdr].name_len = 0;
    ps->in_value = H_FIELD;
  }
  mr_buf_append(&ps->bytes, at, n);
  ps->hdr[ps->nhdr].name_len += (uint32_t)n;
  return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n) {
  mr_http *c = p->data;
  mr_parse *ps = c->ps;
  if (count_head(c, n, 431)) return HPE_USER;
  /* A value's bytes never follow a line break, except in obsolete line
   * folding ("X-A: a\r\n  b"), which llhttp 8 joins into the value: RFC
   * 9112 5.2 lets a server reject it, and a proxy may read it otherwise. */
  if (n && (at > exec_start ? at[-1] : ps->last_byte) == '\n') return fail(c, 400);
  if (ps->in_value != H_VALUE) {
    ps->hdr[ps->nhdr].value_off = (uint32_t)ps->bytes.len;
    ps->hdr[ps->nhdr].value_len = 0;
    ps->in_value = H_VALUE;
  }
  mr_buf_append(&ps->bytes, at, n);
  ps->hdr[ps->nhdr].value_len += (uint32_t)n;
  return 0;
}

/* llhttp 8 lets "Host : x" through; RFC 9112 5.1 says reject it (a
 * smuggling vector), so every field name must be a token. */
static int on_header_field_complete(llhttp_t *p) {
  mr_http *c = p->data;
  mr_parse *ps = c->ps;
  mr_hpair *h = &ps->hdr[ps->nhdr];
  return mr_is_token(ps->bytes.data + h->name_off, h->name_len) ? 0 : fail(c, 400);
}

static int on_header_value_complete(llhttp_t *p) {
  mr_http *c = p->data;
  mr_parse *ps = c->ps;
  mr_hpair *h = &ps->hdr[ps->nhdr];
  if (ps->in_value != H_VALUE) {            /* empty value: no data callback */
    h->value_off = (uint32_t)ps->bytes.len;
    h->value_len = 0;
  }
  /* llhttp drops the whitespace before a value, not after (RFC 9110 5.5:
   * it is not part of the value). */
  while (h->value_len &&
         (ps->bytes.data[h->value_off + h->value_len - 1] == ' ' ||
          ps->bytes.data[h->value_off + h->value_len - 1] == '\t'))
    h->value_len--;
  ps->nhdr++;
  ps->in_value = H_NONE;
  return 0;
}

/* RFC 9112 6.1: the final coding of a request must be chunked (else 400);
 * a coding we cannot decode gets 501. HTTP/1.0 has no transfer codings: a
 * Transfer-Encoding there is a framing an intermediary may not share (400,
 * as RFC 9112 6.1 allows). */
static int check_transfer_encoding(mr_http *c, const llhttp_t *p) {
  mr_parse *ps = c->ps;
  for (unsigned i = 0; i < ps->nhdr; i++) {
    mr_hpair *h = &ps->hdr[i];
    if (h->name_len != 17 || strncasecmp(ps->bytes.data + h->name_off, "transfer-encoding", 17))
      continue;
    if (p->http_minor == 0) return 400;
    const char *v = ps->bytes.data + h->value_off, *end = v + h->value_len;
    int last_chunked = 0, unknown = 0;
    while (v < end) {
      while (v < end && (*v == ' ' || *v == '\t' || *v == ',')) v++;
      const char *tok = v;
      while (v < end && *v != ',' && *v != ' ' && *v != '\t' && *v != ';') v++;
      size_t n = (size_t)(v - tok);
      while (v < end && *v != ',') v++;           /* skip parameters */
      if (!n) continue;
      last_chunked = n == 7 && strncasecmp(tok, "chunked", 7) == 0;
      if (!last_chunked) unknown = 1;
    }
    if (!last_chunked) return 400;
    if (unknown) return 501;
  }
  return 0;
}

/* RFC 3986 3.2.2 reg-name characters: unreserved and sub-delims ('%',
 * pct-encoded, is checked by the caller). Filled by parser_init. */
static unsigned char reg_name_char[256];

static void reg_name_init(void) {
  for (int ch = 0; ch < 256; ch++)
    reg_name_char[ch] = ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'z') || (ch >= '0' && ch <= '9') ||
                        (ch && strchr("-._~!$&'()*+,;=", ch));
}

static int hex(unsigned char ch) {
  return (ch >= '0' && ch <= '9') || ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'f');
}

/* Host = uri-host [ ":" port ] (RFC 9110 7.2): an IP literal in brackets
 * or a reg-name (IPv4 addresses are reg-names by their characters), then
 * an optional port of digits, at most 65535. Empty is allowed (RFC 9112
 * 3.2: a target without an authority). */
static int valid_host(const char *v, size_t n) {
  size_t i = 0;
  if (n && v[0] == '[') {
    for (i = 1; i < n && v[i] != ']'; i++)
      if (!hex((unsigned char)v[i]) && v[i] != ':' && v[i] != '.') return 0;
    if (i == n || i == 1) return 0;
    i++;
  } else {
    for (; i < n && v[i] != ':'; i++) {
      if (v[i] == '%') {
        if (i + 2 >= n || !hex((unsigned char)v[i + 1]) || !hex((unsigned char)v[i + 2])) return 0;
        i += 2;
      } else if (!reg_name_char[(unsigned char)v[i]]) {
        return 0;
      }
    }
  }
  if (i == n) return 1;
  if (v[i] != ':') return 0;
  unsigned long port = 0;
  for (i++; i < n; i++) {
    if (v[i] < '0' || v[i] > '9') return 0;
    port = port * 10 + (unsigned long)(v[i] - '0');
    if (port > 65535) return 0;
  }
  return 1;
}

/* HTTP/1.1 requires exactly one Host header (RFC 9112 3.2), and any Host
 * must be a valid host[:port] (else 400, RFC 9112 3.2). */
static int check_host(mr_http *c, llhttp_t *p) {
  mr_parse *ps = c->ps;
  unsigned hosts = 0;
  for (unsigned i = 0; i < ps->nhdr; i++) {
    mr_hpair *h = &ps->hdr[i];
    if (h->name_len != 4 || strncasecmp(ps->bytes.data + h->name_off, "host", 4) != 0) continue;
    if (!valid_host(ps->bytes.data + h->value_off, h->value_len)) return 400;
    hosts++;
  }
  return hosts > 1 || (hosts == 0 && p->http_minor >= 1) ? 400 : 0;
}

static int on_version_complete(llhttp_t *p) {
  ((mr_http *)p->data)->ps->has_version = 1;
  return 0;
}

static int on_headers_complete(llhttp_t *p) {
  mr_http *c = p->data;
  /* No version at all ("GET /") is malformed; 505 is for a well-formed
   * version we do not speak. */
  int status = !c->ps->has_version ? 400 : p->http_major != 1 ? 505 : check_host(c, p);
  if (!status) status = check_transfer_encoding(c, p);
  if (status) {
    c->error_status = (uint16_t)status;
    return -1;
  }
  if ((p->flags & F_CONTENT_LENGTH) && p->content_length > mr_srv.cfg.max_body_size) {
    c->error_status = 413;
    return -1;
  }
  c->event = HTTP_EV_HEADERS;
  /* Without a body the message ends right here: start the request at its
   * end instead, one pause (and one llhttp_execute) fewer. */
  int has_body = (p->flags & F_CHUNKED) || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0);
  return has_body ? HPE_PAUSED : 0;
}

/* Body bytes go straight to the exchange's buffer (no Lua runs: a reader
 * waiting for them is only queued to run). */
static int on_body(llhttp_t *p, const char *at, size_t n) {
  mr_http *c = p->data;
  c->ps->body_bytes += n;
  if (c->ps->body_bytes > mr_srv.cfg.max_body_size) return fail(c, 413);
  if (c->ex) {
    c->hflags &= ~H_BODY_WAIT;
    hev->on_body(c->ex, at, n);
  }
  return 0;
}

/* A chunk that alone would take the body over the limit is refused at its
 * size line, as a Content-Length over it is at the head, not after the
 * server has waited for (and buffered) the bytes. */
static int on_chunk_header(llhttp_t *p) {
  mr_http *c = p->data;
  if (p->content_length > mr_srv.cfg.max_body_size - c->ps->body_bytes) return fail(c, 413);
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  mr_http *c = p->data;
  c->hflags |= H_MSG_DONE;
  c->event = c->event == HTTP_EV_HEADERS ? HTTP_EV_WHOLE : HTTP_EV_MESSAGE;
  return HPE_PAUSED;
}

void parser_set_events(const mr_http_events *ev) { hev = ev; }

void parser_init(mr_http *c) {
  if (!settings.on_message_begin) {
    reg_name_init();
    llhttp_settings_init(&settings);
    settings.on_message_begin = on_message_begin;
    settings.on_url = on_url;
    settings.on_header_field = on_header_field;
    settings.on_header_value = on_header_value;
    settings.on_header_field_complete = on_header_field_complete;
    settings.on_header_value_complete = on_header_value_complete;
    settings.on_headers_complete = on_headers_complete;
    settings.on_version_complete = on_version_complete;
    settings.on_chunk_header = on_chunk_header;
    settings.on_body = on_body;
    settings.on_message_complete = on_message_complete;
  }
  llhttp_init(&c->parser, HTTP_REQUEST, &settings);
  c->parser.data = c;
}

/* llhttp_execute, remembering where the input starts and its last byte
 * for the next call (on_header_value looks one byte back). */
llhttp_errno_t parser_execute(mr_http *c, const char *data, size_t len) {
  exec_start = data;
  llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
  if (c->ps && len) c->ps->last_byte = data[len - 1];
  return err;
}

void parser_release(mr_http *c) {
  mr_parse *ps = c->ps;
  if (!ps) return;
  c->ps = NULL;
  mr_server *s = &mr_srv;
  if (s->parse_pool_len < PARSE_POOL_MAX && ps->bytes.cap <= 4 * MR_KIB) {
    ps->next = s->parse_pool;
    s->parse_pool = ps;
    s->parse_pool_len++;
  } else {
    mr_buf_free(&ps->bytes);
    free(ps);
  }
}

int parser_error_status(mr_http *c, llhttp_errno_t err) {
  if (c->error_status) return c->error_status;
  /* "HTTP/3.0" is well formed, just not ours: 505. llhttp says "Invalid
   * HTTP version" for that and names the bad digit otherwise. */
  if (err == HPE_INVALID_VERSION && strcmp(llhttp_get_error_reason(&c->parser), "Invalid HTTP version") == 0)
    return 505;
  return 400;
}

void parser_pool_free(void) {
  while (mr_srv.parse_pool) {
    mr_parse *ps = mr_srv.parse_pool;
    mr_srv.parse_pool = ps->next;
    mr_buf_free(&ps->bytes);
    free(ps);
  }
  mr_srv.parse_pool_len = 0;
}
