/**
 * Issue 18: one access-log line per request (method, URL, status, Cache-Status, bytes, time) on by
 * default, off with proxy.accessLog=false (refusals and errors are still logged, with their
 * reason); 403s say why and name the setting; `cache stats` (the CLI binary) counts refused and
 * failed requests apart from misses.
 */
import { execFile } from 'node:child_process';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { PassThrough } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../core/log.js';
import { Harness, rawExchange, statusOf } from './harness.js';

const run = promisify(execFile);
const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

interface Line {
  c?: string;
  level: number;
  client?: string;
  method?: string;
  url?: string;
  status?: number;
  cache?: string;
  bytes?: number;
  ms?: number;
  reason?: string;
}

/** A harness whose proxy logs into `lines`; its origin is reached through proxy.allowedOrigins. */
async function start(env: Record<string, string> = {}): Promise<{ h: Harness; lines: Line[] }> {
  const h = await Harness.start({
    TOMLINSON_PROXY_ALLOW_PRIVATE_ORIGINS: 'false',
    TOMLINSON_PROXY_ALLOWED_ORIGINS: '127.0.0.1/32',
    TOMLINSON_PROXY_ORIGIN_TIMEOUT_MS: '300',
    ...env,
  });
  const sink = new PassThrough();
  const lines: Line[] = [];
  let buf = '';
  sink.on('data', (d: Buffer) => {
    buf += d.toString();
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      lines.push(JSON.parse(buf.slice(0, nl)) as Line);
      buf = buf.slice(nl + 1);
    }
  });
  await h.stopProxy();
  h.log = createLogger({ destination: sink, level: 'info', pretty: false });
  await h.startProxy();
  return { h, lines };
}

/** A port on 127.0.0.1 with nothing listening. */
async function closedPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

const access = (lines: Line[]): Line[] => lines.filter((l) => l.c === 'access');
const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 50));

