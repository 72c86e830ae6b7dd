// Hot-reload client for `make bench` (Node's own `fs` and `http`, no
// packages): rewrites the route file APPDIR/version.lua REWRITES times while
// a poller asks GET /version on 127.0.0.1:PORT, and measures for each rewrite
// the time from the file's replacement to the first response showing the new
// version.
//
// Rewrite k (1..REWRITES) writes a route answering "version k\n" to
// APPDIR/.version.lua.tmp (a dot file, which moonring never loads), then
// renames it over APPDIR/version.lua, as editors save: the route file is
// replaced whole, never seen half-written. t0 = just before the rename, on
// this process's monotonic clock. The poller is one keep-alive connection
// (http.Agent, maxSockets 1) sending GET /version 1 ms after each answer;
// the latency of rewrite k = the receive time of the first response whose
// body is "version k\n" − t0. The poller starts by checking the server shows
// "version 0" (bench/run writes that file). After a rewrite is seen, PAUSE_MS
// of quiet, then the next one; a rewrite not seen within TIMEOUT_MS counts
// as missed (the next rewrite follows anyway).
//
// Every poll is checked: status 200 and a body "version N\n" with N never
// going back (a regression = a response from older code after newer code
// answered). Socket errors, other statuses, malformed bodies and regressions
// are counted as failed polls.
//
// Prints `rewrite K LATENCY_MS` per rewrite (or `rewrite K missed`), then
//   result rewrites=.. seen=.. missed=.. p50_ms=.. p99_ms=.. max_ms=.. min_ms=..
//          polls=.. poll_failed=..(what:count,..) regressions=..
// and `done`, and exits (status 0 when nothing missed or failed). Bounded by
// DEADLINE_SEC in any case.
// Usage: node bench/reload-client.js PORT APPDIR [REWRITES] [PAUSE_MS] [TIMEOUT_MS] [DEADLINE_SEC]
'use strict';
const fs = require('fs');
const http = require('http');
const path = require('path');

const port = Number(process.argv[2]);
const appDir = process.argv[3];
const rewrites = Number(process.argv[4] || 50);
const pauseMs = Number(process.argv[5] || 150);
const timeoutMs = Number(process.argv[6] || 5000);
const deadlineSec = Number(process.argv[7] || 120);

const nowMs = () => Number(process.hrtime.bigint()) / 1e6;
const target = path.join(appDir, 'version.lua');
const temp = path.join(appDir, '.version.lua.tmp');

const source = (k) =>
  `-- written by bench/reload-client.js: rewrite ${k}\n` +
  'return function(req)\n' +
  `  return { status = 200, headers = { ["content-type"] = "text/plain" }, body = "version ${k}\\n" }\n` +
  'end\n';

// ---- poller
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
let polls = 0, failed = 0, regressions = 0, newest = -1, stopping = false;
const failures = new Map();
const fail = (what) => { failed++; failures.set(what, (failures.get(what) || 0) + 1); };
let onVersion = null;          // (version, receiveMs) => void, set by the rewriter

function poll() {
  if (stopping) return;
  let settled = false;
  const next = (what) => {            // once per request: count, then poll again
    if (settled) return;
    settled = true;
    polls++;
    if (what) fail(what);
    setTimeout(poll, 1);
  };
  const req = http.get({ host: '127.0.0.1', port, path: '/version', agent }, (res) => {
    let body = '';
    res.setEncoding('latin1');
    res.on('data', (d) => { body += d; });
    res.on('end', () => {
      const now = nowMs();
      const m = /^version (\d+)\n$/.exec(body);
      if (res.statusCode !== 200) return next(`status ${res.statusCode}`);
      if (!m) return next('bad body');
      const v = Number(m[1]);
      if (v < newest) { regressions++; return next('regression'); }
      newest = v;
      if (onVersion) onVersion(v, now);
      next();
    });
    res.on('error', (e) => next(e.code || e.message));
  });
  req.on('error', (e) => next(e.code || e.message));
}

// ---- rewriter
const latencies = [];
let missed = 0;

function waitFor(version, limitMs) {       // resolves with the receive time, or null
  return new Promise((resolve) => {
    const timer = setTimeout(() => { onVersion = null; resolve(null); }, limitMs);
    onVersion = (v, at) => {
      if (v >= version) { clearTimeout(timer); onVersion = null; resolve(at); }
    };
  });
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function pct(sorted, p) {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

async function main() {
  poll();
  if ((await waitFor(0, timeoutMs)) === null || newest !== 0) {
    console.log(`start: the server answered ${newest < 0 ? 'no version' : 'version ' + newest}, not "version 0"`);
    return finish();
  }
  for (let k = 1; k <= rewrites; k++) {
    await sleep(pauseMs);
    fs.writeFileSync(temp, source(k));
    const t0 = nowMs();
    fs.renameSync(temp, target);
    const seen = await waitFor(k, timeoutMs);
    if (seen === null) { missed++; console.log(`rewrite ${k} missed`); continue; }
    latencies.push(seen - t0);
    console.log(`rewrite ${k} ${(seen - t0).toFixed(3)}`);
  }
  finish();
}

function finish() {
  stopping = true;
  const lat = Float64Array.from(latencies).sort();
  const f = (v) => (Number.isFinite(v) ? v.toFixed(3) : 'nan');
  const fl = [...failures].map(([k, v]) => `${k}:${v}`).join(',');
  console.log(`result rewrites=${rewrites} seen=${lat.length} missed=${missed}` +
    ` p50_ms=${f(pct(lat, 50))} p99_ms=${f(pct(lat, 99))} max_ms=${f(lat[lat.length - 1])} min_ms=${f(lat[0])}` +
    ` polls=${polls} poll_failed=${failed}${fl ? '(' + fl + ')' : ''} regressions=${regressions}`);
  console.log('done');
  agent.destroy();
  process.exit(missed || failed ? 1 : 0);
}

process.on('SIGTERM', () => { console.log('interrupted'); finish(); });
setTimeout(() => { console.log('timeout'); finish(); }, deadlineSec * 1000).unref();

main();
