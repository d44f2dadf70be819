/**
 * Thread/get and Thread/changes (RFC 8621 §3, RFC 8620 §5.1–5.2) called as the engine calls
 * them, with a JmapContext over real local storage. The engine itself (HTTP, result references)
 * is another part; here only its context is built, and `blobs`/`call`, which threads never use,
 * refuse.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { emailIdOf } from '../../core/mailbox/email-ids.js';
import { FolderStore } from '../../core/mailbox/folders.js';
import { INBOX } from '../../core/mailbox/keys.js';
import { openStorage } from '../../core/storage/open.js';
import type { Storage } from '../../core/storage/ports.js';
import { MethodError, type JmapContext, type JsonObject } from '../../containers/web/jmap/types.js';
import { threadMethods } from '../../containers/web/jmap/thread.js';
import { tempDir } from '../support/tmp.js';
import { storeMail, type TestMail } from './mail.js';

const USER = 'tess@example.com';
let storage: Storage;
let folders: FolderStore;
let ctx: JmapContext;
let removeDir: () => Promise<void>;

beforeAll(async () => {
  const dir = await tempDir('tomlinson-jmap-thread-');
  removeDir = () => dir.remove();
  const config = loadConfig({ TOMLINSON_DATA_DIR: dir.path });
  storage = await openStorage(config, silentLogger);
  const accounts = new Accounts(storage.tables, { scrypt: { ln: 10, r: 8, p: 1 } });
  await accounts.addDomain('example.com');
  await accounts.addUser(USER, 'password-123');
  folders = new FolderStore(storage.tables, storage.mail);
  const refuse = () => Promise.reject(new Error('not used by Thread methods'));
  ctx = {
    user: USER,
    accountId: 'A0123456789abcdef01234567',
    config,
    storage,
    folders,
    blobs: { get: refuse, put: refuse },
    log: silentLogger,
    createdIds: new Map(),
    followUps: [],
    call: refuse,
  };
});
afterAll(async () => {
  await storage?.close();
  await removeDir?.();
});

const call = (name: string, args: JsonObject) => threadMethods.methods[name]!({ accountId: ctx.accountId, ...args }, ctx);
const fails = async (name: string, args: JsonObject): Promise<string> => {
  try {
    await call(name, args);
  } catch (e) {
    if (e instanceof MethodError) return e.type;
    throw e;
  }
  throw new Error(`${name} did not fail`);
};
const file = async (key: string, m: TestMail) => {
  const r = await folders.append(USER, INBOX, await storeMail(storage.mail, key, m));
  return { uid: r.uid, emailId: emailIdOf(key), threadId: (await folders.get(USER, INBOX, r.uid))!.threadId! };
};

it('gets threads with their Emails oldest first, and reports unknown ids as notFound', async () => {
  const a = await file('t/a', { id: 'a@x', subject: 'Plan', receivedAt: '2026-03-01T09:00:00.000Z' });
  const b = await file('t/b', { id: 'b@x', subject: 'Re: Plan', inReplyTo: 'a@x', receivedAt: '2026-03-01T08:00:00.000Z' });
  const r = await call('Thread/get', { ids: [a.threadId, 'Tffffffffffffffffffffffff', 'not-an-id'] });
  expect(r).toEqual({
    accountId: ctx.accountId,
    state: expect.stringMatching(/^\d+$/) as string,
    list: [{ id: a.threadId, emailIds: [b.emailId, a.emailId] }],
    notFound: ['Tffffffffffffffffffffffff', 'not-an-id'],
  });
  expect(await call('Thread/get', { ids: [a.threadId], properties: ['id'] })).toMatchObject({ list: [{ id: a.threadId }] });
  expect(await fails('Thread/get', { ids: [a.threadId], properties: ['subject'] })).toBe('invalidArguments');
  expect(await fails('Thread/get', { ids: 'x' })).toBe('invalidArguments');
  expect(await fails('Thread/get', { ids: null })).toBe('requestTooLarge');
});

it('reports created, updated and destroyed threads since a state, in pages of maxChanges', async () => {
  const old = await file('c/old', { id: 'old@x', subject: 'Old topic' });
  const gone = await file('c/gone', { id: 'gone@x', subject: 'Going' });
  const { state } = (await call('Thread/get', { ids: [old.threadId] })) as { state: string };

  await file('c/old-reply', { id: 'old-2@x', subject: 'Re: Old topic', references: ['old@x'] });
  const fresh = await file('c/new', { id: 'new@x', subject: 'New topic' });
  await folders.expunge(USER, INBOX, [gone.uid]);
  // A flag change leaves threads as they are.
  await folders.storeFlags(USER, INBOX, [old.uid], { mode: 'add', flags: ['\\Seen'] });

  const all = await call('Thread/changes', { sinceState: state });
  expect(all).toMatchObject({ oldState: state, hasMoreChanges: false, created: [fresh.threadId], updated: [old.threadId], destroyed: [gone.threadId] });
  const end = (all as { newState: string }).newState;
  expect(await call('Thread/changes', { sinceState: end })).toMatchObject({ newState: end, created: [], updated: [], destroyed: [] });
  expect(((await call('Thread/get', { ids: [gone.threadId] })) as { notFound: string[] }).notFound).toEqual([gone.threadId]);

  // One thread per page: three pages, the last one ending where the whole read ended.
  const seen: string[] = [];
  let since = state;
  for (let i = 0; i < 5; i++) {
    const page = (await call('Thread/changes', { sinceState: since, maxChanges: 1 })) as Record<string, string[] | string | boolean>;
    const ids = [...(page.created as string[]), ...(page.updated as string[]), ...(page.destroyed as string[])];
    expect(ids.length).toBeLessThanOrEqual(1);
    seen.push(...ids);
    since = page.newState as string;
    if (!page.hasMoreChanges) break;
  }
  expect(since).toBe(end);
  expect(seen.sort()).toEqual([fresh.threadId, old.threadId, gone.threadId].sort());
});

it('answers bad or unusable states with the RFC 8620 errors', async () => {
  expect(await fails('Thread/changes', { sinceState: 'yesterday' })).toBe('cannotCalculateChanges');
  expect(await fails('Thread/changes', { sinceState: '999999' })).toBe('cannotCalculateChanges');
  expect(await fails('Thread/changes', { sinceState: '0', maxChanges: 0 })).toBe('invalidArguments');
  expect(await fails('Thread/changes', {})).toBe('invalidArguments');
  // A change logged before entries named their Emails cannot be turned into thread changes.
  const { state } = (await call('Thread/get', { ids: [] })) as { state: string };
  const modseq = await folders.changes.allocate(USER);
  await storage.tables.transact([folders.changes.op(USER, modseq, [{ kind: 'append', folder: INBOX, uids: [1] }])]);
  expect(await fails('Thread/changes', { sinceState: state })).toBe('cannotCalculateChanges');
});

it('does not wait on a change still being written: it reports up to the gap', async () => {
  const { state } = (await call('Thread/get', { ids: [] })) as { state: string };
  await folders.changes.allocate(USER); // a writer holding the next MODSEQ, not yet committed
  const later = await file('g/1', { id: 'gap@x', subject: 'Behind a gap' });
  const started = Date.now();
  expect(await call('Thread/changes', { sinceState: state })).toMatchObject({ newState: state, hasMoreChanges: false, created: [], updated: [] });
  expect(Date.now() - started).toBeLessThan(2000);
  // Past the grace the gap is closed and the change shows.
  await new Promise((r) => setTimeout(r, 5200));
  expect(await call('Thread/changes', { sinceState: state })).toMatchObject({ created: [later.threadId] });
});
