/**
 * Absolute-form `https://` request targets over plain HTTP (proxy.httpsOrigin): the proxy opens
 * TLS to the origin itself, checks its certificate, and caches the answer under its https URL.
 * Real sockets throughout: https origins on 127.0.0.1 with test certificates (trusted through the
 * proxy's `originCa` option, never by turning verification off), requests written raw or by curl.
 */
import { execFile } from 'node:child_process';
import type { TLSSocket } from 'node:tls';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testCertificate } from '../support/tls-cert.js';
import { Harness, Origin, rawExchange, statusOf } from './harness.js';

const run = promisify(execFile);

/** The origin with a certificate the proxy trusts, for 127.0.0.1 and localhost. */
let good: Origin;
/** A self-signed certificate the proxy does not trust. */
let untrusted: Origin;
/** A trusted certificate for another name (other.example). */
let misnamed: Origin;
/** A plain-http server whose port is a TLS port for the proxy too. */
let plain: Origin;
let h: Harness;
let trustedPem: string;

/** One absolute-form request to `port` on a connection of its own; the raw answer. */
const send = (port: number, url: string, extra = ''): Promise<string> =>
  rawExchange(port, `GET ${url} HTTP/1.1\r\nHost: ${new URL(url).host}\r\n${extra}Connection: close\r\n\r\n`);

const bodyOf = (raw: string): string => raw.slice(raw.indexOf('\r\n\r\n') + 4);
const field = (raw: string, name: string): string | undefined => new RegExp(`^${name}: *(.*?)\\r$`, 'im').exec(raw)?.[1];

beforeAll(async () => {
  const ok = await testCertificate(['localhost', '127.0.0.1']);
  const other = await testCertificate(['other.example']);
  // selfsigned's PEM has no final newline: joined with one, or the second certificate is lost.
  trustedPem = `${ok.cert}\n${other.cert}\n`;
  good = await new Origin(ok).start();
  untrusted = await new Origin(await testCertificate(['localhost', '127.0.0.1', 'untrusted.example'])).start();
  misnamed = await new Origin(other).start();
  plain = await new Origin().start();
  plain.routes.set('/logo.png', (_req, res) => res.writeHead(200, { 'content-type': 'image/png', 'cache-control': 'public, max-age=3600' }).end('plain http'));
  for (const o of [good, untrusted, misnamed]) {
    o.routes.set('/logo.png', (_req, res) => res.writeHead(200, { 'content-type': 'image/png', 'cache-control': 'public, max-age=3600' }).end('over tls'));
  }
  h = await Harness.start({ TOMLINSON_PROXY_CONNECT_PORTS: ['443', good.port, untrusted.port, misnamed.port, plain.port].join(',') }, { originCa: trustedPem });
});

afterAll(async () => {
  await h?.stop();
  for (const o of [good, untrusted, misnamed, plain]) await o?.stop();
});

