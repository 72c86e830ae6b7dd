/* harness.c — the libFuzzer target: arbitrary bytes, cut into pieces at
 * points the input chooses, sent over a real TCP connection to the real
 * server (conn.c, http.c, parser.c + llhttp, the Lua bridge) running the
 * small app in spec/fuzz/app/, in this process. The server's libuv loop is
 * run by the harness between the client's writes; the client is a plain
 * non-blocking socket the loop knows nothing about.
 *
 * Input layout (every field optional: a short input reads zeros):
 *
 *   byte 0   flags
 *              bits 0-1  how the client ends: 0 half-close (shutdown
 *                        SHUT_WR) and wait for the server to close; 1 reset
 *                        at once; 2 let the server settle, then reset;
 *                        3 with bit 7: stay open until the server closes
 *                        (its timeouts), then reset; without bit 7 as 0
 *              bit 2     a second connection sends the same pieces,
 *                        interleaved with the first
 *              bit 3     --dev (error bodies carry the traceback)
 *              bits 4-5  limits: 0 normal (4k head, 64k body); 1 tight
 *                        (256-byte head, 16-byte body); 2 --max-inflight 1;
 *                        3 --max-connections 1
 *              bit 6     one loop turn between pieces (else four)
 *   byte 1   bits 0-3  the number of cut points n
 *            bit 4     a slow reader: the client's receive buffer is small
 *                      and it reads nothing until it ends (the server's
 *                      writes queue, streams park, send timeouts fire)
 *            bits 5-6  the payload is repeated 1, 8, 64 or 512 times (at most
 *                      MAX_SEND bytes in all): floods of pipelined requests
 *   2n bytes the cut points, 16-bit little-endian offsets into the bytes
 *            sent, taken modulo their length + 1 (sorted; duplicates cut
 *            nothing); what follows the last is sent in one piece
 *   the rest the payload
 *
 * Every input starts and ends with no connection open: the harness waits
 * for the server to close every connection after the client has gone, and
 * aborts (a finding) if it has not within HANG_MS. Nothing else carries over
 * except the Lua state, the pools and the listener, as in a long-running
 * server.
 *
 * MOONRING_FUZZ_VERBOSE=1 prints each input's decoded layout and what the
 * server answered (to the stderr of the start, also with -close_fd_mask);
 * MOONRING_FUZZ_STATS=N prints the Lua heap (after a full collection) and
 * the bytes malloc'd every N inputs, to see that nothing grows. */
#include "http.h"
#include "request.h"
#include "task.h"
#include <errno.h>
#include <fcntl.h>
#include <sanitizer/allocator_interface.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef FUZZ_APP_DIR
#define FUZZ_APP_DIR "spec/fuzz/app"
#endif
#ifndef FUZZ_LUA_DIR
#define FUZZ_LUA_DIR "lua"
#endif

#define MAX_CUTS      15
#define MAX_CLIENTS   2
#define TIMEOUT_MS    10      /* --header/idle/request-timeout: short, so they fire */
#define CLOSE_WAIT_MS 1000    /* half-closed client: wait this long for the server */
#define STAY_MS       100     /* a client that stays open waits this long */
#define WRITE_MS      1000    /* a piece the server never reads is dropped after this */
#define HANG_MS       3000    /* client gone: every connection must close within this */
#define MAX_SEND      (256 * 1024)

enum { END_HALF_CLOSE, END_RESET, END_SETTLE_RESET, END_STAY };

static int diag_fd = -1;      /* stderr as it was at start (libFuzzer may close fd 2) */
static int verbose;
static uint64_t stats_every;  /* MOONRING_FUZZ_STATS=N: memory in use every N inputs */
static uint64_t inputs;

static void diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void diag(const char *fmt, ...) {
  char line[4096];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n >= sizeof line) n = sizeof line - 1;
  if (write(diag_fd >= 0 ? diag_fd : 2, line, (size_t)n) < 0) { /* nothing to do */ }
}

