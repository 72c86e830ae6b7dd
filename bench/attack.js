// Hostile clients for bench/hold (Node's own `net`, no packages). Every
// connection goes to 127.0.0.1:PORT; nothing else is touched.
//
// Modes:
//   slowloris  N connections, each sending a request head one byte every
//              INTERVAL seconds ("GET /hello HTTP/1.1\r\nHost: ...\r\nX-Pad: aaa..."),
//              never finishing it. Reads whatever the server says (a 408).
//   slowbody   N connections, each sending "POST PATH" with Content-Length:
//              LENGTH, then BYTES bytes of body every INTERVAL seconds, never
//              finishing it. Reads whatever the server says.
//   slowread   N connections, each sending "GET PATH" (a large response) and
//              never reading: the socket is paused before it connects, so
//              nothing is read and the kernel buffers on both sides fill up.
//              A paused socket does not notice the server closing or
//              resetting it, so when the server let go of them is for
//              bench/hold to see (the server's descriptors); at the end they
//              are destroyed unread.
//   flood      for DURATION seconds, connections opened as fast as possible:
//              up to CONCURRENCY connecting at once, at most MAXOPEN open;
//              each sends nothing and is held until the server closes it,
//              then replaced. Counts 503s, refusals, resets, slow connects.
//
// Connections are opened with at most CONCURRENCY connecting at once. The
// client stops when every connection is closed (slowloris, slowbody), or
// HOLD seconds after the last one connected (DURATION for flood), or on
// SIGTERM, then prints
//   result mode=.. attempted=.. connected=.. connect_failed=.. closed_by_server=..
//          fin=.. reset=.. still_open=.. status=CODE:count,.. close_s_min/p50/max=..
//          all_closed_s=.. errors=what:count,..
// where close_s is the time from a connection's connect to its close by the
// server, and all_closed_s the time from the last connect to the last close
// (or "no"). A line `t=SEC open=.. closed=..` is printed every second.
// Usage: node bench/attack.js MODE PORT N [key=value ...]
//   keys: concurrency (200) hold (20) interval (2) bytes (1) path length
//         (1000000) duration (15) maxopen (4000) deadline (120)
'use strict';
const net = require('net');

const mode = process.argv[2];
const port = Number(process.argv[3]);
const total = Number(process.argv[4] || 1000);
const opt = { concurrency: 200, hold: 20, interval: 2, bytes: 1, path: '', length: 1000000,
              duration: 15, maxopen: 4000, deadline: 120 };
for (const a of process.argv.slice(5)) {
  const i = a.indexOf('=');
  if (i < 0 || !(a.slice(0, i) in opt)) { console.error(`attack.js: bad option ${a}`); process.exit(2); }
  const k = a.slice(0, i), v = a.slice(i + 1);
  opt[k] = typeof opt[k] === 'number' ? Number(v) : v;
}
if (!['slowloris', 'slowbody', 'slowread', 'flood'].includes(mode) || !port) {
  console.error('usage: node bench/attack.js slowloris|slowbody|slowread|flood PORT N [key=value ...]');
  process.exit(2);
}
if (!opt.path) opt.path = mode === 'slowbody' ? '/publish' : mode === 'slowread' ? '/stream?mib=64' : '/hello';

const t0 = process.hrtime.bigint();
const now = () => Number(process.hrtime.bigint() - t0) / 1e9;   // seconds since start

const conns = [];            // every connection record
let attempted = 0, pending = 0, open = 0, lastConnect = 0;
let stopping = false, finished = false, allConnectedAt = 0;
const errors = new Map();
const note = (m, what) => m.set(what, (m.get(what) || 0) + 1);

// The head each mode sends first (slowloris: one byte of it at a time).
const LORIS_HEAD = `GET /hello HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUser-Agent: slowloris\r\nX-Pad: `;
const BODY_HEAD = `POST ${opt.path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n` +
  `Content-Type: application/octet-stream\r\nContent-Length: ${opt.length}\r\n\r\n`;
const READ_HEAD = `GET ${opt.path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`;

function openOne() {
  attempted++;
  pending++;
  const c = { s: null, tConnect: 0, tClose: 0, connected: false, closed: false, how: '', status: '',
              sent: 0, got: 0, head: '', byClient: false };
  conns.push(c);
  const s = new net.Socket();
  c.s = s;
  if (mode === 'slowread') s.pause();             // never read (until the end)
  s.setNoDelay(true);
  // A connect not done in 3 s (accept queue full, SYN retried) is noted, not dropped.
  const slow = setTimeout(() => { if (!c.connected && !c.closed) note(errors, 'connect>3s'); }, 3000);
  s.connect({ host: '127.0.0.1', port }, () => {
    clearTimeout(slow);
    c.connected = true;
    c.tConnect = now();
    lastConnect = c.tConnect;
    pending--;
    open++;
    if (mode === 'slowloris') sendLoris(c);
    else if (mode === 'slowbody') { s.write(BODY_HEAD); sendBody(c); }
    else if (mode === 'slowread') s.write(READ_HEAD);
    pump();
  });
  s.on('data', (d) => {
    c.got += d.length;
    if (!c.status && c.head.length < 64) {
      c.head += d.toString('latin1', 0, Math.min(d.length, 64));
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(c.head);
      if (m) c.status = m[1];
    }
  });
  s.on('end', () => { if (!c.how) c.how = 'fin'; s.end(); });
  s.on('error', (e) => { if (!c.how) c.how = e.code === 'ECONNRESET' ? 'reset' : (e.code || e.message); });
  s.on('close', () => {
    clearTimeout(slow);
    if (c.closed) return;
    c.closed = true;
    c.tClose = now();
    c.s = null;                                   // let a closed socket go (flood makes many)
    if (c.connected) open--;
    else { pending--; note(errors, `connect:${c.how || 'closed'}`); }
    if (c.connected && !c.byClient && !c.how) c.how = 'fin';
    pump();
    checkDone();
  });
}

