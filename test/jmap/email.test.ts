/**
 * RFC 8621 §4 Email methods over real local storage: messages delivered as the inbound worker
 * stores them (multipart/alternative with an inline image and an attachment), read with every
 * property family, changed with Email/set, and checked from IMAP (imaplib) where the point is one
 * truth: a keyword set over JMAP is what IMAP FETCH FLAGS shows; an IMAP EXPUNGE is what
 * Email/changes reports destroyed.
 */
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { headerSectionFields, parseEmailBody } from '../../containers/web/jmap/email-body.js';
import { emailMethods, resolveEmailBlob } from '../../containers/web/jmap/email.js';
import { emailIdOf } from '../../core/mailbox/email-ids.js';
import { mailboxMethods } from '../../containers/web/jmap/mailbox.js';
import type { JsonObject } from '../../containers/web/jmap/types.js';
import type { ByteRange } from '../../core/storage/ports.js';
import { addImapUsers, imapMessage, imaplib, imapPassword, startImapHarness, type ImapHarness } from '../imap/harness.js';
import { invoke, jmapContext } from './mail-context.js';

let h: ImapHarness;
beforeAll(async () => {
  h = await startImapHarness();
  await addImapUsers(h, 'ann@example.com', 'ben@example.com', 'cy@example.com', 'dee@example.com');
});
afterAll(async () => h?.close());

const ctxFor = (user: string) => jmapContext(h, user, [mailboxMethods, emailMethods], resolveEmailBlob);
const one = (r: [string, JsonObject]) => (r[1].list as JsonObject[])[0]!;

const PNG = Buffer.from('89504e470d0a1a0a0000000d4948445200000001000000010806000000', 'hex');
const PDF = Buffer.from('%PDF-1.4 a small document\n'.repeat(20));
const b64 = (b: Buffer) => b.toString('base64').replace(/.{76}/g, '$&\r\n');
const RICH = [
  'From: =?utf-8?q?J=C3=BCrgen?= <j@example.net>, Ann <ann@example.com>',
  'To: undisclosed:;, Bob <bob@example.com>',
  'Cc: friends: Cy <cy@example.com>, Dee <dee@example.com>;',
  'Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= and',
  ' a folded line',
  'Date: Mon, 7 Dec 2026 10:00:00 +0100',
  'Message-ID: <rich@example.net>',
  'In-Reply-To: <a@example.net>',
  'References: <a@example.net> (comment) <b@example.net>',
  'List-Unsubscribe: <mailto:leave@example.net>, <https://example.net/leave>',
  'X-Custom: one',
  'X-Custom: two',
  'MIME-Version: 1.0',
  'Content-Type: multipart/mixed; boundary="outer"',
  '',
  '--outer',
  'Content-Type: multipart/alternative; boundary="alt"',
  '',
  '--alt',
  'Content-Type: text/plain; charset=utf-8',
  'Content-Transfer-Encoding: quoted-printable',
  '',
  'Hello J=C3=BCrgen, this is the plain text body of the message.',
  '--alt',
  'Content-Type: multipart/related; boundary="rel"',
  '',
  '--rel',
  'Content-Type: text/html; charset=utf-8',
  '',
  '<p>Hello <b>J\u00fcrgen</b> <img src="cid:logo@x"></p>',
  '--rel',
  'Content-Type: image/png',
  'Content-ID: <logo@x>',
  'Content-Disposition: inline',
  'Content-Transfer-Encoding: base64',
  '',
  b64(PNG),
  '--rel--',
  '--alt--',
  '--outer',
  'Content-Type: application/pdf; name="report.pdf"',
  'Content-Disposition: attachment; filename="report.pdf"',
  'Content-Transfer-Encoding: base64',
  '',
  b64(PDF),
  '--outer--',
  '',
].join('\r\n');

