/**
 * Issue 18: the proxy caps its client connections, in all and per client address, as the SMTP and
 * POP3 listeners do; a connection over a cap gets 503 with the reason and Connection: close, or is
 * closed within two seconds if it sends nothing. Real sockets from 127.0.0.1, 127.0.0.2 and
 * 127.0.0.3 (all loopback), held open, and curl.
 */
import { execFile } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Harness, statusOf } from './harness.js';

const run = promisify(execFile);

/** Opens a connection from `from` to the proxy and leaves it idle. */
function hold(port: number, from: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host: '127.0.0.1', localAddress: from }, () => resolve(s));
    s.on('error', reject);
  });
}

/** One request on a fresh connection from `from`: the raw answer and whether the proxy closed the connection. */
function once(port: number, from: string, data: string): Promise<{ raw: string; closedByProxy: boolean; ms: number }> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    const s = connect({ port, host: '127.0.0.1', localAddress: from }, () => s.write(data));
    let raw = '';
    let ended = false;
    const timer = setTimeout(() => s.destroy(), 4000);
    s.on('data', (d) => (raw += d.toString('latin1')));
    s.on('end', () => (ended = true));
    s.on('error', () => undefined);
    s.on('close', () => {
      clearTimeout(timer);
      resolve({ raw, closedByProxy: ended, ms: Date.now() - t0 });
    });
  });
}

/** Lets the proxy accept what was just connected (its accept runs a turn after the client's connect). */
async function settle(): Promise<void> {
  await new Promise((r) => setTimeout(r, 100));
}

describe('proxy connection caps', () => {
  let h: Harness;
  const held: Socket[] = [];

  beforeAll(async () => {
    // Idle connections are kept for a minute here, so the held ones stay open through both tests.
    h = await Harness.start({ TOMLINSON_PROXY_MAX_CONNECTIONS: '8', TOMLINSON_PROXY_MAX_CONNECTIONS_PER_CLIENT: '5' }, { keepAliveMs: 60_000 });
    h.origin.routes.set('/a', (_q, res) => res.end('from origin'));
  });
  afterAll(async () => {
    for (const s of held) s.destroy();
    await h.stop();
  });

  it('per client address: the sixth connection from 127.0.0.1 gets 503 and is closed; 127.0.0.2 is still served', async () => {
    for (let i = 0; i < 5; i++) held.push(await hold(h.proxy.port, '127.0.0.1'));
    await settle();
    const get = `GET ${h.origin.url('/a')} HTTP/1.1\r\nHost: x\r\n\r\n`;
    const over = await once(h.proxy.port, '127.0.0.1', get);
    expect(statusOf(over.raw)).toBe(503);
    expect(over.raw).toMatch(/\r\nconnection: close\r\n/i);
    expect(over.raw).toContain('too many connections from your address (proxy.maxConnectionsPerClient)');
    expect(over.closedByProxy).toBe(true);
    // curl sees the same.
    const curl = await run('curl', [
      '-s',
      '-o',
      '/dev/null',
      '-w',
      '%{http_code}',
      '-x',
      `http://127.0.0.1:${h.proxy.port}`,
      '--interface',
      '127.0.0.1',
      h.origin.url('/a'),
    ]);
    expect(curl.stdout).toBe('503');
    expect(h.origin.count('/a')).toBe(0);
    const other = await once(h.proxy.port, '127.0.0.2', `GET ${h.origin.url('/a')} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    expect(statusOf(other.raw)).toBe(200);
    expect(h.origin.count('/a')).toBe(1);
  });

  it('in all: with 8 open (5 + 3 from two addresses) a third address gets 503 (CONNECT too); a freed slot is taken again', async () => {
    for (let i = 0; i < 3; i++) held.push(await hold(h.proxy.port, '127.0.0.2'));
    await settle();
    const over = await once(h.proxy.port, '127.0.0.3', `GET ${h.origin.url('/a')} HTTP/1.1\r\nHost: x\r\n\r\n`);
    expect(statusOf(over.raw)).toBe(503);
    expect(over.raw).toContain('too many connections to the proxy (proxy.maxConnections)');
    const tunnel = await once(h.proxy.port, '127.0.0.3', 'CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n');
    expect(statusOf(tunnel.raw)).toBe(503);
    expect(tunnel.closedByProxy).toBe(true);
    // A connection over the cap that sends nothing is closed within about two seconds.
    const silent = await once(h.proxy.port, '127.0.0.3', '');
    expect(silent.raw).toBe('');
    expect(silent.ms).toBeGreaterThanOrEqual(1500);
    expect(silent.ms).toBeLessThan(3500);
    held.pop()!.destroy();
    await settle();
    const hits = (await h.metrics.limitsHit.get()).values.filter((v) => v.labels.listener === 'proxy');
    expect(hits.find((v) => v.labels.limit === 'connections')?.value).toBe(3);
    expect(hits.find((v) => v.labels.limit === 'connections_per_client')?.value).toBe(2);
    const again = await once(h.proxy.port, '127.0.0.3', `GET ${h.origin.url('/a')} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    expect(statusOf(again.raw)).toBe(200);
  });
});
