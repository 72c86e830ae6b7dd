/* server.c — the listener: binds, accepts, and owns the worker's lifecycle
 * (SIGTERM/SIGINT drain with a grace period). Connections are created by
 * conn_accept and report back through server_conn_closed. */
#include "conn.h"
#include <stdio.h>
#include <string.h>
#include <unistd.h>

mr_server mr_srv;

static void close_cb_noop(uv_handle_t *h) { (void)h; }

static void on_connection(uv_stream_t *listener, int status) {
  if (status < 0) {
    static mr_lograte failing;       /* out of descriptors: every loop turn */
    log_error_rate(&failing, "accept: %s", uv_strerror(status));
    return;
  }
  conn_accept(listener->data);
}

static void flush_cb(uv_check_t *h) { log_flush(); }

/* One timer checks every connection's expiry: cheaper than a timer handle
 * per connection (memory for idle ones, heap updates on every request). */
static void sweep_cb(uv_timer_t *t) {
  mr_server *s = t->data;
  uint64_t now = uv_now(s->loop);
  mr_conn *next;
  for (mr_conn *c = s->conns; c; c = next) {
    next = c->next;
    if (c->flags & CONN_CLOSING) continue;
    if (conn_due(c, now)) conn_expired(c, now);
    else if (c->flags & CONN_HELD) conn_check_reset(c);
  }
  conn_trim();
}

/* The sweep's period: a quarter of the shortest timeout, within 10-250 ms,
 * so a timeout fires at most that late. */
static uint64_t sweep_period(const mr_config *cfg) {
  uint64_t shortest = cfg->header_timeout_ms;
  if (cfg->idle_timeout_ms < shortest) shortest = cfg->idle_timeout_ms;
  if (cfg->request_timeout_ms < shortest) shortest = cfg->request_timeout_ms;
  uint64_t p = shortest / 4;
  return p < 10 ? 10 : p > 250 ? 250 : p;
}

/* Everything has closed: release the loop's remaining handles so uv_run
 * returns once the tasks left (server tasks, requests still unwinding) are
 * told to stop. */
static void server_finish(mr_server *s) {
  if (s->on_stopped) s->on_stopped();
  uv_close((uv_handle_t *)&s->sig_term, close_cb_noop);
  uv_close((uv_handle_t *)&s->sig_int, close_cb_noop);
  uv_close((uv_handle_t *)&s->grace_timer, close_cb_noop);
  uv_close((uv_handle_t *)&s->log_flush, close_cb_noop);
  uv_close((uv_handle_t *)&s->sweep, close_cb_noop);
}

static void grace_cb(uv_timer_t *t) {
  mr_server *s = t->data;
  log_error("grace period over: aborting %u connection(s)", s->nconns);
  for (mr_conn *c = s->conns; c; c = c->next)
    if (!(c->flags & CONN_CLOSING)) conn_close(c, CONN_CLOSE_RESET);
}

void server_drain(mr_server *s) {
  if (s->draining) return;
  s->draining = 1;
  uv_close((uv_handle_t *)&s->listener, close_cb_noop);
  /* Idle connections go now; busy ones close when their request ends. */
  mr_conn *next;
  for (mr_conn *c = s->conns; c; c = next) {
    next = c->next;
    /* one still writing a finished response, or already shutting down, is let finish */
    if (!(c->flags & (CONN_CLOSING | CONN_SHUTDOWN)) && conn_idle(c))
      conn_close(c, c->writes ? CONN_CLOSE_GRACEFUL : CONN_CLOSE_NOW);
  }
  if (s->nconns == 0) {
    server_finish(s);
    return;
  }
  uv_timer_start(&s->grace_timer, grace_cb, s->cfg.grace_ms, 0);
}

void server_conn_closed(mr_server *s) {
  if (s->draining && s->nconns == 0) server_finish(s);
}