/* `p` as a C string literal body, at most `max` bytes of it. */
static void diag_escaped(const char *label, const uint8_t *p, size_t n, size_t max) {
  char out[4 * 512 + 64];
  size_t o = 0;
  for (size_t i = 0; i < n && i < max && o < sizeof out - 8; i++) {
    uint8_t ch = p[i];
    if (ch == '\r') o += (size_t)snprintf(out + o, sizeof out - o, "\\r");
    else if (ch == '\n') o += (size_t)snprintf(out + o, sizeof out - o, "\\n");
    else if (ch == '\t') o += (size_t)snprintf(out + o, sizeof out - o, "\\t");
    else if (ch == '"' || ch == '\\') o += (size_t)snprintf(out + o, sizeof out - o, "\\%c", ch);
    else if (ch < 0x20 || ch >= 0x7f) o += (size_t)snprintf(out + o, sizeof out - o, "\\x%02x", ch);
    else out[o++] = (char)ch;
  }
  out[o] = 0;
  diag("%s (%zu bytes): \"%s\"%s\n", label, n, out, n > max ? "..." : "");
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- the client ---------------------------------------------------------- */

typedef struct client {
  int fd;
  int eof;                    /* the server closed (EOF or reset seen) */
  int stalled;                /* a piece could not be sent in WRITE_MS: no more sends */
  size_t got;                 /* response bytes read */
} client;

static client clients[MAX_CLIENTS];
static int nclients;
static int no_read;           /* a slow reader, before it ends */

/* Reads and drops what the server sent (shown with MOONRING_FUZZ_VERBOSE). */
static void drain(client *c) {
  uint8_t buf[16384];
  while (c->fd >= 0 && !c->eof && !no_read) {
    ssize_t n = recv(c->fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) {
      if (verbose) diag_escaped("  response", buf, (size_t)n, 512);
      c->got += (size_t)n;
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n < 0 && errno == EINTR) continue;
    c->eof = 1;               /* 0: EOF; other errors: reset */
    if (verbose)
      diag("  client %d: %s after %zu bytes\n", (int)(c - clients), n == 0 ? "EOF" : strerror(errno),
           c->got);
  }
}

static void drain_all(void) {
  for (int i = 0; i < nclients; i++) drain(&clients[i]);
}

static void client_close(client *c, int reset) {
  if (c->fd < 0) return;
  if (reset) {
    struct linger lg = {1, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  }
  close(c->fd);
  c->fd = -1;
}

static int client_open(client *c, int small_rcvbuf) {
  c->eof = c->stalled = 0;
  c->got = 0;
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c->fd < 0) return -1;
  if (small_rcvbuf) {         /* before connect: it sets the window offered */
    int size = 2048;
    setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  }
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)mr_srv.port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  /* Blocking connect: on loopback the kernel completes the handshake
   * without the server's accept. */
  if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    diag("fuzz harness: connect: %s\n", strerror(errno));
    client_close(c, 1);
    return -1;
  }
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
  return 0;
}

/* ---- the server's loop ------------------------------------------------------ */

/* One loop iteration that does not wait, then the client's side is read. */
static void turn(void) {
  uv_run(mr_srv.loop, UV_RUN_NOWAIT);
  drain_all();
}

/* One iteration that may wait for I/O or the next timer (the server's sweep
 * runs every 10 ms with these timeouts), for the phases that wait. */
static unsigned slow_waits;   /* wait_turn calls that waited (verbose) */
static void wait_turn(void) {
  uint64_t t0 = verbose ? now_ms() : 0;
  uv_run(mr_srv.loop, UV_RUN_ONCE);
  if (verbose && now_ms() - t0 > 2) slow_waits++;
  drain_all();
}

static void send_piece(client *c, const uint8_t *p, size_t n) {
  uint64_t deadline = 0;
  while (n > 0 && c->fd >= 0 && !c->eof && !c->stalled) {
    ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) {
      p += w;
      n -= (size_t)w;
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      /* the server is not reading (a full input buffer): let it run */
      if (!deadline) deadline = now_ms() + WRITE_MS;
      if (now_ms() > deadline) {
        c->stalled = 1;
        if (verbose) diag("  client %d: the server took no input for %d ms\n", (int)(c - clients), WRITE_MS);
        return;
      }
      wait_turn();
      continue;
    }
    c->eof = 1;               /* reset by the server */
    return;
  }
}

/* Every connection is gone and so is every request (cancelled tasks have
 * unwound), or the server kept something: that is a finding. */
static void wait_all_closed(const uint8_t *data, size_t size) {
  uint64_t deadline = now_ms() + HANG_MS;
  while (mr_srv.nconns > 0 || mr_srv.inflight > 0) {
    if (now_ms() > deadline) {
      diag("\n==moonring-fuzz== the server kept %u connection(s) and %u request(s) %d ms "
           "after the client left\n", mr_srv.nconns, mr_srv.inflight, HANG_MS);
      for (mr_conn *c = mr_srv.conns; c; c = c->next) {
        mr_http *h = (mr_http *)c;
        diag("  conn flags=0x%x writes=%u pending=%zu expire=%llu send_expire=%llu "
             "hflags=0x%x in_len=%zu ps=%p ex=%p ex.flags=0x%x\n",
             c->flags, c->writes, c->pending, (unsigned long long)c->expire,
             (unsigned long long)c->send_expire, h->hflags, h->in_len, (void *)h->ps,
             (void *)h->ex, h->ex ? h->ex->flags : 0);
      }
      diag_escaped("input", data, size, 512);
      abort();
    }
    wait_turn();
  }
  /* a few more turns: tasks cancelled by the close run to their end */
  for (int i = 0; i < 3; i++) uv_run(mr_srv.loop, UV_RUN_NOWAIT);
}

