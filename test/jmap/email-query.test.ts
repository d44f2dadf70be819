/**
 * Email/query, Email/queryChanges and SearchSnippet/get (RFC 8620 §5.5-5.6, RFC 8621 §4.4, §5)
 * called as the engine calls them, with a JmapContext over real local storage (SQLite + files):
 * messages are stored and summarised as delivery does, filed in folders, copied, flagged and
 * expunged through the folder store.
 *
 * Thread ids come from delivery (another part of issue 22); until FolderMessage carries them, the
 * folder store here is wrapped to add `threadId` to the messages it reads (the only stub).
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { summarizeForMailbox } from '../../core/mail/imap-structure.js';
import { FolderStore, type FolderMessage } from '../../core/mailbox/folders.js';
import { INBOX } from '../../core/mailbox/keys.js';
import { openStorage } from '../../core/storage/open.js';
import type { Storage } from '../../core/storage/ports.js';
import { emailIdOf } from '../../core/mailbox/email-ids.js';
import { clearQueryIndexes, emailQueryMethods, MAX_QUERY_LIMIT } from '../../containers/web/jmap/email-query.js';
import { markTerms, MAX_PREVIEW_OCTETS, previewSnippet, searchSnippetMethods } from '../../containers/web/jmap/search-snippet.js';
import { MethodError, type JmapContext, type JsonObject } from '../../containers/web/jmap/types.js';

const USER = 'alice@example.com';
const DAY = 86_400_000;
const T0 = Date.parse('2026-11-01T12:00:00Z');
const BUDGET_THREAD = `T${'b'.repeat(24)}`;

/** Thread ids by blobKey, as delivery will assign them. */
const threadOf = new Map<string, string>();

/** The folder store with the threadId delivery will add (see the file header). */
class ThreadedFolders extends FolderStore {
  private thread(m: FolderMessage): FolderMessage {
    const t = threadOf.get(m.blobKey);
    return t ? ({ ...m, threadId: t } as FolderMessage) : m;
  }
  override async get(user: string, folderId: string, uid: number): Promise<FolderMessage | undefined> {
    const m = await super.get(user, folderId, uid);
    return m && this.thread(m);
  }
  override async *entries(user: string, folderId: string): AsyncGenerator<FolderMessage> {
    for await (const m of super.entries(user, folderId)) yield this.thread(m);
  }
}

let dir: string;
let storage: Storage;
let folders: ThreadedFolders;
let ctx: JmapContext;
let archive: string;

/** The fixture's Emails by name. */
const ids: Record<string, string> = {};
const uids: Record<string, number> = {};
const sizes: Record<string, number> = {};

async function store(
  folder: string,
  raw: string,
  receivedAt: number,
  flags: string[] = [],
  thread?: string,
): Promise<{ id: string; uid: number; size: number }> {
  const body = Buffer.from(raw.replace(/\r?\n/g, '\r\n'));
  const blobKey = `in/test/${randomUUID()}.eml`;
  const info = await storage.mail.put(blobKey, body);
  if (thread) threadOf.set(blobKey, thread);
  const summary = await summarizeForMailbox(Readable.from([body]));
  const r = await folders.append(USER, folder, { blobKey, size: info.size, receivedAt: new Date(receivedAt).toISOString(), summary, flags });
  return { id: emailIdOf(blobKey), uid: r.uid, size: info.size };
}

async function call(name: string, args: JsonObject): Promise<JsonObject> {
  const methods = { ...emailQueryMethods.methods, ...searchSnippetMethods.methods };
  return methods[name]!({ accountId: ctx.accountId, ...args }, ctx);
}

async function query(args: JsonObject): Promise<string[]> {
  return (await call('Email/query', args)).ids as string[];
}

async function errorOf(name: string, args: JsonObject): Promise<string> {
  try {
    await call(name, args);
  } catch (e) {
    if (e instanceof MethodError) return e.type;
    throw e;
  }
  return 'no error';
}

const names = (list: string[]) => list.map((id) => Object.keys(ids).find((k) => ids[k] === id) ?? id);

