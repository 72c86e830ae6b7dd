/* main.c — the command line: parses options into the config (every limit has
 * its default here), finds the Lua library, loads the app, binds, runs the
 * loop until a drain finishes, and frees what is left. */
#include "request.h"
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

static const char usage_text[] =
  "usage: moonring [options] [APP]\n"
  "\n"
  "Serves APP: a directory of Lua route files or one Lua file returning a\n"
  "handler (default: handlers/).\n"
  "\n"
  "options:\n"
  "  --host HOST              address to bind (default 127.0.0.1)\n"
  "  --port N                 port to bind, 0 for any free port (default 8080)\n"
  "  --dev                    development mode: error responses carry the\n"
  "                           message and traceback; turns on --watch\n"
  "  --watch                  reload the app when a file under APP changes\n"
  "                           (SIGHUP reloads in any mode)\n"
  "  --workers N|auto         N worker processes under a supervisor sharing\n"
  "                           one socket (auto: one per CPU; default: one\n"
  "                           process, no supervisor)\n"
  "  --access-log PATH        access log file, '-' for stderr (default), 'off'\n"
  "  --max-header-size BYTES  request line + headers (default 16k; over: 431/414)\n"
  "  --max-body-size BYTES    request body (default 1m; over: 413)\n"
  "  --header-timeout SEC     time to receive a request head (default 10; 408)\n"
  "  --idle-timeout SEC       keep-alive connection without a request (default 60)\n"
  "  --request-timeout SEC    time for a response to start (default 60; 504)\n"
  "  --max-connections N      open connections (default 16384; over: 503)\n"
  "  --max-inflight N         requests being handled at once (default 10000;\n"
  "                           over: 503 with Retry-After)\n"
  "  --write-buffer BYTES     output queued per connection before a streaming\n"
  "                           writer waits (default 64k)\n"
  "  --cpu-budget SEC         Lua run without waiting before a task is stopped\n"
  "                           with \"cpu budget exceeded\" (default 1; 0: none)\n"
  "  --threads N              moonring.run_in_thread jobs running at once\n"
  "                           (default 4; more wait, up to 1024)\n"
  "  --grace SEC              SIGTERM/SIGINT drain bound (default 10)\n"
  "  --help                   this text\n"
  "  --version                the version\n"
  "\n"
  "BYTES accept k, m and g suffixes (64k, 1m); SEC accepts fractions (0.5).\n";

static void usage(FILE *out) { fputs(usage_text, out); }

static int parse_bytes(const char *s, size_t *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || errno || v < 0) return -1;
  if (*end == 'k' || *end == 'K') v *= 1024, end++;
  else if (*end == 'm' || *end == 'M') v *= 1024 * 1024, end++;
  else if (*end == 'g' || *end == 'G') v *= 1024.0 * 1024 * 1024, end++;
  if (*end || v > (double)SIZE_MAX / 2) return -1;
  *out = (size_t)v;
  return 0;
}

/* Seconds as milliseconds; 0 only when `zero_ok` (for "no limit"). */
static int parse_seconds(const char *s, uint64_t *ms, int zero_ok) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || *end || errno || v < 0 || (v == 0 && !zero_ok) || v > 1e9) return -1;
  *ms = (uint64_t)(v * 1000.0 + 0.5);
  if (*ms == 0 && v > 0) *ms = 1;
  return 0;
}

