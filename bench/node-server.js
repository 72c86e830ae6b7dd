// Node.js `http` peer for `make bench`: one process, the same app logic as
// bench/app/*.lua and the nginx config (bench/node-cluster.js runs it in each
// of its workers for the workers scenario). Usage: node bench/node-server.js PORT
// Prints `listening on http://127.0.0.1:PORT` once bound. GET /proxy and GET
// /redis use the bench's upstream nginx and redis-server on the ports in
// BENCH_UPSTREAM_PORT and BENCH_REDIS_PORT (set by bench/run).
'use strict';
const fs = require('fs');
const http = require('http');
const RespClient = require('./node-resp.js');

const port = Number(process.argv[2] || 0);

// GET /proxy: the upstream's GET /upstream, over at most 64 pooled
// keep-alive connections (as nginx's `keepalive 64` and moonring's pool).
const UPSTREAM_PORT = Number(process.env.BENCH_UPSTREAM_PORT) || 0;
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

// GET /redis: GET of REDIS_KEY on one pipelined connection (bench/node-resp.js).
const REDIS_PORT = Number(process.env.BENCH_REDIS_PORT) || 0;
const REDIS_KEY = 'bench:key';
const redis = REDIS_PORT ? new RespClient(REDIS_PORT, '127.0.0.1') : null;

// GET /static/NAME: files of BENCH_STATIC_DIR (set by bench/run), streamed
// with fs.createReadStream.
const STATIC_DIR = process.env.BENCH_STATIC_DIR || '';

// GET /stream: one precomputed 64 KiB chunk, as in bench/app/stream.lua.
const CHUNK = Buffer.from('0123456789abcdef'.repeat(4096));

// GET /events subscribers, fed by POST /publish (bench/app/events.lua,
// publish.lua): the open responses, each dropped when its client leaves.
const subscribers = new Set();

function send(res, status, type, body) {
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

// Same parsing as the Lua versions: key=value pairs split on '&', no decoding.
function parseQuery(qs) {
  const args = {};
  for (const m of qs.matchAll(/([^&=]+)=([^&]*)/g)) args[m[1]] = m[2];
  return args;
}

const server = http.createServer((req, res) => {
  const q = req.url.indexOf('?');
  const path = q < 0 ? req.url : req.url.slice(0, q);
  if (path === '/hello') {
    send(res, 200, 'text/plain', 'Hello, World!');
  } else if (path === '/multiply') {
    const args = parseQuery(q < 0 ? '' : req.url.slice(q + 1));
    const a = Number(args.a) || 0, b = Number(args.b) || 0;
    send(res, 200, 'text/html',
      `<html><body><p>Hello, World!</p><p>PATH=${path}</p><p>RESULT: ${a}*${b}=${Math.floor(a * b)}</p></body></html>\n`);
  } else if (path === '/sleep') {
    setTimeout(() => send(res, 200, 'text/plain', 'slept 100 ms\n'), 100);
  } else if (path === '/proxy') {
    // Relay the upstream's status, content type and body.
    if (!UPSTREAM_PORT) return send(res, 500, 'text/plain', 'BENCH_UPSTREAM_PORT is not set\n');
    const up = http.request({ host: '127.0.0.1', port: UPSTREAM_PORT, path: '/upstream', agent }, (ur) => {
      const parts = [];
      ur.on('data', (d) => parts.push(d));
      ur.on('end', () => send(res, ur.statusCode, ur.headers['content-type'] || 'application/octet-stream',
        Buffer.concat(parts)));
      ur.on('error', fail);
    });
    // An error before or during the upstream's answer: 502, once.
    function fail(e) { if (!res.headersSent) send(res, 502, 'text/plain', `upstream: ${e.message}\n`); }
    up.on('error', fail);
    up.end();
  } else if (path.startsWith('/static/') && STATIC_DIR && /^[\w.-]+$/.test(path.slice(8))) {
    const file = STATIC_DIR + '/' + path.slice(8);
    fs.stat(file, (err, st) => {
      if (err || !st.isFile()) return send(res, 404, 'text/plain', 'Not Found\n');
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': st.size });
      fs.createReadStream(file).pipe(res);
    });
  } else if (path === '/redis') {
    if (!redis) return send(res, 500, 'text/plain', 'BENCH_REDIS_PORT is not set\n');
    redis.command(['GET', REDIS_KEY]).then(
      (v) => (v === null ? send(res, 404, 'text/plain', 'no such key\n') : send(res, 200, 'text/plain', v)),
      (e) => send(res, 502, 'text/plain', `redis: ${e.message}\n`));
  } else if (path === '/stream') {
    // ?mib=N (default 1024) MiB in 64 KiB chunks; a write that fills the
    // socket's buffer waits for 'drain' (backpressure), as moonring's out:write.
    const mib = Number(parseQuery(q < 0 ? '' : req.url.slice(q + 1)).mib) || 1024;
    let left = mib * 16;
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    const pump = () => {
      while (left > 0) {
        left--;
        if (!res.write(CHUNK)) { if (!res.destroyed) res.once('drain', pump); return; }
      }
      res.end();
    };
    pump();
  } else if (path === '/events') {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    res.flushHeaders();
    subscribers.add(res);
    // A comment every 15 s, as moonring.sse's default heartbeat.
    const heartbeat = setInterval(() => res.write(':\n\n'), 15000);
    res.on('close', () => { clearInterval(heartbeat); subscribers.delete(res); });
  } else if (path === '/publish' && req.method === 'POST') {
    // The body is one event's data; answer as bench/app/publish.lua does.
    const parts = [];
    req.on('data', (d) => parts.push(d));
    req.on('end', () => {
      const event = `data: ${Buffer.concat(parts).toString('latin1')}\n\n`;
      for (const sub of subscribers) sub.write(event);
      send(res, 200, 'text/plain', `subscribers ${subscribers.size} dropped 0\n`);
    });
  } else {
    send(res, 404, 'text/plain', 'Not Found\n');
  }
});

// Keep idle keep-alive connections as long as moonring does (--idle-timeout 60).
server.keepAliveTimeout = 60000;
server.headersTimeout = 61000;

server.listen({ host: '127.0.0.1', port, backlog: 4096 }, () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`);
});

process.on('SIGTERM', () => { server.close(); server.closeAllConnections(); process.exit(0); });
