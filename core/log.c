/* log.c — the access log (buffered, flushed once per loop iteration by the
 * server's check handle) and the error log (stderr, unbuffered), plus the
 * cached HTTP Date value. Owns the access log's descriptor and buffer. */
#define _GNU_SOURCE             /* memrchr */
#include "moonring.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* The access log: lines gather in `pending` and go out with write(2) once
 * per loop iteration. Several workers may share the destination: a regular
 * file is opened O_APPEND (each write lands whole), and to a pipe or a
 * terminal a write goes in pieces of whole lines of at most PIPE_BUF bytes,
 * which the kernel never interleaves with another process's writes. */
static int access_fd = -1;      /* -1: access log off; 2: stderr */
static int access_regular;      /* a regular file: one write may be any size */
static int stderr_regular = -1; /* the same for the error log (-1: not looked at yet) */
static char pending[64 * 1024];
static size_t pending_len;

static int is_regular(int fd) {
  struct stat st;
  return fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
}

int log_open(const char *access_log) {
  if (!access_log) return 0;
  if (strcmp(access_log, "-") == 0) {
    access_fd = 2;
  } else {
    access_fd = open(access_log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (access_fd < 0) return -1;
  }
  access_regular = is_regular(access_fd);
  return 0;
}

static void iso_time(char out[32]) {
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int log_access_enabled(void) { return access_fd >= 0; }

static void write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return;                   /* a log that cannot be written loses lines, not requests */
    }
    p += w;
    n -= (size_t)w;
  }
}

/* Whole lines, in pieces a pipe keeps together. */
static void write_lines(int fd, int regular, const char *p, size_t n) {
  while (n > 0) {
    size_t take = n;
    if (!regular && take > PIPE_BUF) {
      const char *nl = memrchr(p, '\n', PIPE_BUF);
      if (!nl) nl = memchr(p + PIPE_BUF, '\n', n - PIPE_BUF);   /* one long line */
      take = nl ? (size_t)(nl - p) + 1 : n;
    }
    write_all(fd, p, take);
    p += take;
    n -= take;
  }
}

void log_flush(void) {
  if (pending_len) write_lines(access_fd, access_regular, pending, pending_len);
  pending_len = 0;
}

#define ACCESS_FMT "%s %s \"%.*s %.*s HTTP/%d.%d\" %d %llu %.3fms id=%llu\n"

void log_access(const char *remote, const char *method, size_t mlen, const char *target,
                size_t tlen, int major, int minor, int status, uint64_t bytes,
                uint64_t start_ns, uint64_t id) {
  if (access_fd < 0) return;
  char when[32];
  iso_time(when);
  double ms = (double)(uv_hrtime() - start_ns) / 1e6;
  for (int attempt = 0; attempt < 2; attempt++) {
    size_t room = sizeof pending - pending_len;
    int n = snprintf(pending + pending_len, room, ACCESS_FMT, when, remote, (int)mlen, method,
                     (int)tlen, target, major, minor, status, (unsigned long long)bytes, ms,
                     (unsigned long long)id);
    if (n < 0) return;
    if ((size_t)n < room) {
      pending_len += (size_t)n;
      return;
    }
    log_flush();
  }
  /* A line longer than the whole buffer (a huge --max-header-size): alone. */
  mr_buf line = {0};
  mr_buf_reserve(&line, tlen + 512);
  int n = snprintf(line.data, line.cap, ACCESS_FMT, when, remote, (int)mlen, method, (int)tlen,
                   target, major, minor, status, (unsigned long long)bytes, ms,
                   (unsigned long long)id);
  if (n > 0) write_lines(access_fd, access_regular, line.data, (size_t)n < line.cap ? (size_t)n : line.cap - 1);
  mr_buf_free(&line);
}

/* One write per entry (of whole lines of at most PIPE_BUF to a pipe), so
 * lines of several workers never mix; a worker's entries name it. */
static void log_line(const char *level, const char *fmt, va_list ap) {
  log_flush();                  /* keep the two logs in order when both go to stderr */
  char when[32], line[8192];
  iso_time(when);
  int n = mr_srv.cfg.worker_id
    ? snprintf(line, sizeof line, "%s [%s] worker %ld: ", when, level, mr_srv.cfg.worker_id)
    : snprintf(line, sizeof line, "%s [%s] ", when, level);
  int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
  size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m < sizeof line - (size_t)n - 1 ? (size_t)m
                                                                                   : sizeof line - (size_t)n - 2);
  line[len++] = '\n';
  if (stderr_regular < 0) stderr_regular = is_regular(2);
  write_lines(2, stderr_regular, line, len);
}

/* At most one entry per second from one place: the first of a burst goes
 * out at once, the rest are counted into the next one that goes out. */
void log_error_rate(mr_lograte *r, const char *fmt, ...) {
  uint64_t now_ms = uv_hrtime() / 1000000u;
  if (r->last_ms && now_ms - r->last_ms < 1000) {
    r->suppressed++;
    return;
  }
  char msg[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (r->suppressed)
    log_error("%s (and %u more like it in the last %.1f s)", msg, r->suppressed,
              (double)(now_ms - r->last_ms) / 1000.0);
  else
    log_error("%s", msg);
  r->last_ms = now_ms;
  r->suppressed = 0;
}

void log_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  log_line("error", fmt, ap);
  va_end(ap);
}

void log_warn(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  log_line("warn", fmt, ap);
  va_end(ap);
}

void log_info(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  log_line("info", fmt, ap);
  va_end(ap);
}

const char *log_http_date(void) {
  static char cached[40];
  static time_t cached_at = -1;
  time_t now = time(NULL);
  if (now != cached_at) {
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(cached, sizeof cached, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    cached_at = now;
  }
  return cached;
}
