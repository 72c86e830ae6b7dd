/* copy.c — Lua values as bytes, to cross from one lua_State to another that
 * runs on another thread (thread.c): neither side ever touches the other's
 * state. Encoding writes into a buffer held by a userdata with __gc, so a
 * memory error raised half-way leaks nothing; on success the bytes move to
 * the caller's mr_buf, which the caller owns and frees. The format is private
 * to one process: a count, then one tag per value (a table is its entries as
 * key, value pairs up to an end tag, with size hints for lua_createtable). */
#include "copy.h"
#include <stdlib.h>
#include <string.h>

#define BOX_MT "moonring.copy.box"
#define MAX_DEPTH 100

enum { T_NIL, T_FALSE, T_TRUE, T_INT, T_FLT, T_STR, T_TABLE, T_END };

/* ---- encoding ---------------------------------------------------------- */

typedef struct box {
  char *data;
  size_t len, cap;
} box;

static int box_gc(lua_State *L) {
  box *b = lua_touserdata(L, 1);
  free(b->data);
  *b = (box){0};
  return 0;
}

static box *box_push(lua_State *L) {
  box *b = lua_newuserdatauv(L, sizeof *b, 0);
  *b = (box){0};
  if (luaL_newmetatable(L, BOX_MT)) {
    lua_pushcfunction(L, box_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return b;
}

typedef struct enc_state {
  lua_State *L;
  box *b;
  int seen;                     /* stack index: tables on the path being encoded */
  const char *why;
} enc_state;

static void put(enc_state *e, const void *p, size_t n) {
  box *b = e->b;
  if (n > b->cap - b->len) {
    if (n > ((size_t)-1 >> 2) - b->len) luaL_error(e->L, "values too large to copy");
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n) cap *= 2;
    char *d = realloc(b->data, cap);
    if (!d) luaL_error(e->L, "not enough memory to copy values");
    b->data = d;
    b->cap = cap;
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
}

static void put_tag(enc_state *e, unsigned char tag) { put(e, &tag, 1); }

static const char *refusal(int type) {
  switch (type) {
  case LUA_TFUNCTION: return "a function cannot be copied (only nil, booleans, numbers, strings and tables of those)";
  case LUA_TTHREAD: return "a coroutine cannot be copied (only nil, booleans, numbers, strings and tables of those)";
  default: return "a userdata cannot be copied (only nil, booleans, numbers, strings and tables of those)";
  }
}

static int enc(enc_state *e, int idx, int depth);

static int enc_table(enc_state *e, int idx, int depth) {
  lua_State *L = e->L;
  if (depth >= MAX_DEPTH) {
    e->why = "tables nested more than 100 deep cannot be copied";
    return -1;
  }
  luaL_checkstack(L, 4, "copying a table");
  lua_pushvalue(L, idx);
  int cycle = lua_rawget(L, e->seen) != LUA_TNIL;
  lua_pop(L, 1);
  if (cycle) {
    e->why = "a table that contains itself (a cycle) cannot be copied";
    return -1;
  }
  lua_pushvalue(L, idx);
  lua_pushboolean(L, 1);
  lua_rawset(L, e->seen);

  put_tag(e, T_TABLE);
  lua_Unsigned len = lua_rawlen(L, idx);
  uint32_t narr = len > (1u << 26) ? 1u << 26 : (uint32_t)len, nrec = 0, count = 0;
  size_t hints = e->b->len;
  put(e, &narr, sizeof narr);
  put(e, &nrec, sizeof nrec);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int kt = lua_type(L, -2);
    if (kt != LUA_TSTRING && kt != LUA_TNUMBER && kt != LUA_TBOOLEAN) {
      e->why = "a table key that is not a string, number or boolean cannot be copied";
      return -1;
    }
    int top = lua_gettop(L);
    if (enc(e, top - 1, depth + 1) < 0 || enc(e, top, depth + 1) < 0) return -1;
    lua_pop(L, 1);
    count++;
  }
  put_tag(e, T_END);
  nrec = count > narr ? count - narr : 0;
  memcpy(e->b->data + hints + sizeof narr, &nrec, sizeof nrec);

  lua_pushvalue(L, idx);
  lua_pushnil(L);
  lua_rawset(L, e->seen);
  return 0;
}

/* Never converts the value in place (lua_next must see keys unchanged). */
static int enc(enc_state *e, int idx, int depth) {
  lua_State *L = e->L;
  int type = lua_type(L, idx);
  switch (type) {
  case LUA_TNIL: put_tag(e, T_NIL); return 0;
  case LUA_TBOOLEAN: put_tag(e, lua_toboolean(L, idx) ? T_TRUE : T_FALSE); return 0;
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) {
      lua_Integer i = lua_tointeger(L, idx);
      put_tag(e, T_INT);
      put(e, &i, sizeof i);
    } else {
      lua_Number d = lua_tonumber(L, idx);
      put_tag(e, T_FLT);
      put(e, &d, sizeof d);
    }
    return 0;
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    put_tag(e, T_STR);
    put(e, &n, sizeof n);
    put(e, s, n);
    return 0;
  }
  case LUA_TTABLE: return enc_table(e, lua_absindex(L, idx), depth);
  default:
    e->why = refusal(type);
    return -1;
  }
}

