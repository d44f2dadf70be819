/**
 * The cache's decisions as values (RFC 9111), in the manner of http-cache-semantics'
 * `evaluateRequest`: no I/O and no clock of their own (the time is an argument). Given a request,
 * what is stored and the time, `decideRequest` says hit, revalidate, fetch, pass or refuse; given
 * the origin's answer, `decideStorage`, `decideRevalidated` and `staleIfError` say what to keep
 * and what to serve. The proxy finds what is stored and carries each decision out.
 *
 * CachePolicy (with the corrections of entry.ts) answers every freshness question; this module
 * chooses which question to ask and turns the answer into a decision. The one shortcut is
 * `CachedObject.freshUntil`: the policy's own answer for a request without conditions, computed
 * when the entry was stored or refreshed, so a fresh hit is decided without asking the policy again.
 */
import type CachePolicy from 'http-cache-semantics';
import type { CachedObject } from './entry.js';
import { variantKey, varyNames, type HeaderMap } from './keys.js';
import { ifRangeMatches, parseRange } from './ranges.js';

/** What the flow needs of a request target: the normalised URL (the primary key) and its `host[:port]`. */
export interface FlowTarget {
  readonly url: string;
  readonly host: string;
}

/** The validators a conditional request to the origin carries (RFC 9111 §4.3.1). */
export interface Validators {
  'if-none-match'?: string;
  'if-modified-since'?: string;
}

/** The byte range of a stored part (206) that answers a request, and the complete length (-1: unknown). */
export interface PartRange {
  readonly start: number;
  readonly end: number;
  readonly length: number;
}

/** A conditional request for a stored response: the request the policy is asked with, and the validators to send. */
export interface Revalidation {
  readonly request: CachePolicy.HttpRequest;
  readonly validators: Validators;
}

/** Serve the stored response. */
export interface HitDecision {
  readonly kind: 'hit';
  /** No Range or conditional of the client's to apply: the stored response is sent as it is. */
  readonly whole: boolean;
  /** For a stored part (206): the range of it that answers the request. */
  readonly part?: PartRange;
  /** RFC 5861 §3: the response is stale; serve it while this revalidation runs in the background. */
  readonly background?: Revalidation;
}

/** Ask the origin whether the stored response may be used (RFC 9111 §4.3) before answering. */
export interface RevalidateDecision extends Revalidation {
  readonly kind: 'revalidate';
  /** May wait for another request's revalidation of the same response (no credentials, no cache directives of its own). */
  readonly collapsible: boolean;
  /** As in HitDecision, for the answer after a 304. */
  readonly part?: PartRange;
  readonly whole: boolean;
}

/** Nothing usable is stored: fetch from the origin, storing the response if allowed. */
export interface FetchDecision {
  readonly kind: 'fetch';
  /** May wait for another request's fetch of the same URL (no conditionals, no credentials). */
  readonly collapsible: boolean;
}

/** Forward without using or filling the cache. */
export interface PassDecision {
  readonly kind: 'pass';
  /** For Cache-Status `fwd=` (RFC 9211 §2.2): 'method' (not GET or HEAD) or 'uri-miss' (a HEAD with nothing stored). */
  readonly reason: 'method' | 'uri-miss';
  /** RFC 9111 §4.4: an unsafe method; a non-error answer invalidates what is stored for the URL. */
  readonly invalidates: boolean;
}

/** Answer from the proxy itself without contacting the origin. */
export interface RefuseDecision {
  readonly kind: 'refuse';
  readonly status: number;
  readonly reason: string;
}

/** What to do with a request. */
export type RequestDecision = HitDecision | RevalidateDecision | FetchDecision | PassDecision | RefuseDecision;

// The decisions that carry nothing per request are constants: deciding a hit allocates nothing.
const HIT_WHOLE: HitDecision = { kind: 'hit', whole: true };
const HIT_ANSWERED: HitDecision = { kind: 'hit', whole: false };
const FETCH_SHARED: FetchDecision = { kind: 'fetch', collapsible: true };
const FETCH_ALONE: FetchDecision = { kind: 'fetch', collapsible: false };
const PASS_SAFE: PassDecision = { kind: 'pass', reason: 'method', invalidates: false };
const PASS_UNSAFE: PassDecision = { kind: 'pass', reason: 'method', invalidates: true };
const PASS_HEAD_MISS: PassDecision = { kind: 'pass', reason: 'uri-miss', invalidates: false };
const REFUSE_ONLY_IF_CACHED: RefuseDecision = { kind: 'refuse', status: 504, reason: 'not in cache (only-if-cached)' };

