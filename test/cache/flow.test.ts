/**
 * The cache flow (core/cache/flow.ts) as a table against http-cache-semantics itself: for many
 * response shapes, request shapes and clock readings, our decision and the library's answer must
 * agree, except where the table of deliberate differences below says why they do not (each one a
 * correction of the library that entry.ts documents, or a case the library does not model).
 */
import CachePolicy from 'http-cache-semantics';
import { describe, expect, it } from 'vitest';
import { CachedObject, policyClass } from '../../core/cache/entry.js';
import { decideRequest, decideRevalidated, decideStorage, staleIfError, type RequestDecision } from '../../core/cache/flow.js';
import { variantKey, varyNames, type HeaderMap } from '../../core/cache/keys.js';

const T0 = Date.UTC(2026, 0, 1, 12, 0, 0);
const URL_ = 'http://origin.test/x';
const TARGET = { url: URL_, host: 'origin.test' };
const date = (ms: number): string => new Date(ms).toUTCString();

let clock = T0;
/** The library as published, on the test's clock. */
class LibraryPolicy extends CachePolicy {
  now(): number {
    return clock;
  }
}
const Ours = policyClass({ now: () => clock, heuristicCapSeconds: 86400 });
const newPolicy = (q: CachePolicy.HttpRequest, r: CachePolicy.HttpResponse): CachePolicy => new Ours(q, r, { shared: true });

interface Shape {
  name: string;
  status?: number;
  headers: Record<string, string>;
  /** Fields of the request that stored the response. */
  stored?: HeaderMap;
}

/** Response shapes: RFC 9111 §4.2 lifetimes and heuristics, §5.2.2 directives, §4.1 Vary, §3.5 Authorization, RFC 5861. */
const SHAPES: Shape[] = [
  { name: 'max-age=60', headers: { 'cache-control': 'max-age=60' } },
  { name: 's-maxage=60, max-age=0', headers: { 'cache-control': 's-maxage=60, max-age=0' } },
  { name: 'public, max-age=60', headers: { 'cache-control': 'public, max-age=60' } },
  { name: 'max-age=0', headers: { 'cache-control': 'max-age=0', etag: '"a"' } },
  { name: 'private', headers: { 'cache-control': 'private, max-age=60' } },
  { name: 'no-store', headers: { 'cache-control': 'no-store, max-age=60' } },
  { name: 'no-cache', headers: { 'cache-control': 'no-cache', etag: '"a"' } },
  { name: 'Pragma: no-cache', headers: { pragma: 'no-cache' } },
  { name: 'must-revalidate', headers: { 'cache-control': 'max-age=60, must-revalidate' } },
  { name: 'proxy-revalidate', headers: { 'cache-control': 'max-age=60, proxy-revalidate' } },
  { name: 'stale-while-revalidate', headers: { 'cache-control': 'max-age=60, stale-while-revalidate=60' } },
  { name: 'stale-if-error', headers: { 'cache-control': 'max-age=60, stale-if-error=600' } },
  { name: 'immutable', headers: { 'cache-control': 'immutable, max-age=60' } },
  { name: 'Expires +60 s', headers: { expires: date(T0 + 60_000) } },
  { name: 'Expires not an HTTP-date', headers: { expires: '2099-01-01T00:00:00Z' } },
  { name: 'Expires: 0', headers: { expires: '0' } },
  { name: 'Last-Modified 10 days ago', headers: { 'last-modified': date(T0 - 10 * 86400_000) } },
  { name: 'Last-Modified 400 days ago', headers: { 'last-modified': date(T0 - 400 * 86400_000) } },
  { name: 'ETag only', headers: { etag: '"a"' } },
  { name: 'Age: 50', headers: { 'cache-control': 'max-age=60', age: '50' } },
  { name: 'Age not an integer', headers: { 'cache-control': 'max-age=60', age: '70.5' } },
  { name: 'Vary', headers: { 'cache-control': 'max-age=60', vary: 'Accept-Encoding' }, stored: { 'accept-encoding': 'gzip' } },
  { name: 'Vary: *', headers: { 'cache-control': 'max-age=60', vary: '*' } },
  { name: 'Set-Cookie', headers: { 'cache-control': 'max-age=60', 'set-cookie': 'a=1' } },
  { name: 'Set-Cookie, public', headers: { 'cache-control': 'public, max-age=60', 'set-cookie': 'a=1' } },
  { name: 'private="set-cookie"', headers: { 'cache-control': 'private="set-cookie", max-age=60', 'set-cookie': 'a=1' } },
  { name: 'no-cache="x-a"', headers: { 'cache-control': 'no-cache="x-a", max-age=60', 'x-a': '1' } },
  { name: 'MAX-AGE=60', headers: { 'cache-control': 'MAX-AGE=60' } },
  { name: 'Authorization', headers: { 'cache-control': 'max-age=60' }, stored: { authorization: 'Basic eDp5' } },
  { name: 'Authorization, public', headers: { 'cache-control': 'public, max-age=60' }, stored: { authorization: 'Basic eDp5' } },
  { name: 'Authorization, s-maxage', headers: { 'cache-control': 's-maxage=60' }, stored: { authorization: 'Basic eDp5' } },
  { name: '404 max-age=60', status: 404, headers: { 'cache-control': 'max-age=60' } },
  { name: '500 max-age=60', status: 500, headers: { 'cache-control': 'max-age=60' } },
];

