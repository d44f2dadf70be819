/**
 * functions/lib/sqs-batch.ts against the real local storage family (SQLite queues with an injected
 * clock) and real JobHandlers: outcomes become partial batch responses, a `retry` hides the
 * message through the storage port with the record's receipt handle, and the per-container context
 * is built once. Also loads the two Lambda entry files and runs one through its env-built context.
 */
import type { SQSEvent, SQSRecord } from 'aws-lambda';
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { Metrics } from '../../core/metrics.js';
import { openLocalStorage } from '../../core/storage/local/index.js';
import type { QueueName, ReceivedMessage, Storage } from '../../core/storage/ports.js';
import { done, type JobContext, type JobHandler, type JobMeta } from '../../core/workers/job.js';
import { recordMeta, sqsBatchHandler } from '../../functions/lib/sqs-batch.js';
import { tempDir } from '../support/tmp.js';

let dir: { path: string; remove: () => Promise<void> };
let storage: Storage;
let clock = Date.parse('2026-01-01T00:00:00Z');
let ctx: JobContext;

/** The SQS event Lambda would build for messages received from the queue. */
function eventOf(queue: QueueName, messages: ReceivedMessage[]): SQSEvent {
  return {
    Records: messages.map((m): SQSRecord => ({
      messageId: m.id,
      receiptHandle: m.receipt,
      body: m.body,
      attributes: {
        ApproximateReceiveCount: String(m.receiveCount),
        SentTimestamp: String(m.sentAt.getTime()),
        SenderId: 'test',
        ApproximateFirstReceiveTimestamp: String(clock),
      },
      messageAttributes: {},
      md5OfBody: '',
      eventSource: 'aws:sqs',
      eventSourceARN: `arn:aws:sqs:us-east-1:000000000000:${queue}`,
      awsRegion: 'us-east-1',
    })),
  };
}

async function sendAndReceive(queue: QueueName, bodies: string[]): Promise<ReceivedMessage[]> {
  for (const b of bodies) await storage.queues.send(queue, b);
  const got = await storage.queues.receive(queue, { max: 10, visibilitySeconds: 30 });
  expect(got.map((m) => m.body).sort()).toEqual([...bodies].sort());
  return got;
}

beforeAll(async () => {
  dir = await tempDir('tomlinson-lambda-');
  const config = loadConfig({ TOMLINSON_DATA_DIR: dir.path, TOMLINSON_WORKER_CONCURRENCY: '4' });
  storage = await openLocalStorage(config, silentLogger, { now: () => clock, purgeIntervalMs: 0 });
  ctx = { config, storage, log: silentLogger, metrics: new Metrics({ defaults: false }), now: () => new Date(clock) };
});

afterAll(async () => {
  await storage?.close();
  await dir?.remove();
});

beforeEach(async () => {
  // Drain whatever a previous test left visible.
  clock += 24 * 3600 * 1000;
  for (const q of ['inbound', 'outbound'] as const) {
    for (let batch = await storage.queues.receive(q, { max: 10 }); batch.length; batch = await storage.queues.receive(q, { max: 10 })) {
      for (const m of batch) await storage.queues.delete(q, m.receipt);
    }
  }
});

