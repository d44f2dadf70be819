/**
 * /webmail/image (containers/web/webmail/image-proxy.ts) end to end: the web listener over HTTPS,
 * our caching forward proxy (containers/proxy, allowed to reach 127.0.0.1 origins for the test)
 * and scripted origin servers on 127.0.0.1 that record what reaches them: one plain http, one https
 * with a test certificate the proxy trusts (its `originCa` option; verification stays on).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IMAGE_USER_AGENT, imageProxyUrl } from '../../containers/web/webmail/image-proxy.js';
import { loadConfig } from '../../core/config.js';
import { Harness, Origin } from '../proxy/harness.js';
import { testCertificate } from '../support/tls-cert.js';
import { startWebHarness, type WebHarness } from '../web/harness.js';

const ALICE = 'alice@example.com';
const PNG = Buffer.from('89504e470d0a1a0a0000000d4948445200000001000000010806000000', 'hex');

let proxy: Harness;
/** An https origin: its images reach the proxy as absolute https URLs, not through a tunnel. */
let secure: Origin;
let web: WebHarness;
let off: WebHarness;
let cookie: string;

beforeAll(async () => {
  const cert = await testCertificate(['localhost', '127.0.0.1']);
  secure = await new Origin(cert).start();
  secure.routes.set('/logo.png', (_req, res) => {
    res.writeHead(200, { 'content-type': 'image/png', 'cache-control': 'public, max-age=3600', 'content-length': String(PNG.length) });
    res.end(PNG);
  });
  secure.routes.set('/moved.png', (_req, res) => {
    res.writeHead(302, { location: '/logo.png' });
    res.end();
  });
  proxy = await Harness.start({ TOMLINSON_PROXY_CONNECT_PORTS: `443,${secure.port}` }, { originCa: cert.cert });
  const o = proxy.origin;
  o.routes.set('/logo.png', (_req, res) => {
    res.writeHead(200, { 'content-type': 'image/png', 'cache-control': 'public, max-age=3600', 'content-length': String(PNG.length) });
    res.end(PNG);
  });
  o.routes.set('/page.html', (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html', 'cache-control': 'public, max-age=3600' });
    res.end('<script>alert(1)</script>');
  });
  o.routes.set('/huge.png', (_req, res) => {
    res.writeHead(200, { 'content-type': 'image/png', 'content-length': String(4096) });
    res.end(Buffer.alloc(4096));
  });
  o.routes.set('/chunked.png', (_req, res) => {
    res.writeHead(200, { 'content-type': 'image/png' });
    res.end(Buffer.alloc(4096));
  });
  o.routes.set('/moved.png', (_req, res) => {
    res.writeHead(302, { location: '/logo.png' });
    res.end();
  });
  o.routes.set('/missing.png', (_req, res) => {
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('no');
  });
  web = await startWebHarness({ TOMLINSON_WEB_IMAGE_PROXY: `http://127.0.0.1:${proxy.proxy.port}`, TOMLINSON_WEB_IMAGE_MAX_BYTES: '2048' }, {}, [ALICE]);
  off = await startWebHarness({ TOMLINSON_WEB_IMAGE_PROXY: 'off' }, {}, [ALICE]);
  const res = await web.fetch('/webmail/api/login', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username: ALICE, password: 'password-alice' }),
  });
  cookie = /^(__Host-tomlinson=[^;]+)/.exec(res.headers.get('set-cookie') ?? '')![1];
});
afterAll(async () => {
  await web?.close();
  await off?.close();
  await proxy?.stop();
  await secure?.stop();
});

const image = (h: WebHarness, url: string, headers: Record<string, string> = { cookie: '' }) =>
  h.fetch(`/webmail/image?url=${encodeURIComponent(url)}`, { headers: { referer: 'https://127.0.0.1/webmail/secret-folder', ...headers } });