describe('Email/get (RFC 8621 §4.2)', () => {
  it('gives metadata, headers in every form, the body structure, the three views and values', async () => {
    const u = 'ann@example.com';
    const { blobKey } = await h.deliver(u, RICH);
    const id = emailIdOf(blobKey);
    const ctx = ctxFor(u);
    const r = await invoke(ctx, 'Email/get', {
      ids: [id, 'Mnope'],
      properties: [
        'id',
        'blobId',
        'threadId',
        'mailboxIds',
        'keywords',
        'size',
        'receivedAt',
        'messageId',
        'inReplyTo',
        'references',
        'from',
        'to',
        'cc',
        'subject',
        'sentAt',
        'hasAttachment',
        'preview',
        'bodyStructure',
        'bodyValues',
        'textBody',
        'htmlBody',
        'attachments',
        'header:X-Custom:all',
        'header:Subject',
        'header:To:asGroupedAddresses',
        'header:List-Unsubscribe:asURLs',
        'header:Date:asDate',
      ],
      fetchAllBodyValues: true,
      maxBodyValueBytes: 20,
    });
    expect(r[1].notFound).toEqual(['Mnope']);
    const e = one(r);
    expect(e).toMatchObject({
      id,
      blobId: `G${id}`,
      mailboxIds: { INBOX: true },
      keywords: {},
      size: Buffer.byteLength(RICH),
      messageId: ['rich@example.net'],
      inReplyTo: ['a@example.net'],
      references: ['a@example.net', 'b@example.net'],
      from: [
        { name: 'Jürgen', email: 'j@example.net' },
        { name: 'Ann', email: 'ann@example.com' },
      ],
      cc: [
        { name: 'Cy', email: 'cy@example.com' },
        { name: 'Dee', email: 'dee@example.com' },
      ],
      subject: 'Grüße and a folded line',
      sentAt: '2026-12-07T09:00:00Z',
      hasAttachment: true,
      'header:X-Custom:all': [' one', ' two'],
      'header:Subject': ' =?utf-8?q?Gr=C3=BC=C3=9Fe?= and\r\n a folded line',
      'header:List-Unsubscribe:asURLs': ['mailto:leave@example.net', 'https://example.net/leave'],
      'header:Date:asDate': '2026-12-07T09:00:00Z',
    });
    expect(e.threadId).toMatch(/^T[0-9a-f]{24}$/);
    expect(e.receivedAt).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    expect(e['header:To:asGroupedAddresses']).toEqual([
      { name: 'undisclosed', addresses: [] },
      { name: null, addresses: [{ name: 'Bob', email: 'bob@example.com' }] },
    ]);
    expect(String(e.preview)).toContain('Hello Jürgen');
    const part = (x: unknown) => x as JsonObject;
    expect((e.textBody as JsonObject[]).map((p) => [p.partId, p.type])).toEqual([['1', 'text/plain']]);
    expect((e.htmlBody as JsonObject[]).map((p) => [p.partId, p.type])).toEqual([['2', 'text/html']]);
    expect((e.attachments as JsonObject[]).map((p) => [p.partId, p.type, p.name, p.cid, p.disposition])).toEqual([
      ['3', 'image/png', null, 'logo@x', 'inline'],
      ['4', 'application/pdf', 'report.pdf', null, 'attachment'],
    ]);
    expect(part((e.attachments as JsonObject[])[1]).size).toBe(PDF.length);
    const bs = part(e.bodyStructure);
    expect(bs.type).toBe('multipart/mixed');
    expect(bs.partId).toBeNull();
    expect((bs.subParts as JsonObject[]).map((p) => p.type)).toEqual(['multipart/alternative', 'application/pdf']);
    const values = e.bodyValues as Record<string, JsonObject>;
    expect(values['1']).toEqual({ value: 'Hello Jürgen, this ', isEncodingProblem: false, isTruncated: true });
    expect(Buffer.byteLength(String(values['1']!.value))).toBeLessThanOrEqual(20);
    expect(values['2']!.isTruncated).toBe(true);
    expect(values['3']).toBeUndefined(); // not text

    // Whole values, and only the text body's.
    const whole = one(await invoke(ctx, 'Email/get', { ids: [id], properties: ['bodyValues'], fetchTextBodyValues: true }));
    expect(whole.bodyValues).toEqual({
      '1': { value: 'Hello Jürgen, this is the plain text body of the message.', isEncodingProblem: false, isTruncated: false },
    });

    // Defaults: every default property present; headers alone read no body.
    const d = one(await invoke(ctx, 'Email/get', { ids: [id] }));
    expect(Object.keys(d).sort()).toEqual(
      [
        'id',
        'blobId',
        'threadId',
        'mailboxIds',
        'keywords',
        'size',
        'receivedAt',
        'messageId',
        'inReplyTo',
        'references',
        'sender',
        'from',
        'to',
        'cc',
        'bcc',
        'replyTo',
        'subject',
        'sentAt',
        'hasAttachment',
        'preview',
        'bodyValues',
        'textBody',
        'htmlBody',
        'attachments',
      ].sort(),
    );
    expect(d.sender).toBeNull();
    const bad = await invoke(ctx, 'Email/get', { ids: [id], properties: ['header:From:asDate'] });
    expect(bad[1].type).toBe('invalidArguments');
    expect((await invoke(ctx, 'Email/get', { ids: [id], bodyProperties: ['colour'] }))[1].type).toBe('invalidArguments');
  });

  it('reads no blob for metadata and preview, only the header section for header properties', async () => {
    const u = 'ann@example.com';
    const { blobKey } = await h.deliver(u, RICH);
    const id = emailIdOf(blobKey);
    const reads: (ByteRange | undefined)[] = [];
    let smallReads = 0;
    let offerSmall = true;
    const mail = new Proxy(h.storage.mail, {
      get(target, prop, receiver) {
        if (prop === 'get')
          return (key: string, options?: { range?: ByteRange }) => {
            if (key === blobKey) reads.push(options?.range);
            return target.get(key, options);
          };
        if (prop === 'smallReader')
          return () => {
            const r = offerSmall ? target.smallReader?.() : undefined;
            return r && { readSmallSync: (key: string, o?: { maxBytes?: number }) => (key === blobKey && smallReads++, r.readSmallSync(key, o)) };
          };
        return Reflect.get(target, prop, receiver) as unknown;
      },
    });
    const ctx = ctxFor(u);
    ctx.storage = new Proxy(h.storage, { get: (target, prop, receiver) => (prop === 'mail' ? mail : (Reflect.get(target, prop, receiver) as unknown)) });
    const meta = one(await invoke(ctx, 'Email/get', { ids: [id], properties: ['threadId', 'keywords', 'size', 'preview', 'hasAttachment'] }));
    expect(meta).toMatchObject({ size: Buffer.byteLength(RICH), hasAttachment: true });
    expect([reads, smallReads]).toEqual([[], 0]);
    // A small local message is read at once; the header section is split from it.
    const headers = one(await invoke(ctx, 'Email/get', { ids: [id], properties: ['subject', 'from', 'header:X-Custom:all'] }));
    expect(headers.subject).toBe('Grüße and a folded line');
    expect([reads, smallReads]).toEqual([[], 1]);
    // Where the store has no synchronous reader (S3), the header section alone is read.
    offerSmall = false;
    const again = one(await invoke(ctx, 'Email/get', { ids: [id], properties: ['subject', 'from', 'header:X-Custom:all'] }));
    expect(again).toEqual(headers);
    const headerEnd = RICH.indexOf('\r\n\r\n') + 4;
    expect(reads).toEqual([{ start: 0, end: headerEnd - 1 }]);
  });

  it('splits a header section as the MIME parser does (raw values, folds kept)', async () => {
    const raw = `${RICH.slice(0, RICH.indexOf('\r\n\r\n') + 4)}`;
    const parsed = await parseEmailBody(
      Readable.from([Buffer.from(RICH)]),
      () => '',
      () => false,
    );
    expect(headerSectionFields(Buffer.from(raw))).toEqual(parsed.headers);
  });

  it("downloads the raw message and each decoded part by its G blobId, and no one else's", async () => {
    const u = 'ann@example.com';
    const { blobKey } = await h.deliver(u, RICH);
    const id = emailIdOf(blobKey);
    const ctx = ctxFor(u);
    const whole = await ctx.blobs.get(`G${id}`);
    expect(whole?.type).toBe('message/rfc822');
    expect((await buffer(await whole!.open())).toString()).toBe(RICH);
    const png = await ctx.blobs.get(`G${id}P3`);
    expect(png).toMatchObject({ type: 'image/png', size: PNG.length });
    expect(await buffer(await png!.open())).toEqual(PNG);
    const pdf = await ctx.blobs.get(`G${id}P4`);
    expect(await buffer(await pdf!.open())).toEqual(PDF);
    expect(await ctx.blobs.get(`G${id}P9`)).toBeUndefined();
    expect(await ctx.blobs.get(`G${id}Px`)).toBeUndefined();
    expect(await ctxFor('ben@example.com').blobs.get(`G${id}`)).toBeUndefined();
  });
});

