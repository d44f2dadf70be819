/**
 * The worker loop works jobs that arrive one by one in batches (core/workers/runner.ts,
 * batchDelayMs): after a receive that brought fewer messages than there was room for it waits,
 * so the jobs sent meanwhile come in one receive and are started in the same turn (their storage
 * writes then share a commit). Real local storage; the handler records which receive brought it.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { openLocalStorage } from '../../core/storage/local/index.js';
import type { Storage } from '../../core/storage/ports.js';
import type { JobContext } from '../../core/workers/job.js';
import { WorkerLoop } from '../../core/workers/runner.js';
import { tempDir } from '../support/tmp.js';

let cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

describe('worker loop batches', () => {
  it('jobs sent during the batch delay are received together and started in one turn', async () => {
    const dir = await tempDir('worker-batch-');
    const config = loadConfig({ TOMLINSON_DATA_DIR: dir.path });
    const opened = await openLocalStorage(config, silentLogger);
    let receives = 0;
    // Count the receives that brought something, to tell the batches apart.
    const storage: Storage = {
      ...opened,
      queues: Object.assign(Object.create(opened.queues) as Storage['queues'], {
        receive: async (...args: Parameters<Storage['queues']['receive']>) => {
          const got = await opened.queues.receive(...args);
          if (got.length) receives++;
          return got;
        },
      }),
    };
    const ctx: JobContext = { config, storage, log: silentLogger, now: () => new Date() };
    const seen: { body: string; batch: number; turn: number }[] = [];
    let turn = 0;
    const tick = setInterval(() => turn++, 1);
    const worker = new WorkerLoop(
      'inbound',
      async (body) => {
        seen.push({ body, batch: receives, turn });
        return { kind: 'done' };
      },
      ctx,
      { concurrency: 8, waitSeconds: 1, batchDelayMs: 1500 },
    );
    cleanup.push(async () => {
      clearInterval(tick);
      await worker.stop(1000);
      await opened.close();
      await dir.remove();
    });
    worker.start();
    await opened.queues.send('inbound', 'first');
    const deadline = Date.now() + 10_000;
    while (seen.length < 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    // The worker now waits before its next receive: these four arrive in the meantime, one by
    // one (without the wait, each would wake the worker's long poll on its own).
    for (const b of ['a', 'b', 'c', 'd']) {
      await opened.queues.send('inbound', b);
      await new Promise((r) => setTimeout(r, 30));
    }
    while (seen.length < 5 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    expect(seen.map((s) => s.body).sort()).toEqual(['a', 'b', 'c', 'd', 'first']);
    const rest = seen.filter((s) => s.body !== 'first');
    expect(new Set(rest.map((s) => s.batch)).size).toBe(1);
    expect(rest[0].batch).toBe(seen.find((s) => s.body === 'first')!.batch + 1);
    expect(new Set(rest.map((s) => s.turn)).size).toBe(1);
    // Every job is deleted once done.
    let left = -1;
    while (left !== 0 && Date.now() < deadline) {
      const stats = await opened.queues.stats('inbound');
      left = stats.visible + stats.inFlight;
      if (left) await new Promise((r) => setTimeout(r, 10));
    }
    expect(left).toBe(0);
  });
});
