/**
 * Table-driven checks of the proxy's message rules: Range (RFC 9110 §14), If-Range (§13.1.5),
 * conditionals answered from cache (RFC 9111 §4.3.2), hop-by-hop fields (RFC 9110 §7.6.1),
 * address ranges and the origin guard, and the memory tier's byte-bounded LRU.
 */
import { describe, expect, it } from 'vitest';
import CachePolicy from 'http-cache-semantics';
import { CachedObject } from '../../core/cache/entry.js';
import { MemoryTier } from '../../core/cache/memory.js';
import { normalizeUrl, variantKey, varyNames } from '../../core/cache/keys.js';
import { cidrList, clientAllowed } from '../../core/address-ranges.js';
import { OriginGuard, ProxyAuth, refusalText } from '../../containers/proxy/access.js';
import { endToEnd, ifRangeMatches, notModified, parseRange } from '../../containers/proxy/http.js';
import { originHeaders } from '../../containers/proxy/origin.js';

describe('parseRange (RFC 9110 §14.1.2)', () => {
  const cases: [string | undefined, number, unknown][] = [
    [undefined, 10, { kind: 'none' }],
    ['bytes=0-4', 10, { kind: 'range', start: 0, end: 4 }],
    ['bytes=5-', 10, { kind: 'range', start: 5, end: 9 }],
    ['bytes=-3', 10, { kind: 'range', start: 7, end: 9 }],
    ['bytes=-30', 10, { kind: 'range', start: 0, end: 9 }],
    ['bytes=8-100', 10, { kind: 'range', start: 8, end: 9 }],
    ['bytes=10-', 10, { kind: 'unsatisfiable' }],
    ['bytes=-0', 10, { kind: 'unsatisfiable' }],
    ['bytes=5-2', 10, { kind: 'none' }],
    ['bytes=0-1,3-4', 10, { kind: 'none' }],
    ['items=0-1', 10, { kind: 'none' }],
  ];
  for (const [h, size, want] of cases) it(`${h} of ${size}`, () => expect(parseRange(h, size)).toEqual(want));
});

describe('If-Range and conditionals', () => {
  it('If-Range needs a strong match or the exact date', () => {
    const lm = 'Tue, 01 Sep 2026 10:00:00 GMT';
    expect(ifRangeMatches(undefined, '"a"', lm)).toBe(true);
    expect(ifRangeMatches('"a"', '"a"', lm)).toBe(true);
    expect(ifRangeMatches('"b"', '"a"', lm)).toBe(false);
    expect(ifRangeMatches('W/"a"', 'W/"a"', lm)).toBe(false);
    expect(ifRangeMatches(lm, '"a"', lm)).toBe(true);
    expect(ifRangeMatches('Tue, 01 Sep 2026 10:00:01 GMT', '"a"', lm)).toBe(false);
  });

  it('If-None-Match uses weak comparison and wins over If-Modified-Since', () => {
    expect(notModified({ 'if-none-match': 'W/"x"' }, '"x"', undefined, undefined)).toBe(true);
    expect(notModified({ 'if-none-match': '"y", "x"' }, 'W/"x"', undefined, undefined)).toBe(true);
    expect(notModified({ 'if-none-match': '*' }, '"x"', undefined, undefined)).toBe(true);
    expect(
      notModified({ 'if-none-match': '"y"', 'if-modified-since': 'Tue, 01 Sep 2099 10:00:00 GMT' }, '"x"', 'Tue, 01 Sep 2026 10:00:00 GMT', undefined),
    ).toBe(false);
    expect(notModified({ 'if-modified-since': 'Tue, 01 Sep 2026 10:00:00 GMT' }, undefined, 'Tue, 01 Sep 2026 10:00:00 GMT', undefined)).toBe(true);
    expect(notModified({ 'if-modified-since': 'Tue, 01 Sep 2026 09:59:59 GMT' }, undefined, 'Tue, 01 Sep 2026 10:00:00 GMT', undefined)).toBe(false);
    expect(notModified({ 'if-modified-since': 'garbage' }, undefined, 'Tue, 01 Sep 2026 10:00:00 GMT', undefined)).toBe(false);
  });
});