describe('Email/set, /changes and IMAP on one mailbox (RFC 8621 §4.3, §4.6)', () => {
  it('sets keywords that IMAP FETCH FLAGS shows, files and moves, destroys; changes report each', async () => {
    const u = 'ben@example.com';
    const ctx = ctxFor(u);
    const a = await h.deliver(u, imapMessage(1));
    const b = await h.deliver(u, imapMessage(2));
    const ida = emailIdOf(a.blobKey);
    const idb = emailIdOf(b.blobKey);
    const s0 = String((await invoke(ctx, 'Email/get', { ids: [] }))[1].state);
    const made = await invoke(ctx, 'Mailbox/set', { create: { w: { name: 'Work' } } });
    const work = String((made[1].created as Record<string, JsonObject>).w!.id);

    const set = await invoke(ctx, 'Email/set', {
      update: {
        [ida]: { keywords: { $seen: true, $Work: true } },
        [idb]: { 'keywords/$flagged': true, 'mailboxIds/INBOX': null, [`mailboxIds/${work}`]: true },
        Mnope: { 'keywords/$seen': true },
      },
    });
    expect(set[1].updated).toEqual({ [ida]: null, [idb]: null });
    expect((set[1].notUpdated as Record<string, JsonObject>).Mnope).toMatchObject({ type: 'notFound' });
    const bad = await invoke(ctx, 'Email/set', { update: { [ida]: { keywords: { 'a b': true } }, [idb]: { mailboxIds: {} } } });
    expect(bad[1].notUpdated).toMatchObject({ [ida]: { type: 'invalidProperties' }, [idb]: { type: 'invalidProperties' } });

    const r = await imaplib({
      port: h.port,
      user: u,
      password: imapPassword(u),
      steps: [['login'], ['select', 'INBOX'], ['uid', 'FETCH', '1:*', '(FLAGS)'], ['select', 'Work'], ['uid', 'FETCH', '1:*', '(FLAGS)']],
    });
    expect(r.error).toBeUndefined();
    const inbox = (r.results[2] as [string, string[]])[1].join('\n');
    expect(inbox).toMatch(/UID 1 FLAGS \((?=.*\\Seen)(?=.*\$work)[^)]*\)/i);
    expect(inbox).not.toContain('UID 2'); // moved out
    expect((r.results[4] as [string, string[]])[1].join('\n')).toMatch(/FLAGS \(\\Flagged\)/);

    const got = await invoke(ctx, 'Email/get', { ids: [ida, idb], properties: ['keywords', 'mailboxIds'] });
    expect(got[1].list).toEqual([
      { id: ida, keywords: { $seen: true, $work: true }, mailboxIds: { INBOX: true } },
      { id: idb, keywords: { $flagged: true }, mailboxIds: { [work]: true } },
    ]);

    // Path patches alone go through the grouped per-folder store; the result is the same.
    const paths = await invoke(ctx, 'Email/set', {
      update: { [ida]: { 'keywords/$answered': true, 'keywords/$work': null }, [idb]: { 'keywords/$answered': true, 'keywords/$work': null } },
    });
    expect(paths[1].updated).toEqual({ [ida]: null, [idb]: null });
    const after = await invoke(ctx, 'Email/get', { ids: [ida, idb], properties: ['keywords'] });
    expect((after[1].list as JsonObject[]).map((e) => e.keywords)).toEqual([
      { $seen: true, $answered: true },
      { $flagged: true, $answered: true },
    ]);
    const ch = await invoke(ctx, 'Email/changes', { sinceState: s0 });
    expect(ch[1]).toMatchObject({ created: [], destroyed: [], hasMoreChanges: false });
    expect((ch[1].updated as string[]).sort()).toEqual([ida, idb].sort());

    // An IMAP EXPUNGE is an Email destroyed; a copy in a second mailbox is an update.
    const s1 = String(ch[1].newState);
    await invoke(ctx, 'Email/set', { update: { [ida]: { [`mailboxIds/${work}`]: true } } });
    const both = one(await invoke(ctx, 'Email/get', { ids: [ida], properties: ['mailboxIds'] }));
    expect(both.mailboxIds).toEqual({ INBOX: true, [work]: true });
    const x = await imaplib({
      port: h.port,
      user: u,
      password: imapPassword(u),
      steps: [['login'], ['select', 'Work'], ['uid', 'STORE', '1', '+FLAGS', '(\\Deleted)'], ['expunge']],
    });
    expect(x.error).toBeUndefined();
    const c = await h.deliver(u, imapMessage(3));
    const ch2 = await invoke(ctx, 'Email/changes', { sinceState: s1 });
    expect(ch2[1].destroyed).toEqual([idb]);
    expect(ch2[1].updated).toEqual([ida]);
    expect(ch2[1].created).toEqual([emailIdOf(c.blobKey)]);

    // Destroy removes every copy; the blob goes with the last.
    const s2 = String(ch2[1].newState);
    const gone = await invoke(ctx, 'Email/set', { destroy: [ida, 'Mnope'] });
    expect(gone[1].destroyed).toEqual([ida]);
    expect((gone[1].notDestroyed as Record<string, JsonObject>).Mnope).toMatchObject({ type: 'notFound' });
    await expect(h.storage.mail.head(a.blobKey)).rejects.toThrow();
    const ch3 = await invoke(ctx, 'Email/changes', { sinceState: s2 });
    expect(ch3[1]).toMatchObject({ destroyed: [ida], created: [], updated: [] });
    expect((await invoke(ctx, 'Email/changes', { sinceState: 'x' }))[1].type).toBe('cannotCalculateChanges');
    expect((await invoke(ctx, 'Email/set', { ifInState: s0, destroy: [idb] }))[1].type).toBe('stateMismatch');
  });

  it('creates a draft with an attachment from an upload, and a failed create leaves no blob', async () => {
    const u = 'cy@example.com';
    const ctx = ctxFor(u);
    const drafts = await h.folders.ensureSpecialUse(u, '\\Drafts');
    const up = await ctx.blobs.put(PDF, 'application/pdf');
    const r = await invoke(ctx, 'Email/set', {
      create: {
        d1: {
          mailboxIds: { [drafts.id]: true },
          keywords: { $draft: true, $seen: true },
          from: [{ name: 'Cy', email: 'cy@example.com' }],
          to: [{ name: null, email: 'bob@example.com' }],
          subject: 'Draft one',
          inReplyTo: ['a@example.net'],
          textBody: [{ partId: 't', type: 'text/plain' }],
          htmlBody: [{ partId: 'h', type: 'text/html' }],
          bodyValues: { t: { value: 'Plain words' }, h: { value: '<p>HTML words</p>' } },
          attachments: [{ blobId: up.blobId, type: 'application/pdf', name: 'r.pdf' }],
        },
        nobox: { mailboxIds: { nope: true }, subject: 'x' },
        noblob: { mailboxIds: { [drafts.id]: true }, attachments: [{ blobId: 'Umissing' }] },
      },
    });
    const created = (r[1].created as Record<string, JsonObject>).d1!;
    expect(created.id).toMatch(/^M[0-9a-f]{24}$/);
    expect(r[1].notCreated).toMatchObject({ nobox: { type: 'invalidProperties' }, noblob: { type: 'blobNotFound' } });
    const e = one(
      await invoke(ctx, 'Email/get', {
        ids: [created.id],
        properties: ['subject', 'keywords', 'mailboxIds', 'inReplyTo', 'to', 'textBody', 'htmlBody', 'attachments', 'bodyValues'],
        fetchAllBodyValues: true,
      }),
    );
    expect(e).toMatchObject({
      subject: 'Draft one',
      keywords: { $draft: true, $seen: true },
      mailboxIds: { [drafts.id]: true },
      inReplyTo: ['a@example.net'],
      to: [{ email: 'bob@example.com' }],
    });
    const att = (e.attachments as JsonObject[])[0]!;
    expect(att).toMatchObject({ name: 'r.pdf', type: 'application/pdf', size: PDF.length });
    expect(await buffer(await (await ctx.blobs.get(String(att.blobId)))!.open())).toEqual(PDF);
    const values = Object.values(e.bodyValues as Record<string, JsonObject>).map((v) => String(v.value).trim());
    expect(values).toEqual(expect.arrayContaining(['Plain words', '<p>HTML words</p>']));
    const imap = await imaplib({
      port: h.port,
      user: u,
      password: imapPassword(u),
      steps: [['login'], ['select', 'Drafts'], ['fetch', '1', '(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])']],
    });
    expect(JSON.stringify(imap.results[2])).toMatch(/\\\\Draft/);
    expect(JSON.stringify(imap.results[2])).toContain('Draft one');

    // Over quota: the create fails and its blob is gone again.
    const before = (await h.storage.mail.list('jmap/')).items.length;
    await h.accounts.setQuota(u, (await h.folders.usage(u)).bytes + 10);
    const over = await invoke(ctx, 'Email/set', {
      create: { big: { mailboxIds: { [drafts.id]: true }, textBody: [{ partId: 't' }], bodyValues: { t: { value: 'x'.repeat(500) } } } },
    });
    expect((over[1].notCreated as Record<string, JsonObject>).big).toMatchObject({ type: 'overQuota' });
    expect((await h.storage.mail.list('jmap/')).items.length).toBe(before);
    await h.accounts.setQuota(u, 0);
  });
});

