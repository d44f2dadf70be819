/**
 * The bench's HTTP origin, run as `node -e ORIGIN_SCRIPT` in a child process so that its work is
 * not counted against the proxy: /hit1k and /hit100k are fresh for an hour, /miss/... answers
 * 1 KB fresh for an hour (every URL new), /reval... is stale at once with an ETag and answers a
 * matching If-None-Match with 304 (RFC 9110 section 13.1.2). Prints its port on stdout.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { onCleanup } from './util.js';

/** The origin's source (CommonJS, no dependencies). */
export const ORIGIN_SCRIPT = `
const http = require('node:http');
const b1 = Buffer.alloc(1024, 'a'), b100 = Buffer.alloc(100 * 1024, 'b');
const s = http.createServer((req, res) => {
  const u = req.url;
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
