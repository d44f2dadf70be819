/**
 * The cache flow (core/cache/flow.ts) decides a hit's freshness from `CachedObject.freshUntil`, a number computed
 * once from http-cache-semantics when the entry is stored or refreshed. These checks hold it
 * against the library itself (the rule-keeper) over many response shapes and clock readings: the
 * flow may only say "fresh" when the library, asked about a request without conditions, would
 * serve the stored response without revalidation; and it must not miss more than a rounding step.
 */
import { describe, expect, it } from 'vitest';
import { CachedObject, policyClass } from '../../core/cache/entry.js';

const URL_ = 'http://origin.test/x';
const REQ = { url: URL_, method: 'GET', headers: { host: 'origin.test' } };

/** Response header sets covering RFC 9111 §4.2 (lifetimes, heuristics, age) and §5.2.2 directives. */
function shapes(t0: number): Record<string, string>[] {
  const date = new Date(t0).toUTCString();
  const lm = (daysAgo: number) => new Date(t0 - daysAgo * 86400_000).toUTCString();
  const out: Record<string, string>[] = [];
  for (const cc of [
    'max-age=60',
    's-maxage=30, max-age=300',
    'max-age=0',
    'no-cache',
    'max-age=60, must-revalidate',
    'max-age=60, proxy-revalidate',
    'public, max-age=5',
    'max-age=60, stale-while-revalidate=30',
    'max-age=60, stale-if-error=30',
    'immutable, max-age=100',
    'private, max-age=60',
    'no-store',
    '',
  ]) {
    for (const extra of <Record<string, string>[]>[
      {},
      { age: '20' },
      { age: '100' },
      { expires: new Date(t0 + 45_000).toUTCString() },
      { 'last-modified': lm(3) },
      { 'last-modified': lm(400) },
      { date: new Date(t0 - 10_000).toUTCString() },
    ]) {
      const h: Record<string, string> = { date, 'content-type': 'text/plain', ...extra };
      if (cc) h['cache-control'] = cc;
      out.push(h);
    }
  }
  out.push({ date, expires: 'Thu, 01 Jan 1970 00:00:00 GMT' }, { date, expires: 'garbage' }, { date, pragma: 'no-cache' });
  return out;
}

