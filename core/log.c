/* log.c — the access log (buffered, flushed once per loop iteration by the
 * server's check handle) and the error log (stderr, unbuffered), plus the
 * cached HTTP Date value. Owns the access log FILE. */
#include "moonring.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static FILE *access_file;       /* NULL: access log off */
static int access_dirty;

int log_open(const char *access_log) {
  if (!access_log) return 0;
  if (strcmp(access_log, "-") == 0) {
    access_file = stderr;
  } else {
    access_file = fopen(access_log, "a");
    if (!access_file) return -1;
  }
  /* Full buffering: many requests per loop iteration cost one write. */
  static char buffer[64 * 1024];
  setvbuf(access_file, buffer, _IOFBF, sizeof buffer);
  return 0;
}

static void iso_time(char out[32]) {
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int log_access_enabled(void) { return access_file != NULL; }

void log_access(const char *remote, const char *method, size_t mlen, const char *target,
                size_t tlen, int major, int minor, int status, uint64_t bytes,
                uint64_t start_ns, uint64_t id) {
  if (!access_file) return;
  char when[32];
  iso_time(when);
  double ms = (double)(uv_hrtime() - start_ns) / 1e6;
  fprintf(access_file, "%s %s \"%.*s %.*s HTTP/%d.%d\" %d %llu %.3fms id=%llu\n", when, remote,
          (int)mlen, method, (int)tlen, target, major, minor, status, (unsigned long long)bytes, ms,
          (unsigned long long)id);
  access_dirty = 1;
}

void log_flush(void) {
  /* When the access log is stderr, stderr is fully buffered: what handlers
   * write there (io.stderr) must not wait for the next access line. */
  if (access_dirty || access_file == stderr) {
    fflush(access_file);
    access_dirty = 0;
  }
}

static void log_line(const char *level, const char *fmt, va_list ap) {
  log_flush();                  /* keep the two logs in order when both go to stderr */
  char when[32];
  iso_time(when);
  char line[8192];
  vsnprintf(line, sizeof line, fmt, ap);
  fprintf(stderr, "%s [%s] %s\n", when, level, line);
  fflush(stderr);                 /* stderr may be the fully buffered access log */
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
