/**
 * Cache statistics: the periodic `cache: "stats"` log line is the shape the CloudWatch metric
 * filters of infra/stacks/monitoring.ts read, the Prometheus counters and Tables see every count
 * after a flush, and the request path itself does no I/O.
 */
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CACHE_OUTCOMES, CacheStats, readCacheReport } from '../../core/cache/stats.js';
import { loadConfig } from '../../core/config.js';
import { createLogger, silentLogger } from '../../core/log.js';
import { Metrics } from '../../core/metrics.js';
import { openLocalStorage } from '../../core/storage/local/index.js';
import type { Storage } from '../../core/storage/ports.js';
import { LOG_FIELDS } from '../../infra/stacks/monitoring.js';
import { tempDir } from '../support/tmp.js';

let dir: Awaited<ReturnType<typeof tempDir>>;
let storage: Storage;

beforeAll(async () => {
  dir = await tempDir('tomlinson-stats-');
  storage = await openLocalStorage(loadConfig({ TOMLINSON_DATA_DIR: dir.path }), silentLogger, { purgeIntervalMs: 0 });
});

afterAll(async () => {
  await storage.close();
  await dir.remove();
});

function capture(): { log: ReturnType<typeof createLogger>; lines: () => Record<string, unknown>[] } {
  const out = new PassThrough();
  const chunks: string[] = [];
  out.on('data', (d: Buffer) => chunks.push(d.toString()));
  const log = createLogger({ level: 'info', destination: out, pretty: false });
  return {
    log,
    lines: () =>
      chunks
        .join('')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

describe('CacheStats', () => {
  it('counts the outcomes the monitoring stack expects', () => {
    expect([...CACHE_OUTCOMES].sort()).toEqual([...LOG_FIELDS.cache].sort());
  });

  it('logs one cache: "stats" line per interval with a number for every outcome the metric filters sum', async () => {
    let now = 1_000_000;
    const { log, lines } = capture();
    const metrics = new Metrics({ defaults: false });
    const stats = new CacheStats(storage.tables, metrics, log, { flushMs: 0, logMs: 60_000, now: () => now });
    for (let i = 0; i < 7; i++) stats.record('hit', 1000, 0);
    stats.record('miss', 0, 500);
    stats.record('revalidated', 1000, 0);
    // Nothing reaches the Prometheus counters or the log from the request path itself.
    expect(await metrics.text()).not.toMatch(/tomlinson_cache_requests_total\{outcome="hit"\} [1-9]/);
    now += 60_000;
    stats.logInterval();
    // An interval without requests writes no line.
    now += 60_000;
    stats.logInterval();
    await new Promise((r) => setImmediate(r));
    const got = lines().filter((l) => l.cache !== undefined);
    expect(got).toHaveLength(1);
    const line = got[0];
    // The filter pattern is { $.cache = "stats" }; each metric's value is $.<outcome>.
    expect(line.cache).toBe('stats');
    for (const o of LOG_FIELDS.cache) expect(typeof line[o], o).toBe('number');
    expect(line).toMatchObject({ hit: 7, miss: 1, revalidated: 1, stale: 0, bypass: 0, requests: 9, bytesFromCache: 8000, bytesFromOrigin: 500, seconds: 60 });
    await stats.close();
  });

  it('a flush brings every count to the Prometheus counters and the shared Tables item', async () => {
    const metrics = new Metrics({ defaults: false });
    const stats = new CacheStats(storage.tables, metrics, silentLogger, { flushMs: 0, logMs: 0 });
    const before = await readCacheReport(storage.tables);
    for (let i = 0; i < 5; i++) stats.record('hit', 100, 0);
    stats.record('bypass', 0, 40);
    await stats.flush();
    const text = await metrics.text();
    expect(text).toMatch(/tomlinson_cache_requests_total\{outcome="hit"\} 5\b/);
    expect(text).toMatch(/tomlinson_cache_requests_total\{outcome="bypass"\} 1\b/);
    expect(text).toMatch(/tomlinson_cache_bytes_total\{source="cache"\} 500\b/);
    expect(text).toMatch(/tomlinson_cache_bytes_total\{source="origin"\} 40\b/);
    const after = await readCacheReport(storage.tables);
    expect(after.hits - before.hits).toBe(5);
    expect(after.bypass - before.bypass).toBe(1);
    expect(after.requests - before.requests).toBe(6);
    await stats.close();
  });
});
