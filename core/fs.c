/* fs.c — moonring.fs.read, write, stat and list: file calls run on libuv's
 * thread pool (uv_fs_* with callbacks) while the calling task is parked; the
 * loop keeps serving. Each call is one fs_op, malloc'd with its path and its
 * bytes, holding the uv_fs_t and a timeout timer: it is freed only once its
 * last uv_fs call has called back and its timer has closed. A call that
 * times out or whose task is cancelled is detached: a read stops at its next
 * step, a write finishes what it started, an open file is always closed, and
 * the result is dropped. Failures are nil, "path: ENAME: message". */
#include "request.h"
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_TIMEOUT_MS 30000
#define READ_CHUNK (64 * 1024)

enum { OP_READ, OP_WRITE, OP_STAT, OP_LIST };

typedef struct fs_op {
  uv_fs_t req;
  uv_timer_t timer;             /* the timeout */
  mr_task *t;                   /* the task parked on it; NULL once detached */
  int kind;
  int busy;                     /* a chain of uv_fs calls is under way */
  int timer_closed;
  uv_file fd;                   /* -1 when no file is open */
  int err;                      /* the first failure (a libuv error code), or 0 */
  char *data;                   /* read: the bytes read; write: the bytes to write */
  size_t len, cap, done;        /* done: bytes written */
  int flags, mode;              /* write: open(2) flags and mode */
  uv_stat_t st;                 /* stat: the result */
  char path[];
} fs_op;

static void op_free(fs_op *op) {
  free(op->data);
  free(op);
}

static void timer_closed_cb(uv_handle_t *h) {
  fs_op *op = h->data;
  op->timer_closed = 1;
  if (!op->busy) op_free(op);
}

/* ---- results (loop thread) -------------------------------------------- */

static const char *type_name(uint64_t mode) {
  return S_ISREG(mode) ? "file" : S_ISDIR(mode) ? "directory" : "other";
}

static const char *dirent_type(uv_dirent_type_t t) {
  switch (t) {
  case UV_DIRENT_FILE: return "file";
  case UV_DIRENT_DIR: return "directory";
  case UV_DIRENT_LINK: return "link";
  default: return "other";
  }
}

/* Protected, on the server's state: (op) → the call's results. */
static int push_results(lua_State *L) {
  fs_op *op = lua_touserdata(L, 1);
  lua_settop(L, 0);
  if (op->err) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s: %s", op->path, uv_err_name(op->err), uv_strerror(op->err));
    return 2;
  }
  switch (op->kind) {
  case OP_READ:
    lua_pushlstring(L, op->data ? op->data : "", op->len);
    return 1;
  case OP_WRITE:
    lua_pushboolean(L, 1);
    return 1;
  case OP_STAT:
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, (lua_Integer)op->st.st_size);
    lua_setfield(L, -2, "size");
    lua_pushnumber(L, (lua_Number)op->st.st_mtim.tv_sec + (lua_Number)op->st.st_mtim.tv_nsec / 1e9);
    lua_setfield(L, -2, "mtime");
    lua_pushstring(L, type_name(op->st.st_mode));
    lua_setfield(L, -2, "type");
    lua_pushinteger(L, (lua_Integer)(op->st.st_mode & 07777));
    lua_setfield(L, -2, "mode");
    return 1;
  default: {                                 /* OP_LIST: names in libuv's (sorted) order */
    lua_newtable(L);
    uv_dirent_t ent;
    lua_Integer i = 0;
    while (uv_fs_scandir_next(&op->req, &ent) != UV_EOF) {
      lua_createtable(L, 0, 2);
      lua_pushstring(L, ent.name);
      lua_setfield(L, -2, "name");
      lua_pushstring(L, dirent_type(ent.type));
      lua_setfield(L, -2, "type");
      lua_rawseti(L, -2, ++i);
    }
    return 1;
  }
  }
}

/* Ends the task's wait with the results, made on the server's state under
 * protection (a memory error becomes nil, message) and moved over. */