describe('sqsBatchHandler', () => {
  it('reports nothing failed when every job is done, passing body and meta through', async () => {
    const seen: [string, JobMeta][] = [];
    const job: JobHandler = async (body, meta) => {
      seen.push([body, meta]);
      return done;
    };
    const handler = sqsBatchHandler({ queue: 'inbound', job, context: async () => ctx });
    const msgs = await sendAndReceive('inbound', ['a', 'b', 'c']);
    expect(await handler(eventOf('inbound', msgs))).toEqual({ batchItemFailures: [] });
    expect(seen.map(([b]) => b).sort()).toEqual(['a', 'b', 'c']);
    const meta = seen.find(([b]) => b === 'a')![1];
    const src = msgs.find((m) => m.body === 'a')!;
    expect(meta).toEqual({ queue: 'inbound', id: src.id, receiveCount: 1, sentAt: src.sentAt });
  });

  it('lists exactly the records whose job threw, leaving the rest to be deleted', async () => {
    const job: JobHandler = async (body) => {
      if (body.startsWith('bad')) throw new Error(`cannot work ${body}`);
      return done;
    };
    const handler = sqsBatchHandler({ queue: 'inbound', job, context: async () => ctx });
    const msgs = await sendAndReceive('inbound', ['ok-1', 'bad-1', 'ok-2', 'bad-2']);
    const res = await handler(eventOf('inbound', msgs));
    const failedBodies = res.batchItemFailures.map((f) => msgs.find((m) => m.id === f.itemIdentifier)!.body).sort();
    expect(failedBodies).toEqual(['bad-1', 'bad-2']);
    // Event order is kept in the response.
    const order = msgs.map((m) => m.id).filter((id) => res.batchItemFailures.some((f) => f.itemIdentifier === id));
    expect(res.batchItemFailures.map((f) => f.itemIdentifier)).toEqual(order);
  });

  it('hides a retried message for the requested time through changeVisibility, and reports it failed', async () => {
    const job: JobHandler = async () => ({ kind: 'retry', afterSeconds: 600, reason: 'remote 451' });
    const handler = sqsBatchHandler({ queue: 'outbound', job, context: async () => ctx });
    const [msg] = await sendAndReceive('outbound', ['later']);
    const res = await handler(eventOf('outbound', [msg!]));
    expect(res.batchItemFailures).toEqual([{ itemIdentifier: msg!.id }]);
    // Past the receive's own 30 s visibility, the message is still hidden...
    clock += 60_000;
    expect(await storage.queues.receive('outbound', { max: 10 })).toEqual([]);
    // ...and comes back once the 600 s have passed, as the second receive.
    clock += 541_000;
    const again = await storage.queues.receive('outbound', { max: 10 });
    expect(again.map((m) => [m.id, m.body, m.receiveCount])).toEqual([[msg!.id, 'later', 2]]);
    expect(await ctx.metrics!.messages.get()).toMatchObject({
      values: expect.arrayContaining([expect.objectContaining({ labels: { stage: 'outbound', outcome: 'retry' } })]),
    });
  });

  it('clamps a retry to the 12 hour visibility limit and a throw leaves visibility alone', async () => {
    let n = 0;
    const job: JobHandler = async () => {
      n++;
      if (n === 1) return { kind: 'retry', afterSeconds: 10 * 86400, reason: 'far future' };
      throw new Error('boom');
    };
    const handler = sqsBatchHandler({ queue: 'outbound', job, context: async () => ctx, concurrency: 1 });
    const msgs = await sendAndReceive('outbound', ['far']);
    await handler(eventOf('outbound', msgs));
    clock += 12 * 3600 * 1000 - 1000;
    expect(await storage.queues.receive('outbound', { max: 10 })).toEqual([]);
    clock += 2000;
    const back = await storage.queues.receive('outbound', { max: 10, visibilitySeconds: 30 });
    expect(back).toHaveLength(1);
    await handler(eventOf('outbound', back));
    clock += 31_000;
    expect(await storage.queues.receive('outbound', { max: 10 })).toHaveLength(1);
  });

  it('works at most `concurrency` records at once', async () => {
    let active = 0;
    let peak = 0;
    const job: JobHandler = async () => {
      active++;
      peak = Math.max(peak, active);
      await new Promise((r) => setTimeout(r, 10));
      active--;
      return done;
    };
    const handler = sqsBatchHandler({ queue: 'inbound', job, context: async () => ctx, concurrency: 2 });
    const msgs = await sendAndReceive('inbound', ['1', '2', '3', '4', '5', '6']);
    expect(await handler(eventOf('inbound', msgs))).toEqual({ batchItemFailures: [] });
    expect(peak).toBe(2);
  });

  it('builds the context once per container, and again only after a failed build', async () => {
    let builds = 0;
    let fail = true;
    const handler = sqsBatchHandler({
      queue: 'inbound',
      job: async () => done,
      context: async () => {
        builds++;
        if (fail) throw new Error('no config');
        return ctx;
      },
    });
    const msgs = await sendAndReceive('inbound', ['x', 'y']);
    const errors = vi.spyOn(console, 'error').mockImplementation(() => undefined);
    const res = await handler(eventOf('inbound', msgs));
    expect(errors).toHaveBeenCalledOnce();
    expect(String(errors.mock.calls[0]![0])).toContain('no config');
    errors.mockRestore();
    expect(res.batchItemFailures.map((f) => f.itemIdentifier).sort()).toEqual(msgs.map((m) => m.id).sort());
    fail = false;
    expect(await handler(eventOf('inbound', msgs))).toEqual({ batchItemFailures: [] });
    expect(await handler(eventOf('inbound', []))).toEqual({ batchItemFailures: [] });
    expect(builds).toBe(2);
  });

  it('reads receive count and sent time from the record attributes', () => {
    const [r] = eventOf('inbound', [{ id: 'm1', receipt: 'r1', body: '', receiveCount: 3, sentAt: new Date(1_700_000_000_000) }]).Records;
    expect(recordMeta('inbound', r!)).toEqual({ queue: 'inbound', id: 'm1', receiveCount: 3, sentAt: new Date(1_700_000_000_000) });
  });
});

describe('Lambda entry files', () => {
  it('export a handler that builds its context from the environment (local storage here)', async () => {
    const data = await tempDir('tomlinson-lambda-env-');
    const saved = { ...process.env };
    Object.assign(process.env, { TOMLINSON_DATA_DIR: data.path, TOMLINSON_STORAGE: 'local', TOMLINSON_LOG_LEVEL: 'silent', TOMLINSON_LOG_PRETTY: 'false' });
    try {
      const inbound = await import('../../functions/inbound/handler.js');
      const outbound = await import('../../functions/outbound/handler.js');
      expect(typeof outbound.handler).toBe('function');
      expect(await inbound.handler({ Records: [] })).toEqual({ batchItemFailures: [] });
      // A body that is not a job is never "done": it must come back (and reach the DLQ).
      const res = await inbound.handler(eventOf('inbound', [{ id: 'junk', receipt: 'nope', body: 'not json', receiveCount: 1, sentAt: new Date() }]));
      expect(res.batchItemFailures).toEqual([{ itemIdentifier: 'junk' }]);
    } finally {
      process.env = saved;
      await data.remove();
    }
  });
});