// Slow senders: one pass over every connection per tick, each connection
// sending on its own phase (index modulo the ticks in an interval).
const TICK_MS = 100;
let tick = 0;
function sendLoris(c) {
  const i = c.sent;
  const b = i < LORIS_HEAD.length ? LORIS_HEAD[i] : 'a';
  c.sent++;
  c.s.write(b);
}
function sendBody(c) {
  if (c.sent + opt.bytes >= opt.length) return;  // never finish it
  c.sent += opt.bytes;
  c.s.write('x'.repeat(opt.bytes));
}
function slowTick() {
  if (stopping) return;
  tick++;
  const per = Math.max(1, Math.round((opt.interval * 1000) / TICK_MS));
  for (let i = tick % per; i < conns.length; i += per) {
    const c = conns[i];
    if (!c.connected || c.closed) continue;
    if (mode === 'slowloris') sendLoris(c);
    else sendBody(c);
  }
}

function pump() {
  if (stopping) return;
  if (mode === 'flood') {
    if (now() >= opt.duration) { finish(); return; }
    while (pending < opt.concurrency && pending + open < opt.maxopen) openOne();
    return;
  }
  while (pending < opt.concurrency && attempted < total) openOne();
  if (!allConnectedAt && attempted === total && pending === 0) {
    allConnectedAt = now();
    const ok = conns.filter((c) => c.connected).length;
    console.log(`ready t=${allConnectedAt.toFixed(2)} epoch=${(Date.now() / 1000).toFixed(3)} connected=${ok} failed=${total - ok}`);
    setTimeout(finish, opt.hold * 1000);
  }
}

function checkDone() {
  if (mode === 'flood' || mode === 'slowread' || !allConnectedAt || stopping) return;
  if (open === 0) setImmediate(finish);
}

function pct(sorted, p) {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

function finish() {
  if (finished) return;
  finished = true;
  report();
}

function report() {
  stopping = true;
  const t = now();
  const byServer = conns.filter((c) => c.connected && c.closed);
  const still = conns.filter((c) => c.connected && !c.closed);
  const status = new Map(), how = new Map();
  for (const c of conns) if (c.connected) note(status, c.status || 'none');
  for (const c of byServer) note(how, c.how);
  const lat = byServer.map((c) => c.tClose - c.tConnect).sort((a, b) => a - b);
  const f = (v) => (Number.isFinite(v) ? v.toFixed(2) : 'nan');
  const list = (m) => [...m].map(([k, v]) => `${k}:${v}`).join(',') || '-';
  const lastClose = byServer.reduce((m, c) => Math.max(m, c.tClose), 0);
  let extra = '';
  if (mode === 'flood') {
    extra = ` duration_s=${f(opt.duration)} conns_per_s=${f(attempted / Math.max(t, 1e-3))}`;
  }
  console.log(`result mode=${mode} attempted=${attempted} connected=${conns.filter((c) => c.connected).length}` +
    ` connect_failed=${conns.filter((c) => !c.connected).length} closed_by_server=${byServer.length}` +
    ` how=${list(how)} still_open=${still.length} status=${list(status)}` +
    ` close_s_min=${f(lat[0])} close_s_p50=${f(pct(lat, 50))} close_s_max=${f(lat[lat.length - 1])}` +
    ` all_closed_s=${still.length === 0 && allConnectedAt ? f(lastClose - allConnectedAt) : 'no'}` +
    ` errors=${list(errors)}${extra}`);
  for (const c of still) { c.byClient = true; c.s.destroy(); }
  console.log('done');
  setTimeout(() => process.exit(0), 50);
}

setInterval(() => {
  if (!stopping) console.log(`t=${now().toFixed(1)} attempted=${attempted} pending=${pending} open=${open} closed=${conns.filter((c) => c.closed).length}`);
}, 1000);
if (mode === 'slowloris' || mode === 'slowbody') setInterval(slowTick, TICK_MS);
process.on('SIGTERM', () => { finished = true; report(); });
process.on('SIGINT', () => { finished = true; report(); });
setTimeout(() => { console.log('deadline'); finished = true; report(); }, opt.deadline * 1000).unref();

pump();
