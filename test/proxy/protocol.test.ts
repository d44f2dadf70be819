/**
 * Message handling over real sockets (RFC 9110/9112): smuggling shapes, limits, hop-by-hop fields,
 * origin failures, cut-short bodies in both directions, access control, CONNECT, and curl -x.
 */
import { execFile } from 'node:child_process';
import { createServer } from 'node:http';
import { connect } from 'node:net';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Accounts } from '../../core/accounts/accounts.js';
import { Harness, rawExchange, statusOf } from './harness.js';

const run = promisify(execFile);
let h: Harness;

beforeAll(async () => {
  h = await Harness.start({ TOMLINSON_PROXY_ORIGIN_TIMEOUT_MS: '500' });
});
afterAll(async () => {
  await h?.stop();
});

function req(target: string, extra = '', body = ''): string {
  return `GET ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\n${extra}Connection: close\r\n\r\n${body}`;
}

describe('RFC 9112 §6.3 / §11.2: no request smuggling', () => {
  const cases: [string, string][] = [
    [
      'CL.TE (both Content-Length and Transfer-Encoding)',
      'POST {u} HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n',
    ],
    ['TE.CL', 'POST {u} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n'],
    ['duplicate Content-Length with different values', 'POST {u} HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc'],
    ['a Content-Length list', 'POST {u} HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc'],
    ['an obfuscated Transfer-Encoding', 'POST {u} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n'],
    ['obs-fold', 'GET {u} HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n'],
    ['a control byte in a field value', 'GET {u} HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n'],
  ];
  for (const [name, text] of cases) {
    it(`refuses ${name} with 400 and forwards nothing`, async () => {
      const path = `/smuggle-${name.length}`;
      h.origin.routes.set(path, (_q, res) => res.end('reached'));
      const out = await rawExchange(h.proxy.port, text.replace('{u}', h.origin.url(path)));
      expect(statusOf(out)).toBe(400);
      expect(out).toMatch(/\r\n\r\nbad request/);
      expect(h.origin.count(path)).toBe(0);
      expect(h.origin.count('/smuggled')).toBe(0);
    });
  }

  it('answers 431 to an oversized request head (RFC 6585 §5)', async () => {
    const out = await rawExchange(h.proxy.port, req(h.origin.url('/big-head'), `X-Big: ${'a'.repeat(20_000)}\r\n`));
    expect(statusOf(out)).toBe(431);
    expect(h.origin.count('/big-head')).toBe(0);
  });

  it('asks for the absolute form', async () => {
    const out = await rawExchange(h.proxy.port, 'GET /local HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n');
    expect(statusOf(out)).toBe(400);
  });
});

describe('RFC 9110 §7.6: hop-by-hop fields and Via', () => {
  it('removes hop-by-hop fields both ways and adds Via', async () => {
    h.origin.routes.set('/hop', (_q, res) => {
      res.writeHead(200, { connection: 'X-Internal', 'x-internal': 'secret', 'keep-alive': 'timeout=5', 'x-end': 'kept', 'cache-control': 'no-store' });
      res.end('ok');
    });
    const out = await rawExchange(
      h.proxy.port,
      `GET ${h.origin.url('/hop')} HTTP/1.1\r\nHost: wrong.example\r\nConnection: X-Private, close\r\nX-Private: 1\r\nKeep-Alive: 300\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nTE: trailers\r\nX-Kept: yes\r\nVia: 1.0 upstream\r\n\r\n`,
    );
    expect(statusOf(out)).toBe(200);
    const seen = h.origin.requests('/hop')[0].headers;
    expect(seen['x-private']).toBeUndefined();
    expect(seen['proxy-authorization']).toBeUndefined();
    expect(seen['keep-alive']).toBeUndefined();
    expect(seen.te).toBeUndefined();
    expect(seen['x-kept']).toBe('yes');
    expect(seen.host).toBe(`127.0.0.1:${h.origin.port}`);
    expect(seen.via).toMatch(/^1\.0 upstream, 1\.1 proxy\.test \(Tomlinson [0-9a-f]{8}\)$/);
    const head = out.slice(0, out.indexOf('\r\n\r\n')).toLowerCase();
    expect(head).not.toContain('x-internal');
    expect(head).toContain('x-end: kept');
    expect(head).toContain('via: 1.1 proxy.test (tomlinson ');
  });

  it('a request that loops back to the proxy is refused with 508', async () => {
    const out = await rawExchange(h.proxy.port, req(`http://127.0.0.1:${h.proxy.port}/loop`));
    expect(statusOf(out)).toBe(508);
  });
});