interface Request {
  name: string;
  method?: string;
  headers: HeaderMap;
}

const REQUESTS: Request[] = [
  { name: 'GET', headers: {} },
  { name: 'HEAD', method: 'HEAD', headers: {} },
  { name: 'no-cache', headers: { 'cache-control': 'no-cache' } },
  { name: 'Pragma: no-cache', headers: { pragma: 'no-cache' } },
  { name: 'NO-CACHE', headers: { 'cache-control': 'NO-CACHE' } },
  { name: 'max-age=0', headers: { 'cache-control': 'max-age=0' } },
  { name: 'max-age=45', headers: { 'cache-control': 'max-age=45' } },
  { name: 'min-fresh=50', headers: { 'cache-control': 'min-fresh=50' } },
  { name: 'max-stale', headers: { 'cache-control': 'max-stale' } },
  { name: 'max-stale=60', headers: { 'cache-control': 'max-stale=60' } },
  { name: 'only-if-cached', headers: { 'cache-control': 'only-if-cached' } },
  { name: 'Authorization', headers: { authorization: 'Basic eDp5' } },
  { name: 'If-None-Match', headers: { 'if-none-match': '"a"' } },
  { name: 'Range', headers: { range: 'bytes=0-3' } },
  { name: 'Accept-Encoding: gzip', headers: { 'accept-encoding': 'gzip' } },
  { name: 'POST', method: 'POST', headers: {} },
  { name: 'PUT', method: 'PUT', headers: {} },
  { name: 'DELETE', method: 'DELETE', headers: {} },
  { name: 'OPTIONS', method: 'OPTIONS', headers: {} },
];

/** Clock readings after the response was received at T0. */
const CLOCK = [0, 30_000, 59_000, 90_000, 150_000, 3600_000, 2 * 86400_000, 100 * 86400_000];

/** A decision reduced to what the library can say too. */
type Kind = 'hit' | 'hit, revalidate in background' | 'revalidate' | 'fetch' | 'pass' | 'refuse';

function kindOf(d: RequestDecision): Kind {
  if (d.kind === 'hit') return d.background ? 'hit, revalidate in background' : 'hit';
  return d.kind;
}

/** Nothing usable stored: what any cache does (RFC 9111 §5.2.1.7 only-if-cached; a HEAD is forwarded, a GET fetched). */
function nothingStored(q: Request): Kind {
  if (/only-if-cached/.test(String(q.headers['cache-control'] ?? ''))) return 'refuse';
  return q.method === 'HEAD' ? 'pass' : 'fetch';
}

/** The library's answer as a Kind. Methods other than GET and HEAD are never answered from a cache (the library's
 * evaluateRequest does not match them); a HEAD is asked as the GET whose stored response answers it (RFC 9110 §9.3.2). */
