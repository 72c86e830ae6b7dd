/* channel.c — moonring.channel([size]) and moonring.select{...}. A channel is
 * a userdata (collected by Lua like any value) holding its buffered values in
 * a ring in its user value table, and two wait queues: tasks parked in take
 * and tasks parked in put. A put meets a parked taker and hands its value
 * over directly; a take meets a parked putter and takes its value from the
 * putter's own stack (the value waits there, where the put call left it).
 * Completing someone else's wait only queues that task.
 *
 * select parks one task on several operations at once: a node per channel
 * operation (in a userdata kept on the selecting frame's stack, so it lives
 * as long as the wait) and at most one timer, for the earliest timeout. The
 * first operation to complete unlinks the others. */
#include "request.h"
#include <stdlib.h>

#define CHANNEL_MT "moonring.channel"

typedef struct mr_channel {
  lua_Integer size;             /* capacity of the buffer; 0: unbuffered */
  lua_Integer head, count;      /* ring over user value 1, slots 1..size */
  int closed;
  mr_waitq takers, putters;
} mr_channel;

typedef struct mr_select {
  lua_State *co;                /* the coroutine waiting in select */
  uv_timer_t *timer;            /* for the earliest timeout; NULL if none */
  int timeout_idx;              /* that timeout object's stack index in `co` */
  int n;                        /* nodes in use */
  mr_wnode nodes[];             /* one per channel operation */
} mr_select;

static mr_channel *check_channel(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, CHANNEL_MT);
}

static mr_channel *test_channel(lua_State *L, int idx) {
  return luaL_testudata(L, idx, CHANNEL_MT);
}

/* ---- completing waits ------------------------------------------------- */

static void select_unlink(mr_select *s);

/* The wait `n` is over: `nvals` values are on its task's coroutine. */
static void complete(mr_wnode *n, int nvals) {
  mr_task *t = n->task;
  waitq_remove(n);
  if (t->wait == WAIT_SELECT) select_unlink(t->wait_data);
  task_wake(t, nvals);
}

/* For a select node, its results start with the channel (at chidx in L). */
static int push_op(lua_State *L, int chidx, mr_wnode *n) {
  if (!n->index) return 0;
  lua_pushvalue(L, chidx);
  lua_xmove(L, n->task->co, 1);
  return 1;
}

/* A parked take gets the value on top of L (popped). */
static void give_to_taker(lua_State *L, int chidx, mr_wnode *n) {
  lua_State *co = n->task->co;
  lua_checkstack(co, 3);
  int nv = push_op(L, chidx, n);
  lua_xmove(L, co, 1);
  complete(n, nv + 1);
}

/* A parked put is done: true, or nil, "closed". */
static void release_putter(lua_State *L, int chidx, mr_wnode *n, int ok) {
  lua_State *co = n->task->co;
  lua_checkstack(co, 4);
  int nv = push_op(L, chidx, n);
  if (ok) {
    lua_pushboolean(co, 1);
    nv++;
  } else {
    lua_pushnil(co);
    lua_pushliteral(co, "closed");
    nv += 2;
  }
  complete(n, nv);
}

/* Pushes onto L the value a parked putter offers. */
static void push_offered(lua_State *L, mr_wnode *n) {
  lua_pushvalue(n->co, n->vidx);
  lua_xmove(n->co, L, 1);
}

/* ---- the operations, when they can complete at once ------------------- */

/* Take without waiting: pushes the value (nil when closed and drained) and
 * returns 1, or returns 0 when it would have to wait. */
