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

/**
 * Builds a CachePolicy subclass with an injectable clock (the library's documented override
 * point) and a cap on heuristic freshness, which the library does not have: RFC 9111 §4.2.2 "a
 * typical setting of this fraction might be 10%"; caches commonly bound the result.
 */
export function policyClass(options: PolicyOptions = {}): PolicyClass {
  const now = options.now ?? Date.now;
  const cap = options.heuristicCapSeconds ?? 86400;
  class TomlinsonPolicy extends CachePolicy {
    now(): number {
      return now();
    }
    override maxAge(): number {
      const m = super.maxAge();
      if (m > cap && !(this as unknown as { _hasExplicitExpiration(): boolean })._hasExplicitExpiration()) return cap;
      return m;
    }
  }
  return TomlinsonPolicy as unknown as PolicyClass;
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
  /** Epoch ms until which the entry is fresh for a request that sets no conditions (fast path). */
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
    // A 304 usually changes nothing but Date, which is not served as stored (see servedFields):
    // the field list made for the old policy is then still the one the new policy would give.
    if (!sameExceptDate(resHeaders(this.policy), resHeaders(policy))) this.fieldLines = undefined;
    this.policy = policy;
    this.hitSecond = -1;
    this.computeFreshness();
  }

  private computeFreshness(): void {
    const p = this.policy;
    const rescc = (p as unknown as { _rescc: Record<string, unknown> })._rescc;
    // must-revalidate and friends go through the library's full evaluation every time.
    if (rescc['must-revalidate'] || rescc['no-cache'] || !p.storable()) {
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
   * Response fields for serving this entry now (hop-by-hop removed, Age and Date set by the
   * library; RFC 9111 §5.1), without Content-Length.
   */
  responseHeaders(): Record<string, string | string[]> {
    const h = this.policy.responseHeaders() as Record<string, string | string[]>;
    delete h['content-length'];
    return h;
  }

  /**
   * Appends what responseHeaders() gives, as name/value pairs, to `out`. The library's fields
   * apart from Age and Date depend on the stored fields only, so they are listed once; Age (the
   * library's age()) and Date (now, as the library sets it) are added per response. Past a day of
   * age the library may add Warning 113, so its fields are then taken whole each time.
   */
  servedFields(nowMs: number, out: string[]): void {
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
    out.push('age', String(Math.round(age)), 'date', httpDate(nowMs));
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
