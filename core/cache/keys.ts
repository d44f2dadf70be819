/**
 * Cache keys: the primary key is the normalised absolute URL (RFC 9111 §2: "the primary cache key
 * consists of the request method and target URI"; only GET responses are stored, so the method is
 * implied), the secondary key the values of the request fields a response's Vary names (§4.1).
 */
import * as crypto from 'node:crypto';

/** Request headers as Node gives them: lower-case names. */
export type HeaderMap = Record<string, string | string[] | undefined>;

/**
 * The absolute URL in the form used as the primary key: scheme and host lower-cased, default port
 * dropped, fragment removed, an empty path made "/". The scheme stays in the key: `http://x/a` and
 * `https://x/a` are different resources (RFC 9110 §4.2.2). Throws TypeError for a URL that is
 * neither http nor https.
 */
export function normalizeUrl(raw: string): string {
  return normalizeTarget(raw).href;
}

/** The parsed URL whose `href` is normalizeUrl(raw) (one parse for both the key and the origin request). */
export function normalizeTarget(raw: string): URL {
  const u = new URL(raw);
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new TypeError(`not an http or https URL: ${raw}`);
  if (u.hash) u.hash = '';
  // RFC 9110 §4.2.4: userinfo in an http(s) URI is deprecated; it must not split or leak into keys.
  if (u.username) u.username = '';
  if (u.password) u.password = '';
  // WHATWG URL already lower-cases the host, drops :80 (http) or :443 (https) and turns an empty path into "/".
  return u;
}

/** A short, fixed-length hash of a URL or variant, safe in Tables keys and blob keys. */
export function hashKey(text: string): string {
  // crypto.hash (Node 20.12+) hashes in one call, without a Hash object per key.
  return (oneShot ? oneShot('sha256', text, 'base64url') : crypto.createHash('sha256').update(text).digest('base64url')).slice(0, 32);
}

const oneShot = (crypto as { hash?: (algorithm: string, data: string, encoding: 'base64url') => string }).hash;

/** The field names a Vary header lists, lower-cased and sorted; '*' stays as ['*']. */
export function varyNames(vary: string | string[] | undefined): string[] {
  if (vary === undefined) return [];
  const text = Array.isArray(vary) ? vary.join(',') : vary;
  const names = new Set<string>();
  for (const part of text.split(',')) {
    const n = part.trim().toLowerCase();
    if (n) names.add(n);
  }
  return [...names].sort();
}

/**
 * The secondary key for a request given the Vary field names of the stored response. Values are
 * compared exactly, as CachePolicy does (RFC 9111 §4.1 allows, but does not require, normalising).
 */
export function variantKey(names: readonly string[], headers: HeaderMap): string {
  if (names.length === 0) return '';
  let out = '';
  for (const n of names) {
    const v = headers[n];
    out += `${n}=${v === undefined ? '\u0000' : Array.isArray(v) ? v.join(', ') : v}\n`;
  }
  return out;
}