/** RFC 9110 §9.2.1's safe methods; every other one invalidates (RFC 9111 §4.4: "including methods whose safety is unknown"). */
const SAFE = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE']);

/** The client's conditional and range fields (RFC 9110 §13, §14). */
export const CONDITIONALS: readonly string[] = ['if-none-match', 'if-modified-since', 'if-match', 'if-unmodified-since', 'if-range', 'range'];

/** True when the request carries any of CONDITIONALS. */
export function hasConditional(h: HeaderMap): boolean {
  for (const n of CONDITIONALS) if (h[n] !== undefined) return true;
  return false;
}

/**
 * Decides how to answer a request for `target` (method and header fields as received) when
 * `stored` is the variant it selects (undefined: none), at `now` (epoch ms).
 */
export function decideRequest(method: string, target: FlowTarget, h: HeaderMap, stored: CachedObject | undefined, now: number): RequestDecision {
  if (method !== 'GET' && method !== 'HEAD') return SAFE.has(method) ? PASS_SAFE : PASS_UNSAFE;
  let part: PartRange | undefined;
  // RFC 9111 §3.3: a stored part answers only a Range request it covers; for any other it is as if nothing were stored.
  if (stored !== undefined && stored.status === 206) {
    part = partRange(stored, method, h);
    if (part === undefined) stored = undefined;
  }
  if (stored === undefined) {
    // RFC 9111 §5.2.1.7: only-if-cached and nothing stored: 504.
    const cc = h['cache-control'];
    if (cc !== undefined && /only-if-cached/i.test(headerText(cc))) return REFUSE_ONLY_IF_CACHED;
    if (method === 'HEAD') return PASS_HEAD_MISS;
    return h.authorization === undefined && !hasConditional(h) ? FETCH_SHARED : FETCH_ALONE;
  }
  const cc = h['cache-control'];
  const pragma = h.pragma;
  const whole = h.range === undefined && h['if-none-match'] === undefined && h['if-modified-since'] === undefined;
  // Fresh, and a request without cache directives: what the policy would answer (see freshUntil).
  if (stored.freshUntil > now && cc === undefined && pragma === undefined) return whole ? HIT_WHOLE : HIT_ANSWERED;
  const request = policyRequest(target, h, stored.vary);
  const r = atTime(stored.policy, now, (policy) => policy.evaluateRequest(request));
  if (!r.revalidation) {
    if (part) return { kind: 'hit', whole: false, part };
    return whole ? HIT_WHOLE : HIT_ANSWERED;
  }
  const validators = pickValidators(r.revalidation.headers);
  if (r.response && !r.revalidation.synchronous) return { kind: 'hit', whole, part, background: { request, validators } };
  return { kind: 'revalidate', request, validators, collapsible: h.authorization === undefined && cc === undefined && pragma === undefined, part, whole };
}

/**
 * The request as the policy is asked with it: Host, the request's cache directives, whether it
 * carried Authorization (RFC 9111 §3.5) and the fields the response varies on, nothing else, so
 * that no other field of a client's (cookies, credentials) is kept in a stored policy.
 */
export function policyRequest(target: FlowTarget, h: HeaderMap, vary: readonly string[]): CachePolicy.HttpRequest {
  const headers: CachePolicy.Headers = { host: target.host };
  if (h['cache-control'] !== undefined) headers['cache-control'] = h['cache-control'];
  if (h.pragma !== undefined) headers.pragma = h.pragma;
  if (h.authorization !== undefined) headers.authorization = '[present]';
  // The library reads a request's Accept-Ranges when it chooses validators (weak ones are then left out).
  if (h['accept-ranges'] !== undefined) headers['accept-ranges'] = h['accept-ranges'];
  for (const n of vary) if (h[n] !== undefined) headers[n] = headerText(h[n]);
  return { url: target.url, method: 'GET', headers };
}

/**
 * The range of a stored part that answers the request (RFC 9111 §3.3: "the request is partial and
 * specifies a range wholly within the incomplete response"): a GET with one byte range, no
 * validator conditions and an If-Range, if any, that matches; undefined otherwise.
 */