static int try_take(lua_State *L, mr_channel *c, int chidx) {
  if (c->count) {
    lua_getiuservalue(L, chidx, 1);
    lua_rawgeti(L, -1, c->head + 1);
    lua_pushnil(L);
    lua_rawseti(L, -3, c->head + 1);
    c->head = (c->head + 1) % c->size;
    c->count--;
    mr_wnode *p = c->putters.head;
    if (p) {                                 /* room now: the first waiting put lands */
      waitq_remove(p);
      push_offered(L, p);
      lua_rawseti(L, -3, (c->head + c->count) % c->size + 1);
      c->count++;
      release_putter(L, chidx, p, 1);
    }
    lua_remove(L, -2);
    return 1;
  }
  mr_wnode *p = c->putters.head;
  if (p) {
    waitq_remove(p);
    push_offered(L, p);
    release_putter(L, chidx, p, 1);
    return 1;
  }
  if (c->closed) {
    lua_pushnil(L);
    return 1;
  }
  return 0;
}

/* Put the value at vidx without waiting: returns 1 (done), -1 (closed) or 0
 * (it would have to wait). */
static int try_put(lua_State *L, mr_channel *c, int chidx, int vidx) {
  if (c->closed) return -1;
  mr_wnode *n = c->takers.head;
  if (n) {
    lua_pushvalue(L, vidx);
    give_to_taker(L, chidx, n);
    return 1;
  }
  if (c->count < c->size) {
    lua_getiuservalue(L, chidx, 1);
    lua_pushvalue(L, vidx);
    lua_rawseti(L, -2, (c->head + c->count) % c->size + 1);
    lua_pop(L, 1);
    c->count++;
    return 1;
  }
  return 0;
}

/* ---- channel methods -------------------------------------------------- */

static int cancelled(lua_State *L) {
  lua_pushnil(L);
  lua_pushliteral(L, "cancelled");
  return 2;
}

static void node_unqueue(mr_task *t) { waitq_remove(&t->node); }

static int take_k(lua_State *L, int status, lua_KContext ctx) {
  if (task_woke_cancelled(L)) return cancelled(L);
  return 1;                                  /* the value, pushed by whoever completed it */
}

/* ch:take() → the next value; nil once the channel is closed and drained. */
static int ch_take(lua_State *L) {
  mr_channel *c = check_channel(L, 1);
  lua_settop(L, 1);
  if (try_take(L, c, 1)) return 1;
  mr_task *t = task_check(L, "channel:take()");
  if (t->flags & TF_CANCELLED) return cancelled(L);
  task_check_yieldable(L, "channel:take()");
  t->node = (mr_wnode){.task = t, .co = L};
  waitq_push(&c->takers, &t->node);
  return task_park(L, t, WAIT_CHANNEL, node_unqueue, c, take_k, 0);
}

static int put_k(lua_State *L, int status, lua_KContext ctx) {
  if (task_woke_cancelled(L)) return cancelled(L);
  return lua_gettop(L) - 2;                  /* true, or nil, "closed" */
}

/* ch:put(v) → true once v is taken or buffered; nil, "closed" on a closed
 * channel. */
