#define _GNU_SOURCE /* strcasestr */
/* response.c — the response writer (DESIGN 4.3). `send` validates the whole
 * response table before a byte is written, then writes the head and any
 * known-length body in one call; function bodies are streamed by the serve
 * loop through `write` and `finish`. Header names and values that could split
 * the response are refused, never written. */
#include "runner.h"
#include <lauxlib.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define MAX_INLINE_BUFS 16

static mr_buf head;                /* scratch: rebuilt for every response */

/* Raises "bad response: ..." without a position: the caller is always
 * serve.lua, and the log line names the route instead. */
static int bad_response(lua_State *L, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  lua_pushliteral(L, "bad response: ");
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_concat(L, 2);
  return lua_error(L);
}

const char *response_reason(int status) {
  switch (status) {
  case 100: return "Continue";
  case 101: return "Switching Protocols";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 206: return "Partial Content";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 303: return "See Other";
  case 304: return "Not Modified";
  case 307: return "Temporary Redirect";
  case 308: return "Permanent Redirect";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 410: return "Gone";
  case 413: return "Content Too Large";
  case 414: return "URI Too Long";
  case 415: return "Unsupported Media Type";
  case 422: return "Unprocessable Content";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  case 505: return "HTTP Version Not Supported";
  default: return status < 200 ? "Informational" : status < 300 ? "OK" : status < 400 ? "Redirect"
                : status < 500 ? "Client Error" : "Server Error";
  }
}

/* Decimal digits of `v` into the head (snprintf costs more than the rest of
 * the head together). */
static void head_uint(uint64_t v) {
  char digits[24];
  int i = sizeof digits;
  do digits[--i] = (char)('0' + v % 10); while ((v /= 10) && i > 0);
  mr_buf_append(&head, digits + i, sizeof digits - (size_t)i);
}

static void head_start(int status) {
  head.len = 0;
  mr_buf_lit(&head, "HTTP/1.1 ");
  head_uint((uint64_t)status);
  mr_buf_lit(&head, " ");
  const char *reason = response_reason(status);
  mr_buf_append(&head, reason, strlen(reason));
  mr_buf_lit(&head, "\r\n");
}

static void head_date(void) {
  mr_buf_lit(&head, "Date: ");
  mr_buf_append(&head, log_http_date(), 29);
  mr_buf_lit(&head, "\r\n");
}

static void head_length(size_t len) {
  mr_buf_lit(&head, "Content-Length: ");
  head_uint(len);
  mr_buf_lit(&head, "\r\n");
}

static void head_connection(unsigned rflags) {
  if (!(rflags & REQ_KEEP_ALIVE)) mr_buf_lit(&head, "Connection: close\r\n");
  else if (rflags & REQ_HTTP10) mr_buf_lit(&head, "Connection: keep-alive\r\n");
}

int response_simple(mr_conn *c, int status, const char *body, unsigned rflags) {
  size_t blen = strlen(body);
  head_start(status);
  head_date();
  mr_buf_lit(&head, "Content-Type: text/plain; charset=utf-8\r\n");
  head_length(blen);
  head_connection(rflags);
  mr_buf_lit(&head, "\r\n");
  uv_buf_t bufs[2] = {uv_buf_init(head.data, (unsigned)head.len), uv_buf_init((char *)body, (unsigned)blen)};
  return conn_write(c, bufs, 2);
}

static int safe_value(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0') return 0;
  return 1;
}

static int name_is(const char *name, size_t n, const char *lit) {
  return strlen(lit) == n && strncasecmp(name, lit, n) == 0;
}

static void head_header(lua_State *L, const char *name, size_t nlen, int vidx) {
  size_t vlen;
  const char *v = lua_tolstring(L, vidx, &vlen);
  if (!safe_value(v, vlen))
    bad_response(L, "header %s has a value with CR, LF or NUL", name);
  mr_buf_reserve(&head, nlen + vlen + 4);
  mr_buf_append(&head, name, nlen);
  mr_buf_lit(&head, ": ");
  mr_buf_append(&head, v, vlen);
  mr_buf_lit(&head, "\r\n");
}

/* Appends the handler's headers; returns the request flags to use (a
 * `connection: close` header turns keep-alive off). */
