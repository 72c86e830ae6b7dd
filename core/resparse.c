/* resparse.c — an llhttp parser for HTTP responses, for the HTTP client
 * (lua/moonring/http.lua) that talks to upstreams over the cosockets. The
 * Lua side feeds it what it received; the callbacks only copy bytes into C
 * buffers (no Lua runs inside them), and Lua then takes the head and the
 * body bytes out at its own pace:
 *
 *   local p = core.http_parser(head_request)   -- true: the request was HEAD
 *   ok, err = p:feed(bytes)       -- nil, "bad response: ..." on a framing error
 *   status, headers = p:head()    -- once the head is complete (nil before)
 *   s = p:body()                  -- body bytes parsed since the last call
 *   p:done()                      -- the message is complete
 *   ok, err = p:finish()          -- the peer closed: ends a body read to EOF
 *   p:keepalive()                 -- the connection may carry another request
 *   p:reset([head_request])       -- ready for another response
 *
 * Ownership: the parser is a userdata; its buffers are freed by __gc. */
#include "resparse.h"
#include <stdlib.h>
#include <string.h>

static llhttp_settings_t settings;

static mr_resparse *of(llhttp_t *p) { return (mr_resparse *)p; }

static int count(mr_resparse *r, size_t n) {
  r->head_bytes += n;
  if (r->head_bytes > MAX_HEAD) {
    llhttp_set_error_reason(&r->p, "response head over 64 KiB");
    return HPE_USER;
  }
  return 0;
}

static int on_status(llhttp_t *p, const char *at, size_t n) { return count(of(p), n); }

/* Each name and each value is followed by a NUL when it completes. Trailer
 * fields (after a chunked body) come through the same callbacks: they are
 * counted, not kept. */
static int on_header_field(llhttp_t *p, const char *at, size_t n) {
  mr_resparse *r = of(p);
  if (count(r, n)) return HPE_USER;
  if (r->state) return 0;
  mr_buf_reserve(&r->hdrs, n);
  char *out = r->hdrs.data + r->hdrs.len;
  for (size_t i = 0; i < n; i++) {
    char ch = at[i];
    out[i] = ch >= 'A' && ch <= 'Z' ? (char)(ch | 0x20) : ch;
  }
  r->hdrs.len += n;
  return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n) {
  mr_resparse *r = of(p);
  if (count(r, n)) return HPE_USER;
  if (!r->state) mr_buf_append(&r->hdrs, at, n);
  return 0;
}

static int on_field_complete(llhttp_t *p) {
  mr_resparse *r = of(p);
  if (!r->state) {
    mr_buf_append(&r->hdrs, "", 1);
    r->nhdr++;
  }
  return 0;
}

static int on_value_complete(llhttp_t *p) {
  mr_resparse *r = of(p);
  if (!r->state) mr_buf_append(&r->hdrs, "", 1);
  return 0;
}

static int on_headers_complete(llhttp_t *p) {
  mr_resparse *r = of(p);
  int status = llhttp_get_status_code(p);
  if (status >= 100 && status < 200 && status != 101) {
    r->hdrs.len = 0;                         /* 100 Continue, 103 Early Hints: not the answer */
    r->nhdr = 0;
    r->head_bytes = 0;
    r->interim = 1;
    return 0;
  }
  r->state = 1;
  r->has_length = (p->flags & F_CONTENT_LENGTH) != 0;
  r->length = p->content_length;             /* llhttp counts it down from here */
  /* 1: no body (a response to HEAD), as llhttp documents */
  return r->head_request ? 1 : 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n) {
  mr_buf_append(&of(p)->body, at, n);
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  mr_resparse *r = of(p);
  if (r->interim) {
    r->interim = 0;                          /* the real response follows in the same stream */
    return 0;
  }
  r->state = 2;
  return HPE_PAUSED;                         /* what follows is not this message's */
}

static mr_resparse *check(lua_State *L) { return resparse_check(L, 1); }

static const void *parser_mt;    /* compared by address: no registry lookup per call */
static int parser_mt_ref = LUA_NOREF;

mr_resparse *resparse_check(lua_State *L, int idx) { return check_udata(L, idx, parser_mt, PARSER_MT); }

int resparse_push_bad(lua_State *L, mr_resparse *r) {
  const char *reason = llhttp_get_error_reason(&r->p);
  lua_pushnil(L);
  lua_pushfstring(L, "bad response: %s", reason ? reason : llhttp_errno_name(llhttp_get_errno(&r->p)));
  return 2;
}

int resparse_feed(mr_resparse *r, const char *s, size_t n) {
  if (r->state == 2) {
    r->extra += n;
    return 0;
  }
  llhttp_errno_t e = llhttp_execute(&r->p, s, n);
  if (e == HPE_PAUSED) r->extra += n - (size_t)(llhttp_get_error_pos(&r->p) - s);
  else if (e != HPE_OK) return -1;
  return 0;
}

int resparse_finish(mr_resparse *r) {
  if (r->state == 2) return 0;
  llhttp_errno_t e = llhttp_finish(&r->p);
  if (e != HPE_OK && e != HPE_PAUSED) return -1;
  return r->state == 2 ? 0 : 1;
}

