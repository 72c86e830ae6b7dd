/* head.c — response heads: reason phrases, the status line, Date,
 * Content-Length and Connection lines, and whole short text/plain answers
 * (the server's own 4xx/5xx). One scratch buffer serves every head: a head is
 * built and written before the next one starts. */
#include "http.h"
#include <stdlib.h>

static mr_buf head;

const char *head_reason(int status) {
  switch (status) {
  case 100: return "Continue";
  case 101: return "Switching Protocols";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 206: return "Partial Content";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 303: return "See Other";
  case 304: return "Not Modified";
  case 307: return "Temporary Redirect";
  case 308: return "Permanent Redirect";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 410: return "Gone";
  case 413: return "Content Too Large";
  case 414: return "URI Too Long";
  case 415: return "Unsupported Media Type";
  case 422: return "Unprocessable Content";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  case 505: return "HTTP Version Not Supported";
  default: return status < 200 ? "Informational" : status < 300 ? "OK" : status < 400 ? "Redirect"
                : status < 500 ? "Client Error" : "Server Error";
  }
}


mr_buf *head_start(int status) {
  head.len = 0;
  mr_buf_lit(&head, "HTTP/1.1 ");
  head_uint(&head, (uint64_t)status);
  mr_buf_lit(&head, " ");
  const char *reason = head_reason(status);
  mr_buf_append(&head, reason, strlen(reason));
  mr_buf_lit(&head, "\r\n");
  return &head;
}




size_t head_simple(mr_conn *c, int status, const char *body, const char *extra, unsigned exflags) {
  size_t blen = strlen(body);
  mr_buf *b = head_start(status);
  head_date(b);
  mr_buf_lit(b, "Content-Type: text/plain; charset=utf-8\r\n");
  head_length(b, blen);
  mr_buf_append(b, extra, strlen(extra));
  head_connection(b, exflags);
  mr_buf_lit(b, "\r\n");
  if (exflags & EX_IS_HEAD) blen = 0;        /* the length a GET would get, no body */
  uv_buf_t bufs[2] = {uv_buf_init(b->data, (unsigned)b->len), uv_buf_init((char *)body, (unsigned)blen)};
  conn_write(c, bufs, blen ? 2 : 1);
  return blen;
}

void head_free(void) { mr_buf_free(&head); }
