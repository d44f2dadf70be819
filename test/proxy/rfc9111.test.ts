/**
 * Where the proxy used to differ from RFC 9111 / RFC 9110 (issue 18, item 13), each rule observed
 * through the proxy on a real socket with a scripted origin.
 */
import { execFile } from 'node:child_process';
import { connect } from 'node:net';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Harness, rawExchange } from './harness.js';

let h: Harness;
let seq = 0;
const p = (name: string) => `/${name}-${++seq}`;

beforeAll(async () => {
  h = await Harness.start();
});
afterAll(async () => {
  await h?.stop();
});

describe('a. Age (RFC 9111 §5.1)', () => {
  it('a value that is not a non-negative integer is ignored; of a list, the first member counts', async () => {
    const cases: [string | string[], string][] = [
      ['-5', '0'],
      ['1.5', '0'],
      ['10abc', '0'],
      ['abc', '0'],
      ['', '0'],
      ['+7', '0'],
      ['7', '7'],
      ['10, 20', '10'],
      [['12', '30'], '12'],
      // RFC 9111 §1.2.2: a delta-seconds too large to represent counts as 2^31.
      ['99999999999999999999', '2147483648'],
    ];
    for (const [age, served] of cases) {
      const path = p('age');
      h.origin.routes.set(path, (_q, res) =>
        res.writeHead(200, [['cache-control', 'max-age=3000000000'], ...(Array.isArray(age) ? age : [age]).map((v) => ['age', v])].flat()).end('a'),
      );
      await h.get(path);
      const r = await h.get(path);
      expect(r.headers['cache-status'], JSON.stringify(age)).toBe('Tomlinson; hit');
      expect(r.headers.age, JSON.stringify(age)).toBe(served);
    }
  });

  it('a negative Age does not lengthen freshness', async () => {
    const path = p('age-neg');
    h.origin.routes.set(path, (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=10', age: '-5' }).end('n'));
    await h.get(path);
    h.clock.advance(12);
    await h.get(path);
    expect(h.origin.count(path)).toBe(2);
  });
});

describe('b. Expires (RFC 9111 §5.3, HTTP-date of RFC 9110 §5.6.7)', () => {
  const valid = ['Fri, 31 Dec 2049 23:59:59 GMT', 'Friday, 31-Dec-49 23:59:59 GMT', 'Fri Dec 31 23:59:59 2049', 'Fri Dec  3 23:59:59 2049'];
  const invalid = [
    '0',
    '-1',
    'garbage',
    '',
    '2049',
    '2049-12-31T23:59:59Z',
    'Fri, 31 Dec 2049 23:59:59',
    'Fri, 31 Dec 2049 23:59:59 UTC',
    'Fri, 31 Dec 2049 23:59:59 +0000',
    'fri, 31 dec 2049 23:59:59 gmt',
    'Fri, 31 Dec 49 23:59:59 GMT',
    'Fri, 31 Feb 2049 23:59:59 GMT',
    'Fri, 31 Dec 2049 24:00:00 GMT',
    'Dec 31 2049',
    '12/31/2049',
    'Fri, 31 Dec 2049 23:59:59 GMT, Sat, 01 Jan 2050 00:00:00 GMT',
  ];
  for (const [expires, fresh] of [...valid.map((v) => [v, true] as const), ...invalid.map((v) => [v, false] as const)]) {
    it(`${JSON.stringify(expires)} is ${fresh ? 'a valid date' : 'already expired'}`, async () => {
      const path = p('expires');
      h.origin.routes.set(path, (_q, res) => {
        // A Last-Modified long ago would give heuristic freshness were Expires ignored.
        res.writeHead(200, { date: new Date(h.clock.t).toUTCString(), 'last-modified': 'Sat, 01 Jan 2000 00:00:00 GMT', expires }).end('e');
      });
      await h.get(path);
      h.clock.advance(1);
      const r = await h.get(path);
      expect(h.origin.count(path)).toBe(fresh ? 1 : 2);
      expect(r.headers['cache-status']).toBe(fresh ? 'Tomlinson; hit' : 'Tomlinson; fwd=stale; fwd-status=200; stored');
    });
  }
});

describe('c. cache directives are case-insensitive (RFC 9111 §5.2)', () => {
  it('in the response', async () => {
    const cases: [string, 'stored' | 'hit' | 'revalidated' | 'not stored'][] = [
      ['MAX-AGE=60', 'hit'],
      ['Max-Age=60', 'hit'],
      ['S-MaxAge=60', 'hit'],
      ['Private, MAX-AGE=60', 'not stored'],
      ['No-Store, max-age=60', 'not stored'],
      ['No-CaChE, max-age=60', 'revalidated'],
      ['max-age=60, Must-Revalidate', 'hit'],
    ];
    for (const [cc, want] of cases) {
      const path = p('cc-res');
      h.origin.routes.set(path, (req, res) => {
        if (req.headers['if-none-match'] === '"v"') return res.writeHead(304, { 'cache-control': cc, etag: '"v"' }).end();
        res.writeHead(200, { 'cache-control': cc, etag: '"v"' }).end('c');
      });
      const a = await h.get(path);
      expect(a.headers['cache-status'].endsWith('; stored'), cc).toBe(want !== 'not stored');
      // The field is forwarded as the origin wrote it.
      expect(a.headers['cache-control']).toBe(cc);
      const b = await h.get(path);
      const status = b.headers['cache-status'];
      if (want === 'hit') expect(status, cc).toBe('Tomlinson; hit');
      if (want === 'revalidated') expect(status, cc).toBe('Tomlinson; fwd=stale; fwd-status=304');
      if (want === 'not stored') expect(h.origin.count(path), cc).toBe(2);
    }
  });

  it('in the request', async () => {
    const cases: [Record<string, string>, 'hit' | 'revalidated' | 'not stored'][] = [
      [{ 'cache-control': 'No-CaChE' }, 'revalidated'],
      [{ 'cache-control': 'MAX-AGE=0' }, 'revalidated'],
      [{ 'cache-control': 'Min-Fresh=100' }, 'revalidated'],
      [{ 'cache-control': 'MAX-STALE' }, 'hit'],
      [{ pragma: 'No-Cache' }, 'revalidated'],
    ];
    for (const [headers, want] of cases) {
      const path = p('cc-req');
      h.origin.routes.set(path, (req, res) => {
        if (req.headers['if-none-match'] === '"q"') return res.writeHead(304, { 'cache-control': 'max-age=60', etag: '"q"' }).end();
        res.writeHead(200, { 'cache-control': 'max-age=60', etag: '"q"' }).end('q');
      });
      await h.get(path);
      // RFC 9111 §5.2.1.1: max-age=0 accepts a response of age 0; a second later it does not.
      h.clock.advance(1);
      const b = await h.get(path, headers);
      expect(b.headers['cache-status'], JSON.stringify(headers)).toBe(want === 'hit' ? 'Tomlinson; hit' : 'Tomlinson; fwd=stale; fwd-status=304');
    }
    const path = p('cc-req-nostore');
    h.origin.routes.set(path, (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=60' }).end('s'));
    const a = await h.get(path, { 'cache-control': 'No-Store' });
    expect(a.headers['cache-status']).toBe('Tomlinson; fwd=uri-miss; fwd-status=200');
    await h.get(path);
    expect(h.origin.count(path)).toBe(2);
  });
});

describe('d. invalidation by unsafe methods the cache does not know (RFC 9111 §4.4)', () => {
  it('any method but GET, HEAD, OPTIONS and TRACE invalidates the target and same-origin Location / Content-Location on 2xx/3xx', async () => {
    for (const method of ['LOCK', 'MKCOL', 'PROPPATCH', 'PURGE', 'LINK']) {
      const path = p('unsafe');
      const loc = p('unsafe-loc');
      const cloc = p('unsafe-cloc');
      h.origin.routes.set(path, (req, res) => {
        if (req.method !== 'GET') return res.writeHead(201, { location: loc, 'content-location': h.origin.url(cloc) }).end('done');
        res.writeHead(200, { 'cache-control': 'max-age=600' }).end('g');
      });
      for (const q of [loc, cloc]) h.origin.routes.set(q, (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=600' }).end('l'));
      for (const q of [path, loc, cloc]) await h.get(q);
      expect((await h.get(path, {}, method)).status, method).toBe(201);
      for (const q of [path, loc, cloc]) {
        await h.get(q);
        expect(h.origin.count(q, 'GET'), `${method} ${q}`).toBe(2);
      }
    }
  });

  it('an error response does not invalidate; OPTIONS and TRACE never do', async () => {
    const path = p('unsafe-err');
    h.origin.routes.set(path, (req, res) => {
      if (req.method === 'LOCK') return res.writeHead(423).end('locked');
      if (req.method !== 'GET') return res.writeHead(200).end('ok');
      res.writeHead(200, { 'cache-control': 'max-age=600' }).end('g');
    });
    await h.get(path);
    await h.get(path, {}, 'LOCK');
    await h.get(path, {}, 'OPTIONS');
    await h.get(path);
    expect(h.origin.count(path, 'GET')).toBe(1);
  });
});

describe('e. a hit serves the stored fields (RFC 9111 §4, RFC 9110 §6.6.1)', () => {
  it('keeps the stored Date and adds Age', async () => {
    const path = p('date');
    const date = new Date(h.clock.t - 2000).toUTCString();
    h.origin.routes.set(path, (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=60', date, 'x-stored': 'yes' }).end('d'));
    await h.get(path);
    h.clock.advance(7);
    for (const headers of <Record<string, string>[]>[{}, { range: 'bytes=0-0' }]) {
      const r = await h.get(path, headers);
      expect(r.headers['cache-status']).toBe('Tomlinson; hit');
      expect(r.headers.date).toBe(date);
      expect(r.headers['x-stored']).toBe('yes');
      expect(r.headers.age).toBe('7');
    }
  });
});

/** A request through the proxy over a raw socket; resolves with everything read until close. */
function raw(path: string, method = 'GET', extra = '', body = '', version = '1.1'): Promise<string> {
  const len = body ? `Content-Length: ${Buffer.byteLength(body)}\r\n` : '';
  return rawExchange(h.proxy.port, `${method} ${h.origin.url(path)} HTTP/${version}\r\nHost: 127.0.0.1\r\n${len}${extra}Connection: close\r\n\r\n${body}`);
}

describe('f. 1xx interim responses are forwarded (RFC 9110 §15.2)', () => {
  const LINK = '</style.css>; rel=preload; as=style, </a b.js>; rel=preload; title="two words"';
  const early = (path: string) =>
    h.origin.routes.set(path, (_q, res) => {
      res.writeProcessing();
      res.writeEarlyHints({ link: '</style.css>; rel=preload; as=style', 'x-hint': 'yes' });
      setTimeout(() => res.writeHead(200, { 'content-type': 'text/plain' }).end('final'), 20);
    });

  it('103 Early Hints and 102 Processing before a GET miss and a POST, before the final response', async () => {
    for (const method of ['GET', 'POST']) {
      const path = p('early');
      early(path);
      const out = await raw(path, method, '', method === 'POST' ? 'body' : '');
      const i102 = out.indexOf('HTTP/1.1 102 Processing\r\n');
      const i103 = out.indexOf('HTTP/1.1 103 Early Hints\r\n');
      const i200 = out.indexOf('HTTP/1.1 200 OK\r\n');
      expect(i102, `${method}: ${out}`).toBe(0);
      expect(i103, method).toBeGreaterThan(i102);
      expect(i200, method).toBeGreaterThan(i103);
      const hints = out.slice(i103, i200).toLowerCase();
      expect(hints).toContain('link: </style.css>; rel=preload; as=style\r\n');
      expect(hints).toContain('x-hint: yes\r\n');
      expect(hints).toMatch(/via: 1\.1 proxy\.test/);
      expect(out).toContain('final');
    }
  });

  it('a Link value that Node’s writeEarlyHints would refuse is forwarded as it came', async () => {
    const path = p('early-link');
    h.origin.routes.set(path, (_q, res) => {
      const s = res.socket!;
      s.write(`HTTP/1.1 103 Early Hints\r\nLink: ${LINK}\r\n\r\n`);
      setTimeout(() => res.writeHead(200, { 'content-length': '1' }).end('x'), 20);
    });
    const out = await raw(path);
    expect(out).toContain(`\r\nlink: ${LINK}\r\n`);
  });

  it('curl -x sees the 103 before the 200', async () => {
    const path = p('early-curl');
    early(path);
    const { stdout } = await promisify(execFile)('curl', [
      '-s',
      '-D',
      '-',
      '-o',
      '/dev/null',
      '--max-time',
      '5',
      '-x',
      `http://127.0.0.1:${h.proxy.port}`,
      h.origin.url(path),
    ]);
    expect(stdout).toMatch(
      /^HTTP\/1\.1 102 Processing\r\n[^]*HTTP\/1\.1 103 Early Hints\r\n[^]*link: <\/style\.css>; rel=preload; as=style\r\n[^]*HTTP\/1\.1 200 OK\r\n/,
    );
  });

  it('not to an HTTP/1.0 client, and the final response still arrives', async () => {
    const path = p('early-10');
    early(path);
    const out = await raw(path, 'GET', '', '', '1.0');
    expect(out.startsWith('HTTP/1.1 200 OK\r\n'), out).toBe(true);
    expect(out).toContain('final');
  });

  it('a request with Expect: 100-continue gets 100 Continue before it sends its body', async () => {
    const path = p('continue');
    h.origin.routes.set(path, (_q, res, body) => res.writeHead(200).end(`got ${body.toString()}`));
    const out = await new Promise<string>((resolve, reject) => {
      const s = connect(h.proxy.port, '127.0.0.1', () =>
        s.write(`POST ${h.origin.url(path)} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n`),
      );
      let text = '';
      const timer = setTimeout(() => s.destroy(new Error(`timeout: ${text}`)), 3000);
      s.on('data', (d) => {
        text += d.toString('latin1');
        if (text === 'HTTP/1.1 100 Continue\r\n\r\n') s.write('data');
      });
      s.on('error', reject);
      s.on('close', () => {
        clearTimeout(timer);
        resolve(text);
      });
    });
    expect(out.startsWith('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n')).toBe(true);
    expect(out).toContain('got data');
  });
});

describe('g. must-revalidate constrains only stale use (RFC 9111 §5.2.2.2, §5.2.2.8)', () => {
  it('a fresh response with must-revalidate or proxy-revalidate is served from the cache', async () => {
    for (const cc of ['max-age=60, must-revalidate', 'max-age=60, proxy-revalidate', 's-maxage=60, must-revalidate']) {
      const path = p('mr');
      h.origin.routes.set(path, (_q, res) => res.writeHead(200, { 'cache-control': cc }).end('m'));
      await h.get(path);
      h.clock.advance(30);
      const r = await h.get(path);
      expect(r.headers['cache-status'], cc).toBe('Tomlinson; hit');
      // Past its lifetime it goes to the origin again, even for a client that accepts stale.
      h.clock.advance(31);
      await h.get(path, { 'cache-control': 'max-stale=600' });
      expect(h.origin.count(path), cc).toBe(2);
    }
  });
});

describe('h. partial content and Set-Cookie (RFC 9111 §3.3, §3.4, §7.3)', () => {
  it('a 206 is stored and answers later Range requests within it; other requests go to the origin', async () => {
    const path = p('partial');
    h.origin.routes.set(path, (req, res) => {
      const body = '0123456789';
      const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
      if (!m) return res.writeHead(200, { 'cache-control': 'max-age=60', etag: '"p"' }).end(body);
      const [a, b] = [Number(m[1]), Number(m[2])];
      res.writeHead(206, { 'cache-control': 'max-age=60', etag: '"p"', 'content-range': `bytes ${a}-${b}/10` }).end(body.slice(a, b + 1));
    });
    const first = await h.get(path, { range: 'bytes=2-6' });
    expect(first.status).toBe(206);
    expect(first.text).toBe('23456');
    expect(first.headers['cache-status']).toContain('stored');
    const same = await h.get(path, { range: 'bytes=2-6' });
    expect([same.status, same.text, same.headers['content-range'], same.headers['cache-status']]).toEqual([206, '23456', 'bytes 2-6/10', 'Tomlinson; hit']);
    const inside = await h.get(path, { range: 'bytes=3-4' });
    expect([inside.status, inside.text, inside.headers['content-range'], inside.headers['content-length']]).toEqual([206, '34', 'bytes 3-4/10', '2']);
    expect(h.origin.count(path)).toBe(1);
    // Outside the stored part, and a request for the whole: the origin.
    const outside = await h.get(path, { range: 'bytes=7-8' });
    expect([outside.status, outside.text]).toEqual([206, '78']);
    expect(h.origin.count(path)).toBe(2);
    const full = await h.get(path);
    expect([full.status, full.text]).toEqual([200, '0123456789']);
    expect(h.origin.count(path)).toBe(3);
    // The complete response now answers ranges (RFC 9111 §3.4 leaves combining optional).
    const fromFull = await h.get(path, { range: 'bytes=0-1' });
    expect([fromFull.status, fromFull.text, fromFull.headers['cache-status']]).toEqual([206, '01', 'Tomlinson; hit']);
  });

  it('a stored 206 is never served to a request without Range, nor to an If-Range that does not match', async () => {
    const path = p('partial-only');
    h.origin.routes.set(path, (req, res) => {
      if (req.headers.range && !req.headers['if-range'])
        return res.writeHead(206, { 'cache-control': 'max-age=60', etag: '"x"', 'content-range': 'bytes 0-3/8' }).end('abcd');
      res.writeHead(200, { 'cache-control': 'no-store', etag: '"x"' }).end('abcdefgh');
    });
    await h.get(path, { range: 'bytes=0-3' });
    const plain = await h.get(path);
    expect([plain.status, plain.text]).toEqual([200, 'abcdefgh']);
    const head = await h.get(path, {}, 'HEAD');
    expect(head.status).toBe(200);
    const ifRange = await h.get(path, { range: 'bytes=0-1', 'if-range': '"other"' });
    expect([ifRange.status, ifRange.text]).toEqual([200, 'abcdefgh']);
    // Several ranges: not answered from one stored part.
    await h.get(path, { range: 'bytes=0-0,2-2' });
    expect(h.origin.count(path)).toBe(5);
  });

  it('a response with Set-Cookie is stored, and hits never carry the cookie', async () => {
    for (const cc of ['max-age=60', 'public, max-age=60']) {
      const path = p('cookie');
      h.origin.routes.set(path, (_q, res) => res.writeHead(200, { 'cache-control': cc, 'set-cookie': ['sid=alice; HttpOnly', 'theme=dark'] }).end('page'));
      const alice = await h.get(path);
      expect(alice.headers['set-cookie'], cc).toEqual(['sid=alice; HttpOnly', 'theme=dark']);
      const bob = await h.get(path);
      expect(bob.headers['cache-status'], cc).toBe('Tomlinson; hit');
      expect(bob.headers['set-cookie'], cc).toBeUndefined();
      expect(bob.text).toBe('page');
      expect(h.origin.count(path), cc).toBe(1);
    }
  });

  it('private or no-cache naming Set-Cookie: the rest is stored and reused; private alone: nothing', async () => {
    for (const [cc, stored] of [
      ['max-age=60, private="Set-Cookie"', true],
      ['max-age=60, no-cache="set-cookie"', true],
      ['max-age=60, private', false],
    ] as const) {
      const path = p('cookie-q');
      h.origin.routes.set(path, (_q, res) => res.writeHead(200, { 'cache-control': cc, 'set-cookie': 'sid=carol' }).end('q'));
      const a = await h.get(path);
      expect(a.headers['set-cookie']).toBe('sid=carol');
      const b = await h.get(path);
      expect(h.origin.count(path), cc).toBe(stored ? 1 : 2);
      if (stored) expect(b.headers['set-cookie']).toBeUndefined();
    }
  });
});
