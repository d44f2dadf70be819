/**
 * Email/set create from a full bodyStructure (RFC 8621 §4.6) and the part blobIds of Email/parse
 * (§4.9), through the real web listener over HTTPS: upload, the JMAP API, download. A created
 * Email is read back with Email/get and its raw bytes are parsed by mailparser; §4.6's rules come
 * back as invalidProperties with the property's path, and a refused create stores nothing.
 */
import { simpleParser } from 'mailparser';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { accountIdOf } from '../../containers/web/jmap/auth.js';
import { startWebHarness, type WebHarness } from '../web/harness.js';

const ALICE = 'alice@example.com';
const BOB = 'bob@example.com';
const USING = ['urn:ietf:params:jmap:core', 'urn:ietf:params:jmap:mail'];
let h: WebHarness;

beforeAll(async () => {
  h = await startWebHarness({}, {}, [ALICE, BOB]);
});
afterAll(async () => h?.close());

type Json = Record<string, unknown>;

/** One method call as `user`; the response's arguments (or the error, named 'error'). */
async function call(name: string, args: Json, user = ALICE): Promise<[string, Json]> {
  const r = await h.api({ using: USING, methodCalls: [[name, { accountId: accountIdOf(user), ...args }, 'c']] }, user);
  expect(r.status).toBe(200);
  const [res] = r.json.methodResponses as [string, Json, string][];
  return [res![0], res![1]];
}

async function upload(body: Buffer | string, type: string, user = ALICE): Promise<string> {
  const res = await h.fetch(`/jmap/upload/${accountIdOf(user)}/`, { method: 'POST', user, headers: { 'content-type': type }, body });
  expect(res.status).toBe(201);
  return ((await res.json()) as { blobId: string }).blobId;
}

async function download(blobId: string, user = ALICE): Promise<{ status: number; bytes: Buffer; type: string | null }> {
  const res = await h.fetch(`/jmap/download/${accountIdOf(user)}/${blobId}/x`, { user });
  return { status: res.status, bytes: Buffer.from(await res.arrayBuffer()), type: res.headers.get('content-type') };
}

async function inboxCount(): Promise<number> {
  const [, r] = await call('Mailbox/get', { ids: ['INBOX'], properties: ['totalEmails'] });
  return (r.list as Json[])[0]!.totalEmails as number;
}

/** Binary bytes every value of which occurs, so any transfer-encoding slip shows. */
const PDF = Buffer.concat([Buffer.from('%PDF-1.4\n'), Buffer.from(Array.from({ length: 3000 }, (_, i) => (i * 7) % 256))]);

