/**
 * The mailbox store through the Tables and Blobs ports on each adapter family: idempotent and
 * concurrent delivery, quota, counters, removal with shared-blob reference counts, holds, and the
 * maildrop lease (real time: expiry is the storage's).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Accounts } from '../../core/accounts/accounts.js';
import { MailboxStore, NoSuchMailbox, QuotaExceeded, mailboxKeys } from '../../core/mailbox/store.js';
import type { Blobs, Tables } from '../../core/storage/ports.js';
import { FAMILIES, type FamilyTarget } from '../accounts/families.js';
import { blobExists } from '../support/blobs.js';

const FAST = { ln: 10, r: 8, p: 1 };

/** Runs the mailbox store suite on one family (one test file per family, so they run in parallel). */
export function describeMailboxStore(family: 'local' | 'aws'): void {
  const { name, open } = FAMILIES.find((f) => f.name === family)!;
  describe(`mailbox store on the ${name} family`, () => {
    let target: FamilyTarget;
    let tables: Tables;
    let blobs: Blobs;
    let store: MailboxStore;
    let real: MailboxStore;
    const clock = new Date(Math.floor(Date.now() / 1000) * 1000 - 3_600_000); // an hour ago
    const pageSize = name === 'aws' ? 10 : 500;
    const total = pageSize + 20;

    const msg = (jobId: string, blobKey: string, size: number) => ({
      jobId,
      blobKey,
      size,
      receivedAt: '2026-01-01T00:00:00.000Z',
      summary: { subject: `s ${jobId}` },
    });

    beforeAll(async () => {
      target = await open();
      tables = target.storage.tables;
      blobs = target.storage.mail;
      const accounts = new Accounts(tables, { scrypt: FAST });
      await accounts.addDomain('example.com');
      for (const u of ['bob', 'alice', 'carol', 'dan', 'lease']) await accounts.addUser(`${u}@example.com`, 'password-123');
      await accounts.setQuota('carol@example.com', 1000);
      store = new MailboxStore(tables, blobs, { now: () => clock, pageSize });
      real = new MailboxStore(tables, blobs, { pageSize });
    });
    afterAll(async () => target?.cleanup());

    it('creates an empty mailbox with a stable uidValidity', async () => {
      const m1 = await store.meta('bob@example.com');
      expect(m1).toMatchObject({ count: 0, bytes: 0, uidNext: 1 });
      expect(m1.uidValidity).toBe(Math.floor(clock.getTime() / 1000));
      expect((await store.meta('bob@example.com')).uidValidity).toBe(m1.uidValidity);
    });

    it('delivers once per (job, user): a second call returns the first uid as a duplicate', async () => {
      await blobs.put('m/one', 'Subject: one\r\n\r\nbody\r\n');
      expect(await store.deliver('bob@example.com', msg('job-1', 'm/one', 24))).toEqual({ uid: 1, duplicate: false });
      expect(await store.deliver('bob@example.com', msg('job-1', 'm/one', 24))).toEqual({ uid: 1, duplicate: true });
      expect(await store.meta('bob@example.com')).toMatchObject({ count: 1, bytes: 24, uidNext: 2 });
      expect(await store.delivered('job-1', 'bob@example.com')).toBe(1);
      expect(await store.delivered('job-1', 'alice@example.com')).toBeUndefined();
      const list = await store.list('bob@example.com');
      expect(list).toEqual([
        {
          uid: 1,
          blobKey: 'm/one',
          size: 24,
          receivedAt: '2026-01-01T00:00:00.000Z',
          summary: { subject: 's job-1' },
          flags: [],
          jobId: 'job-1',
          threadId: expect.stringMatching(/^T[0-9a-f]{24}$/) as string,
        },
      ]);
    });

    it('gives concurrent deliveries distinct ascending uids and exact counters', async () => {
      const n = 12;
      await blobs.put('m/many', 'x');
      const results = await Promise.all(Array.from({ length: n }, (_, i) => store.deliver('alice@example.com', msg(`many-${i}`, 'm/many', 10 + i))));
      // A delivery whose UID was overtaken by a later one takes a new UID (UIDs commit in order),
      // so under races some UIDs go unused.
      const uids = results.map((r) => r.uid);
      expect(new Set(uids).size).toBe(n);
      const meta = await store.meta('alice@example.com');
      expect(Math.max(...uids)).toBeLessThan(meta.uidNext);
      expect((await store.list('alice@example.com')).map((e) => e.uid)).toEqual([...uids].sort((a, b) => a - b));
      expect(meta).toMatchObject({ count: n, bytes: Array.from({ length: n }, (_, i) => 10 + i).reduce((a, b) => a + b) });
      expect((await tables.get(mailboxKeys.blobRef('m/many')))?.refs).toBe(n);
    });

    it('keeps one copy when the same job is delivered concurrently (queue redelivery race)', async () => {
      await blobs.put('m/race', 'x');
      const results = await Promise.all(Array.from({ length: 5 }, () => store.deliver('dan@example.com', msg('race-job', 'm/race', 7))));
      expect(new Set(results.map((r) => r.uid)).size).toBe(1);
      expect(results.filter((r) => !r.duplicate)).toHaveLength(1);
      expect(await store.meta('dan@example.com')).toMatchObject({ count: 1, bytes: 7 });
    });

    it('refuses a delivery past the quota and stores nothing', async () => {
      await blobs.put('m/q', 'x');
      await store.deliver('carol@example.com', msg('q-1', 'm/q', 600));
      await expect(store.deliver('carol@example.com', msg('q-2', 'm/q', 401))).rejects.toBeInstanceOf(QuotaExceeded);
      expect(await store.meta('carol@example.com')).toMatchObject({ count: 1, bytes: 600, uidNext: 2 });
      expect(await store.delivered('q-2', 'carol@example.com')).toBeUndefined();
      expect(await store.deliver('carol@example.com', msg('q-3', 'm/q', 400))).toEqual({ uid: 2, duplicate: false });
    });

    it('refuses delivery to a user that does not exist', async () => {
      await expect(store.deliver('ghost@example.com', msg('g-1', 'm/one', 5))).rejects.toBeInstanceOf(NoSuchMailbox);
    });

    it('removes messages, adjusts counters, and deletes a shared blob only with its last reference', async () => {
      await blobs.put('m/shared', 'Subject: shared\r\n\r\n');
      const b = await store.deliver('bob@example.com', msg('shared-job', 'm/shared', 19));
      const a = await store.deliver('dan@example.com', msg('shared-job', 'm/shared', 19));
      expect((await tables.get(mailboxKeys.blobRef('m/shared')))?.refs).toBe(2);
      await store.remove('bob@example.com', [b.uid, b.uid, 999]);
      expect(await blobExists(blobs, 'm/shared')).toBe(true);
      expect(await store.get('bob@example.com', b.uid)).toBeUndefined();
      expect(await store.meta('bob@example.com')).toMatchObject({ count: 1, bytes: 24 });
      await store.remove('dan@example.com', [a.uid]);
      expect(await blobExists(blobs, 'm/shared')).toBe(false);
      expect(await tables.get(mailboxKeys.blobRef('m/shared'))).toBeUndefined();
      // uids are never reused after removal
      expect((await store.deliver('bob@example.com', msg('after-remove', 'm/one', 3))).uid).toBe(b.uid + 1);
    });

    it('removes many uids at once in batches, with blobs shared inside a batch and duplicate uids', async () => {
      const u = 'dan@example.com';
      const before = await store.meta(u);
      for (const k of ['m/b0', 'm/b1', 'm/b2']) await blobs.put(k, 'x');
      const uids: number[] = [];
      for (let i = 0; i < 15; i++) uids.push((await store.deliver(u, msg(`batch-${i}`, `m/b${i % 3}`, 2))).uid);
      await store.deliver('bob@example.com', msg('batch-bob', 'm/b2', 2)); // m/b2 is also bob's
      await store.remove(u, [...uids, uids[0], uids[5]]);
      expect(await store.meta(u)).toMatchObject({ count: before.count, bytes: before.bytes });
      expect(await blobExists(blobs, 'm/b0')).toBe(false);
      expect(await blobExists(blobs, 'm/b1')).toBe(false);
      expect(await blobExists(blobs, 'm/b2')).toBe(true);
      expect((await tables.get(mailboxKeys.blobRef('m/b2')))?.refs).toBe(1);
    });

    it('keeps a blob alive while a job holds it, and drops it on release once unreferenced', async () => {
      await blobs.put('m/held', 'x');
      await store.holdBlob('m/held', 'outbound:job-9');
      await store.holdBlob('m/held', 'outbound:job-9'); // idempotent
      const d = await store.deliver('dan@example.com', msg('held-job', 'm/held', 1));
      await store.remove('dan@example.com', [d.uid]);
      expect(await blobExists(blobs, 'm/held')).toBe(true);
      await store.releaseBlob('m/held', 'outbound:job-9');
      expect(await blobExists(blobs, 'm/held')).toBe(false);
      await store.releaseBlob('m/held', 'outbound:job-9'); // idempotent
    });

    it('lists in uid order across pages and shows the newest first', async () => {
      const user = 'alice@example.com';
      const before = (await store.meta(user)).count;
      const extra = total - before; // past one page
      await blobs.put('m/page', 'x');
      const batch = name === 'aws' ? 1 : 20; // moto serialises transactions; keep its share short
      for (let i = 0; i < extra; i += batch) {
        await Promise.all(Array.from({ length: Math.min(batch, extra - i) }, (_, j) => store.deliver(user, msg(`page-${i + j}`, 'm/page', 1))));
      }
      const list = await store.list(user);
      expect(list).toHaveLength(total);
      const uids = list.map((e) => e.uid);
      expect(uids).toEqual([...new Set(uids)].sort((a, b) => a - b));
      expect((await store.newest(user, 3)).map((e) => e.uid)).toEqual(uids.slice(-3).reverse());
    }, 60_000);

    it('sets flags', async () => {
      await store.setFlags('bob@example.com', 1, ['\\Seen']);
      expect((await store.get('bob@example.com', 1))?.flags).toEqual(['\\Seen']);
    });

    it('grants the maildrop lease to one holder until it expires or is released', async () => {
      const u = 'lease@example.com';
      expect(await real.acquireLease(u, 'pop-a', 60)).toBe(true);
      expect(await real.acquireLease(u, 'pop-b', 60)).toBe(false);
      expect(await real.acquireLease(u, 'pop-a', 60)).toBe(true); // re-entrant for the holder
      expect(await real.renewLease(u, 'pop-b', 60)).toBe(false);
      expect(await real.renewLease(u, 'pop-a', 60)).toBe(true);
      await real.releaseLease(u, 'pop-b'); // not the holder: no effect
      expect(await real.acquireLease(u, 'pop-b', 60)).toBe(false);
      await real.releaseLease(u, 'pop-a');
      expect(await real.acquireLease(u, 'pop-b', 1)).toBe(true);
      // pop-b's holder dies: once its lease time has passed another session may take over
      await new Promise((r) => setTimeout(r, 2_100));
      expect(await real.renewLease(u, 'pop-b', 60)).toBe(false);
      expect(await real.acquireLease(u, 'pop-c', 60)).toBe(true);
      const racers = await Promise.all(['x', 'y', 'z'].map((h) => real.acquireLease('bob@example.com', h, 30)));
      expect(racers.filter(Boolean)).toHaveLength(1);
    });

    it('purges a mailbox', async () => {
      expect(await store.purge('dan@example.com')).toBeGreaterThan(0);
      expect(await store.list('dan@example.com')).toEqual([]);
      expect(await blobExists(blobs, 'm/race')).toBe(false);
    });
  });
}
