#define _GNU_SOURCE /* O_PATH */
/* file.c — the file body kind (DESIGN 4.3): `moonring.file(path [, {offset,
 * length}])` opens a regular file and returns a userdata a response may
 * carry as its body; the bytes go from the page cache to the socket with
 * sendfile(2), never through Lua strings. `core.dir(root)` opens a root
 * for moonring.static, whose `dir:open(rel)` never resolves outside it
 * (openat2 RESOLVE_BENEATH: `..` and symlinks leading out fail).
 *
 * Ownership: an mr_file owns its descriptor until the response that
 * carries it has sent it (or found nothing to send), `f:close()`, or the
 * garbage collector — whichever comes first; fd is then -1 and the body
 * cannot be sent again. An mr_dir owns its O_PATH descriptor the same way.
 *
 * Sending (response.c calls file_send_now, then serve drives file_pump in
 * the request's task when the socket could not take it all): sendfile
 * straight to the socket while nothing else is queued; when the socket is
 * full, one chunk is read and queued instead, so libuv tells the task when
 * the client has taken it (the drainers wait, as streamed bodies do). */
#include "request.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define FILE_MT "moonring.file"
#define DIR_MT "moonring.dir"
#define FILE_CHUNK (64 * MR_KIB)       /* read and queued when sendfile must wait */
#define SENDFILE_MAX (1024 * MR_KIB)   /* per call: a huge file does not hold the loop */

struct mr_file {
  int fd;                       /* -1: sent or closed */
  int64_t off;                  /* next byte to send */
  int64_t len;                  /* bytes left to send */
  int64_t size;                 /* the file's size when opened */
  int64_t mtime;                /* its modification time, seconds */
};

typedef struct mr_dir {
  int fd;                       /* O_PATH | O_DIRECTORY; -1: closed */
} mr_dir;

static const void *file_mt, *dir_mt;           /* compared by address */

mr_file *file_test(lua_State *L, int idx) {
  void *p = lua_touserdata(L, idx);
  if (!p || !lua_getmetatable(L, idx)) return NULL;
  int ok = lua_topointer(L, -1) == file_mt;
  lua_pop(L, 1);
  return ok ? p : NULL;
}

static mr_file *check_file(lua_State *L) { return check_udata(L, 1, file_mt, FILE_MT); }

void file_close(mr_file *f) {
  if (f->fd >= 0) close(f->fd);
  f->fd = -1;
}

int64_t file_body_length(const mr_file *f) { return f->fd < 0 ? -1 : f->len; }

static int fail_errno(lua_State *L, const char *what, int err) {
  lua_pushnil(L);
  lua_pushfstring(L, "%s: %s", what, strerror(err));
  return 2;
}

/* The file open at fd (ours now) as a body, or nil, message ("...: is a
 * directory" with "directory" as a third value, for static's index). */
static int push_file(lua_State *L, int fd, const char *what) {
  struct stat st;
  if (fstat(fd, &st) < 0) {
    int err = errno;
    close(fd);
    return fail_errno(L, what, err);
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    lua_pushnil(L);
    if (S_ISDIR(st.st_mode)) {
      lua_pushfstring(L, "%s: is a directory", what);
      lua_pushliteral(L, "directory");
      return 3;
    }
    lua_pushfstring(L, "%s: not a regular file", what);
    return 2;
  }
  mr_file *f = lua_newuserdatauv(L, sizeof *f, 0);
  *f = (mr_file){.fd = fd, .off = 0, .len = st.st_size, .size = st.st_size,
                 .mtime = (int64_t)st.st_mtime};
  luaL_setmetatable(L, FILE_MT);
  return 1;
}

/* f narrowed to [offset, offset + length) of the file; false when that is
 * not inside it. */
static int narrow(mr_file *f, lua_Integer offset, lua_Integer length) {
  if (offset < 0 || offset > f->size) return 0;
  if (length < 0) length = f->size - offset;
  if (length > f->size - offset) return 0;
  f->off = offset;
  f->len = length;
  return 1;
}

static lua_Integer opt_field(lua_State *L, int t, const char *k, lua_Integer dflt) {
  lua_getfield(L, t, k);
  lua_Integer v = dflt;
  if (!lua_isnil(L, -1)) {
    int ok;
    v = lua_tointegerx(L, -1, &ok);
    if (!ok || v < 0) luaL_error(L, "moonring.file: %s must be an integer >= 0", k);
  }
  lua_pop(L, 1);
  return v;
}

