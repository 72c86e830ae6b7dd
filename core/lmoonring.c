/* lmoonring.c — the `moonring.core` module (the C half of `require
 * "moonring"`) and the worker's Lua state: package.path, the coroutine
 * library wrapper, the serve function and the app handler, all loaded under
 * lua_pcall so a bad app is an error message, never a crash. Each
 * capability's functions live in its own file (request.c, response.c,
 * stream.c, timer.c, channel.c, spawn.c, promise.c; outbound I/O: socket.c,
 * sockio.c, dns.c, resparse.c, fetch.c, thread.c, fs.c) and are gathered
 * here. */
#include "request.h"
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* listdir(path) → { {name=, type="file"|"directory"|"other"}, ... } or nil, err */
static int l_listdir(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  uv_fs_t req;
  int rc = uv_fs_scandir(NULL, &req, path, 0, NULL);
  if (rc < 0) {
    uv_fs_req_cleanup(&req);
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s: %s", path, uv_err_name(rc), uv_strerror(rc));
    return 2;
  }
  lua_newtable(L);
  uv_dirent_t ent;
  int i = 0;
  while (uv_fs_scandir_next(&req, &ent) != UV_EOF) {
    lua_createtable(L, 0, 2);
    lua_pushstring(L, ent.name);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, ent.type == UV_DIRENT_FILE ? "file" : ent.type == UV_DIRENT_DIR ? "directory"
                                                                                         : "other");
    lua_setfield(L, -2, "type");
    lua_rawseti(L, -2, ++i);
  }
  uv_fs_req_cleanup(&req);
  return 1;
}

/* stat(path) → "file" | "directory" | "other", or nil, err */
static int l_stat(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  uv_fs_t req;
  int rc = uv_fs_stat(NULL, &req, path, NULL);
  if (rc < 0) {
    uv_fs_req_cleanup(&req);
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s: %s", path, uv_err_name(rc), uv_strerror(rc));
    return 2;
  }
  uint64_t mode = req.statbuf.st_mode;
  uv_fs_req_cleanup(&req);
  lua_pushstring(L, S_ISREG(mode) ? "file" : S_ISDIR(mode) ? "directory" : "other");
  return 1;
}

static int l_log_error(lua_State *L) {
  log_error("%s", luaL_checkstring(L, 1));
  return 0;
}

static int l_log_info(lua_State *L) {
  log_info("%s", luaL_checkstring(L, 1));
  return 0;
}

static const luaL_Reg core_funcs[] = {
  {"listdir", l_listdir},
  {"stat", l_stat},
  {"log_error", l_log_error},
  {"log_info", l_log_info},
  {NULL, NULL},
};

static int luaopen_moonring_core(lua_State *L) {
  lua_newtable(L);
  luaL_setfuncs(L, core_funcs, 0);
  strings_closure(L, request_build);
  lua_setfield(L, -2, "request");
  strings_closure(L, response_send);
  lua_setfield(L, -2, "send");
  luaL_setfuncs(L, stream_funcs, 0);
  luaL_setfuncs(L, timer_funcs, 0);
  luaL_setfuncs(L, thread_funcs, 0);
  luaL_setfuncs(L, fs_funcs, 0);
  luaL_setfuncs(L, channel_funcs, 0);
  luaL_setfuncs(L, spawn_funcs, 0);
  luaL_setfuncs(L, promise_funcs, 0);
  luaL_setfuncs(L, task_funcs, 0);
  luaL_setfuncs(L, socket_funcs, 0);
  luaL_setfuncs(L, dns_funcs, 0);
  luaL_setfuncs(L, resparse_funcs, 0);
  luaL_setfuncs(L, fetch_funcs, 0);
  luaL_setfuncs(L, file_funcs, 0);
  luaL_setfuncs(L, crypto_funcs, 0);
  lua_pushliteral(L, MOONRING_VERSION);
  lua_setfield(L, -2, "version");
  lua_pushboolean(L, mr_srv.cfg.dev);
  lua_setfield(L, -2, "dev");
  lua_pushinteger(L, mr_srv.cfg.worker_id);
  lua_setfield(L, -2, "worker_id");
  lua_pushinteger(L, (lua_Integer)uv_os_getpid());
  lua_setfield(L, -2, "pid");
  return 1;
}

