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
  private headerSecond = -1;
  private headerCache: Record<string, string | string[]> | undefined;

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
    this.policy = policy;
    this.headerSecond = -1;
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
    const v = (this.policy as unknown as { _resHeaders: HeaderMap })._resHeaders[name];
    return Array.isArray(v) ? v.join(', ') : v;
  }

  /** HTTP status of the stored response. */
  get status(): number {
    return (this.policy as unknown as { _status: number })._status;
  }

  /**
   * Response headers for serving this entry now (hop-by-hop removed, Age and Date updated by the
   * library; RFC 9111 §5.1); the object is reused within one second, so callers must not mutate it.
   */
  responseHeaders(nowMs: number): Record<string, string | string[]> {
    const second = Math.floor(nowMs / 1000);
    if (second !== this.headerSecond || !this.headerCache) {
      const h = this.policy.responseHeaders() as Record<string, string | string[]>;
      delete h['content-length'];
      this.headerCache = h;
      this.headerSecond = second;
    }
    return this.headerCache;
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