static void deliver(fs_op *op) {
  mr_task *t = op->t;
  op->t = NULL;
  lua_State *L = mr_srv.L;
  int top = lua_gettop(L);
  lua_pushcfunction(L, push_results);
  lua_pushlightuserdata(L, op);
  int ok = lua_pcall(L, 1, LUA_MULTRET, 0) == LUA_OK;
  int n = lua_gettop(L) - top;
  if (!ok || !lua_checkstack(t->co, 2)) {
    lua_settop(L, top);
    lua_pushnil(t->co);
    lua_pushliteral(t->co, "not enough memory");
    n = 2;
  } else {
    lua_xmove(L, t->co, n);                  /* at most 2 values */
  }
  lua_settop(L, top);
  task_wake(t, n);
}

/* The chain of uv_fs calls is over: answer the task if it still waits,
 * then free the op once its timer has closed. */
static void finish(fs_op *op) {
  if (op->t) deliver(op);
  if (op->kind == OP_LIST) uv_fs_req_cleanup(&op->req);
  op->busy = 0;
  if (op->timer_closed) op_free(op);
  else if (!uv_is_closing((uv_handle_t *)&op->timer))
    uv_close((uv_handle_t *)&op->timer, timer_closed_cb);
}

static void fail(fs_op *op, int err) {
  if (!op->err) op->err = err;
}

/* ---- the chains (callbacks on the loop thread) ------------------------ */

static void closed_cb(uv_fs_t *req) {
  fs_op *op = req->data;
  if (req->result < 0) fail(op, (int)req->result);   /* a write's late error (NFS, quota) */
  uv_fs_req_cleanup(req);
  finish(op);
}

static void close_file(fs_op *op) {
  uv_file fd = op->fd;
  op->fd = -1;
  int rc = uv_fs_close(mr_srv.loop, &op->req, fd, closed_cb);
  if (rc < 0) {
    fail(op, rc);
    finish(op);
  }
}

static void read_more(fs_op *op);

static void read_cb(uv_fs_t *req) {
  fs_op *op = req->data;
  ssize_t n = req->result;
  uv_fs_req_cleanup(req);
  if (n < 0) fail(op, (int)n);
  else op->len += (size_t)n;
  if (n <= 0) close_file(op);               /* an error, or the end of the file */
  else read_more(op);
}

static void read_more(fs_op *op) {
  if (!op->t) {                              /* nobody waits for the bytes any more */
    close_file(op);
    return;
  }
  if (op->len == op->cap) {
    size_t cap = op->cap ? op->cap * 2 : READ_CHUNK;
    char *d = cap > op->cap ? realloc(op->data, cap) : NULL;
    if (!d) {
      fail(op, UV_ENOMEM);
      close_file(op);
      return;
    }
    op->data = d;
    op->cap = cap;
  }
  uv_buf_t b = uv_buf_init(op->data + op->len, (unsigned)(op->cap - op->len > (1u << 30)
                                                          ? 1u << 30 : op->cap - op->len));
  int rc = uv_fs_read(mr_srv.loop, &op->req, op->fd, &b, 1, -1, read_cb);
  if (rc < 0) {
    fail(op, rc);
    close_file(op);
  }
}

/* The size is a hint (a file may grow; /proc files say 0): one buffer of
 * size + 1 reads a file that did not change, and the EOF, in two reads. */
static void read_stat_cb(uv_fs_t *req) {
  fs_op *op = req->data;
  uint64_t size = req->result < 0 ? 0 : req->statbuf.st_size;
  uv_fs_req_cleanup(req);
  if (size > 0 && size < (uint64_t)1 << 40) {
    op->data = malloc((size_t)size + 1);
    if (!op->data) {
      fail(op, UV_ENOMEM);
      close_file(op);
      return;
    }
    op->cap = (size_t)size + 1;
  }
  read_more(op);
}

static void write_more(fs_op *op);

static void write_cb(uv_fs_t *req) {
  fs_op *op = req->data;
  ssize_t n = req->result;
  uv_fs_req_cleanup(req);
  if (n < 0) {
    fail(op, (int)n);
    close_file(op);
    return;
  }
  op->done += (size_t)n;
  write_more(op);
}

/* A write goes on to its end even when detached: a file left half-written
 * because a client went away would be worse than a late one. */
