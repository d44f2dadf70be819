/**
 * The outbound worker's age report (core/mail/outbound-age.ts) through the Lambda entry: after a
 * batch it writes one CloudWatch embedded metric format line with the age of the oldest message
 * still queued, read from the table's listing, in the namespace, metric and dimension the
 * OutboundQueueAge alarm of the monitoring stack watches.
 */
import { Template } from 'aws-cdk-lib/assertions';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { OUTBOUND_AGE_METRIC } from '../../core/mail/outbound-age.js';
import { OutboundStore } from '../../core/mail/outbound-store.js';
import { Metrics } from '../../core/metrics.js';
import { openLocalStorage } from '../../core/storage/local/index.js';
import type { Storage } from '../../core/storage/ports.js';
import type { JobContext } from '../../core/workers/job.js';
import { outboundHandler } from '../../functions/outbound/handler.js';
import { tempDir } from '../support/tmp.js';
import { cleanOutdirs, testApp } from './support.js';

let dir: { path: string; remove: () => Promise<void> };
let storage: Storage;
const clock = Date.parse('2026-03-01T12:00:00Z');
let ctx: JobContext;

beforeAll(async () => {
  dir = await tempDir('tomlinson-age-');
  const config = loadConfig({ TOMLINSON_DATA_DIR: dir.path });
  storage = await openLocalStorage(config, silentLogger, { now: () => clock, purgeIntervalMs: 0 });
  ctx = { config, storage, log: silentLogger, metrics: new Metrics({ defaults: false }), now: () => new Date(clock) };
});
afterAll(async () => {
  await storage.close();
  await dir.remove();
  cleanOutdirs();
});

const hoursAgo = (h: number) => new Date(clock - h * 3600_000).toISOString();
const job = (id: string, receivedAt: string) => ({
  v: 1 as const,
  id,
  blobKey: `in/${id}.eml`,
  size: 10,
  from: 'a@example.com',
  rcpts: [{ address: `r-${id}@example.net` }],
  receivedAt,
});

/** Runs the outbound Lambda handler on an empty batch and returns the lines it wrote. */
async function batchLines(): Promise<Record<string, unknown>[]> {
  const lines: string[] = [];
  const handler = outboundHandler(
    async () => ctx,
    (l) => lines.push(l),
  );
  expect(await handler({ Records: [] })).toEqual({ batchItemFailures: [] });
  return lines.map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe('outbound age report', () => {
  it('reports 0 when nothing is queued', async () => {
    const [line, more] = await batchLines();
    expect(more).toBeUndefined();
    expect(line![OUTBOUND_AGE_METRIC.name]).toBe(0);
  });

  it('reports the age of the oldest message still undelivered, not of finished ones, after each batch', async () => {
    const store = new OutboundStore(storage.tables);
    await store.init(job('old', hoursAgo(30)), new Date(clock));
    await store.init(job('mid', hoursAgo(7)), new Date(clock));
    await store.init(job('new', hoursAgo(1)), new Date(clock));
    // The oldest was delivered: it leaves the listing.
    await store.finish('old', 'done', hoursAgo(30), new Date(clock));
    const lines = await batchLines();
    expect(lines).toHaveLength(1);
    const emf = lines[0]!;
    expect(emf[OUTBOUND_AGE_METRIC.name]).toBe(7 * 3600);
    expect(emf[OUTBOUND_AGE_METRIC.dimension]).toBe('local');
    const aws = emf._aws as {
      Timestamp: number;
      CloudWatchMetrics: { Namespace: string; Dimensions: string[][]; Metrics: { Name: string; Unit: string }[] }[];
    };
    expect(aws.Timestamp).toBe(clock);
    expect(aws.CloudWatchMetrics).toEqual([{ Namespace: 'Tomlinson', Dimensions: [['Table']], Metrics: [{ Name: 'outbound-oldest-age', Unit: 'Seconds' }] }]);
  });

  it('uses the namespace, metric and dimension of the OutboundQueueAge alarm', async () => {
    const [emf] = await batchLines();
    const alarms = Object.values(Template.fromStack(testApp().stacks.monitoring!).findResources('AWS::CloudWatch::Alarm')).map(
      (a) => a.Properties as Record<string, unknown>,
    );
    const alarm = alarms.find((a) => String(a.AlarmDescription).startsWith('Outbound mail has been waiting'))!;
    const def = (emf!._aws as { CloudWatchMetrics: { Namespace: string; Dimensions: string[][]; Metrics: { Name: string }[] }[] }).CloudWatchMetrics[0]!;
    expect(alarm.Namespace).toBe(def.Namespace);
    expect(alarm.MetricName).toBe(def.Metrics[0]!.Name);
    expect((alarm.Dimensions as { Name: string }[]).map((d) => d.Name)).toEqual(def.Dimensions[0]);
  }, 120_000);
});
