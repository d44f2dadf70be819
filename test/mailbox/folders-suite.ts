/**
 * The folder model through the Tables and Blobs ports on each adapter family: folders and their
 * hierarchy, special use made once under races, append, flags with UNCHANGEDSINCE, copy and move
 * sharing one blob, expunge, the per-user change log (changes since N, gaps, the horizon), quota
 * over every folder, and a mailbox written as the single-folder code wrote it read as INBOX.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Accounts } from '../../core/accounts/accounts.js';
import { LESSON_PK } from '../../core/mail/spam-learn.js';
import { emailIdOf } from '../../core/mailbox/email-ids.js';
import { FolderStore } from '../../core/mailbox/folders.js';
import { FolderError, folderKeys, INBOX, QuotaExceeded } from '../../core/mailbox/keys.js';
import { MailboxStore, mailboxKeys } from '../../core/mailbox/store.js';
import { isStorageError, type Blobs, type Tables } from '../../core/storage/ports.js';
import { FAMILIES, type FamilyTarget } from '../accounts/families.js';
import { blobExists } from '../support/blobs.js';

const FAST = { ln: 10, r: 8, p: 1 };

/** Runs the folder suite on one family. */
export function describeFolderStore(family: 'local' | 'aws'): void {
  const { name, open } = FAMILIES.find((f) => f.name === family)!;
  describe(`folder model on the ${name} family`, () => {
    let target: FamilyTarget;
    let tables: Tables;
    let blobs: Blobs;
    let folders: FolderStore;
    let mailboxes: MailboxStore;
    let accounts: Accounts;
    const pageSize = name === 'aws' ? 5 : 500;
    let n = 0;
    /** A new user with an account (and a quota when given). */
    const newUser = async (quota?: number) => {
      const u = `user${++n}@example.com`;
      await accounts.addUser(u, 'password-123');
      if (quota) await accounts.setQuota(u, quota);
      return u;
    };
    const input = (blobKey: string, size: number, extra: Partial<Parameters<FolderStore['append']>[2]> = {}) => ({
      blobKey,
      size,
      receivedAt: '2026-01-02T03:04:05.000Z',
      summary: { subject: `about ${blobKey}` },
      ...extra,
    });
    const refs = async (blobKey: string) => (await tables.get(mailboxKeys.blobRef(blobKey)))?.refs;

    beforeAll(async () => {
      target = await open();
      tables = target.storage.tables;
      blobs = target.storage.mail;
      accounts = new Accounts(tables, { scrypt: FAST });
      await accounts.addDomain('example.com');
      folders = new FolderStore(tables, blobs, { pageSize });
      mailboxes = new MailboxStore(tables, blobs, { pageSize });
    });
    afterAll(async () => target?.cleanup());

    it('reads a mailbox written by the single-folder code as INBOX, then keeps its counters right', async () => {
      const u = await newUser();
      // Items exactly as core/mailbox/store.ts wrote them before folders existed.
      await blobs.put('old/1', 'Subject: one\r\n\r\n1\r\n');
      await blobs.put('old/2', 'Subject: two\r\n\r\n2\r\n');
      await tables.put({ ...mailboxKeys.meta(u), count: 2, bytes: 30, uidNext: 8, uidValidity: 1700000000 });
      for (const [uid, key, flags] of [
        [3, 'old/1', ['\\Seen']],
        [7, 'old/2', []],
      ] as const) {
        await tables.put({
          ...mailboxKeys.message(u, uid),
          uid,
          blobKey: key,
          size: 15,
          receivedAt: '2025-01-01T00:00:00.000Z',
          summary: { subject: key },
          flags: [...flags],
          jobId: `old-${uid}`,
        });
        await tables.put({ ...mailboxKeys.blobRef(key), refs: 1 });
      }
      expect(await folders.list(u)).toEqual([{ id: INBOX, name: INBOX, parentId: '', subscribed: true }]);
      expect(await folders.status(u, INBOX)).toEqual({ count: 2, unseen: 1, bytes: 30, uidNext: 8, uidValidity: 1700000000, highestModSeq: 0 });
      expect(await folders.usage(u)).toEqual({ bytes: 30, count: 2 });
      const page = await folders.messages(u, INBOX);
      expect(page.items.map((m) => [m.uid, m.flags, m.modseq])).toEqual([
        [3, ['\\Seen'], 0],
        [7, [], 0],
      ]);
      // POP3's view is what it was.
      expect((await mailboxes.list(u)).map((e) => e.uid)).toEqual([3, 7]);
      expect(await mailboxes.meta(u)).toEqual({ count: 2, bytes: 30, uidNext: 8, uidValidity: 1700000000 });
      // New writes keep counting from there.
      await blobs.put('old/3', 'x');
      expect((await mailboxes.deliver(u, { jobId: 'old-new', blobKey: 'old/3', size: 5, receivedAt: '2026-01-01T00:00:00.000Z', summary: {} })).uid).toBe(8);
      await mailboxes.remove(u, [3]);
      const s = await folders.status(u, INBOX);
      expect(s).toMatchObject({ count: 2, unseen: 2, bytes: 20, uidNext: 9 });
      expect(s.highestModSeq).toBeGreaterThan(0);
      expect(await folders.usage(u)).toEqual({ bytes: 20, count: 2 });
      expect(await blobExists(blobs, 'old/1')).toBe(false);
      const log = await folders.changes.since(u, 0);
      expect(log.tooOld).toBe(false);
      if (!log.tooOld)
        expect(log.changes.flatMap((c) => c.entries)).toEqual([
          // The entries name the Emails (and the thread of a message filed with one).
          { kind: 'append', folder: INBOX, uids: [8], emailIds: [emailIdOf('old/3')], threadIds: [(await folders.get(u, INBOX, 8))!.threadId] },
          { kind: 'expunge', folder: INBOX, uids: [3], emailIds: [emailIdOf('old/1')] },
        ]);
    });

    it('creates folders with their hierarchy, finds them by name and refuses bad or taken names', async () => {
      const u = await newUser();
      const c = await folders.create(u, 'Projects/2026/Q1');
      expect(c.name).toBe('Projects/2026/Q1');
      const names = (await folders.list(u)).map((f) => f.name);
      expect(names).toEqual(['INBOX', 'Projects', 'Projects/2026', 'Projects/2026/Q1']);
      expect((await folders.find(u, 'Projects/2026/Q1'))?.id).toBe(c.id);
      expect((await folders.find(u, 'inbox'))?.id).toBe(INBOX);
      expect(await folders.find(u, 'Projects/2027')).toBeUndefined();
      const sub = await folders.create(u, 'inbox/Lists/Ünïcødé 📬');
      expect(sub.name).toBe('INBOX/Lists/Ünïcødé 📬');
      await expect(folders.create(u, 'Projects/2026')).rejects.toMatchObject({ code: 'AlreadyExists' });
      await expect(folders.create(u, 'INBOX')).rejects.toMatchObject({ code: 'AlreadyExists' });
      for (const bad of ['', 'a//b', 'star*', 'per%cent', 'tab\there']) await expect(folders.create(u, bad)).rejects.toBeInstanceOf(FolderError);
      const s = await folders.status(u, c.id);
      expect(s).toMatchObject({ count: 0, unseen: 0, bytes: 0, uidNext: 1 });
      expect(s.highestModSeq).toBeGreaterThan(0);
    });

    it('gives a folder made again under the name of a deleted one another UIDVALIDITY, even in the same second', async () => {
      const u = await newUser();
      const a = await folders.create(u, 'Again');
      const va = (await folders.status(u, a.id)).uidValidity;
      await folders.delete(u, a.id);
      const b = await folders.create(u, 'Again');
      expect(b.id).not.toBe(a.id);
      expect((await folders.status(u, b.id)).uidValidity).not.toBe(va);
    });

    it('makes each special-use folder once, however many processes ask at the same time', async () => {
      const u = await newUser();
      const other = new FolderStore(tables, blobs, { pageSize });
      const got = await Promise.all([...Array.from({ length: 4 }, () => folders.ensureSpecialUse(u, '\\Sent')), other.ensureSpecialUse(u, '\\Sent')]);
      expect(new Set(got.map((f) => f.id)).size).toBe(1);
      expect(got[0]).toMatchObject({ name: 'Sent', specialUse: '\\Sent' });
      const trash = await Promise.all([folders.ensureSpecialUse(u, '\\Trash'), other.ensureSpecialUse(u, '\\Trash')]);
      expect(trash[0].id).toBe(trash[1].id);
      expect((await folders.list(u)).map((f) => [f.name, f.specialUse])).toEqual([
        ['INBOX', undefined],
        ['Sent', '\\Sent'],
        ['Trash', '\\Trash'],
      ]);
      // Two processes creating one name: one folder, the other hears it exists.
      const made = await Promise.allSettled([folders.create(u, 'Same/Name'), other.create(u, 'Same/Name'), other.create(u, 'Same/Name')]);
      expect(made.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
      for (const r of made) if (r.status === 'rejected') expect(r.reason).toMatchObject({ code: 'AlreadyExists' });
      expect((await folders.list(u)).filter((f) => f.name.startsWith('Same')).map((f) => f.name)).toEqual(['Same', 'Same/Name']);
      // A user folder already called Archive becomes the archive.
      const mine = await folders.create(u, 'Archive');
      expect((await folders.ensureSpecialUse(u, '\\Archive')).id).toBe(mine.id);
    });

    it('renames a folder with everything below it; ids and uids stay', async () => {
      const u = await newUser();
      const parent = await folders.create(u, 'Clients');
      const child = await folders.create(u, 'Clients/Acme');
      await blobs.put('ren/1', 'x');
      const { uid } = await folders.append(u, child.id, input('ren/1', 1));
      const validity = (await folders.status(u, child.id)).uidValidity;
      const renamed = await folders.rename(u, parent.id, 'Work/Customers');
      expect(renamed).toMatchObject({ id: parent.id, name: 'Work/Customers' });
      expect((await folders.list(u)).map((f) => f.name)).toEqual(['INBOX', 'Work', 'Work/Customers', 'Work/Customers/Acme']);
      expect((await folders.find(u, 'Work/Customers/Acme'))?.id).toBe(child.id);
      expect(await folders.find(u, 'Clients')).toBeUndefined();
      expect((await folders.get(u, child.id, uid))?.blobKey).toBe('ren/1');
      expect((await folders.status(u, child.id)).uidValidity).toBe(validity);
      await expect(folders.rename(u, parent.id, 'Work/Customers/Acme/Deeper')).rejects.toMatchObject({ code: 'BadName' });
      await expect(folders.rename(u, parent.id, 'Work')).rejects.toMatchObject({ code: 'AlreadyExists' });
      await expect(folders.rename(u, INBOX, 'Elsewhere')).rejects.toMatchObject({ code: 'Refused' });
      // The old name is free again.
      expect((await folders.create(u, 'Clients')).id).not.toBe(parent.id);
    });

    it('deletes a folder with its messages, releasing blob references; refuses INBOX and parents', async () => {
      const u = await newUser();
      const f = await folders.create(u, 'Old');
      await folders.create(u, 'Parent/Child');
      const parent = (await folders.find(u, 'Parent'))!;
      await blobs.put('del/shared', 'x');
      await blobs.put('del/only', 'x');
      await folders.append(u, INBOX, input('del/shared', 10));
      for (let i = 0; i < 12; i++) await folders.append(u, f.id, input(i < 2 ? 'del/shared' : 'del/only', 10));
      expect(await refs('del/shared')).toBe(3);
      expect(await folders.usage(u)).toEqual({ bytes: 130, count: 13 });
      await folders.delete(u, f.id);
      expect(await blobExists(blobs, 'del/only')).toBe(false);
      expect(await blobExists(blobs, 'del/shared')).toBe(true);
      expect(await refs('del/shared')).toBe(1);
      expect(await folders.usage(u)).toEqual({ bytes: 10, count: 1 });
      expect((await folders.list(u)).map((f) => f.name)).toEqual(['INBOX', 'Parent', 'Parent/Child']);
      await expect(folders.status(u, f.id)).rejects.toMatchObject({ code: 'NoSuchFolder' });
      await expect(folders.append(u, f.id, input('del/shared', 1))).rejects.toMatchObject({ code: 'NoSuchFolder' });
      await expect(folders.delete(u, INBOX)).rejects.toMatchObject({ code: 'Refused' });
      await expect(folders.delete(u, parent.id)).rejects.toMatchObject({ code: 'HasChildren' });
    });

    it('finishes a deletion a crash left half done when the folders are next listed', async () => {
      const u = await newUser();
      const f = await folders.create(u, 'Doomed');
      await blobs.put('crash/1', 'x');
      await folders.append(u, f.id, input('crash/1', 4));
      // The first step of delete() committed, then the process died.
      await tables.transact([{ update: folderKeys.folder(u, f.id), changes: { set: { deleting: true } } }, { delete: folderKeys.name(u, '', 'Doomed') }]);
      expect((await folders.list(u)).map((x) => x.name)).toEqual(['INBOX']);
      expect(await blobExists(blobs, 'crash/1')).toBe(false);
      expect(await tables.get(folderKeys.folder(u, f.id))).toBeUndefined();
      expect(await folders.usage(u)).toEqual({ bytes: 0, count: 0 });
      expect((await folders.create(u, 'Doomed')).id).not.toBe(f.id);
    });

    it('subscribes and unsubscribes folders, INBOX included', async () => {
      const u = await newUser();
      const f = await folders.create(u, 'Lists');
      await folders.subscribe(u, f.id, false);
      await folders.subscribe(u, INBOX, false);
      expect((await folders.list(u)).map((x) => [x.name, x.subscribed])).toEqual([
        ['INBOX', false],
        ['Lists', false],
      ]);
      await folders.subscribe(u, INBOX, true);
      expect((await folders.list(u))[0]!.subscribed).toBe(true);
      await expect(folders.subscribe(u, 'nope', true)).rejects.toMatchObject({ code: 'NoSuchFolder' });
    });

    it('appends durably with flags, once per key, and counts unseen messages', async () => {
      const u = await newUser();
      const f = await folders.ensureSpecialUse(u, '\\Drafts');
      await blobs.put('app/1', 'x');
      const a = await folders.append(u, f.id, input('app/1', 11, { key: 'imap-append-1', flags: ['\\seen', '\\Draft', '$Work', '$work'] }));
      expect(a).toMatchObject({ uid: 1, duplicate: false });
      expect(await folders.append(u, f.id, input('app/1', 11, { key: 'imap-append-1' }))).toEqual({ uid: 1, modseq: a.modseq, duplicate: true });
      await folders.append(u, f.id, input('app/1', 12));
      const m = await folders.get(u, f.id, 1);
      expect(m).toMatchObject({ uid: 1, size: 11, receivedAt: '2026-01-02T03:04:05.000Z', flags: ['\\Seen', '\\Draft', '$Work'], modseq: a.modseq });
      expect(await folders.status(u, f.id)).toMatchObject({ count: 2, unseen: 1, bytes: 23, uidNext: 3 });
      expect(await refs('app/1')).toBe(2);
    });

    it('gives concurrent appends to one folder distinct uids that ascend with their MODSEQs, exact counters and a growing HIGHESTMODSEQ', async () => {
      const u = await newUser();
      const f = await folders.create(u, 'Busy');
      await blobs.put('conc/1', 'x');
      const k = name === 'aws' ? 4 : 10;
      const got = await Promise.all(Array.from({ length: k }, (_, i) => folders.append(u, f.id, input('conc/1', 1 + i))));
      expect(new Set(got.map((g) => g.uid)).size).toBe(k);
      // Commit order is UID order: a client that has seen UID n never learns of a smaller new one.
      const byModseq = [...got].sort((a, b) => a.modseq - b.modseq).map((g) => g.uid);
      expect(byModseq).toEqual([...byModseq].sort((a, b) => a - b));
      const s = await folders.status(u, f.id);
      expect(s).toMatchObject({ count: k, unseen: k, bytes: (k * (k + 1)) / 2 });
      expect(s.highestModSeq).toBe(Math.max(...got.map((g) => g.modseq)));
      expect(await refs('conc/1')).toBe(k);
    }, 60_000);

    it('stores flags (+, -, replace) with new MODSEQs, unseen counts and UNCHANGEDSINCE', async () => {
      const u = await newUser();
      await blobs.put('flag/1', 'x');
      const uids: number[] = [];
      for (let i = 0; i < 3; i++) uids.push((await folders.append(u, INBOX, input('flag/1', 1))).uid);
      const added = await folders.storeFlags(u, INBOX, uids, { mode: 'add', flags: ['\\Seen', '$Important'] });
      expect(added.updated.map((x) => x.flags)).toEqual([
        ['\\Seen', '$Important'],
        ['\\Seen', '$Important'],
        ['\\Seen', '$Important'],
      ]);
      expect(new Set(added.updated.map((x) => x.modseq)).size).toBe(1);
      expect(await folders.status(u, INBOX)).toMatchObject({ unseen: 0, highestModSeq: added.updated[0]!.modseq });
      // Nothing to change: no new MODSEQ.
      const none = await folders.storeFlags(u, INBOX, uids, { mode: 'add', flags: ['\\seen'] });
      expect(none).toEqual({ updated: [], modified: [] });
      const since = added.updated[0]!.modseq;
      await folders.storeFlags(u, INBOX, [uids[0]!], { mode: 'remove', flags: ['\\Seen'] });
      // UNCHANGEDSINCE: uid 1 changed after `since`, so it is left alone and reported.
      const cond = await folders.storeFlags(u, INBOX, [...uids, 999], { mode: 'replace', flags: ['\\Flagged'], unchangedSince: since });
      expect(cond.modified).toEqual([uids[0]]);
      expect(cond.updated.map((x) => x.uid)).toEqual([uids[1], uids[2]]);
      expect((await folders.get(u, INBOX, uids[0]!))?.flags).toEqual(['$Important']);
      expect((await folders.get(u, INBOX, uids[1]!))?.flags).toEqual(['\\Flagged']);
      expect(await folders.status(u, INBOX)).toMatchObject({ unseen: 3 });
    });

    it('changes flags of a range with gaps and of scattered uids, logs each batch, and re-reads a batch a racing change made stale', async () => {
      const u = await newUser();
      await blobs.put('flags/r', 'x');
      const f = await folders.create(u, 'Ranges');
      const uids: number[] = [];
      for (let i = 0; i < 12; i++) uids.push((await folders.append(u, f.id, input('flags/r', 1))).uid);
      await folders.expunge(u, f.id, [uids[2]!, uids[3]!, uids[6]!]);
      const live = uids.filter((_, i) => ![2, 3, 6].includes(i));
      const log = async (since: number) => {
        const r = await folders.changes.since(u, since);
        if (r.tooOld) throw new Error('too old');
        return r.changes.flatMap((c) => c.entries);
      };
      const before = (await folders.status(u, f.id)).highestModSeq;
      // A dense range (read as one range, the expunged uids in it skipped).
      const dense = await folders.storeFlags(u, f.id, [...uids].reverse(), { mode: 'add', flags: ['\\Seen'] });
      expect(dense.updated.map((x) => x.uid).sort((a, b) => a - b)).toEqual(live);
      expect(await folders.status(u, f.id)).toMatchObject({ count: 9, unseen: 0 });
      expect(await log(before)).toEqual([
        { kind: 'flags', folder: f.id, uids: live, emailIds: live.map(() => emailIdOf('flags/r')), threadIds: expect.any(Array) },
      ]);
      // Scattered uids (read one by one), one of them never there.
      const mid = (await folders.status(u, f.id)).highestModSeq;
      const sparse = await folders.storeFlags(u, f.id, [uids[11]!, 100_000, uids[1]!], { mode: 'remove', flags: ['\\SEEN'] });
      expect(sparse.updated.map((x) => x.uid).sort((a, b) => a - b)).toEqual([uids[1], uids[11]]);
      expect(await folders.status(u, f.id)).toMatchObject({ unseen: 2, highestModSeq: sparse.updated[0]!.modseq });
      expect((await log(mid)).map((e) => e.uids)).toEqual([[uids[1], uids[11]]]);
      // Another session changes a message between this change's read and its write: the write's
      // MODSEQ condition fails, the batch is read again, and both changes are kept.
      let raced = false;
      const racy = new Proxy(tables, {
        get(t, name) {
          if (name === 'transact')
            return async (ops: Parameters<Tables['transact']>[0]) => {
              if (!raced) {
                raced = true;
                await folders.storeFlags(u, f.id, [uids[0]!], { mode: 'add', flags: ['$Racer'] });
              }
              return t.transact(ops);
            };
          const v = Reflect.get(t, name) as unknown;
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
        },
      });
      const other = new FolderStore(racy, blobs, { pageSize });
      const r = await other.storeFlags(u, f.id, live, { mode: 'add', flags: ['\\Flagged'] });
      expect(raced).toBe(true);
      expect(r.updated).toHaveLength(live.length);
      expect((await folders.get(u, f.id, uids[0]!))?.flags).toEqual(['\\Seen', '$Racer', '\\Flagged']);
      expect((await folders.get(u, f.id, uids[0]!))?.modseq).toBe(r.updated[0]!.modseq);
      expect((await folders.get(u, f.id, uids[1]!))?.flags).toEqual(['\\Flagged']);
      expect((await folders.get(u, f.id, uids[0]!))?.summary).toEqual({ subject: 'about flags/r' });
      expect(await folders.status(u, f.id)).toMatchObject({ count: 9, unseen: 2, highestModSeq: r.updated[0]!.modseq });
    });

    it('copies and moves sharing one blob; the blob goes with its last reference', async () => {
      const u = await newUser();
      const a = await folders.create(u, 'A');
      const b = await folders.create(u, 'B');
      await blobs.put('cp/1', 'Subject: cp\r\n\r\n');
      const { uid } = await folders.append(u, INBOX, input('cp/1', 16, { flags: ['\\Seen'] }));
      const copied = await folders.copy(u, INBOX, [uid, 4242], a.id);
      expect(copied.pairs).toEqual([[uid, 1]]);
      expect(await refs('cp/1')).toBe(2);
      expect(await folders.get(u, a.id, 1)).toMatchObject({ blobKey: 'cp/1', flags: ['\\Seen'], size: 16, receivedAt: '2026-01-02T03:04:05.000Z' });
      expect(await folders.usage(u)).toEqual({ bytes: 32, count: 2 });
      const moved = await folders.move(u, a.id, [1], b.id);
      expect(moved.pairs).toEqual([[1, 1]]);
      expect(await refs('cp/1')).toBe(2);
      expect(await folders.get(u, a.id, 1)).toBeUndefined();
      expect(await folders.status(u, a.id)).toMatchObject({ count: 0, bytes: 0, uidNext: 2 });
      expect(await folders.status(u, b.id)).toMatchObject({ count: 1, bytes: 16, unseen: 0 });
      expect(await folders.usage(u)).toEqual({ bytes: 32, count: 2 });
      await folders.expunge(u, INBOX, [uid]);
      expect(await blobExists(blobs, 'cp/1')).toBe(true);
      expect(await refs('cp/1')).toBe(1);
      await folders.expunge(u, b.id, [1]);
      expect(await blobExists(blobs, 'cp/1')).toBe(false);
      expect(await tables.get(mailboxKeys.blobRef('cp/1'))).toBeUndefined();
      expect(await folders.usage(u)).toEqual({ bytes: 0, count: 0 });
    });

    it('moves and copies many messages in batches', async () => {
      const u = await newUser();
      const f = await folders.create(u, 'Many');
      await blobs.put('many/1', 'x');
      const uids: number[] = [];
      for (let i = 0; i < 23; i++) uids.push((await folders.append(u, INBOX, input('many/1', 2))).uid);
      const moved = await folders.move(u, INBOX, uids, f.id);
      expect(moved.pairs.map(([, d]) => d)).toEqual(Array.from({ length: 23 }, (_, i) => i + 1));
      expect(await folders.status(u, INBOX)).toMatchObject({ count: 0, bytes: 0 });
      expect(await folders.status(u, f.id)).toMatchObject({ count: 23, bytes: 46, unseen: 23 });
      expect(await refs('many/1')).toBe(23);
      const all: number[] = [];
      let cursor: string | undefined;
      do {
        const page = await folders.messages(u, f.id, { from: 3, to: 20, limit: 7, cursor });
        all.push(...page.items.map((m) => m.uid));
        cursor = page.cursor;
      } while (cursor);
      expect(all).toEqual(Array.from({ length: 18 }, (_, i) => i + 3));
    }, 60_000);

    it('records a spam lesson in the transaction of each batch moved or copied into Junk, and a ham lesson out of it (not into Trash)', async () => {
      const u = await newUser();
      const junk = await folders.ensureSpecialUse(u, '\\Junk');
      const trash = await folders.ensureSpecialUse(u, '\\Trash');
      const other = await folders.create(u, 'Other');
      const lessons = async () => (await tables.query(LESSON_PK, { range: { beginsWith: `${u}#` } })).items;
      await Promise.all([0, 1, 2].map((i) => blobs.put(`lesson/${i}`, 'x')));
      const uids: number[] = [];
      for (let i = 0; i < 11; i++) uids.push((await folders.append(u, INBOX, input(`lesson/${i % 3}`, 2))).uid);
      // Not Junk: nothing to learn.
      await folders.move(u, INBOX, uids.slice(0, 2), other.id);
      expect(await lessons()).toEqual([]);
      // Into Junk: one lesson per batch (one message fewer per batch than a plain move, within 25 writes).
      await folders.move(u, other.id, [1, 2], junk.id);
      const moved = await folders.move(u, INBOX, uids.slice(2), junk.id);
      expect(moved.pairs).toHaveLength(9);
      const spam = await lessons();
      expect(spam.map((l) => l.kind)).toEqual(['spam', 'spam', 'spam', 'spam']);
      expect(new Set(spam.flatMap((l) => l.blobKeys as string[]))).toEqual(new Set(['lesson/0', 'lesson/1', 'lesson/2']));
      for (const l of spam) await tables.delete(l);
      // Junk to Trash teaches nothing; Junk to INBOX teaches ham; a copy into Junk teaches spam.
      await folders.move(u, junk.id, [moved.pairs[0]![1]], trash.id);
      expect(await lessons()).toEqual([]);
      const back = await folders.move(u, junk.id, [moved.pairs[1]![1]], INBOX);
      await folders.copy(u, INBOX, [back.pairs[0]![1]], junk.id);
      expect((await lessons()).map((l) => l.kind).sort()).toEqual(['ham', 'spam']);
    }, 60_000);

    it('counts every folder against the quota: append, copy and delivery refuse past it', async () => {
      const u = await newUser(100);
      const f = await folders.create(u, 'Kept');
      await blobs.put('q/1', 'x');
      await folders.append(u, f.id, input('q/1', 60));
      await expect(
        mailboxes.deliver(u, { jobId: 'q-deliver', blobKey: 'q/1', size: 41, receivedAt: '2026-01-01T00:00:00.000Z', summary: {} }),
      ).rejects.toBeInstanceOf(QuotaExceeded);
      expect(await mailboxes.usedBytes(u)).toBe(60);
      const { uid } = await folders.append(u, INBOX, input('q/1', 30));
      await expect(folders.append(u, f.id, input('q/1', 11))).rejects.toBeInstanceOf(QuotaExceeded);
      await expect(folders.copy(u, INBOX, [uid], f.id)).rejects.toBeInstanceOf(QuotaExceeded);
      expect(await folders.status(u, f.id)).toMatchObject({ count: 1, bytes: 60 });
      // A move takes no room.
      await folders.move(u, INBOX, [uid], f.id);
      expect(await folders.usage(u)).toEqual({ bytes: 90, count: 2 });
      expect(await refs('q/1')).toBe(2);
    });

    // Regression: the watermark was only ever updated conditionally on a smaller value, which an
    // absent item never satisfies, so it was never made and every position() scanned the log from 0.
    it('keeps the settled position in a watermark item, so position() reads only the tail', async () => {
      const u = await newUser();
      await blobs.put('mark/1', 'x');
      await mailboxes.deliver(u, { jobId: 'mark-1', blobKey: 'mark/1', size: 1, receivedAt: '2026-01-01T00:00:00.000Z', summary: {} });
      const first = await folders.changes.position(u);
      expect(first).toBeGreaterThan(0);
      expect((await tables.get(folderKeys.watermark(u)))?.modseq).toBe(first);
      await mailboxes.deliver(u, { jobId: 'mark-2', blobKey: 'mark/1', size: 1, receivedAt: '2026-01-01T00:00:00.000Z', summary: {} });
      const second = await folders.changes.position(u);
      expect(second).toBeGreaterThan(first);
      expect((await tables.get(folderKeys.watermark(u)))?.modseq).toBe(second);
    });

    it('logs every change under one MODSEQ counter per user and reads changes since N', async () => {
      const u = await newUser();
      await blobs.put('log/1', 'x');
      const start = await folders.changes.since(u, 0);
      expect(start).toEqual({ tooOld: false, changes: [], modseq: 0, more: false });
      const f = await folders.create(u, 'Log');
      const d = await mailboxes.deliver(u, { jobId: 'log-1', blobKey: 'log/1', size: 1, receivedAt: '2026-01-01T00:00:00.000Z', summary: {} });
      const mid = await folders.changes.since(u, 0);
      if (mid.tooOld) throw new Error('too old');
      const named = { emailIds: [emailIdOf('log/1')], threadIds: [(await folders.get(u, INBOX, d.uid))!.threadId] };
      expect(named.threadIds[0]).toMatch(/^T[0-9a-f]{24}$/);
      await folders.storeFlags(u, INBOX, [d.uid], { mode: 'add', flags: ['\\Seen'] });
      await folders.move(u, INBOX, [d.uid], f.id);
      await folders.rename(u, f.id, 'Logged');
      await mailboxes.remove(u, [12345]); // nothing there: nothing logged
      await folders.expunge(u, f.id, [1]);
      await folders.delete(u, f.id);
      const after = await folders.changes.since(u, mid.modseq);
      if (after.tooOld) throw new Error('too old');
      expect(after.changes.map((c) => c.entries)).toEqual([
        [{ kind: 'flags', folder: INBOX, uids: [d.uid], ...named }],
        [
          { kind: 'expunge', folder: INBOX, uids: [d.uid], ...named },
          { kind: 'append', folder: f.id, uids: [1], ...named, copied: true },
        ],
        [{ kind: 'folder-rename', folder: f.id }],
        [{ kind: 'expunge', folder: f.id, uids: [1], ...named }],
        [{ kind: 'folder-delete', folder: f.id }],
      ]);
      expect(after.changes.map((c) => c.modseq)).toEqual(Array.from({ length: 5 }, (_, i) => mid.modseq + 1 + i));
      expect(mid.changes.map((c) => c.entries[0]!.kind)).toEqual(['folder-create', 'append']);
      expect(await folders.changes.since(u, after.modseq)).toEqual({ tooOld: false, changes: [], modseq: after.modseq, more: false });
      const paged = await folders.changes.since(u, 0, 2);
      expect(paged).toMatchObject({ tooOld: false, modseq: 2, more: true });
      expect(await folders.changes.since(u, after.modseq + 50)).toEqual({ tooOld: true });
    });

    it('waits for a young gap in the log, closes an old one, and a writer cannot commit behind a closed gap', async () => {
      const u = await newUser();
      await blobs.put('gap/1', 'x');
      const patient = new FolderStore(tables, blobs, { pageSize });
      const closer = new FolderStore(tables, blobs, { pageSize, changeLog: { gapGraceMs: 0 } });
      const first = await folders.append(u, INBOX, input('gap/1', 1));
      const held = await folders.changes.allocate(u); // a writer that has not committed (or died)
      const later = await folders.append(u, INBOX, input('gap/1', 1));
      const young = await patient.changes.since(u, first.modseq);
      expect(young).toEqual({ tooOld: false, changes: [], modseq: first.modseq, more: true });
      const closed = await closer.changes.since(u, first.modseq);
      if (closed.tooOld) throw new Error('too old');
      expect(closed.changes.map((c) => c.modseq)).toEqual([later.modseq]);
      expect(closed.modseq).toBe(later.modseq);
      const late = closer.changes.op(u, held, [{ kind: 'append', folder: INBOX, uids: [99] }]);
      await expect(tables.transact([late])).rejects.toSatisfy((e: unknown) => isStorageError(e, 'ConditionFailed'));
    });

    it('answers "too old" once the change a client knows is past the horizon', async () => {
      const u = await newUser();
      await blobs.put('hz/1', 'x');
      const short = new FolderStore(tables, blobs, { pageSize, changeLog: { horizonSeconds: 1 } });
      const a = await short.append(u, INBOX, input('hz/1', 1));
      expect((await short.changes.since(u, a.modseq)).tooOld).toBe(false);
      await new Promise((r) => setTimeout(r, 2_100));
      const b = await short.append(u, INBOX, input('hz/1', 1));
      expect(await short.changes.since(u, a.modseq)).toEqual({ tooOld: true });
      expect(await short.changes.since(u, 0)).toEqual({ tooOld: true });
      expect(await short.changes.since(u, b.modseq)).toMatchObject({ tooOld: false, changes: [] });
    });

    it('purges every folder of a removed user with the INBOX', async () => {
      const u = await newUser();
      const f = await folders.create(u, 'Gone/Too');
      await blobs.put('purge/1', 'x');
      await mailboxes.deliver(u, { jobId: 'purge-1', blobKey: 'purge/1', size: 3, receivedAt: '2026-01-01T00:00:00.000Z', summary: {} });
      await folders.copy(u, INBOX, [1], f.id);
      expect(await mailboxes.purge(u)).toBe(1);
      expect(await blobExists(blobs, 'purge/1')).toBe(false);
      expect((await tables.query(`MBX#${u}`)).items).toEqual([]);
      expect((await tables.query(folderKeys.partition(u, f.id))).items).toEqual([]);
    });
  });
}
