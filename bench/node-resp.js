// A small pure-JS Redis client (RESP2) for bench/node-server.js's GET /redis,
// written for the bench: one connection per process, commands pipelined on
// it as they come (each written at once, never waiting for the reply before),
// replies matched to commands first in, first out — the way node-redis works.
//   const RespClient = require('./node-resp.js');
//   const c = new RespClient(port, '127.0.0.1');
//   c.command(['GET', 'key']).then((v) => ...)   // string, number, null, array
// An error reply rejects that command's promise with an Error whose message
// is Redis's; a connection that fails rejects every command waiting on it,
// and the next command connects again.
'use strict';
const net = require('net');

const CRLF = '\r\n';

class RespClient {
  constructor(port, host = '127.0.0.1') {
    this.port = port;
    this.host = host;
    this.sock = null;
    this.waiting = [];         // { resolve, reject } per command sent, oldest first
    this.buf = Buffer.alloc(0);
  }

  connect() {
    const sock = net.connect({ port: this.port, host: this.host });
    sock.setNoDelay(true);
    sock.on('data', (d) => this.onData(d));
    const fail = (err) => {
      if (this.sock !== sock) return;
      this.sock = null;
      this.buf = Buffer.alloc(0);
      const waiting = this.waiting;
      this.waiting = [];
      for (const w of waiting) w.reject(err || new Error('connection closed'));
    };
    sock.on('error', fail);
    sock.on('close', () => fail(null));
    this.sock = sock;
  }

  // command(['GET', 'k']) → a promise of the reply.
  command(args) {
    if (!this.sock) this.connect();
    let out = `*${args.length}${CRLF}`;
    for (const a of args) {
      const s = String(a);
      out += `$${Buffer.byteLength(s)}${CRLF}${s}${CRLF}`;
    }
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.sock.write(out);
    });
  }

  onData(d) {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    let pos = 0;
    for (;;) {
      const r = parse(this.buf, pos);
      if (!r) break;           // an incomplete reply: wait for more bytes
      pos = r.end;
      const w = this.waiting.shift();
      if (!w) { this.sock.destroy(new Error('reply with no command waiting')); return; }
      if (r.error) w.reject(new Error(r.error)); else w.resolve(r.value);
    }
    this.buf = pos === this.buf.length ? Buffer.alloc(0) : this.buf.subarray(pos);
  }
}

// parse(buf, pos) → { value | error, end } for the reply starting at pos,
// or null when buf does not hold all of it yet.
function parse(buf, pos) {
  const eol = buf.indexOf(CRLF, pos);
  if (eol < 0) return null;
  const kind = buf[pos];
  const line = buf.toString('latin1', pos + 1, eol);
  const next = eol + 2;
  switch (kind) {
    case 0x2b: return { value: line, end: next };                       // +
    case 0x2d: return { error: line, end: next };                       // -
    case 0x3a: return { value: Number(line), end: next };               // :
    case 0x24: {                                                        // $
      const n = Number(line);
      if (n < 0) return { value: null, end: next };
      if (buf.length < next + n + 2) return null;
      return { value: buf.toString('utf8', next, next + n), end: next + n + 2 };
    }
    case 0x2a: {                                                        // *
      const n = Number(line);
      if (n < 0) return { value: null, end: next };
      const items = [];
      let p = next;
      for (let i = 0; i < n; i++) {
        const r = parse(buf, p);
        if (!r) return null;
        items.push(r.error ? new Error(r.error) : r.value);
        p = r.end;
      }
      return { value: items, end: p };
    }
    default:
      throw new Error(`bad RESP reply type 0x${kind.toString(16)}`);
  }
}

module.exports = RespClient;