describe('Email/set create from a bodyStructure (RFC 8621 §4.6)', () => {
  it('builds multipart/mixed with an alternative and an uploaded attachment, read back alike by Email/get and a MIME parser', async () => {
    const pdf = await upload(PDF, 'application/pdf');
    const text = 'Hallo J\u00fcrgen,\r\nthe plain text part, with a line that is long enough to need folding by quoted-printable somewhere past column 76.\r\n';
    const html = '<p>Hallo <b>J\u00fcrgen</b></p>';
    const [name, set] = await call('Email/set', {
      create: {
        d1: {
          mailboxIds: { INBOX: true },
          keywords: { $draft: true },
          from: [{ name: 'Alice', email: ALICE }],
          to: [{ name: 'J\u00fcrgen', email: 'j@example.net' }],
          subject: 'Bericht f\u00fcr Dezember',
          'header:X-Tracking:asText': 'case 42',
          'header:List-Unsubscribe:asURLs': ['mailto:leave@example.com'],
          bodyValues: { t: { value: text }, h: { value: html, isTruncated: false } },
          bodyStructure: {
            type: 'multipart/mixed',
            subParts: [
              {
                type: 'multipart/alternative',
                subParts: [
                  { partId: 't', type: 'text/plain', 'header:X-Part:asText': 'plain one' },
                  { partId: 'h', type: 'text/html', language: ['de', 'en'], location: 'https://example.com/b.html' },
                ],
              },
              { blobId: pdf, type: 'application/pdf', name: 'Bericht M\u00e4rz.pdf', disposition: 'attachment', cid: 'report@x', size: 1 },
            ],
          },
        },
      },
    });
    expect(name).toBe('Email/set');
    expect(set.notCreated).toBeNull();
    const created = (set.created as Record<string, Json>).d1!;
    expect(created).toMatchObject({ id: expect.stringMatching(/^M[0-9a-f]{24}$/), blobId: `G${created.id as string}` });

    const [, got] = await call('Email/get', {
      ids: [created.id],
      properties: [
        'subject',
        'from',
        'to',
        'keywords',
        'bodyStructure',
        'textBody',
        'htmlBody',
        'attachments',
        'bodyValues',
        'hasAttachment',
        'header:X-Tracking:asText',
        'header:List-Unsubscribe:asURLs',
      ],
      bodyProperties: ['partId', 'blobId', 'size', 'type', 'charset', 'name', 'disposition', 'cid', 'language', 'location', 'header:X-Part:asText'],
      fetchAllBodyValues: true,
    });
    const email = (got.list as Json[])[0]!;
    expect(email).toMatchObject({
      subject: 'Bericht f\u00fcr Dezember',
      from: [{ name: 'Alice', email: ALICE }],
      to: [{ name: 'J\u00fcrgen', email: 'j@example.net' }],
      keywords: { $draft: true },
      hasAttachment: true,
      'header:X-Tracking:asText': 'case 42',
      'header:List-Unsubscribe:asURLs': ['mailto:leave@example.com'],
    });
    const s = email.bodyStructure as Json & { subParts: (Json & { subParts?: Json[] })[] };
    expect(s.type).toBe('multipart/mixed');
    expect(s.subParts.map((p) => p.type)).toEqual(['multipart/alternative', 'application/pdf']);
    const [plain, rich] = s.subParts[0]!.subParts!;
    expect(plain).toMatchObject({ partId: '1', type: 'text/plain', charset: 'utf-8', 'header:X-Part:asText': 'plain one' });
    expect(rich).toMatchObject({
      partId: '2',
      type: 'text/html',
      charset: 'utf-8',
      language: ['de', 'en'],
      location: 'https://example.com/b.html',
      'header:X-Part:asText': null,
    });
    // The size given with the blob is ignored (§4.6): the blob's own counts.
    expect(s.subParts[1]).toMatchObject({ partId: '3', name: 'Bericht M\u00e4rz.pdf', disposition: 'attachment', cid: 'report@x', size: PDF.length });
    expect((email.textBody as Json[]).map((p) => p.partId)).toEqual(['1']);
    expect((email.htmlBody as Json[]).map((p) => p.partId)).toEqual(['2']);
    expect((email.attachments as Json[]).map((p) => p.partId)).toEqual(['3']);
    expect(email.bodyValues).toEqual({
      '1': { value: text, isEncodingProblem: false, isTruncated: false },
      '2': { value: html, isEncodingProblem: false, isTruncated: false },
    });

    // The raw message: the transfer encodings are the server's, and every part decodes back.
    const raw = await download(created.blobId as string);
    expect(raw.status).toBe(200);
    const head = raw.bytes.toString('latin1');
    expect(head).toMatch(/^Content-Transfer-Encoding: (quoted-printable|base64)$/im);
    expect(head).not.toMatch(/[^\x00-\x7f]/); // 7-bit clean: non-ASCII is encoded
    const mail = await simpleParser(raw.bytes);
    expect(mail.subject).toBe('Bericht f\u00fcr Dezember');
    expect(mail.text).toBe(text.replace(/\r\n/g, '\n'));
    expect(mail.html).toBe(html);
    expect(mail.headers.get('x-tracking')).toBe('case 42');
    expect(mail.attachments).toHaveLength(1);
    expect(mail.attachments[0]!.filename).toBe('Bericht M\u00e4rz.pdf');
    expect(mail.attachments[0]!.contentType).toBe('application/pdf');
    expect(Buffer.compare(mail.attachments[0]!.content, PDF)).toBe(0);
    // And the part's own blob is the attachment's bytes.
    const part = await download(`G${created.id as string}P3`);
    expect(part.type).toBe('application/pdf');
    expect(Buffer.compare(part.bytes, PDF)).toBe(0);
  });

  it('refuses what §4.6 rules out, naming the property by its path, and stores nothing', async () => {
    const before = await inboxCount();
    const pdf = await upload(PDF, 'application/pdf');
    const base = { mailboxIds: { INBOX: true }, bodyValues: { t: { value: 'x' } } };
    const leaf = { partId: 't', type: 'text/plain' };
    const cases: [Json, Json][] = [
      [
        { bodyStructure: leaf, textBody: [leaf] },
        { type: 'invalidProperties', properties: ['bodyStructure', 'textBody'] },
      ],
      [
        { bodyStructure: { type: 'multipart/mixed', subParts: [{ ...leaf, charset: 'iso-8859-1' }] } },
        { type: 'invalidProperties', properties: ['bodyStructure/subParts/0/charset'] },
      ],
      [
        { bodyStructure: { type: 'multipart/mixed', subParts: [leaf, { ...leaf, size: 1 }] } },
        { type: 'invalidProperties', properties: ['bodyStructure/subParts/1/size'] },
      ],
      [
        { bodyStructure: { ...leaf, 'header:Content-Transfer-Encoding': ' base64' } },
        { type: 'invalidProperties', properties: ['bodyStructure/header:Content-Transfer-Encoding'] },
      ],
      [{ bodyStructure: { ...leaf, headers: [{ name: 'X-A', value: 'b' }] } }, { type: 'invalidProperties', properties: ['bodyStructure/headers'] }],
      [{ bodyStructure: { ...leaf, blobId: pdf } }, { type: 'invalidProperties', properties: ['bodyStructure/blobId'] }],
      [{ bodyStructure: { partId: 'nope', type: 'text/plain' } }, { type: 'invalidProperties', properties: ['bodyStructure/partId'] }],
      [{ bodyStructure: { type: 'multipart/alternative', subParts: [] } }, { type: 'invalidProperties', properties: ['bodyStructure/subParts'] }],
      [{ bodyStructure: { type: 'multipart/mixed', subParts: [leaf, 'text'] } }, { type: 'invalidProperties', properties: ['bodyStructure/subParts/1'] }],
      [{ bodyStructure: { blobId: 'U0123456789abcdef01234567', type: 'image/png' } }, { type: 'blobNotFound', notFound: ['U0123456789abcdef01234567'] }],
      [
        { bodyStructure: leaf, 'header:Content-Type': ' text/html' },
        { type: 'invalidProperties', properties: ['header:Content-Type'] },
      ],
      [
        { bodyStructure: leaf, subject: 'a', 'header:subject:asText': 'b' },
        { type: 'invalidProperties', properties: ['header:subject:asText'] },
      ],
      [
        { bodyStructure: { ...leaf, 'header:Subject:asText': 'b' }, subject: 'a' },
        { type: 'invalidProperties', properties: ['bodyStructure/header:Subject:asText'] },
      ],
      [
        { bodyStructure: leaf, 'header:From:asDate': '2026-01-01T00:00:00Z' },
        { type: 'invalidProperties', properties: ['header:From:asDate'] },
      ],
      [
        { bodyStructure: leaf, 'header:X-A:asText': 'two\r\nlines' },
        { type: 'invalidProperties', properties: ['header:X-A:asText'] },
      ],
      [
        { bodyStructure: leaf, bodyValues: { t: { value: 'x', isTruncated: true } } },
        { type: 'invalidProperties', properties: ['bodyValues/t'] },
      ],
      [
        { bodyStructure: leaf, headers: [] },
        { type: 'invalidProperties', properties: ['headers'] },
      ],
    ];
    const create = Object.fromEntries(cases.map(([o], i) => [`c${i}`, { ...base, ...o }]));
    const [, set] = await call('Email/set', { create });
    expect(set.created).toBeNull();
    const notCreated = set.notCreated as Record<string, Json>;
    cases.forEach(([, want], i) => expect(notCreated[`c${i}`], `case ${i}`).toMatchObject(want));
    expect(await inboxCount()).toBe(before);
  });

  it('writes header: properties in each form, top level and on parts, as Email/get reads them back', async () => {
    const [, set] = await call('Email/set', {
      create: {
        f: {
          mailboxIds: { INBOX: true },
          'header:X-Raw': ' raw \u00e9 value',
          'header:Resent-To:asGroupedAddresses': [
            { name: 'Gr\u00fcppe', addresses: [{ name: 'Cy, the third', email: 'cy@example.com' }] },
            { name: null, addresses: [{ name: null, email: 'dee@example.com' }] },
            { name: 'a "team"', addresses: [] },
          ],
          'header:Resent-Date:asDate': '2026-12-07T10:00:00Z',
          'header:Resent-Message-ID:asMessageIds': ['one@x', 'two@x'],
          'header:Comments:asText:all': ['first', 'zweit\u00e9'],
          bodyValues: { t: { value: 'body' } },
          bodyStructure: { partId: 't', 'header:X-Leaf:asText': 'leaf' },
        },
      },
    });
    const id = ((set.created as Record<string, Json>).f as Json).id as string;
    const [, got] = await call('Email/get', {
      ids: [id],
      properties: [
        'header:X-Raw',
        'header:Resent-To:asGroupedAddresses',
        'header:Resent-Date:asDate',
        'header:Resent-Message-ID:asMessageIds',
        'header:Comments:asText:all',
        'bodyStructure',
      ],
      bodyProperties: ['type', 'header:X-Leaf:asText'],
    });
    expect((got.list as Json[])[0]).toMatchObject({
      'header:X-Raw': ' raw \u00e9 value',
      'header:Resent-To:asGroupedAddresses': [
        { name: 'Gr\u00fcppe', addresses: [{ name: 'Cy, the third', email: 'cy@example.com' }] },
        { name: null, addresses: [{ name: null, email: 'dee@example.com' }] },
        { name: 'a "team"', addresses: [] },
      ],
      'header:Resent-Date:asDate': '2026-12-07T10:00:00Z',
      'header:Resent-Message-ID:asMessageIds': ['one@x', 'two@x'],
      'header:Comments:asText:all': ['first', 'zweit\u00e9'],
      bodyStructure: { type: 'text/plain', 'header:X-Leaf:asText': 'leaf' },
    });
  });
});

