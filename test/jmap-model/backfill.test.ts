/**
 * Messages filed before the Email index get their locations and threads from the backfill:
 * on the data folder the single-folder code wrote (test/fixtures/single-folder-data), idempotent,
 * resumable after a crash, online beside deliveries and expunges, and threading old replies from
 * their raw headers (their summaries predate In-Reply-To and References).
 */
import { cp } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { emailIdOf } from '../../core/mailbox/email-ids.js';
import { FolderStore } from '../../core/mailbox/folders.js';
import { INBOX, indexKeys, mailboxKeys } from '../../core/mailbox/keys.js';
import { openStorage } from '../../core/storage/open.js';
import type { Storage } from '../../core/storage/ports.js';
import { Accounts } from '../../core/accounts/accounts.js';
import { tempDir } from '../support/tmp.js';
import { rawMail, storeMail } from './mail.js';

const FIXTURE = fileURLToPath(new URL('../fixtures/single-folder-data', import.meta.url));
const OLD = 'old@example.com';
let storage: Storage;
let folders: FolderStore;
let removeDir: () => Promise<void>;

beforeAll(async () => {
  const dir = await tempDir('tomlinson-backfill-');
  removeDir = () => dir.remove();
  const data = join(dir.path, 'data');
  await cp(FIXTURE, data, { recursive: true });
  storage = await openStorage(loadConfig({ TOMLINSON_DATA_DIR: data }), silentLogger);
  folders = new FolderStore(storage.tables, storage.mail);
});
afterAll(async () => {
  await storage?.close();
  await removeDir?.();
});

const inbox = async (user: string) => {
  const out = [];
  for await (const m of folders.entries(user, INBOX)) out.push(m);
  return out;
};

it('indexes the old mailbox once: every message gets a thread and a location, then a marker', async () => {
  const before = await inbox(OLD);
  expect(before.map((m) => m.uid)).toEqual([1, 3, 4]);
  expect(before.every((m) => m.threadId === undefined)).toBe(true);
  expect(await folders.index.isBackfilled(OLD)).toBe(false);
  const modseq = await folders.changes.allocated(OLD);

  expect(await folders.index.backfill(folders, OLD)).toBe(3);
  // Not a change a client sees: no MODSEQ taken.
  expect(await folders.changes.allocated(OLD)).toBe(modseq);
  const after = await inbox(OLD);
  expect(after.every((m) => /^T[0-9a-f]{24}$/.test(m.threadId ?? ''))).toBe(true);
  // Nothing else of a message changed: the backfill is not a change a client sees.
  expect(after.map((m) => ({ ...m, threadId: undefined }))).toEqual(before.map((m) => ({ ...m, threadId: undefined })));
  const locs = await folders.index.locations(
    OLD,
    after.map((m) => emailIdOf(m.blobKey)),
  );
  for (const m of after)
    expect(locs.get(emailIdOf(m.blobKey))).toEqual([
      { emailId: emailIdOf(m.blobKey), folderId: INBOX, uid: m.uid, threadId: m.threadId, receivedAt: m.receivedAt, size: m.size },
    ]);
  for (const m of after) expect((await folders.index.thread(OLD, m.threadId!)).emailIds).toEqual([emailIdOf(m.blobKey)]);
  expect(await folders.index.isBackfilled(OLD)).toBe(true);
  expect(await folders.index.backfill(folders, OLD)).toBe(0);
});

it('resumes after a crash: only what is left is indexed, what was done stays', async () => {
  const done = await inbox(OLD);
  // As if the process died after the first message: marker unwritten, later messages untouched.
  await storage.tables.delete(indexKeys.backfilled(OLD));
  const last = done[2]!;
  await storage.tables.update(mailboxKeys.message(OLD, last.uid), { set: { threadId: null } });
  await storage.tables.delete(indexKeys.location(OLD, emailIdOf(last.blobKey), INBOX, last.uid));
  expect(await folders.index.backfill(folders, OLD)).toBe(1);
  const again = await inbox(OLD);
  expect(again.slice(0, 2).map((m) => m.threadId)).toEqual(done.slice(0, 2).map((m) => m.threadId));
  expect(again[2]!.threadId).toMatch(/^T[0-9a-f]{24}$/);
  expect((await folders.index.locations(OLD, [emailIdOf(last.blobKey)])).get(emailIdOf(last.blobKey))).toHaveLength(1);
});

it('threads old replies from their raw headers and runs beside deliveries and expunges', async () => {
  const accounts = new Accounts(storage.tables, { scrypt: { ln: 10, r: 8, p: 1 } });
  const u = 'older@example.com';
  await accounts.addUser(u, 'password-123');
  // Items as the code before threads wrote them: summaries without In-Reply-To / References.
  const old = [
    { uid: 1, key: 'older/1', mail: { id: 'q1@x', subject: 'Quarterly numbers' } },
    { uid: 2, key: 'older/2', mail: { id: 'q2@x', subject: 'Re: Quarterly numbers', inReplyTo: 'q1@x', references: ['q1@x'] } },
    { uid: 3, key: 'older/3', mail: { id: 'q3@x', subject: 'Quarterly numbers' } },
    ...Array.from({ length: 12 }, (_, i) => ({ uid: 4 + i, key: `older/f${i}`, mail: { id: `f${i}@x`, subject: `Filler ${i}` } })),
  ];
  let bytes = 0;
  for (const o of old) {
    const raw = rawMail(o.mail);
    bytes += raw.length;
    await storage.mail.put(o.key, raw);
    await storage.tables.put({ ...mailboxKeys.blobRef(o.key), refs: 1 });
    const { uid, key } = o;
    await storage.tables.put({
      ...mailboxKeys.message(u, uid),
      uid,
      blobKey: key,
      size: raw.length,
      receivedAt: `2025-01-01T00:00:${String(uid).padStart(2, '0')}.000Z`,
      summary: { v: 1, subject: o.mail.subject, messageId: `<${o.mail.id}>` },
      flags: [],
      jobId: '',
    });
  }
  await storage.tables.put({ ...mailboxKeys.meta(u), count: old.length, bytes, uidNext: old.length + 1, uidValidity: 1700000000 });

  // Online: a delivery of a reply and an expunge while the backfill runs.
  const [count] = await Promise.all([
    folders.index.backfill(folders, u),
    storeMail(storage.mail, 'older/new', { id: 'q4@x', subject: 'Re: Quarterly numbers', references: ['q1@x', 'q2@x'] }).then((m) =>
      folders.append(u, INBOX, m),
    ),
    folders.expunge(u, INBOX, [10]),
  ]);
  expect(count).toBeGreaterThanOrEqual(old.length - 1);
  const after = await inbox(u);
  expect(after.map((m) => m.uid)).not.toContain(10);
  expect(after.every((m) => m.threadId)).toBe(true);
  const byKey = new Map(after.map((m) => [m.blobKey, m]));
  const q1 = byKey.get('older/1')!.threadId;
  expect(byKey.get('older/2')!.threadId).toBe(q1);
  expect(byKey.get('older/new')!.threadId).toBe(q1);
  // Same subject, no reference: its own thread.
  expect(byKey.get('older/3')!.threadId).not.toBe(q1);
  // Every message is located once; the expunged one nowhere.
  const ids = [...old.map((o) => emailIdOf(o.key)), emailIdOf('older/new')];
  const locs = await folders.index.locations(u, ids);
  expect(locs.has(emailIdOf('older/f6'))).toBe(false);
  expect([...locs.values()].every((l) => l.length === 1)).toBe(true);
  expect(locs.size).toBe(old.length);
});