describe('origin failures', () => {
  it('502 with a short body when the origin refuses the connection', async () => {
    const s = createServer();
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
    const port = (s.address() as { port: number }).port;
    await new Promise<void>((r) => s.close(() => r()));
    const out = await rawExchange(h.proxy.port, req(`http://127.0.0.1:${port}/x`));
    expect(statusOf(out)).toBe(502);
    expect(out).toContain('origin refused the connection');
  });

  it('504 with a short body when the origin does not answer in time', async () => {
    h.origin.routes.set('/slow', () => undefined);
    const out = await rawExchange(h.proxy.port, req(h.origin.url('/slow')), 5000);
    expect(statusOf(out)).toBe(504);
    expect(out).toContain('origin did not answer in time');
  });

  it('an origin that resets mid-body: the client sees the cut, and nothing is stored', async () => {
    for (const chunked of [false, true]) {
      const path = `/reset-${chunked}`;
      h.origin.routes.set(path, (_q, res) => {
        res.writeHead(200, chunked ? { 'cache-control': 'max-age=600' } : { 'cache-control': 'max-age=600', 'content-length': '1000' });
        res.write('x'.repeat(500));
        setTimeout(() => res.socket?.destroy(), 50);
      });
      const out = await rawExchange(h.proxy.port, req(h.origin.url(path)));
      expect(statusOf(out)).toBe(200);
      const body = out.slice(out.indexOf('\r\n\r\n') + 4);
      if (!chunked) expect(body.length).toBeLessThan(1000);
      else expect(body).not.toMatch(/\r\n0\r\n\r\n$/);
      await h.proxy.store.flush();
      expect(await h.proxy.store.lookup(h.origin.url(path), {})).toBeUndefined();
      await rawExchange(h.proxy.port, req(h.origin.url(path)));
      expect(h.origin.count(path)).toBe(2);
    }
  });

  it('streams a cacheable body to the client while storing it (first bytes before the origin ends)', async () => {
    // Its own proxy: this file's shares a short origin timeout, shorter than the pause below.
    const h2 = await Harness.start();
    try {
      h2.origin.routes.set('/stream', (_q, res) => {
        res.writeHead(200, { 'cache-control': 'max-age=600' });
        res.write('first part;');
        setTimeout(() => res.end('second part'), 1500);
      });
      const t0 = Date.now();
      const { firstAt, text } = await new Promise<{ firstAt: number; text: string }>((resolve) => {
        const s = connect(h2.proxy.port, '127.0.0.1', () => s.write(req(h2.origin.url('/stream'))));
        let buf = '';
        let firstAt = 0;
        s.on('data', (d) => {
          buf += d.toString();
          if (!firstAt && buf.includes('first part;')) firstAt = Date.now();
        });
        s.on('close', () => resolve({ firstAt, text: buf }));
      });
      expect(firstAt - t0).toBeLessThan(1200);
      expect(text).toContain('second part');
      await h2.proxy.store.flush();
      const hit = await rawExchange(h2.proxy.port, req(h2.origin.url('/stream')));
      expect(hit).toContain('first part;second part');
      expect(h2.origin.count('/stream')).toBe(1);
    } finally {
      await h2.stop();
    }
  });

  it('a client that disconnects mid-body: the origin sees an incomplete request, the proxy carries on', async () => {
    h.origin.routes.set('/upload', (_q, res, body) => res.end(`got ${body.length}`));
    await new Promise<void>((resolve) => {
      const s = connect(h.proxy.port, '127.0.0.1', () => {
        s.write(`POST ${h.origin.url('/upload')} HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n${'y'.repeat(1000)}`);
        setTimeout(() => {
          s.destroy();
          resolve();
        }, 200);
      });
    });
    // The proxy forwards the head at once; the origin never gets the rest (however loaded the machine).
    const until = Date.now() + 5000;
    while (h.origin.requests('/upload').length === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 200));
    const seen = h.origin.requests('/upload');
    expect(seen).toHaveLength(1);
    expect(seen[0].complete).toBe(false);
    // A full upload still works afterwards.
    const out = await rawExchange(h.proxy.port, `POST ${h.origin.url('/upload')} HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello`);
    expect(out).toContain('got 5');
  });

  it('a client that disconnects mid-response: the partial object is not stored', async () => {
    h.origin.routes.set('/slowbody', (_q, res) => {
      res.writeHead(200, { 'cache-control': 'max-age=600', 'content-length': '20000' });
      res.write('z'.repeat(10000));
      setTimeout(() => res.end('z'.repeat(10000)), 400);
    });
    await new Promise<void>((resolve) => {
      const s = connect(h.proxy.port, '127.0.0.1', () => s.write(req(h.origin.url('/slowbody'))));
      s.once('data', () => {
        s.destroy();
        resolve();
      });
    });
    await new Promise((r) => setTimeout(r, 600));
    await h.proxy.store.flush();
    expect(await h.proxy.store.lookup(h.origin.url('/slowbody'), {})).toBeUndefined();
  });
});

