/**
 * The scheduled sweep Lambda (functions/sweep/handler.ts) over the real local storage family: it
 * builds its context once, runs the orphaned-blob sweep with the configured grace and settle time,
 * and returns the report without the key list. A blob still referenced stays; an orphan goes once
 * it has been seen unreferenced for the settle time.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { Metrics } from '../../core/metrics.js';
import { openLocalStorage } from '../../core/storage/local/index.js';
import type { Storage } from '../../core/storage/ports.js';
import type { JobContext } from '../../core/workers/job.js';
import { sweepHandler } from '../../functions/sweep/handler.js';
import { tempDir } from '../support/tmp.js';
import { blobExists } from '../support/blobs.js';

let dir: { path: string; remove: () => Promise<void> };
let storage: Storage;
let clock = Date.now();
let contexts = 0;

const exists = (key: string) => blobExists(storage.mail, key);

beforeAll(async () => {
  dir = await tempDir('tomlinson-sweep-lambda-');
  const config = loadConfig({ TOMLINSON_DATA_DIR: dir.path, TOMLINSON_ORPHAN_SETTLE_MINUTES: '10' });
  storage = await openLocalStorage(config, silentLogger, { purgeIntervalMs: 0 });
});

afterAll(async () => {
  await storage?.close();
  await dir?.remove();
});

describe('sweep Lambda handler', () => {
  it('deletes an orphan after the settle time, keeps a referenced blob, and builds its context once', async () => {
    const config = loadConfig({ TOMLINSON_DATA_DIR: dir.path, TOMLINSON_ORPHAN_SETTLE_MINUTES: '10' });
    const handler = sweepHandler(async () => {
      contexts++;
      const ctx: JobContext = { config, storage, log: silentLogger, metrics: new Metrics({ defaults: false }), now: () => new Date(clock) };
      return ctx;
    });
    const orphan = 'in/20260301/orphan.eml';
    const kept = 'in/20260301/kept.eml';
    await storage.mail.put(orphan, 'Subject: x\r\n\r\nbody\r\n');
    await storage.mail.put(kept, 'Subject: y\r\n\r\nbody\r\n');
    await storage.tables.put({ pk: `BLOBREF#${kept}`, sk: 'META', refs: 1 });
    const lambda = { getRemainingTimeInMillis: () => 15 * 60_000 };

    clock = Date.now() + 1000;
    const first = await handler({}, lambda);
    expect(first).toMatchObject({ complete: true, deleted: 0, marked: 1, keptReferenced: 1, quiescent: true });
    expect(first).not.toHaveProperty('deletedKeys');
    expect(await exists(orphan)).toBe(true);

    clock += 11 * 60_000;
    const second = await handler({}, lambda);
    expect(second).toMatchObject({ complete: true, deleted: 1, keptReferenced: 1 });
    expect(await exists(orphan)).toBe(false);
    expect(await exists(kept)).toBe(true);
    expect(contexts).toBe(1);
  });
});