export function partRange(obj: CachedObject, method: string, h: HeaderMap): PartRange | undefined {
  const part = obj.part;
  const range = h.range;
  if (!part || method !== 'GET' || typeof range !== 'string') return undefined;
  if (h['if-none-match'] !== undefined || h['if-modified-since'] !== undefined || h['if-match'] !== undefined || h['if-unmodified-since'] !== undefined)
    return undefined;
  if (h['if-range'] !== undefined && !ifRangeMatches(headerText(h['if-range']), obj.etag, obj.header('last-modified'))) return undefined;
  let start: number;
  let end: number;
  if (part.length < 0) {
    const m = /^bytes=(\d+)-(\d+)$/.exec(range);
    if (!m) return undefined;
    [start, end] = [Number(m[1]), Number(m[2])];
  } else {
    const r = parseRange(range, part.length);
    if (r.kind !== 'range') return undefined;
    ({ start, end } = r);
  }
  if (start < part.start || end > part.end || end < start) return undefined;
  return { start, end, length: part.length };
}

/** How to store a response: its policy, the Vary field names, the variant key and the expected body length. */
export interface StoreDecision {
  readonly policy: CachePolicy;
  readonly names: string[];
  readonly variant: string;
  readonly length: number | undefined;
}

/** Builds the policy of a received response (the store's CachePolicy class, which records the time of receipt). */
export type PolicyFactory = (req: CachePolicy.HttpRequest, res: CachePolicy.HttpResponse) => CachePolicy;

/**
 * Whether a full response from the origin is stored (RFC 9111 §3), and how; undefined when it
 * must not be. `h` are the request's fields, `rh` the response's end-to-end fields (kept by the
 * policy as they are).
 */
export function decideStorage(
  method: string,
  target: FlowTarget,
  h: HeaderMap,
  status: number,
  rh: Record<string, string | string[]>,
  maxObjectBytes: number,
  newPolicy: PolicyFactory,
): StoreDecision | undefined {
  if (method !== 'GET' || status === 304) return undefined;
  const names = varyNames(rh.vary);
  // RFC 9111 §4.1: "A stored response with a Vary header field value containing a member "*"
  // always fails to match", so it is not worth storing.
  if (names.includes('*')) return undefined;
  // Set-Cookie does not prevent storing (RFC 9111 §7.3); the policy leaves it out of the stored
  // response (entry.ts says why), so a hit never replays another user's cookie.
  let length = rh['content-length'] === undefined ? undefined : Number(headerText(rh['content-length']));
  if (length !== undefined && (!Number.isFinite(length) || length > maxObjectBytes)) return undefined;
  // RFC 9111 §3.3: a 206 may be stored by a cache that supports Range; single-part ones (one
  // Content-Range) are stored and used only for Range requests they cover (see partRange).
  if (status === 206) {
    const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(headerText(rh['content-range']) ?? '');
    const n = m ? Number(m[2]) - Number(m[1]) + 1 : 0;
    if (!m || n <= 0 || (length !== undefined && length !== n) || (m[3] !== '*' && Number(m[2]) >= Number(m[3]))) return undefined;
    length = n;
  } else if (rh['content-range'] !== undefined) return undefined;
  const policy = newPolicy(policyRequest(target, h, names), { status, headers: rh as CachePolicy.Headers });
  if (!policy.storable()) return undefined;
  return { policy, names, variant: variantKey(names, h), length };
}

/**
 * Whether the answer to a background revalidation (RFC 5861 §3) replaces the stored response: a
 * full response stored as decideStorage would store it for a request without fields of its own,
 * except a 5xx, a part or a response that varies (no client request to select the variant by).
 */
export function decideBackgroundStorage(
  target: FlowTarget,
  status: number,
  rh: Record<string, string | string[]>,
  maxObjectBytes: number,
  newPolicy: PolicyFactory,
): StoreDecision | undefined {
  if (status >= 500 || status === 206) return undefined;
  const d = decideStorage('GET', target, NO_FIELDS, status, rh, maxObjectBytes, newPolicy);
  return d && d.names.length === 0 ? d : undefined;
}

const NO_FIELDS: HeaderMap = Object.freeze({});

