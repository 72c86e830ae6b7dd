/* reload.c — the app reloaded in place (DESIGN 4.7): on SIGHUP in any mode,
 * and with --watch when a file under APP changes. Linux watches are not
 * recursive, so there is one libuv fs-event watch per directory under APP,
 * brought up to date after every reload (new directories gain a watch,
 * removed ones lose theirs); the burst of events one save makes is debounced
 * into one reload.
 *
 * The Lua half, moonring.app's reload(), loads the new code as one
 * transaction and answers the new handler or nil (keep the running one).
 * Here the winner is bound with serve() and put in the registry slot each
 * request's main task starts from: requests already running keep the
 * closure they started with, so they finish on their own code.
 *
 * Owns: the watches, the debounce timer, the SIGHUP handle and the two
 * registry refs below. None of them keeps the loop alive. */
#include "request.h"
#include <lauxlib.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEBOUNCE_MS 25
#define DEBOUNCE_MAX_MS 250       /* a steady stream of events still reloads this often */
#define MAX_DEPTH 32

typedef struct watch {
  uv_fs_event_t ev;
  struct watch *next;
  int seen;                     /* found by the latest scan */
  int stale;                    /* its parent saw it go or come: watch it afresh */
  uint64_t dev, ino;            /* the directory watched (a path may get a new one) */
  char path[];
} watch;

static struct {
  mr_server *s;
  int serve_fn, reload_fn;      /* registry refs: serve(app) and app.reload */
  int finish_fn;                /* registry ref: app.finish_reload */
  uint64_t first_event_ms;      /* the first event of the burst being debounced */
  int started;
  int recursive;                /* APP is a directory: watch the tree */
  watch *watches;
  uv_timer_t debounce;
  uv_signal_t hup;
  char root[PATH_MAX];
} rl = {.serve_fn = LUA_NOREF, .reload_fn = LUA_NOREF};

void reload_bind(lua_State *L, int serve_idx, int app_idx) {
  lua_pushvalue(L, serve_idx);
  rl.serve_fn = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, app_idx, "reload");
  rl.reload_fn = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, app_idx, "finish_reload");
  rl.finish_fn = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* reload() → handler or nil; the new serve goes in before the replaced
 * code's on_reload hooks run (finish_reload), so nothing a hook does can
 * leave the routes switched and the handler not. */
static int reload_protected(lua_State *L) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, rl.reload_fn);
  lua_call(L, 0, 1);
  if (!lua_isnil(L, -1)) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, rl.serve_fn);
    lua_insert(L, -2);
    lua_call(L, 1, 1);
    lua_rawseti(L, LUA_REGISTRYINDEX, rl.s->serve_ref);
    thread_reloaded();          /* thread states made from now on load the new code */
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, rl.finish_fn);
  lua_call(L, 0, 0);
  return 0;
}

static void sync_watches(void);

/* Runs outside any task, as the app's first load did, but under the CPU
 * budget: a top-level loop that never ends fails the reload ("cpu budget
 * exceeded") instead of freezing the worker. */
static void reload_now(void) {
  if (rl.s->draining) return;
  uv_timer_stop(&rl.debounce);
  /* Watches first: a file written into a new directory while this reload
   * reads the tree still brings another reload. */
  if (rl.watches) sync_watches();
  lua_State *L = rl.s->L;
  lua_pushcfunction(L, reload_protected);
  budget_enter(NULL, L, 0);
  int rc = lua_pcall(L, 0, 0, 0);
  budget_leave();
  if (rc != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    log_error("reload: %s", msg ? msg : "(error object is not a string)");
    lua_pop(L, 1);
  }
  task_run();                   /* tasks the new code's top level started */
}

static void debounce_cb(uv_timer_t *t) { reload_now(); }

static void hup_cb(uv_signal_t *h, int signum) { reload_now(); }

static watch *find_watch(const char *path) {
  for (watch *w = rl.watches; w; w = w->next)
    if (strcmp(w->path, path) == 0) return w;
  return NULL;
}

/* What can change the app: a .lua file, or a directory coming or going.
 * Hidden names (an editor's temporary files) and anything else written
 * under APP (logs, uploads, databases) do not reload it. */
static int relevant(const watch *w, const char *name) {
  if (!name) return 1;
  size_t n = strlen(name);
  if (n == 0 || name[0] == '.') return 0;
  if (n > 4 && strcmp(name + n - 4, ".lua") == 0) return 1;
  char path[PATH_MAX];
  if ((size_t)snprintf(path, sizeof path, "%s/%s", w->path, name) >= sizeof path) return 0;
  /* A watched directory that went (and maybe came back: the new one can
   * reuse the old inode number) is watched afresh at the next scan. */
  watch *sub = find_watch(path);
  if (sub) {
    sub->stale = 1;
    return 1;
  }
  uv_fs_t req;
  int rc = uv_fs_stat(NULL, &req, path, NULL);
  int dir = rc == 0 && S_ISDIR(req.statbuf.st_mode);
  uv_fs_req_cleanup(&req);
  return dir;
}

static void event_cb(uv_fs_event_t *ev, const char *filename, int events, int status) {
  watch *w = ev->data;
  if (status < 0) {
    log_warn("watching %s: %s", w->path, uv_strerror(status));
    return;
  }
  if (!relevant(w, filename)) return;
  /* Debounced: each event waits a little longer, but a burst that never
   * pauses still reloads every DEBOUNCE_MAX_MS. */
  uint64_t now = uv_now(rl.s->loop);
  if (!uv_is_active((uv_handle_t *)&rl.debounce)) rl.first_event_ms = now;
  else if (now - rl.first_event_ms >= DEBOUNCE_MAX_MS) return;
  uv_timer_start(&rl.debounce, debounce_cb, DEBOUNCE_MS, 0);
}

