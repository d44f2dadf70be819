/**
 * The JMAP mail methods over real HTTPS against the web listener on the aws storage family
 * (DynamoDB and S3 on moto), as issue 22 asks of both families: a reply chain delivered as the
 * inbound worker files it, then Mailbox/get (special-use roles made at first use), Email/query and
 * Email/get by result reference (body values, text body, preview, threadId), Thread/get,
 * Email/set of keywords and mailboxIds (a move to Archive), Email/changes after an expunge made
 * outside JMAP (IMAP's path) and one made by Email/set, Mailbox/set create, rename and destroy,
 * and Email/import of an upload with downloads of its blobId and of an attachment's blobId.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { accountIdOf } from '../../containers/web/jmap/auth.js';
import { emailIdOf } from '../../core/mailbox/email-ids.js';
import { FolderStore } from '../../core/mailbox/folders.js';
import { startMoto, type AwsTestBackend } from '../support/moto.js';
import { startWebHarness, type WebHarness } from './harness.js';

const ALICE = 'alice@example.com';
const USING = ['urn:ietf:params:jmap:core', 'urn:ietf:params:jmap:mail'];
const PDF = Buffer.from('%PDF-1.4 a small document on S3\n'.repeat(40));

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
let moto: AwsTestBackend;
let h: WebHarness;
let accountId: string;

/** One JMAP request of `calls` as Alice; returns the method responses, failing on a non-200. */
async function call(...calls: [string, Json, string][]): Promise<[string, Json, string][]> {
  const r = await h.api({ using: USING, methodCalls: calls }, ALICE);
  expect(r.status, JSON.stringify(r.json)).toBe(200);
  return r.json.methodResponses as [string, Json, string][];
}

/** The arguments of the one response named `name` with call id `id`; fails on an error response. */
function pick(responses: [string, Json, string][], name: string, id: string): Json {
  const found = responses.find((r) => r[2] === id);
  expect(found?.[0], JSON.stringify(found)).toBe(name);
  return found![1];
}

const chain = (n: number, refs: string[]) =>
  [
    'From: Bob <bob@example.net>',
    `To: ${ALICE}`,
    `Subject: ${n === 1 ? 'Plans for Friday' : 'Re: Plans for Friday'}`,
    `Message-ID: <plans${n}@example.net>`,
    ...(refs.length ? [`In-Reply-To: ${refs[refs.length - 1]}`, `References: ${refs.join(' ')}`] : []),
    `Date: Mon, 7 Dec 2026 1${n}:00:00 +0000`,
    '',
    `Reply number ${n} in the chain, with words to preview.`,
    '',
  ].join('\r\n');

const withAttachment = [
  'From: Carol <carol@example.org>',
  `To: ${ALICE}`,
  'Subject: The report',
  'Message-ID: <report@example.org>',
  'MIME-Version: 1.0',
  'Content-Type: multipart/mixed; boundary="b"',
  '',
  '--b',
  'Content-Type: text/plain; charset=utf-8',
  '',
  'The report is attached.',
  '--b',
  'Content-Type: application/pdf; name="report.pdf"',
  'Content-Disposition: attachment; filename="report.pdf"',
  'Content-Transfer-Encoding: base64',
  '',
  PDF.toString('base64').replace(/.{76}/g, '$&\r\n'),
  '--b--',
  '',
].join('\r\n');

beforeAll(async () => {
  moto = await startMoto();
  // The full registry of registry.ts (every mail module), as `serve web` runs it.
  h = await startWebHarness(moto.env, {}, [ALICE]);
  accountId = accountIdOf(ALICE);
  await h.deliver(ALICE, chain(1, []));
  await h.deliver(ALICE, chain(2, ['<plans1@example.net>']));
  await h.deliver(ALICE, chain(3, ['<plans1@example.net>', '<plans2@example.net>']));
  await h.deliver(ALICE, withAttachment);
}, 120_000);
afterAll(async () => {
  await h?.close();
  await moto?.stop();
});

