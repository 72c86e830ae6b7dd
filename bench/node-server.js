// Node.js `http` peer for `make bench`: one process, the same app logic as
// bench/app/*.lua and the nginx config. Usage: node bench/node-server.js PORT
// Prints `listening on http://127.0.0.1:PORT` once bound.
'use strict';
const http = require('http');

const port = Number(process.argv[2] || 0);

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