describe('hop-by-hop fields (RFC 9110 §7.6.1)', () => {
  it('drops the fixed list and whatever Connection names, joins repeats but not Set-Cookie', () => {
    const out = endToEnd({
      connection: 'keep-alive, X-Foo',
      'x-foo': '1',
      'keep-alive': 'timeout=5',
      'transfer-encoding': 'chunked',
      'proxy-authorization': 'Basic x',
      upgrade: 'h2c',
      te: 'trailers',
      trailer: 'x',
      'set-cookie': ['a=1', 'b=2'],
      'cache-control': ['max-age=1', 'public'],
      etag: '"e"',
    });
    expect(out).toEqual({ 'set-cookie': ['a=1', 'b=2'], 'cache-control': 'max-age=1, public', etag: '"e"' });
  });
});

describe('address ranges and the origin guard', () => {
  it('client ranges, with IPv4-mapped addresses', () => {
    const l = cidrList(['127.0.0.0/8', '10.0.0.0/8', '::1/128']);
    expect(clientAllowed(l, '127.0.0.1')).toBe(true);
    expect(clientAllowed(l, '::ffff:10.1.2.3')).toBe(true);
    expect(clientAllowed(l, '::1')).toBe(true);
    expect(clientAllowed(l, '192.168.1.1')).toBe(false);
    expect(clientAllowed(l, undefined)).toBe(false);
    expect(() => cidrList(['not-an-ip/8'])).toThrow();
  });

  it('refuses every IANA special-purpose address, in every IPv6 form that carries one; allows public ones', () => {
    const g = new OriginGuard();
    const refused = [
      '0.1.2.3',
      '10.1.2.3',
      '100.64.0.1',
      '100.127.255.254',
      '127.0.0.1',
      '169.254.169.254',
      '169.254.170.2',
      '169.254.1.1',
      '172.16.0.1',
      '172.31.255.255',
      '192.0.0.1',
      '192.0.2.1',
      '192.88.99.1',
      '192.168.1.1',
      '198.18.0.1',
      '198.19.255.255',
      '198.51.100.1',
      '203.0.113.1',
      '224.0.0.1',
      '239.255.255.250',
      '240.0.0.1',
      '255.255.255.255',
      '::',
      '::1',
      '::ffff:127.0.0.1',
      '::ffff:10.0.0.1',
      '::ffff:a00:1',
      '0:0:0:0:0:ffff:0a00:0001',
      '[::ffff:192.168.0.1]',
      '::a00:1',
      '64:ff9b::a00:1',
      '64:ff9b::7f00:1',
      '64:ff9b:1::808:808',
      '100::1',
      '2001::1',
      '2001:1ff::1',
      '2001:db8::1',
      '2002:a00:1::1',
      '2002:7f00:1::',
      '3fff::1',
      'fc00::1',
      'fd00:ec2::254',
      'fe80::1',
      'fe80::1%lo',
      'fec0::1',
      'ff02::1',
      '4000::1',
      '1::',
    ];
    for (const a of refused) expect(g.check(a), a).toBeDefined();
    for (const a of [
      '93.184.216.34',
      '8.8.8.8',
      '100.63.255.255',
      '100.128.0.1',
      '172.15.255.255',
      '172.32.0.1',
      '192.167.1.1',
      '2606:4700::1111',
      '::ffff:8.8.8.8',
      '64:ff9b::808:808',
      '2002:808:808::1',
    ])
      expect(g.check(a), a).toBeUndefined();
    expect(g.check('10.1.2.3')?.why).toBe('private-use (RFC 1918)');
    expect(new OriginGuard({ allowAll: true }).allows('127.0.0.1')).toBe(true);
  });

  it('proxy.allowedOrigins opens the ranges it names (IPv4-mapped spelling too), never a metadata address', () => {
    const g = new OriginGuard({ allowed: ['10.20.0.0/16', 'fd12:3456::/32', '169.254.0.0/16'] });
    for (const a of ['10.20.1.2', '::ffff:10.20.1.2', 'fd12:3456::1', '169.254.1.1']) expect(g.check(a), a).toBeUndefined();
    for (const a of ['10.21.0.1', 'fd12:3457::1', '169.254.169.254', '::ffff:169.254.169.254', '169.254.170.2']) expect(g.check(a), a).toBeDefined();
    expect(refusalText('10.21.0.1', g.check('10.21.0.1')!)).toMatch(/proxy\.allowedOrigins/);
  });

  it('the guarded lookup refuses a name that resolves to loopback', async () => {
    const g = new OriginGuard();
    const err = await new Promise<NodeJS.ErrnoException | null>((resolve) => g.lookup('localhost', {}, (e) => resolve(e)));
    expect(err?.code).toBe('EORIGINFORBIDDEN');
  });

  it('Proxy-Authorization Basic: checks once, then remembers a good credential for a while', async () => {
    let calls = 0;
    let t = 0;
    const auth = new ProxyAuth({ check: async (u, p) => (calls++, u === 'bob' && p === 'pw:with:colons'), ttlMs: 1000, now: () => t });
    const good = `Basic ${Buffer.from('bob:pw:with:colons').toString('base64')}`;
    expect(await auth.verify(good)).toBe(true);
    expect(await auth.verify(good)).toBe(true);
    expect(calls).toBe(1);
    t = 2000;
    expect(await auth.verify(good)).toBe(true);
    expect(calls).toBe(2);
    expect(await auth.verify(`Basic ${Buffer.from('bob:no').toString('base64')}`)).toBe(false);
    expect(await auth.verify('Bearer abc')).toBe(false);
    expect(await auth.verify(undefined)).toBe(false);
  });
});