static void watch_free(uv_handle_t *h) { free(h->data); }

static void watch_add(const char *path, uint64_t dev, uint64_t ino) {
  size_t n = strlen(path) + 1;
  watch *w = malloc(sizeof *w + n);
  if (!w) mr_oom();
  memcpy(w->path, path, n);
  w->seen = 1;
  w->stale = 0;
  w->dev = dev;
  w->ino = ino;
  uv_fs_event_init(rl.s->loop, &w->ev);
  w->ev.data = w;
  int rc = uv_fs_event_start(&w->ev, event_cb, w->path, 0);
  if (rc < 0) {
    log_warn("cannot watch %s: %s", path, uv_strerror(rc));
    uv_close((uv_handle_t *)&w->ev, watch_free);
    return;
  }
  uv_unref((uv_handle_t *)&w->ev);
  w->next = rl.watches;
  rl.watches = w;
}

/* A directory's watch follows its inode: one removed and made again, or
 * another renamed into its place, gets a new watch (the old one is dropped
 * by sync_watches, as it is not seen). A removed directory's inode number
 * may come back at once, hence also `stale`. */
static void scan(const char *dir, int depth) {
  uv_fs_t req;
  if (uv_fs_stat(NULL, &req, dir, NULL) < 0) {
    uv_fs_req_cleanup(&req);
    return;
  }
  uint64_t dev = req.statbuf.st_dev, ino = req.statbuf.st_ino;
  uv_fs_req_cleanup(&req);
  watch *w = find_watch(dir);
  if (w && !w->stale && w->dev == dev && w->ino == ino) w->seen = 1;
  else watch_add(dir, dev, ino);
  if (!rl.recursive || depth >= MAX_DEPTH) return;

  if (uv_fs_scandir(NULL, &req, dir, 0, NULL) < 0) {
    uv_fs_req_cleanup(&req);
    return;
  }
  uv_dirent_t ent;
  /* Directories only, and not through symlinks (no loops, nothing outside APP). */
  while (uv_fs_scandir_next(&req, &ent) != UV_EOF) {
    if (ent.type != UV_DIRENT_DIR || ent.name[0] == '.') continue;
    char sub[PATH_MAX];
    if ((size_t)snprintf(sub, sizeof sub, "%s/%s", dir, ent.name) >= sizeof sub) continue;
    scan(sub, depth + 1);
  }
  uv_fs_req_cleanup(&req);
}

/* Every directory under APP has a watch, and no removed one keeps its own.
 * (watch_add puts new records first, marked seen, so a path that now has a
 * new inode keeps the new record and loses the old.) */
static void sync_watches(void) {
  for (watch *w = rl.watches; w; w = w->next) w->seen = 0;
  scan(rl.root, 0);
  watch **link = &rl.watches;
  while (*link) {
    watch *w = *link;
    if (w->seen) {
      link = &w->next;
      continue;
    }
    *link = w->next;
    uv_close((uv_handle_t *)&w->ev, watch_free);
  }
}

int reload_start(mr_server *s) {
  rl.s = s;
  uv_timer_init(s->loop, &rl.debounce);
  uv_unref((uv_handle_t *)&rl.debounce);
  uv_signal_init(s->loop, &rl.hup);
  int rc = uv_signal_start(&rl.hup, hup_cb, SIGHUP);
  if (rc < 0) {
    fprintf(stderr, "moonring: cannot handle SIGHUP: %s\n", uv_strerror(rc));
    return -1;
  }
  uv_unref((uv_handle_t *)&rl.hup);
  rl.started = 1;
  if (!s->cfg.watch) return 0;

  uv_fs_t req;
  rc = uv_fs_stat(NULL, &req, s->cfg.app, NULL);
  rl.recursive = rc == 0 && S_ISDIR(req.statbuf.st_mode);
  uv_fs_req_cleanup(&req);
  size_t n = strlen(s->cfg.app);
  while (n > 1 && s->cfg.app[n - 1] == '/') n--;
  if (rl.recursive) {
    snprintf(rl.root, sizeof rl.root, "%.*s", (int)n, s->cfg.app);
  } else {
    const char *slash = NULL;
    for (const char *c = s->cfg.app; c < s->cfg.app + n; c++)
      if (*c == '/') slash = c;
    if (slash) snprintf(rl.root, sizeof rl.root, "%.*s", (int)(slash - s->cfg.app), s->cfg.app);
    else snprintf(rl.root, sizeof rl.root, ".");
    if (!rl.root[0]) snprintf(rl.root, sizeof rl.root, "/");

  }
  scan(rl.root, 0);
  return 0;
}

static void close_noop(uv_handle_t *h) { (void)h; }

/* The server has drained: no more reloads. */
void reload_stop(void) {
  if (!rl.started) return;
  rl.started = 0;
  while (rl.watches) {
    watch *w = rl.watches;
    rl.watches = w->next;
    uv_close((uv_handle_t *)&w->ev, watch_free);
  }
  uv_close((uv_handle_t *)&rl.debounce, close_noop);
  uv_close((uv_handle_t *)&rl.hup, close_noop);
  signal(SIGHUP, SIG_IGN);      /* libuv put back the default, which would kill */
}