int copy_encode(lua_State *L, int first, int last, mr_buf *out, const char **why) {
  first = lua_absindex(L, first);
  last = last < 0 ? lua_absindex(L, last) : last;
  uint32_t n = last >= first ? (uint32_t)(last - first + 1) : 0;
  luaL_checkstack(L, 3, "copying values");
  int base = lua_gettop(L);
  box *b = box_push(L);
  lua_newtable(L);
  enc_state e = {.L = L, .b = b, .seen = lua_gettop(L)};
  put(&e, &n, sizeof n);
  for (uint32_t i = 0; i < n; i++) {
    if (enc(&e, first + (int)i, 0) < 0) {
      *why = e.why;
      free(b->data);
      *b = (box){0};
      lua_settop(L, base);
      return (int)i + 1;
    }
  }
  *out = (mr_buf){.data = b->data, .len = b->len, .cap = b->cap};
  *b = (box){0};
  lua_settop(L, base);
  return 0;
}

/* ---- decoding ---------------------------------------------------------- */

typedef struct reader {
  const char *p, *end;
} reader;

static void get(lua_State *L, reader *r, void *dst, size_t n) {
  if ((size_t)(r->end - r->p) < n) luaL_error(L, "copied values are corrupt");
  memcpy(dst, r->p, n);
  r->p += n;
}

static unsigned char get_tag(lua_State *L, reader *r) {
  unsigned char tag;
  get(L, r, &tag, 1);
  return tag;
}

static void dec(lua_State *L, reader *r, unsigned char tag) {
  switch (tag) {
  case T_NIL: lua_pushnil(L); return;
  case T_FALSE: lua_pushboolean(L, 0); return;
  case T_TRUE: lua_pushboolean(L, 1); return;
  case T_INT: {
    lua_Integer i;
    get(L, r, &i, sizeof i);
    lua_pushinteger(L, i);
    return;
  }
  case T_FLT: {
    lua_Number d;
    get(L, r, &d, sizeof d);
    lua_pushnumber(L, d);
    return;
  }
  case T_STR: {
    size_t n;
    get(L, r, &n, sizeof n);
    if ((size_t)(r->end - r->p) < n) luaL_error(L, "copied values are corrupt");
    lua_pushlstring(L, r->p, n);
    r->p += n;
    return;
  }
  case T_TABLE: {
    uint32_t narr, nrec;
    get(L, r, &narr, sizeof narr);
    get(L, r, &nrec, sizeof nrec);
    luaL_checkstack(L, 3, "copying a table");
    lua_createtable(L, (int)narr, (int)(nrec > (1u << 26) ? 1u << 26 : nrec));
    for (unsigned char t; (t = get_tag(L, r)) != T_END;) {
      dec(L, r, t);
      dec(L, r, get_tag(L, r));
      lua_rawset(L, -3);
    }
    return;
  }
  default: luaL_error(L, "copied values are corrupt");
  }
}

int copy_decode(lua_State *L, const mr_buf *b) {
  if (!b->len) return 0;
  reader r = {b->data, b->data + b->len};
  uint32_t n;
  get(L, &r, &n, sizeof n);
  if (n > 1000000) luaL_error(L, "too many values to copy (%d)", (int)n);
  luaL_checkstack(L, (int)n, "too many values to copy");
  for (uint32_t i = 0; i < n; i++) dec(L, &r, get_tag(L, &r));
  return (int)n;
}

void copy_failure(mr_buf *out, const char *msg) {
  mr_buf_free(out);
  uint32_t n = 2;
  size_t len = strlen(msg);
  unsigned char nil = T_NIL, str = T_STR;
  mr_buf_append(out, &n, sizeof n);
  mr_buf_append(out, &nil, 1);
  mr_buf_append(out, &str, 1);
  mr_buf_append(out, &len, sizeof len);
  mr_buf_append(out, msg, len);
}