/** Mailbox ids by role (and by name for the ones without a role). */
async function mailboxes(): Promise<Map<string, Json>> {
  const get = pick(await call(['Mailbox/get', { accountId, ids: null }, 'm']), 'Mailbox/get', 'm');
  return new Map((get.list as Json[]).map((m) => [m.role ?? m.name, m]));
}

describe('JMAP mail over HTTPS on aws storage', () => {
  it('Mailbox/get makes the special-use mailboxes at first use and counts the inbox', async () => {
    const boxes = await mailboxes();
    expect([...boxes.keys()].sort()).toEqual(['archive', 'drafts', 'inbox', 'junk', 'sent', 'trash']);
    // The reply chain of three is one thread, the other message another.
    expect(boxes.get('inbox')).toMatchObject({ name: 'INBOX', totalEmails: 4, unreadEmails: 4, totalThreads: 2, unreadThreads: 2, parentId: null });
    expect(boxes.get('archive')).toMatchObject({ name: 'Archive', totalEmails: 0 });
    // Made once: a second read gives the same ids.
    const again = await mailboxes();
    expect(again.get('archive')!.id).toBe(boxes.get('archive')!.id);
  });

  it('Email/query then Email/get and Thread/get by result reference', async () => {
    const inbox = (await mailboxes()).get('inbox')!.id as string;
    const r = await call(
      ['Email/query', { accountId, filter: { inMailbox: inbox }, sort: [{ property: 'receivedAt', isAscending: false }], limit: 50 }, 'q'],
      [
        'Email/get',
        {
          accountId,
          '#ids': { resultOf: 'q', name: 'Email/query', path: '/ids' },
          properties: ['subject', 'threadId', 'preview', 'textBody', 'bodyValues', 'messageId'],
          fetchTextBodyValues: true,
        },
        'g',
      ],
      ['Thread/get', { accountId, '#ids': { resultOf: 'g', name: 'Email/get', path: '/list/*/threadId' } }, 't'],
    );
    const q = pick(r, 'Email/query', 'q');
    expect(q.ids).toHaveLength(4);
    const list = pick(r, 'Email/get', 'g').list as Json[];
    expect(list.map((e) => e.id)).toEqual(q.ids);
    // Newest first: the report, then the chain backwards.
    expect(list.map((e) => e.messageId[0])).toEqual(['report@example.org', 'plans3@example.net', 'plans2@example.net', 'plans1@example.net']);
    const plans = list.slice(1);
    expect(new Set(plans.map((e) => e.threadId)).size).toBe(1);
    expect(list[0].threadId).not.toBe(plans[0].threadId);
    const third = plans[0];
    expect(third.preview).toBe('Reply number 3 in the chain, with words to preview.');
    expect(third.textBody).toHaveLength(1);
    expect(third.textBody[0]).toMatchObject({ type: 'text/plain' });
    expect(third.bodyValues[third.textBody[0].partId].value).toContain('Reply number 3 in the chain');

    const threads = pick(r, 'Thread/get', 't');
    const chainThread = (threads.list as Json[]).find((t) => t.id === third.threadId)!;
    // RFC 8621 §3: the thread's Emails oldest first.
    expect(chainThread.emailIds).toEqual([...plans].reverse().map((e) => e.id));
    expect((threads.list as Json[]).find((t) => t.id === list[0].threadId)!.emailIds).toEqual([list[0].id]);
  });

  it('Email/set changes keywords and moves to Archive; Mailbox counts follow', async () => {
    const boxes = await mailboxes();
    const inbox = boxes.get('inbox')!.id as string;
    const archive = boxes.get('archive')!.id as string;
    const q = pick(await call(['Email/query', { accountId, filter: { inMailbox: inbox, text: 'Plans' } }, 'q']), 'Email/query', 'q');
    expect(q.ids).toHaveLength(3);
    const [first] = q.ids as string[];
    const set = pick(
      await call([
        'Email/set',
        { accountId, update: { [first]: { 'keywords/$seen': true, 'keywords/$flagged': true, mailboxIds: { [archive]: true } } } },
        's',
      ]),
      'Email/set',
      's',
    );
    expect(set.notUpdated ?? null).toBeNull();
    expect(Object.keys(set.updated)).toEqual([first]);
    const got = pick(await call(['Email/get', { accountId, ids: [first], properties: ['keywords', 'mailboxIds'] }, 'g']), 'Email/get', 'g');
    expect(got.list[0]).toEqual({ id: first, keywords: { $seen: true, $flagged: true }, mailboxIds: { [archive]: true } });
    const after = await mailboxes();
    expect(after.get('inbox')).toMatchObject({ totalEmails: 3, unreadEmails: 3, totalThreads: 2, unreadThreads: 2 });
    // RFC 8621 §2: the thread is unread in Archive too, by its unread Emails in INBOX.
    expect(after.get('archive')).toMatchObject({ totalEmails: 1, unreadEmails: 0, totalThreads: 1, unreadThreads: 1 });
  });

  it('Email/changes reports an expunge made outside JMAP and one made by Email/set destroy', async () => {
    const boxes = await mailboxes();
    const inbox = boxes.get('inbox')!.id as string;
    const before = pick(await call(['Email/get', { accountId, ids: [] }, 'g']), 'Email/get', 'g').state as string;
    // IMAP's path: the folder store's expunge, as an IMAP EXPUNGE makes it.
    const folders = new FolderStore(h.storage.tables, h.storage.mail);
    const found = pick(await call(['Email/query', { accountId, filter: { inMailbox: inbox, subject: 'report' } }, 'q']), 'Email/query', 'q');
    expect(found.ids).toHaveLength(1);
    const expunged = found.ids[0] as string;
    const { items } = await folders.messages(ALICE, inbox);
    const report = items.find((m) => emailIdOf(m.blobKey) === expunged)!;
    await folders.expunge(ALICE, inbox, [report.uid]);

    const c1 = pick(await call(['Email/changes', { accountId, sinceState: before }, 'c']), 'Email/changes', 'c');
    expect(c1.destroyed).toEqual([expunged]);
    expect(c1.created).toEqual([]);
    expect(c1.updated).toEqual([]);
    expect(c1.newState).not.toBe(before);

    const other = emailIdOf(items.find((m) => m.uid !== report.uid)!.blobKey);
    const d = pick(await call(['Email/set', { accountId, ifInState: c1.newState, destroy: [other] }, 'd']), 'Email/set', 'd');
    expect(d.destroyed).toEqual([other]);
    const c2 = pick(await call(['Email/changes', { accountId, sinceState: c1.newState }, 'c']), 'Email/changes', 'c');
    expect(c2.destroyed).toEqual([other]);
    expect(c2.hasMoreChanges).toBe(false);
    // An old state after the changes: both, once each.
    const c3 = pick(await call(['Email/changes', { accountId, sinceState: before }, 'c']), 'Email/changes', 'c');
    expect([...c3.destroyed].sort()).toEqual([expunged, other].sort());
  });

  it('Mailbox/set creates, renames and destroys a mailbox (with its Emails when asked)', async () => {
    const inbox = (await mailboxes()).get('inbox')!.id as string;
    const created = pick(await call(['Mailbox/set', { accountId, create: { p: { name: 'Projects', parentId: null } } }, 's']), 'Mailbox/set', 's');
    const id = created.created.p.id as string;
    expect(id).toBeTruthy();
    const inboxIds = pick(await call(['Email/query', { accountId, filter: { inMailbox: inbox } }, 'q']), 'Email/query', 'q').ids as string[];
    const moved = inboxIds[0];
    await call(['Email/set', { accountId, update: { [moved]: { [`mailboxIds/${id}`]: true, [`mailboxIds/${inbox}`]: null } } }, 'm']);
    const renamed = pick(await call(['Mailbox/set', { accountId, update: { [id]: { name: 'Projects 2027' } } }, 's']), 'Mailbox/set', 's');
    expect(Object.keys(renamed.updated)).toEqual([id]);
    const boxes = await mailboxes();
    expect(boxes.get('Projects 2027')).toMatchObject({ id, totalEmails: 1 });
    expect(boxes.has('Projects')).toBe(false);

    // Not empty: refused without onDestroyRemoveEmails (§2.5), then destroyed with it.
    const refused = pick(await call(['Mailbox/set', { accountId, destroy: [id] }, 's']), 'Mailbox/set', 's');
    expect(refused.notDestroyed[id].type).toBe('mailboxHasEmail');
    const gone = pick(await call(['Mailbox/set', { accountId, destroy: [id], onDestroyRemoveEmails: true }, 's']), 'Mailbox/set', 's');
    expect(gone.destroyed).toEqual([id]);
    expect((await mailboxes()).has('Projects 2027')).toBe(false);
    const e = pick(await call(['Email/get', { accountId, ids: [moved], properties: ['id'] }, 'g']), 'Email/get', 'g');
    expect(e.notFound).toEqual([moved]);
  });

  it('pushes EmailDelivery for new mail and not for a keyword change (change log read on DynamoDB)', async () => {
    const inbox = (await mailboxes()).get('inbox')!.id as string;
    const some = pick(await call(['Email/query', { accountId, filter: { inMailbox: inbox }, limit: 1 }, 'q']), 'Email/query', 'q').ids[0] as string;
    const res = await h.fetch('/jmap/eventsource/?types=EmailDelivery&closeafter=state&ping=0', { user: ALICE });
    expect(res.status).toBe(200);
    const body = res.text();
    await call(['Email/set', { accountId, update: { [some]: { 'keywords/$answered': true } } }, 's']);
    // The keyword change is in the log before the delivery: the one event must be the delivery's.
    const position = await new FolderStore(h.storage.tables, h.storage.mail).changes.position(ALICE);
    await h.deliver(ALICE, chain(4, ['<plans1@example.net>', '<plans2@example.net>', '<plans3@example.net>']));
    const events = (await body).split('\n\n').filter((e) => e.startsWith('event: state'));
    expect(events).toHaveLength(1);
    const changed = JSON.parse(events[0].split('\ndata: ')[1]).changed[accountId];
    expect(Object.keys(changed)).toEqual(['EmailDelivery']);
    expect(Number(changed.EmailDelivery)).toBeGreaterThan(position);
  });

  it('imports an uploaded message and downloads its blob and an attachment from S3', async () => {
    const boxes = await mailboxes();
    const inbox = boxes.get('inbox')!.id as string;
    const raw = withAttachment.replace('<report@example.org>', '<imported@example.org>').replace('Subject: The report', 'Subject: Imported report');
    const up = await h.fetch(`/jmap/upload/${accountId}/`, { method: 'POST', user: ALICE, headers: { 'content-type': 'message/rfc822' }, body: raw });
    expect(up.status).toBe(201);
    const { blobId } = (await up.json()) as { blobId: string };
    const r = await call(
      [
        'Email/import',
        { accountId, emails: { i: { blobId, mailboxIds: { [inbox]: true }, keywords: { $seen: true }, receivedAt: '2026-12-07T16:00:00Z' } } },
        'i',
      ],
      ['Email/get', { accountId, ids: ['#i'], properties: ['blobId', 'subject', 'attachments', 'receivedAt', 'size'] }, 'g'],
    );
    const imported = pick(r, 'Email/import', 'i').created.i;
    const email = pick(r, 'Email/get', 'g').list[0] as Json;
    expect(email).toMatchObject({ id: imported.id, subject: 'Imported report', receivedAt: '2026-12-07T16:00:00Z', size: Buffer.byteLength(raw) });
    expect(email.blobId).toBe(imported.blobId);

    const whole = await h.fetch(`/jmap/download/${accountId}/${email.blobId}/message.eml?type=message/rfc822`, { user: ALICE });
    expect(whole.status).toBe(200);
    expect(await whole.text()).toBe(raw);

    expect(email.attachments).toHaveLength(1);
    const att = email.attachments[0] as Json;
    expect(att).toMatchObject({ name: 'report.pdf', type: 'application/pdf', size: PDF.length });
    const part = await h.fetch(`/jmap/download/${accountId}/${att.blobId}/report.pdf?type=application/pdf`, { user: ALICE });
    expect(part.status).toBe(200);
    expect(part.headers.get('content-type')).toMatch(/^application\/pdf/);
    expect(Buffer.from(await part.arrayBuffer()).equals(PDF)).toBe(true);
  });
});
