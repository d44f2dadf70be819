/**
 * RFC 9111 caching rules, each observed at a real origin, through undici's ProxyAgent.
 */
import { readdir, stat, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ProxyAgent, request } from 'undici';
import { readCacheReport } from '../../core/cache/stats.js';
import { silentLogger } from '../../core/log.js';
import { Metrics } from '../../core/metrics.js';
import { startProxy } from '../../containers/proxy/server.js';
import { Harness } from './harness.js';

let h: Harness;
let seq = 0;
/** A fresh path per test so that tests never see each other's entries. */
const p = (name: string) => `/${name}-${++seq}`;

beforeAll(async () => {
  h = await Harness.start();
});
afterAll(async () => {
  await h?.stop();
});

describe('RFC 9111 §3 storing and §4.2 freshness', () => {
  it('a fresh hit makes no origin request, and carries Age, Via and Cache-Status', async () => {
    const path = p('fresh');
    h.origin.routes.set(path, (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=60', 'content-type': 'text/plain' }).end('hello'));
    const a = await h.get(path);
    expect(a.status).toBe(200);
    expect(a.text).toBe('hello');
    expect(a.headers['cache-status']).toMatch(/fwd=uri-miss; fwd-status=200; stored/);
    h.clock.advance(5);
    const b = await h.get(path);
    expect(b.text).toBe('hello');
    expect(b.headers['cache-status']).toBe('Tomlinson; hit');
    expect(Number(b.headers.age)).toBeGreaterThanOrEqual(5);
    expect(b.headers.via).toMatch(/^1\.1 proxy\.test \(Tomlinson [0-9a-f]{8}\)$/);
    expect(h.origin.count(path)).toBe(1);
  });

  it('no-store is never stored', async () => {
    const path = p('nostore');
    h.origin.routes.set(path, (_q, res) => res.writeHead(200, { 'cache-control': 'no-store, max-age=60' }).end('x'));
    await h.get(path);
    await h.get(path);
    await h.get(path);
    expect(h.origin.count(path)).toBe(3);
    await h.proxy.store.flush();
    expect(await h.proxy.store.lookup(h.origin.url(path), {})).toBeUndefined();
  });

  it('private is not stored by a shared cache', async () => {
    const path = p('private');
    h.origin.routes.set(path, (_q, res) => res.writeHead(200, { 'cache-control': 'private, max-age=60' }).end('mine'));
    await h.get(path);
    await h.get(path);
    expect(h.origin.count(path)).toBe(2);
  });

  it('a request with Authorization is stored only when the response allows it (§3.5)', async () => {
    const plain = p('auth-plain');
    const pub = p('auth-public');
    h.origin.routes.set(plain, (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=60' }).end('a'));
    h.origin.routes.set(pub, (_q, res) => res.writeHead(200, { 'cache-control': 'public, max-age=60' }).end('b'));
    for (let i = 0; i < 2; i++) {
      await h.get(plain, { authorization: 'Basic dTpw' });
      await h.get(pub, { authorization: 'Basic dTpw' });
    }
    expect(h.origin.count(plain)).toBe(2);
    expect(h.origin.count(pub)).toBe(1);
  });

  it('s-maxage wins over max-age for a shared cache', async () => {
    const path = p('smaxage');
    h.origin.routes.set(path, (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=1000, s-maxage=10' }).end('s'));
    await h.get(path);
    h.clock.advance(5);
    await h.get(path);
    expect(h.origin.count(path)).toBe(1);
    h.clock.advance(10);
    await h.get(path);
    expect(h.origin.count(path)).toBe(2);
  });

  it('Expires gives freshness when there is no max-age', async () => {
    const path = p('expires');
    h.origin.routes.set(path, (_q, res) =>
      res.writeHead(200, { date: new Date(h.clock.t).toUTCString(), expires: new Date(h.clock.t + 30_000).toUTCString() }).end('e'),
    );
    await h.get(path);
    h.clock.advance(20);
    await h.get(path);
    expect(h.origin.count(path)).toBe(1);
    h.clock.advance(20);
    await h.get(path);
    expect(h.origin.count(path)).toBe(2);
  });

  it('heuristic freshness is 10% of the time since Last-Modified, capped', async () => {
    const path = p('heuristic');
    const capped = p('heuristic-cap');
    // Modified 1000 s ago: fresh for about 100 s.
    h.origin.routes.set(path, (_q, res) =>
      res.writeHead(200, { date: new Date(h.clock.t).toUTCString(), 'last-modified': new Date(h.clock.t - 1000_000).toUTCString() }).end('h'),
    );
    // Modified a year ago: 10% would be 36 days; the cap (1 day) applies.
    h.origin.routes.set(capped, (_q, res) =>
      res.writeHead(200, { date: new Date(h.clock.t).toUTCString(), 'last-modified': new Date(h.clock.t - 365 * 86400_000).toUTCString() }).end('c'),
    );
    await h.get(path);
    await h.get(capped);
    h.clock.advance(90);
    await h.get(path);
    expect(h.origin.count(path)).toBe(1);
    h.clock.advance(20);
    await h.get(path);
    expect(h.origin.count(path)).toBe(2);
    h.clock.advance(86400 - 110 + 10);
    await h.get(capped);
    expect(h.origin.count(capped)).toBe(2);
  });

  it('a 206 from the origin is stored and answers the same Range, never a request for the whole (§3.3)', async () => {
    const path = p('partial');
    h.origin.routes.set(path, (_q, res) => res.writeHead(206, { 'cache-control': 'max-age=60', 'content-range': 'bytes 0-1/10' }).end('ab'));
    const a = await h.get(path, { range: 'bytes=0-1' });
    expect(a.status).toBe(206);
    expect(a.text).toBe('ab');
    const b = await h.get(path, { range: 'bytes=0-1' });
    expect([b.status, b.text, b.headers['cache-status']]).toEqual([206, 'ab', 'Tomlinson; hit']);
    expect(h.origin.count(path)).toBe(1);
    await h.get(path);
    expect(h.origin.count(path)).toBe(2);
  });

  it('objects over the maximum size are not stored', async () => {
    const h2 = await Harness.start({ TOMLINSON_PROXY_MAX_OBJECT_BYTES: '1000' });
    try {
      const big = '/big';
      const bigChunked = '/big-chunked';
      h2.origin.routes.set(big, (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=60' }).end('x'.repeat(5000)));
      h2.origin.routes.set(bigChunked, (_q, res) => {
        res.writeHead(200, { 'cache-control': 'max-age=60' });
        res.write('y'.repeat(600));
        res.end('y'.repeat(600));
      });
      for (let i = 0; i < 2; i++) {
        expect((await h2.get(big)).text.length).toBe(5000);
        expect((await h2.get(bigChunked)).text.length).toBe(1200);
      }
      expect(h2.origin.count(big)).toBe(2);
      expect(h2.origin.count(bigChunked)).toBe(2);
    } finally {
      await h2.stop();
    }
  });
});

describe('RFC 9111 §4.3 validation', () => {
  it('a stale entry makes one conditional request (If-None-Match); 304 refreshes it and serves the stored body', async () => {
    const path = p('etag');
    let version = 'v1';
    h.origin.routes.set(path, (req, res) => {
      if (req.headers['if-none-match'] === `"${version}"`) return res.writeHead(304, { 'cache-control': 'max-age=10', etag: `"${version}"` }).end();
      res.writeHead(200, { 'cache-control': 'max-age=10', etag: `"${version}"` }).end(`body ${version}`);
    });
    expect((await h.get(path)).text).toBe('body v1');
    h.clock.advance(11);
    const r = await h.get(path);
    expect(r.text).toBe('body v1');
    expect(r.headers['cache-status']).toBe('Tomlinson; fwd=stale; fwd-status=304');
    const reqs = h.origin.requests(path);
    expect(reqs).toHaveLength(2);
    expect(reqs[1].headers['if-none-match']).toBe('"v1"');
    // Refreshed: fresh again for 10 s without the origin.
    h.clock.advance(5);
    expect((await h.get(path)).headers['cache-status']).toBe('Tomlinson; hit');
    expect(h.origin.count(path)).toBe(2);
    // A changed resource: the conditional request gets a 200 and the new body replaces the old.
    version = 'v2';
    h.clock.advance(11);
    expect((await h.get(path)).text).toBe('body v2');
    expect((await h.get(path)).text).toBe('body v2');
    expect(h.origin.count(path)).toBe(3);
    const report = await (async () => {
      await h.proxy.stats.flush();
      return readCacheReport(h.storage.tables);
    })();
    expect(report.revalidations).toBeGreaterThanOrEqual(1);
  });

  it("a revalidation answered from the 304 counts Age from the 304 and carries the 304's Date, whichever path served it; a 304 for another ETag refetches; an origin 5xx passes through", async () => {
    const path = p('reval-paths');
    let etag304 = '"a"';
    let fail = false;
    h.origin.routes.set(path, (req, res) => {
      if (fail) return res.writeHead(503, { 'content-type': 'text/plain' }).end('origin down');
      if (req.headers['if-none-match'] === '"a"')
        return res.writeHead(304, { 'cache-control': 'max-age=10', etag: etag304, date: new Date(h.clock.now()).toUTCString() }).end();
      res.writeHead(200, { 'cache-control': 'max-age=10', etag: '"a"', age: '3' }).end('body a');
    });
    expect((await h.get(path)).text).toBe('body a');
    h.clock.advance(30);
    // A plain request (the proxy's synchronous path) and one with its own Cache-Control (the full path).
    for (const headers of <Record<string, string>[]>[{}, { 'cache-control': 'max-age=0' }]) {
      h.clock.advance(11);
      const r = await h.get(path, headers);
      expect(r.text).toBe('body a');
      expect(r.headers['cache-status']).toBe('Tomlinson; fwd=stale; fwd-status=304');
      // RFC 9111 §4.2.3: the stored Age (3, the 304 sent none) plus the time since the 304 (none).
      expect(r.headers.age).toBe('3');
      expect(r.headers.date).toBe(new Date(h.clock.now()).toUTCString());
      expect(r.headers.etag).toBe('"a"');
    }
    expect(h.origin.count(path)).toBe(3);
    // RFC 9111 §4.3.4: a 304 whose strong validator matches no stored response updates nothing;
    // the proxy fetches the full response instead.
    etag304 = '"b"';
    h.clock.advance(11);
    const r = await h.get(path);
    expect(r.text).toBe('body a');
    expect(r.headers['cache-status']).toContain('fwd=uri-miss; fwd-status=200');
    const reqs = h.origin.requests(path);
    expect(reqs).toHaveLength(5);
    expect(reqs[4].headers['if-none-match']).toBeUndefined();
    // No stale-if-error: the origin's error reaches the client as it is.
    fail = true;
    h.clock.advance(11);
    const e = await h.get(path);
    expect(e.status).toBe(503);
    expect(e.text).toBe('origin down');
  });

  it('revalidates with If-Modified-Since when there is only Last-Modified', async () => {
    const path = p('lastmod');
    const lm = new Date(h.clock.t - 3600_000).toUTCString();
    h.origin.routes.set(path, (req, res) => {
      if (req.headers['if-modified-since'] === lm) return res.writeHead(304, { 'cache-control': 'max-age=10' }).end();
      res.writeHead(200, { 'cache-control': 'max-age=10', 'last-modified': lm }).end('lm body');
    });
    await h.get(path);
    h.clock.advance(11);
    const r = await h.get(path);
    expect(r.text).toBe('lm body');
    expect(r.headers['cache-status']).toContain('fwd-status=304');
    expect(h.origin.requests(path)[1].headers['if-modified-since']).toBe(lm);
  });

  it('no-cache in the response: every use is validated first', async () => {
    const path = p('nocache');
    h.origin.routes.set(path, (req, res) => {
      if (req.headers['if-none-match'] === '"n"') return res.writeHead(304, { etag: '"n"', 'cache-control': 'no-cache' }).end();
      res.writeHead(200, { etag: '"n"', 'cache-control': 'no-cache' }).end('nc');
    });
    await h.get(path);
    const r = await h.get(path);
    expect(r.text).toBe('nc');
    expect(h.origin.count(path)).toBe(2);
    expect(h.origin.requests(path)[1].headers['if-none-match']).toBe('"n"');
  });

  it('a client no-cache request revalidates; max-age=0 likewise', async () => {
    const path = p('client-nocache');
    h.origin.routes.set(path, (req, res) => {
      if (req.headers['if-none-match'] === '"c"') return res.writeHead(304, { etag: '"c"', 'cache-control': 'max-age=60' }).end();
      res.writeHead(200, { etag: '"c"', 'cache-control': 'max-age=60' }).end('cc');
    });
    await h.get(path);
    await h.get(path, { 'cache-control': 'no-cache' });
    h.clock.advance(1);
    await h.get(path, { 'cache-control': 'max-age=0' });
    expect(h.origin.count(path)).toBe(3);
    expect(h.origin.requests(path)[2].headers['if-none-match']).toBe('"c"');
  });

  it('must-revalidate and proxy-revalidate: a stale entry is never served without the origin (a fresh one is, §5.2.2.2)', async () => {
    const path = p('mustreval');
    let down = false;
    h.origin.routes.set(path, (_q, res) => {
      if (down) return res.writeHead(503).end('down');
      res.writeHead(200, { 'cache-control': 'max-age=5, must-revalidate, stale-if-error=600' }).end('mr');
    });
    await h.get(path);
    h.clock.advance(10);
    down = true;
    const r = await h.get(path);
    expect(r.status).toBe(503);
    expect(h.origin.count(path)).toBe(2);

    const pr = p('proxyreval');
    h.origin.routes.set(pr, (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=60, proxy-revalidate' }).end('pr'));
    await h.get(pr);
    await h.get(pr);
    expect(h.origin.count(pr)).toBe(1);
    h.clock.advance(61);
    await h.get(pr, { 'cache-control': 'max-stale=600' });
    expect(h.origin.count(pr)).toBe(2);
  });

  it("a client's conditional request is answered 304 from the cache", async () => {
    const path = p('client-cond');
    const lm = new Date(h.clock.t - 86400_000).toUTCString();
    h.origin.routes.set(path, (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=60', etag: '"abc"', 'last-modified': lm }).end('cond'));
    await h.get(path);
    const a = await h.get(path, { 'if-none-match': 'W/"abc"' });
    expect(a.status).toBe(304);
    expect(a.text).toBe('');
    const b = await h.get(path, { 'if-modified-since': new Date(h.clock.t).toUTCString() });
    expect(b.status).toBe(304);
    const c = await h.get(path, { 'if-none-match': '"other"' });
    expect(c.status).toBe(200);
    expect(c.text).toBe('cond');
    expect(h.origin.count(path)).toBe(1);
  });
});

describe('RFC 9111 §5.2.1.7 only-if-cached', () => {
  it('answers 504 without contacting the origin when nothing is stored, and serves what is', async () => {
    const path = p('oic');
    h.origin.routes.set(path, (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=60' }).end('o'));
    expect((await h.get(path, { 'cache-control': 'only-if-cached' })).status).toBe(504);
    expect(h.origin.count(path)).toBe(0);
    await h.get(path);
    const r = await h.get(path, { 'cache-control': 'only-if-cached' });
    expect(r.status).toBe(200);
    expect(h.origin.count(path)).toBe(1);
  });
});

describe('RFC 9111 §4.1 Vary', () => {
  it('keeps one entry per variant', async () => {
    const path = p('vary');
    h.origin.routes.set(path, (req, res) =>
      res.writeHead(200, { 'cache-control': 'max-age=60', vary: 'Accept-Language' }).end(`lang=${req.headers['accept-language']}`),
    );
    expect((await h.get(path, { 'accept-language': 'en' })).text).toBe('lang=en');
    expect((await h.get(path, { 'accept-language': 'fr' })).text).toBe('lang=fr');
    expect((await h.get(path, { 'accept-language': 'en' })).text).toBe('lang=en');
    expect((await h.get(path, { 'accept-language': 'fr' })).text).toBe('lang=fr');
    expect(h.origin.count(path)).toBe(2);
  });

  it('Vary: * is never reused', async () => {
    const path = p('varystar');
    h.origin.routes.set(path, (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=60', vary: '*' }).end('v'));
    await h.get(path);
    await h.get(path);
    expect(h.origin.count(path)).toBe(2);
  });
});

describe('RFC 9111 §4.4 invalidation', () => {
  it('POST invalidates the target URI and a same-origin Location', async () => {
    const path = p('inval');
    const other = p('inval-location');
    let n = 0;
    h.origin.routes.set(path, (req, res) => {
      if (req.method === 'POST') return res.writeHead(201, { location: other }).end('created');
      res.writeHead(200, { 'cache-control': 'max-age=600' }).end(`n=${++n}`);
    });
    h.origin.routes.set(other, (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=600' }).end('other'));
    expect((await h.get(path)).text).toBe('n=1');
    await h.get(other);
    expect((await h.get(path)).text).toBe('n=1');
    const post = await h.get(path, { 'content-type': 'text/plain' }, 'POST', 'data');
    expect(post.status).toBe(201);
    expect(
      h.origin
        .requests(path)
        .find((r) => r.method === 'POST')!
        .body.toString(),
    ).toBe('data');
    expect((await h.get(path)).text).toBe('n=2');
    await h.get(other);
    expect(h.origin.count(path, 'GET')).toBe(2);
    expect(h.origin.count(other)).toBe(2);
  });

  it('an error response to DELETE does not invalidate', async () => {
    const path = p('inval-err');
    h.origin.routes.set(path, (req, res) => {
      if (req.method === 'DELETE') return res.writeHead(500).end('no');
      res.writeHead(200, { 'cache-control': 'max-age=600' }).end('keep');
    });
    await h.get(path);
    await h.get(path, {}, 'DELETE');
    await h.get(path);
    expect(h.origin.count(path, 'GET')).toBe(1);
  });
});

describe('HEAD and Range from the cache', () => {
  it('HEAD is answered from a cached GET', async () => {
    const path = p('head');
    h.origin.routes.set(path, (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=60', 'content-type': 'text/plain' }).end('0123456789'));
    await h.get(path);
    const r = await h.get(path, {}, 'HEAD');
    expect(r.status).toBe(200);
    expect(r.text).toBe('');
    expect(r.headers['content-length']).toBe('10');
    expect(h.origin.count(path)).toBe(1);
  });

  it('Range on a cached complete response gives 206 from the cache; If-Range that fails gives 200', async () => {
    const path = p('range');
    h.origin.routes.set(path, (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=60', etag: '"r1"' }).end('0123456789'));
    await h.get(path);
    const a = await h.get(path, { range: 'bytes=2-5' });
    expect(a.status).toBe(206);
    expect(a.text).toBe('2345');
    expect(a.headers['content-range']).toBe('bytes 2-5/10');
    const b = await h.get(path, { range: 'bytes=-3' });
    expect(b.text).toBe('789');
    const c = await h.get(path, { range: 'bytes=20-' });
    expect(c.status).toBe(416);
    expect(c.headers['content-range']).toBe('bytes */10');
    const d = await h.get(path, { range: 'bytes=2-5', 'if-range': '"other"' });
    expect(d.status).toBe(200);
    expect(d.text).toBe('0123456789');
    const e = await h.get(path, { range: 'bytes=2-5', 'if-range': '"r1"' });
    expect(e.status).toBe(206);
    expect(h.origin.count(path)).toBe(1);
  });
});

describe('request collapsing and RFC 5861', () => {
  it('concurrent misses for one URL make one origin request', async () => {
    const path = p('collapse');
    h.origin.routes.set(path, (_q, res) => {
      setTimeout(() => res.writeHead(200, { 'cache-control': 'max-age=60' }).end('shared'), 500);
    });
    const results = await Promise.all(Array.from({ length: 10 }, () => h.get(path)));
    expect(results.every((r) => r.text === 'shared' && r.status === 200)).toBe(true);
    expect(h.origin.count(path)).toBe(1);
    // All but the leader waited for it (or, on a slow machine, arrived after it and hit).
    expect(results.filter((r) => r.headers['cache-status']?.startsWith('Tomlinson; hit')).length).toBe(9);
    expect(results.some((r) => r.headers['cache-status']?.includes('collapsed'))).toBe(true);
  });

  it('concurrent requests for one stale entry share one conditional request (collapsed revalidation, RFC 9211 collapsed)', async () => {
    const path = p('collapse-reval');
    let changed = false;
    h.origin.routes.set(path, (req, res) => {
      if (req.headers['if-none-match'] === '"c1"' && !changed) {
        setTimeout(() => res.writeHead(304, { etag: '"c1"', 'cache-control': 'max-age=10' }).end(), 500);
        return;
      }
      res.writeHead(200, { etag: changed ? '"c2"' : '"c1"', 'cache-control': 'max-age=10' }).end(changed ? 'second' : 'first');
    });
    expect((await h.get(path)).text).toBe('first');
    h.clock.advance(11);
    const results = await Promise.all(Array.from({ length: 8 }, () => h.get(path)));
    expect(results.every((r) => r.status === 200 && r.text === 'first')).toBe(true);
    expect(h.origin.count(path)).toBe(2);
    const statuses = results.map((r) => r.headers['cache-status']);
    expect(statuses.filter((s) => s === 'Tomlinson; fwd=stale; fwd-status=304')).toHaveLength(1);
    // The others waited for that 304 (or, on a slow machine, arrived after it and hit).
    expect(
      statuses.every((s) => s === 'Tomlinson; fwd=stale; fwd-status=304' || s === 'Tomlinson; fwd=stale; fwd-status=304; collapsed' || s === 'Tomlinson; hit'),
    ).toBe(true);
    expect(statuses.some((s) => s?.endsWith('; collapsed'))).toBe(true);

    // A client asking for its own validation (no-cache) is not collapsed into another's.
    h.clock.advance(11);
    const [a, b] = await Promise.all([h.get(path), h.get(path, { 'cache-control': 'no-cache' })]);
    expect(a.text).toBe('first');
    expect(b.text).toBe('first');
    expect(b.headers['cache-status']).not.toContain('collapsed');
    expect(h.origin.count(path)).toBe(4);

    // After a 304 that does not match (the resource changed), waiting requests fetch on their own.
    h.clock.advance(11);
    changed = true;
    const after = await Promise.all(Array.from({ length: 3 }, () => h.get(path)));
    expect(after.every((r) => r.text === 'second')).toBe(true);
  });

  it('stale-while-revalidate serves the stale entry and revalidates in the background', async () => {
    const path = p('swr');
    let n = 0;
    h.origin.routes.set(path, (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=10, stale-while-revalidate=60' }).end(`n=${++n}`));
    expect((await h.get(path)).text).toBe('n=1');
    h.clock.advance(15);
    const stale = await h.get(path);
    expect(stale.text).toBe('n=1');
    expect(stale.headers['cache-status']).toContain('stale-while-revalidate');
    await waitFor(() => h.origin.count(path) === 2);
    await waitFor(async () => (await h.get(path)).text === 'n=2');
    expect(h.origin.count(path)).toBe(2);
  });

  it('stale-if-error serves the stale entry when the origin fails', async () => {
    const path = p('sie');
    let fail = false;
    h.origin.routes.set(path, (_q, res) => {
      if (fail) return res.writeHead(500).end('broken');
      res.writeHead(200, { 'cache-control': 'max-age=10, stale-if-error=60' }).end('good');
    });
    await h.get(path);
    h.clock.advance(20);
    fail = true;
    const r = await h.get(path);
    expect(r.status).toBe(200);
    expect(r.text).toBe('good');
    expect(r.headers['cache-status']).toContain('stale-if-error');
    h.clock.advance(60);
    const gone = await h.get(path);
    expect(gone.status).toBe(500);
  });
});

describe('the two tiers', () => {
  it('by default a response reaches the object tier at its second use (one-hit responses stay in memory)', async () => {
    const h2 = await Harness.start({ TOMLINSON_PROXY_OBJECT_TIER_ADMIT_HITS: '2' });
    try {
      h2.origin.routes.set('*', (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=600' }).end('admitted?'));
      await h2.get('/once');
      await h2.get('/twice');
      expect((await h2.get('/twice')).headers['cache-status']).toBe('Tomlinson; hit');
      await h2.proxy.store.flush();
      // A second task on the same storage: only the response used twice was shared.
      await h2.stopProxy();
      await h2.startProxy();
      expect((await h2.get('/twice')).headers['cache-status']).toBe('Tomlinson; hit');
      expect(h2.origin.count('/twice')).toBe(1);
      expect((await h2.get('/once')).headers['cache-status']).toMatch(/fwd=uri-miss/);
      expect(h2.origin.count('/once')).toBe(2);
      // Loaded from the object tier, it is not written again on later uses.
      await h2.proxy.store.flush();
      expect((await h2.proxy.store.totals()).objects).toBe(1);
    } finally {
      await h2.stop();
    }
  });

  it('a second proxy on the same storage serves from the object tier; purge removes the entry', async () => {
    const path = p('shared');
    h.origin.routes.set(path, (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=600' }).end('tiered'));
    await h.get(path);
    await h.proxy.store.flush();
    // A new proxy: empty memory tier, same Blobs and Tables.
    await h.stopProxy();
    await h.startProxy();
    const r = await h.get(path);
    expect(r.text).toBe('tiered');
    expect(r.headers['cache-status']).toBe('Tomlinson; hit');
    expect(h.origin.count(path)).toBe(1);
    expect(await h.proxy.store.purge(h.origin.url(path))).toBe(1);
    await h.get(path);
    expect(h.origin.count(path)).toBe(2);
  });

  it("an invalidation on one task drops the URL from another task's memory tier", async () => {
    const path = p('cross-task');
    let n = 0;
    h.origin.routes.set(path, (req, res) => {
      if (req.method === 'PUT') return res.writeHead(204).end();
      res.writeHead(200, { 'cache-control': 'max-age=600' }).end(`n=${++n}`);
    });
    expect((await h.get(path)).text).toBe('n=1');
    await h.proxy.store.flush();
    // Task B on the same storage, talked to directly.
    const b = await startProxy(
      { config: h.config, storage: h.storage, log: silentLogger, metrics: new Metrics({ defaults: false }) },
      { port: 0, now: h.clock.now },
    );
    const viaB = new ProxyAgent({ uri: `http://127.0.0.1:${b.port}`, proxyTunnel: false });
    try {
      const put = await request(h.origin.url(path), { dispatcher: viaB, method: 'PUT', body: 'x' });
      await put.body.dump();
      expect(put.statusCode).toBe(204);
    } finally {
      await viaB.close();
      await b.close(100);
    }
    // Task A's memory copy goes within the poll interval; its next GET reaches the origin.
    await waitFor(async () => (await h.get(path)).text === 'n=2');
    expect(h.origin.count(path, 'GET')).toBe(2);
  });

  it('on local storage a miss skips the object-tier query for a URL the tier cannot hold, and still finds what an earlier run stored', async () => {
    const h2 = await Harness.start();
    try {
      h2.origin.routes.set('*', (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=600' }).end('kept'));
      await h2.get('/kept');
      await h2.proxy.store.flush();
      await h2.stopProxy();
      // Count the entry lookups the next run makes in Tables.
      const tables = h2.storage.tables;
      const query = tables.query.bind(tables);
      const asked: string[] = [];
      tables.query = (pk, options) => {
        if (pk.startsWith('CACHE#')) asked.push(pk);
        return query(pk, options);
      };
      await h2.startProxy();
      expect(await h2.proxy.store.indexed).toBe(true);
      expect((await h2.get('/new')).headers['cache-status']).toMatch(/fwd=uri-miss/);
      expect(asked).toHaveLength(0);
      const kept = await h2.get('/kept');
      expect(kept.headers['cache-status']).toBe('Tomlinson; hit');
      expect(asked).toHaveLength(1);
      expect(h2.origin.count('/kept')).toBe(1);
      // What this run stores is known at once: after a memory-tier eviction it is still looked up.
      await h2.proxy.store.flush();
      h2.proxy.store.memory.clear();
      expect((await h2.get('/new')).headers['cache-status']).toBe('Tomlinson; hit');
      expect(h2.origin.count('/new')).toBe(1);
    } finally {
      await h2.stop();
    }
  });

  it('large objects stream into the object tier and are served from it', async () => {
    const h2 = await Harness.start({ TOMLINSON_PROXY_MEMORY_BYTES: '80000' });
    try {
      const body = Buffer.alloc(300_000, 'z');
      h2.origin.routes.set('/large', (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=600', 'content-length': String(body.length) }).end(body));
      expect((await h2.get('/large')).text.length).toBe(body.length);
      const r = await h2.get('/large');
      expect(r.text.length).toBe(body.length);
      // Either a plain hit, or one that waited for the first request's store to finish.
      expect(r.headers['cache-status']).toMatch(/^Tomlinson; hit/);
      const part = await h2.get('/large', { range: 'bytes=1000-1999' });
      expect(part.status).toBe(206);
      expect(part.text.length).toBe(1000);
      expect(h2.origin.count('/large')).toBe(1);
    } finally {
      await h2.stop();
    }
  });

  it('a body left short in the object tier (cache puts skip fsync, a crash may cut them) is fetched again, never served short', async () => {
    const h2 = await Harness.start({ TOMLINSON_PROXY_MEMORY_BYTES: '80000' });
    try {
      const body = Buffer.alloc(300_000, 'q');
      h2.origin.routes.set('/cut', (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=600', 'content-length': String(body.length) }).end(body));
      expect((await h2.get('/cut')).text.length).toBe(body.length);
      await waitFor(async () => (await h2.get('/cut')).headers['cache-status']?.startsWith('Tomlinson; hit') === true);
      // What a power loss after an unsynced put can leave: the renamed file, shorter than written.
      const files = (await readdir(join(h2.config.dataDir, 'blobs'), { recursive: true, withFileTypes: true })).filter((f) => f.isFile());
      const big: string[] = [];
      for (const f of files) {
        const p = join(f.parentPath, f.name);
        if ((await stat(p)).size > 300_000) big.push(p);
      }
      expect(big).toHaveLength(1);
      await truncate(big[0]!, 150_000);
      const before = h2.origin.count('/cut');
      const r = await h2.get('/cut');
      expect(r.text).toBe(body.toString());
      expect(h2.origin.count('/cut')).toBe(before + 1);
    } finally {
      await h2.stop();
    }
  });

  it('the object tier is bounded in bytes: least recently used entries are evicted', async () => {
    const h2 = await Harness.start({ TOMLINSON_PROXY_CACHE_BYTES: '5000', TOMLINSON_PROXY_MEMORY_BYTES: '0' });
    try {
      h2.origin.routes.set('*', (_q, res) => res.writeHead(200, { 'cache-control': 'max-age=600' }).end('q'.repeat(1000)));
      for (let i = 0; i < 12; i++) {
        await h2.get(`/obj${i}`);
        await h2.proxy.store.flush();
        h2.clock.advance(2);
      }
      await h2.proxy.store.evict();
      const totals = await h2.proxy.store.totals();
      expect(totals.bytes).toBeLessThanOrEqual(5000);
      expect(totals.objects).toBeGreaterThan(0);
      // The oldest went, the newest stayed.
      await h2.get('/obj0');
      await h2.get('/obj11');
      expect(h2.origin.count('/obj0')).toBe(2);
      expect(h2.origin.count('/obj11')).toBe(1);
    } finally {
      await h2.stop();
    }
  });

  it('statistics reach Tables and the metrics', async () => {
    await h.proxy.stats.flush();
    const r = await readCacheReport(h.storage.tables);
    expect(r.requests).toBeGreaterThan(20);
    expect(r.hits).toBeGreaterThan(5);
    expect(r.misses).toBeGreaterThan(5);
    expect(r.bytesFromCache).toBeGreaterThan(0);
    expect(r.bytesFromOrigin).toBeGreaterThan(0);
    expect(r.hitRatio).toBeGreaterThan(0);
    const text = await h.metrics.text();
    expect(text).toMatch(/tomlinson_cache_requests_total\{outcome="hit"\} [1-9]/);
    expect(text).toMatch(/tomlinson_cache_bytes_total\{source="cache"\} [1-9]/);
  });
});

async function waitFor(cond: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error('condition not met in time');
}