function libraryKind(s: Shape, q: Request, lib: CachePolicy): Kind {
  const method = q.method ?? 'GET';
  if (method !== 'GET' && method !== 'HEAD') {
    expect(lib.evaluateRequest({ url: URL_, method, headers: { ...q.headers, host: TARGET.host } }).revalidation?.synchronous).toBe(true);
    return 'pass';
  }
  if (!lib.storable()) return nothingStored(q);
  const names = varyNames(s.headers.vary);
  // The store selects a variant by the fields Vary names (keys.ts); the library must refuse the others too.
  const r = lib.evaluateRequest({ url: URL_, method: 'GET', headers: { ...(q.headers as CachePolicy.Headers), host: TARGET.host } });
  if (names.length > 0 && variantKey(names, q.headers) !== variantKey(names, s.stored ?? {})) {
    expect(r.revalidation?.synchronous).toBe(true);
    return nothingStored(q);
  }
  if (!r.revalidation) return 'hit';
  if (r.response && !r.revalidation.synchronous) return 'hit, revalidate in background';
  return 'revalidate';
}

/** Our decision, with the entry stored as the proxy stores it (decideStorage) and selected as the store selects it. */
function ourKind(s: Shape, q: Request, obj: CachedObject | undefined, now: number): Kind {
  const selected = obj && variantKey(obj.vary, q.headers) === obj.variant ? obj : undefined;
  return kindOf(decideRequest(q.method ?? 'GET', TARGET, q.headers, selected, now));
}

interface Difference {
  shape: string;
  request?: string;
  /** The clock readings (ms after T0) and requests it applies to; all when absent. */
  when?: (dt: number, q: Request) => boolean;
  ours: Kind | Kind[];
  why: string;
}

/** Stored by both with max-age=60: fresh, or stale within what max-stale=60 accepts. */
const usableFor60s = (dt: number, q: Request): boolean => dt < 60_000 || (q.name === 'max-stale=60' && dt < 120_000);

/** Where we decide otherwise than the library, on purpose. */
const DIFFERENCES: Difference[] = [
  {
    shape: 'must-revalidate',
    when: (dt) => dt < 60_000,
    ours: 'hit',
    why: 'RFC 9111 §5.2.2.2: must-revalidate constrains the use of a stale response only; the library revalidates it even while fresh',
  },
  {
    shape: 'proxy-revalidate',
    when: (dt) => dt < 60_000,
    ours: 'hit',
    why: 'RFC 9111 §5.2.2.8: proxy-revalidate is must-revalidate for shared caches, a constraint on stale use; the library never treats the response as fresh',
  },
  {
    shape: 'proxy-revalidate',
    when: (dt, q) => dt >= 60_000 && q.name === 'max-stale',
    ours: 'revalidate',
    why: 'RFC 9111 §5.2.2.8 (as §5.2.2.2): once stale it is not used without validation, whatever max-stale accepts; the library, which treats it as always stale, lets max-stale serve it',
  },
  {
    shape: 'Expires not an HTTP-date',
    ours: 'revalidate',
    why: 'RFC 9111 §5.3: an invalid Expires means already expired; the library reads it with Date.parse, which accepts ISO dates',
  },
  {
    shape: 'Last-Modified 400 days ago',
    when: (dt) => dt >= 86400_000 && dt < 40 * 86400_000,
    ours: 'revalidate',
    why: 'heuristic freshness is capped (proxy.heuristicCapSeconds, a day by default); the library allows 10% of the age of Last-Modified, here 40 days',
  },
  {
    shape: 'Set-Cookie',
    when: usableFor60s,
    ours: 'hit',
    why: 'RFC 9111 §7.3: Set-Cookie does not inhibit caching; we store the response without the cookie (entry.ts), the library keeps it and so never reuses the response in a shared cache',
  },
  {
    shape: 'private="set-cookie"',
    ours: ['hit', 'revalidate'],
    why: 'RFC 9111 §5.2.2.7: qualified private leaves the named fields out and allows the rest to be stored; the library treats it as unqualified and stores nothing',
  },
  {
    shape: 'no-cache="x-a"',
    when: usableFor60s,
    ours: 'hit',
    why: 'RFC 9111 §5.2.2.4: qualified no-cache only keeps the named fields from reuse; the library treats it as unqualified (always revalidate)',
  },
  {
    shape: 'MAX-AGE=60',
    when: usableFor60s,
    ours: 'hit',
    why: 'RFC 9111 §5.2: directive names are case-insensitive; the library matches lower case only',
  },
  {
    shape: 'Age not an integer',
    when: usableFor60s,
    ours: 'hit',
    why: 'RFC 9111 §5.1: an Age that is not a non-negative integer is ignored; the library reads 70 from "70.5" with parseInt',
  },
  {
    shape: '*',
    request: 'NO-CACHE',
    ours: 'revalidate',
    why: 'RFC 9111 §5.2: request directives are case-insensitive too; the library ignores NO-CACHE',
  },
  {
    shape: 'Vary: *',
    ours: ['fetch', 'pass', 'refuse'],
    why: 'RFC 9111 §4.1: a stored Vary: * always fails to match, so it is not stored: we act as with nothing stored where the library, having stored it, revalidates; the origin is asked either way',
  },
];