describe('access log', () => {
  let h: Harness | undefined;
  afterEach(async () => {
    await h?.stop();
    h = undefined;
  });

  it('one line per request: miss, hit, refused origin, origin down (502), origin silent (504), refused CONNECT; cache stats counts them apart', async () => {
    const s = await start();
    h = s.h;
    h.origin.routes.set('/a', (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=60', 'content-type': 'text/plain' }).end('x'.repeat(100)));
    h.origin.routes.set('/silent', () => undefined);
    const down = await closedPort();
    const miss = await h.get('/a');
    const hit = await h.get('/a');
    expect([miss.status, hit.status]).toEqual([200, 200]);
    const req = (url: string): string => `GET ${url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`;
    const refused = await rawExchange(h.proxy.port, req('http://10.0.0.1/secret'));
    expect(statusOf(refused)).toBe(403);
    expect(refused).toContain('proxy.allowedOrigins');
    expect(statusOf(await rawExchange(h.proxy.port, req(`http://127.0.0.1:${down}/x`)))).toBe(502);
    expect(statusOf(await rawExchange(h.proxy.port, req(h.origin.url('/silent'))))).toBe(504);
    const tunnel = await rawExchange(h.proxy.port, 'CONNECT example.org:25 HTTP/1.1\r\nHost: example.org:25\r\n\r\n');
    expect(statusOf(tunnel)).toBe(403);
    expect(tunnel).toContain('proxy.connectPorts');
    await settle();

    const lines = access(s.lines);
    expect(lines).toHaveLength(6);
    for (const l of lines) {
      expect(l.level).toBe(30);
      expect(l.client).toBe('127.0.0.1');
      expect(typeof l.ms).toBe('number');
      expect(l.bytes).toBeGreaterThan(0);
    }
    const [lm, lh, l403, l502, l504, lconnect] = lines;
    expect(lm).toMatchObject({ method: 'GET', url: h.origin.url('/a'), status: 200, cache: 'Tomlinson; fwd=uri-miss; fwd-status=200; stored' });
    expect(lh).toMatchObject({ method: 'GET', url: h.origin.url('/a'), status: 200, cache: 'Tomlinson; hit' });
    // Bytes as sent to the client, head included: more than the 100-byte body.
    expect(lh.bytes).toBeGreaterThan(100);
    expect(lm.reason).toBeUndefined();
    expect(l403).toMatchObject({ method: 'GET', url: 'http://10.0.0.1/secret', status: 403 });
    expect(l403.reason).toMatch(/private-use .*proxy\.allowedOrigins/);
    expect(l502).toMatchObject({ status: 502, reason: 'origin refused the connection' });
    expect(l504).toMatchObject({ status: 504, reason: 'origin did not answer in time' });
    expect(l504.ms).toBeGreaterThanOrEqual(250);
    expect(lconnect).toMatchObject({ method: 'CONNECT', url: 'example.org:25', status: 403 });
    expect(lconnect.reason).toContain('proxy.connectPorts');

    // `cache stats`, the CLI binary, on the proxy's storage.
    await h.proxy.stats.flush();
    const env = { ...process.env, TOMLINSON_DATA_DIR: h.config.dataDir, TOMLINSON_LOG_LEVEL: 'silent' };
    const json = await run(process.execPath, [join(root, 'bin', 'tomlinson.mjs'), '--json', 'cache', 'stats'], { env, cwd: root });
    expect(JSON.parse(json.stdout)).toMatchObject({ requests: 6, hits: 1, misses: 1, refused: 2, failed: 2 });
    const human = await run(process.execPath, [join(root, 'bin', 'tomlinson.mjs'), 'cache', 'stats'], { env, cwd: root });
    expect(human.stdout).toMatch(/^refused:\s+2 /m);
    expect(human.stdout).toMatch(/^origin failed:\s+2 /m);
    expect(human.stdout).toMatch(/^misses:\s+1$/m);
  }, 60_000);

  it('proxy.accessLog=false: no line for a hit or a miss, still one for a refusal, with its reason', async () => {
    const s = await start({ TOMLINSON_PROXY_ACCESS_LOG: 'false', TOMLINSON_PROXY_ALLOWED_CLIENTS: '10.0.0.0/8' });
    h = s.h;
    const out = await rawExchange(h.proxy.port, `GET ${h.origin.url('/a')} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    expect(statusOf(out)).toBe(403);
    expect(out).toContain('proxy.allowedClients');
    await settle();
    expect(access(s.lines)).toEqual([expect.objectContaining({ status: 403, reason: 'client address not allowed to use this proxy (proxy.allowedClients)' })]);
  });

  it('proxy.accessLog=false: a hit and a miss write nothing', async () => {
    const s = await start({ TOMLINSON_PROXY_ACCESS_LOG: 'false' });
    h = s.h;
    h.origin.routes.set('/b', (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=60' }).end('b'));
    await h.get('/b');
    await h.get('/b');
    await settle();
    expect(access(s.lines)).toEqual([]);
  });

  it('the logged URL loses its userinfo (a password in the URL never reaches the log)', async () => {
    const s = await start();
    h = s.h;
    h.origin.routes.set('/u', (_q, res) => res.end('u'));
    const out = await rawExchange(h.proxy.port, `GET http://bob:hunter2@127.0.0.1:${h.origin.port}/u HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    expect(statusOf(out)).toBe(200);
    await settle();
    const lines = access(s.lines);
    expect(lines).toHaveLength(1);
    expect(lines[0].url).toBe(h.origin.url('/u'));
    expect(JSON.stringify(s.lines)).not.toContain('hunter2');
  });

  it('requests with a body are logged whatever became of the body (Node may clear req.socket before close)', async () => {
    const s = await start();
    h = s.h;
    h.origin.routes.set('/form', (_q, res) => res.end('posted'));
    const post = (url: string): string => `POST ${url} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello`;
    expect(statusOf(await rawExchange(h.proxy.port, post('http://10.0.0.1/form')))).toBe(403);
    expect(statusOf(await rawExchange(h.proxy.port, post(`http://127.0.0.1:${await closedPort()}/form`)))).toBe(502);
    expect(statusOf(await rawExchange(h.proxy.port, post(h.origin.url('/form'))))).toBe(200);
    await settle();
    expect(access(s.lines).map((l) => [l.method, l.status, l.client])).toEqual([
      ['POST', 403, '127.0.0.1'],
      ['POST', 502, '127.0.0.1'],
      ['POST', 200, '127.0.0.1'],
    ]);
  });
});
