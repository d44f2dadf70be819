/**
 * A stored response: its CachePolicy (http-cache-semantics decides every RFC 9111 freshness and
 * storage question; we never re-derive them) plus where its body lives, serialised with a version.
 */
import CachePolicy from 'http-cache-semantics';
import type { HeaderMap } from './keys.js';

/** Version of the serialised entry; a record of another version is treated as absent. */
export const ENTRY_VERSION = 1;

/** The CachePolicy class with our clock and the cap on heuristic freshness baked in. */
export type PolicyClass = typeof CachePolicy;

/** Options for policyClass. */
export interface PolicyOptions {
  /** Clock in epoch milliseconds (tests inject one). @default Date.now */
  now?: () => number;
  /** Upper bound on heuristic freshness from Last-Modified, in seconds. @default 86400 */
  heuristicCapSeconds?: number;
}

/** The library's internals that the subclass reads or corrects (see policyClass). */
interface Internals {
  _rescc: Record<string, string | boolean>;
  _reqcc: Record<string, string | boolean>;
  _resHeaders: Record<string, string | string[] | undefined>;
  _responseTime: number;
  _isShared: boolean;
  _noAuthorization: boolean;
  _immutableMinTtl: number;
  _status: number;
  _hasExplicitExpiration(): boolean;
  _allowsStoringAuthenticated(): boolean;
  _evaluateRequestMissResult(req: CachePolicy.HttpRequest): ReturnType<CachePolicy['evaluateRequest']>;
}

/** Our name for proxy-revalidate in `_rescc`, so that the library's maxAge() does not treat it as "always stale". */
const PROXY_REVALIDATE = '~proxy-revalidate';

/**
 * Builds a CachePolicy subclass with an injectable clock (the library's documented override
 * point) and a cap on heuristic freshness, which the library does not have: RFC 9111 §4.2.2 "a
 * typical setting of this fraction might be 10%"; caches commonly bound the result.
 *
 * It also corrects the library (4.3) where it departs from RFC 9111, each override as narrow as
 * the library's structure allows:
 * - directives are parsed case-insensitively, with quoted arguments (§5.2; the library keeps the
 *   case as sent and splits `private="a, b"` at the comma);
 * - qualified private and no-cache (§5.2.2.7, §5.2.2.4) leave the named fields out of the stored
 *   response and allow the rest to be stored and reused (the library treats them as unqualified);
 * - Set-Cookie is never stored (see the constructor), so a response carrying it is stored without
 *   it instead of not at all (the library requires `public`, then replays the cookie);
 * - Age must be a non-negative integer, the first member of a list (§5.1; the library uses parseInt);
 * - Expires and Date must be HTTP-dates (§5.3, RFC 9110 §5.6.7; the library uses Date.parse);
 * - must-revalidate and proxy-revalidate only constrain the use of a stale response (§5.2.2.2,
 *   §5.2.2.8; the library always revalidates with the one and never stores freshness with the other);
 * - a 206 is understood (§3.3; the proxy stores single-part ones, see CachedObject.part).
 */