beforeAll(async () => {
  clearQueryIndexes();
  dir = await mkdtemp(join(tmpdir(), 'tomlinson-jquery-'));
  const config = loadConfig({ TOMLINSON_DATA_DIR: dir, TOMLINSON_LOG_LEVEL: 'silent' });
  storage = await openStorage(config, silentLogger);
  const accounts = new Accounts(storage.tables);
  await accounts.addDomain('example.com');
  await accounts.addUser(USER, 'password-alice');
  folders = new ThreadedFolders(storage.tables, storage.mail);
  archive = (await folders.create(USER, 'Archive')).id;
  const refuse = async () => {
    throw new Error('not used by these methods');
  };
  ctx = {
    user: USER,
    accountId: 'Atest',
    config,
    storage,
    folders,
    blobs: { get: refuse, put: refuse },
    log: silentLogger,
    createdIds: new Map(),
    followUps: [],
    call: refuse,
  };

  const put = async (name: string, folder: string, raw: string, day: number, flags: string[] = [], thread?: string) => {
    const r = await store(folder, raw, T0 + day * DAY, flags, thread);
    ids[name] = r.id;
    uids[name] = r.uid;
    sizes[name] = r.size;
  };
  await put(
    'budget',
    INBOX,
    `From: Alice Zed <zed@example.net>\nTo: Bob <bob@example.com>\nSubject: Re: Budget plan\nDate: Sun, 1 Nov 2026 09:00:00 +0000\nMessage-ID: <b1@example.net>\n\nHere are the quarterly numbers.\n`,
    0,
    ['\\Seen'],
    BUDGET_THREAD,
  );
  await put(
    'holiday',
    INBOX,
    [
      'From: carol@example.org',
      'To: dave@example.com',
      'Cc: Erin <erin@example.com>',
      'Subject: Holiday <pictures> & more',
      'Date: Mon, 2 Nov 2026 09:00:00 +0000',
      'Message-ID: <h1@example.org>',
      'MIME-Version: 1.0',
      'Content-Type: multipart/mixed; boundary="b"',
      '',
      '--b',
      'Content-Type: text/plain; charset=utf-8',
      '',
      'Beach photos from the trip.',
      '--b',
      'Content-Type: application/pdf; name="plan.pdf"',
      'Content-Disposition: attachment; filename="plan.pdf"',
      'Content-Transfer-Encoding: base64',
      '',
      'JVBERi0xLjQK',
      '--b--',
      '',
    ].join('\n'),
    1,
    ['Important'],
  );
  await put(
    'review',
    INBOX,
    `From: Bob <bob@example.com>\nTo: alice@example.com\nBcc: frank@example.com\nSubject: budget review\nX-Priority: 1\nDate: Wed, 4 Nov 2026 09:00:00 +0000\nIn-Reply-To: <b1@example.net>\nMessage-ID: <r1@example.com>\n\nLet us go through the plan line by line, slowly and in detail.\n`,
    2,
    ['\\Flagged', '\\Seen'],
    BUDGET_THREAD,
  );
  await put(
    'note',
    archive,
    `From: Zoe <zoe@example.org>\nTo: alice@example.com\nSubject: Archived note\nDate: Sat, 31 Oct 2026 09:00:00 +0000\n\nOld stuff.\n`,
    3,
  );
  await put(
    'shared',
    INBOX,
    `From: Yann <yann@example.org>\nTo: Amy <amy@example.com>\nSubject: Shared thing\nDate: Thu, 5 Nov 2026 09:00:00 +0000\n\nIn two folders.\n`,
    4,
  );
  await folders.copy(USER, INBOX, [uids.shared!], archive);
}, 60_000);