describe('GET https://... over plain HTTP', () => {
  it('fetches over TLS once, then answers from the cache', async () => {
    const url = good.url('/logo.png');
    const a = await send(h.proxy.port, url);
    expect(statusOf(a)).toBe(200);
    expect(bodyOf(a)).toContain('over tls');
    expect(field(a, 'cache-status')).toMatch(/^Tomlinson; fwd=uri-miss; fwd-status=200; stored$/);
    const b = await send(h.proxy.port, url);
    expect(statusOf(b)).toBe(200);
    expect(bodyOf(b)).toContain('over tls');
    expect(field(b, 'cache-status')).toMatch(/^Tomlinson; hit/);
    expect(good.count('/logo.png')).toBe(1);
  });

  it('keeps http://x/a and https://x/a apart in the cache', async () => {
    // The same host, port and path over http is another resource: fetched from the http server.
    const a = await send(h.proxy.port, plain.url('/logo.png'));
    expect(statusOf(a)).toBe(200);
    expect(bodyOf(a)).toContain('plain http');
    expect(field(a, 'cache-status')).toMatch(/^Tomlinson; fwd=uri-miss; fwd-status=200; stored$/);
    expect(plain.count('/logo.png')).toBe(1);
    // And the https URL of that same server is never answered from the http entry: the proxy
    // opens TLS to it, which a plain-http server cannot speak.
    const b = await send(h.proxy.port, `https://127.0.0.1:${plain.port}/logo.png`);
    expect(statusOf(b)).toBe(502);
    expect(bodyOf(b)).toMatch(/origin TLS handshake failed \(ERR_SSL_|origin error \(ECONNRESET\)/);
  });

  it('refuses https to a port CONNECT may not reach (proxy.connectPorts), before any connection', async () => {
    const r = await send(h.proxy.port, `https://127.0.0.1:${h.origin.port}/logo.png`);
    expect(statusOf(r)).toBe(403);
    expect(bodyOf(r)).toBe(`https to port ${h.origin.port} is not allowed (proxy.connectPorts)\n`);
    expect(h.origin.seen).toHaveLength(0);
  });

  it('checks the certificate against a host name and sends it as SNI', async () => {
    good.routes.set('/sni', (req, res) =>
      res.writeHead(200, { 'cache-control': 'no-store', 'content-type': 'text/plain' }).end(`sni=${(req.socket as TLSSocket).servername}`),
    );
    const r = await send(h.proxy.port, `https://localhost:${good.port}/sni`);
    expect(statusOf(r)).toBe(200);
    expect(bodyOf(r)).toContain('sni=localhost');
  });

  it('a POST to an https URL goes to the origin and invalidates the stored GET (RFC 9111 §4.4)', async () => {
    let n = 0;
    good.routes.set('/item', (req, res) => {
      if (req.method === 'POST') return void res.writeHead(204).end();
      res.writeHead(200, { 'cache-control': 'max-age=600', 'content-type': 'text/plain' }).end(`version ${++n}`);
    });
    const url = good.url('/item');
    expect(bodyOf(await send(h.proxy.port, url))).toContain('version 1');
    expect(bodyOf(await send(h.proxy.port, url))).toContain('version 1');
    const post = await rawExchange(h.proxy.port, `POST ${url} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi`);
    expect(statusOf(post)).toBe(204);
    expect(
      good
        .requests('/item')
        .find((r) => r.method === 'POST')
        ?.body.toString(),
    ).toBe('hi');
    expect(bodyOf(await send(h.proxy.port, url))).toContain('version 2');
    expect(good.count('/item', 'GET')).toBe(2);
  });

  it('curl with an absolute https request-target gets a miss, then a hit', async () => {
    good.routes.set('/curl', (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=60', 'content-type': 'text/plain' }).end('curl over tls'));
    // curl would CONNECT for an https URL through -x; --request-target sends the absolute form
    // to the proxy as a plain-http server instead, as a Squid-style client does.
    const args = ['-s', '-D', '-', '--request-target', good.url('/curl'), `http://127.0.0.1:${h.proxy.port}/`];
    const a = await run('curl', args);
    const b = await run('curl', args);
    expect(a.stdout).toContain('curl over tls');
    expect(b.stdout).toContain('curl over tls');
    expect(b.stdout.toLowerCase()).toContain('cache-status: tomlinson; hit');
    expect(good.count('/curl')).toBe(1);
  });

  it('answers 502 with the reason when the origin certificate is not trusted', async () => {
    const r = await send(h.proxy.port, untrusted.url('/logo.png'));
    expect(statusOf(r)).toBe(502);
    expect(bodyOf(r)).toMatch(/origin TLS certificate not accepted \(DEPTH_ZERO_SELF_SIGNED_CERT/);
    expect(untrusted.count('/logo.png')).toBe(0);
  });

  it('answers 502 when the certificate names another host', async () => {
    const r = await send(h.proxy.port, misnamed.url('/logo.png'));
    expect(statusOf(r)).toBe(502);
    expect(bodyOf(r)).toMatch(/origin TLS certificate not accepted \(ERR_TLS_CERT_ALTNAME_INVALID/);
    expect(misnamed.count('/logo.png')).toBe(0);
  });
});

describe('the guards stay', () => {
  let strict: Harness;
  beforeAll(async () => {
    strict = await Harness.start(
      { TOMLINSON_PROXY_ALLOW_PRIVATE_ORIGINS: 'false', TOMLINSON_PROXY_REQUIRE_AUTH: 'true', TOMLINSON_PROXY_CONNECT_PORTS: `443,${good.port}` },
      { originCa: trustedPem, authenticate: async (login, password) => login === 'bob' && password === 'pw' },
    );
  });
  afterAll(async () => {
    await strict?.stop();
  });
  const creds = `Proxy-Authorization: Basic ${Buffer.from('bob:pw').toString('base64')}\r\n`;

  it('a client without credentials gets 407 and reaches nothing', async () => {
    const before = good.seen.length;
    const r = await send(strict.proxy.port, good.url('/logo.png'));
    expect(statusOf(r)).toBe(407);
    expect(good.seen.length).toBe(before);
  });

  it('a loopback origin, by address or by a name that resolves to it, stays refused (403)', async () => {
    const before = good.seen.length;
    const a = await send(strict.proxy.port, good.url('/logo.png'), creds);
    expect(statusOf(a)).toBe(403);
    expect(bodyOf(a)).toMatch(/origin address 127\.0\.0\.1 refused: loopback/);
    const b = await send(strict.proxy.port, `https://localhost:${good.port}/logo.png`, creds);
    expect(statusOf(b)).toBe(403);
    expect(bodyOf(b)).toMatch(/origin localhost \(resolves to (127\.0\.0\.1|::1)\) refused/);
    expect(good.seen.length).toBe(before);
  });

  it('with proxy.httpsOrigin off, https in absolute form gets 400 and CONNECT is the way', async () => {
    const off = await Harness.start({ TOMLINSON_PROXY_HTTPS_ORIGIN: 'false', TOMLINSON_PROXY_CONNECT_PORTS: String(good.port) }, { originCa: trustedPem });
    try {
      const before = good.seen.length;
      const r = await send(off.proxy.port, good.url('/logo.png'));
      expect(statusOf(r)).toBe(400);
      expect(bodyOf(r)).toMatch(/use CONNECT for https URLs \(proxy\.httpsOrigin is off\)/);
      expect(good.seen.length).toBe(before);
    } finally {
      await off.stop();
    }
  });
});