function difference(s: Shape, q: Request, dt: number, ours: Kind, lib: Kind): Difference | undefined {
  return DIFFERENCES.find(
    (d) =>
      (d.shape === s.name || d.shape === '*') &&
      (d.request === undefined || d.request === q.name) &&
      (!d.when || d.when(dt, q)) &&
      (Array.isArray(d.ours) ? d.ours.includes(ours) : d.ours === ours) &&
      ours !== lib,
  );
}

/** The library's policy and our stored entry for a shape, both received at T0. */
function store(s: Shape): { lib: CachePolicy; obj: CachedObject | undefined } {
  clock = T0;
  const headers = { date: date(T0), 'content-type': 'text/plain', ...s.headers };
  const status = s.status ?? 200;
  const req = { url: URL_, method: 'GET', headers: { ...(s.stored as CachePolicy.Headers), host: TARGET.host } };
  const lib = new LibraryPolicy(req, { status, headers }, { shared: true });
  const d = decideStorage('GET', TARGET, s.stored ?? {}, status, headers, 1 << 20, newPolicy);
  const obj = d && new CachedObject(URL_, d.variant, d.names, d.policy, 4, T0, Buffer.from('body'));
  return { lib, obj };
}

describe('cache flow against http-cache-semantics', () => {
  it('decides as the library does over every response shape, request and clock reading, but for the documented differences', () => {
    const mismatches: string[] = [];
    const used = new Set<Difference>();
    let compared = 0;
    for (const s of SHAPES) {
      const { lib, obj } = store(s);
      for (const dt of CLOCK) {
        for (const q of REQUESTS) {
          clock = T0 + dt;
          const theirs = libraryKind(s, q, lib);
          const ours = ourKind(s, q, obj, clock);
          compared++;
          if (ours === theirs) continue;
          const d = difference(s, q, dt, ours, theirs);
          if (d) used.add(d);
          else mismatches.push(`${s.name} / ${q.name} / +${dt / 1000} s: ours ${ours}, library ${theirs}`);
        }
      }
    }
    expect(mismatches).toEqual([]);
    // Every documented difference is still a difference (the table does not outlive the code).
    expect(DIFFERENCES.filter((d) => !used.has(d)).map((d) => d.why)).toEqual([]);
    expect(compared).toBe(SHAPES.length * CLOCK.length * REQUESTS.length);
  });

  it('a fresh hit in memory is decided without allocating: the same decision object each time', () => {
    const { obj } = store(SHAPES[0]);
    clock = T0 + 1000;
    const a = decideRequest('GET', TARGET, {}, obj, clock);
    const b = decideRequest('GET', TARGET, {}, obj, clock);
    expect(a).toEqual({ kind: 'hit', whole: true });
    expect(a).toBe(b);
    expect(decideRequest('GET', TARGET, { 'if-none-match': '"a"' }, obj, clock)).toEqual({ kind: 'hit', whole: false });
  });

  it('revalidation carries the stored validators (RFC 9111 §4.3.1), never the client’s own', () => {
    const { obj } = store({ name: 'validators', headers: { 'cache-control': 'max-age=0', etag: '"v1"', 'last-modified': date(T0 - 86400_000) } });
    const d = decideRequest('GET', TARGET, { 'if-none-match': '"client"' }, obj, T0 + 1000);
    expect(d.kind).toBe('revalidate');
    if (d.kind !== 'revalidate') return;
    expect(d.validators).toEqual({ 'if-none-match': '"v1"', 'if-modified-since': date(T0 - 86400_000) });
    expect(d.request.headers).toEqual({ host: TARGET.host });
  });

  it('stale-if-error (RFC 5861 §4) agrees with the library, except that must-revalidate forbids it (RFC 9111 §5.2.2.2)', () => {
    const shapes: [Record<string, string>, boolean | 'library'][] = [
      [{ 'cache-control': 'max-age=60, stale-if-error=600' }, 'library'],
      [{ 'cache-control': 'max-age=60' }, 'library'],
      [{ 'cache-control': 'max-age=60, stale-if-error=600, must-revalidate' }, false],
    ];
    for (const [headers, expected] of shapes) {
      const { lib, obj } = store({ name: 'sie', headers });
      for (const dt of [30_000, 120_000, 700_000]) {
        clock = T0 + dt;
        const req = { url: URL_, method: 'GET', headers: { host: TARGET.host } };
        for (const status of [500, 503, undefined]) {
          let theirs: boolean;
          try {
            theirs = lib.revalidatedPolicy(req, status === undefined ? undefined : { status, headers: {} }).policy === lib;
          } catch {
            theirs = false; // the library throws for a failure it may not cover
          }
          const ours = staleIfError(obj!, req, status, clock);
          expect(ours, `${headers['cache-control']} +${dt} ${status}`).toBe(expected === 'library' ? theirs : expected);
        }
      }
    }
  });

  it('a 304 refreshes the stored response when the library says it selects it (RFC 9111 §4.3.4), and one without validators is taken as ours', () => {
    const { lib, obj } = store({ name: '304', headers: { 'cache-control': 'max-age=0', etag: '"v1"' } });
    const req = { url: URL_, method: 'GET', headers: { host: TARGET.host } };
    clock = T0 + 5000;
    for (const [rh, refresh] of [
      [{ etag: '"v1"', 'cache-control': 'max-age=60' }, true],
      [{ etag: '"v2"' }, false],
      [{ etag: 'W/"v1"' }, true],
      [{ 'cache-control': 'max-age=60' }, true],
    ] as [Record<string, string>, boolean][]) {
      const d = decideRevalidated(obj!, req, 304, rh, clock);
      expect(d.kind, JSON.stringify(rh)).toBe(refresh ? 'refresh' : 'fetch');
      if (rh.etag !== undefined) {
        const r = lib.revalidatedPolicy(req, { status: 304, headers: rh });
        expect(!r.modified && r.matches).toBe(refresh);
      }
    }
    expect(decideRevalidated(obj!, req, 200, {}, clock).kind).toBe('replace');
  });

  it('a stored part (206) answers only a Range request it covers (RFC 9111 §3.3); for any other request nothing is stored', () => {
    const { obj } = store({ name: '206', status: 206, headers: { 'cache-control': 'max-age=60', 'content-range': 'bytes 0-9/100', etag: '"p"' } });
    expect(obj?.part).toEqual({ start: 0, end: 9, length: 100 });
    const at = T0 + 1000;
    expect(decideRequest('GET', TARGET, { range: 'bytes=2-5' }, obj, at)).toEqual({ kind: 'hit', whole: false, part: { start: 2, end: 5, length: 100 } });
    expect(decideRequest('GET', TARGET, { range: 'bytes=2-5', 'if-range': '"p"' }, obj, at).kind).toBe('hit');
    expect(decideRequest('GET', TARGET, { range: 'bytes=2-5', 'if-range': '"other"' }, obj, at).kind).toBe('fetch');
    expect(decideRequest('GET', TARGET, { range: 'bytes=5-50' }, obj, at).kind).toBe('fetch');
    expect(decideRequest('GET', TARGET, {}, obj, at).kind).toBe('fetch');
    expect(decideRequest('HEAD', TARGET, { range: 'bytes=2-5' }, obj, at).kind).toBe('pass');
    const stale = decideRequest('GET', TARGET, { range: 'bytes=2-5' }, obj, T0 + 120_000);
    expect(stale.kind === 'revalidate' && stale.part).toEqual({ start: 2, end: 5, length: 100 });
  });
});
