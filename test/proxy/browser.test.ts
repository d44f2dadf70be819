/**
 * A real browser through the proxy: headless Chromium (Debian's `chromium`) loads a page with a
 * stylesheet, a script and an image twice, each time with a fresh profile (so that its own cache
 * is empty and every request reaches the proxy). The second load makes no origin request for the
 * cacheable objects; a no-store API call goes to the origin both times.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../support/tmp.js';
import { Harness } from './harness.js';

const run = promisify(execFile);
const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p)) ?? 'chromium';

// A 1x1 transparent PNG.
const PNG = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=', 'base64');

let h: Harness;

beforeAll(async () => {
  h = await Harness.start();
  const o = h.origin;
  const cacheable = { 'cache-control': 'public, max-age=300' };
  o.routes.set('/index.html', (_q, res) =>
    res
      .writeHead(200, { ...cacheable, 'content-type': 'text/html; charset=utf-8' })
      .end(
        '<!doctype html><html><head><link rel="stylesheet" href="/style.css"><script src="/app.js"></script></head>' +
          '<body><h1>Tomlinson</h1><img id="logo" src="/logo.png"><div id="api"></div></body></html>',
      ),
  );
  o.routes.set('/style.css', (_q, res) => res.writeHead(200, { ...cacheable, 'content-type': 'text/css' }).end('h1 { color: green; }'));
  o.routes.set('/app.js', (_q, res) =>
    res
      .writeHead(200, { ...cacheable, 'content-type': 'application/javascript' })
      .end(
        "document.addEventListener('DOMContentLoaded', async () => {" +
          "  document.body.dataset.js = 'ran';" +
          "  const r = await fetch('/api');" +
          "  document.getElementById('api').textContent = await r.text();" +
          '});',
      ),
  );
  o.routes.set('/logo.png', (_q, res) => res.writeHead(200, { ...cacheable, 'content-type': 'image/png' }).end(PNG));
  o.routes.set('/api', (_q, res) => res.writeHead(200, { 'cache-control': 'no-store', 'content-type': 'text/plain' }).end('api-answer'));
});
afterAll(async () => {
  await h?.stop();
});

async function load(url: string): Promise<string> {
  const profile = await tempDir('tomlinson-chromium-');
  try {
    const { stdout } = await run(
      CHROMIUM,
      [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--disable-dev-shm-usage',
        `--user-data-dir=${profile.path}`,
        `--proxy-server=127.0.0.1:${h.proxy.port}`,
        '--proxy-bypass-list=<-loopback>',
        '--virtual-time-budget=5000',
        '--dump-dom',
        url,
      ],
      { timeout: 45_000, maxBuffer: 4 * 1024 * 1024 },
    );
    return stdout;
  } finally {
    await profile.remove();
  }
}

describe('headless Chromium through the proxy', () => {
  it('loads a page twice; the second load makes no origin request for cacheable objects', async () => {
    const first = await load(h.origin.url('/index.html'));
    expect(first).toContain('data-js="ran"');
    expect(first).toContain('api-answer');
    for (const path of ['/index.html', '/style.css', '/app.js', '/logo.png', '/api']) expect(h.origin.count(path), path).toBe(1);

    const second = await load(h.origin.url('/index.html'));
    expect(second).toContain('data-js="ran"');
    expect(second).toContain('api-answer');
    for (const path of ['/index.html', '/style.css', '/app.js', '/logo.png']) expect(h.origin.count(path), path).toBe(1);
    // The no-store API call is never answered from the cache.
    expect(h.origin.count('/api')).toBe(2);
    // Every request of the second load came through the proxy (none bypassed it).
    await h.proxy.stats.flush();
    const hits = (await h.metrics.text()).match(/tomlinson_cache_requests_total\{outcome="hit"\} (\d+)/);
    expect(Number(hits?.[1])).toBeGreaterThanOrEqual(4);
    // Two browser starts of about 12 s each on an idle two-core machine; room for a loaded CI.
  }, 120_000);
});