/* ---- setup --------------------------------------------------------------- */

static void set_limits(int profile, int dev) {
  mr_config *cfg = &mr_srv.cfg;
  cfg->dev = dev;
  cfg->max_header_size = 4 * MR_KIB;
  cfg->max_body_size = 64 * MR_KIB;
  cfg->max_inflight = 64;
  cfg->max_connections = 64;
  switch (profile) {
  case 1: cfg->max_header_size = 256; cfg->max_body_size = 16; break;
  case 2: cfg->max_inflight = 1; break;
  case 3: cfg->max_connections = 1; break;
  }
}

/* At exit (the end of -runs or -max_total_time): the drain and the frees of
 * main(), so LeakSanitizer sees a clean exit. */
static void shutdown_server(void) {
  for (int i = 0; i < nclients; i++) client_close(&clients[i], 1);
  server_drain(&mr_srv);
  uv_run(mr_srv.loop, UV_RUN_DEFAULT);
  budget_stop();
  mr_teardown();
  if (verbose) diag("moonring-fuzz: %llu inputs, server shut down\n", (unsigned long long)inputs);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  diag_fd = fcntl(2, F_DUPFD_CLOEXEC, 3);
  const char *v = getenv("MOONRING_FUZZ_VERBOSE");
  verbose = v && *v && strcmp(v, "0") != 0;
  const char *st = getenv("MOONRING_FUZZ_STATS");
  stats_every = st ? strtoull(st, NULL, 10) : 0;
  signal(SIGPIPE, SIG_IGN);
  mr_config *cfg = &mr_srv.cfg;
  /* main()'s defaults, with short timeouts and small limits */
  *cfg = (mr_config){
    .host = "127.0.0.1",
    .port = 0,
    .access_log = NULL,
    .app = getenv("MOONRING_FUZZ_APP") ? getenv("MOONRING_FUZZ_APP") : FUZZ_APP_DIR,
    .header_timeout_ms = TIMEOUT_MS,
    .idle_timeout_ms = TIMEOUT_MS,
    .request_timeout_ms = TIMEOUT_MS,
    .grace_ms = 1000,
    .cpu_budget_ms = 1000,
    .write_buffer = 4 * MR_KIB,
    .listen_fd = -1,
    .ready_fd = -1,
  };
  set_limits(0, 0);
  for (int i = 0; i < MAX_CLIENTS; i++) clients[i].fd = -1;
  if (log_open(NULL) < 0) abort();
  mr_srv.loop = uv_default_loop();
  const char *lua_dir = getenv("MOONRING_LUA_DIR");
  if (!lua_dir || !*lua_dir) lua_dir = FUZZ_LUA_DIR;
  char err[4096];
  if (mr_lua_init(&mr_srv, lua_dir, err, sizeof err) < 0) {
    diag("moonring-fuzz: %s\n", err);
    exit(1);
  }
  if (server_start(&mr_srv) < 0) exit(1);
  if (budget_start(cfg->cpu_budget_ms) < 0) {
    diag("moonring-fuzz: cannot start the CPU budget watchdog\n");
    exit(1);
  }
  atexit(shutdown_server);
  return 0;
}

/* ---- one input ----------------------------------------------------------- */

