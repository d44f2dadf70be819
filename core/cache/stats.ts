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

/**
 * How one proxied request was answered (RFC 9211 vocabulary, folded), or that the proxy refused it
 * (client address, authentication, origin address, connection caps, bad request) or that the origin
 * failed (502, 504): those two are counted apart from misses.
 */
export type CacheOutcome = 'hit' | 'miss' | 'revalidated' | 'stale' | 'bypass' | 'refused' | 'failed';

/** The counters kept in Tables. */
export interface CacheCounters {
  requests: number;
  hits: number;
  misses: number;
  revalidations: number;
  stale: number;
  bypass: number;
  refused: number;
  failed: number;
  bytesFromCache: number;
  bytesFromOrigin: number;
}

const ZERO: CacheCounters = {
  requests: 0,
  hits: 0,
  misses: 0,
  revalidations: 0,
  stale: 0,
  bypass: 0,
  refused: 0,
  failed: 0,
  bytesFromCache: 0,
  bytesFromOrigin: 0,
};
const FIELD: Record<CacheOutcome, keyof CacheCounters> = {
  hit: 'hits',
  miss: 'misses',
  revalidated: 'revalidations',
  stale: 'stale',
  bypass: 'bypass',
  refused: 'refused',
  failed: 'failed',
};

/** The outcomes in the order the periodic log line lists them (the metric filters' vocabulary). */
export const CACHE_OUTCOMES: readonly CacheOutcome[] = ['hit', 'miss', 'revalidated', 'stale', 'bypass', 'refused', 'failed'];

/** Options of CacheStats. */
export interface CacheStatsOptions {
  /** How often counts reach Tables and the Prometheus counters, in ms (0: only on flush()). @default 1000 */
  flushMs?: number;
  /** How often the `cache: "stats"` log line is written, in ms (0: never). @default 60000 */
  logMs?: number;
  /** Clock, epoch ms. @default Date.now */
  now?: () => number;
}

/**
 * Request and byte counters. The request path only adds to plain numbers: Tables, the Prometheus
 * counters and the log see them from a timer (prom-client hashes the label set on every `inc`,
 * which at tens of thousands of hits a second is measurable), so /metrics lags by up to `flushMs`.
 *
 * Every `logMs` one info line `{"cache":"stats","hit":…,"miss":…,…}` carries the counts of the
 * interval: the CloudWatch metric filters of infra/stacks/monitoring.ts sum those fields into the
 * hit-ratio metrics, where a line per request would cost a log write per hit.
 */
export class CacheStats {
  private pending: CacheCounters = { ...ZERO };
  private dirty = false;
  /** Counted on the request path and not yet added to the Prometheus counters. */
  private prom: CacheCounters = { ...ZERO };
  /** Counted since the last stats log line. */
  private interval: CacheCounters = { ...ZERO };
  private intervalStart: number;
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;
  private readonly outcome: Record<CacheOutcome, Counter>;
  private readonly fromCache: Counter;
  private readonly fromOrigin: Counter;
  private readonly logMs: number;
  private readonly now: () => number;

  constructor(
    private readonly tables: Tables,
    metrics: Metrics,
    private readonly log: Logger,
    options: CacheStatsOptions = {},
  ) {
    const c = metrics.cacheRequests;
    this.outcome = {
      hit: c.labels({ outcome: 'hit' }) as unknown as Counter,
      miss: c.labels({ outcome: 'miss' }) as unknown as Counter,
      revalidated: c.labels({ outcome: 'revalidated' }) as unknown as Counter,
      stale: c.labels({ outcome: 'stale' }) as unknown as Counter,
      bypass: c.labels({ outcome: 'bypass' }) as unknown as Counter,
      refused: c.labels({ outcome: 'refused' }) as unknown as Counter,
      failed: c.labels({ outcome: 'failed' }) as unknown as Counter,
    };
    this.fromCache = metrics.cacheBytes.labels({ source: 'cache' }) as unknown as Counter;
    this.fromOrigin = metrics.cacheBytes.labels({ source: 'origin' }) as unknown as Counter;
    this.now = options.now ?? Date.now;
    this.logMs = options.logMs ?? 60_000;
    this.intervalStart = this.now();
    const flushMs = options.flushMs ?? 1000;
    if (flushMs > 0) {
      this.timer = setInterval(() => {
        void this.flush();
        if (this.logMs > 0 && this.now() - this.intervalStart >= this.logMs) this.logInterval();
      }, flushMs);
      this.timer.unref();
    }
  }

  /** Counts one request and the body bytes it sent, by where they came from. */
  record(outcome: CacheOutcome, bytesFromCache: number, bytesFromOrigin: number): void {
    const f = FIELD[outcome];
    add(this.pending, f, bytesFromCache, bytesFromOrigin);
    add(this.prom, f, bytesFromCache, bytesFromOrigin);
    add(this.interval, f, bytesFromCache, bytesFromOrigin);
    this.dirty = true;
  }

  /** Adds what was counted since the last flush to the Prometheus counters and the shared Tables item. */
  async flush(): Promise<void> {
    this.flushProm();
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

  private flushProm(): void {
    const p = this.prom;
    if (p.requests === 0) return;
    this.prom = { ...ZERO };
    for (const o of CACHE_OUTCOMES) if (p[FIELD[o]]) this.outcome[o].inc(p[FIELD[o]]);
    if (p.bytesFromCache) this.fromCache.inc(p.bytesFromCache);
    if (p.bytesFromOrigin) this.fromOrigin.inc(p.bytesFromOrigin);
  }

  /** Writes the interval's `cache: "stats"` line (when anything was counted) and starts a new interval. */
  logInterval(): void {
    const c = this.interval;
    const now = this.now();
    const seconds = Math.max(0, Math.round((now - this.intervalStart) / 1000));
    this.interval = { ...ZERO };
    this.intervalStart = now;
    if (c.requests === 0) return;
    const line: Record<string, string | number> = { cache: 'stats', seconds, requests: c.requests };
    for (const o of CACHE_OUTCOMES) line[o] = c[FIELD[o]];
    line.bytesFromCache = c.bytesFromCache;
    line.bytesFromOrigin = c.bytesFromOrigin;
    this.log.info(line, 'cache statistics');
  }

  /** Stops the timer after a last flush and a last stats line. */
  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    if (this.logMs > 0) this.logInterval();
    await this.flush();
  }
}

function add(p: CacheCounters, f: keyof CacheCounters, fromCache: number, fromOrigin: number): void {
  p.requests++;
  p[f]++;
  p.bytesFromCache += fromCache;
  p.bytesFromOrigin += fromOrigin;
}

/** The totals of every proxy task as kept in Tables, with the hit ratio and traffic saved. */
export interface CacheReport extends CacheCounters {
  /** (hits + revalidations + stale) / (requests - refused): refused requests never reached the cache; 0 when there were none. */
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
    hitRatio: c.requests - c.refused ? (c.hits + c.revalidations + c.stale) / (c.requests - c.refused) : 0,
    savedBytes: c.bytesFromCache,
    byteHitRatio: served ? c.bytesFromCache / served : 0,
    storedBytes: Number(store?.bytes ?? 0),
    storedObjects: Number(store?.objects ?? 0),
  };
}