export function policyClass(options: PolicyOptions = {}): PolicyClass {
  const now = options.now ?? Date.now;
  const cap = options.heuristicCapSeconds ?? 86400;
  class TomlinsonPolicy extends CachePolicy {
    constructor(req: CachePolicy.HttpRequest, res: CachePolicy.HttpResponse, opts?: CachePolicy.Options) {
      super(req, res, opts);
      const self = this as unknown as Internals;
      // Also after fromObject (req undefined): records written before these rules are re-read by them.
      const headers = self._resHeaders;
      const cc = parseCacheControl(headers['cache-control']);
      let drop: string[] | undefined;
      // RFC 9111 §5.2.2.7: "a shared cache MUST NOT store the listed header fields ... but MAY
      // store the remainder of the response message without those fields".
      if (typeof cc.private === 'string' && self._isShared) {
        drop = fieldNames(cc.private);
        delete cc.private;
      }
      // §5.2.2.4: the listed fields "MUST NOT be used to satisfy a subsequent request without
      // successful revalidation ... while still allowing caching of the rest of the response".
      if (typeof cc['no-cache'] === 'string') {
        drop = [...(drop ?? []), ...fieldNames(cc['no-cache'])];
        delete cc['no-cache'];
      }
      // Set-Cookie: RFC 9111 §7.3 says it "does not inhibit caching; a cacheable response with a
      // Set-Cookie header field can be (and often is) used to satisfy subsequent requests to
      // caches". Replaying one user's cookie to every other user is the leak a shared cache must
      // not make, so the stored response is the rest of it, as if the origin had sent
      // private="set-cookie" (§5.2.2.7 above); the client whose request fetched it gets its cookie.
      // This departs from §3.1 ("Caches MUST include all received response header fields") for
      // this one field only, as Squid does (it removes Set-Cookie from every hit).
      if (headers['set-cookie'] !== undefined) (drop ??= []).push('set-cookie');
      if (drop) {
        const kept: Record<string, string | string[] | undefined> = {};
        for (const k in headers) if (!drop.includes(k)) kept[k] = headers[k];
        self._resHeaders = kept;
      }
      if (self._isShared && cc['proxy-revalidate']) {
        delete cc['proxy-revalidate'];
        cc[PROXY_REVALIDATE] = true;
      }
      // The library's reading of Pragma for a response without Cache-Control, case-insensitive.
      if (headers['cache-control'] === undefined && /no-cache/i.test(String(headers.pragma ?? ''))) cc['no-cache'] = true;
      self._rescc = cc;
      if (req) self._reqcc = parseCacheControl(req.headers['cache-control']);
    }

    /** When not negative, the time (epoch ms) the policy is being evaluated at instead of the clock's (set by flow.ts for one call). */
    evaluatedAt = -1;

    now(): number {
      return this.evaluatedAt >= 0 ? this.evaluatedAt : now();
    }

    override maxAge(): number {
      const self = this as unknown as Internals;
      const cc = self._rescc;
      const expires = self._resHeaders.expires;
      // RFC 9111 §5.3: "A cache recipient MUST interpret invalid date formats, especially the
      // value "0", as representing a time in the past (i.e., "already expired")", an empty or
      // listed value included; the library parses with Date.parse, which takes many non-HTTP dates.
      if (expires !== undefined && !cc['max-age'] && !(self._isShared && cc['s-maxage'])) {
        if (!this.storable() || cc['no-cache'] || self._resHeaders.vary === '*') return 0;
        const t = parseHttpDate(Array.isArray(expires) ? expires.join(', ') : expires, this.now());
        const d = this.date();
        if (Number.isNaN(t) || t < d) return 0;
        // The library's own expression for this branch, its immutable minimum (in ms) included.
        return Math.max(cc.immutable ? self._immutableMinTtl : 0, (t - d) / 1000);
      }
      const m = super.maxAge();
      if (m > cap && !self._hasExplicitExpiration()) return cap;
      return m;
    }

    /** RFC 9110 §6.6.1: a Date that is not an HTTP-date is treated as absent (the time received). */
    override date(): number {
      const self = this as unknown as Internals;
      const v = self._resHeaders.date;
      const t = typeof v === 'string' ? parseHttpDate(v, this.now()) : NaN;
      return Number.isNaN(t) ? self._responseTime : t;
    }

    /**
     * RFC 9111 §5.1: "Age = delta-seconds"; of a list, "a cache ... SHOULD use the first member of
     * the field value, discarding subsequent ones"; an invalid value "(e.g., it contains something
     * other than a non-negative integer)" is ignored; §1.2.2: one too large counts as 2^31.
     */
    _ageValue(): number {
      const v = (this as unknown as Internals)._resHeaders.age;
      if (v === undefined) return 0;
      const text = Array.isArray(v) ? v[0] : v;
      const comma = text.indexOf(',');
      const first = (comma < 0 ? text : text.slice(0, comma)).trim();
      if (!/^\d+$/.test(first)) return 0;
      return first.length > 10 ? 2147483648 : Math.min(Number(first), 2147483648);
    }

    /** The library does not understand 206; it is evaluated as the 200 it is part of (RFC 9110 §15.3.7: heuristically cacheable too). */
    override storable(): boolean {
      const self = this as unknown as Internals;
      if (self._status !== 206) return super.storable();
      self._status = 200;
      try {
        return super.storable();
      } finally {
        self._status = 206;
      }
    }

    override evaluateRequest(req: CachePolicy.HttpRequest): ReturnType<CachePolicy['evaluateRequest']> {
      const self = this as unknown as Internals;
      const h = req.headers;
      const rcc = headerText(h['cache-control']);
      const pragma = headerText(h.pragma);
      // RFC 9111 §5.2: directive names are case-insensitive (the library matches lower case only).
      if ((rcc !== undefined && /[A-Z"]/.test(rcc)) || (pragma !== undefined && /[A-Z]/.test(pragma))) {
        const copy = { ...h };
        if (rcc !== undefined) copy['cache-control'] = formatCacheControl(parseCacheControl(rcc));
        if (pragma !== undefined) copy.pragma = pragma.toLowerCase();
        req = { ...req, headers: copy };
      }
      const cc = self._rescc;
      if (!cc['must-revalidate'] && !cc[PROXY_REVALIDATE]) return super.evaluateRequest(req);
      // §5.2.2.2: must-revalidate governs stale use only; "a cache MUST NOT use the response to
      // satisfy subsequent requests without successful validation" once stale (max-stale and
      // stale-while-revalidate included). A fresh one is evaluated as without the directive, with
      // the storing decision (§3.5, where must-revalidate counts) kept as it was.
      if (this.stale()) return self._evaluateRequestMissResult(req);
      const view = Object.create(this) as Internals;
      const rest = { ...cc };
      delete rest['must-revalidate'];
      view._rescc = rest;
      view._noAuthorization = self._noAuthorization || self._allowsStoringAuthenticated();
      const r = CachePolicy.prototype.evaluateRequest.call(view, req);
      if (r.revalidation && !r.revalidation.synchronous) return self._evaluateRequestMissResult(req);
      return r;
    }
  }
  return TomlinsonPolicy as unknown as PolicyClass;
}

/**
 * Cache-Control directives by lower-cased name (RFC 9111 §5.2: "Cache directives are
 * case-insensitive"), arguments as token or unquoted quoted-string. A max-age or s-maxage given
 * twice with different values is invalid (§4.2.1) and recorded as "0", which is stale.
 */
export function parseCacheControl(value: string | string[] | undefined): Record<string, string | boolean> {
  const cc: Record<string, string | boolean> = {};
  if (value === undefined) return cc;
  const text = Array.isArray(value) ? value.join(',') : value;
  // Anything after a directive's argument up to the next comma is ignored, as the library does.
  const re = /\s*([^\s,=]+)\s*(?:=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*)))?[^,]*(?:,|$)/y;
  let i = 0;
  while (i < text.length) {
    re.lastIndex = i;
    const m = re.exec(text);
    if (!m || m[0].length === 0) {
      // Not a directive: skip to the next comma.
      const c = text.indexOf(',', i);
      if (c < 0) break;
      i = c + 1;
      continue;
    }
    i = re.lastIndex;
    const name = m[1].toLowerCase();
    const arg = m[2] !== undefined ? m[2].replace(/\\(.)/g, '$1') : m[3];
    const v: string | boolean = arg === undefined ? true : arg;
    if ((name === 'max-age' || name === 's-maxage') && name in cc && cc[name] !== v) cc[name] = '0';
    else cc[name] = v;
  }
  return cc;
}

