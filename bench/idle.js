// Idle keep-alive client for `make bench`: opens N raw TCP connections to
// 127.0.0.1:PORT (at most CONCURRENCY connecting at once), sends one
// `GET /hello` on each, checks every response is `200` with body
// `Hello, World!`, then keeps all sockets open and idle.
// Prints `ready ok=N failed=F` once every connection has answered (or failed);
// bench/run then samples the server's RSS and sends SIGTERM, upon which the
// client prints `closed_by_server=K` (connections the server dropped while
// idle), closes everything and exits.
// Usage: node bench/idle.js PORT N [CONCURRENCY] [DEADLINE_SEC]
'use strict';
const net = require('net');

const port = Number(process.argv[2]);
const total = Number(process.argv[3] || 10000);
const concurrency = Number(process.argv[4] || 200);
const deadlineSec = Number(process.argv[5] || 90);
const REQUEST = 'GET /hello HTTP/1.1\r\nHost: x\r\n\r\n';

const sockets = [];
let started = 0, ok = 0, failed = 0, inflight = 0, closedByServer = 0;
let ready = false, stopping = false;
const errors = new Map();

function noteError(what) {
  errors.set(what, (errors.get(what) || 0) + 1);
}

// Returns true once `buf` holds a whole response; sets s.valid.
function complete(s) {
  const end = s.buf.indexOf('\r\n\r\n');
  if (end < 0) return false;
  const head = s.buf.slice(0, end);
  const m = /\r\ncontent-length:\s*(\d+)/i.exec(head);
  const len = m ? Number(m[1]) : 0;
  if (s.buf.length < end + 4 + len) return false;
  const body = s.buf.slice(end + 4, end + 4 + len);
  s.valid = /^HTTP\/1\.1 200 /.test(head) && body === 'Hello, World!';
  return true;
}

function finishOne(s, good, why) {
  if (s.done) return;
  s.done = true;
  inflight--;
  if (good) ok++; else { failed++; noteError(why); }
  pump();
}

function openOne() {
  started++;
  inflight++;
  const s = net.connect({ host: '127.0.0.1', port });
  s.buf = '';
  s.done = false;
  sockets.push(s);
  s.setEncoding('latin1');
  s.on('connect', () => s.write(REQUEST));
  s.on('data', (d) => {
    if (s.done) return;
    s.buf += d;
    if (complete(s)) finishOne(s, s.valid, 'bad response');
  });
  s.on('error', (e) => finishOne(s, false, e.code || e.message));
  s.on('close', () => {
    if (!s.done) finishOne(s, false, 'closed before response');
    else if (!stopping) closedByServer++;
  });
}

function pump() {
  while (inflight < concurrency && started < total) openOne();
  if (!ready && ok + failed === total) {
    ready = true;
    const errs = [...errors].map(([k, v]) => `${k}:${v}`).join(',');
    console.log(`ready ok=${ok} failed=${failed}${errs ? ' errors=' + errs : ''}`);
  }
}

function stop(code) {
  stopping = true;
  console.log(`closed_by_server=${closedByServer}`);
  for (const s of sockets) s.destroy();
  process.exit(code);
}

process.on('SIGTERM', () => stop(0));
process.on('SIGINT', () => stop(0));
// Bounded: never outlive the runner by more than the deadline.
setTimeout(() => {
  if (!ready) console.log(`timeout ok=${ok} failed=${failed} pending=${total - ok - failed}`);
  stop(1);
}, deadlineSec * 1000).unref();
// Keep the process alive while idle (sockets alone would, but be explicit).
setInterval(() => {}, 1 << 30);

pump();