static void write_more(fs_op *op) {
  if (op->done >= op->len) {
    close_file(op);
    return;
  }
  size_t left = op->len - op->done;
  uv_buf_t b = uv_buf_init(op->data + op->done, (unsigned)(left > (1u << 30) ? 1u << 30 : left));
  int rc = uv_fs_write(mr_srv.loop, &op->req, op->fd, &b, 1, -1, write_cb);
  if (rc < 0) {
    fail(op, rc);
    close_file(op);
  }
}

static void opened_cb(uv_fs_t *req) {
  fs_op *op = req->data;
  ssize_t fd = req->result;
  uv_fs_req_cleanup(req);
  if (fd < 0) {
    fail(op, (int)fd);
    finish(op);
    return;
  }
  op->fd = (uv_file)fd;
  if (op->kind == OP_WRITE) {
    write_more(op);
    return;
  }
  if (!op->t) {
    close_file(op);
    return;
  }
  int rc = uv_fs_fstat(mr_srv.loop, &op->req, op->fd, read_stat_cb);
  if (rc < 0) {
    fail(op, rc);
    close_file(op);
  }
}

static void stat_cb(uv_fs_t *req) {
  fs_op *op = req->data;
  if (req->result < 0) fail(op, (int)req->result);
  else op->st = req->statbuf;
  uv_fs_req_cleanup(req);
  finish(op);
}

static void list_cb(uv_fs_t *req) {
  fs_op *op = req->data;
  if (req->result < 0) fail(op, (int)req->result);
  finish(op);                                /* reads the entries, then cleans up */
}

/* First call of the chain; 0 or a libuv error (then no callback comes). */
static int start(fs_op *op) {
  uv_loop_t *loop = mr_srv.loop;
  switch (op->kind) {
  case OP_READ: return uv_fs_open(loop, &op->req, op->path, O_RDONLY | O_CLOEXEC, 0, opened_cb);
  case OP_WRITE: return uv_fs_open(loop, &op->req, op->path, op->flags, op->mode, opened_cb);
  case OP_STAT: return uv_fs_stat(loop, &op->req, op->path, stat_cb);
  default: return uv_fs_scandir(loop, &op->req, op->path, 0, list_cb);
  }
}

/* ---- timeouts and cancellation ---------------------------------------- */

static void timeout_cb(uv_timer_t *tm) {
  fs_op *op = tm->data;
  if (op->t) {
    mr_task *t = op->t;
    op->t = NULL;
    lua_pushnil(t->co);
    lua_pushliteral(t->co, "timeout");
    task_wake(t, 2);
  }
  uv_close((uv_handle_t *)tm, timer_closed_cb);
}

static void op_cancel(mr_task *t) {
  fs_op *op = t->wait_data;
  op->t = NULL;
}

/* ---- the Lua functions ------------------------------------------------ */

/* The options table at idx (absent or nil: none); its timeout in ms. */
static uint64_t check_opts(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return DEFAULT_TIMEOUT_MS;
  luaL_checktype(L, idx, LUA_TTABLE);
  uint64_t ms = DEFAULT_TIMEOUT_MS;
  if (lua_getfield(L, idx, "timeout") != LUA_TNIL) {
    int isnum;
    lua_Number sec = lua_tonumberx(L, -1, &isnum);
    if (!isnum || !(sec > 0)) luaL_argerror(L, idx, "timeout must be a number of seconds > 0");
    double d = ceil(sec * 1000.0);
    ms = d > 1e12 ? (uint64_t)1e12 : (uint64_t)d;
  }
  lua_pop(L, 1);
  return ms;
}

static int fs_k(lua_State *L, int status, lua_KContext ctx) {
  if (task_woke_cancelled(L)) return task_raise_cancelled(L);
  return lua_gettop(L);
}

/* Starts op (its fields set) for the task running L and parks it. Takes
 * op: freed here if it cannot start. */
