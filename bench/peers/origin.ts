/**
 * The bench's HTTP origin, run as `node -e ORIGIN_SCRIPT` in a child process so that its work is
 * not counted against the proxy: /hit1k and /hit100k are fresh for an hour, /miss/... answers
 * 1 KB fresh for an hour (every URL new), /reval... is stale at once with an ETag and answers a
 * matching If-None-Match with 304 (RFC 9110 section 13.1.2). GET /__counts answers how many
 * requests of each kind it has served (so a bench can check that hits were hits). Prints its port
 * on stdout.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { onCleanup } from './util.js';

/** The origin's source (CommonJS, no dependencies). */
export const ORIGIN_SCRIPT = `
const http = require('node:http');
const b1 = Buffer.alloc(1024, 'a'), b100 = Buffer.alloc(100 * 1024, 'b');
const counts = { hit1k: 0, hit100k: 0, miss: 0, reval200: 0, reval304: 0 };
const s = http.createServer((req, res) => {
  const u = req.url;
  if (u === '/__counts') return res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(counts));
  const k = u.startsWith('/hit100k') ? 'hit100k' : u.startsWith('/hit1k') ? 'hit1k' : u.startsWith('/miss') ? 'miss' : u.startsWith('/reval') ? (req.headers['if-none-match'] === '"r1"' ? 'reval304' : 'reval200') : '';
  if (k) counts[k]++;
  if (u.startsWith('/hit1k')) return res.writeHead(200, { 'cache-control': 'max-age=3600', 'content-type': 'text/plain', 'content-length': 1024 }).end(b1);
  if (u.startsWith('/hit100k')) return res.writeHead(200, { 'cache-control': 'max-age=3600', 'content-type': 'application/octet-stream', 'content-length': b100.length }).end(b100);
  if (u.startsWith('/miss')) return res.writeHead(200, { 'cache-control': 'max-age=3600', 'content-type': 'text/plain', 'content-length': 1024 }).end(b1);
  if (u.startsWith('/reval')) {
    if (req.headers['if-none-match'] === '"r1"') return res.writeHead(304, { etag: '"r1"', 'cache-control': 'max-age=0' }).end();
    return res.writeHead(200, { etag: '"r1"', 'cache-control': 'max-age=0', 'content-type': 'text/plain', 'content-length': 1024 }).end(b1);
  }
  res.writeHead(404).end();
});
s.keepAliveTimeout = 60000;
s.listen(0, '127.0.0.1', () => process.stdout.write(String(s.address().port) + '\\n'));
`;

/** Requests the origin has served, by kind. */
export interface OriginCounts {
  hit1k: number;
  hit100k: number;
  miss: number;
  reval200: number;
  reval304: number;
}

/** Reads the origin's counters. */
export async function originCounts(port: number): Promise<OriginCounts> {
  return (await (await fetch(`http://127.0.0.1:${port}/__counts`)).json()) as OriginCounts;
}

/** Starts the origin; resolves with its port, its process and a stop function (also run on Ctrl-C). */
export async function startOrigin(): Promise<{ port: number; child: ChildProcess; stop: () => Promise<void> }> {
  const child = spawn(process.execPath, ['-e', ORIGIN_SCRIPT], { stdio: ['ignore', 'pipe', 'inherit'] });
  const stop = onCleanup(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
  });
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout!.once('data', (d: Buffer) => resolve(Number(String(d).trim())));
    child.once('exit', (c) => reject(new Error(`origin exited with ${c}`)));
  });
  return { port, child, stop };
}