static unsigned head_headers(lua_State *L, int hidx, unsigned rflags, int *has_date) {
  lua_pushnil(L);
  while (lua_next(L, hidx)) {
    if (lua_type(L, -2) != LUA_TSTRING)
      bad_response(L, "header names must be strings, got %s", luaL_typename(L, -2));
    size_t nlen;
    const char *name = lua_tolstring(L, -2, &nlen);
    if (!mr_is_token(name, nlen))
      bad_response(L, "invalid header name \"%s\"", name);
    int t = lua_type(L, -1);
    if (name_is(name, nlen, "content-length") || name_is(name, nlen, "transfer-encoding")) {
      /* framing belongs to the server */
    } else if (name_is(name, nlen, "connection")) {
      const char *v = lua_tostring(L, -1);
      if (v && strcasestr(v, "close")) rflags &= ~REQ_KEEP_ALIVE;
    } else if (t == LUA_TSTRING || t == LUA_TNUMBER) {
      if (name_is(name, nlen, "date")) *has_date = 1;
      head_header(L, name, nlen, -1);
    } else if (t == LUA_TTABLE) {
      lua_Integer n = luaL_len(L, -1);
      for (lua_Integer i = 1; i <= n; i++) {
        int et = lua_rawgeti(L, -1, i);
        if (et != LUA_TSTRING && et != LUA_TNUMBER)
          bad_response(L, "header %s[%d] is a %s, expected a string", name, (int)i,
                     lua_typename(L, et));
        head_header(L, name, nlen, -1);
        lua_pop(L, 1);
      }
    } else {
      bad_response(L, "header %s is a %s, expected a string or an array of strings",
                 name, lua_typename(L, t));
    }
    lua_pop(L, 1);
  }
  return rflags;
}

/* send(handle, response) → the body function when the body is streamed. */
static int response_send(lua_State *L) {
  mr_request *r = request_check(L, 1);
  if (r->flags & REQ_HEAD_SENT) return luaL_error(L, "response already sent");
  if (!lua_istable(L, 2))
    return bad_response(L, "the handler returned %s, expected a response table",
                      luaL_typename(L, 2));
  lua_settop(L, 2);
  int S = strings_push(L);
  lua_rawgeti(L, S, S_STATUS);
  lua_gettable(L, 2);
  lua_rawgeti(L, S, S_HEADERS);
  lua_gettable(L, 2);
  lua_rawgeti(L, S, S_BODY);
  lua_gettable(L, 2);
  lua_remove(L, S);                         /* 3 status, 4 headers, 5 body */

  int status = 200;
  if (!lua_isnil(L, 3)) {
    int ok;
    lua_Integer st = lua_tointegerx(L, 3, &ok);
    if (!ok || st < 100 || st > 599)
      return bad_response(L, "status must be an integer 100-599, got %s",
                        luaL_tolstring(L, 3, NULL));
    if (st < 200)   /* a client reads a 1xx as interim and keeps waiting */
      return bad_response(L, "status %d is informational, not a final response", (int)st);
    status = (int)st;
  }
  if (!lua_isnil(L, 4) && !lua_istable(L, 4))
    return bad_response(L, "headers must be a table, got %s", luaL_typename(L, 4));

  /* The body: its kind and, when known, its length and pieces. */
  int kind = lua_type(L, 5);
  size_t blen = 0;
  lua_Integer nparts = 0;
  if (kind == LUA_TSTRING) {
    blen = lua_rawlen(L, 5);
  } else if (kind == LUA_TTABLE) {
    nparts = (lua_Integer)lua_rawlen(L, 5);
    for (lua_Integer i = 1; i <= nparts; i++) {
      if (lua_rawgeti(L, 5, i) != LUA_TSTRING)
        return bad_response(L, "body[%d] is a %s, expected a string", (int)i,
                          luaL_typename(L, -1));
      blen += lua_rawlen(L, -1);
      lua_pop(L, 1);
    }
  } else if (kind != LUA_TNIL && kind != LUA_TFUNCTION) {
    return bad_response(L, "body of unknown kind (%s)", luaL_typename(L, 5));
  }

  unsigned rflags = r->flags;
  if (mr_srv.draining) rflags &= ~REQ_KEEP_ALIVE;
  int has_date = 0;
  head_start(status);                        /* headers validated while appended */
  if (!lua_isnil(L, 4)) rflags = head_headers(L, 4, rflags, &has_date);
  if (!has_date) head_date();
  int no_body = status < 200 || status == 204 || status == 304;
  int stream = kind == LUA_TFUNCTION && !no_body;
  if (stream) {
    if (rflags & REQ_HTTP10) rflags &= ~REQ_KEEP_ALIVE;   /* close-delimited */
    else mr_buf_lit(&head, "Transfer-Encoding: chunked\r\n");
  } else if (!no_body) {
    head_length(blen);
  }
  head_connection(rflags);
  mr_buf_lit(&head, "\r\n");

  r->flags = (rflags & REQ_KEEP_ALIVE) | (r->flags & ~REQ_KEEP_ALIVE);
  r->flags = (r->flags | REQ_HEAD_SENT) & ~REQ_CONTINUE;
  r->status = status;
  mr_conn *c = r->conn;
  if (c) conn_response_started(c);
  int send_body = !no_body && !(r->flags & REQ_IS_HEAD);
  if (stream && send_body) {
    if (!(rflags & REQ_HTTP10)) r->flags |= REQ_CHUNKED;
  } else {
    r->flags |= REQ_RESP_DONE;
  }
  if (!c) return 0;                          /* the client left: nothing to write */

  uv_buf_t inline_bufs[MAX_INLINE_BUFS + 1], *bufs = inline_bufs;
  unsigned n = 0;
  if (send_body && kind == LUA_TTABLE && nparts >= MAX_INLINE_BUFS)
    bufs = lua_newuserdatauv(L, sizeof(uv_buf_t) * ((size_t)nparts + 1), 0);
  bufs[n++] = uv_buf_init(head.data, (unsigned)head.len);
  if (send_body && kind == LUA_TSTRING && blen) {
    bufs[n++] = uv_buf_init((char *)lua_tostring(L, 5), (unsigned)blen);
  } else if (send_body && kind == LUA_TTABLE) {
    for (lua_Integer i = 1; i <= nparts; i++) {
      lua_rawgeti(L, 5, i);                  /* the table keeps the string alive */
      size_t l;
      const char *s = lua_tolstring(L, -1, &l);
      lua_pop(L, 1);
      if (l) bufs[n++] = uv_buf_init((char *)s, (unsigned)l);
    }
  }
  conn_write(c, bufs, n);
  if (send_body) r->bytes_out += blen;
  if (stream && send_body) {
    lua_pushvalue(L, 5);
    return 1;
  }
  return 0;
}

