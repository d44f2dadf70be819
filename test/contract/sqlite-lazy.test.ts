/**
 * The local SQLite writer's two kinds of write (core/storage/local/sqlite.ts): a durable write
 * resolves only after the WAL fsync of its batch; a lazy one (`durable: false`: the queue's
 * receive, delete and visibility change, the POP3 lease's writes) resolves at its commit and starts no fsync. Observed by
 * holding the WAL fsync open and counting the fsyncs started.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../core/log.js';
import { SqliteStore } from '../../core/storage/local/sqlite.js';
import { SqliteQueues } from '../../core/storage/local/sqlite-queues.js';
import { SqliteTables } from '../../core/storage/local/sqlite-tables.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { FsBlobs } from '../../core/storage/local/fs-blobs.js';
import { tempDir } from '../support/tmp.js';

let cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

/** A store whose WAL fsyncs are counted and held until `release()`. */
async function heldStore() {
  const dir = await tempDir('sqlite-lazy-');
  const store = new SqliteStore(`${dir.path}/t.db`, silentLogger);
  store.db.exec('CREATE TABLE IF NOT EXISTS t (v TEXT)');
  const sync = (store as unknown as { walSync: { sync: (p: string) => Promise<void> } }).walSync;
  const real = sync.sync.bind(sync);
  let gate: { promise: Promise<void>; open: () => void } | undefined;
  const hold = () => {
    let open!: () => void;
    gate = { promise: new Promise<void>((r) => (open = r)), open };
  };
  let started = 0;
  sync.sync = async (p: string) => {
    started++;
    await gate?.promise;
    return real(p);
  };
  cleanup.push(async () => {
    gate?.open();
    await store.close();
    await dir.remove();
  });
  const insert = (v: string) => store.db.prepare('INSERT INTO t (v) VALUES (?)').run(v);
  return { store, insert, hold, release: () => gate?.open(), started: () => started };
}

const settledSoon = <T>(p: Promise<T>, ms = 200) => Promise.race([p.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms))]);

describe('SqliteStore lazy writes', () => {
  it('a durable write waits for the WAL fsync; a lazy one in the same batch does not', async () => {
    const s = await heldStore();
    await s.store.write(() => s.insert('warm-up')); // the first sync also syncs the folder
    const before = s.started();
    s.hold();
    const durable = s.store.write(() => s.insert('durable'));
    const lazy = s.store.write(() => s.insert('lazy'), { durable: false });
    expect(await settledSoon(lazy)).toBe(true);
    expect(await settledSoon(durable)).toBe(false);
    expect(s.started() - before).toBe(1); // one fsync for the batch
    s.release();
    await durable;
    expect(s.store.db.prepare('SELECT count(*) AS n FROM t').get()).toEqual({ n: 3 });
  });

  it('a batch of lazy writes only starts no fsync at all', async () => {
    const s = await heldStore();
    await s.store.write(() => s.insert('warm-up'));
    const before = s.started();
    s.hold();
    await Promise.all([s.store.write(() => s.insert('a'), { durable: false }), s.store.write(() => s.insert('b'), { durable: false })]);
    expect(s.started()).toBe(before);
  });

  it('queue receive, delete and visibility changes are lazy; send is durable', async () => {
    const s = await heldStore();
    const q = new SqliteQueues(s.store, { maxReceives: 5 });
    await q.send('inbound', 'one');
    await q.send('inbound', 'two');
    const before = s.started();
    s.hold();
    const [a, b] = await q.receive('inbound', { max: 2, visibilitySeconds: 30 });
    await q.changeVisibility('inbound', b.receipt, 60);
    await q.delete('inbound', a.receipt);
    expect(s.started()).toBe(before);
    const sent = q.send('inbound', 'three');
    expect(await settledSoon(sent)).toBe(false);
    s.release();
    await sent;
    expect(s.started()).toBe(before + 1);
    expect((await q.stats('inbound')).visible).toBe(1);
  });

  it('Tables writes with durable: false (the POP3 lease) start no fsync; a default one does', async () => {
    const s = await heldStore();
    const tables = new SqliteTables(s.store, Date.now);
    const dir = await tempDir('sqlite-lazy-blobs-');
    const blobs = await FsBlobs.open({ root: dir.path, log: silentLogger, name: 'mail' });
    cleanup.push(async () => {
      await blobs.close();
      await dir.remove();
    });
    const mailboxes = new MailboxStore(tables, blobs);
    await tables.put({ pk: 'warm', sk: 'up' });
    const before = s.started();
    s.hold();
    expect(await mailboxes.acquireLease('bob@example.test', 'h1', 60)).toBe(true);
    expect(await mailboxes.acquireLease('bob@example.test', 'h2', 60)).toBe(false); // visible at once
    expect(await mailboxes.renewLease('bob@example.test', 'h1', 60)).toBe(true);
    await mailboxes.releaseLease('bob@example.test', 'h1');
    expect(await tables.get({ pk: 'MBX#bob@example.test', sk: 'LEASE' })).toBeUndefined();
    expect(s.started()).toBe(before);
    const durable = tables.put({ pk: 'a', sk: 'b' });
    expect(await settledSoon(durable)).toBe(false);
    s.release();
    await durable;
    expect(s.started()).toBe(before + 1);
  });
});