/* file(path [, { offset =, length = }]) → f, or nil, message. */
static int l_file(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lua_Integer offset = 0, length = -1;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    offset = opt_field(L, 2, "offset", 0);
    length = opt_field(L, 2, "length", -1);
  }
  int fd;
  do fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK); while (fd < 0 && errno == EINTR);
  if (fd < 0) return fail_errno(L, path, errno);
  int n = push_file(L, fd, path);
  if (n != 1) return n;
  mr_file *f = lua_touserdata(L, -1);
  if (!narrow(f, offset, length)) {
    file_close(f);
    lua_pushnil(L);
    lua_pushfstring(L, "%s: range outside the file (%I bytes)", path, (lua_Integer)f->size);
    return 2;
  }
  return 1;
}

/* f:range(offset [, length]) → f narrowed (length: to the end when nil),
 * or nil, message when the range is not inside the file. */
static int file_range(lua_State *L) {
  mr_file *f = check_file(L);
  lua_Integer offset = luaL_checkinteger(L, 2), length = luaL_optinteger(L, 3, -1);
  if (f->fd < 0) return luaL_error(L, "moonring.file: range of a closed file");
  if (!narrow(f, offset, length)) {
    lua_pushnil(L);
    lua_pushliteral(L, "range outside the file");
    return 2;
  }
  lua_settop(L, 1);
  return 1;
}

/* f:stat() → size, mtime (seconds): of the file when it was opened. */
static int file_stat(lua_State *L) {
  mr_file *f = check_file(L);
  lua_pushinteger(L, (lua_Integer)f->size);
  lua_pushinteger(L, (lua_Integer)f->mtime);
  return 2;
}

/* f:length() → the bytes it will send. */
static int file_length(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_file(L)->len);
  return 1;
}

static int file_gc(lua_State *L) {
  file_close(check_file(L));
  return 0;
}

static int file_tostring(lua_State *L) {
  mr_file *f = check_file(L);
  lua_pushfstring(L, "moonring.file (%s%I bytes)", f->fd < 0 ? "closed, " : "", (lua_Integer)f->len);
  return 1;
}

/* openat2 with RESOLVE_BENEATH: nothing outside dirfd is ever opened. */
static int open_beneath(int dirfd, const char *rel) {
  struct open_how how = {
    .flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK,
    .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
  };
  long fd;
  do fd = syscall(SYS_openat2, dirfd, rel, &how, sizeof how); while (fd < 0 && errno == EINTR);
  return (int)fd;
}

/* dir(root) → a root to open files beneath, or nil, message. */
static int l_dir(lua_State *L) {
  const char *root = luaL_checkstring(L, 1);
  int fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return fail_errno(L, root, errno);
  if (open_beneath(fd, ".") < 0 && errno == ENOSYS) {
    close(fd);
    lua_pushnil(L);
    lua_pushliteral(L, "moonring.static needs openat2 (Linux 5.6 or later)");
    return 2;
  }
  mr_dir *d = lua_newuserdatauv(L, sizeof *d, 0);
  d->fd = fd;
  luaL_setmetatable(L, DIR_MT);
  return 1;
}

/* dir:open(rel) → f, or nil, message [, "directory"]: rel is resolved
 * beneath the root (an escape by "..", an absolute path or a symlink is
 * "outside the root"). */
static int dir_open(lua_State *L) {
  mr_dir *d = check_udata(L, 1, dir_mt, DIR_MT);
  size_t len;
  const char *rel = luaL_checklstring(L, 2, &len);
  if (d->fd < 0) return luaL_error(L, "moonring.dir: closed");
  if (strlen(rel) != len) {
    lua_pushnil(L);
    lua_pushliteral(L, "NUL in the path");
    return 2;
  }
  int fd = open_beneath(d->fd, len ? rel : ".");
  if (fd < 0) {
    if (errno == EXDEV || errno == ELOOP) {
      lua_pushnil(L);
      lua_pushfstring(L, "%s: outside the root", rel);
      return 2;
    }
    return fail_errno(L, rel, errno);
  }
  return push_file(L, fd, rel);
}

static int dir_gc(lua_State *L) {
  mr_dir *d = check_udata(L, 1, dir_mt, DIR_MT);
  if (d->fd >= 0) close(d->fd);
  d->fd = -1;
  return 0;
}

/* Sends what the socket takes now: 1 when all of f is sent (f closed),
 * 0 when the socket is full, 2 when this turn wrote enough (others get
 * theirs), -1 when the client is gone (f closed). */
