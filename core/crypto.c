/* crypto.c — the few primitives signed cookies and CSRF tokens need, from
 * libcrypto (Debian's libssl-dev): HMAC-SHA256, random bytes from the
 * system's CSPRNG, a comparison whose time does not depend on where two
 * strings differ, and base64url (RFC 4648 §5, no padding).
 *
 *   core.hmac_sha256(key, data) → 32 raw bytes
 *   core.random_bytes(n)        → n bytes (1 ≤ n ≤ 4096; other n raise)
 *   core.equal(a, b)            → boolean (false when the lengths differ)
 *   core.b64url_encode(s)       → text
 *   core.b64url_decode(text)    → s, or nil for anything not canonical
 *
 * Everything works on Lua strings and Lua buffers; nothing here holds
 * memory past the call. */
#include "request.h"
#include <lauxlib.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <string.h>

#define RANDOM_MAX 4096

static int l_hmac_sha256(lua_State *L) {
  size_t klen, dlen;
  const char *key = luaL_checklstring(L, 1, &klen);
  const char *data = luaL_checklstring(L, 2, &dlen);
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int olen = 0;
  if (!HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)data, dlen, out, &olen))
    return luaL_error(L, "hmac_sha256: libcrypto failed");
  lua_pushlstring(L, (const char *)out, olen);
  return 1;
}

static int l_random_bytes(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 1 && n <= RANDOM_MAX, 1, "expected a count from 1 to 4096");
  unsigned char buf[RANDOM_MAX];
  if (RAND_bytes(buf, (int)n) != 1) {
    lua_pushnil(L);
    lua_pushliteral(L, "random_bytes: the system's random source failed");
    return 2;
  }
  lua_pushlstring(L, (const char *)buf, (size_t)n);
  OPENSSL_cleanse(buf, (size_t)n);
  return 1;
}

static int l_equal(lua_State *L) {
  size_t alen, blen;
  const char *a = luaL_checklstring(L, 1, &alen);
  const char *b = luaL_checklstring(L, 2, &blen);
  lua_pushboolean(L, alen == blen && CRYPTO_memcmp(a, b, alen) == 0);
  return 1;
}

static const char b64url[] =
  "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int l_b64url_encode(lua_State *L) {
  size_t len;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &len);
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, (len + 2) / 3 * 4);
  size_t o = 0, i = 0;
  for (; i + 3 <= len; i += 3) {
    uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
    out[o++] = b64url[v >> 18];
    out[o++] = b64url[(v >> 12) & 63];
    out[o++] = b64url[(v >> 6) & 63];
    out[o++] = b64url[v & 63];
  }
  if (len - i == 1) {
    uint32_t v = (uint32_t)s[i] << 16;
    out[o++] = b64url[v >> 18];
    out[o++] = b64url[(v >> 12) & 63];
  } else if (len - i == 2) {
    uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
    out[o++] = b64url[v >> 18];
    out[o++] = b64url[(v >> 12) & 63];
    out[o++] = b64url[(v >> 6) & 63];
  }
  luaL_pushresultsize(&b, o);
  return 1;
}

/* The 6-bit value of a base64url character, or -1. */
static int b64url_value(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

/* Only the one spelling encode gives is accepted: no padding, no other
 * characters, and unused low bits of the last character zero. */
static int l_b64url_decode(lua_State *L) {
  size_t len;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &len);
  if (len % 4 == 1) { lua_pushnil(L); return 1; }
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, len / 4 * 3 + 2);
  size_t o = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < len; i++) {
    int v = b64url_value(s[i]);
    if (v < 0) { lua_pushnil(L); return 1; }
    acc = (acc << 6) | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (char)((acc >> bits) & 0xff);
      acc &= (1u << bits) - 1;
    }
  }
  if (acc != 0) { lua_pushnil(L); return 1; }
  luaL_pushresultsize(&b, o);
  return 1;
}

const luaL_Reg crypto_funcs[] = {
  {"hmac_sha256", l_hmac_sha256},
  {"random_bytes", l_random_bytes},
  {"equal", l_equal},
  {"b64url_encode", l_b64url_encode},
  {"b64url_decode", l_b64url_decode},
  {NULL, NULL},
};
