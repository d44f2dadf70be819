/**
 * Byte ranges of a stored response (RFC 9110 §14): which part of a body a Range request asks for,
 * and whether an If-Range lets it apply. The cache flow uses them to decide whether a stored part
 * answers a request; the proxy uses them to serve one.
 */

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