/** What the origin's answer to a revalidation means for the stored response. */
export type RevalidatedDecision =
  /** A 304 that selects the stored response (RFC 9111 §4.3.4): serve it with this updated policy. */
  | { readonly kind: 'refresh'; readonly policy: CachePolicy }
  /** A 304 that does not select it: fetch the full response. */
  | { readonly kind: 'fetch' }
  /** An error the stored response may stand in for (RFC 5861 §4). */
  | { readonly kind: 'stale-if-error' }
  /** A full response: deliver it (storing it as decideStorage says). */
  | { readonly kind: 'replace' };

const FETCH_AFTER_304: RevalidatedDecision = { kind: 'fetch' };
const STALE_IF_ERROR: RevalidatedDecision = { kind: 'stale-if-error' };
const REPLACE: RevalidatedDecision = { kind: 'replace' };

/** Decides on the origin's answer (`status`, end-to-end fields `rh`) to the revalidation `request` of `obj`, at `now`. */
export function decideRevalidated(
  obj: CachedObject,
  request: CachePolicy.HttpRequest,
  status: number,
  rh: Record<string, string | string[]>,
  now: number,
): RevalidatedDecision {
  if (status === 304) {
    const r = atTime(obj.policy, now, (policy) => policy.revalidatedPolicy(request, { status, headers: validated(obj, rh) }));
    return !r.modified && r.matches ? { kind: 'refresh', policy: r.policy } : FETCH_AFTER_304;
  }
  if (status >= 500 && staleIfError(obj, request, status, now)) return STALE_IF_ERROR;
  return REPLACE;
}

/**
 * RFC 5861 §4: may the stale `obj` answer because the origin failed (`status` a 5xx, or undefined
 * when it could not be reached)? Asked of the library.
 */
export function staleIfError(obj: CachedObject, request: CachePolicy.HttpRequest, status: number | undefined, now: number): boolean {
  // RFC 9111 §5.2.2.2: with must-revalidate (or proxy-revalidate, §5.2.2.8) a cache that cannot
  // reach the origin MUST answer with an error, whatever stale-if-error says.
  const cc = obj.header('cache-control') ?? '';
  if (/(^|,)\s*(must|proxy)-revalidate\s*(,|$)/i.test(cc)) return false;
  try {
    return atTime(obj.policy, now, (policy) => {
      const r = policy.revalidatedPolicy(request, status === undefined ? undefined : { status, headers: {} });
      return !r.modified && r.policy === policy;
    });
  } catch {
    return false;
  }
}

/**
 * The 304's fields for selecting the stored response (RFC 9111 §4.3.4). Many origins send a 304
 * without ETag or Last-Modified; since our request was conditional on exactly the stored
 * validators, such a 304 is about the stored response, so it is given those validators.
 */
export function validated(obj: CachedObject, rh: Record<string, string | string[]>): CachePolicy.Headers {
  if (rh.etag !== undefined || rh['last-modified'] !== undefined) return rh as CachePolicy.Headers;
  const h: CachePolicy.Headers = { ...rh };
  const etag = obj.etag;
  const lm = obj.header('last-modified');
  if (etag) h.etag = etag;
  else if (lm) h['last-modified'] = lm;
  return h;
}

/** A policy of entry.ts's class, whose `now()` (the library's documented clock) answers `evaluatedAt` when it is set. */
type ClockedPolicy = CachePolicy & { evaluatedAt: number };

/**
 * Runs `evaluate` on the stored policy with its clock reading `now`, and sets the clock back
 * after. A field of the policy rather than a view made with Object.create: a view per evaluation
 * would turn every stored policy into a prototype and give the library's code a new object shape
 * each time.
 */
function atTime<T>(policy: CachePolicy, now: number, evaluate: (policy: CachePolicy) => T): T {
  const p = policy as ClockedPolicy;
  p.evaluatedAt = now;
  try {
    return evaluate(p);
  } finally {
    p.evaluatedAt = -1;
  }
}

function pickValidators(h: CachePolicy.Headers): Validators {
  const v: Validators = {};
  const inm = h['if-none-match'];
  const ims = h['if-modified-since'];
  if (typeof inm === 'string') v['if-none-match'] = inm;
  if (typeof ims === 'string') v['if-modified-since'] = ims;
  return v;
}

function headerText(v: string | string[]): string;
function headerText(v: string | string[] | undefined): string | undefined;
function headerText(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v.join(', ') : v;
}
