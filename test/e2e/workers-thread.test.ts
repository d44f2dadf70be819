/**
 * The queue workers on their own thread (containers/worker-host.ts, `workers.thread`, the
 * default): a message accepted on the listeners' thread is delivered by the other thread, whose
 * log lines reach the process's logger and whose counters reach /metrics; and a send on one
 * thread wakes a long poll on the other at once (sqlite-queues.ts, BroadcastChannel).
 */
import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { promisify } from 'node:util';
import { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startApp, type App } from '../../containers/app.js';
import { WorkersThread } from '../../containers/worker-host.js';
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig } from '../../core/config.js';
import { createLogger, silentLogger } from '../../core/log.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { Metrics } from '../../core/metrics.js';
import { openStorage } from '../../core/storage/open.js';
import { SqliteQueues } from '../../core/storage/local/sqlite-queues.js';
import { SqliteTables } from '../../core/storage/local/sqlite-tables.js';
import { SqliteStore } from '../../core/storage/local/sqlite.js';
import { tempDir } from '../support/tmp.js';

const run = promisify(execFile);

describe('queue workers on their own thread', () => {
  let dir: { path: string; remove: () => Promise<void> };
  let app: App;
  let port: number;
  const chunks: string[] = [];

  beforeAll(async () => {
    dir = await tempDir('tomlinson-thread-');
    const config = loadConfig({
      TOMLINSON_DATA_DIR: dir.path,
      TOMLINSON_HOSTNAME: 'mx.tomlinson.test',
      TOMLINSON_SMTP_PORT: '0',
      TOMLINSON_SUBMISSION_PORT: '0',
      TOMLINSON_SUBMISSIONS_PORT: '0',
      TOMLINSON_SMTP_CHECK_AUTH: 'false',
      TOMLINSON_HEALTH_PORT: '0',
    });
    expect(config.workers.thread).toBe(true); // the default
    const out = new PassThrough();
    out.on('data', (d: Buffer) => chunks.push(d.toString()));
    app = await startApp(config, ['smtp', 'workers'], createLogger({ level: 'info', destination: out, pretty: false }));
    const accounts = new Accounts(app.storage.tables, { scrypt: { ln: 4, r: 8, p: 1 } });
    await accounts.addDomain('example.test');
    await accounts.addUser('alice@example.test', 'alice-password-1');
    port = Number(/:(\d+)$/.exec(app.listeners[0].addresses[0])![1]);
  });
  afterAll(async () => {
    await app?.close(1000);
    await dir?.remove();
  });

  it('delivers on the other thread, with its log lines and metrics in this process', async () => {
    expect(app.workers.map((w) => [w.queue, w.healthy()])).toEqual([
      ['inbound', true],
      ['outbound', true],
    ]);
    const { stdout } = await run('swaks', [
      '--server',
      '127.0.0.1',
      '--port',
      String(port),
      '--from',
      'sender@remote.example',
      '--to',
      'alice@example.test',
      '--header',
      'Subject: threaded',
      '--body',
      'one',
      '--timeout',
      '10',
    ]);
    expect(stdout).toMatch(/<- +250 2\.0\.0 /);

    const store = new MailboxStore(app.storage.tables, app.storage.mail);
    const deadline = Date.now() + 20_000;
    let page = await store.list('alice@example.test');
    while (page.length === 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
      page = await store.list('alice@example.test');
    }
    expect(page.map((m) => m.summary.subject)).toEqual(['threaded']);

    const lines = () =>
      chunks
        .join('')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>);
    await expect
      .poll(() => lines().some((l) => l.msg === 'delivered' && l.queue === 'inbound' && l.user === 'alice@example.test'), { timeout: 5000 })
      .toBe(true);

    // This thread's own registry never counted the job; the exposition has the other thread's count.
    const local = (await app.metrics.registry.getSingleMetric('tomlinson_messages_total')!.get()).values.filter((v) => v.labels.stage === 'inbound');
    expect(local).toEqual([]);
    await expect
      .poll(async () => /tomlinson_messages_total\{stage="inbound",outcome="done"\} 1\b/.test(await app.metrics.text()), { timeout: 5000 })
      .toBe(true);
  });
});

