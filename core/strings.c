/* strings.c — the strings the request path pushes on every request (table
 * keys, method names, protocol names), interned once at startup into one
 * registry table, which also holds the request table's metatable (S_REQ_MT,
 * set by exchange.c). The functions on the request path get them as
 * upvalues (strings_closure): pushing an upvalue is cheaper than reading a
 * table, and far cheaper than lua_setfield hashing a literal each time. */
#include "request.h"

static const char *const names[S__COUNT] = {
  [S_REQUEST_METHOD] = "request_method", [S_URI] = "uri", [S_QUERY_STRING] = "query_string",
  [S_HEADERS] = "headers", [S_BODY] = "body", [S_SCHEME] = "scheme", [S_PROTOCOL] = "protocol",
  [S_REMOTE_ADDR] = "remote_addr", [S_SERVER_NAME] = "server_name",
  [S_SERVER_PORT] = "server_port", [S_PARAMS] = "params", [S_ID] = "id",
  [S_STATUS] = "status", [S_HTTP] = "http", [S_HTTP10] = "HTTP/1.0", [S_HTTP11] = "HTTP/1.1",
  [S_SLASH] = "/", [S_COMMA] = ", ", [S_SEMICOLON] = "; ",
};

void strings_init(lua_State *L) {
  lua_createtable(L, S__COUNT + S_METHODS_MAX, 0);
  for (int i = 1; i < S__COUNT; i++) {
    if (!names[i]) continue;
    lua_pushstring(L, names[i]);
    lua_rawseti(L, -2, i);
  }
#define METHOD(num, name, string)                     \
  if (num < S_METHODS_MAX) {                          \
    lua_pushliteral(L, #string);                      \
    lua_rawseti(L, -2, S__COUNT + num);               \
  }
  HTTP_ALL_METHOD_MAP(METHOD)
#undef METHOD
  mr_srv.strings_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

void strings_closure(lua_State *L, lua_CFunction fn) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, mr_srv.strings_ref);
  int t = lua_gettop(L);
  for (int i = 1; i < S__COUNT; i++) lua_rawgeti(L, t, i);
  lua_pushvalue(L, t);                       /* the table itself: method names */
  lua_pushcclosure(L, fn, S__COUNT);
  lua_remove(L, t);
}