static int run_op(lua_State *L, mr_task *t, fs_op *op, uint64_t ms) {
  op->t = t;
  op->fd = -1;
  op->req.data = op;
  int rc = start(op);
  if (rc < 0) {
    uv_fs_req_cleanup(&op->req);
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s: %s", op->path, uv_err_name(rc), uv_strerror(rc));
    op_free(op);
    return 2;
  }
  op->busy = 1;
  uv_timer_init(mr_srv.loop, &op->timer);
  op->timer.data = op;
  uv_timer_start(&op->timer, timeout_cb, ms, 0);
  lua_settop(L, 0);
  return task_park(L, t, WAIT_FS, op_cancel, op, fs_k, 0);
}

static const char *check_path(lua_State *L, size_t *n) {
  const char *path = luaL_checklstring(L, 1, n);
  luaL_argcheck(L, strlen(path) == *n, 1, "a path cannot contain a zero byte");
  return path;
}

/* The checks every function makes before it has any side effect (its own
 * arguments checked first); then a zeroed op with the path copied in. */
static fs_op *new_op(lua_State *L, const char *what, int kind, mr_task **t) {
  size_t n;
  const char *path = check_path(L, &n);
  *t = task_check(L, what);
  task_check_yieldable(L, what);
  if ((*t)->flags & TF_CANCELLED) task_raise_cancelled(L);
  fs_op *op = calloc(1, sizeof *op + n + 1);
  if (!op) luaL_error(L, "%s: out of memory", what);
  memcpy(op->path, path, n + 1);
  op->kind = kind;
  return op;
}

/* The calls that take only a path and options: fs.read, fs.stat, fs.list. */
static int path_op(lua_State *L, int kind, const char *what) {
  size_t n;
  check_path(L, &n);
  uint64_t ms = check_opts(L, 2);
  mr_task *t;
  fs_op *op = new_op(L, what, kind, &t);
  return run_op(L, t, op, ms);
}

/* fs.read(path [, { timeout }]) → the file's bytes, or nil, err */
static int l_read(lua_State *L) { return path_op(L, OP_READ, "moonring.fs.read"); }

/* fs.write(path, data [, { append = bool, mode = 0644, timeout }]) → true,
 * or nil, err. Creates the file (with `mode`, less the umask) when needed;
 * replaces its contents unless `append`. */
static int l_write(lua_State *L) {
  size_t len;
  check_path(L, &len);
  const char *data = luaL_checklstring(L, 2, &len);
  uint64_t ms = check_opts(L, 3);
  int append = 0;
  lua_Integer mode = 0644;
  if (lua_istable(L, 3)) {
    int ty = lua_getfield(L, 3, "append");
    if (ty != LUA_TNIL && ty != LUA_TBOOLEAN) luaL_argerror(L, 3, "append must be a boolean");
    append = lua_toboolean(L, -1);
    int isint;
    if (lua_getfield(L, 3, "mode") != LUA_TNIL) {
      mode = lua_tointegerx(L, -1, &isint);
      if (!isint || mode < 0 || mode > 07777)
        luaL_argerror(L, 3, "mode must be an integer from 0 to 07777 (0644 = 420)");
    }
    lua_pop(L, 2);
  }
  mr_task *t;
  fs_op *op = new_op(L, "moonring.fs.write", OP_WRITE, &t);
  if (len) {
    op->data = malloc(len);
    if (!op->data) {
      op_free(op);
      return luaL_error(L, "moonring.fs.write: out of memory");
    }
    memcpy(op->data, data, len);
  }
  op->len = op->cap = len;
  op->flags = O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC);
  op->mode = (int)mode;
  return run_op(L, t, op, ms);
}

/* fs.stat(path [, { timeout }]) → { size, mtime, type, mode }, or nil, err */
static int l_stat(lua_State *L) { return path_op(L, OP_STAT, "moonring.fs.stat"); }

/* fs.list(path [, { timeout }]) → { { name =, type = }, ... }, or nil, err */
static int l_list(lua_State *L) { return path_op(L, OP_LIST, "moonring.fs.list"); }

const luaL_Reg fs_funcs[] = {
  {"fs_read", l_read},
  {"fs_write", l_write},
  {"fs_stat", l_stat},
  {"fs_list", l_list},
  {NULL, NULL},
};
