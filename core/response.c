#define _GNU_SOURCE /* strcasestr */
/* response.c — sends the response table (DESIGN 4.3). `send` validates the
 * whole table before a byte is written, then writes the head and any
 * known-length body in one call; a streamed body (an iterator function, or a
 * value whose metatable has __moonring_body, such as moonring.stream and
 * channels) is handed back to serve, which drives it through stream.c.
 * Header names and values that could split the response are refused, never
 * written.
 *
 * A big string body is never copied: when the socket cannot take it at
 * once, the rest is written from the Lua string itself, which a registry
 * ref keeps alive until the transport releases it. Releasing a big one
 * asks for a full GC and malloc_trim on the next loop turn, so its memory
 * goes back to the system once the client has it. */
#include "request.h"
#include <lauxlib.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define MAX_INLINE_BUFS 16
#define KEEP_MIN (64 * MR_KIB)         /* smaller string bodies are copied (cheaper than a ref) */
#define RECLAIM_MIN (1024 * MR_KIB)    /* a release this big brings a full GC and a trim */

static uv_check_t reclaim;             /* unreferenced; closed with the loop's other handles */

static void reclaim_cb(uv_check_t *h) {
  uv_check_stop(h);
  lua_gc(mr_srv.L, LUA_GCCOLLECT, 0);
  malloc_trim(0);
}

/* The transport is done with a kept string body (response_send). */
static void release_body(void *arg, size_t bytes) {
  luaL_unref(mr_srv.L, LUA_REGISTRYINDEX, (int)(intptr_t)arg);
  if (bytes < RECLAIM_MIN) return;
  if (!reclaim.loop) {
    uv_check_init(mr_srv.loop, &reclaim);
    uv_unref((uv_handle_t *)&reclaim);
  }
  uv_check_start(&reclaim, reclaim_cb);
}

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

static int safe_value(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0') return 0;
  return 1;
}

static int name_is(const char *name, size_t n, const char *lit) {
  return strlen(lit) == n && strncasecmp(name, lit, n) == 0;
}

static void head_header(lua_State *L, mr_buf *head, const char *name, size_t nlen, int vidx) {
  size_t vlen;
  const char *v = lua_tolstring(L, vidx, &vlen);
  if (!safe_value(v, vlen))
    bad_response(L, "header %s has a value with CR, LF or NUL", name);
  mr_buf_reserve(head, nlen + vlen + 4);
  mr_buf_append(head, name, nlen);
  mr_buf_lit(head, ": ");
  mr_buf_append(head, v, vlen);
  mr_buf_lit(head, "\r\n");
}

/* Appends the handler's headers; returns the exchange flags to use (a
 * `connection: close` header turns keep-alive off). */