const ATTACHED = [
  'From: Cy <cy@example.com>',
  'To: alice@example.com',
  'Subject: with an attachment',
  'MIME-Version: 1.0',
  'Content-Type: multipart/mixed; boundary="b"',
  '',
  '--b',
  'Content-Type: text/plain; charset=utf-8',
  '',
  'See the attachment.',
  '--b',
  'Content-Type: application/pdf; name="a.pdf"',
  'Content-Disposition: attachment; filename="a.pdf"',
  'Content-Transfer-Encoding: base64',
  '',
  PDF.toString('base64').replace(/.{76}/g, '$&\r\n'),
  '--b--',
  '',
].join('\r\n');

describe('Email/parse part blobIds (RFC 8621 §4.9)', () => {
  it('names the parts of a parsed upload so that each downloads decoded, for the owner only', async () => {
    const up = await upload(ATTACHED, 'message/rfc822');
    const [, parsed] = await call('Email/parse', { blobIds: [up], properties: ['subject', 'textBody', 'attachments'] });
    const email = (parsed.parsed as Record<string, Json>)[up]!;
    expect(email.subject).toBe('with an attachment');
    const [att] = email.attachments as Json[];
    expect(att).toMatchObject({ partId: '2', blobId: `${up}P2`, name: 'a.pdf', size: PDF.length });
    expect((email.textBody as Json[])[0]).toMatchObject({ blobId: `${up}P1` });

    const got = await download(att!.blobId as string);
    expect(got.status).toBe(200);
    expect(got.type).toBe('application/pdf');
    expect(Buffer.compare(got.bytes, PDF)).toBe(0);
    expect((await download(`${up}P1`)).bytes.toString()).toBe('See the attachment.');
    // A part the message does not have, and the part asked for by someone else: nothing.
    expect((await download(`${up}P9`)).status).toBe(404);
    expect((await download(att!.blobId as string, BOB)).status).toBe(404);
    // The part blob serves other methods too: parsed again it is no message, but it is found.
    const [, again] = await call('Email/parse', { blobIds: [`${up}P2`, `${up}P7`] });
    expect(again.notFound).toEqual([`${up}P7`]);

    // A stored Email parsed by its blobId names its parts as Email/get does.
    const [, imported] = await call('Email/import', { emails: { i: { blobId: up, mailboxIds: { INBOX: true } } } });
    const blobId = ((imported.created as Record<string, Json>).i as Json).blobId as string;
    const [, p2] = await call('Email/parse', { blobIds: [blobId], properties: ['attachments'] });
    expect(((p2.parsed as Record<string, Json>)[blobId]!.attachments as Json[])[0]).toMatchObject({ blobId: `${blobId}P2` });
    expect(Buffer.compare((await download(`${blobId}P2`)).bytes, PDF)).toBe(0);
  });
});

