/**
 * How the local queue's rows are written (core/storage/local/sqlite-queues.ts): a message's
 * first receive overwrites its row in place (a never-received row carries a placeholder receipt
 * of a token's length), so a large inline body is not written again; and the placeholder never
 * works as a receipt.
 */
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../core/log.js';
import { SqliteStore } from '../../core/storage/local/sqlite.js';
import { SqliteQueues } from '../../core/storage/local/sqlite-queues.js';
import { tempDir } from '../support/tmp.js';

let cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

async function open() {
  const dir = await tempDir('sqlite-rows-');
  const path = join(dir.path, 'q.db');
  // No checkpoint during the test: the WAL's growth counts the frames each write adds.
  const store = new SqliteStore(path, silentLogger, 'wal-fsync', { restartFrames: 1_000_000, idleMs: 3_600_000 });
  const queues = new SqliteQueues(store, { maxReceives: 5 });
  cleanup.push(async () => {
    await queues.close();
    await store.close();
    await dir.remove();
  });
  const frames = () => (existsSync(`${path}-wal`) ? (statSync(`${path}-wal`).size - 32) / (4096 + 24) : 0);
  return { store, queues, frames };
}

describe('SqliteQueues rows', () => {
  it('the first receive of a 20 KB message writes a few pages, not its body again', async () => {
    const { queues, frames } = await open();
    const body = 'b'.repeat(20_000);
    for (let i = 0; i < 5; i++) await queues.send('inbound', `${body}${i}`);
    const before = frames();
    const got = await queues.receive('inbound', { max: 1 });
    expect(got[0].body).toBe(`${body}0`);
    // The row's page, the body's last overflow page, the visibility index; a rewrite of the
    // body (5 overflow pages) and the freelist would take 9 or more.
    expect(frames() - before).toBeLessThanOrEqual(4);
    expect(got[0].receipt).toMatch(/\.[A-Za-z0-9_-]{16}$/);
  });

  it('the placeholder receipt of a message never received deletes and hides nothing', async () => {
    const { queues } = await open();
    const id = await queues.send('inbound', 'keep me');
    await queues.delete('inbound', `${id}.${'~'.repeat(16)}`);
    await expect(queues.changeVisibility('inbound', `${id}.${'~'.repeat(16)}`, 60)).rejects.toMatchObject({ code: 'NotFound' });
    expect((await queues.stats('inbound')).visible).toBe(1);
    const [m] = await queues.receive('inbound');
    expect(m.id).toBe(id);
    await queues.delete('inbound', m.receipt);
    expect((await queues.stats('inbound')).visible + (await queues.stats('inbound')).inFlight).toBe(0);
  });
});