static int l_feed(lua_State *L) {
  mr_resparse *r = check(L);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  if (resparse_feed(r, s, n) < 0) return resparse_push_bad(L, r);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_finish(lua_State *L) {
  mr_resparse *r = check(L);
  int rc = resparse_finish(r);
  if (rc < 0) return resparse_push_bad(L, r);
  if (rc > 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* head() → status, headers, or nil before the head is complete. Header
 * names are lower-case; repeats are joined with ", ", except set-cookie,
 * always an array (its values may hold commas). */
static int l_head(lua_State *L) {
  mr_resparse *r = check(L);
  if (r->state < 1) return 0;
  resparse_push_head(L, r);
  return 2;
}

void resparse_push_head(lua_State *L, mr_resparse *r) {
  lua_pushinteger(L, llhttp_get_status_code(&r->p));
  lua_createtable(L, 0, (int)r->nhdr);
  int t = lua_gettop(L);
  const char *p = r->hdrs.data, *end = p + r->hdrs.len;
  while (p && p < end) {
    const char *name = p;
    size_t nlen = strlen(p);
    p += nlen + 1;
    if (p >= end) break;
    const char *value = p;
    size_t vlen = strlen(p);
    p += vlen + 1;
    while (vlen && (value[vlen - 1] == ' ' || value[vlen - 1] == '\t')) vlen--;
    lua_pushlstring(L, name, nlen);
    lua_pushvalue(L, -1);
    int had = lua_rawget(L, t) != LUA_TNIL;  /* name, old value */
    if (nlen == 10 && memcmp(name, "set-cookie", 10) == 0) {
      if (!had) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -2);
        lua_pushvalue(L, -2);
        lua_rawset(L, t);                    /* headers[name] = {} */
      }
      lua_pushlstring(L, value, vlen);
      lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
      lua_pop(L, 2);
      continue;
    }
    if (had) {
      lua_pushliteral(L, ", ");
      lua_pushlstring(L, value, vlen);
      lua_concat(L, 3);
    } else {
      lua_pop(L, 1);
      lua_pushlstring(L, value, vlen);
    }
    lua_rawset(L, t);
  }
}

static int l_body(lua_State *L) {
  mr_resparse *r = check(L);
  lua_pushlstring(L, r->body.data ? r->body.data : "", r->body.len);
  r->body.len = 0;
  return 1;
}

static int l_done(lua_State *L) {
  lua_pushboolean(L, check(L)->state == 2);
  return 1;
}

static int l_keepalive(lua_State *L) {
  mr_resparse *r = check(L);
  lua_pushboolean(L, r->state == 2 && !r->extra && llhttp_should_keep_alive(&r->p));
  return 1;
}

/* reset([head_request]): ready for the next response (the HTTP client
 * reuses parsers; their buffers stay allocated). */
static int l_reset(lua_State *L) {
  mr_resparse *r = check(L);
  mr_buf hdrs = r->hdrs, body = r->body;
  memset(r, 0, sizeof *r);
  llhttp_init(&r->p, HTTP_RESPONSE, &settings);
  r->head_request = lua_toboolean(L, 2);
  r->hdrs = hdrs;
  r->body = body;
  r->hdrs.len = r->body.len = 0;
  return 0;
}

static int l_gc(lua_State *L) {
  mr_resparse *r = lua_touserdata(L, 1);
  mr_buf_free(&r->hdrs);
  mr_buf_free(&r->body);
  return 0;
}

/* http_parser([head_request]) → a parser for one response */
static int l_http_parser(lua_State *L) {
  mr_resparse *r = lua_newuserdatauv(L, sizeof *r, 0);
  memset(r, 0, sizeof *r);
  llhttp_init(&r->p, HTTP_RESPONSE, &settings);
  r->head_request = lua_toboolean(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, parser_mt_ref);
  lua_setmetatable(L, -2);
  return 1;
}

static const luaL_Reg methods[] = {
  {"feed", l_feed},
  {"finish", l_finish},
  {"head", l_head},
  {"body", l_body},
  {"done", l_done},
  {"keepalive", l_keepalive},
  {"reset", l_reset},
  {NULL, NULL},
};

const luaL_Reg resparse_funcs[] = {
  {"http_parser", l_http_parser},
  {NULL, NULL},
};

void resparse_open(lua_State *L) {
  llhttp_settings_init(&settings);
  settings.on_status = on_status;
  settings.on_header_field = on_header_field;
  settings.on_header_value = on_header_value;
  settings.on_header_field_complete = on_field_complete;
  settings.on_header_value_complete = on_value_complete;
  settings.on_headers_complete = on_headers_complete;
  settings.on_body = on_body;
  settings.on_message_complete = on_message_complete;
  luaL_newmetatable(L, PARSER_MT);
  parser_mt = lua_topointer(L, -1);
  lua_pushvalue(L, -1);
  parser_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushcfunction(L, l_gc);
  lua_setfield(L, -2, "__gc");
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}
