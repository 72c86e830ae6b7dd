// SSE fan-out client for `make bench` (Node's own `net` and `http`, no
// packages): opens SUBS subscriptions to GET /events on 127.0.0.1:PORT (at
// most CONCURRENCY connecting at once) and checks each answers 200
// text/event-stream; then one publisher POSTs RATE events a second to
// /publish for SECONDS seconds (one keep-alive connection), each body
// "SEQ MS" with MS the send time on this process's monotonic clock
// (process.hrtime, in ms). Every subscriber parses its stream and records,
// per event, latency = receive time − MS (same process, same clock). The
// receive time is taken when this process gets to the socket, so the latency
// includes the client's own time to go through SUBS sockets on one core.
//
// Prints, in order:
//   ready ok=N failed=F [errors=...]     every subscription answered (or not)
//   result subs=.. events=.. expected=.. delivered=.. missing=.. bad=..
//          p50_ms=.. p99_ms=.. max_ms=.. ...   once the last event reached every
//          subscriber, or GRACE (10) seconds after it was published; events
//          not in by then count as missing
//   per_event_p50/max_ms ...              median and slowest delivery per event
//   done
// then keeps every subscription open (bench/run samples the server's RSS)
// until SIGTERM, upon which it prints `closed_by_server=K` (subscriptions the
// server ended early) and exits. Bounded by DEADLINE_SEC in any case.
// Usage: node bench/sse-clients.js PORT SUBS SECONDS [RATE] [CONCURRENCY] [DEADLINE_SEC]
'use strict';
const http = require('http');
const net = require('net');

const port = Number(process.argv[2]);
const total = Number(process.argv[3] || 5000);
const seconds = Number(process.argv[4] || 10);
const rate = Number(process.argv[5] || 10);
const concurrency = Number(process.argv[6] || 200);
const deadlineSec = Number(process.argv[7] || 120);
const events = Math.max(1, Math.round(seconds * rate));
const GRACE = 10;     // seconds to wait for the last event after publishing it

const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

const subs = [];
let started = 0, ok = 0, failed = 0, inflight = 0, closedByServer = 0;
let ready = false, finished = false, stopping = false;
const errors = new Map();
const noteError = (what) => errors.set(what, (errors.get(what) || 0) + 1);

// Delivery bookkeeping: latencies[] holds one sample per delivered event.
const latencies = new Float64Array(total * events);
const bySeq = Array.from({ length: events + 1 }, () => []);   // for the per-event line
let delivered = 0, bad = 0, dups = 0, gotLast = 0;

function onEvent(sub, block, now) {
  let data = null;
  for (const line of block.split('\n')) {
    if (line.startsWith('data:')) {
      const v = line.slice(line[5] === ' ' ? 6 : 5);
      data = data === null ? v : data + '\n' + v;
    }
    // comments (":..."), id:, event:, retry: carry nothing we measure
  }
  if (data === null) return;
  const m = /^(\d+) ([\d.]+)$/.exec(data);
  const seq = m ? Number(m[1]) : 0;
  if (!m || seq < 1 || seq > events) { bad++; return; }
  if (sub.seen[seq]) { dups++; return; }
  sub.seen[seq] = 1;
  const ms = now - Number(m[2]);
  latencies[delivered++] = ms;
  bySeq[seq].push(ms);
  if (seq === events) { gotLast++; maybeFinish(); }
}

// A subscription is a raw TCP connection (`net`): the `http` client's
// per-chunk stream machinery costs ~30 µs per delivered event, which at
// 5,000 subscribers × 10 events/s saturates the load generator's core and
// measures the client instead of the server. The head, the chunked framing
// and the event stream are parsed here.
const REQUEST = 'GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n';

function openOne() {
  started++;
  inflight++;
  const sub = { seen: new Uint8Array(events + 1), raw: '', buf: '', head: true, chunked: false,
                need: -1, settled: false, sock: null };
  subs.push(sub);
  const settle = (good, why) => {
    if (sub.settled) return;
    sub.settled = true;
    inflight--;
    if (good) ok++; else { failed++; noteError(why); }
    pump();
  };
  const s = net.connect({ host: '127.0.0.1', port });
  sub.sock = s;
  s.setEncoding('latin1');
  s.on('connect', () => s.write(REQUEST));
  s.on('data', (d) => {
    const now = nowMs();
    sub.raw += d;
    if (sub.head) {
      const end = sub.raw.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = sub.raw.slice(0, end);
      sub.raw = sub.raw.slice(end + 4);
      sub.head = false;
      const status = /^HTTP\/1\.[01] (\d+)/.exec(head);
      const type = /\r\ncontent-type:\s*([^\r]*)/i.exec(head);
      if (!status || status[1] !== '200' || !type || !type[1].startsWith('text/event-stream')) {
        settle(false, `status ${status ? status[1] : '?'} ${type ? type[1] : ''}`);
        s.destroy();
        return;
      }
      sub.chunked = /\r\ntransfer-encoding:\s*chunked/i.test(head);
      settle(true);
    }
    // De-chunk what arrived into sub.buf (close-delimited bodies pass as is).
    if (!sub.chunked) { sub.buf += sub.raw; sub.raw = ''; }
    while (sub.chunked && sub.raw.length) {
      if (sub.need < 0) {                        // a chunk-size line
        const eol = sub.raw.indexOf('\r\n');
        if (eol < 0) break;
        sub.need = parseInt(sub.raw.slice(0, eol), 16);
        sub.raw = sub.raw.slice(eol + 2);
        if (sub.need === 0) { sub.raw = ''; break; }   // the body ended
      }
      if (sub.raw.length < sub.need + 2) break;  // data + CRLF not all here yet
      sub.buf += sub.raw.slice(0, sub.need);
      sub.raw = sub.raw.slice(sub.need + 2);
      sub.need = -1;
    }
    let end;
    while ((end = sub.buf.indexOf('\n\n')) >= 0) {
      const block = sub.buf.slice(0, end);
      sub.buf = sub.buf.slice(end + 2);
      onEvent(sub, block, now);
    }
  });
  s.on('error', (e) => { if (!sub.settled) settle(false, e.code || e.message); });
  s.on('close', () => {
    if (!sub.settled) settle(false, 'closed before response');
    else if (!stopping) closedByServer++;
  });
}