static int ch_put(lua_State *L) {
  mr_channel *c = check_channel(L, 1);
  luaL_checkany(L, 2);
  luaL_argcheck(L, !lua_isnil(L, 2), 2, "nil cannot be put on a channel (take returns nil once closed)");
  lua_settop(L, 2);
  int r = try_put(L, c, 1, 2);
  if (r > 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (r < 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  mr_task *t = task_check(L, "channel:put()");
  if (t->flags & TF_CANCELLED) return cancelled(L);
  task_check_yieldable(L, "channel:put()");
  t->node = (mr_wnode){.task = t, .co = L, .vidx = 2};
  waitq_push(&c->putters, &t->node);
  return task_park(L, t, WAIT_CHANNEL, node_unqueue, c, put_k, 0);
}

/* ch:close(): no more puts; takes drain what is buffered, then get nil. */
static int ch_close(lua_State *L) {
  mr_channel *c = check_channel(L, 1);
  lua_settop(L, 1);
  if (c->closed) return 0;
  c->closed = 1;
  while (c->takers.head) {
    lua_pushnil(L);
    give_to_taker(L, 1, c->takers.head);
  }
  while (c->putters.head) {
    mr_wnode *p = c->putters.head;
    waitq_remove(p);
    release_putter(L, 1, p, 0);
  }
  return 0;
}

static int ch_closed(lua_State *L) {
  lua_pushboolean(L, check_channel(L, 1)->closed);
  return 1;
}

static int ch_len(lua_State *L) {
  lua_pushinteger(L, check_channel(L, 1)->count);
  return 1;
}

static int ch_tostring(lua_State *L) {
  mr_channel *c = check_channel(L, 1);
  lua_pushfstring(L, "moonring.channel (%d of %d buffered%s)", (int)c->count, (int)c->size,
                  c->closed ? ", closed" : "");
  return 1;
}

/* moonring.channel([size]) → a channel; size 0 (the default) is unbuffered:
 * a put waits for a take. */
static int l_channel(lua_State *L) {
  lua_Integer size = luaL_optinteger(L, 1, 0);
  luaL_argcheck(L, size >= 0 && size <= (1 << 24), 1, "size must be 0..16777216");
  mr_channel *c = lua_newuserdatauv(L, sizeof *c, 1);
  *c = (mr_channel){.size = size};
  lua_createtable(L, (int)(size < 64 ? size : 64), 0);
  lua_setiuservalue(L, -2, 1);
  luaL_setmetatable(L, CHANNEL_MT);
  return 1;
}

/* ---- select ----------------------------------------------------------- */

static void free_cb(uv_handle_t *h) { free(h); }

static void select_unlink(mr_select *s) {
  for (int i = 0; i < s->n; i++) waitq_remove(&s->nodes[i]);
  if (s->timer) {
    uv_close((uv_handle_t *)s->timer, free_cb);
    s->timer = NULL;
  }
}

static void select_cancel(mr_task *t) { select_unlink(t->wait_data); }

static void select_timer_cb(uv_timer_t *tm) {
  mr_task *t = tm->data;
  mr_select *s = t->wait_data;
  lua_State *co = t->co;
  lua_checkstack(co, 2);
  lua_pushvalue(s->co, s->timeout_idx);      /* the timeout object, kept on select's frame */
  lua_xmove(s->co, co, 1);
  select_unlink(s);
  task_wake(t, 1);
}

static int select_k(lua_State *L, int status, lua_KContext ctx) {
  if (task_woke_cancelled(L)) return task_raise_cancelled(L);
  return lua_gettop(L) - (int)ctx;
}

/* What op i of the table at 1 is: a channel to take from, {ch, v} to put v,
 * or a timeout. Leaves the channel (take, put) or nothing on the stack, and
 * for a put the value above it. */
enum { OP_TAKE, OP_PUT, OP_TIMEOUT };

static int op_kind(lua_State *L, int i, uint64_t *deadline, int raise) {
  int type = lua_rawgeti(L, 1, i);
  if (test_channel(L, -1)) return OP_TAKE;
  if (timeout_deadline(L, -1, deadline)) {
    lua_pop(L, 1);
    return OP_TIMEOUT;
  }
  if (type == LUA_TTABLE) {
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    if (test_channel(L, -2) && !lua_isnil(L, -1)) {
      lua_remove(L, -3);
      return OP_PUT;
    }
  }
  if (!raise) return -1;
  return luaL_error(L, "moonring.select: op %d is not a channel, {channel, value} or a timeout", i);
}

/* moonring.select{ op, ... } → the op that completed first (a channel or a
 * timeout) and, for a take, the value (nil once closed), for a put true (or
 * nil, "closed"). Ops are tried in order; it waits only if none is ready. */
static int l_select(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  int nops = (int)lua_rawlen(L, 1);
  luaL_argcheck(L, nops > 0, 1, "no operations to select from");
  uint64_t now = uv_now(mr_srv.loop), earliest = UINT64_MAX;
  int timeout_op = 0, nchan = 0;
  for (int i = 1; i <= nops; i++) {
    uint64_t deadline;
    int kind = op_kind(L, i, &deadline, 1);
    int top = lua_gettop(L);
    if (kind == OP_TIMEOUT) {
      if (deadline <= now) {
        lua_rawgeti(L, 1, i);
        return 1;
      }
      if (deadline < earliest) earliest = deadline, timeout_op = i;
      continue;
    }
    nchan++;
    mr_channel *c = lua_touserdata(L, kind == OP_PUT ? top - 1 : top);
    if (kind == OP_TAKE) {
      if (try_take(L, c, top)) return 2;     /* channel, value */
    } else {
      int r = try_put(L, c, top - 1, top);
      if (r) {
        lua_pop(L, 1);                       /* the value; the channel stays */
        if (r > 0) {
          lua_pushboolean(L, 1);
          return 2;
        }
        lua_pushnil(L);
        lua_pushliteral(L, "closed");
        return 3;
      }
    }
    lua_settop(L, 1);
  }
  lua_settop(L, 1);
  mr_task *t = task_check(L, "moonring.select");
  task_check_yieldable(L, "moonring.select");
  if (t->flags & TF_CANCELLED) return task_raise_cancelled(L);
  /* Park: the nodes live in a userdata at 2; every channel (and its put
   * value, where takers find it) stays on this frame's stack, so the ops
   * table may change meanwhile without freeing a queue a node is in. */
  luaL_checkstack(L, 2 * nchan + 4, "moonring.select: too many operations");
  mr_select *s = lua_newuserdatauv(L, sizeof *s + sizeof(mr_wnode) * (size_t)nchan, 0);
  s->co = L;
  s->timer = NULL;
  s->timeout_idx = 0;
  s->n = 0;
  int changed = 0;
  for (int i = 1; i <= nops && !changed; i++) {
    uint64_t deadline;
    /* A finalizer run by the allocation above may have changed the table:
     * whatever differs from the first pass stops the select cleanly. */
    int kind = op_kind(L, i, &deadline, 0);
    if (kind < 0 || (kind != OP_TIMEOUT && s->n == nchan)) {
      changed = 1;
      break;
    }
    if (kind == OP_TIMEOUT) {
      if (i == timeout_op) {
        lua_rawgeti(L, 1, i);
        s->timeout_idx = lua_gettop(L);
      }
      continue;
    }
    mr_wnode *n = &s->nodes[s->n++];
    *n = (mr_wnode){.task = t, .co = L, .index = i};
    mr_channel *c = lua_touserdata(L, kind == OP_PUT ? -2 : -1);
    if (kind == OP_PUT) {
      n->vidx = lua_gettop(L);               /* the value, above its channel */
      waitq_push(&c->putters, n);
    } else {
      waitq_push(&c->takers, n);
    }
  }
  if (changed || (timeout_op && !s->timeout_idx)) {
    select_unlink(s);
    return luaL_error(L, "moonring.select: the ops table changed while select started");
  }
  if (timeout_op) {
    s->timer = malloc(sizeof *s->timer);
    if (!s->timer || uv_timer_init(mr_srv.loop, s->timer) < 0) {
      free(s->timer);
      s->timer = NULL;
      select_unlink(s);
      return luaL_error(L, "moonring.select: cannot start a timer");
    }
    s->timer->data = t;
    uv_timer_start(s->timer, select_timer_cb, earliest - now, 0);
  }
  return task_park(L, t, WAIT_SELECT, select_cancel, s, select_k, lua_gettop(L));
}

static const luaL_Reg channel_methods[] = {
  {"put", ch_put},
  {"take", ch_take},
  {"close", ch_close},
  {"closed", ch_closed},
  {NULL, NULL},
};

const luaL_Reg channel_funcs[] = {
  {"channel", l_channel},
  {"select", l_select},
  {NULL, NULL},
};

void channel_open(lua_State *L) {
  luaL_newmetatable(L, CHANNEL_MT);
  lua_pushcfunction(L, ch_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushcfunction(L, ch_len);
  lua_setfield(L, -2, "__len");
  luaL_newlib(L, channel_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}