describe('not an open proxy', () => {
  it('403 to a client outside the allowed ranges', async () => {
    const h2 = await Harness.start({ TOMLINSON_PROXY_ALLOWED_CLIENTS: '10.0.0.0/8' });
    try {
      h2.origin.routes.set('/a', (_q, res) => res.end('a'));
      const out = await rawExchange(h2.proxy.port, req(h2.origin.url('/a')));
      expect(statusOf(out)).toBe(403);
      expect(h2.origin.count('/a')).toBe(0);
    } finally {
      await h2.stop();
    }
  });

  it('refuses loopback, link-local and metadata origins unless configured', async () => {
    const h2 = await Harness.start({ TOMLINSON_PROXY_ALLOW_PRIVATE_ORIGINS: 'false' });
    try {
      h2.origin.routes.set('/a', (_q, res) => res.end('a'));
      for (const target of [h2.origin.url('/a'), `http://localhost:${h2.origin.port}/a`, 'http://169.254.169.254/latest/meta-data/', 'http://[::1]:80/']) {
        const out = await rawExchange(h2.proxy.port, req(target));
        expect(statusOf(out), target).toBe(403);
      }
      expect(h2.origin.count('/a')).toBe(0);
    } finally {
      await h2.stop();
    }
  });

  it('407 without valid Proxy-Authorization when authentication is required (curl -U)', async () => {
    const h2 = await Harness.start({ TOMLINSON_PROXY_REQUIRE_AUTH: 'true' });
    try {
      const accounts = new Accounts(h2.storage.tables, { scrypt: { ln: 10, r: 8, p: 1 } });
      await accounts.addDomain('example.com');
      await accounts.addUser('bob@example.com', 'right horse');
      h2.origin.routes.set('/a', (_q, res) => res.end('authorised'));
      const none = await rawExchange(h2.proxy.port, req(h2.origin.url('/a')));
      expect(statusOf(none)).toBe(407);
      expect(none).toMatch(/proxy-authenticate: Basic realm="tomlinson"/i);
      const bad = await run('curl', [
        '-s',
        '-o',
        '/dev/null',
        '-w',
        '%{http_code}',
        '-x',
        `http://127.0.0.1:${h2.proxy.port}`,
        '-U',
        'bob@example.com:wrong',
        h2.origin.url('/a'),
      ]);
      expect(bad.stdout).toBe('407');
      const good = await run('curl', ['-s', '-x', `http://127.0.0.1:${h2.proxy.port}`, '-U', 'bob@example.com:right horse', h2.origin.url('/a')]);
      expect(good.stdout).toBe('authorised');
      expect(h2.origin.count('/a')).toBe(1);
    } finally {
      await h2.stop();
    }
  });
});

