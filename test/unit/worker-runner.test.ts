/**
 * The in-process worker loop settles each message by the handler's outcome, on real local
 * storage: done deletes, retry hides it for the asked time, a throw leaves it for redelivery.
 */
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { Metrics } from '../../core/metrics.js';
import { openLocalStorage } from '../../core/storage/local/index.js';
import type { Storage } from '../../core/storage/ports.js';
import type { JobContext, JobHandler } from '../../core/workers/job.js';
import { runOne, WorkerLoop } from '../../core/workers/runner.js';
import { healthReport } from '../../containers/health.js';
import { tempDir } from '../support/tmp.js';

let cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

async function setup(): Promise<{ storage: Storage; ctx: JobContext }> {
  const dir = await tempDir('runner-');
  const config = loadConfig({ TOMLINSON_DATA_DIR: dir.path, TOMLINSON_QUEUE_MAX_RECEIVES: '3' });
  const storage = await openLocalStorage(config, silentLogger);
  cleanup.push(async () => {
    await storage.close();
    await dir.remove();
  });
  return { storage, ctx: { config, storage, log: silentLogger, metrics: new Metrics({ defaults: false }), now: () => new Date() } };
}

describe('runOne', () => {
  it('deletes the message when the handler says done', async () => {
    const { storage, ctx } = await setup();
    await storage.queues.send('inbound', 'a');
    const [m] = await storage.queues.receive('inbound', { visibilitySeconds: 1 });
    const seen: string[] = [];
    const out = await runOne('inbound', m, async (body) => (seen.push(body), { kind: 'done' }), ctx);
    expect(out).toEqual({ kind: 'done' });
    expect(seen).toEqual(['a']);
    await new Promise((r) => setTimeout(r, 1200));
    expect(await storage.queues.receive('inbound', { visibilitySeconds: 1 })).toEqual([]);
  });

  it('hides the message for the asked time on retry, then hands it out again', async () => {
    const { storage, ctx } = await setup();
    await storage.queues.send('outbound', 'b');
    const [m] = await storage.queues.receive('outbound', { visibilitySeconds: 30 });
    await runOne('outbound', m, async () => ({ kind: 'retry', afterSeconds: 1, reason: 'remote said 451' }), ctx);
    expect(await storage.queues.receive('outbound', { visibilitySeconds: 30 })).toEqual([]);
    await new Promise((r) => setTimeout(r, 1200));
    const again = await storage.queues.receive('outbound', { visibilitySeconds: 30 });
    expect(again.map((x) => [x.body, x.receiveCount])).toEqual([['b', 2]]);
  });

  it('returns the error of a throwing handler and keeps the message', async () => {
    const { storage, ctx } = await setup();
    await storage.queues.send('inbound', 'c');
    const [m] = await storage.queues.receive('inbound', { visibilitySeconds: 1 });
    const out = await runOne(
      'inbound',
      m,
      async () => {
        throw new Error('blob store down');
      },
      ctx,
    );
    expect(out).toBeInstanceOf(Error);
    await new Promise((r) => setTimeout(r, 1200));
    const again = await storage.queues.receive('inbound', { visibilitySeconds: 1 });
    expect(again.map((x) => x.body)).toEqual(['c']);
  });
});

describe('the failure log', () => {
  it('says on the last attempt that the job goes to the dead-letter queue, with the reason', async () => {
    const { storage, ctx } = await setup();
    const lines: { level: number; msg: string; err?: string; receiveCount?: number }[] = [];
    const log = pino({ level: 'info' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
    await storage.queues.send('inbound', 'poison');
    for (let attempt = 1; attempt <= 3; attempt++) {
      const [m] = await storage.queues.receive('inbound', { visibilitySeconds: 0 });
      expect(m.receiveCount).toBe(attempt);
      const out = await runOne(
        'inbound',
        m,
        async () => {
          throw new Error('cannot parse the job');
        },
        { ...ctx, log },
      );
      expect(out).toBeInstanceOf(Error);
    }
    // TOMLINSON_QUEUE_MAX_RECEIVES is 3: two retries, then the last attempt.
    expect(lines.map((l) => [l.level, l.receiveCount, l.err])).toEqual([
      [40, 1, 'cannot parse the job'],
      [40, 2, 'cannot parse the job'],
      [50, 3, 'cannot parse the job'],
    ]);
    expect(lines[2].msg).toMatch(/last attempt.*dead-letter queue/);
    expect(await storage.queues.receive('inbound', { visibilitySeconds: 0 })).toEqual([]);
    expect((await storage.queues.stats('inbound-dlq')).visible).toBe(1);
  });
});

describe('WorkerLoop', () => {
  it('works every message once with bounded concurrency, and a failing one ends in the DLQ', async () => {
    const { storage, ctx } = await setup();
    for (let i = 0; i < 20; i++) await storage.queues.send('inbound', `m${i}`);
    await storage.queues.send('inbound', 'poison');
    const done = new Set<string>();
    let running = 0;
    let peak = 0;
    const handler: JobHandler = async (body) => {
      running++;
      peak = Math.max(peak, running);
      await new Promise((r) => setTimeout(r, 5));
      running--;
      if (body === 'poison') throw new Error('cannot parse');
      done.add(body);
      return { kind: 'done' };
    };
    const loop = new WorkerLoop('inbound', handler, ctx, { concurrency: 4, visibilitySeconds: 1, waitSeconds: 1 });
    loop.start();
    const until = Date.now() + 20_000;
    let dlq: Awaited<ReturnType<Storage['queues']['receive']>> = [];
    while (Date.now() < until) {
      dlq = await storage.queues.receive('inbound-dlq', { visibilitySeconds: 30 });
      if (dlq.length && done.size === 20) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    await loop.stop(2000);
    expect(done.size).toBe(20);
    expect(peak).toBeLessThanOrEqual(4);
    expect(dlq.map((m) => m.body)).toEqual(['poison']);
    expect(loop.healthy()).toBe(true);
  });

  it('the health report is up only when every component is up', async () => {
    const { storage } = await setup();
    const up = await healthReport(storage, [{ name: 'smtp', healthy: () => true }]);
    expect(up.ok).toBe(true);
    const down = await healthReport(storage, [{ name: 'smtp', healthy: () => false }]);
    expect(down.ok).toBe(false);
    expect(down.body.components).toEqual({ smtp: 'down' });
  });
});