/* An error outside any protected call: nothing sane is left to do. */
static int panic(lua_State *L) {
  const char *msg = lua_tostring(L, -1);
  log_error("unprotected Lua error: %s", msg ? msg : "(not a string)");
  abort();
}

/* package[field] without its entries relative to the working directory
 * ("./?.lua", "./?.so"): the server must not load whatever code sits where
 * it was started. The app's own modules are found by app.lua's searcher. */
static void drop_relative(lua_State *L, int package, const char *field) {
  lua_getfield(L, package, field);
  const char *p = lua_tostring(L, -1);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  int first = 1;
  while (p && *p) {
    const char *end = strchr(p, ';');
    size_t n = end ? (size_t)(end - p) : strlen(p);
    if (n && !(n >= 2 && p[0] == '.' && p[1] == '/')) {
      if (!first) luaL_addchar(&b, ';');
      luaL_addlstring(&b, p, n);
      first = 0;
    }
    p += n;
    if (*p == ';') p++;
  }
  luaL_pushresult(&b);
  lua_setfield(L, package, field);
  lua_pop(L, 1);
}

/* Runs protected: (lua_dir) → the registry ref of serve bound to the app. */
static int load_all(lua_State *L) {
  const char *lua_dir = lua_tostring(L, 1);
  mr_server *s = &mr_srv;

  lua_getglobal(L, "package");
  int package = lua_gettop(L);
  drop_relative(L, package, "path");
  drop_relative(L, package, "cpath");
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;", lua_dir, lua_dir);
  lua_getfield(L, -2, "path");
  lua_concat(L, 2);
  lua_setfield(L, -2, "path");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_moonring_core);
  lua_setfield(L, -2, "moonring.core");
  lua_pop(L, 2);

  task_init(L);
  request_open(L);
  body_open(L);
  stream_open(L);
  timer_open(L);
  channel_open(L);
  spawn_open(L);
  promise_open(L);
  thread_open(L);
  socket_open(L);
  resparse_open(L);
  file_open(L);
  coro_open(L);

  /* serve(app) → the function each request's main task runs with its
   * handle: the app is its upvalue, one registry read per request. A
   * reload puts a new one in the same slot. */
  lua_settop(L, 0);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "moonring.serve");
  lua_call(L, 1, 1);                       /* 1: serve */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "moonring.app");
  lua_call(L, 1, 1);                       /* 2: moonring.app */
  reload_bind(L, 1, 2);
  lua_pushvalue(L, 1);
  lua_getfield(L, 2, "load");
  lua_pushstring(L, s->cfg.app);
  lua_call(L, 1, 1);
  lua_call(L, 1, 1);
  s->serve_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_settop(L, 0);
  return 0;
}

/* The server has drained: tasks still running stop at their next wait. */
static void stop_tasks(void) {
  reload_stop();
  socket_stop_all();
  spawn_cancel_all();
  thread_stop_all();
  task_run();
}

int mr_lua_init(mr_server *s, const char *lua_dir, char *err, size_t errlen) {
  lua_State *L = lua_newstate(mr_lua_alloc, NULL);
  if (!L) {
    snprintf(err, errlen, "cannot create a Lua state");
    return -1;
  }
  s->L = L;
  lua_atpanic(L, panic);
  *(void **)lua_getextraspace(L) = NULL;   /* coroutines copy it: NULL = the user's */
  luaL_openlibs(L);
  lua_gc(L, LUA_GCGEN, 0, 0);

  s->on_stopped = stop_tasks;
  lua_pushcfunction(L, load_all);
  lua_pushstring(L, lua_dir);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    snprintf(err, errlen, "%s", luaL_tolstring(L, -1, NULL));
    lua_settop(L, 0);
    return -1;
  }
  return 0;
}

static void close_walk_cb(uv_handle_t *h, void *arg) {
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* Drained: every connection is closed. Frees the rest (the Lua state, the
 * loop's last handles, the pools) so leak checkers see a clean exit. */
void mr_teardown(void) {
  socket_stop_all();
  lua_close(mr_srv.L);
  uv_walk(mr_srv.loop, close_walk_cb, NULL);
  uv_run(mr_srv.loop, UV_RUN_DEFAULT);
  uv_loop_close(mr_srv.loop);
  parser_pool_free();
  head_free();
  free(mr_srv.readbuf);
  mr_lua_alloc_release();
  request_pool_free();
  spawn_pool_free();
  task_free_all();
  thread_close_all();
  socket_free_all();
  log_flush();
}
