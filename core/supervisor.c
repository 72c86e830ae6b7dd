/* supervisor.c — `--workers N`: one process binds the socket and runs N
 * workers of this same binary on it (DESIGN 3). The socket is bound once
 * here and inherited as the workers' fd 3 (libuv 1.44 has no
 * SO_REUSEPORT option, and forking after Lua is initialised is not safe, so
 * workers are spawned afresh). Each worker says "ready" on its fd 4 once it
 * serves; the listening line is printed when the first set is ready.
 *
 * Signals: SIGHUP is passed on to every worker (each reloads); SIGTERM and
 * SIGINT drain every worker, then the supervisor exits 0; SIGUSR2 starts a
 * new set of workers on the same socket and drains the old set only once the
 * new one is ready, so no connection is refused (the socket stays open in
 * this process throughout). A worker that dies is started again, after a
 * growing delay if it keeps dying young. Worker numbers are never reused:
 * they prefix request ids (server.c). A SIGHUP reaches a worker only once
 * it serves (before, the signal's default action would kill it).
 *
 * Owns: the listening socket, every worker record (freed once its process
 * and pipe handles have closed), the signal handles and the restart timer.
 * No Lua runs in this process. */
#include "moonring.h"
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define YOUNG_MS 1000           /* a worker dying sooner than this backs off */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 10000
#define RESTART_TIMEOUT_MS 60000 /* a new set not serving by then is given up */

enum { W_STARTING, W_READY, W_GONE };

typedef struct worker {
  uv_process_t proc;
  uv_pipe_t ready;              /* the worker's fd 4 */
  struct worker *next;
  long id;
  unsigned generation;
  int state;
  int hup_pending;              /* SIGHUP came while it was starting */
  int open_handles;             /* freed when its handles have closed */
  uint64_t started_ms;
} worker;

/* Generations: every set of workers started together has a number. The
 * serving set is kept at N workers; during a SIGUSR2 restart the newest set
 * (generation = serving + 1) starts beside it. Older sets only drain. */
static struct {
  uv_loop_t *loop;
  mr_config *cfg;
  char **argv;                  /* exe, --worker-id, N, the user's arguments */
  char id_arg[24];
  int fd;                       /* the listening socket */
  int port;
  long last_id;
  unsigned serving;             /* the set kept at N workers */
  unsigned generation;          /* the newest set */
  int stopping, printed, restarting, exit_code;
  unsigned backoff_ms;
  worker *workers;
  uv_signal_t sig_term, sig_int, sig_hup, sig_usr2;
  uv_timer_t restart_timer;     /* tops the serving set up after deaths */
  uv_timer_t restart_guard;     /* bounds a SIGUSR2 restart */
} sv;

static void handle_closed(uv_handle_t *h) {
  worker *w = h->data;
  if (--w->open_handles == 0) free(w);
}

static void unlink_worker(worker *w) {
  for (worker **link = &sv.workers; *link; link = &(*link)->next) {
    if (*link == w) {
      *link = w->next;
      return;
    }
  }
}

static unsigned count(unsigned generation, int state) {
  unsigned n = 0;
  for (worker *w = sv.workers; w; w = w->next)
    if (w->generation == generation && (state < 0 || w->state == state)) n++;
  return n;
}

/* Sends signum to the workers whose generation `pick` accepts. */
static void signal_where(int signum, int (*pick)(unsigned generation)) {
  for (worker *w = sv.workers; w; w = w->next)
    if (!pick || pick(w->generation)) uv_process_kill(&w->proc, signum);
}

static int older_than_serving(unsigned g) { return g < sv.serving; }
static int newest(unsigned g) { return g == sv.generation; }

static void close_all(void) {
  uv_close((uv_handle_t *)&sv.sig_term, NULL);
  uv_close((uv_handle_t *)&sv.sig_int, NULL);
  uv_close((uv_handle_t *)&sv.sig_hup, NULL);
  uv_close((uv_handle_t *)&sv.sig_usr2, NULL);
  uv_close((uv_handle_t *)&sv.restart_timer, NULL);
  uv_close((uv_handle_t *)&sv.restart_guard, NULL);
}

static void stop_all(int exit_code) {
  if (exit_code) sv.exit_code = exit_code;
  sv.stopping = 1;
  uv_timer_stop(&sv.restart_timer);
  uv_timer_stop(&sv.restart_guard);
  signal_where(SIGTERM, NULL);
  if (!sv.workers) close_all();
}

static int spawn_worker(unsigned generation);

static void back_off(void) {
  sv.backoff_ms = sv.backoff_ms ? sv.backoff_ms * 2 : BACKOFF_MIN_MS;
  if (sv.backoff_ms > BACKOFF_MAX_MS) sv.backoff_ms = BACKOFF_MAX_MS;
}

static void restart_cb(uv_timer_t *t) {
  unsigned have = count(sv.serving, -1), failed = 0;
  for (; !sv.stopping && have < (unsigned)sv.cfg->workers; have++)
    if (spawn_worker(sv.serving) < 0) failed++;
  if (failed) {                                 /* try again later */
    back_off();
    uv_timer_start(&sv.restart_timer, restart_cb, sv.backoff_ms, 0);
  }
}

