// The ordinary client of bench/hold (Node's own `http`, no packages): while
// a hostile client works on the server, two loops each send GET /hello to
// 127.0.0.1:PORT every INTERVAL_MS (the next request INTERVAL_MS after the
// previous one started, or as soon as it ended if it took longer):
//   ka   on one keep-alive connection (http.Agent, maxSockets 1), opened
//        before the attack starts and reconnected if the server closes it;
//   new  on a fresh connection per request (Connection: close), as a new
//        visitor would.
// A request is ok when it answers 200 with the body "Hello, World!" within
// TIMEOUT_MS; anything else (status, body, socket error, timeout) is a
// failure, counted by kind. Prints `ready` once both loops have had a first
// answer, then runs until SIGTERM (or DEADLINE_SEC) and prints per loop
//   result loop=ka ok=.. failed=.. p50_ms=.. p99_ms=.. max_ms=.. fail=what:count,..
//          first_fail_s=.. last_fail_s=.. max_start_epoch=..
// (times of failures in seconds since the start; when the slowest request
// started, in Unix seconds) and `done`.
// Usage: node bench/probe.js PORT [INTERVAL_MS] [TIMEOUT_MS] [DEADLINE_SEC]
'use strict';
const http = require('http');

const port = Number(process.argv[2]);
const interval = Number(process.argv[3] || 50);
const timeoutMs = Number(process.argv[4] || 5000);
const deadlineSec = Number(process.argv[5] || 300);
const BODY = 'Hello, World!';

const t0 = process.hrtime.bigint();
const nowMs = () => Number(process.hrtime.bigint() - t0) / 1e6;
let stopping = false;

function loop(name, agent, headers) {
  const st = { name, ok: 0, failed: 0, lat: [], maxMs: -1, maxAt: NaN, fails: new Map(), firstFail: NaN, lastFail: NaN, answered: false };
  const fail = (what) => {
    st.failed++;
    st.fails.set(what, (st.fails.get(what) || 0) + 1);
    const t = nowMs() / 1000;
    if (Number.isNaN(st.firstFail)) st.firstFail = t;
    st.lastFail = t;
  };
  const one = () => {
    if (stopping) return;
    const start = nowMs();
    let settled = false;
    const settle = (good, what) => {
      if (settled) return;
      settled = true;
      const ms = nowMs() - start;
      if (stopping) return;                       // cut by the end of the run: not counted
      if (good) {
        st.ok++;
        st.lat.push(ms);
        if (ms > st.maxMs) { st.maxMs = ms; st.maxAt = Date.now() / 1000 - ms / 1000; }
      } else fail(what);
      st.answered = true;
      maybeReady();
      setTimeout(one, Math.max(0, start + interval - nowMs()));
    };
    const req = http.get({ host: '127.0.0.1', port, path: '/hello', agent, headers }, (res) => {
      let body = '';
      res.setEncoding('latin1');
      res.on('data', (d) => { body += d; });
      res.on('end', () => {
        if (res.statusCode !== 200) settle(false, `http_${res.statusCode}`);
        else if (body !== BODY) settle(false, 'bad body');
        else settle(true);
      });
      res.on('error', (e) => settle(false, e.code || e.message));
    });
    req.setTimeout(timeoutMs, () => { settle(false, 'timeout'); req.destroy(); });
    req.on('error', (e) => settle(false, e.code || e.message));
  };
  st.start = one;
  return st;
}

const loops = [
  loop('ka', new http.Agent({ keepAlive: true, maxSockets: 1 }), {}),
  loop('new', false, { connection: 'close' }),
];
let ready = false;
function maybeReady() {
  if (!ready && loops.every((l) => l.answered)) { ready = true; console.log('ready'); }
}

function pct(sorted, p) {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

function stop(code) {
  if (stopping) return;
  stopping = true;
  const f = (v) => (Number.isFinite(v) ? v.toFixed(2) : 'nan');
  for (const l of loops) {
    const lat = Float64Array.from(l.lat).sort();
    console.log(`result loop=${l.name} ok=${l.ok} failed=${l.failed} p50_ms=${f(pct(lat, 50))}` +
      ` p99_ms=${f(pct(lat, 99))} max_ms=${f(lat.length ? lat[lat.length - 1] : NaN)}` +
      ` fail=${[...l.fails].map(([k, v]) => `${k}:${v}`).join(',') || '-'}` +
      ` first_fail_s=${f(l.firstFail)} last_fail_s=${f(l.lastFail)} max_start_epoch=${f(l.maxAt)}`);
  }
  console.log('done');
  setTimeout(() => process.exit(code), 20);
}

process.on('SIGTERM', () => stop(0));
process.on('SIGINT', () => stop(0));
setTimeout(() => stop(1), deadlineSec * 1000).unref();
for (const l of loops) l.start();