describe('Email/get on broken charsets and repeated fields (RFC 8621 §4.1.2, §4.1.4)', () => {
  it('flags isEncodingProblem for an unknown charset and invalid octets only, and gives every instance of a field', async () => {
    const bad = Buffer.from([0x48, 0x69, 0x20, 0xff, 0xfe, 0x21]); // "Hi " + invalid UTF-8 + "!"
    // A text part longer than the server keeps, cut by it in the middle of a 2-octet character.
    const long = 'x' + '\u00e9'.repeat(600 * 1024);
    const raw = [
      'From: cy@example.com',
      'To: alice@example.com',
      'Subject: charsets',
      'X-Multi: one',
      'X-Multi:  two ',
      'X-Multi: =?utf-8?q?dr=C3=A8i?=',
      'MIME-Version: 1.0',
      'Content-Type: multipart/mixed; boundary="b"',
      '',
      '--b',
      'Content-Type: text/plain; charset=x-no-such-charset',
      '',
      'plain ascii under an unknown charset',
      '--b',
      'Content-Type: text/plain; charset=utf-8',
      'Content-Transfer-Encoding: base64',
      '',
      bad.toString('base64'),
      '--b',
      'Content-Type: text/plain; charset=utf-8',
      'Content-Transfer-Encoding: base64',
      '',
      Buffer.from(long).toString('base64').replace(/.{76}/g, '$&\r\n'),
      '--b',
      'Content-Type: text/plain; charset=iso-8859-1',
      'Content-Transfer-Encoding: base64',
      '',
      Buffer.from([0x63, 0x61, 0x66, 0xe9]).toString('base64'),
      '--b',
      'Content-Type: text/plain; charset=utf-8',
      'Content-Transfer-Encoding: x-unheard-of',
      '',
      'as it came',
      '--b--',
      '',
    ].join('\r\n');
    const up = await upload(raw, 'message/rfc822');
    const [, imported] = await call('Email/import', { emails: { i: { blobId: up, mailboxIds: { INBOX: true } } } });
    const id = ((imported.created as Record<string, Json>).i as Json).id as string;
    const [, got] = await call('Email/get', {
      ids: [id],
      properties: ['bodyValues', 'header:X-Multi:all', 'header:X-Multi:asText:all', 'header:X-Multi:asText', 'header:X-None:all'],
      fetchAllBodyValues: true,
    });
    const email = (got.list as Json[])[0]!;
    expect(email['header:X-Multi:all']).toEqual([' one', '  two ', ' =?utf-8?q?dr=C3=A8i?=']);
    expect(email['header:X-Multi:asText:all']).toEqual(['one', 'two', 'dr\u00e8i']);
    expect(email['header:X-Multi:asText']).toBe('dr\u00e8i');
    expect(email['header:X-None:all']).toEqual([]);
    const values = email.bodyValues as Record<string, Json>;
    expect(values['1']).toEqual({ value: 'plain ascii under an unknown charset', isEncodingProblem: true, isTruncated: false });
    expect(values['2']).toEqual({ value: 'Hi \ufffd\ufffd!', isEncodingProblem: true, isTruncated: false });
    expect(values['3']).toMatchObject({ isEncodingProblem: false, isTruncated: true });
    expect((values['3']!.value as string).endsWith('\u00e9\u00e9')).toBe(true);
    expect(values['4']).toEqual({ value: 'caf\u00e9', isEncodingProblem: false, isTruncated: false });
    // §4.1.4: an unknown transfer encoding is an encoding problem; the value is the octets as they came.
    expect(values['5']).toEqual({ value: 'as it came', isEncodingProblem: true, isTruncated: false });
  });
});