describe('SqliteQueues across threads', () => {
  it('a send on one thread ends a long poll on another at once, not at its next poll', async () => {
    const dir = await tempDir('tomlinson-chan-');
    const path = join(dir.path, 'q.db');
    const channel = `tomlinson-queues:${path}`;
    const store = new SqliteStore(path, silentLogger);
    const queues = new SqliteQueues(store, { maxReceives: 5, channel });
    // The receiver: a thread of its own with its own connection, long-polling for 20 s.
    const receiver = new Worker(
      `const { parentPort, workerData } = require('node:worker_threads');
       const Database = require(workerData.driver);
       const db = new Database(workerData.path);
       const ch = new BroadcastChannel(workerData.channel);
       parentPort.postMessage('waiting');
       const t0 = Date.now();
       ch.onmessage = (e) => {
         const row = db.prepare('SELECT COUNT(*) AS n FROM messages WHERE queue = ?').get(e.data);
         parentPort.postMessage({ queue: e.data, rows: row.n, ms: Date.now() - t0 });
         ch.close(); db.close();
       };`,
      { eval: true, workerData: { driver: createRequire(import.meta.url).resolve('better-sqlite3'), path, channel } },
    );
    try {
      await new Promise((r) => receiver.once('message', r));
      const woke = new Promise<{ queue: string; rows: number }>((r) => receiver.once('message', r));
      await queues.send('inbound', 'job');
      // The other thread heard of it and found the committed row.
      expect(await woke).toMatchObject({ queue: 'inbound', rows: 1 });

      // And a SqliteQueues on the channel ends its long poll on that news: well before its next
      // look at the table (every 1000 ms without news).
      const store2 = new SqliteStore(path, silentLogger, 'wal-fsync', {}, { commits: new Int32Array(new SharedArrayBuffer(4)), checkpoints: false });
      const queues2 = new SqliteQueues(store2, { maxReceives: 5, channel });
      try {
        expect(await queues2.receive('inbound', { max: 10 })).toHaveLength(1);
        const t0 = Date.now();
        const polled = queues2.receive('outbound', { waitSeconds: 20 });
        await new Promise((r) => setTimeout(r, 50));
        await queues.send('outbound', 'later');
        expect((await polled).map((m) => m.body)).toEqual(['later']);
        expect(Date.now() - t0).toBeLessThan(900);
      } finally {
        await queues2.close();
        await store2.close();
      }
    } finally {
      await receiver.terminate();
      await queues.close();
      await store.close();
      await dir.remove();
    }
  });
});

describe('SQLite write lock across threads', () => {
  it('a write that finds the lock held by the other thread retries when that transaction ends (SqliteSharing.releases)', async () => {
    const dir = await tempDir('tomlinson-lock-');
    const path = join(dir.path, 'l.db');
    const shared = new SharedArrayBuffer(8);
    const releases = new Int32Array(shared, 4, 1);
    const store = new SqliteStore(path, silentLogger, 'wal-fsync', {}, { commits: new Int32Array(shared, 0, 1), releases, checkpoints: false });
    const tables = new SqliteTables(store, Date.now);
    await tables.put({ pk: 'p', sk: 'first' }); // schema made, WAL in place
    const ours = Atomics.load(releases, 0);
    expect(ours).toBeGreaterThanOrEqual(1); // our own commit was counted and notified
    // The holder: another thread's connection takes the write lock for 40 ms, five times, and
    // after each COMMIT counts and notifies as a sharing store does.
    const holder = new Worker(
      `const { parentPort, workerData } = require('node:worker_threads');
       const Database = require(workerData.driver);
       const db = new Database(workerData.path, { timeout: 5000 });
       const releases = new Int32Array(workerData.shared, 4, 1);
       const pause = new Int32Array(new SharedArrayBuffer(4));
       parentPort.on('message', () => {
         db.prepare('BEGIN IMMEDIATE').run();
         parentPort.postMessage('holding');
         Atomics.wait(pause, 0, 0, 40); // the lock stays held meanwhile
         db.prepare('COMMIT').run();
         Atomics.add(releases, 0, 1);
         Atomics.notify(releases, 0);
       });
       parentPort.postMessage('ready');`,
      { eval: true, workerData: { driver: createRequire(import.meta.url).resolve('better-sqlite3'), path, shared } },
    );
    try {
      await new Promise((r) => holder.once('message', r));
      for (let i = 0; i < 5; i++) {
        const holding = new Promise((r) => holder.once('message', r));
        holder.postMessage('go');
        await holding;
        await tables.put({ pk: 'p', sk: `round-${i}` });
      }
      expect((await tables.query('p')).items).toHaveLength(6);
      // Every put found the lock held; the holder's release woke the waiting put (rather than its
      // 2 ms timer) at least once. (A release that falls between two waits is taken by the timer.)
      expect(store.lockWaits.busy).toBeGreaterThanOrEqual(5);
      expect(store.lockWaits.woken).toBeGreaterThanOrEqual(1);
    } finally {
      await holder.terminate();
      await store.close();
      await dir.remove();
    }
  });
});

describe('the workers thread dies', () => {
  it('is reported down, started again after a backoff, and then works the queue', { timeout: 30_000 }, async () => {
    const dir = await tempDir('tomlinson-restart-');
    const config = loadConfig({ TOMLINSON_DATA_DIR: dir.path, TOMLINSON_HEALTH_PORT: '0' });
    const storage = await openStorage(config, silentLogger);
    const threads: Worker[] = [];
    const host = await WorkersThread.start({
      config,
      log: silentLogger,
      metrics: new Metrics({ defaults: false }),
      storage: storage.forWorkerThread(),
      onThread: (w) => threads.push(w),
    });
    try {
      expect(host.workers.every((w) => w.healthy())).toBe(true);
      await threads[0]!.terminate();
      expect(host.workers.some((w) => w.healthy())).toBe(false);
      await expect.poll(() => threads.length === 2 && host.workers.every((w) => w.healthy()), { timeout: 15_000 }).toBe(true);
      // The new thread works the queue: it takes the message sent now (a bad job, which it
      // settles or leaves hidden in flight), so none is left visible.
      await storage.queues.send('inbound', 'not a job');
      await expect.poll(async () => (await storage.queues.stats('inbound')).visible, { timeout: 10_000 }).toBe(0);
    } finally {
      await host.stop(1000);
      await storage.close();
      await dir.remove();
    }
  });
});