static int write_k(lua_State *L, int status, lua_KContext ctx) {
  mr_request *r = request_check(L, 1);
  lua_pushboolean(L, r->conn != NULL);
  return 1;
}

/* write(handle, chunk) → true, or false once the client is gone. Parks while
 * the client is slower than the producer. */
static int response_write(lua_State *L) {
  mr_request *r = request_check(L, 1);
  if (lua_type(L, 2) != LUA_TSTRING)
    return bad_response(L, "the body produced a %s, expected a string",
                      luaL_typename(L, 2));
  if (!(r->flags & REQ_HEAD_SENT) || (r->flags & REQ_RESP_DONE))
    return luaL_error(L, "write outside a streamed response body");
  mr_conn *c = r->conn;
  size_t len;
  const char *s = lua_tolstring(L, 2, &len);
  if (c && len) {
    char size[24];
    uv_buf_t bufs[3];
    unsigned n = 0;
    if (r->flags & REQ_CHUNKED) {
      int sn = snprintf(size, sizeof size, "%zx\r\n", len);
      bufs[n++] = uv_buf_init(size, (unsigned)sn);
      bufs[n++] = uv_buf_init((char *)s, (unsigned)len);
      bufs[n++] = uv_buf_init("\r\n", 2);
    } else {
      bufs[n++] = uv_buf_init((char *)s, (unsigned)len);
    }
    conn_write(c, bufs, n);
    r->bytes_out += len;
    c = r->conn;                             /* a failed write detaches the request */
    if (c && conn_queued(c) > CONN_HIGH_WATER && runner_current(L) == r)
      return runner_park(L, r, WAIT_DRAIN, NULL, NULL, write_k, 0);
  }
  lua_pushboolean(L, c != NULL);
  return 1;
}

/* finish(handle): the streamed body is complete. */
static int response_finish(lua_State *L) {
  mr_request *r = request_check(L, 1);
  if (r->flags & REQ_RESP_DONE) return 0;
  if (r->conn && (r->flags & REQ_CHUNKED)) {
    uv_buf_t b = uv_buf_init("0\r\n\r\n", 5);
    conn_write(r->conn, &b, 1);
  }
  r->flags |= REQ_RESP_DONE;
  return 0;
}

const luaL_Reg response_funcs[] = {
  {"send", response_send},
  {"write", response_write},
  {"finish", response_finish},
  {NULL, NULL},
};
