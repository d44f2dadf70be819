/**
 * Email/query and Email/queryChanges on the aws family (DynamoDB and S3 on moto): the account
 * index built through paged folder reads (a page size of 5), brought forward from the change log
 * after deliveries, copies and expunges, and a body search that reads the messages from S3.
 */
import { randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { summarizeForMailbox } from '../../core/mail/imap-structure.js';
import { FolderStore } from '../../core/mailbox/folders.js';
import { INBOX } from '../../core/mailbox/keys.js';
import { emailIdOf } from '../../core/mailbox/email-ids.js';
import { clearQueryIndexes, emailQueryMethods } from '../../containers/web/jmap/email-query.js';
import type { JmapContext, JsonObject } from '../../containers/web/jmap/types.js';
import { FAMILIES, type FamilyTarget } from '../accounts/families.js';

const USER = 'amy@example.com';
const T0 = Date.parse('2026-11-01T12:00:00Z');

describe('Email/query on the aws family', () => {
  let target: FamilyTarget;
  let folders: FolderStore;
  let ctx: JmapContext;
  const newest = { filter: { inMailbox: INBOX }, sort: [{ property: 'receivedAt', isAscending: false }] };

  const store = async (folder: string, n: number) => {
    const body = Buffer.from(`From: s${n}@example.org\r\nSubject: message ${n}\r\n\r\nbody word${n} here\r\n`);
    const blobKey = `in/test/${randomUUID()}.eml`;
    const info = await target.storage.mail.put(blobKey, body);
    const summary = await summarizeForMailbox(Readable.from([body]));
    const r = await folders.append(USER, folder, { blobKey, size: info.size, receivedAt: new Date(T0 + n * 60_000).toISOString(), summary });
    return { id: emailIdOf(blobKey), uid: r.uid };
  };
  const call = (name: string, args: JsonObject) => emailQueryMethods.methods[name]!({ accountId: 'Aaws', ...args }, ctx);

  beforeAll(async () => {
    clearQueryIndexes();
    target = await FAMILIES.find((f) => f.name === 'aws')!.open();
    const accounts = new Accounts(target.storage.tables, { scrypt: { ln: 10, r: 8, p: 1 } });
    await accounts.addDomain('example.com');
    await accounts.addUser(USER, 'password-amy');
    folders = new FolderStore(target.storage.tables, target.storage.mail, { pageSize: 5 });
    const refuse = async () => {
      throw new Error('not used by these methods');
    };
    ctx = {
      user: USER,
      accountId: 'Aaws',
      config: loadConfig({}),
      storage: target.storage,
      folders,
      blobs: { get: refuse, put: refuse },
      log: silentLogger,
      createdIds: new Map(),
      followUps: [],
      call: refuse,
    };
  }, 120_000);
  afterAll(async () => {
    clearQueryIndexes();
    await target?.cleanup();
  });

  it('pages through a folder, follows the change log and searches bodies in S3', async () => {
    const made = [];
    for (let n = 0; n < 12; n++) made.push(await store(INBOX, n));
    const first = await call('Email/query', { ...newest, limit: 5, calculateTotal: true });
    expect(first.ids).toEqual(
      made
        .slice(-5)
        .map((m) => m.id)
        .reverse(),
    );
    expect(first.total).toBe(12);

    const later = await store(INBOX, 20);
    const other = (await folders.create(USER, 'Kept')).id;
    await folders.copy(USER, INBOX, [made[0]!.uid], other);
    await folders.expunge(USER, INBOX, [made[11]!.uid]);
    const changes = await call('Email/queryChanges', { ...newest, sinceQueryState: first.queryState, calculateTotal: true });
    expect(new Set(changes.removed as string[])).toEqual(new Set([later.id, made[0]!.id, made[11]!.id]));
    expect(changes.added).toEqual([
      { id: later.id, index: 0 },
      { id: made[0]!.id, index: 11 },
    ]);
    expect(changes.total).toBe(12);
    const second = await call('Email/query', { ...newest, limit: 3 });
    expect(second.ids).toEqual([later.id, made[10]!.id, made[9]!.id]);
    expect((await call('Email/query', { filter: { inMailbox: other } })).ids).toEqual([made[0]!.id]);

    const found = await call('Email/query', { filter: { body: 'WORD7' } });
    expect(found.ids).toEqual([made[7]!.id]);
  }, 120_000);
});
