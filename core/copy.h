/* copy.h — Lua values copied between two lua_States through bytes (copy.c),
 * for code that runs in another state on another thread (thread.c): nil,
 * booleans, integers and floats (kept apart), strings, and tables of those,
 * nested. Metatables are not copied; a table met twice is copied twice; a
 * cycle, a function, a userdata or a coroutine is refused. The bytes are
 * malloc'd in an mr_buf owned by the caller (mr_buf_free). */
#ifndef MR_COPY_H
#define MR_COPY_H

#include "moonring.h"
#include <lauxlib.h>

/* Encodes the values at stack indexes first..last of L (none when first >
 * last) into `out` (empty on entry). Returns 0, or the position (1-based,
 * counted from `first`) of the value that cannot be copied, with *why
 * saying why; then `out` is left empty. Raises only memory errors, and
 * leaks nothing then. */
int copy_encode(lua_State *L, int first, int last, mr_buf *out, const char **why);

/* Pushes the values encoded in `b` onto L and returns how many. Raises only
 * memory errors. */
int copy_decode(lua_State *L, const mr_buf *b);

/* `out` (emptied first) becomes the encoding of nil, msg. */
void copy_failure(mr_buf *out, const char *msg);

#endif
