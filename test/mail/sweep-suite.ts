/**
 * The orphaned-blob sweep (core/mail/sweep.ts) through the storage ports of one adapter family:
 * orphans go; blobs named by a mailbox entry, a hold or an active outbound record stay; young blobs
 * stay while the queues have work; a blob between its put and its job's send survives the sweep;
 * JMAP uploads go once their TTL has passed unless an Email refers to them; a dry run changes nothing. The inbound worker itself makes the references where it matters.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { inboundJob } from '../../core/mail/inbound.js';
import type { InboundJob } from '../../core/mail/jobs.js';
import { DEFAULT_UPLOAD_TTL_SECONDS, startPeriodicSweep, sweepOptionsFrom, sweepOrphanBlobs, type SweepOptions } from '../../core/mail/sweep.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { Metrics } from '../../core/metrics.js';
import type { BlobListPage, QueueName, Storage } from '../../core/storage/ports.js';
import type { JobContext } from '../../core/workers/job.js';
import { runOne } from '../../core/workers/runner.js';
import { FAMILIES, type FamilyTarget } from '../accounts/families.js';
import { blobExists } from '../support/blobs.js';

const HOUR = 3600_000;
const DAY = 24 * HOUR;
const RAW = 'From: <a@remote.example>\r\nTo: <bob@example.com>\r\nSubject: sweep test\r\nMessage-ID: <sweep@remote.example>\r\n\r\nbody\r\n';
const QUEUES: QueueName[] = ['inbound', 'outbound', 'inbound-dlq', 'outbound-dlq'];

/** Runs the sweep suite on one family (one test file per family, so they run in parallel). */
export function describeSweep(family: 'local' | 'aws'): void {
  const { name, open } = FAMILIES.find((f) => f.name === family)!;
  describe(`orphan sweep on the ${name} family`, () => {
    let target: FamilyTarget;
    let storage: Storage;
    let n = 0;
    /** A fresh key under the inbound prefix, as the SMTP listener names them. */
    const inKey = () => `in/20260101/${name}-${++n}-${Date.now().toString(36)}.eml`;

    const exists = (key: string) => blobExists(storage.mail, key);
    /** The storage with a hook called on every page the sweep lists from the mail blobs. */
    const onListPage = (hook: (page: BlobListPage) => void | Promise<void>): Storage => ({
      ...storage,
      mail: {
        put: storage.mail.put.bind(storage.mail),
        get: storage.mail.get.bind(storage.mail),
        head: storage.mail.head.bind(storage.mail),
        delete: storage.mail.delete.bind(storage.mail),
        list: async (prefix, o) => {
          const page = await storage.mail.list(prefix, o);
          await hook(page);
          return page;
        },
      },
    });
    /** Empties every queue (messages of earlier tests must not turn the fast path off). */
    const drain = async () => {
      for (const q of QUEUES) {
        for (;;) {
          const got = await storage.queues.receive(q, { max: 10, waitSeconds: 0, visibilitySeconds: 30 });
          if (!got.length) break;
          for (const m of got) await storage.queues.delete(q, m.receipt);
        }
      }
    };
    const sweep = (o: SweepOptions = {}) => sweepOrphanBlobs(storage, { log: silentLogger, ...o });
    const later = (ms: number) => () => new Date(Date.now() + ms);
    const job = (id: string, blobKey: string, rcpt = 'bob@example.com'): InboundJob => ({
      v: 1,
      id,
      blobKey,
      size: RAW.length,
      from: 'a@remote.example',
      rcpts: [{ address: rcpt }],
      receivedAt: new Date().toISOString(),
      client: { address: '127.0.0.1', helo: 'remote.example' },
      listener: 'mx',
    });
    /** Works every inbound job now queued with the real inbound worker. */
    const work = async () => {
      const ctx: JobContext = { config: loadConfig({ TOMLINSON_DATA_DIR: '/nonexistent' }), storage, log: silentLogger, now: () => new Date() };
      for (;;) {
        const got = await storage.queues.receive('inbound', { max: 10, waitSeconds: 0, visibilitySeconds: 30 });
        if (!got.length) break;
        for (const m of got) {
          const r = await runOne('inbound', m, inboundJob, ctx);
          if (r instanceof Error) throw r;
        }
      }
    };

    beforeAll(async () => {
      target = await open();
      storage = target.storage;
      const accounts = new Accounts(storage.tables, { scrypt: { ln: 4, r: 8, p: 1 } });
      await accounts.addDomain('example.com');
      await accounts.addUser('bob@example.com', 'password-123');
    });
    afterAll(async () => target?.cleanup());
    beforeEach(async () => {
      await drain();
      // Start each test from a clean store: whatever earlier tests left unreferenced goes now.
      await sweep({ settleSeconds: 0 });
    });

    it('deletes unreferenced blobs when the queues are empty, and keeps delivered, held and outbound-named ones', async () => {
      const orphan = inKey();
      const spool = `spool/${name}-${++n}`;
      // A DSN stored by a worker killed before it queued the DSN's job.
      const dsn = `dsn/${name}-${++n}.dsn-0a1b2c.eml`;
      const delivered = inKey();
      const held = inKey();
      const outbound = inKey();
      for (const k of [orphan, spool, dsn, delivered, held, outbound]) await storage.mail.put(k, RAW);
      // A delivered message: the real worker writes the mailbox entry and its BLOBREF in one go.
      await storage.queues.send('inbound', JSON.stringify(job(`j-${n}`, delivered)));
      await work();
      const store = new MailboxStore(storage.tables, storage.mail);
      expect((await store.list('bob@example.com')).some((e) => e.blobKey === delivered)).toBe(true);
      await store.holdBlob(held, 'inbound:some-job');
      // An active outbound record with no hold (which the code never makes) still protects its blob.
      const id = /\/([^/]+)\.eml$/.exec(outbound)![1];
      await storage.tables.put({ pk: `OUT#${id}`, sk: 'META', id, blobKey: outbound, status: 'active' });

      const r = await sweep({ settleSeconds: 0 });
      expect(r.quiescent).toBe(true);
      expect(r.deletedKeys.sort()).toEqual([orphan, spool, dsn].sort());
      expect(r.deleted).toBe(3);
      expect(r.keptReferenced).toBe(3);
      expect(await exists(orphan)).toBe(false);
      expect(await exists(spool)).toBe(false);
      expect(await exists(dsn)).toBe(false);
      for (const k of [delivered, held, outbound]) expect(await exists(k)).toBe(true);

      // Idempotent: a second run finds nothing more to do.
      const again = await sweep({ settleSeconds: 0 });
      expect(again.deleted).toBe(0);
      expect(again.keptReferenced).toBe(3);

      await store.releaseBlob(held, 'inbound:some-job'); // its last reference: the store deletes it
      expect(await exists(held)).toBe(false);
      await storage.tables.delete({ pk: `OUT#${id}`, sk: 'META' });
      const last = await sweep({ settleSeconds: 0 });
      expect(last.deletedKeys).toEqual([outbound]);
    });

    it('releases holds nobody can release any more (a finished outbound record, an inbound hold past the grace) and keeps live ones', async () => {
      const store = new MailboxStore(storage.tables, storage.mail);
      const finished = inKey();
      const active = inKey();
      const inboundHeld = inKey();
      const strange = inKey();
      const shared = inKey();
      for (const k of [finished, active, inboundHeld, strange, shared]) await storage.mail.put(k, RAW);
      const idOf = (k: string) => /\/([^/]+)\.eml$/.exec(k)![1];
      // The outbound worker finished the message but died before releasing its hold.
      await store.holdBlob(finished, `outbound:${idOf(finished)}`);
      await storage.tables.put({ pk: `OUT#${idOf(finished)}`, sk: 'META', id: idOf(finished), blobKey: finished, status: 'done' });
      await store.holdBlob(active, `outbound:${idOf(active)}`);
      await storage.tables.put({ pk: `OUT#${idOf(active)}`, sk: 'META', id: idOf(active), blobKey: active, status: 'active' });
      await store.holdBlob(inboundHeld, `inbound:${idOf(inboundHeld)}`);
      await store.holdBlob(strange, 'someone-else:1');
      // A delivered message whose inbound hold was never released: the mailbox entry keeps it.
      await store.holdBlob(shared, `inbound:${idOf(shared)}`);
      await storage.queues.send('inbound', JSON.stringify(job(`shared-${n}`, shared)));
      await work();

      const now = await sweep({ settleSeconds: 0 });
      expect(now.deletedKeys).toEqual([finished]);
      expect(now.releasedHolds).toBe(1);
      expect(await exists(finished)).toBe(false);
      expect(await storage.tables.get({ pk: `BLOBREF#${finished}`, sk: 'META' })).toBeUndefined();
      for (const k of [active, inboundHeld, strange, shared]) expect(await exists(k)).toBe(true);

      const dry = await sweep({ settleSeconds: 0, dryRun: true, now: later(16 * DAY) });
      expect(dry.deletedKeys).toEqual([inboundHeld]);
      expect(await exists(inboundHeld)).toBe(true);
      const late = await sweep({ settleSeconds: 0, now: later(16 * DAY) });
      expect(late.deletedKeys).toEqual([inboundHeld]);
      expect(late.releasedHolds).toBe(1);
      expect(await exists(inboundHeld)).toBe(false);
      for (const k of [active, strange, shared]) expect(await exists(k)).toBe(true);
      // The shared blob still has its hold and its mailbox entry: nothing was taken from it.
      expect(await storage.tables.get({ pk: `BLOBREF#${shared}`, sk: `HOLD#inbound:${idOf(shared)}` })).toBeDefined();
      expect((await store.list('bob@example.com')).some((e) => e.blobKey === shared)).toBe(true);
    });

    it('keeps young unreferenced blobs while any queue (a dead-letter queue too) has work, and deletes them past the grace', async () => {
      const orphan = inKey();
      const spool = `spool/${name}-${++n}`;
      await storage.mail.put(orphan, RAW);
      await storage.mail.put(spool, RAW);
      await storage.queues.send('outbound-dlq', '{"some":"dead job"}');

      const busy = await sweep({ settleSeconds: 0 });
      expect(busy.quiescent).toBe(false);
      expect(await exists(orphan)).toBe(true);
      expect(busy.keptYoung).toBeGreaterThanOrEqual(1);
      // A spool key is never named by a job: only the settle time applies to it.
      expect(busy.deletedKeys).toEqual([spool]);

      // Sixteen days on: past the 15-day grace, the queues no longer matter.
      const old = await sweep({ settleSeconds: 0, now: later(16 * DAY) });
      expect(old.quiescent).toBe(false);
      expect(old.deletedKeys).toEqual([orphan]);
      expect(await exists(orphan)).toBe(false);

      // A configured grace of one hour, two hours on.
      const short = inKey();
      await storage.mail.put(short, RAW);
      expect((await sweep({ settleSeconds: 0, graceSeconds: 3600, now: later(30 * 60_000) })).deleted).toBe(0);
      expect((await sweep({ settleSeconds: 0, graceSeconds: 3600, now: later(2 * HOUR) })).deletedKeys).toEqual([short]);
    });

    it('while the queues have work, stops listing in/ at the first day folder younger than the grace', async () => {
      const today = new Date().toISOString().slice(0, 10).replace(/-/g, '');
      const young = [`in/${today}/${name}-a-${++n}.eml`, `in/${today}/${name}-b-${n}.eml`];
      for (const k of young) await storage.mail.put(k, RAW);
      const listed = new Set<string>();
      const watched = onListPage((page) => {
        for (const b of page.items) listed.add(b.key);
      });
      await storage.queues.send('inbound', '{"busy":true}');
      const busy = await sweepOrphanBlobs(watched, { settleSeconds: 0, pageSize: 1, log: silentLogger });
      expect(busy.quiescent).toBe(false);
      expect(listed.has(young[0])).toBe(true);
      expect(listed.has(young[1])).toBe(false);
      await drain();
      listed.clear();
      const quiet = await sweepOrphanBlobs(watched, { settleSeconds: 0, pageSize: 1, log: silentLogger });
      expect(quiet.quiescent).toBe(true);
      expect(quiet.deletedKeys).toEqual(young);
    });

    it('only deletes a blob a sweep saw unreferenced at least the settle time earlier (the accept race)', async () => {
      // The accept path: the blob is durable, its job not sent yet, the queues empty.
      const accepting = inKey();
      await storage.mail.put(accepting, RAW);
      const first = await sweep();
      expect(first.quiescent).toBe(true);
      expect(first.marked).toBe(1);
      expect(first.deleted).toBe(0);
      expect(await exists(accepting)).toBe(true);
      // The job is sent (the 250 follows). Sixteen minutes later the queue has work: kept.
      await storage.queues.send('inbound', JSON.stringify(job(`race-${n}`, accepting)));
      const second = await sweep({ now: later(16 * 60_000) });
      expect(second.quiescent).toBe(false);
      expect(second.deleted).toBe(0);
      expect(await exists(accepting)).toBe(true);
      // The worker delivers it: referenced from now on, whatever the clock says.
      await work();
      const third = await sweep({ now: later(17 * DAY) });
      expect(third.quiescent).toBe(true);
      expect(third.deleted).toBe(0);
      expect(third.keptReferenced).toBeGreaterThanOrEqual(1);
      expect(await exists(accepting)).toBe(true);
      const entries = await new MailboxStore(storage.tables, storage.mail).list('bob@example.com');
      expect(entries.some((e) => e.blobKey === accepting)).toBe(true);

      // A real orphan is marked by one sweep and deleted by the next once settled.
      const orphan = inKey();
      await storage.mail.put(orphan, RAW);
      expect((await sweep()).deleted).toBe(0);
      expect((await sweep({ now: later(5 * 60_000) })).deleted).toBe(0);
      expect((await sweep({ now: later(16 * 60_000) })).deletedKeys).toEqual([orphan]);
    });

    it('a key written again after its mark starts over, and blobs written after the sweep began are not judged', async () => {
      const key = inKey();
      await storage.mail.put(key, RAW);
      expect((await sweep()).marked).toBe(1);
      await storage.mail.delete(key);
      // S3 and the file store keep whole seconds or finer; a later second is a different write.
      await new Promise((r) => setTimeout(r, 1100));
      await storage.mail.put(key, RAW);
      const r = await sweep({ now: later(16 * 60_000) });
      expect(r.deleted).toBe(0);
      expect(r.marked).toBe(1);
      // The sweep's own clock an hour behind: every blob looks newer than the sweep.
      const past = await sweep({ settleSeconds: 0, now: later(-HOUR) });
      expect(past.deleted).toBe(0);
      expect(past.keptYoung).toBe(past.scanned);
    });

    it('stops the fast path when a job appears during the sweep (stats re-read before each batch of deletes)', async () => {
      const keys = [inKey(), inKey(), inKey(), inKey()].sort();
      for (const k of keys) await storage.mail.put(k, RAW);
      const racing = onListPage(async (page) => {
        // A listener accepts a message after the first of these blobs was judged.
        if (page.items.some((b) => b.key === keys[1])) await storage.queues.send('inbound', JSON.stringify(job(`mid-${n}`, inKey())));
      });
      const r = await sweepOrphanBlobs(racing, { settleSeconds: 0, pageSize: 1, log: silentLogger });
      expect(r.quiescent).toBe(true);
      expect(r.deletedKeys).toEqual([keys[0]]);
      for (const k of keys.slice(1)) expect(await exists(k)).toBe(true);
    });

    it('stopped by its signal between blobs, it reports an incomplete sweep and leaves the rest to the next one', async () => {
      const keys = [inKey(), inKey(), inKey()].sort();
      for (const k of keys) await storage.mail.put(k, RAW);
      const abort = new AbortController();
      const stopping = onListPage((page) => {
        // The periodic sweep's stop() or the Lambda's deadline, arriving while the sweep runs.
        if (page.items.some((b) => b.key === keys[1])) abort.abort();
      });
      const metrics = new Metrics({ defaults: false });
      const r = await sweepOrphanBlobs(stopping, { settleSeconds: 0, pageSize: 1, log: silentLogger, signal: abort.signal, metrics });
      expect(r.complete).toBe(false);
      expect(r.deletedKeys).toEqual([keys[0]]);
      for (const k of keys.slice(1)) expect(await exists(k)).toBe(true);
      // What it did is still counted.
      expect(await metrics.text()).toMatch(/tomlinson_orphan_sweep_blobs_total\{outcome="deleted"\} 1/);
      const next = await sweep({ settleSeconds: 0 });
      expect(next.complete).toBe(true);
      expect(next.deletedKeys).toEqual(expect.arrayContaining(keys.slice(1)));
    });

    it('a dry run reports what would go and changes nothing; a real run pages through, counts a metric', async () => {
      const keys = [inKey(), inKey(), inKey(), inKey(), inKey()];
      for (const k of keys) await storage.mail.put(k, RAW);
      const dry = await sweep({ dryRun: true, settleSeconds: 0 });
      expect(dry.dryRun).toBe(true);
      expect(dry.deletedKeys.sort()).toEqual([...keys].sort());
      for (const k of keys) expect(await exists(k)).toBe(true);
      // No mark was written either: a real run with a settle time still starts by marking.
      const dryMarked = await sweep({ dryRun: true });
      expect(dryMarked.deleted).toBe(0);
      expect(dryMarked.marked).toBe(5);
      expect((await sweep()).marked).toBe(5);

      const metrics = new Metrics({ defaults: false });
      const r = await sweep({ settleSeconds: 0, pageSize: 2, metrics });
      expect(r.deletedKeys.sort()).toEqual([...keys].sort());
      for (const k of keys) expect(await exists(k)).toBe(false);
      expect(await metrics.text()).toMatch(/tomlinson_orphan_sweep_blobs_total\{outcome="deleted"\} 5/);
    });

    it('deletes an unused JMAP upload past its TTL even while the queues have work, and keeps a young one or one an Email refers to', async () => {
      // Uploads as the web listener names them (upload/<accountId>/<id>); one of them filed into a
      // mailbox by the real inbound worker, as Email/import files an upload (a BLOBREF# count).
      const unused = `upload/A${name}/${++n}-unused`;
      const filed = `upload/A${name}/${++n}-filed`;
      for (const k of [unused, filed]) await storage.mail.put(k, RAW);
      await storage.queues.send('inbound', JSON.stringify(job(`upload-${n}`, filed)));
      await work();

      // Within the TTL an upload stays even in a quiet moment, when a young in/ orphan would go:
      // a client may still import it.
      const young = inKey();
      await storage.mail.put(young, RAW);
      const quiet = await sweep({ settleSeconds: 0, uploadTtlSeconds: 3 * 3600, now: later(2 * HOUR) });
      expect(quiet.quiescent).toBe(true);
      // (what earlier tests left may go too; only this test's keys are judged here)
      const mine = (keys: string[]) => keys.filter((k) => [young, unused, filed].includes(k));
      expect(mine(quiet.deletedKeys)).toEqual([young]);
      for (const k of [unused, filed]) expect(await exists(k)).toBe(true);

      // Past the TTL, with a job waiting (so the 15-day grace would still hold a message blob).
      await storage.queues.send('outbound-dlq', '{"some":"dead job"}');
      const orphan = inKey();
      await storage.mail.put(orphan, RAW);
      const r = await sweep({ settleSeconds: 0, uploadTtlSeconds: 3600, now: later(2 * HOUR) });
      expect(r.quiescent).toBe(false);
      expect(r.deletedKeys).toContain(unused);
      expect(r.deletedKeys).not.toContain(filed);
      expect(r.deletedKeys).not.toContain(orphan);
      expect(await exists(unused)).toBe(false);
      expect(await exists(filed)).toBe(true);
      expect(await exists(orphan)).toBe(true);

      // Without the web listener's setting the sweep uses the listener's default TTL, a day.
      expect(sweepOptionsFrom(loadConfig({ TOMLINSON_DATA_DIR: '/nonexistent' })).uploadTtlSeconds).toBe(DEFAULT_UPLOAD_TTL_SECONDS);
      expect(DEFAULT_UPLOAD_TTL_SECONDS).toBe(86400);
    });

    it('runs periodically in-process and stops cleanly', async () => {
      const orphan = inKey();
      await storage.mail.put(orphan, RAW);
      const config = loadConfig({ TOMLINSON_DATA_DIR: '/nonexistent', TOMLINSON_ORPHAN_SETTLE_MINUTES: '0', TOMLINSON_SWEEP_INTERVAL_MINUTES: '1' });
      const periodic = startPeriodicSweep({ storage, config, log: silentLogger, firstDelayMs: 10 })!;
      try {
        const until = Date.now() + 20_000;
        while (await exists(orphan)) {
          if (Date.now() > until) throw new Error('the periodic sweep did not run');
          await new Promise((r) => setTimeout(r, 50));
        }
      } finally {
        await periodic.stop();
      }
      expect(startPeriodicSweep({ storage, config: { ...config, mail: { ...config.mail, sweepIntervalMinutes: 0 } }, log: silentLogger })).toBeUndefined();
    });
  });
}
