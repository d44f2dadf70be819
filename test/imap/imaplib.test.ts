/**
 * Python's imaplib against the real IMAP listener over real sockets: login rules (plaintext on
 * loopback only, STARTTLS, implicit TLS), folders, SELECT, FETCH of bodies byte-identical,
 * ENVELOPE and BODYSTRUCTURE, STORE, SEARCH, COPY/MOVE with UIDPLUS, EXPUNGE, APPEND.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addImapUsers, imaplib, imapMessage, imapPassword, startImapHarness, type ImapHarness } from './harness.js';

let h: ImapHarness;
const sha = (s: string | Buffer) =>
  createHash('sha256')
    .update(typeof s === 'string' ? Buffer.from(s, 'latin1') : s)
    .digest('hex');

beforeAll(async () => {
  h = await startImapHarness();
  await addImapUsers(h, 'ann@example.com', 'ben@example.com', 'cy@example.com', 'dee@example.com');
  for (let i = 1; i <= 3; i++) await h.deliver('ann@example.com', imapMessage(i));
});
afterAll(async () => h?.close());

const login = (user: string) => ({ user, password: imapPassword(user) });

describe("Python's imaplib", () => {
  it('logs in on loopback, lists the special-use folders, selects INBOX and fetches bodies byte-identical', async () => {
    const r = await imaplib({
      port: h.port,
      ...login('ann@example.com'),
      steps: [
        ['login'],
        ['list', '""', '*'],
        ['select', 'INBOX'],
        ['fetch', '1:*', '(UID FLAGS RFC822.SIZE BODY.PEEK[])'],
        ['uid', 'FETCH', '2', '(ENVELOPE)'],
        // Two partial ranges of each message in one FETCH: every section is read again, and the
        // bytes of one message must not show through in another's (fetch.ts reads into a slab).
        ['fetch', '1:*', '(BODY.PEEK[]<5.20> BODY.PEEK[]<0.7>)'],
      ],
    });
    expect(r.error).toBeUndefined();
    expect(r.capabilities).toEqual(expect.arrayContaining(['IMAP4REV1', 'IMAP4REV2', 'STARTTLS', 'AUTH=PLAIN']));
    const [loginR, listR, selectR, fetchR, envR] = r.results as [string, unknown[]][];
    expect(loginR![0]).toBe('OK');
    const names = (listR![1] as string[]).join('\n');
    for (const f of ['INBOX', 'Sent', 'Drafts', 'Trash', 'Junk', 'Archive']) expect(names).toContain(`"/" "${f}"`);
    expect(names).toMatch(/\\Sent\) "\/" "Sent"/);
    expect(selectR).toEqual(['OK', ['3']]);
    const parts = fetchR![1] as unknown[];
    const bodies = parts.filter(Array.isArray) as [string, string][];
    expect(bodies).toHaveLength(3);
    for (let i = 0; i < 3; i++) {
      expect(bodies[i]![0]).toMatch(
        new RegExp(`^${i + 1} \\(UID ${i + 1} FLAGS \\(\\) RFC822.SIZE ${imapMessage(i + 1).length} BODY\\[\\] \\{${imapMessage(i + 1).length}\\}$`),
      );
      expect(sha(bodies[i]![1])).toBe(sha(imapMessage(i + 1)));
    }
    expect(String((envR![1] as string[])[0])).toContain('ENVELOPE ("Mon, 7 Dec 2026 10:00:02 +0000" "message 2" (("Sender 2" NIL "sender2" "example.net"))');
    const partials = (r.results[5] as [string, unknown[]])[1].filter(Array.isArray) as [string, string][];
    expect(partials).toHaveLength(6);
    for (let i = 0; i < 3; i++) {
      const raw = Buffer.from(imapMessage(i + 1), 'latin1');
      expect(partials[2 * i]![0]).toMatch(new RegExp(`^${i + 1} \\(BODY\\[\\]<5> \\{20\\}$`));
      expect(Buffer.from(partials[2 * i]![1], 'latin1')).toEqual(raw.subarray(5, 25));
      expect(partials[2 * i + 1]![0]).toMatch(/BODY\[\]<0> \{7\}$/);
      expect(Buffer.from(partials[2 * i + 1]![1], 'latin1')).toEqual(raw.subarray(0, 7));
    }
  });

  it('refuses LOGIN without TLS from a client that is not on loopback rules, and works over STARTTLS and implicit TLS', async () => {
    const tlsR = await imaplib({ port: h.port, mode: 'starttls', ...login('ben@example.com'), steps: [['login'], ['select', 'INBOX']] });
    expect(tlsR.error).toBeUndefined();
    expect((tlsR.results[1] as unknown[])[0]).toBe('OK');
    const sslR = await imaplib({ port: h.tlsPort, mode: 'ssl', ...login('ben@example.com'), steps: [['login'], ['capability']] });
    expect(sslR.error).toBeUndefined();
    expect(String((sslR.results[1] as [string, string[]])[1][0])).toContain('UIDPLUS');
    const bad = await imaplib({ port: h.port, user: 'ben@example.com', password: 'wrong', steps: [['login']] });
    expect(bad.error).toMatch(/AUTHENTICATIONFAILED|Wrong user name or password/);
  });

  it('stores flags, searches, copies and moves with COPYUID, expunges, and appends with APPENDUID', async () => {
    const u = 'cy@example.com';
    for (let i = 1; i <= 4; i++) await h.deliver(u, imapMessage(i, i === 3 ? 'needle in a haystack\r\n' : ''));
    const appended = 'From: me@example.com\r\nSubject: draft one\r\n\r\nA draft\r\n';
    const r = await imaplib({
      port: h.port,
      ...login(u),
      steps: [
        ['login'],
        ['select', 'INBOX'],
        ['store', '1,2', '+FLAGS', '(\\Seen $Work)'],
        ['search', null, 'SEEN'],
        ['search', null, 'TEXT', 'needle'],
        ['uid', 'SEARCH', 'FROM', 'sender4'],
        ['copy', '1', 'Archive'],
        ['uid', 'MOVE', '2', 'Trash'],
        ['store', '1', '+FLAGS', '(\\Deleted)'],
        ['expunge'],
        ['append_bytes', 'Drafts', '(\\Draft)', null, appended],
        ['status', 'Drafts', '(MESSAGES UIDNEXT UNSEEN SIZE)'],
        ['select', 'Archive'],
        ['fetch', '1', '(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])'],
        ['select', 'Drafts'],
        ['fetch', '1', '(FLAGS BODY[])'],
        ['fetch', '1', '(FLAGS)'],
      ],
    });
    expect(r.error).toBeUndefined();
    const res = r.results as [string, unknown[]][];
    expect(res[2]![0]).toBe('OK');
    expect(res[3]).toEqual(['OK', ['1 2']]);
    expect(res[4]).toEqual(['OK', ['3']]);
    expect(res[5]).toEqual(['OK', ['4']]);
    expect(res[6]![0]).toBe('OK');
    expect(res[7]![0]).toBe('OK');
    // imaplib keeps untagged EXPUNGEs until asked: MOVE's `* 2 EXPUNGE`, then EXPUNGE's `* 1 EXPUNGE`.
    expect(res[9]).toEqual(['OK', ['2', '1']]);
    expect(res[10]![0]).toBe('OK');
    expect(String((res[10]![1] as string[])[0])).toMatch(/^\[APPENDUID \d+ 1\]/);
    expect(String((res[11]![1] as string[])[0])).toMatch(/^"Drafts" \(MESSAGES 1 UIDNEXT 2 UNSEEN 1 SIZE \d+\)$/);
    const archived = res[13]![1] as [string, string][];
    expect(archived[0]![0]).toContain('FLAGS (\\Seen $Work)');
    expect(archived[0]![1]).toBe('Subject: message 1\r\n\r\n');
    const draft = res[15]![1] as [string, string][];
    expect(draft[0]![1]).toBe(appended);
    // The APPEND stored the IMAP structure with the message, as delivery does.
    const drafts = (await h.folders.list(u)).find((f) => f.specialUse === '\\Drafts')!;
    expect((await h.folders.get(u, drafts.id, 1))?.summary.imap).toMatchObject({ v: 1, envelope: expect.stringContaining('"draft one"') });
    expect(String((res[16]![1] as string[])[0])).toMatch(/^1 \(FLAGS \((\\Seen \\Draft|\\Draft \\Seen)\)\)$/);
    // What the store now holds, independently of the protocol.
    const folders = await h.folders.list(u);
    const trash = folders.find((f) => f.specialUse === '\\Trash')!;
    expect((await h.folders.status(u, trash.id)).count).toBe(1);
    expect((await h.folders.status(u, 'INBOX')).count).toBe(2);
  });
});