static void signal_cb(uv_signal_t *h, int signum) {
  server_drain(h->data);
}

/* A worker listens on the socket its supervisor bound (cfg.listen_fd). */
static int listen_on(mr_server *s, struct sockaddr_storage *addr) {
  int rc;
  uv_tcp_init(s->loop, &s->listener);
  s->listener.data = s;
  if (s->cfg.listen_fd >= 0) {
    if ((rc = uv_tcp_open(&s->listener, s->cfg.listen_fd)) < 0 ||
        (rc = uv_listen((uv_stream_t *)&s->listener, 511, on_connection)) < 0) {
      fprintf(stderr, "moonring: cannot listen on the supervisor's socket: %s\n", uv_strerror(rc));
      return -1;
    }
    return 0;
  }
  if (strchr(s->cfg.host, ':'))
    rc = uv_ip6_addr(s->cfg.host, s->cfg.port, (struct sockaddr_in6 *)addr);
  else
    rc = uv_ip4_addr(s->cfg.host, s->cfg.port, (struct sockaddr_in *)addr);
  if (rc < 0) {
    fprintf(stderr, "moonring: bad --host %s: %s\n", s->cfg.host, uv_strerror(rc));
    return -1;
  }
  if ((rc = uv_tcp_bind(&s->listener, (struct sockaddr *)addr, 0)) < 0 ||
      (rc = uv_listen((uv_stream_t *)&s->listener, 511, on_connection)) < 0) {
    fprintf(stderr, "moonring: cannot listen on %s:%d: %s\n", s->cfg.host, s->cfg.port,
            uv_strerror(rc));
    return -1;
  }
  return 0;
}

void server_print_listening(const char *host, int port) {
  if (strchr(host, ':')) printf("listening on http://[%s]:%d\n", host, port);
  else printf("listening on http://%s:%d\n", host, port);
  fflush(stdout);
}

int server_start(mr_server *s) {
  struct sockaddr_storage addr;
  int rc;
  if (listen_on(s, &addr) < 0) return -1;
  /* Worker k's request ids start at k * 10^12 + 1: unique across workers
   * and restarts (the supervisor never reuses a number). */
  s->next_request_id = (uint64_t)s->cfg.worker_id * 1000000000000ull;
  int len = sizeof addr;
  uv_tcp_getsockname(&s->listener, (struct sockaddr *)&addr, &len);
  s->port = ntohs(addr.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&addr)->sin6_port
                                             : ((struct sockaddr_in *)&addr)->sin_port);

  uv_signal_init(s->loop, &s->sig_term);
  uv_signal_init(s->loop, &s->sig_int);
  s->sig_term.data = s->sig_int.data = s;
  if ((rc = uv_signal_start(&s->sig_term, signal_cb, SIGTERM)) < 0 ||
      (rc = uv_signal_start(&s->sig_int, signal_cb, SIGINT)) < 0) {
    fprintf(stderr, "moonring: cannot handle SIGTERM/SIGINT: %s\n", uv_strerror(rc));
    return -1;
  }
  uv_timer_init(s->loop, &s->grace_timer);
  s->grace_timer.data = s;
  uv_timer_init(s->loop, &s->sweep);
  s->sweep.data = s;
  uint64_t period = sweep_period(&s->cfg);
  uv_timer_start(&s->sweep, sweep_cb, period, period);
  uv_unref((uv_handle_t *)&s->sweep);
  uv_check_init(s->loop, &s->log_flush);
  uv_check_start(&s->log_flush, flush_cb);
  uv_unref((uv_handle_t *)&s->log_flush);

  if (s->cfg.ready_fd >= 0) {         /* the supervisor prints the line */
    if (write(s->cfg.ready_fd, "R", 1) < 0) return -1;
    close(s->cfg.ready_fd);
    s->cfg.ready_fd = -1;
    return 0;
  }
  server_print_listening(s->cfg.host, s->port);
  return 0;
}