describe('Email/import, /parse, /copy (RFC 8621 §4.7-4.9)', () => {
  it('imports an uploaded message into two mailboxes and parses an uploaded one without storing it', async () => {
    const u = 'dee@example.com';
    const ctx = ctxFor(u);
    const made = await invoke(ctx, 'Mailbox/set', { create: { k: { name: 'Kept' } } });
    const kept = String((made[1].created as Record<string, JsonObject>).k!.id);
    const up = await ctx.blobs.put(Buffer.from(RICH), 'message/rfc822');
    const junk = await ctx.blobs.put(Buffer.from('\u0000not a message'), 'application/octet-stream');
    const imp = await invoke(ctx, 'Email/import', {
      emails: {
        i1: { blobId: up.blobId, mailboxIds: { INBOX: true, [kept]: true }, keywords: { $seen: true }, receivedAt: '2026-01-02T03:04:05Z' },
        i2: { blobId: 'Unone', mailboxIds: { INBOX: true } },
        i3: { blobId: junk.blobId, mailboxIds: { INBOX: true } },
      },
    });
    const i1 = (imp[1].created as Record<string, JsonObject>).i1!;
    expect(i1).toMatchObject({ size: Buffer.byteLength(RICH) });
    expect((imp[1].notCreated as Record<string, JsonObject>).i2).toMatchObject({ type: 'blobNotFound' });
    expect((imp[1].notCreated as Record<string, JsonObject>).i3).toMatchObject({ type: 'invalidEmail' });
    const e = one(await invoke(ctx, 'Email/get', { ids: [i1.id], properties: ['mailboxIds', 'keywords', 'receivedAt', 'subject'] }));
    expect(e).toEqual({
      id: i1.id,
      mailboxIds: { INBOX: true, [kept]: true },
      keywords: { $seen: true },
      receivedAt: '2026-01-02T03:04:05Z',
      subject: 'Grüße and a folded line',
    });
    const status = await invoke(ctx, 'Mailbox/get', { ids: ['INBOX'], properties: ['totalEmails', 'unreadEmails'] });
    expect(one(status)).toMatchObject({ totalEmails: 1, unreadEmails: 0 });

    const parsed = await invoke(ctx, 'Email/parse', { blobIds: [up.blobId, 'Unone'], fetchTextBodyValues: true });
    expect(parsed[1].notFound).toEqual(['Unone']);
    const p = (parsed[1].parsed as Record<string, JsonObject>)[up.blobId]!;
    expect(p).toMatchObject({ subject: 'Grüße and a folded line', messageId: ['rich@example.net'], hasAttachment: true });
    expect(Object.values(p.bodyValues as JsonObject)).toHaveLength(1);
    const notMail = await ctx.blobs.put(Buffer.from([0, 1, 2]), 'application/octet-stream');
    expect((await invoke(ctx, 'Email/parse', { blobIds: [notMail.blobId] }))[1].notParsable).toEqual([notMail.blobId]);

    expect((await invoke(ctx, 'Email/copy', { fromAccountId: 'Aother', create: {} }))[1].type).toBe('fromAccountNotFound');
    void Readable;
  });
});