int file_send_now(mr_exchange *ex, mr_file *f) {
  while (f->len > 0) {
    size_t want = f->len > SENDFILE_MAX ? SENDFILE_MAX : (size_t)f->len;
    ssize_t n = http_sendfile(ex, f->fd, &f->off, want);
    if (n == UV_EAGAIN) return 0;
    if (n <= 0) {                            /* an error, or the file shrank under us */
      file_close(f);
      if (ex->http) http_abort(ex);
      return -1;
    }
    f->len -= n;
    ex->bytes_out += (uint64_t)n;
    task_note_output((size_t)n);
    if (f->len > 0 && task_output_heavy()) return 2;
  }
  file_close(f);
  return 1;
}

/* The socket is full and nothing is queued: one chunk read and queued, so
 * the drain that wakes the task comes from libuv. -1 when reading failed. */
static int queue_chunk(mr_exchange *ex, mr_file *f) {
  size_t want = f->len > FILE_CHUNK ? FILE_CHUNK : (size_t)f->len;
  char *buf = malloc(want);
  if (!buf) return -1;
  ssize_t n;
  do n = pread(f->fd, buf, want, f->off); while (n < 0 && errno == EINTR);
  if (n <= 0) {
    free(buf);
    return -1;
  }
  uv_buf_t b = uv_buf_init(buf, (unsigned)n);
  http_write(ex, &b, 1);                     /* copies what the socket does not take */
  free(buf);
  f->off += n;
  f->len -= n;
  ex->bytes_out += (uint64_t)n;
  task_note_output((size_t)n);
  return 0;
}

static int pump_k(lua_State *L, int status, lua_KContext ctx);

/* pump(f, out): the rest of a file body, in the request's task (serve
 * calls it as a body method, then finishes the response). A response that
 * cannot be completed is cut (http_abort), never left short. */
static int file_pump(lua_State *L) {
  mr_file *f = check_file(L);
  mr_request *r = request_from_handle(stream_out_handle(L, 2));
  for (;;) {
    if (!r || !r->ex.http || f->fd < 0) break;
    mr_exchange *ex = &r->ex;
    int rc = file_send_now(ex, f);
    if (rc == 1 || rc == -1) return 0;
    mr_task *t = task_current(L);
    if (!t || !task_can_yield(L) || (t->flags & TF_CANCELLED)) {
      http_abort(ex);
      break;
    }
    lua_KContext ctx = (lua_KContext)request_handle(r);
    if (rc == 2) return task_yield_turn(L, t, pump_k, ctx);
    /* a write in flight: its completion wakes the task */
    if (http_queued(ex)) return stream_park_drain(L, r, pump_k, ctx);
    /* nothing in flight and the socket is full: a chunk goes through
     * libuv's queue (or, if the socket took it after all, on we go) */
    if (queue_chunk(ex, f) < 0) {
      if (ex->http) http_abort(ex);
      break;
    }
  }
  file_close(f);
  return 0;
}

static int pump_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  if (task_woke_cancelled(L)) {
    mr_request *r = request_from_handle(stream_out_handle(L, 2));
    file_close(check_file(L));
    if (r && r->ex.http) http_abort(&r->ex);
    return 0;
  }
  return file_pump(L);
}

void file_push_pump(lua_State *L) { lua_pushcfunction(L, file_pump); }

static const luaL_Reg file_methods[] = {
  {"range", file_range},
  {"stat", file_stat},
  {"length", file_length},
  {"close", file_gc},
  {NULL, NULL},
};

static const luaL_Reg dir_methods[] = {
  {"open", dir_open},
  {"close", dir_gc},
  {NULL, NULL},
};

const luaL_Reg file_funcs[] = {
  {"file", l_file},
  {"dir", l_dir},
  {NULL, NULL},
};

static const void *new_mt(lua_State *L, const char *name, const luaL_Reg *methods,
                          lua_CFunction gc, lua_CFunction tostring) {
  luaL_newmetatable(L, name);
  const void *mt = lua_topointer(L, -1);    /* anchored in the registry */
  lua_pushcfunction(L, gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, gc);
  lua_setfield(L, -2, "__close");
  if (tostring) {
    lua_pushcfunction(L, tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  return mt;
}

void file_open(lua_State *L) {
  file_mt = new_mt(L, FILE_MT, file_methods, file_gc, file_tostring);
  dir_mt = new_mt(L, DIR_MT, dir_methods, dir_gc, NULL);
}