describe('cache keys and the memory tier', () => {
  it('normalises URLs and builds variant keys from Vary', () => {
    expect(normalizeUrl('http://EXAMPLE.com:80/a?b#frag')).toBe('http://example.com/a?b');
    expect(normalizeUrl('http://example.com')).toBe('http://example.com/');
    expect(normalizeUrl('http://user:secret@example.com/x')).toBe('http://example.com/x');
    // The scheme is part of the key: the same host and path over https is another resource.
    expect(normalizeUrl('HTTPS://Example.com:443/a#x')).toBe('https://example.com/a');
    expect(normalizeUrl('https://example.com:8443/a')).toBe('https://example.com:8443/a');
    expect(normalizeUrl('https://example.com/a')).not.toBe(normalizeUrl('http://example.com/a'));
    expect(() => normalizeUrl('ftp://example.com/')).toThrow();
    expect(varyNames('Accept-Encoding, accept-language,Accept-Encoding')).toEqual(['accept-encoding', 'accept-language']);
    expect(variantKey(['accept-language'], { 'accept-language': 'en' })).not.toBe(variantKey(['accept-language'], { 'accept-language': 'fr' }));
    expect(variantKey(['accept-language'], {})).not.toBe(variantKey(['accept-language'], { 'accept-language': '' }));
  });

  it('evicts least recently used entries to stay within its byte budget', () => {
    const mem = new MemoryTier(3 * (1000 + 512));
    const mk = (u: string) => {
      const policy = new CachePolicy({ url: u, headers: {} }, { status: 200, headers: { 'cache-control': 'max-age=60' } });
      return new CachedObject(u, '', [], policy, 1000, 0, Buffer.alloc(1000));
    };
    for (const u of ['a', 'b', 'c']) mem.set(mk(u));
    expect(mem.get('a', {})).toBeDefined(); // a is now most recent
    mem.set(mk('d')); // evicts b, the least recently used
    expect(mem.get('b', {})).toBeUndefined();
    expect(mem.get('a', {})).toBeDefined();
    expect(mem.get('c', {})).toBeDefined();
    expect(mem.get('d', {})).toBeDefined();
    expect(mem.bytes).toBeLessThanOrEqual(mem.maxBytes);
    expect(mem.deleteUrl('a')).toBe(1);
    expect(mem.size).toBe(2);
  });
});

describe('originHeaders: an origin response head as undici hands it over (RFC 9110 §5.3, §7.6.1)', () => {
  const raw = (...pairs: string[]) => pairs.map((x) => Buffer.from(x, 'latin1'));
  it('lower-cases names, joins repeated fields, keeps Set-Cookie as a list, drops hop-by-hop and Connection-named fields', () => {
    const h = originHeaders(
      raw(
        'Content-Type',
        'text/plain',
        'Cache-Control',
        'max-age=60',
        'cache-control',
        'public',
        'Set-Cookie',
        'a=1',
        'Set-Cookie',
        'b=2',
        'Connection',
        'keep-alive, X-Secret',
        'Keep-Alive',
        'timeout=5',
        'X-Secret',
        'hop',
        'Transfer-Encoding',
        'chunked',
        'ETag',
        '"\xe9"',
      ),
    );
    expect(h).toEqual({ 'content-type': 'text/plain', 'cache-control': 'max-age=60, public', 'set-cookie': ['a=1', 'b=2'], etag: '"\xe9"' });
  });
  it('treats fields named like Object.prototype members as ordinary fields', () => {
    const h = originHeaders(raw('Constructor', 'x', 'constructor', 'y', 'toString', 'z'));
    expect(h.constructor).toBe('x, y');
    expect(h.tostring).toBe('z');
    expect(Object.keys(h)).toEqual(['constructor', 'tostring']);
  });
});