afterAll(async () => {
  clearQueryIndexes();
  await storage?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('Email/query filters (RFC 8621 §4.4.1)', () => {
  it('returns every Email once, a message in two folders included, newest first without a sort', async () => {
    expect(names(await query({}))).toEqual(['shared', 'note', 'review', 'holiday', 'budget']);
  });

  it.each<[string, JsonObject, string[]]>([
    ['inMailbox', { inMailbox: INBOX }, ['shared', 'review', 'holiday', 'budget']],
    ['inMailbox of an unknown mailbox', { inMailbox: 'ffffffffffffffff' }, []],
    ['inMailboxOtherThan', { inMailboxOtherThan: [INBOX] }, ['shared', 'note']],
    ['before (receivedAt, exclusive)', { before: new Date(T0 + DAY).toISOString().replace('.000', '') }, ['budget']],
    ['after (receivedAt, inclusive)', { after: new Date(T0 + 3 * DAY).toISOString().replace('.000', '') }, ['shared', 'note']],
    ['hasKeyword $seen', { hasKeyword: '$seen' }, ['review', 'budget']],
    ['hasKeyword of an IMAP keyword, any case', { hasKeyword: 'important' }, ['holiday']],
    ['notKeyword $seen', { notKeyword: '$seen' }, ['shared', 'note', 'holiday']],
    ['hasAttachment', { hasAttachment: true }, ['holiday']],
    ['hasAttachment false', { hasAttachment: false }, ['shared', 'note', 'review', 'budget']],
    ['allInThreadHaveKeyword', { allInThreadHaveKeyword: '$seen' }, ['review', 'budget']],
    ['someInThreadHaveKeyword', { someInThreadHaveKeyword: '$flagged' }, ['review', 'budget']],
    ['noneInThreadHaveKeyword', { noneInThreadHaveKeyword: '$flagged' }, ['shared', 'note', 'holiday']],
    ['text in a body', { text: 'quarterly' }, ['budget']],
    ['text in a subject', { text: 'HOLIDAY' }, ['holiday']],
    ['text in an address', { text: 'frank@' }, ['review']],
    ['text does not match other fields or field names', { text: 'message-id' }, []],
    ['from (display name)', { from: 'alice zed' }, ['budget']],
    ['from (address)', { from: 'carol@' }, ['holiday']],
    ['to', { to: 'dave' }, ['holiday']],
    ['cc', { cc: 'erin' }, ['holiday']],
    ['bcc (read from the header)', { bcc: 'frank' }, ['review']],
    ['subject', { subject: 'budget' }, ['review', 'budget']],
    ['body', { body: 'beach' }, ['holiday']],
    ['body does not search the subject', { body: 'holiday' }, []],
    ['header exists', { header: ['X-Priority'] }, ['review']],
    ['header contains', { header: ['x-priority', '1'] }, ['review']],
    ['header does not contain', { header: ['X-Priority', '5'] }, []],
    ['several properties are ANDed', { inMailbox: INBOX, hasKeyword: '$seen', subject: 'review' }, ['review']],
    ['AND', { operator: 'AND', conditions: [{ subject: 'budget' }, { hasKeyword: '$flagged' }] }, ['review']],
    ['OR', { operator: 'OR', conditions: [{ from: 'zoe' }, { hasAttachment: true }] }, ['note', 'holiday']],
    ['NOT (none of)', { operator: 'NOT', conditions: [{ inMailbox: INBOX }, { text: 'stuff' }] }, []],
    ['NOT of one', { operator: 'NOT', conditions: [{ inMailbox: 'ARCHIVE' }] }, ['review', 'holiday', 'budget']],
    ['nested', { operator: 'AND', conditions: [{ inMailbox: INBOX }, { operator: 'NOT', conditions: [{ text: 'budget' }] }] }, ['shared', 'holiday']],
  ])('%s', async (_name, template, expected) => {
    // The Archive folder's id is known only once the fixture is made.
    const filter = JSON.parse(JSON.stringify(template).replaceAll('"ARCHIVE"', JSON.stringify(archive))) as JsonObject;
    expect(names(await query({ filter, sort: [{ property: 'receivedAt', isAscending: false }] }))).toEqual(expected);
  });

  it('minSize and maxSize compare with the raw size (maxSize exclusive)', async () => {
    const size = sizes.review!;
    const at = (filter: JsonObject) => query({ filter, sort: [{ property: 'size' }] });
    expect(await at({ minSize: size, maxSize: size + 1 })).toEqual([ids.review]);
    expect(await at({ maxSize: size })).not.toContain(ids.review);
    expect(await at({ minSize: size + 1 })).not.toContain(ids.review);
  });
});

describe('Email/query sorts (RFC 8621 §4.4.2)', () => {
  const sorted = async (sort: JsonObject[]) => names(await query({ filter: { inMailbox: INBOX }, sort }));

  it.each<[string, JsonObject[], string[]]>([
    ['receivedAt ascending by default', [{ property: 'receivedAt' }], ['budget', 'holiday', 'review', 'shared']],
    ['receivedAt descending', [{ property: 'receivedAt', isAscending: false }], ['shared', 'review', 'holiday', 'budget']],
    // Name, or the address when there is none: "Alice Zed", "Bob", "carol@example.org", "Yann".
    ['from', [{ property: 'from' }], ['budget', 'review', 'holiday', 'shared']],
    // "Bob", "alice@example.com", "dave@example.com", "Amy".
    ['to, i;ascii-casemap', [{ property: 'to', collation: 'i;ascii-casemap' }], ['review', 'shared', 'budget', 'holiday']],
    ['to, i;octet (upper case first)', [{ property: 'to', collation: 'i;octet' }], ['shared', 'budget', 'review', 'holiday']],
    // Base subjects: "Budget plan", "Holiday...", "budget review", "Shared thing".
    ['subject (base subject, Re: dropped)', [{ property: 'subject', collation: 'i;unicode-casemap' }], ['budget', 'review', 'holiday', 'shared']],
    ['sentAt', [{ property: 'sentAt', isAscending: false }], ['shared', 'review', 'holiday', 'budget']],
    [
      'hasKeyword then receivedAt',
      [{ property: 'hasKeyword', keyword: '$seen', isAscending: false }, { property: 'receivedAt' }],
      ['budget', 'review', 'holiday', 'shared'],
    ],
    [
      'allInThreadHaveKeyword',
      [{ property: 'allInThreadHaveKeyword', keyword: '$seen', isAscending: false }, { property: 'receivedAt' }],
      ['budget', 'review', 'holiday', 'shared'],
    ],
    [
      'someInThreadHaveKeyword',
      [{ property: 'someInThreadHaveKeyword', keyword: '$flagged', isAscending: false }, { property: 'receivedAt' }],
      ['budget', 'review', 'holiday', 'shared'],
    ],
  ])('%s', async (_name, sort, expected) => {
    expect(await sorted(sort)).toEqual(expected);
  });

  it('size', async () => {
    const got = await query({ filter: { inMailbox: INBOX }, sort: [{ property: 'size' }] });
    const bySize = ['budget', 'holiday', 'review', 'shared'].sort((a, b) => sizes[a]! - sizes[b]!);
    expect(names(got)).toEqual(bySize);
  });
});

describe('Email/query paging and results (RFC 8620 §5.5)', () => {
  const inbox = { filter: { inMailbox: INBOX }, sort: [{ property: 'receivedAt' }] };

  it('position, negative position, limit and total', async () => {
    const r = await call('Email/query', { ...inbox, position: 1, limit: 2, calculateTotal: true });
    expect(names(r.ids as string[])).toEqual(['holiday', 'review']);
    expect(r).toMatchObject({ accountId: 'Atest', position: 1, total: 4, canCalculateChanges: true });
    expect(r.queryState).toMatch(/^\d+$/);
    const tail = await call('Email/query', { ...inbox, position: -1 });
    expect(names(tail.ids as string[])).toEqual(['shared']);
    expect(tail.position).toBe(3);
    expect(tail.total).toBeUndefined();
    expect((await call('Email/query', { ...inbox, position: 10 })).ids).toEqual([]);
  });

  it('anchor and anchorOffset (position is then ignored)', async () => {
    const r = await call('Email/query', { ...inbox, position: 3, anchor: ids.review, anchorOffset: -1, limit: 2 });
    expect(names(r.ids as string[])).toEqual(['holiday', 'review']);
    expect(r.position).toBe(1);
    const clampedStart = await call('Email/query', { ...inbox, anchor: ids.holiday, anchorOffset: -5, limit: 1 });
    expect(clampedStart.position).toBe(0);
    expect(names(clampedStart.ids as string[])).toEqual(['budget']);
  });

  it('a limit above the maximum is clamped and reported', async () => {
    const r = await call('Email/query', { ...inbox, limit: MAX_QUERY_LIMIT + 1 });
    expect(r.limit).toBe(MAX_QUERY_LIMIT);
    expect((r.ids as string[]).length).toBe(4);
  });

  it('collapseThreads keeps the first Email of each thread in sort order', async () => {
    const all = await query({ filter: { inMailbox: INBOX }, sort: [{ property: 'receivedAt', isAscending: false }] });
    const collapsed = await query({ filter: { inMailbox: INBOX }, sort: [{ property: 'receivedAt', isAscending: false }], collapseThreads: true });
    expect(names(all)).toEqual(['shared', 'review', 'holiday', 'budget']);
    expect(names(collapsed)).toEqual(['shared', 'review', 'holiday']);
  });

  it.each<[string, JsonObject, string]>([
    ['an unknown condition', { filter: { inThread: 'x' } }, 'unsupportedFilter'],
    ['an unknown operator', { filter: { operator: 'XOR', conditions: [] } }, 'unsupportedFilter'],
    ['an unknown sort property', { sort: [{ property: 'id' }] }, 'unsupportedSort'],
    ['an unknown collation', { sort: [{ property: 'subject', collation: 'i;basic' }] }, 'unsupportedSort'],
    ['a keyword sort without keyword', { sort: [{ property: 'hasKeyword' }] }, 'invalidArguments'],
    ['a date that is not a UTCDate', { filter: { before: '2026-11-01' } }, 'invalidArguments'],
    ['a keyword with a forbidden character', { filter: { hasKeyword: 'a(b' } }, 'invalidArguments'],
    ['a negative limit', { limit: -1 }, 'invalidArguments'],
    ['a fractional position', { position: 1.5 }, 'invalidArguments'],
    ['a filter that is not an object', { filter: 'budget' }, 'invalidArguments'],
    ['a header of three items', { filter: { header: ['a', 'b', 'c'] } }, 'invalidArguments'],
    ['an anchor not in the results', { filter: { inMailbox: INBOX }, anchor: 'Mffffffffffffffffffffffff' }, 'anchorNotFound'],
  ])('%s: %s', async (_name, args, type) => {
    expect(await errorOf('Email/query', args)).toBe(type);
  });
});

describe('cached results brought forward in place', () => {
  it('match a fresh computation after deliveries, flag changes and expunges', async () => {
    const shapes: JsonObject[] = [
      { filter: { inMailbox: INBOX }, sort: [{ property: 'receivedAt', isAscending: false }] },
      { filter: { notKeyword: '$seen' }, sort: [{ property: 'subject' }, { property: 'size', isAscending: false }] },
      { sort: [{ property: 'from', collation: 'i;unicode-casemap' }] },
    ];
    for (const q of shapes) await query(q); // cached at this position
    const a = await store(INBOX, `From: Amber <amber@example.org>\nSubject: Budget again\n\nnew\n`, T0 + 20 * DAY);
    const b = await store(archive, `From: bob@example.com\nSubject: Aardvark\n\nold\n`, T0 - 5 * DAY);
    await folders.storeFlags(USER, INBOX, [uids.holiday!, a.uid], { mode: 'add', flags: ['\\Seen'] });
    await folders.storeFlags(USER, INBOX, [uids.budget!], { mode: 'remove', flags: ['\\Seen'] });
    const brought = [];
    for (const q of shapes) brought.push(await query(q));
    clearQueryIndexes();
    const fresh = [];
    for (const q of shapes) fresh.push(await query(q));
    expect(brought).toEqual(fresh);
    expect(brought[0]![0]).toBe(a.id);
    expect(brought[1]).toContain(ids.budget);
    expect(brought[1]).not.toContain(ids.holiday);
    await folders.expunge(USER, INBOX, [a.uid]);
    await folders.expunge(USER, archive, [b.uid]);
    await folders.storeFlags(USER, INBOX, [uids.holiday!], { mode: 'remove', flags: ['\\Seen'] });
    await folders.storeFlags(USER, INBOX, [uids.budget!], { mode: 'add', flags: ['\\Seen'] });
    const after = [];
    for (const q of shapes) after.push(await query(q));
    clearQueryIndexes();
    for (const [i, q] of shapes.entries()) expect(after[i]).toEqual(await query(q));
    expect(after[0]).not.toContain(a.id);
  });
});

describe('Email/queryChanges (RFC 8620 §5.6)', () => {
  const newest = { filter: { inMailbox: INBOX }, sort: [{ property: 'receivedAt', isAscending: false }] };

  it('new mail at the top of an inMailbox receivedAt-descending query', async () => {
    const before = await call('Email/query', { ...newest, calculateTotal: true });
    const unchanged = await call('Email/queryChanges', { ...newest, sinceQueryState: before.queryState });
    expect(unchanged).toMatchObject({ oldQueryState: before.queryState, newQueryState: before.queryState, removed: [], added: [] });

    const a = await store(INBOX, `From: n1@example.org\nSubject: new one\n\nfresh\n`, T0 + 10 * DAY);
    const b = await store(INBOX, `From: n2@example.org\nSubject: new two\n\nfresher\n`, T0 + 11 * DAY);
    const r = await call('Email/queryChanges', { ...newest, sinceQueryState: before.queryState, calculateTotal: true });
    expect(r.newQueryState).not.toBe(before.queryState);
    expect(new Set(r.removed as string[])).toEqual(new Set([a.id, b.id]));
    expect(r.added).toEqual([
      { id: b.id, index: 0 },
      { id: a.id, index: 1 },
    ]);
    expect(r.total).toBe((before.total as number) + 2);
    // The new state is what a fresh query reports.
    expect((await call('Email/query', newest)).queryState).toBe(r.newQueryState);
    await folders.expunge(USER, INBOX, [a.uid, b.uid]);
  });

  it('a keyword change moves an Email out of a hasKeyword query; an expunge removes it', async () => {
    const flagged = { filter: { hasKeyword: '$flagged' }, sort: [{ property: 'receivedAt' }] };
    const extra = await store(INBOX, `From: x@example.org\nSubject: to flag\n\nx\n`, T0 + 12 * DAY);
    const s0 = await call('Email/query', flagged);
    expect(s0.ids).toEqual([ids.review]);
    await folders.storeFlags(USER, INBOX, [extra.uid], { mode: 'add', flags: ['\\Flagged'] });
    const s1 = await call('Email/queryChanges', { ...flagged, sinceQueryState: s0.queryState });
    expect(s1.removed).toEqual([extra.id]);
    expect(s1.added).toEqual([{ id: extra.id, index: 1 }]);
    await folders.storeFlags(USER, INBOX, [uids.review!], { mode: 'remove', flags: ['\\Flagged'] });
    await folders.expunge(USER, INBOX, [extra.uid]);
    const s2 = await call('Email/queryChanges', { ...flagged, sinceQueryState: s1.newQueryState });
    expect(new Set(s2.removed as string[])).toEqual(new Set([extra.id, ids.review]));
    expect(s2.added).toEqual([]);
    expect((await call('Email/query', flagged)).ids).toEqual([]);
    await folders.storeFlags(USER, INBOX, [uids.review!], { mode: 'add', flags: ['\\Flagged'] });
  });

  it('with collapseThreads a change reports the whole thread', async () => {
    const q = { ...newest, collapseThreads: true };
    const s0 = await call('Email/query', q);
    const reply = await store(INBOX, `From: bob@example.com\nSubject: Re: Budget plan\n\nagreed\n`, T0 + 13 * DAY, [], BUDGET_THREAD);
    const r = await call('Email/queryChanges', { ...q, sinceQueryState: s0.queryState });
    expect(new Set(r.removed as string[])).toEqual(new Set([reply.id, ids.review, ids.budget]));
    expect(r.added).toEqual([{ id: reply.id, index: 0 }]);
    await folders.expunge(USER, INBOX, [reply.uid]);
  });

  it('maxChanges, unknown and future states', async () => {
    const s0 = await call('Email/query', newest);
    const a = await store(INBOX, `Subject: one\n\n1\n`, T0 + 14 * DAY);
    expect(await errorOf('Email/queryChanges', { ...newest, sinceQueryState: s0.queryState, maxChanges: 1 })).toBe('tooManyChanges');
    expect(await errorOf('Email/queryChanges', { ...newest, sinceQueryState: 'x' })).toBe('cannotCalculateChanges');
    expect(await errorOf('Email/queryChanges', { ...newest, sinceQueryState: '999999' })).toBe('cannotCalculateChanges');
    expect(await errorOf('Email/queryChanges', { ...newest })).toBe('invalidArguments');
    expect(await errorOf('Email/queryChanges', { filter: { nope: 1 }, sinceQueryState: s0.queryState })).toBe('unsupportedFilter');
    await folders.expunge(USER, INBOX, [a.uid]);
  });

  it('a process whose index began after the state cannot calculate (another task, a restart)', async () => {
    const s0 = await call('Email/query', newest);
    const a = await store(INBOX, `Subject: two\n\n2\n`, T0 + 15 * DAY);
    clearQueryIndexes();
    expect(await errorOf('Email/queryChanges', { ...newest, sinceQueryState: s0.queryState })).toBe('cannotCalculateChanges');
    await folders.expunge(USER, INBOX, [a.uid]);
  });
});

describe('SearchSnippet/get (RFC 8621 §5)', () => {
  it('marks terms in the subject and the preview, HTML-escaped', async () => {
    const r = await call('SearchSnippet/get', { filter: { text: 'budget' }, emailIds: [ids.budget, ids.review, 'Mffffffffffffffffffffffff'] });
    expect(r.list).toEqual([
      { emailId: ids.budget, subject: 'Re: <mark>Budget</mark> plan', preview: null },
      { emailId: ids.review, subject: '<mark>budget</mark> review', preview: null },
    ]);
    expect(r.notFound).toEqual(['Mffffffffffffffffffffffff']);
    const h = await call('SearchSnippet/get', {
      filter: { operator: 'AND', conditions: [{ subject: 'pictures' }, { body: 'photos' }] },
      emailIds: [ids.holiday],
    });
    expect(h.list).toEqual([
      { emailId: ids.holiday, subject: 'Holiday &lt;<mark>pictures</mark>&gt; &amp; more', preview: 'Beach <mark>photos</mark> from the trip.' },
    ]);
  });

  it('terms under NOT are not marked; no terms gives nulls', async () => {
    const r = await call('SearchSnippet/get', { filter: { operator: 'NOT', conditions: [{ text: 'budget' }] }, emailIds: [ids.budget] });
    expect(r.list).toEqual([{ emailId: ids.budget, subject: null, preview: null }]);
  });

  it('rejects bad arguments', async () => {
    expect(await errorOf('SearchSnippet/get', { emailIds: 'x' })).toBe('invalidArguments');
    expect(await errorOf('SearchSnippet/get', { filter: { bogus: 1 }, emailIds: [] })).toBe('unsupportedFilter');
  });

  it('markTerms merges overlapping matches and keeps offsets where case folding changes length', () => {
    expect(markTerms('abcabc', ['bca', 'cab'])).toBe('a<mark>bcab</mark>c');
    expect(markTerms('İstanbul <b> "q"', ['stan'])).toBe('İ<mark>stan</mark>bul &lt;b&gt; "q"');
    expect(markTerms('nothing', ['zzz'])).toBeUndefined();
  });

  it('a preview snippet fits in 255 octets with the match kept, markup never cut', () => {
    const text = `${'é'.repeat(150)} & the needle here ${'ü'.repeat(100)}`;
    const got = previewSnippet(text, ['needle'])!;
    expect(Buffer.byteLength(got)).toBeLessThanOrEqual(MAX_PREVIEW_OCTETS);
    expect(got).toContain('<mark>needle</mark>');
    expect(got).toContain('&amp; the ');
    expect(got).not.toMatch(/&[a-z]*$|<[^>]*$/);
    expect(previewSnippet('short needle', ['needle'])).toBe('short <mark>needle</mark>');
  });
});
