/**
 * Cache statistics: counted in process (and in the Prometheus counters of core/metrics.ts) on the
 * request path, added to one Tables item about once a second so that `cache stats` in the admin CLI
 * sees the totals of every proxy task.
 */
import type { Counter } from 'prom-client';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import type { Tables } from '../storage/ports.js';
import { STATS_PK } from './store.js';

/** How one proxied request was answered (RFC 9211 vocabulary, folded). */
export type CacheOutcome = 'hit' | 'miss' | 'revalidated' | 'stale' | 'bypass';

/** The counters kept in Tables. */
export interface CacheCounters {
  requests: number;
  hits: number;
  misses: number;
  revalidations: number;
  stale: number;
  bypass: number;
  bytesFromCache: number;
  bytesFromOrigin: number;
}

const ZERO: CacheCounters = { requests: 0, hits: 0, misses: 0, revalidations: 0, stale: 0, bypass: 0, bytesFromCache: 0, bytesFromOrigin: 0 };
const FIELD: Record<CacheOutcome, keyof CacheCounters> = { hit: 'hits', miss: 'misses', revalidated: 'revalidations', stale: 'stale', bypass: 'bypass' };

/** Request and byte counters with a periodic flush to Tables. */
export class CacheStats {
  private pending: CacheCounters = { ...ZERO };
  private dirty = false;
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;
  private readonly outcome: Record<CacheOutcome, Counter>;
  private readonly fromCache: Counter;
  private readonly fromOrigin: Counter;

  constructor(
    private readonly tables: Tables,
    metrics: Metrics,
    private readonly log: Logger,
    /** Flush interval. @default 1000 */
    flushMs = 1000,
  ) {
    const c = metrics.cacheRequests;
    this.outcome = {
      hit: c.labels({ outcome: 'hit' }) as unknown as Counter,
      miss: c.labels({ outcome: 'miss' }) as unknown as Counter,
      revalidated: c.labels({ outcome: 'revalidated' }) as unknown as Counter,
      stale: c.labels({ outcome: 'stale' }) as unknown as Counter,
      bypass: c.labels({ outcome: 'bypass' }) as unknown as Counter,
    };
    this.fromCache = metrics.cacheBytes.labels({ source: 'cache' }) as unknown as Counter;
    this.fromOrigin = metrics.cacheBytes.labels({ source: 'origin' }) as unknown as Counter;
    if (flushMs > 0) {
      this.timer = setInterval(() => void this.flush(), flushMs);
      this.timer.unref();
    }
  }

  /** Counts one request and the body bytes it sent, by where they came from. */
  record(outcome: CacheOutcome, bytesFromCache: number, bytesFromOrigin: number): void {
    const p = this.pending;
    p.requests++;
    p[FIELD[outcome]]++;
    p.bytesFromCache += bytesFromCache;
    p.bytesFromOrigin += bytesFromOrigin;
    this.dirty = true;
    this.outcome[outcome].inc();
    if (bytesFromCache) this.fromCache.inc(bytesFromCache);
    if (bytesFromOrigin) this.fromOrigin.inc(bytesFromOrigin);
  }

  /** Adds what was counted since the last flush to the shared Tables item. */
  async flush(): Promise<void> {
    if (this.flushing) await this.flushing;
    if (!this.dirty) return;
    const add = this.pending as unknown as Record<string, number>;
    this.pending = { ...ZERO };
    this.dirty = false;
    this.flushing = this.tables
      .update({ pk: STATS_PK, sk: 'COUNTERS' }, { add })
      .then(() => undefined)
      .catch((e: unknown) => {
        this.log.warn({ err: e }, 'cache statistics not saved; will retry');
        for (const [k, v] of Object.entries(add)) (this.pending as unknown as Record<string, number>)[k] += v;
        this.dirty = true;
      })
      .finally(() => {
        this.flushing = undefined;
      });
    await this.flushing;
  }

  /** Stops the timer after a last flush. */
  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.flush();
  }
}

/** The totals of every proxy task as kept in Tables, with the hit ratio and traffic saved. */
export interface CacheReport extends CacheCounters {
  /** (hits + revalidations + stale) / requests; 0 when there were none. */
  hitRatio: number;
  /** Body bytes that did not cross the access link because the cache answered. */
  savedBytes: number;
  /** Share of body bytes served from cache. */
  byteHitRatio: number;
  storedBytes: number;
  storedObjects: number;
}

/** Reads the shared statistics (for `cache stats` and the health endpoint). */
export async function readCacheReport(tables: Tables): Promise<CacheReport> {
  const [counters, store] = await Promise.all([tables.get({ pk: STATS_PK, sk: 'COUNTERS' }), tables.get({ pk: STATS_PK, sk: 'STORE' })]);
  const c = { ...ZERO };
  for (const k of Object.keys(ZERO) as (keyof CacheCounters)[]) c[k] = Number(counters?.[k] ?? 0);
  const served = c.bytesFromCache + c.bytesFromOrigin;
  return {
    ...c,
    hitRatio: c.requests ? (c.hits + c.revalidations + c.stale) / c.requests : 0,
    savedBytes: c.bytesFromCache,
    byteHitRatio: served ? c.bytesFromCache / served : 0,
    storedBytes: Number(store?.bytes ?? 0),
    storedObjects: Number(store?.objects ?? 0),
  };
}
