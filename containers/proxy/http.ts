/**
 * Message handling shared by the proxy's paths: hop-by-hop fields (RFC 9110 §7.6.1) and the
 * client's own conditionals (RFC 9110 §13) answered from a stored response. Range (RFC 9110 §14)
 * lives in core/cache/ranges.ts, where the cache flow uses it too, and is re-exported here.
 */

type Headers = Record<string, string | string[] | undefined>;

/**
 * RFC 9110 §7.6.1: "a proxy or gateway MUST parse a received Connection header field before a
 * message is forwarded and, for each connection-option in this field, remove any header or
 * trailer field(s) from the message with the same name", plus the fields known to be hop-by-hop.
 */
export const HOP_BY_HOP: ReadonlySet<string> = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

/** Copies end-to-end fields only, joining repeated ones (except Set-Cookie) and dropping `extra`. */
export function endToEnd(headers: Headers, extra?: readonly string[]): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  const conn = headers.connection;
  const named = conn
    ? String(conn)
        .toLowerCase()
        .split(',')
        .map((s) => s.trim())
    : undefined;
  for (const name in headers) {
    const v = headers[name];
    if (v === undefined || HOP_BY_HOP.has(name)) continue;
    if (named && named.includes(name)) continue;
    if (extra && extra.includes(name)) continue;
    out[name] = Array.isArray(v) && name !== 'set-cookie' ? v.join(', ') : v;
  }
  return out;
}

/** Appends our Via entry (RFC 9110 §7.6.3: "a proxy MUST send an appropriate Via header field"). */
export function addVia(headers: Record<string, string | string[]>, via: string): void {
  const cur = headers.via;
  headers.via = cur ? `${Array.isArray(cur) ? cur.join(', ') : cur}, ${via}` : via;
}

export { ifRangeMatches, parseRange, type RangeResult } from '../../core/cache/ranges.js';

function opaque(tag: string): string {
  return tag.trim().replace(/^W\//, '');
}

/**
 * RFC 9111 §4.3.2: a cache answers a client's conditional GET/HEAD from a stored response.
 * If-None-Match uses weak comparison (RFC 9110 §13.1.2) and, when present, If-Modified-Since is
 * ignored; otherwise If-Modified-Since compares against Last-Modified (or Date).
 */
export function notModified(req: Headers, etag: string | undefined, lastModified: string | undefined, date: string | undefined): boolean {
  const inm = req['if-none-match'];
  if (inm !== undefined) {
    if (!etag) return false;
    const list = String(inm);
    if (list.trim() === '*') return true;
    const mine = opaque(etag);
    return list.split(',').some((t) => opaque(t) === mine);
  }
  const ims = req['if-modified-since'];
  if (ims === undefined) return false;
  const since = Date.parse(String(ims));
  const ref = Date.parse(lastModified ?? date ?? '');
  return Number.isFinite(since) && Number.isFinite(ref) && ref <= since;
}