describe('fast-path freshness agrees with http-cache-semantics', () => {
  it('freshUntil > now only when the library serves without revalidation, and within 1 s of when it does', () => {
    const t0 = Date.UTC(2026, 0, 1, 12, 0, 0);
    let now = t0;
    const Policy = policyClass({ now: () => now, heuristicCapSeconds: 86400 });
    let checked = 0;
    let freshSeen = 0;
    for (const headers of shapes(t0)) {
      now = t0;
      const policy = new Policy(REQ, { status: 200, headers }, { shared: true });
      if (!policy.storable()) continue;
      const obj = new CachedObject(URL_, '', [], policy, 1, now, Buffer.from('x'));
      for (const dt of [
        0,
        1,
        4_999,
        5_000,
        5_001,
        29_999,
        30_001,
        44_999,
        45_001,
        59_000,
        59_999,
        60_000,
        60_001,
        61_000,
        90_000,
        299_000,
        301_000,
        3_600_000,
        86_400_000,
        200 * 86_400_000,
      ]) {
        now = t0 + dt;
        const fast = obj.freshUntil > now;
        const lib = policy.evaluateRequest(REQ);
        const libFresh = lib.revalidation === undefined && lib.response !== undefined;
        const what = `${JSON.stringify(headers)} at +${dt} ms`;
        if (fast) {
          expect(libFresh, what).toBe(true);
          freshSeen++;
        } else if (libFresh) {
          // The library's own answer a second later must already be "stale": the flow may
          // round the end of the lifetime down, never up.
          now += 1000;
          expect(policy.evaluateRequest(REQ).revalidation !== undefined || !!headers['cache-control']?.match(/must-revalidate|no-cache/), what).toBe(true);
        }
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(1000);
    expect(freshSeen).toBeGreaterThan(100);
  });

  it('a refreshed entry (304) recomputes its lifetime from the new policy', () => {
    const t0 = Date.UTC(2026, 0, 1, 12, 0, 0);
    let now = t0;
    const Policy = policyClass({ now: () => now });
    const policy = new Policy(
      REQ,
      { status: 200, headers: { date: new Date(t0).toUTCString(), 'cache-control': 'max-age=10', etag: '"a"' } },
      { shared: true },
    );
    const obj = new CachedObject(URL_, '', [], policy, 1, now, Buffer.from('x'));
    expect(obj.freshUntil).toBe(t0 + 10_000);
    now = t0 + 20_000;
    expect(obj.freshUntil > now).toBe(false);
    const r = policy.revalidatedPolicy(REQ, { status: 304, headers: { date: new Date(now).toUTCString(), 'cache-control': 'max-age=30', etag: '"a"' } });
    obj.refresh(r.policy);
    expect(obj.freshUntil).toBe(now + 30_000);
    expect(obj.responseHeaders()['cache-control']).toBe('max-age=30');
  });
});

/** servedFields' name/value list as the object responseHeaders() gives (repeated names joined into a list). */
function fieldsOf(obj: CachedObject): Record<string, string | string[]> {
  const list: string[] = [];
  obj.servedFields(list);
  const out: Record<string, string | string[]> = {};
  for (let i = 0; i < list.length; i += 2) {
    const [k, v] = [list[i], list[i + 1]];
    const cur = out[k];
    out[k] = cur === undefined ? v : Array.isArray(cur) ? [...cur, v] : [cur, v];
  }
  return out;
}

describe('served fields agree with http-cache-semantics', () => {
  it('the field list made once per entry gives what responseHeaders() gives, at every age', () => {
    const t0 = Date.UTC(2026, 0, 1, 12, 0, 0);
    let now = t0;
    const Policy = policyClass({ now: () => now });
    let checked = 0;
    for (const headers of [
      ...shapes(t0),
      {
        date: new Date(t0).toUTCString(),
        'set-cookie': ['a=1', 'b=2'] as unknown as string,
        'cache-control': 'public, max-age=60',
        connection: 'x-hop',
        'x-hop': '1',
        'keep-alive': '5',
        warning: '110 - "stale", 299 - "kept"',
      },
    ]) {
      now = t0;
      const obj = new CachedObject(URL_, '', [], new Policy(REQ, { status: 200, headers }, { shared: true }), 1, now, Buffer.from('x'));
      // Up to well past a day, where the library adds Warning 113 to heuristic lifetimes.
      for (const dt of [0, 499, 1_500, 61_000, 86_399_000, 86_401_000, 400 * 86_400_000]) {
        now = t0 + dt;
        const expected = obj.responseHeaders();
        expect(fieldsOf(obj), `${JSON.stringify(headers)} at +${dt} ms`).toEqual(expected);
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(500);
  });

  it('after a 304 the list follows the refreshed fields, whether only Date changed or more', () => {
    const t0 = Date.UTC(2026, 0, 1, 12, 0, 0);
    let now = t0;
    const Policy = policyClass({ now: () => now });
    const stored = { date: new Date(t0).toUTCString(), 'cache-control': 'max-age=0', etag: '"a"', 'content-type': 'text/plain', age: '7' };
    const policy = new Policy(REQ, { status: 200, headers: stored }, { shared: true });
    const obj = new CachedObject(URL_, '', [], policy, 1, now, Buffer.from('x'));
    now = t0 + 5_000;
    expect(fieldsOf(obj).age).toBe('12');
    // Date only: the same fields, Age counted from the 304.
    now = t0 + 10_000;
    let r = obj.policy.revalidatedPolicy(REQ, { status: 304, headers: { date: new Date(now).toUTCString(), etag: '"a"' } });
    obj.refresh(r.policy);
    expect(fieldsOf(obj)).toEqual(obj.responseHeaders());
    // New values and a new field from the 304 (RFC 9111 §4.3.4).
    now = t0 + 20_000;
    r = obj.policy.revalidatedPolicy(REQ, {
      status: 304,
      headers: { date: new Date(now).toUTCString(), etag: '"a"', 'cache-control': 'max-age=5', 'x-new': '1', age: '0' },
    });
    obj.refresh(r.policy);
    const fields = fieldsOf(obj);
    expect(fields).toEqual(obj.responseHeaders());
    expect(fields['cache-control']).toBe('max-age=5');
    expect(fields.age).toBe('0');
  });
});