function formatCacheControl(cc: Record<string, string | boolean>): string {
  const parts: string[] = [];
  for (const k in cc) parts.push(cc[k] === true ? k : `${k}="${String(cc[k]).replace(/["\\]/g, '\\$&')}"`);
  return parts.join(', ');
}

function headerText(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v.join(', ') : v;
}

/** The lower-cased field names of a qualified directive's argument. */
function fieldNames(arg: string): string[] {
  return arg
    .split(',')
    .map((n) => n.trim().toLowerCase())
    .filter((n) => n !== '');
}

const MONTHS: Record<string, number> = { Jan: 0, Feb: 1, Mar: 2, Apr: 3, May: 4, Jun: 5, Jul: 6, Aug: 7, Sep: 8, Oct: 9, Nov: 10, Dec: 11 };
const IMF_FIXDATE = /^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d\d) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) (\d{4}) (\d\d):(\d\d):(\d\d) GMT$/;
const RFC850_DATE =
  /^(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), (\d\d)-(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)-(\d\d) (\d\d):(\d\d):(\d\d) GMT$/;
const ASCTIME_DATE = /^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) ([ \d]\d) (\d\d):(\d\d):(\d\d) (\d{4})$/;

/**
 * An HTTP-date (RFC 9110 §5.6.7: IMF-fixdate or the obsolete rfc850-date and asctime-date, case
 * sensitive) as epoch ms, or NaN for anything else, an impossible date included. A two-digit year
 * more than 50 years ahead of `nowMs` is the last such year in the past, as §5.6.7 requires.
 */
