/**
 * Message handling shared by the proxy's paths: hop-by-hop fields (RFC 9110 §7.6.1), Range
 * (RFC 9110 §14) and the client's own conditionals (RFC 9110 §13) answered from a stored response.
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
  const named = conn ? String(conn).toLowerCase().split(',').map((s) => s.trim()) : undefined;
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

/** A single satisfiable byte range, an unsatisfiable one, or none to apply (serve the full body). */
export type RangeResult = { kind: 'none' } | { kind: 'range'; start: number; end: number } | { kind: 'unsatisfiable' };

/**
 * Parses `Range: bytes=...` against a body of `size` bytes. Only one range is served (RFC 9110
 * §14.2: a server MAY ignore the Range header field); several ranges yield 'none' (a full 200).
 */
export function parseRange(header: string | undefined, size: number): RangeResult {
  if (!header) return { kind: 'none' };
  const m = /^bytes=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(header);
  if (!m) return { kind: 'none' };
  const [, a, b] = m;
  if (a === '' && b === '') return { kind: 'none' };
  let start: number;
  let end: number;
  if (a === '') {
    // suffix-range: the last N bytes.
    const n = Number(b);
    if (n === 0) return { kind: 'unsatisfiable' };
    start = Math.max(0, size - n);
    end = size - 1;
  } else {
    start = Number(a);
    end = b === '' ? size - 1 : Math.min(Number(b), size - 1);
    if (b !== '' && Number(b) < start) return { kind: 'none' };
  }
  // RFC 9110 §14.1.1: a range is unsatisfiable when its first position is past the end.
  if (start >= size) return { kind: 'unsatisfiable' };
  return { kind: 'range', start, end };
}

function opaque(tag: string): string {
  return tag.trim().replace(/^W\//, '');
}

/**
 * RFC 9110 §13.1.5 If-Range: the range applies only when the validator matches the stored one by
 * strong comparison (an entity-tag) or exactly (a date equal to Last-Modified).
 */
export function ifRangeMatches(ifRange: string | undefined, etag: string | undefined, lastModified: string | undefined): boolean {
  if (!ifRange) return true;
  const v = ifRange.trim();
  if (v.startsWith('"') || v.startsWith('W/')) return !!etag && !v.startsWith('W/') && !etag.startsWith('W/') && v === etag.trim();
  return !!lastModified && Date.parse(v) === Date.parse(lastModified);
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