static int parse_int(const char *s, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (end == s || *end || errno || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

static int exists(const char *dir, const char *file) {
  char path[PATH_MAX * 2];
  snprintf(path, sizeof path, "%s/%s", dir, file);
  return access(path, R_OK) == 0;
}

/* The Lua library next to the binary (build/ in a checkout, or an installed
 * prefix), else where the build said it would be. */
static const char *find_lua_dir(char *out, size_t len) {
  const char *env = getenv("MOONRING_LUA_DIR");
  if (env && *env) return env;
  char exe[PATH_MAX];
  size_t n = sizeof exe;
  if (uv_exepath(exe, &n) == 0) {
    char *dir = dirname(exe);
    const char *rel[] = {"../lua", "../share/moonring/lua", "../../lua"};
    for (size_t i = 0; i < sizeof rel / sizeof *rel; i++) {
      char candidate[PATH_MAX + 32];
      snprintf(candidate, sizeof candidate, "%s/%s", dir, rel[i]);
      if (exists(candidate, "moonring/serve.lua") && realpath(candidate, out)) return out;
    }
  }
  if (exists(MOONRING_INSTALL_LUA_DIR, "moonring/serve.lua")) return MOONRING_INSTALL_LUA_DIR;
  return MOONRING_SOURCE_LUA_DIR;
}

static void raise_fd_limit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

enum { OPT_HOST = 256, OPT_PORT, OPT_DEV, OPT_ACCESS_LOG, OPT_MAX_HEADER, OPT_MAX_BODY,
       OPT_HEADER_TIMEOUT, OPT_IDLE_TIMEOUT, OPT_REQUEST_TIMEOUT, OPT_MAX_CONN, OPT_GRACE,
       OPT_MAX_INFLIGHT, OPT_WRITE_BUFFER, OPT_CPU_BUDGET, OPT_WATCH, OPT_WORKERS, OPT_WORKER_ID,
       OPT_THREADS, OPT_HELP, OPT_VERSION };

int main(int argc, char **argv) {
  mr_config *cfg = &mr_srv.cfg;
  *cfg = (mr_config){
    .host = "127.0.0.1",
    .port = 8080,
    .access_log = "-",
    .app = "handlers/",
    .max_header_size = 16 * MR_KIB,
    .max_body_size = 1024 * MR_KIB,
    .header_timeout_ms = 10000,
    .idle_timeout_ms = 60000,
    .request_timeout_ms = 60000,
    .grace_ms = 10000,
    .cpu_budget_ms = 1000,
    .write_buffer = 64 * MR_KIB,
    .max_connections = 16384,
    .max_inflight = 10000,
    .threads = 4,
    .listen_fd = -1,
    .ready_fd = -1,
  };
  static const struct option opts[] = {
    {"host", required_argument, 0, OPT_HOST},
    {"port", required_argument, 0, OPT_PORT},
    {"dev", no_argument, 0, OPT_DEV},
    {"access-log", required_argument, 0, OPT_ACCESS_LOG},
    {"max-header-size", required_argument, 0, OPT_MAX_HEADER},
    {"max-body-size", required_argument, 0, OPT_MAX_BODY},
    {"header-timeout", required_argument, 0, OPT_HEADER_TIMEOUT},
    {"idle-timeout", required_argument, 0, OPT_IDLE_TIMEOUT},
    {"request-timeout", required_argument, 0, OPT_REQUEST_TIMEOUT},
    {"max-connections", required_argument, 0, OPT_MAX_CONN},
    {"grace", required_argument, 0, OPT_GRACE},
    {"max-inflight", required_argument, 0, OPT_MAX_INFLIGHT},
    {"write-buffer", required_argument, 0, OPT_WRITE_BUFFER},
    {"cpu-budget", required_argument, 0, OPT_CPU_BUDGET},
    {"watch", no_argument, 0, OPT_WATCH},
    {"workers", required_argument, 0, OPT_WORKERS},
    {"worker-id", required_argument, 0, OPT_WORKER_ID},   /* given by the supervisor */
    {"threads", required_argument, 0, OPT_THREADS},
    {"help", no_argument, 0, OPT_HELP},
    {"version", no_argument, 0, OPT_VERSION},
    {0, 0, 0, 0},
  };
  int opt;
  long v;
  const char *bad = NULL;
  opterr = 0;
  while (!bad && (opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (opt) {
    case OPT_HOST: cfg->host = optarg; break;
    case OPT_PORT:
      if (parse_int(optarg, 0, 65535, &v)) bad = "--port expects 0-65535";
      cfg->port = (int)v;
      break;
    case OPT_DEV: cfg->dev = cfg->watch = 1; break;
    case OPT_WATCH: cfg->watch = 1; break;
    case OPT_WORKERS:
      if (strcmp(optarg, "auto") == 0) v = (long)uv_available_parallelism();
      else if (parse_int(optarg, 1, 1024, &v)) bad = "--workers expects 1-1024 or auto";
      cfg->workers = (int)v;
      break;
    case OPT_WORKER_ID:
      if (parse_int(optarg, 1, 9000000, &v)) bad = "--worker-id is the supervisor's";
      cfg->worker_id = v;
      break;
    case OPT_ACCESS_LOG: cfg->access_log = strcmp(optarg, "off") ? optarg : NULL; break;
    case OPT_MAX_HEADER:
      if (parse_bytes(optarg, &cfg->max_header_size) || cfg->max_header_size < 256)
        bad = "--max-header-size expects a size of at least 256 bytes";
      break;
    case OPT_MAX_BODY:
      if (parse_bytes(optarg, &cfg->max_body_size)) bad = "--max-body-size expects a size";
      break;
    case OPT_HEADER_TIMEOUT:
      if (parse_seconds(optarg, &cfg->header_timeout_ms, 0)) bad = "--header-timeout expects seconds";
      break;
    case OPT_IDLE_TIMEOUT:
      if (parse_seconds(optarg, &cfg->idle_timeout_ms, 0)) bad = "--idle-timeout expects seconds";
      break;
    case OPT_REQUEST_TIMEOUT:
      if (parse_seconds(optarg, &cfg->request_timeout_ms, 0)) bad = "--request-timeout expects seconds";
      break;
    case OPT_GRACE:
      if (parse_seconds(optarg, &cfg->grace_ms, 0)) bad = "--grace expects seconds";
      break;
    case OPT_CPU_BUDGET:
      if (parse_seconds(optarg, &cfg->cpu_budget_ms, 1)) bad = "--cpu-budget expects seconds (0: no budget)";
      break;
    case OPT_WRITE_BUFFER:
      if (parse_bytes(optarg, &cfg->write_buffer) || cfg->write_buffer < 1024)
        bad = "--write-buffer expects a size of at least 1k";
      break;
    case OPT_MAX_INFLIGHT:
      if (parse_int(optarg, 1, 10000000, &v)) bad = "--max-inflight expects a positive number";
      cfg->max_inflight = (unsigned)v;
      break;
    case OPT_MAX_CONN:
      if (parse_int(optarg, 1, 10000000, &v)) bad = "--max-connections expects a positive number";
      cfg->max_connections = (unsigned)v;
      break;
    case OPT_THREADS:
      if (parse_int(optarg, 1, 1000, &v)) bad = "--threads expects 1-1000";
      cfg->threads = (unsigned)v;
      break;
    case OPT_HELP: usage(stdout); return 0;
    case OPT_VERSION: printf("moonring %s\n", MOONRING_VERSION); return 0;
    default:
      fprintf(stderr, "moonring: unknown or incomplete option '%s'\n", argv[optind - 1]);
      usage(stderr);
      return 2;
    }
  }
  if (bad) {
    fprintf(stderr, "moonring: %s\n", bad);
    usage(stderr);
    return 2;
  }
  if (optind < argc - 1) {
    fprintf(stderr, "moonring: one APP expected, got %d\n", argc - optind);
    usage(stderr);
    return 2;
  }
  if (optind == argc - 1) cfg->app = argv[optind];

  signal(SIGPIPE, SIG_IGN);
  signal(SIGUSR2, SIG_IGN);     /* a restart means something only to a supervisor */
  signal(SIGHUP, SIG_IGN);      /* until reload.c handles it: loading must not die of it */
  raise_fd_limit();
  if (cfg->workers > 0 && cfg->worker_id == 0) return supervisor_run(cfg, argc, argv);
  if (cfg->worker_id > 0) {
    /* Started by the supervisor: the socket is fd 3, readiness goes to fd 4,
     * and a worker whose supervisor is gone stops too. */
    cfg->listen_fd = 3;
    cfg->ready_fd = 4;
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    const char *sup = getenv("MOONRING_SUPERVISOR_PID");
    if (!sup || getppid() != (pid_t)atol(sup)) {
      fprintf(stderr, "moonring: --worker-id is for workers started by a supervisor\n");
      return 1;
    }
    unsetenv("MOONRING_SUPERVISOR_PID");
    /* Not for what handlers start (io.popen): they must not hold the port
     * or the readiness pipe. */
    fcntl(3, F_SETFD, FD_CLOEXEC);
    fcntl(4, F_SETFD, FD_CLOEXEC);
  }
  if (log_open(cfg->access_log) < 0) {
    fprintf(stderr, "moonring: cannot open access log %s: %s\n", cfg->access_log, strerror(errno));
    return 1;
  }
  /* libuv's pool (made at its first use) runs the thread jobs and also
   * file calls and DNS lookups: 4 threads more than --threads, so those are
   * never starved by Lua jobs. An explicit UV_THREADPOOL_SIZE wins. */
  if (!getenv("UV_THREADPOOL_SIZE")) {
    char n[16];
    snprintf(n, sizeof n, "%u", cfg->threads + 4);
    setenv("UV_THREADPOOL_SIZE", n, 1);
  }
  mr_srv.loop = uv_default_loop();
  char lua_dir_buf[PATH_MAX], err[4096];
  const char *lua_dir = find_lua_dir(lua_dir_buf, sizeof lua_dir_buf);
  if (mr_lua_init(&mr_srv, lua_dir, err, sizeof err) < 0) {
    fprintf(stderr, "moonring: %s\n", err);
    if (mr_srv.L) lua_close(mr_srv.L);
    return 1;
  }
  if (reload_start(&mr_srv) < 0 || server_start(&mr_srv) < 0) {
    lua_close(mr_srv.L);
    return 1;
  }
  if (budget_start(cfg->cpu_budget_ms) < 0) {
    fprintf(stderr, "moonring: cannot start the CPU budget watchdog\n");
    lua_close(mr_srv.L);
    return 1;
  }
  uv_run(mr_srv.loop, UV_RUN_DEFAULT);
  budget_stop();

  mr_teardown();
  return 0;
}