describe('/webmail/image', () => {
  it('fetches an image through the proxy with no cookie or Referer of the reader, then from the proxy cache', async () => {
    const res = await image(web, proxy.origin.url('/logo.png'), { cookie, 'accept-language': 'de-CH' });
    expect(res.status).toBe(200);
    expect(Buffer.from(await res.arrayBuffer())).toEqual(PNG);
    expect(res.headers.get('content-type')).toBe('image/png');
    expect(res.headers.get('cache-control')).toBe('private, max-age=86400');
    expect(res.headers.get('content-security-policy')).toBe("default-src 'none'; sandbox");
    expect(res.headers.get('x-content-type-options')).toBe('nosniff');
    const seen = proxy.origin.requests('/logo.png');
    expect(seen).toHaveLength(1);
    expect(seen[0].headers.cookie).toBeUndefined();
    expect(seen[0].headers.referer).toBeUndefined();
    expect(seen[0].headers['accept-language']).toBeUndefined();
    expect(seen[0].headers['user-agent']).toBe(IMAGE_USER_AGENT);

    const again = await image(web, proxy.origin.url('/logo.png'), { cookie });
    expect(again.status).toBe(200);
    expect(Buffer.from(await again.arrayBuffer())).toEqual(PNG);
    expect(proxy.origin.count('/logo.png')).toBe(1);
  });

  it('fetches an https image through the proxy in absolute form, then from the proxy cache', async () => {
    const res = await image(web, secure.url('/logo.png'), { cookie });
    expect(res.status).toBe(200);
    expect(Buffer.from(await res.arrayBuffer())).toEqual(PNG);
    const seen = secure.requests('/logo.png');
    expect(seen).toHaveLength(1);
    expect(seen[0].headers.cookie).toBeUndefined();
    expect(seen[0].headers['user-agent']).toBe(IMAGE_USER_AGENT);
    // Through the proxy's cache flow, not a tunnel: its Via is on the origin's request.
    expect(seen[0].headers.via).toMatch(/^1\.1 proxy\.test \(Tomlinson [0-9a-f]+\)$/);

    const again = await image(web, secure.url('/logo.png'), { cookie });
    expect(again.status).toBe(200);
    expect(Buffer.from(await again.arrayBuffer())).toEqual(PNG);
    expect(secure.count('/logo.png')).toBe(1);
  });

  it('follows an https redirect through the proxy', async () => {
    const res = await image(web, secure.url('/moved.png'), { cookie });
    expect(res.status).toBe(200);
    expect(Buffer.from(await res.arrayBuffer())).toEqual(PNG);
    expect(secure.count('/moved.png')).toBe(1);
  });

  it('follows a redirect through the proxy', async () => {
    const res = await image(web, proxy.origin.url('/moved.png'), { cookie });
    expect(res.status).toBe(200);
    expect(Buffer.from(await res.arrayBuffer())).toEqual(PNG);
  });

  it('refuses what is not an image (415), too large (413), or not there (502)', async () => {
    expect((await image(web, proxy.origin.url('/page.html'), { cookie })).status).toBe(415);
    expect((await image(web, proxy.origin.url('/huge.png'), { cookie })).status).toBe(413);
    expect((await image(web, proxy.origin.url('/missing.png'), { cookie })).status).toBe(502);
    // No length given: the answer is cut at the limit, never delivered whole.
    await expect(image(web, proxy.origin.url('/chunked.png'), { cookie }).then((r) => r.arrayBuffer())).rejects.toThrow();
  });

  it('takes only absolute http and https URLs', async () => {
    for (const url of ['file:///etc/passwd', 'javascript:alert(1)', '/relative.png', 'not a url', 'http://user:pw@127.0.0.1/x.png']) {
      expect((await image(web, url, { cookie })).status).toBe(400);
    }
    expect((await web.fetch('/webmail/image', { headers: { cookie } })).status).toBe(400);
  });

  it('needs a signed-in session', async () => {
    expect((await image(web, proxy.origin.url('/logo.png'))).status).toBe(401);
    expect((await image(web, proxy.origin.url('/logo.png'), { cookie: `__Host-tomlinson=${'B'.repeat(43)}` })).status).toBe(401);
    expect((await web.fetch(`/webmail/image?url=x`, { method: 'POST', headers: { cookie } })).status).toBe(405);
  });

  it('answers 503 with a reason when remote images are turned off', async () => {
    const res = await off.fetch('/webmail/api/login', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username: ALICE, password: 'password-alice' }),
    });
    const offCookie = /^(__Host-tomlinson=[^;]+)/.exec(res.headers.get('set-cookie') ?? '')![1];
    const r = await image(off, proxy.origin.url('/logo.png'), { cookie: offCookie });
    expect(r.status).toBe(503);
    expect(((await r.json()) as { title: string }).title).toMatch(/turned off/);
  });

  it('web.imageProxy auto means our own proxy where it listens, and nothing when it is off', () => {
    expect(imageProxyUrl(loadConfig({}))).toBe('http://127.0.0.1:3128');
    expect(imageProxyUrl(loadConfig({ TOMLINSON_LISTEN_HOST: '0.0.0.0', TOMLINSON_PROXY_PORT: '3999' }))).toBe('http://127.0.0.1:3999');
    expect(imageProxyUrl(loadConfig({ TOMLINSON_LISTEN_HOST: '10.1.2.3' }))).toBe('http://10.1.2.3:3128');
    expect(imageProxyUrl(loadConfig({ TOMLINSON_LISTEN_HOST: '::1' }))).toBe('http://[::1]:3128');
    expect(imageProxyUrl(loadConfig({ TOMLINSON_PROXY_ENABLED: 'false' }))).toBeUndefined();
    expect(imageProxyUrl(loadConfig({ TOMLINSON_WEB_IMAGE_PROXY: 'off' }))).toBeUndefined();
    expect(imageProxyUrl(loadConfig({ TOMLINSON_WEB_IMAGE_PROXY: 'http://proxy.internal:3128' }))).toBe('http://proxy.internal:3128');
  });
});