export function parseHttpDate(text: string, nowMs: number = Date.now()): number {
  let day: string, mon: string, year: number, hh: string, mm: string, ss: string;
  let m = IMF_FIXDATE.exec(text);
  if (m) [day, mon, year, hh, mm, ss] = [m[1], m[2], Number(m[3]), m[4], m[5], m[6]];
  else if ((m = RFC850_DATE.exec(text))) {
    [day, mon, hh, mm, ss] = [m[1], m[2], m[4], m[5], m[6]];
    const thisYear = new Date(nowMs).getUTCFullYear();
    year = Math.floor(thisYear / 100) * 100 + Number(m[3]);
    if (year > thisYear + 50) year -= 100;
  } else if ((m = ASCTIME_DATE.exec(text))) [mon, day, hh, mm, ss, year] = [m[1], m[2].trim(), m[3], m[4], m[5], Number(m[6])];
  else return NaN;
  const d = Number(day);
  const month = MONTHS[mon];
  const [h, mi, s] = [Number(hh), Number(mm), Number(ss)];
  // second 60: a leap second (RFC 5322 §3.3 allows it), counted as the next second.
  if (h > 23 || mi > 59 || s > 60 || d < 1) return NaN;
  const t = new Date(0);
  t.setUTCFullYear(year, month, d);
  // 31 Feb and the like roll over into the next month.
  if (t.getUTCDate() !== d) return NaN;
  return t.setUTCHours(h, mi, s, 0);
}

/** The Tables record of one stored variant (attribute `entry`, JSON). */
export interface EntryRecord {
  v: number;
  url: string;
  variant: string;
  vary: string[];
  policy: CachePolicy.CachePolicyObject;
  size: number;
  blobKey: string;
  storedAt: number;
}

/** What a lookup found: one stored variant, with its body in memory when the memory tier has it. */
export class CachedObject {
  /** Body bytes when held by the memory tier; otherwise read from blobs by `blobKey`. */
  body: Buffer | undefined;
  /** Blob key in the object tier ('' until persisted). */
  blobKey: string;
  /** Epoch ms until which the entry is fresh for a request that sets no conditions (the cache flow decides such a hit without asking the policy again, see flow.ts). */
  freshUntil = 0;
  /** Epoch ms of the last LRU touch written to Tables. */
  touchedAt = 0;
  /** Sort key of this entry's LRU index item in Tables ('' when unknown). */
  lruKey = '';
  /** True once the body and record are in the object tier. */
  persisted = false;
  /** Epoch ms when the Tables record was last written (0: never by this process). */
  recordWrittenAt = 0;
  /** True while waiting in the object-tier write queue. */
  queued = false;
  /** Uses served from this process's memory tier, the storing request included (see CacheStore.used). */
  uses = 1;
  /** The proxy's precomputed header list for a full hit, and the second it was made for. */
  hitLines: string[] | undefined;
  hitSecond = -1;
  /** The library's response fields without Age, Date and Content-Length, as a flat name/value list. */
  private fieldLines: string[] | undefined;

  constructor(
    readonly url: string,
    readonly variant: string,
    readonly vary: string[],
    public policy: CachePolicy,
    readonly size: number,
    readonly storedAt: number,
    body: Buffer | undefined,
    blobKey = '',
  ) {
    this.body = body;
    this.blobKey = blobKey;
    this.computeFreshness();
  }

  /** Replaces the policy after a 304 (RFC 9111 §4.3.4) and recomputes freshness. */
  refresh(policy: CachePolicy): void {
    // A 304 usually changes nothing but Date, which is not part of the field list (see
    // servedFields): the list made for the old policy is then still the one the new policy would give.
    if (!sameExceptDate(resHeaders(this.policy), resHeaders(policy))) this.fieldLines = undefined;
    this.policy = policy;
    this.hitSecond = -1;
    this.computeFreshness();
  }

  private computeFreshness(): void {
    const p = this.policy;
    const rescc = (p as unknown as { _rescc: Record<string, unknown> })._rescc;
    // no-cache goes through the library's full evaluation every time; a part (206) is served to
    // Range requests only, which flow.ts decides with the policy.
    if (rescc['no-cache'] || this.status === 206 || !p.storable()) {
      this.freshUntil = 0;
      return;
    }
    const remaining = p.maxAge() - p.age();
    this.freshUntil = remaining > 0 ? (p as unknown as { now(): number }).now() + remaining * 1000 : 0;
  }

  /** The entity tag of the stored response, if any. */
  get etag(): string | undefined {
    return this.header('etag');
  }

  /** One stored response header as a string. */
  header(name: string): string | undefined {
    const v = resHeaders(this.policy)[name];
    return Array.isArray(v) ? v.join(', ') : v;
  }

  /** HTTP status of the stored response. */
  get status(): number {
    return (this.policy as unknown as { _status: number })._status;
  }

