/**
 * The Email index through the Tables and Blobs ports on each adapter family: an Email's locations
 * follow append, copy, move, expunge, folder delete and user purge in the same transactions
 * (batches that fill MAX_TRANSACTION_OPS included), change entries name the Emails, and threads
 * are decided at filing from a realistic reply chain: a reply filed before its parent, folded
 * References, Re:/Fwd: prefixes, and subject-only or id-only matches that must not join.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Accounts } from '../../core/accounts/accounts.js';
import { baseSubject, emailIdOf } from '../../core/mailbox/email-ids.js';
import { FolderStore } from '../../core/mailbox/folders.js';
import { INBOX, indexKeys } from '../../core/mailbox/keys.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import type { Blobs, Tables } from '../../core/storage/ports.js';
import { FAMILIES, type FamilyTarget } from '../accounts/families.js';
import { storeMail, type TestMail } from './mail.js';

const FAST = { ln: 10, r: 8, p: 1 };

export function describeEmailIndex(family: 'local' | 'aws'): void {
  const { name, open } = FAMILIES.find((f) => f.name === family)!;
  describe(`Email index on the ${name} family`, () => {
    let target: FamilyTarget;
    let tables: Tables;
    let blobs: Blobs;
    let folders: FolderStore;
    let accounts: Accounts;
    let n = 0;
    const newUser = async () => {
      const u = `idx${++n}@example.com`;
      await accounts.addUser(u, 'password-123');
      return u;
    };
    /** Files a message into a folder; returns its uid, emailId and threadId. */
    const file = async (u: string, folderId: string, key: string, m: TestMail) => {
      const r = await folders.append(u, folderId, await storeMail(blobs, key, m));
      const stored = (await folders.get(u, folderId, r.uid))!;
      return { uid: r.uid, emailId: emailIdOf(key), threadId: stored.threadId! };
    };
    const where = async (u: string, emailId: string) =>
      ((await folders.index.locations(u, [emailId])).get(emailId) ?? []).map((l) => [l.folderId, l.uid]).sort();

    beforeAll(async () => {
      target = await open();
      tables = target.storage.tables;
      blobs = target.storage.mail;
      accounts = new Accounts(tables, { scrypt: FAST });
      await accounts.addDomain('example.com');
      // Small pages on aws so paging is exercised.
      folders = new FolderStore(tables, blobs, { pageSize: name === 'aws' ? 5 : 500 });
    });
    afterAll(async () => target?.cleanup());

    it('locates an Email in every folder that holds it: append, copy, move, expunge, folder delete', async () => {
      const u = await newUser();
      const a = await folders.create(u, 'A');
      const b = await folders.create(u, 'B');
      const m = await file(u, INBOX, `${u}/1`, { id: 'one@x', subject: 'One' });
      expect(m.emailId).toMatch(/^M[0-9a-f]{24}$/);
      expect(await where(u, m.emailId)).toEqual([[INBOX, m.uid]]);
      const loc = (await folders.index.locations(u, [m.emailId])).get(m.emailId)![0]!;
      expect(loc).toMatchObject({ threadId: m.threadId, receivedAt: '2026-03-01T10:00:00.000Z' });
      expect(loc.size).toBeGreaterThan(0);

      const copied = await folders.copy(u, INBOX, [m.uid], a.id);
      const aUid = copied.pairs[0]![1];
      expect(await where(u, m.emailId)).toEqual(
        [
          [INBOX, m.uid],
          [a.id, aUid],
        ].sort(),
      );
      // The copy is the same Email in the same thread.
      expect((await folders.get(u, a.id, aUid))!.threadId).toBe(m.threadId);

      const moved = await folders.move(u, a.id, [aUid], b.id);
      const bUid = moved.pairs[0]![1];
      expect(await where(u, m.emailId)).toEqual(
        [
          [INBOX, m.uid],
          [b.id, bUid],
        ].sort(),
      );
      expect((await folders.get(u, b.id, bUid))!.threadId).toBe(m.threadId);

      await folders.expunge(u, INBOX, [m.uid]);
      expect(await where(u, m.emailId)).toEqual([[b.id, bUid]]);
      await folders.delete(u, b.id);
      expect((await folders.index.locations(u, [m.emailId])).has(m.emailId)).toBe(false);
      expect((await folders.index.thread(u, m.threadId)).emailIds).toEqual([]);
    });

    it('keeps the index in batches that fill a transaction: 23 messages copied, moved and expunged', async () => {
      const u = await newUser();
      const f = await folders.create(u, 'Bulk');
      const g = await folders.create(u, 'Bulk2');
      const filed = [];
      for (let i = 0; i < 23; i++) filed.push(await file(u, INBOX, `${u}/b${i}`, { id: `b${i}@x`, subject: `Bulk ${i}` }));
      const ids = filed.map((x) => x.emailId);
      await folders.copy(
        u,
        INBOX,
        filed.map((x) => x.uid),
        f.id,
      );
      let locs = await folders.index.locations(u, ids);
      expect(ids.every((id) => locs.get(id)!.length === 2)).toBe(true);
      await folders.move(
        u,
        f.id,
        Array.from({ length: 23 }, (_, i) => i + 1),
        g.id,
      );
      locs = await folders.index.locations(u, ids);
      expect(
        ids.every(
          (id) =>
            locs
              .get(id)!
              .map((l) => l.folderId)
              .sort()
              .join() === [INBOX, g.id].sort().join(),
        ),
      ).toBe(true);
      await folders.expunge(
        u,
        INBOX,
        filed.map((x) => x.uid),
      );
      await folders.delete(u, g.id);
      expect((await folders.index.locations(u, ids)).size).toBe(0);
      // The change log names every Email it touched, index for index with the uids.
      const log = await folders.changes.since(u, 0, 1000);
      if (log.tooOld) throw new Error('too old');
      const expunged = log.changes.flatMap((c) => c.entries).filter((e) => e.kind === 'expunge' && e.folder === INBOX);
      expect(expunged.flatMap((e) => e.emailIds!).sort()).toEqual([...ids].sort());
      for (const e of expunged) expect(e.uids!.map((uid) => emailIdOf(`${u}/b${uid - 1}`))).toEqual(e.emailIds);
    });

    it('threads a reply chain, a reply filed before its parent, and keeps subject-only and id-only matches apart', async () => {
      const u = await newUser();
      const at = (min: number) => `2026-03-01T10:${String(min).padStart(2, '0')}:00.000Z`;
      const lunch = await file(u, INBOX, `${u}/l1`, { id: 'lunch-1@a.example', subject: 'Lunch on Friday?', receivedAt: at(0) });
      const reply = await file(u, INBOX, `${u}/l2`, {
        id: 'lunch-2@b.example',
        subject: 'Re: Lunch on Friday?',
        inReplyTo: 'lunch-1@a.example',
        references: ['lunch-1@a.example'],
        receivedAt: at(5),
      });
      // A later reply that names only its grandparent, with list tag and a second prefix.
      const third = await file(u, INBOX, `${u}/l3`, {
        id: 'lunch-3@c.example',
        subject: '[team] RE: Fwd: Lunch on  Friday?',
        references: ['lunch-1@a.example', 'unknown@z.example'],
        receivedAt: at(9),
      });
      expect(reply.threadId).toBe(lunch.threadId);
      expect(third.threadId).toBe(lunch.threadId);

      // The reply is filed first; its parent joins it when it comes.
      const child = await file(u, INBOX, `${u}/p2`, {
        id: 'budget-2@b.example',
        subject: 'Re: Budget 2027',
        inReplyTo: 'budget-1@a.example',
        references: ['budget-0@a.example', 'budget-1@a.example'],
        receivedAt: at(20),
      });
      const parent = await file(u, INBOX, `${u}/p1`, { id: 'budget-1@a.example', subject: 'Budget 2027', receivedAt: at(15) });
      // And the grandparent, which only the child's References named.
      const grand = await file(u, INBOX, `${u}/p0`, { id: 'budget-0@a.example', subject: 'Budget 2027', receivedAt: at(10) });
      expect(parent.threadId).toBe(child.threadId);
      expect(grand.threadId).toBe(child.threadId);
      expect(child.threadId).not.toBe(lunch.threadId);
      // Thread order is receivedAt, not filing order.
      expect((await folders.index.thread(u, child.threadId)).emailIds).toEqual([grand.emailId, parent.emailId, child.emailId]);

      // Same subject, no reference either way: two threads.
      const hello1 = await file(u, INBOX, `${u}/h1`, { id: 'hello-1@a.example', subject: 'Hello' });
      const hello2 = await file(u, INBOX, `${u}/h2`, { id: 'hello-2@b.example', subject: 'Re: Hello' });
      expect(hello2.threadId).not.toBe(hello1.threadId);
      // A reference but another topic (RFC 8621 §3: the subject must match too): a new thread.
      const offTopic = await file(u, INBOX, `${u}/o1`, { id: 'other@b.example', subject: 'Car park closed', inReplyTo: 'lunch-1@a.example' });
      expect(offTopic.threadId).not.toBe(lunch.threadId);
      // No Message-ID at all: still filed, in a thread of its own.
      const bare = await file(u, INBOX, `${u}/n1`, { id: '', subject: 'Lunch on Friday?' });
      expect(bare.threadId).toMatch(/^T[0-9a-f]{24}$/);
      expect(bare.threadId).not.toBe(lunch.threadId);

      expect((await folders.index.thread(u, lunch.threadId)).emailIds).toEqual([lunch.emailId, reply.emailId, third.emailId]);
    });

    it('joins racing replies of one thread into one thread', async () => {
      const u = await newUser();
      const root = await file(u, INBOX, `${u}/r0`, { id: 'race-0@a.example', subject: 'Race' });
      // Ten replies filed at once, each naming a sibling that may not be there yet.
      const inputs = await Promise.all(
        Array.from({ length: 10 }, (_, i) =>
          storeMail(blobs, `${u}/r${i + 1}`, {
            id: `race-${i + 1}@b.example`,
            subject: 'Re: Race',
            references: ['race-0@a.example', `race-${((i + 1) % 10) + 1}@b.example`],
          }),
        ),
      );
      const results = await Promise.all(inputs.map((m) => folders.append(u, INBOX, m)));
      const threads = new Set(await Promise.all(results.map(async (r) => (await folders.get(u, INBOX, r.uid))!.threadId)));
      expect([...threads]).toEqual([root.threadId]);
      expect((await folders.index.thread(u, root.threadId)).emailIds).toHaveLength(11);
    });

    it('removes the index with the user (purge)', async () => {
      const u = await newUser();
      const mailboxes = new MailboxStore(tables, blobs);
      await file(u, INBOX, `${u}/x1`, { id: 'purge@x', subject: 'Purge' });
      await folders.ensureIndexed(u);
      await mailboxes.purge(u);
      expect((await tables.query(indexKeys.locations(u))).items).toEqual([]);
      expect((await tables.query(indexKeys.threads(u))).items).toEqual([]);
    });

    it('strips reply and forward markers to the base subject (RFC 8621 §3, RFC 5256 §2.1)', () => {
      expect(baseSubject('Re: Re[2]: FWD: [list] Aw: Budget   2027 (fwd)')).toBe('budget 2027');
      expect(baseSubject('[list] Budget 2027')).toBe('budget 2027');
      expect(baseSubject('Reply needed')).toBe('reply needed');
      expect(baseSubject('Re:')).toBe('');
    });
  });
}
