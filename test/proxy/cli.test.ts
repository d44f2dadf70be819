/**
 * `cache stats` and `cache purge` in the admin CLI, against the storage a running proxy uses.
 */
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../../cli/main.js';
import { Harness } from './harness.js';

let h: Harness;

beforeAll(async () => {
  h = await Harness.start();
});
afterAll(async () => {
  await h?.stop();
});

async function cli(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  stdout.on('data', (d) => (out += d));
  stderr.on('data', (d) => (err += d));
  const code = await run(['node', 'tomlinson', ...args], {
    env: { TOMLINSON_DATA_DIR: h.config.dataDir, TOMLINSON_LOG_LEVEL: 'silent' },
    stdout: stdout as unknown as NodeJS.WriteStream,
    stderr: stderr as unknown as NodeJS.WriteStream,
  });
  return { code, out, err };
}

describe('cache commands', () => {
  it('stats reports requests, hits, misses, bytes and the traffic saved', async () => {
    h.origin.routes.set('/s', (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=60' }).end('x'.repeat(1000)));
    for (let i = 0; i < 4; i++) await h.get('/s');
    await h.proxy.stats.flush();
    await h.proxy.store.flush();
    const json = await cli('--json', 'cache', 'stats');
    expect(json.code).toBe(0);
    const r = JSON.parse(json.out);
    expect(r).toMatchObject({
      requests: 4,
      hits: 3,
      misses: 1,
      bytesFromCache: 3000,
      bytesFromOrigin: 1000,
      savedBytes: 3000,
      storedObjects: 1,
      storedBytes: 1000,
    });
    expect(r.hitRatio).toBeCloseTo(0.75);
    const human = await cli('cache', 'stats');
    expect(human.out).toMatch(/hit ratio:\s+75\.0%/);
    expect(human.out).toMatch(/link traffic saved: 2\.9 KiB/);
  });

  it('purge removes a URL from the shared tier', async () => {
    h.origin.routes.set('/p', (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=60' }).end('p'));
    await h.get('/p');
    await h.proxy.store.flush();
    const r = await cli('cache', 'purge', h.origin.url('/p'));
    expect(r.code).toBe(0);
    expect(r.out).toContain('purged');
    // A new task (empty memory tier) must go to the origin.
    await h.stopProxy();
    await h.startProxy();
    await h.get('/p');
    expect(h.origin.count('/p')).toBe(2);
    await h.proxy.store.flush();
    const again = await cli('cache', 'purge', h.origin.url('/p#frag'));
    expect(again.out).toContain('purged');
    const bad = await cli('cache', 'purge', 'ftp://x/');
    expect(bad.code).toBe(1);
    // https URLs are cache keys of their own (absolute-form https requests), normalised the same way.
    const tls = await cli('cache', 'purge', 'HTTPS://Example.org:443/p#frag');
    expect(tls.code).toBe(0);
    expect(tls.out).toContain('https://example.org/p was not in the cache');
  });
});
