/**
 * The field parsers under the cache policy (core/cache/entry.ts): HTTP-date (RFC 9110 §5.6.7) and
 * Cache-Control (RFC 9111 §5.2). The proxy-level behaviour is in test/proxy/rfc9111.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { parseCacheControl, parseHttpDate } from '../../core/cache/entry.js';

const T = Date.UTC(1994, 10, 6, 8, 49, 37);

describe('parseHttpDate', () => {
  it('takes the three formats of RFC 9110 §5.6.7 and nothing else', () => {
    expect(parseHttpDate('Sun, 06 Nov 1994 08:49:37 GMT')).toBe(T);
    expect(parseHttpDate('Sunday, 06-Nov-94 08:49:37 GMT', Date.UTC(2026, 0, 1))).toBe(T);
    expect(parseHttpDate('Sun Nov  6 08:49:37 1994')).toBe(T);
    for (const bad of [
      '',
      '0',
      '-1',
      '1994',
      'Sun, 06 Nov 1994 08:49:37',
      'sun, 06 nov 1994 08:49:37 gmt',
      'Sun, 6 Nov 1994 08:49:37 GMT',
      'Sun, 31 Feb 1994 08:49:37 GMT',
      'Sun, 06 Nov 1994 25:00:00 GMT',
      ' Sun, 06 Nov 1994 08:49:37 GMT',
    ])
      expect(parseHttpDate(bad), bad).toBeNaN();
  });

  it('reads a two-digit year more than 50 years ahead as the last such year in the past', () => {
    const now = Date.UTC(2026, 5, 1);
    expect(new Date(parseHttpDate('Friday, 31-Dec-49 23:59:59 GMT', now)).getUTCFullYear()).toBe(2049);
    expect(new Date(parseHttpDate('Friday, 31-Dec-76 23:59:59 GMT', now)).getUTCFullYear()).toBe(2076);
    expect(new Date(parseHttpDate('Friday, 31-Dec-77 23:59:59 GMT', now)).getUTCFullYear()).toBe(1977);
  });
});

describe('parseCacheControl', () => {
  it('lower-cases names, unquotes arguments, keeps quoted commas, and invalidates a repeated max-age', () => {
    expect(parseCacheControl('MAX-AGE=60, No-Cache, Private="Set-Cookie, X-A"')).toEqual({ 'max-age': '60', 'no-cache': true, private: 'Set-Cookie, X-A' });
    expect(parseCacheControl(['public', 's-maxage="5"'])).toEqual({ public: true, 's-maxage': '5' });
    expect(parseCacheControl('max-age=60, max-age=10')['max-age']).toBe('0');
    expect(parseCacheControl(' , max-age=5 junk, ,no-store')).toEqual({ 'max-age': '5', 'no-store': true });
  });
});
