/**
 * The proxy on every core (issue 25, containers/proxy/workers.ts): two worker processes behind
 * one port, started as `startApp` starts them, reached with curl (a new connection per request,
 * which the main process hands to the workers in turn) and undici. Which worker answered is read
 * from the access log, whose lines carry the worker's index.
 */
import { execFile, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { PassThrough } from 'node:stream';
import { promisify } from 'node:util';
import { ProxyAgent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../../cli/main.js';
import { startApp, type App } from '../../containers/app.js';
import type { RunningProxyWorkers } from '../../containers/proxy/workers.js';
import { loadConfig, type Config } from '../../core/config.js';
import { createLogger } from '../../core/log.js';
import { Metrics } from '../../core/metrics.js';
import { freePorts } from '../support/ports.js';
import { tempDir } from '../support/tmp.js';
import { Origin } from './harness.js';

const exec = promisify(execFile);
const ROOT = fileURLToPath(new URL('../..', import.meta.url));

interface AccessLine {
  worker: number;
  pid: number;
  url: string;
  method: string;
  cache: string;
}

let dir: { path: string; remove: () => Promise<void> };
let origin: Origin;
let app: App;
let proxy: RunningProxyWorkers;
let config: Config;
let healthPort: number;
const lines: Record<string, unknown>[] = [];
/** Bumped by a test to change what the origin sends for a path. */
const versions: Record<string, number> = {};

/** The access log lines for a URL so far. */
function access(url: string): AccessLine[] {
  return lines.filter((l) => l.c === 'access' && l.url === url) as unknown as AccessLine[];
}

/** One GET through the proxy with curl, on a connection of its own; the Cache-Status value. */
async function curl(url: string): Promise<{ status: number; cacheStatus: string; body: string }> {
  const { stdout } = await exec('curl', ['-s', '-i', '-m', '15', '--noproxy', '', '-x', `http://127.0.0.1:${proxy.port}`, url]);
  const [head, body] = [stdout.slice(0, stdout.indexOf('\r\n\r\n')), stdout.slice(stdout.indexOf('\r\n\r\n') + 4)];
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0);
  return { status, cacheStatus: /^cache-status: (.*)$/im.exec(head)?.[1] ?? '', body };
}

async function cli(...args: string[]): Promise<string> {
  const out = new PassThrough();
  let text = '';
  out.on('data', (d) => (text += d));
  const code = await run(['node', 'tomlinson', ...args], {
    env: { TOMLINSON_DATA_DIR: config.dataDir, TOMLINSON_LOG_LEVEL: 'silent' },
    stdout: out as unknown as NodeJS.WriteStream,
    stderr: new PassThrough() as unknown as NodeJS.WriteStream,
  });
  expect(code).toBe(0);
  return text;
}

/** Sends GETs on new connections until each worker has answered one (the main process takes turns); each worker's first answer. */
async function fromEachWorker(url: string): Promise<Map<number, { cacheStatus: string; body: string }>> {
  const seen = new Map<number, { cacheStatus: string; body: string }>();
  for (let i = 0; i < 12 && seen.size < 2; i++) {
    const before = access(url).length;
    const r = await curl(url);
    expect(r.status).toBe(200);
    await expect.poll(() => access(url).length, { timeout: 5000 }).toBeGreaterThan(before);
    const line = access(url).at(-1)!;
    if (!seen.has(line.worker)) seen.set(line.worker, r);
  }
  return seen;
}

beforeAll(async () => {
  dir = await tempDir('tomlinson-proxy-workers-');
  origin = await new Origin().start();
  // Each body names the path's version: a worker that kept a purged response would still send the old one.
  for (const p of ['/a', '/b', '/c', '/d'])
    origin.routes.set(p, (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=600' }).end(`${p} version ${(versions[p] ?? 0) + 1}`));
  origin.routes.set('/form', (_q, res) => res.writeHead(200, { 'content-type': 'text/plain' }).end('posted'));
  [healthPort] = await freePorts(1);
  config = loadConfig({
    TOMLINSON_DATA_DIR: dir.path,
    TOMLINSON_PROXY_PORT: '0',
    TOMLINSON_PROXY_WORKERS: '2',
    TOMLINSON_PROXY_ALLOW_PRIVATE_ORIGINS: 'true',
    TOMLINSON_PROXY_ACCESS_LOG: 'true',
    TOMLINSON_HEALTH_PORT: String(healthPort),
  });
  const out = new PassThrough();
  let buf = '';
  out.on('data', (d: Buffer) => {
    buf += d.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      lines.push(JSON.parse(buf.slice(0, i)) as Record<string, unknown>);
      buf = buf.slice(i + 1);
    }
  });
  app = await startApp(config, ['proxy'], createLogger({ level: 'info', destination: out, pretty: false }), { metrics: new Metrics({ defaults: false }) });
  proxy = app.listeners[0] as RunningProxyWorkers;
}, 120_000);

afterAll(async () => {
  await app?.close(1000);
  await origin?.stop();
  await dir?.remove();
});

describe('proxy.workers = 2', () => {
  it('runs two worker processes on one port, each with half the memory tier', () => {
    expect(proxy.name).toBe('proxy');
    expect(proxy.port).toBeGreaterThan(0);
    const pids = proxy.pids();
    expect(pids).toHaveLength(2);
    expect(pids).not.toContain(process.pid);
    expect(lines.filter((l) => l.msg === 'proxy listening').map((l) => l.worker)).toEqual(expect.arrayContaining([0, 1]));
  });

  it('a response one worker holds in memory only is a hit on the other too, the origin asked once', async () => {
    const url = origin.url('/a');
    expect((await curl(url)).cacheStatus).toContain('stored');
    const storedObjects = async () => JSON.parse(await cli('--json', 'cache', 'stats')).storedObjects as number;
    // Asked for once: kept in that worker's memory tier only (proxy.objectTierAdmitHits 2).
    await new Promise((r) => setTimeout(r, 500));
    expect(await storedObjects()).toBe(0);
    // The other worker's miss asks its sibling, which writes it to the shared object tier at once.
    const served = await fromEachWorker(url);
    expect([...served.keys()].sort()).toEqual([0, 1]);
    for (const r of served.values()) expect(r.cacheStatus).toMatch(/hit/);
    expect(origin.count('/a')).toBe(1);
    expect(await storedObjects()).toBe(1);
  });

  it('an invalidation (POST) on one worker empties both memory tiers', async () => {
    const url = origin.url('/b');
    await curl(url);
    // Both workers hold version 1 of /b in memory now.
    for (const r of (await fromEachWorker(url)).values()) expect(r).toMatchObject({ cacheStatus: expect.stringMatching(/hit/), body: '/b version 1' });
    versions['/b'] = 1;
    // RFC 9111 §4.4: a 2xx to an unsafe method invalidates the target URI (undici, through the proxy).
    const agent = new ProxyAgent({ uri: `http://127.0.0.1:${proxy.port}`, proxyTunnel: false });
    const r = await request(url, { dispatcher: agent, method: 'POST', body: 'x' });
    expect(r.statusCode).toBe(200);
    await r.body.text();
    await agent.close();
    // The worker's access line reaches the main process with its next batch of log lines.
    await expect.poll(() => access(url).filter((l) => l.method === 'POST').length, { timeout: 10_000 }).toBe(1);
    // Both answer version 2 at once: the worker that did not see the POST heard of it from the
    // main process (the purge log it also reads comes up to a second later).
    const fresh = await fromEachWorker(url);
    expect([...fresh.keys()].sort()).toEqual([0, 1]);
    for (const r of fresh.values()) expect(r.body).toBe('/b version 2');
  });

  it('`cache purge` from the admin CLI (another process) reaches both workers', async () => {
    const url = origin.url('/c');
    await curl(url);
    for (const r of (await fromEachWorker(url)).values()) expect(r).toMatchObject({ cacheStatus: expect.stringMatching(/hit/), body: '/c version 1' });
    versions['/c'] = 1;
    expect(await cli('cache', 'purge', url)).toContain('purged');
    // Each worker reads the purge log about once a second.
    await new Promise((r) => setTimeout(r, 2500));
    for (const r of (await fromEachWorker(url)).values()) expect(r.body).toBe('/c version 2');
  });

  it('/metrics sums the requests and connections of both workers', async () => {
    const metricsText = async () => (await exec('curl', ['-s', `http://127.0.0.1:${healthPort}/metrics`])).stdout;
    const sum = (text: string, name: string) =>
      text
        .split('\n')
        .filter((l) => l.startsWith(name))
        .reduce((n, l) => n + Number(l.split(' ').pop()), 0);
    const requests = lines.filter((l) => l.c === 'access').length;
    const byWorker = new Set(lines.filter((l) => l.c === 'access').map((l) => l.worker));
    expect(byWorker.size).toBe(2);
    // Counts reach the Prometheus counters about once a second.
    await expect.poll(async () => sum(await metricsText(), 'tomlinson_cache_requests_total{'), { timeout: 10_000 }).toBe(requests);
    expect(sum(await metricsText(), 'tomlinson_connections_total{listener="proxy"}')).toBe(requests);
  });

  it('a killed worker is logged and started again; the other serves meanwhile', async () => {
    const [victim, survivor] = proxy.pids();
    process.kill(victim!, 'SIGKILL');
    // Once the main process has seen the exit (a connection handed over in that moment is lost:
    // node:cluster's round-robin never gets it back), the survivor takes every connection.
    await expect.poll(() => proxy.pids(), { timeout: 10_000, interval: 50 }).toEqual([survivor]);
    expect((await curl(origin.url('/d'))).status).toBe(200);
    await expect.poll(() => proxy.pids().length, { timeout: 30_000, interval: 200 }).toBe(2);
    expect(proxy.pids()).toContain(survivor);
    expect(proxy.pids()).not.toContain(victim);
    expect(lines.some((l) => l.msg === 'proxy worker stopped; its connections were cut; restarting it' && l.signal === 'SIGKILL')).toBe(true);
    const served = await fromEachWorker(origin.url('/d'));
    expect(served.size).toBe(2);
  });

  it('close stops every worker', async () => {
    const pids = proxy.pids();
    await app.close(1000);
    for (const pid of pids) expect(alive(pid)).toBe(false);
  });
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The pids of a process's children, from /proc. */
function children(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').split(' ').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

describe('serve proxy with two workers', () => {
  it('no worker outlives a main process that is killed', { timeout: 120_000 }, async () => {
    const data = await tempDir('tomlinson-proxy-orphans-');
    const [port] = await freePorts(1);
    const child = spawn(process.execPath, ['--import', 'tsx', 'containers/main.ts', 'serve', 'proxy'], {
      cwd: ROOT,
      env: {
        ...process.env,
        TOMLINSON_DATA_DIR: data.path,
        TOMLINSON_PROXY_PORT: String(port),
        TOMLINSON_PROXY_WORKERS: '2',
        TOMLINSON_HEALTH_PORT: '0',
        TOMLINSON_LOG_PRETTY: 'false',
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      let out = '';
      child.stdout!.on('data', (d) => (out += d));
      await expect.poll(() => out.includes('tomlinson ready'), { timeout: 90_000, interval: 200 }).toBe(true);
      const workers = children(child.pid!).filter((p) => readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('worker-main'));
      expect(workers).toHaveLength(2);
      child.kill('SIGKILL');
      await expect.poll(() => workers.filter(alive), { timeout: 10_000, interval: 100 }).toEqual([]);
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await data.remove();
    }
  });
});
