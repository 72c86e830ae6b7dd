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
 * they prefix request ids (server.c).
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

enum { W_STARTING, W_READY, W_GONE };

typedef struct worker {
  uv_process_t proc;
  uv_pipe_t ready;              /* the worker's fd 4 */
  struct worker *next;
  long id;
  unsigned generation;
  int state;
  int open_handles;             /* freed when both handles have closed */
  uint64_t started_ms;
} worker;

static struct {
  uv_loop_t *loop;
  mr_config *cfg;
  char **argv;                  /* exe, the user's arguments, --worker-id, N */
  char id_arg[24];
  int fd;                       /* the listening socket */
  int port;
  long last_id;
  unsigned generation;          /* the set that should be serving */
  int stopping, printed, restarting, exit_code;
  unsigned backoff_ms;
  worker *workers;
  uv_signal_t sig_term, sig_int, sig_hup, sig_usr2;
  uv_timer_t restart_timer;
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

static void signal_all(int signum, int older_only) {
  for (worker *w = sv.workers; w; w = w->next)
    if (w->state != W_GONE && (!older_only || w->generation < sv.generation))
      uv_process_kill(&w->proc, signum);
}

static void close_all(void) {
  uv_close((uv_handle_t *)&sv.sig_term, NULL);
  uv_close((uv_handle_t *)&sv.sig_int, NULL);
  uv_close((uv_handle_t *)&sv.sig_hup, NULL);
  uv_close((uv_handle_t *)&sv.sig_usr2, NULL);
  uv_close((uv_handle_t *)&sv.restart_timer, NULL);
}

static void spawn_worker(unsigned generation);

/* The set of the given generation is complete and serving. */
static void all_ready(void) {
  if (!sv.printed) {
    sv.printed = 1;
    server_print_listening(sv.cfg->host, sv.port);
  }
  if (sv.restarting) {
    sv.restarting = 0;
    signal_all(SIGTERM, 1);
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
  if (w->generation == sv.generation && !sv.stopping &&
      count(sv.generation, W_READY) == (unsigned)sv.cfg->workers)
    all_ready();
}

static void ready_alloc(uv_handle_t *h, size_t size, uv_buf_t *buf) {
  buf->base = malloc(16);
  buf->len = buf->base ? 16 : 0;
}

static void restart_cb(uv_timer_t *t) {
  while (!sv.stopping && count(sv.generation, -1) < (unsigned)sv.cfg->workers)
    spawn_worker(sv.generation);
}

static void schedule_restart(uint64_t lived_ms) {
  if (lived_ms < YOUNG_MS) {
    sv.backoff_ms = sv.backoff_ms ? sv.backoff_ms * 2 : BACKOFF_MIN_MS;
    if (sv.backoff_ms > BACKOFF_MAX_MS) sv.backoff_ms = BACKOFF_MAX_MS;
  } else {
    sv.backoff_ms = 0;
  }
  if (!uv_is_active((uv_handle_t *)&sv.restart_timer))
    uv_timer_start(&sv.restart_timer, restart_cb, sv.backoff_ms, 0);
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
  if (w->generation != sv.generation) {        /* an old set, drained on purpose */
    if (status != 0 || term_signal) log_warn("worker %ld (pid %d) %s", w->id, p->pid, how);
    return;
  }
  if (was == W_STARTING && !sv.printed) {       /* the app does not start: give up */
    log_error("worker %ld (pid %d) %s before it was ready; stopping", w->id, p->pid, how);
    sv.exit_code = 1;
    sv.stopping = 1;
    signal_all(SIGTERM, 0);
    if (!sv.workers) close_all();
    return;
  }
  if (was == W_STARTING && sv.restarting) {     /* the new set does not start: keep the old */
    log_error("restart failed: worker %ld (pid %d) %s before it was ready; the previous "
              "workers keep serving", w->id, p->pid, how);
    sv.restarting = 0;
    /* The failed set becomes the older one and is drained; the previous
     * set is current again (generations only grow). */
    unsigned failed = sv.generation++;
    for (worker *x = sv.workers; x; x = x->next) {
      if (x->generation == failed) uv_process_kill(&x->proc, SIGTERM);
      else if (x->generation == failed - 1) x->generation = sv.generation;
    }
    return;
  }
  log_warn("worker %ld (pid %d) %s; restarting", w->id, p->pid, how);
  schedule_restart(uv_now(sv.loop) - w->started_ms);
}

static void spawn_worker(unsigned generation) {
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
  int rc = uv_spawn(sv.loop, &w->proc, &opts);
  if (rc < 0) {
    log_error("cannot start worker %ld: %s", w->id, uv_strerror(rc));
    w->open_handles = 1;
    uv_close((uv_handle_t *)&w->ready, handle_closed);
    schedule_restart(0);
    return;
  }
  w->open_handles = 2;
  w->next = sv.workers;
  sv.workers = w;
  uv_read_start((uv_stream_t *)&w->ready, ready_alloc, ready_read);
  log_info("worker %ld started (pid %d)", w->id, w->proc.pid);
}

static void on_signal(uv_signal_t *h, int signum) {
  if (signum == SIGHUP) {
    signal_all(SIGHUP, 0);
  } else if (signum == SIGUSR2) {
    if (sv.stopping || sv.restarting || !sv.printed) {
      log_warn("SIGUSR2: a start or restart is under way; ignored");
      return;
    }
    log_info("restarting workers");
    sv.restarting = 1;
    sv.generation++;
    for (int i = 0; i < sv.cfg->workers; i++) spawn_worker(sv.generation);
  } else if (!sv.stopping) {                    /* SIGTERM, SIGINT */
    sv.stopping = 1;
    uv_timer_stop(&sv.restart_timer);
    signal_all(SIGTERM, 0);
    if (!sv.workers) close_all();
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
  sv.generation = 1;
  if ((sv.fd = bind_socket(cfg)) < 0) return 1;

  char exe[4096];
  size_t n = sizeof exe;
  if (uv_exepath(exe, &n) < 0) {
    fprintf(stderr, "moonring: cannot find this program's path\n");
    return 1;
  }
  sv.argv = calloc((size_t)argc + 3, sizeof *sv.argv);
  if (!sv.argv) mr_oom();
  sv.argv[0] = exe;
  for (int i = 1; i < argc; i++) sv.argv[i] = argv[i];
  sv.argv[argc] = "--worker-id";
  sv.argv[argc + 1] = sv.id_arg;

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
  for (int i = 0; i < cfg->workers; i++) spawn_worker(sv.generation);

  uv_run(sv.loop, UV_RUN_DEFAULT);
  uv_loop_close(sv.loop);
  close(sv.fd);
  free(sv.argv);
  return sv.exit_code;
}
