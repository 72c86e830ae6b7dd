// Node.js `cluster` peer for `make bench` (workers scenario): a primary and
// WORKERS worker processes, each running bench/node-server.js (the same
// routes and app logic) on the one shared port. Node's default scheduling on
// Linux (cluster.SCHED_RR: the primary accepts and hands connections to the
// workers in turn). Usage: node bench/node-cluster.js PORT [WORKERS]
// Prints `listening on http://127.0.0.1:PORT` once every worker is listening
// (each worker prints its own line too). SIGTERM: the primary stops every
// worker (SIGTERM), waits for them, and exits; a worker that dies otherwise
// makes the primary stop the rest and exit 1 (no restarts: a benchmark run
// should not hide a crash).
'use strict';
const cluster = require('cluster');

if (cluster.isPrimary) {
  const port = Number(process.argv[2] || 0);
  const count = Number(process.argv[3] || 2);
  cluster.setupPrimary({ args: [String(port)] });
  let listening = 0, stopping = false;
  const stopAll = (code) => {
    stopping = true;
    const left = Object.values(cluster.workers);
    if (!left.length) process.exit(code);
    for (const w of left) w.process.kill('SIGTERM');
    cluster.on('exit', () => { if (!Object.keys(cluster.workers).length) process.exit(code); });
    setTimeout(() => process.exit(code), 10000).unref();
  };
  cluster.on('listening', (w, address) => {
    if (++listening === count) console.log(`listening on http://127.0.0.1:${address.port}`);
  });
  cluster.on('exit', (w, code, signal) => {
    if (stopping) return;
    console.error(`node-cluster: worker ${w.id} (pid ${w.process.pid}) exited (${signal || code}); stopping`);
    stopAll(1);
  });
  for (let i = 0; i < count; i++) cluster.fork();
  process.on('SIGTERM', () => stopAll(0));
  process.on('SIGINT', () => stopAll(0));
} else {
  require('./node-server.js');
}