static unsigned head_headers(lua_State *L, mr_buf *head, int hidx, unsigned rflags, int *has_date) {
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
      if (v && strcasestr(v, "close")) rflags &= ~EX_KEEP_ALIVE;
    } else if (t == LUA_TSTRING || t == LUA_TNUMBER) {
      if (name_is(name, nlen, "date")) *has_date = 1;
      head_header(L, head, name, nlen, -1);
    } else if (t == LUA_TTABLE) {
      lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
      for (lua_Integer i = 1; i <= n; i++) {
        int et = lua_rawgeti(L, -1, i);
        if (et != LUA_TSTRING && et != LUA_TNUMBER)
          bad_response(L, "header %s[%d] is a %s, expected a string", name, (int)i,
                     lua_typename(L, et));
        head_header(L, head, name, nlen, -1);
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

/* The __moonring_body method of v's metatable, pushed, or nothing. */
static int push_body_method(lua_State *L, int idx) {
  if (!lua_getmetatable(L, idx)) return 0;
  lua_pushliteral(L, "__moonring_body");
  if (lua_rawget(L, -2) != LUA_TNIL) {
    lua_remove(L, -2);
    return 1;
  }
  lua_pop(L, 2);
  return 0;
}

/* The head, then the file: what the socket takes now, and the rest from
 * the request's task (serve calls the pump as a body method). */
static int send_file(lua_State *L, mr_exchange *ex, mr_buf *head, mr_file *file) {
  uv_buf_t b = uv_buf_init(head->data, (unsigned)head->len);
  http_write(ex, &b, 1);
  int rc = ex->http ? file_send_now(ex, file) : -1;
  if (rc == 1) ex->flags |= EX_RESP_DONE;
  if (rc == 1 || rc == -1) {
    file_close(file);
    return 0;
  }
  lua_pushvalue(L, 5);
  file_push_pump(L);
  return 2;
}

/* send(handle, response) → nothing when the response is complete; the body
 * when it is an iterator function; the body and its __moonring_body method
 * when it is a custom kind. */
int response_send(lua_State *L) {
  mr_request *r = request_check(L, 1);
  mr_exchange *ex = &r->ex;
  if (!ex->http) return 0;                  /* over (504 sent, client gone): nothing to send */
  if (ex->flags & EX_HEAD_SENT) return luaL_error(L, "response already sent");
  if (!lua_istable(L, 2))
    return bad_response(L, "the handler returned %s, expected a response table",
                      luaL_typename(L, 2));
  lua_settop(L, 2);
  /* raw reads unless the table has a metatable (whose __index may answer) */
  int meta = lua_getmetatable(L, 2);
  if (meta) lua_pop(L, 1);
  int (*get)(lua_State *, int) = meta ? lua_gettable : lua_rawget;
  lua_pushvalue(L, STR(S_STATUS));
  get(L, 2);
  lua_pushvalue(L, STR(S_HEADERS));
  get(L, 2);
  lua_pushvalue(L, STR(S_BODY));
  get(L, 2);                                /* 3 status, 4 headers, 5 body */

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
  int method = 0;                           /* a custom kind: its method at 6 */
  mr_file *file = NULL;                     /* moonring.file: its length is known */
  if (kind == LUA_TTABLE || kind == LUA_TUSERDATA) method = push_body_method(L, 5);
  if (kind == LUA_TUSERDATA && !method && (file = file_test(L, 5))) {
    int64_t flen = file_body_length(file);
    if (flen < 0) return bad_response(L, "the file body was sent or closed already");
    blen = (size_t)flen;
  } else if (kind == LUA_TSTRING) {
    blen = lua_rawlen(L, 5);
  } else if (kind == LUA_TTABLE && !method) {
    nparts = (lua_Integer)lua_rawlen(L, 5);
    for (lua_Integer i = 1; i <= nparts; i++) {
      if (lua_rawgeti(L, 5, i) != LUA_TSTRING)
        return bad_response(L, "body[%d] is a %s, expected a string", (int)i,
                          luaL_typename(L, -1));
      blen += lua_rawlen(L, -1);
      lua_pop(L, 1);
    }
  } else if (kind != LUA_TNIL && kind != LUA_TFUNCTION && !method) {
    return bad_response(L, "body of unknown kind (%s)", luaL_typename(L, 5));
  }

  unsigned xflags = ex->flags;
  if (mr_srv.draining) xflags &= ~EX_KEEP_ALIVE;
  int has_date = 0;
  mr_buf *head = head_start(status);        /* headers validated while appended */
  if (!lua_isnil(L, 4)) xflags = head_headers(L, head, 4, xflags, &has_date);
  if (!has_date) head_date(head);
  int no_body = status == 204 || status == 304;
  int stream = (kind == LUA_TFUNCTION || method) && !no_body;
  if (stream) {
    if (xflags & EX_HTTP10) xflags &= ~EX_KEEP_ALIVE;   /* close-delimited */
    else mr_buf_lit(head, "Transfer-Encoding: chunked\r\n");
  } else if (!no_body) {
    head_length(head, blen);
  }
  head_connection(head, xflags);
  mr_buf_lit(head, "\r\n");

  ex->flags = (xflags & EX_KEEP_ALIVE) | (ex->flags & ~EX_KEEP_ALIVE);
  int send_body = !no_body && !(ex->flags & EX_IS_HEAD);
  if (file && !(send_body && blen)) {
    file_close(file);                       /* HEAD, 304, or empty: nothing to send */
    file = NULL;
  }
  if (stream && send_body) {
    if (!(xflags & EX_HTTP10)) ex->flags |= EX_CHUNKED;
  } else if (!file) {
    ex->flags |= EX_RESP_DONE;
  }
  http_head_sent(ex, status);
  if (!ex->http) {                          /* the client left: nothing to write */
    if (file) file_close(file);
    return 0;
  }
  if (file) return send_file(L, ex, head, file);

  uv_buf_t inline_bufs[MAX_INLINE_BUFS + 1], *bufs = inline_bufs;
  unsigned n = 0;
  if (send_body && kind == LUA_TTABLE && nparts >= MAX_INLINE_BUFS)
    bufs = lua_newuserdatauv(L, sizeof(uv_buf_t) * ((size_t)nparts + 1), 0);
  bufs[n++] = uv_buf_init(head->data, (unsigned)head->len);
  if (send_body && kind == LUA_TSTRING && blen >= KEEP_MIN) {
    bufs[n].base = (char *)lua_tostring(L, 5);
    bufs[n++].len = blen;
    lua_pushvalue(L, 5);
    int ref = luaL_ref(L, LUA_REGISTRYINDEX);
    http_write_kept(ex, bufs, n, 1, release_body, (void *)(intptr_t)ref);
    ex->bytes_out += blen;
    return 0;
  } else if (send_body && kind == LUA_TSTRING && blen) {
    bufs[n++] = uv_buf_init((char *)lua_tostring(L, 5), (unsigned)blen);
  } else if (send_body && kind == LUA_TTABLE && !method) {
    for (lua_Integer i = 1; i <= nparts; i++) {
      lua_rawgeti(L, 5, i);                  /* the table keeps the string alive */
      size_t l;
      const char *s = lua_tolstring(L, -1, &l);
      lua_pop(L, 1);
      if (l) {
        bufs[n].base = (char *)s;             /* not uv_buf_init: lengths over 4 GiB */
        bufs[n++].len = l;
      }
    }
  }
  http_write(ex, bufs, n);
  if (!stream || !send_body) {
    if (send_body) ex->bytes_out += blen;
    return 0;
  }
  lua_pushvalue(L, 5);
  if (!method) return 1;
  lua_pushvalue(L, 6);
  return 2;
}