  /**
   * The byte range a stored 206 holds (RFC 9110 §14.4 Content-Range `bytes first-last/length`,
   * length '*' when unknown as -1), or undefined for a complete response.
   */
  get part(): { start: number; end: number; length: number } | undefined {
    if (this.status !== 206) return undefined;
    const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(this.header('content-range') ?? '');
    if (!m) return undefined;
    return { start: Number(m[1]), end: Number(m[2]), length: m[3] === '*' ? -1 : Number(m[3]) };
  }

  /** The Date served with this entry: the stored one (RFC 9110 §6.6.1), else the time it was received. */
  private servedDate(): string {
    const d = resHeaders(this.policy).date;
    return typeof d === 'string' ? d : httpDate((this.policy as unknown as { _responseTime: number })._responseTime);
  }

  /**
   * Response fields for serving this entry now (hop-by-hop removed, Age set by the library, RFC
   * 9111 §5.1; the stored Date rather than the library's "now", RFC 9111 §4 serves the stored
   * fields), without Content-Length and Content-Range (the proxy sets both for what it sends).
   */
  responseHeaders(): Record<string, string | string[]> {
    const h = this.policy.responseHeaders() as Record<string, string | string[]>;
    delete h['content-length'];
    delete h['content-range'];
    h.date = this.servedDate();
    return h;
  }

  /**
   * Appends what responseHeaders() gives, as name/value pairs, to `out`. The library's fields
   * apart from Age and Date depend on the stored fields only, so they are listed once; Age (the
   * library's age()) and Date (the stored one, which a 304 may replace) are added per response.
   * Past a day of age the library may add Warning 113, so its fields are then taken whole each
   * time.
   */
  servedFields(out: string[]): void {
    const age = this.policy.age();
    if (age > 86400) {
      pushFields(out, this.responseHeaders());
      return;
    }
    let lines = this.fieldLines;
    if (lines === undefined) {
      const h = this.responseHeaders();
      delete h.age;
      delete h.date;
      lines = pushFields([], h);
      this.fieldLines = lines;
    }
    for (let i = 0; i < lines.length; i++) out.push(lines[i]);
    out.push('age', String(Math.round(age)), 'date', this.servedDate());
  }

  /** The versioned record stored in Tables. */
  toRecord(): EntryRecord {
    return {
      v: ENTRY_VERSION,
      url: this.url,
      variant: this.variant,
      vary: this.vary,
      policy: this.policy.toObject(),
      size: this.size,
      blobKey: this.blobKey,
      storedAt: this.storedAt,
    };
  }

  /** Rebuilds an entry from its record, or undefined for a record of another version. */
  static fromRecord(rec: EntryRecord, Policy: PolicyClass): CachedObject | undefined {
    if (!rec || rec.v !== ENTRY_VERSION) return undefined;
    let policy: CachePolicy;
    try {
      policy = Policy.fromObject(rec.policy);
    } catch {
      return undefined;
    }
    const obj = new CachedObject(rec.url, rec.variant, rec.vary, policy, rec.size, rec.storedAt, undefined, rec.blobKey);
    obj.persisted = true;
    return obj;
  }
}

function resHeaders(p: CachePolicy): HeaderMap {
  return (p as unknown as { _resHeaders: HeaderMap })._resHeaders;
}

/** Same fields and values, Date aside. */
function sameExceptDate(a: HeaderMap, b: HeaderMap): boolean {
  if (a === b) return true;
  let n = 0;
  for (const k in a) {
    if (k === 'date') continue;
    n++;
    const x = a[k];
    const y = b[k];
    if (x === y) continue;
    if (!Array.isArray(x) || !Array.isArray(y) || x.length !== y.length || x.some((v, i) => v !== y[i])) return false;
  }
  for (const k in b) if (k !== 'date') n--;
  return n === 0;
}

/** Appends each field of `h` as name/value pairs (one pair per value of a list). */
function pushFields(out: string[], h: Record<string, string | string[]>): string[] {
  for (const k in h) {
    const v = h[k];
    if (Array.isArray(v)) for (const x of v) out.push(k, x);
    else out.push(k, v);
  }
  return out;
}

let dateSecond = -1;
let dateText = '';

/** The IMF-fixdate of an epoch-ms time (RFC 9110 §5.6.7), made once per second. */
export function httpDate(ms: number): string {
  const s = Math.floor(ms / 1000);
  if (s !== dateSecond) {
    dateSecond = s;
    dateText = new Date(s * 1000).toUTCString();
  }
  return dateText;
}