function pump() {
  while (inflight < concurrency && started < total) openOne();
  if (!ready && ok + failed === total) {
    ready = true;
    const errs = [...errors].map(([k, v]) => `${k}:${v}`).join(',');
    console.log(`ready ok=${ok} failed=${failed}${errs ? ' errors=' + errs : ''}`);
    setTimeout(publishAll, 1000);   // let the server settle with everyone subscribed
  }
}

// ---- publisher: one keep-alive connection of its own.
const pubAgent = new http.Agent({ keepAlive: true, maxSockets: 1 });
let pubOk = 0, pubErr = 0, pubMaxMs = 0, pubMinSubs = Infinity, pubMaxSubs = 0, pubDropped = 0;
let pubStart = 0, pubEnd = 0;
const pubErrors = new Map();

function publish(seq) {
  const t = nowMs();
  const body = `${seq} ${t.toFixed(3)}`;
  const req = http.request({ host: '127.0.0.1', port, path: '/publish', method: 'POST', agent: pubAgent,
                             headers: { 'content-type': 'text/plain', 'content-length': body.length } }, (res) => {
    let text = '';
    res.setEncoding('latin1');
    res.on('data', (d) => { text += d; });
    res.on('end', () => {
      pubMaxMs = Math.max(pubMaxMs, nowMs() - t);
      const m = /^subscribers (\d+) dropped (\d+)\n$/.exec(text);
      if (res.statusCode === 200 && m) {
        pubOk++;
        pubMinSubs = Math.min(pubMinSubs, Number(m[1]));
        pubMaxSubs = Math.max(pubMaxSubs, Number(m[1]));
        pubDropped += Number(m[2]);
      } else {
        pubErr++;
        pubErrors.set(`status ${res.statusCode}`, (pubErrors.get(`status ${res.statusCode}`) || 0) + 1);
      }
    });
  });
  req.on('error', (e) => { pubErr++; pubErrors.set(e.code || e.message, (pubErrors.get(e.code || e.message) || 0) + 1); });
  req.end(body);
}

function publishAll() {
  pubStart = nowMs();
  let seq = 0;
  const next = () => {
    seq++;
    publish(seq);
    if (seq === events) {
      pubEnd = nowMs();
      setTimeout(finish, GRACE * 1000);
      return;
    }
    // on schedule (start + seq / rate), whatever the lag of this timer
    setTimeout(next, Math.max(0, pubStart + (seq * 1000) / rate - nowMs()));
  };
  next();
}

function maybeFinish() {
  if (pubEnd && gotLast === ok) setImmediate(finish);
}

function pct(sorted, p) {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

function finish() {
  if (finished) return;
  finished = true;
  const lat = latencies.slice(0, delivered).sort();
  const f = (v) => (Number.isFinite(v) ? v.toFixed(3) : 'nan');
  const expected = total * events;
  const pe = [...pubErrors].map(([k, v]) => `${k}:${v}`).join(',');
  console.log(`result subs=${total} connected=${ok} events=${events} expected=${expected}` +
    ` delivered=${delivered} missing=${expected - delivered} bad=${bad} dup=${dups}` +
    ` p50_ms=${f(pct(lat, 50))} p99_ms=${f(pct(lat, 99))} max_ms=${f(lat.length ? lat[lat.length - 1] : NaN)}` +
    ` publish_ok=${pubOk} publish_err=${pubErr}${pe ? '(' + pe + ')' : ''}` +
    ` publish_max_ms=${f(pubMaxMs)} publish_seconds=${f((pubEnd - pubStart) / 1000)}` +
    ` server_subs=${pubMinSubs === Infinity ? 'nan' : pubMinSubs}..${pubMaxSubs} server_dropped=${pubDropped}` +
    ` closed_by_server=${closedByServer}`);
  // Per event (in publish order): the median and the slowest delivery, ms.
  const per = [];
  for (let i = 1; i <= events; i++) {
    const a = Float64Array.from(bySeq[i]).sort();
    per.push(a.length ? `${pct(a, 50).toFixed(0)}/${a[a.length - 1].toFixed(0)}` : '-');
  }
  console.log(`per_event_p50/max_ms ${per.join(' ')}`);
  console.log('done');
}

function stop(code) {
  stopping = true;
  console.log(`closed_by_server=${closedByServer}`);
  for (const s of subs) s.sock.destroy();
  process.exit(code);
}

process.on('SIGTERM', () => stop(0));
process.on('SIGINT', () => stop(0));
setTimeout(() => {
  if (!ready) console.log(`timeout ok=${ok} failed=${failed} pending=${total - ok - failed}`);
  else if (!finished) { console.log('timeout while publishing'); finish(); }
  stop(1);
}, deadlineSec * 1000).unref();
setInterval(() => {}, 1 << 30);

pump();
