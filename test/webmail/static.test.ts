/**
 * The webmail's static files (containers/web/webmail/static.ts) through the real web listener over
 * HTTPS: the redirect from /, index.html for the app's routes with the contract's security headers
 * and no-cache, a year of caching for hashed assets, gzip and brotli, ETag revalidation, and the
 * 503 page when the webmail is not built. The files are a small stand-in build in a temporary
 * folder, so these tests do not depend on the UI's code.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { brotliDecompressSync, gunzipSync } from 'node:zlib';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { createWebmailStatic, defaultWebmailDir } from '../../containers/web/webmail/static.js';
import { startWebHarness, type WebHarness } from '../web/harness.js';

const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; frame-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";
const SCRIPT = `console.log(${JSON.stringify('webmail '.repeat(200))});\n`;
const HTML = `<!doctype html><html><head><script type="module" src="/webmail/assets/app-ABC123.js"></script></head><body>${'<p>x</p>'.repeat(60)}</body></html>`;

let dir: string;
let h: WebHarness;
let missing: WebHarness;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tomlinson-webmail-static-'));
  await mkdir(join(dir, 'webmail/assets'), { recursive: true });
  await writeFile(join(dir, 'webmail/index.html'), HTML);
  await writeFile(join(dir, 'webmail/assets/app-ABC123.js'), SCRIPT);
  const config = loadConfig({});
  h = await startWebHarness({}, { static: await createWebmailStatic(config, silentLogger, { dir: join(dir, 'webmail') }) });
  missing = await startWebHarness({}, { static: await createWebmailStatic(config, silentLogger, { dir: join(dir, 'nothing-here') }) });
});
afterAll(async () => {
  await h?.close();
  await missing?.close();
  await rm(dir, { recursive: true, force: true });
});

/** undici.request does not decode content codings, so the bytes on the wire can be checked. */
async function raw(base: string, agent: WebHarness['agent'], path: string, headers: Record<string, string> = {}, method: 'GET' | 'HEAD' | 'POST' = 'GET') {
  const res = await request(`${base}${path}`, { dispatcher: agent, headers, method });
  const body = Buffer.from(await res.body.arrayBuffer());
  return { status: res.statusCode, headers: res.headers as Record<string, string>, body };
}

describe('webmail static files', () => {
  it('redirects / and /webmail to /webmail/', async () => {
    for (const p of ['/', '/webmail']) {
      const r = await raw(h.base, h.agent, p);
      expect(r.status).toBe(302);
      expect(r.headers.location).toBe('/webmail/');
    }
  });

  it('serves index.html for /webmail/, /webmail/index.html and client routes, no-cache, with the contract headers', async () => {
    for (const p of ['/webmail/', '/webmail/index.html', '/webmail/mailbox/Inbox/M0123']) {
      const r = await raw(h.base, h.agent, p);
      expect(r.status).toBe(200);
      expect(r.body.toString()).toBe(HTML);
      expect(r.headers['content-type']).toBe('text/html; charset=utf-8');
      expect(r.headers['cache-control']).toBe('no-cache');
      expect(r.headers['content-security-policy']).toBe(CSP);
      expect(r.headers['referrer-policy']).toBe('no-referrer');
      expect(r.headers['x-content-type-options']).toBe('nosniff');
      expect(r.headers['x-frame-options']).toBe('DENY');
      expect(r.headers['cross-origin-opener-policy']).toBe('same-origin');
    }
  });

  it('serves hashed assets for a year, immutable, and 404 for an unknown asset (never the HTML)', async () => {
    const r = await raw(h.base, h.agent, '/webmail/assets/app-ABC123.js');
    expect(r.status).toBe(200);
    expect(r.headers['cache-control']).toBe('public, max-age=31536000, immutable');
    expect(r.headers['content-type']).toBe('text/javascript; charset=utf-8');
    expect(r.headers['x-content-type-options']).toBe('nosniff');
    expect(r.body.toString()).toBe(SCRIPT);
    const gone = await raw(h.base, h.agent, '/webmail/assets/app-OLD.js');
    expect(gone.status).toBe(404);
    expect(gone.body.toString()).not.toContain('<html');
    expect((await raw(h.base, h.agent, '/webmail/assets/%E0%A4%A')).status).toBe(404);
    expect((await raw(h.base, h.agent, '/webmail/assets/index.html')).status).toBe(404);
  });

  it('compresses with gzip or brotli when the client accepts it', async () => {
    const gz = await raw(h.base, h.agent, '/webmail/assets/app-ABC123.js', { 'accept-encoding': 'gzip' });
    expect(gz.headers['content-encoding']).toBe('gzip');
    expect(gz.headers.vary).toBe('Accept-Encoding');
    expect(gz.body.length).toBeLessThan(SCRIPT.length / 4);
    expect(gunzipSync(gz.body).toString()).toBe(SCRIPT);
    const br = await raw(h.base, h.agent, '/webmail/', { 'accept-encoding': 'gzip, deflate, br' });
    expect(br.headers['content-encoding']).toBe('br');
    expect(brotliDecompressSync(br.body).toString()).toBe(HTML);
    const noBr = await raw(h.base, h.agent, '/webmail/', { 'accept-encoding': 'br;q=0, gzip' });
    expect(noBr.headers['content-encoding']).toBe('gzip');
    const plain = await raw(h.base, h.agent, '/webmail/', { 'accept-encoding': 'identity' });
    expect(plain.headers['content-encoding']).toBeUndefined();
    expect(plain.body.toString()).toBe(HTML);
  });

  it('answers a matching If-None-Match with 304, HEAD without a body, other methods 405', async () => {
    const first = await raw(h.base, h.agent, '/webmail/assets/app-ABC123.js');
    const again = await raw(h.base, h.agent, '/webmail/assets/app-ABC123.js', { 'if-none-match': first.headers.etag });
    expect(again.status).toBe(304);
    expect(again.body.length).toBe(0);
    const head = await raw(h.base, h.agent, '/webmail/', {}, 'HEAD');
    expect(head.status).toBe(200);
    expect(Number(head.headers['content-length'])).toBe(HTML.length);
    expect((await raw(h.base, h.agent, '/webmail/', {}, 'POST')).status).toBe(405);
  });

  it('leaves other paths to the listener (404) and JMAP untouched', async () => {
    expect((await raw(h.base, h.agent, '/elsewhere')).status).toBe(404);
    expect((await raw(h.base, h.agent, '/jmap/session')).status).toBe(401);
  });

  it('answers 503 with what to run when the webmail is not built', async () => {
    const r = await raw(missing.base, missing.agent, '/webmail/');
    expect(r.status).toBe(503);
    expect(r.headers['content-type']).toMatch(/^text\/plain/);
    expect(r.body.toString()).toContain('npm run build');
    expect((await raw(missing.base, missing.agent, '/')).status).toBe(302);
  });

  it('finds dist/webmail from the repository module and from the bundle layout', async () => {
    const app = join(dir, 'app');
    await mkdir(join(app, 'dist/containers'), { recursive: true });
    await mkdir(join(app, 'dist/webmail'), { recursive: true });
    await writeFile(join(app, 'dist/webmail/index.html'), HTML);
    // The image: /app/dist/containers/main.mjs.
    expect(defaultWebmailDir(join(app, 'dist/containers'))).toBe(join(app, 'dist/webmail'));
    // The repository under tsx: <root>/containers/web/webmail/static.ts.
    await mkdir(join(app, 'containers/web/webmail'), { recursive: true });
    expect(defaultWebmailDir(join(app, 'containers/web/webmail'))).toBe(join(app, 'dist/webmail'));
  });
});