/* Tops the serving set up after a death, later the younger it died. */
static void schedule_restart(uint64_t lived_ms) {
  if (lived_ms < YOUNG_MS) back_off();
  else sv.backoff_ms = 0;
  if (!uv_is_active((uv_handle_t *)&sv.restart_timer))
    uv_timer_start(&sv.restart_timer, restart_cb, sv.backoff_ms, 0);
}

/* The new set will not serve: stop it; the serving set goes on. */
static void abandon_restart(const char *why) {
  log_error("restart failed: %s; the previous workers keep serving", why);
  sv.restarting = 0;
  uv_timer_stop(&sv.restart_guard);
  signal_where(SIGTERM, newest);
  if (count(sv.serving, -1) < (unsigned)sv.cfg->workers) schedule_restart(YOUNG_MS);
}

static void guard_cb(uv_timer_t *t) {
  if (sv.restarting) abandon_restart("the new workers were not ready within 60 s");
}

/* Every worker of the newest set serves. */
static void all_ready(void) {
  if (!sv.printed) {
    sv.printed = 1;
    server_print_listening(sv.cfg->host, sv.port);
  }
  if (sv.restarting) {
    sv.restarting = 0;
    uv_timer_stop(&sv.restart_guard);
    sv.serving = sv.generation;
    signal_where(SIGTERM, older_than_serving);
    log_info("workers restarted: the new ones serve, the old ones drain");
  }
}

static void ready_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  worker *w = s->data;
  free(buf->base);
  if (n == 0) return;
  uv_close((uv_handle_t *)&w->ready, handle_closed);
  if (n < 0 || w->state != W_STARTING) return;   /* EOF first: it died starting */
  w->state = W_READY;
  if (w->hup_pending) uv_process_kill(&w->proc, SIGHUP);
  if (w->generation == sv.generation && !sv.stopping &&
      count(sv.generation, W_READY) == (unsigned)sv.cfg->workers)
    all_ready();
}

static void ready_alloc(uv_handle_t *h, size_t size, uv_buf_t *buf) {
  buf->base = malloc(16);
  buf->len = buf->base ? 16 : 0;
}

static void exited(uv_process_t *p, int64_t status, int term_signal) {
  worker *w = p->data;
  int was = w->state;
  w->state = W_GONE;
  unlink_worker(w);
  uv_close((uv_handle_t *)&w->proc, handle_closed);
  char how[64];
  if (term_signal) snprintf(how, sizeof how, "killed by signal %d", term_signal);
  else snprintf(how, sizeof how, "exited with status %lld", (long long)status);

  if (sv.stopping) {
    if (status != 0 || term_signal) log_warn("worker %ld (pid %d) %s", w->id, p->pid, how);
    if (!sv.workers) close_all();
    return;
  }
  if (was == W_STARTING && !sv.printed) {       /* the app does not start: give up */
    log_error("worker %ld (pid %d) %s before it was ready; stopping", w->id, p->pid, how);
    stop_all(1);
    return;
  }
  if (sv.restarting && w->generation == sv.generation) {   /* the new set fails */
    char why[128];
    snprintf(why, sizeof why, "worker %ld (pid %d) %s before the new set was ready", w->id,
             p->pid, how);
    abandon_restart(why);
    return;
  }
  if (w->generation != sv.serving) {            /* an older set, drained on purpose */
    if (status != 0 || term_signal) log_warn("worker %ld (pid %d) %s", w->id, p->pid, how);
    return;
  }
  log_warn("worker %ld (pid %d) %s; restarting", w->id, p->pid, how);
  schedule_restart(uv_now(sv.loop) - w->started_ms);
}

/* 0, or -1 when the process could not be started (logged). */
static int spawn_worker(unsigned generation) {
  worker *w = calloc(1, sizeof *w);
  if (!w) mr_oom();
  w->id = ++sv.last_id;
  w->generation = generation;
  w->started_ms = uv_now(sv.loop);
  snprintf(sv.id_arg, sizeof sv.id_arg, "%ld", w->id);

  uv_pipe_init(sv.loop, &w->ready, 0);
  w->ready.data = w;
  w->proc.data = w;
  uv_stdio_container_t stdio[5] = {
    {.flags = UV_IGNORE},
    {.flags = UV_INHERIT_FD, .data.fd = 1},
    {.flags = UV_INHERIT_FD, .data.fd = 2},
    {.flags = UV_INHERIT_FD, .data.fd = sv.fd},
    {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&w->ready},
  };
  uv_process_options_t opts = {
    .exit_cb = exited,
    .file = sv.argv[0],
    .args = sv.argv,
    .stdio_count = 5,
    .stdio = stdio,
  };
  w->open_handles = 2;
  int rc = uv_spawn(sv.loop, &w->proc, &opts);
  if (rc < 0) {
    /* uv_spawn initialised the process handle even so: close both. */
    log_error("cannot start worker %ld: %s", w->id, uv_strerror(rc));
    uv_close((uv_handle_t *)&w->proc, handle_closed);
    uv_close((uv_handle_t *)&w->ready, handle_closed);
    return -1;
  }
  w->next = sv.workers;
  sv.workers = w;
  uv_read_start((uv_stream_t *)&w->ready, ready_alloc, ready_read);
  log_info("worker %ld started (pid %d)", w->id, w->proc.pid);
  return 0;
}