static int cmp_size(const void *a, const void *b) {
  size_t x = *(const size_t *)a, y = *(const size_t *)b;
  return x < y ? -1 : x > y;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  inputs++;
  uint64_t started = verbose ? now_ms() : 0;
  slow_waits = 0;
  size_t at = 0;
  uint8_t flags = size > at ? data[at] : 0;
  at++;
  uint8_t flags2 = size > at ? data[at] : 0;
  unsigned ncuts = flags2 & 0x0f;
  at++;
  int end = flags & 3;
  if (end == END_STAY && !(flags & 0x80)) end = END_HALF_CLOSE;
  nclients = (flags & 0x04) ? 2 : 1;
  int turns = (flags & 0x40) ? 1 : 4;
  int slow = (flags2 & 0x10) != 0;
  set_limits((flags >> 4) & 3, (flags >> 3) & 1);

  /* The bytes to send: the payload, repeated when asked. */
  size_t payload_at = at + 2 * (size_t)ncuts;
  const uint8_t *payload = payload_at < size ? data + payload_at : data;
  size_t plen = payload_at < size ? size - payload_at : 0;
  size_t reps = (size_t)1 << (3 * ((flags2 >> 5) & 3));
  while (reps > 1 && plen * reps > MAX_SEND) reps >>= 1;
  if (plen > MAX_SEND) plen = MAX_SEND;
  uint8_t *repeated = NULL;
  const uint8_t *out = payload;
  size_t total = plen * reps;
  if (reps > 1) {
    repeated = malloc(total);
    if (!repeated) abort();
    for (size_t r = 0; r < reps; r++) memcpy(repeated + r * plen, payload, plen);
    out = repeated;
  }
  size_t cuts[MAX_CUTS + 2];
  cuts[0] = 0;
  for (unsigned i = 0; i < ncuts; i++) {
    size_t o = at + 2 * i;
    size_t v = (o < size ? data[o] : 0) | (o + 1 < size ? (size_t)data[o + 1] << 8 : 0);
    cuts[1 + i] = v % (total + 1);
  }
  qsort(cuts + 1, ncuts, sizeof cuts[0], cmp_size);
  cuts[ncuts + 1] = total;
  unsigned npieces = ncuts + 1;

  if (verbose) {
    static const char *ends[] = {"half-close", "reset", "settle+reset", "stay open"};
    diag("input %llu: %s, %d client(s), dev=%d, limits=%d, %d turn(s) between pieces, "
         "%s reader, payload sent %zu time(s)\n",
         (unsigned long long)inputs, ends[end], nclients, (flags >> 3) & 1, (flags >> 4) & 3, turns,
         slow ? "slow" : "fast", reps);
    for (unsigned i = 0; i < npieces; i++)
      if (cuts[i + 1] > cuts[i]) {
        char label[32];
        snprintf(label, sizeof label, "  piece %u", i);
        diag_escaped(label, out + cuts[i], cuts[i + 1] - cuts[i], 512);
      }
  }

  for (int i = 0; i < nclients; i++)
    if (client_open(&clients[i], slow) < 0) {
      for (int j = 0; j < i; j++) client_close(&clients[j], 1);
      free(repeated);
      wait_all_closed(data, size);
      return 0;
    }
  no_read = slow;
  turn();                                 /* accepts */
  if (slow) {
    /* A small send buffer on the server's side too (else autotuning lets
     * the kernel take megabytes): its writes queue in conn.c. */
    for (mr_conn *c = mr_srv.conns; c; c = c->next) {
      uv_os_fd_t fd;
      int sndbuf = 4096;
      if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    }
  }

  for (unsigned i = 0; i < npieces; i++) {
    if (cuts[i + 1] == cuts[i]) continue;
    for (int k = 0; k < nclients; k++) {
      send_piece(&clients[k], out + cuts[i], cuts[i + 1] - cuts[i]);
      for (int t = 0; t < turns; t++) turn();
    }
  }
  no_read = 0;
  free(repeated);

  uint64_t deadline;
  switch (end) {
  case END_HALF_CLOSE:
    for (int k = 0; k < nclients; k++) shutdown(clients[k].fd, SHUT_WR);
    deadline = now_ms() + CLOSE_WAIT_MS;
    while (mr_srv.nconns > 0 && now_ms() < deadline) wait_turn();
    break;
  case END_RESET:
    break;
  case END_SETTLE_RESET:
    for (int t = 0; t < 8; t++) turn();
    break;
  case END_STAY:
    deadline = now_ms() + STAY_MS;
    while (mr_srv.nconns > 0 && now_ms() < deadline) wait_turn();
    break;
  }
  drain_all();
  /* Reset: no TIME_WAIT left on the client's port, and the server sees the
   * client gone whatever it was doing. */
  for (int k = 0; k < nclients; k++) client_close(&clients[k], 1);
  wait_all_closed(data, size);
  if (stats_every && inputs % stats_every == 0) {
    lua_gc(mr_srv.L, LUA_GCCOLLECT);
    diag("moonring-fuzz: %llu inputs, Lua heap %d KiB, malloc'd %zu KiB, request id %llu\n",
         (unsigned long long)inputs, lua_gc(mr_srv.L, LUA_GCCOUNT),
         __sanitizer_get_current_allocated_bytes() / 1024, (unsigned long long)mr_srv.next_request_id);
  }
  if (verbose)
    diag("  done in %llu ms (%u waits on a timer)\n", (unsigned long long)(now_ms() - started),
         slow_waits);
  return 0;
}
