/**
 * Where the proxy used to differ from RFC 9111 / RFC 9110 (issue 18, item 13), each rule observed
 * through the proxy on a real socket with a scripted origin.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Harness } from './harness.js';

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
      h.origin.routes.set(path, (_q, res) => res.writeHead(200, [['cache-control', 'max-age=3000000000'], ...(Array.isArray(age) ? age : [age]).map((v) => ['age', v])].flat()).end('a'));
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