static void on_signal(uv_signal_t *h, int signum) {
  if (signum == SIGHUP) {
    /* A worker still loading the app would die of it: it gets it when ready. */
    for (worker *w = sv.workers; w; w = w->next) {
      if (w->state == W_READY) uv_process_kill(&w->proc, SIGHUP);
      else w->hup_pending = 1;
    }
  } else if (signum == SIGUSR2) {
    if (sv.stopping || sv.restarting || !sv.printed) {
      log_warn("SIGUSR2: a start or restart is under way; ignored");
      return;
    }
    log_info("restarting workers");
    sv.restarting = 1;
    sv.generation++;
    uv_timer_start(&sv.restart_guard, guard_cb, RESTART_TIMEOUT_MS, 0);
    for (int i = 0; i < sv.cfg->workers && sv.restarting; i++)
      if (spawn_worker(sv.generation) < 0) abandon_restart("a new worker could not be started");
  } else if (!sv.stopping) {                    /* SIGTERM, SIGINT */
    stop_all(0);
  }
}

/* Binds and listens without libuv: the workers accept, never this process. */
static int bind_socket(const mr_config *cfg) {
  struct sockaddr_storage addr;
  int v6 = strchr(cfg->host, ':') != NULL;
  int rc = v6 ? uv_ip6_addr(cfg->host, cfg->port, (struct sockaddr_in6 *)&addr)
              : uv_ip4_addr(cfg->host, cfg->port, (struct sockaddr_in *)&addr);
  if (rc < 0) {
    fprintf(stderr, "moonring: bad --host %s: %s\n", cfg->host, uv_strerror(rc));
    return -1;
  }
  int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int on = 1;
  socklen_t len = v6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
  if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) < 0 ||
      bind(fd, (struct sockaddr *)&addr, len) < 0 || listen(fd, 511) < 0) {
    fprintf(stderr, "moonring: cannot listen on %s:%d: %s\n", cfg->host, cfg->port,
            strerror(errno));
    if (fd >= 0) close(fd);
    return -1;
  }
  len = sizeof addr;
  getsockname(fd, (struct sockaddr *)&addr, &len);
  sv.port = ntohs(v6 ? ((struct sockaddr_in6 *)&addr)->sin6_port
                     : ((struct sockaddr_in *)&addr)->sin_port);
  return fd;
}

int supervisor_run(mr_config *cfg, int argc, char **argv) {
  sv.cfg = cfg;
  sv.loop = uv_default_loop();
  sv.generation = sv.serving = 1;
  if ((sv.fd = bind_socket(cfg)) < 0) return 1;

  char exe[4096];
  size_t n = sizeof exe;
  if (uv_exepath(exe, &n) < 0) {
    fprintf(stderr, "moonring: cannot find this program's path\n");
    return 1;
  }
  sv.argv = calloc((size_t)argc + 3, sizeof *sv.argv);
  if (!sv.argv) mr_oom();
  /* The worker's options first: after a "--" they would be operands. */
  sv.argv[0] = exe;
  sv.argv[1] = "--worker-id";
  sv.argv[2] = sv.id_arg;
  for (int i = 1; i < argc; i++) sv.argv[i + 2] = argv[i];
  /* Workers check that their parent is this process (not just "not 1":
   * in a container the supervisor may well be pid 1). */
  char pid[24];
  snprintf(pid, sizeof pid, "%d", (int)uv_os_getpid());
  setenv("MOONRING_SUPERVISOR_PID", pid, 1);

  uv_signal_t *sigs[] = {&sv.sig_term, &sv.sig_int, &sv.sig_hup, &sv.sig_usr2};
  int nums[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR2};
  for (int i = 0; i < 4; i++) {
    uv_signal_init(sv.loop, sigs[i]);
    int rc = uv_signal_start(sigs[i], on_signal, nums[i]);
    if (rc < 0) {
      fprintf(stderr, "moonring: cannot handle signal %d: %s\n", nums[i], uv_strerror(rc));
      return 1;
    }
  }
  uv_timer_init(sv.loop, &sv.restart_timer);
  uv_timer_init(sv.loop, &sv.restart_guard);
  for (int i = 0; i < cfg->workers && !sv.stopping; i++)
    if (spawn_worker(sv.generation) < 0) stop_all(1);

  uv_run(sv.loop, UV_RUN_DEFAULT);
  uv_loop_close(sv.loop);
  close(sv.fd);
  free(sv.argv);
  return sv.exit_code;
}