describe('CONNECT tunnels', () => {
  it('tunnels to an allowed port and refuses others', async () => {
    const h2 = await Harness.start({ TOMLINSON_PROXY_CONNECT_PORTS: '443' });
    try {
      const out = await rawExchange(h2.proxy.port, `CONNECT 127.0.0.1:${h2.origin.port} HTTP/1.1\r\nHost: 127.0.0.1:${h2.origin.port}\r\n\r\n`);
      expect(statusOf(out)).toBe(403);
    } finally {
      await h2.stop();
    }
    const h3 = await Harness.start();
    await h3.stopProxy();
    h3.config.proxy.connectPorts = [String(h3.origin.port)];
    await h3.startProxy();
    try {
      h3.origin.routes.set('/tunnelled', (_q, res) => res.end('through the tunnel'));
      const text = await new Promise<string>((resolve) => {
        const s = connect(h3.proxy.port, '127.0.0.1', () => s.write(`CONNECT 127.0.0.1:${h3.origin.port} HTTP/1.1\r\nHost: x\r\n\r\n`));
        let buf = '';
        let sent = false;
        s.on('data', (d) => {
          buf += d.toString();
          if (!sent && buf.includes('\r\n\r\n')) {
            sent = true;
            expect(statusOf(buf)).toBe(200);
            s.write('GET /tunnelled HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
          }
        });
        s.on('close', () => resolve(buf));
      });
      expect(text).toContain('through the tunnel');
      expect(h3.origin.count('/tunnelled')).toBe(1);
    } finally {
      await h3.stop();
    }
  });
});

describe('curl -x', () => {
  it('the second fetch is a hit with no origin request', async () => {
    h.origin.routes.set('/curl', (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=60', 'content-type': 'text/plain' }).end('curl body'));
    const args = ['-s', '-D', '-', '-x', `http://127.0.0.1:${h.proxy.port}`, h.origin.url('/curl')];
    const a = await run('curl', args);
    const b = await run('curl', args);
    expect(a.stdout).toContain('curl body');
    expect(b.stdout).toContain('curl body');
    expect(b.stdout.toLowerCase()).toContain('cache-status: tomlinson; hit');
    expect(h.origin.count('/curl')).toBe(1);
  });
});

describe('idle client connections (keep-alive timeout)', () => {
  let hk: Harness;
  beforeAll(async () => {
    hk = await Harness.start({}, { keepAliveMs: 300 });
  });
  afterAll(async () => {
    await hk?.stop();
  });

  /** Connects, writes `data`, and resolves with what was read and when the proxy closed (ms after connecting). */
  function until(data: string): Promise<{ out: string; closedAfterMs: number }> {
    return new Promise((resolve) => {
      const t0 = Date.now();
      const s = connect(hk.proxy.port, '127.0.0.1', () => data && s.write(data));
      let out = '';
      const guard = setTimeout(() => s.destroy(), 5000);
      s.on('data', (d) => (out += d.toString('latin1')));
      s.on('error', () => undefined);
      s.on('close', () => {
        clearTimeout(guard);
        resolve({ out, closedAfterMs: Date.now() - t0 });
      });
    });
  }

  it('closes a keep-alive connection idle after its response, and one that never sends anything', async () => {
    hk.origin.routes.set('/ka', (_q, res) => res.end('ka'));
    const [used, silent] = await Promise.all([until(`GET ${hk.origin.url('/ka')} HTTP/1.1\r\nHost: a\r\n\r\n`), until('')]);
    expect(statusOf(used.out)).toBe(200);
    expect(used.closedAfterMs).toBeGreaterThanOrEqual(300);
    expect(used.closedAfterMs).toBeLessThan(4000);
    expect(silent.out).toBe('');
    expect(silent.closedAfterMs).toBeLessThan(4000);
  });

  it('does not close a connection while its response is still under way', async () => {
    hk.origin.routes.set('/slow-ka', (_q, res) => {
      res.writeHead(200, { 'cache-control': 'no-store', 'content-length': '4' });
      res.write('sl');
      setTimeout(() => res.end('ow'), 1200);
    });
    const r = await until(`GET ${hk.origin.url('/slow-ka')} HTTP/1.1\r\nHost: a\r\n\r\n`);
    expect(r.out).toMatch(/\r\n\r\nslow$/);
    expect(r.closedAfterMs).toBeGreaterThanOrEqual(1200);
  });
});
