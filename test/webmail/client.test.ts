/**
 * The webmail's JMAP client (containers/web/webmail/client/jmap-client.ts) against the real web
 * listener, with HTTP Basic as a test would use it: the session, a query window with its
 * summaries in one request, thread sizes, the reader's Email, keyword updates, /set refusals as
 * errors, upload and download. Plus the address parsing the compose fields rely on.
 */
import { fetch as undiciFetch } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatAddresses, JmapClient, JmapSetError, parseAddresses } from '../../containers/web/webmail/client/jmap-client.js';
import { basic, startWebHarness, webPassword, type WebHarness } from '../web/harness.js';

const ALICE = 'alice@example.test';
let h: WebHarness;
let client: JmapClient;

function message(i: number): string {
  const headers = [
    'From: Bob Example <bob@remote.test>',
    `To: ${ALICE}`,
    `Subject: ${i < 2 ? 'Lunch' : `Note ${i}`}`,
    `Message-ID: <m${i}@remote.test>`,
    `Date: Mon, 7 Dec 2026 10:0${i}:00 +0000`,
  ];
  // Message 1 answers message 0: one conversation.
  if (i === 1) headers.push('In-Reply-To: <m0@remote.test>', 'References: <m0@remote.test>');
  return `${headers.join('\r\n')}\r\n\r\nBody of message ${i}.\r\n`;
}

beforeAll(async () => {
  h = await startWebHarness({}, {}, [ALICE]);
  for (let i = 0; i < 5; i++) await h.deliver(ALICE, message(i));
  client = await JmapClient.connect({
    baseUrl: h.base,
    headers: () => ({ authorization: basic(ALICE, webPassword(ALICE)) }),
    fetch: ((url: string, init: RequestInit) => undiciFetch(url, { ...(init as object), dispatcher: h.agent })) as unknown as typeof fetch,
  });
}, 60_000);

afterAll(async () => {
  await h?.close();
});

describe('the webmail JMAP client', () => {
  it('reads the session and finds the mail account', async () => {
    expect(client.session.username).toBe(ALICE);
    expect(client.accountId).toMatch(/^A[0-9a-f]{24}$/);
    const { list } = await client.mailboxes();
    expect(list.find((m) => m.role === 'inbox')?.totalEmails).toBe(5);
  });

  it('fetches a window of a query with its summaries, newest first, and thread sizes', async () => {
    const page = await client.queryPage({ filter: { inMailbox: 'INBOX' }, sort: [{ property: 'receivedAt', isAscending: false }] }, 1, 2);
    expect(page.total).toBe(5);
    expect(page.position).toBe(1);
    expect(page.ids).toHaveLength(2);
    expect(page.emails.map((e) => e.id)).toEqual(page.ids);
    const threads = await client.queryPage(
      { filter: { inMailbox: 'INBOX' }, sort: [{ property: 'receivedAt', isAscending: false }], collapseThreads: true },
      0,
      10,
    );
    // Messages 0 and 1 are one conversation.
    expect(threads.total).toBe(4);
    expect(Object.values(threads.threadSizes).sort()).toEqual([1, 1, 1, 2]);
  });

  it('reads an Email with its body, sets keywords, and reports a refused update as an error', async () => {
    const page = await client.queryPage({ filter: { subject: 'Note 3' } }, 0, 1);
    const email = await client.email(page.ids[0]);
    expect(email?.subject).toBe('Note 3');
    expect(email?.from).toEqual([{ name: 'Bob Example', email: 'bob@remote.test' }]);
    const part = email!.textBody[0];
    expect(email!.bodyValues[part.partId!].value).toContain('Body of message 3.');
    await client.updateEmails({ [email!.id]: { 'keywords/$flagged': true } });
    expect((await client.email(email!.id))?.keywords.$flagged).toBe(true);
    await expect(client.updateEmails({ [email!.id]: { mailboxIds: { 'no-such-folder': true } } })).rejects.toBeInstanceOf(JmapSetError);
  });

  it('uploads bytes and downloads them back from the session URL template', async () => {
    const bytes = new Uint8Array(70_000).map((_, i) => (i * 31) & 255);
    const up = await client.upload(bytes, 'application/octet-stream');
    expect(up.size).toBe(bytes.length);
    const res = await undiciFetch(client.downloadUrl(up.blobId, 'data.bin', 'application/octet-stream'), {
      headers: { authorization: basic(ALICE, webPassword(ALICE)) },
      dispatcher: h.agent,
    });
    expect(res.status).toBe(200);
    expect(Buffer.from(await res.arrayBuffer()).equals(Buffer.from(bytes))).toBe(true);
  });
});

describe('compose address fields', () => {
  it('parses names, quotes and separators, and names what is not an address', () => {
    expect(parseAddresses('"Doe, Jane" <jane@example.org>; bob@example.org, Carl <carl@x.test>').list).toEqual([
      { name: 'Doe, Jane', email: 'jane@example.org' },
      { name: null, email: 'bob@example.org' },
      { name: 'Carl', email: 'carl@x.test' },
    ]);
    expect(parseAddresses('not an address, ok@example.org').invalid).toEqual(['not an address']);
    expect(parseAddresses(' , ').list).toEqual([]);
  });

  it('formats addresses so that parsing them again gives the same list', () => {
    const list = [
      { name: 'Doe, Jane', email: 'jane@example.org' },
      { name: null, email: 'bob@example.org' },
    ];
    expect(formatAddresses(list)).toBe('"Doe, Jane" <jane@example.org>, bob@example.org');
    expect(parseAddresses(formatAddresses(list)).list).toEqual(list);
  });
});
