/**
 * curl and imapflow (Node) against the real IMAP listener over real sockets: bodies byte-identical
 * to what was delivered, over implicit TLS and STARTTLS with the self-signed certificate trusted
 * (verified, not ignored) and in plaintext on loopback; flags, MOVE and APPEND checked in the
 * store afterwards; IDLE told of a delivery; and two clients on one folder at once, one idling
 * while the other changes flags and moves a message away.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ImapFlow } from 'imapflow';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addImapUsers, imapPassword, startImapHarness, type ImapHarness } from './harness.js';
import { certFile, corpus, need, runTool, serverMessages, sha, until } from './support/clients.js';

let h: ImapHarness;
const open: ImapFlow[] = [];
const USERS = ['curl@example.com', 'curltls@example.com', 'flow@example.com', 'flowidle@example.com', 'two@example.com'];
const mail = corpus('cl');

beforeAll(async () => {
  h = await startImapHarness();
  await addImapUsers(h, ...USERS);
  for (const u of USERS) for (const m of mail) await h.deliver(u, m);
});
afterAll(async () => {
  for (const c of open) c.close();
  await h?.close();
});

async function curl(user: string, args: string[]): Promise<string> {
  need('curl', 'curl');
  const r = await runTool('curl', ['-sS', '--max-time', '20', '-u', `${user}:${imapPassword(user)}`, ...args], { timeoutMs: 30_000 });
  if (r.code !== 0) throw new Error(`curl ${args.join(' ')} exited ${r.code}:\n${r.out}`);
  return r.stdout;
}

describe('curl', () => {
  it('imaps:// with the certificate verified: LIST, SEARCH and every body byte-identical', async () => {
    const user = 'curltls@example.com';
    const base = `imaps://127.0.0.1:${h.tlsPort}`;
    const tlsArgs = ['--cacert', certFile(h)];
    const list = await curl(user, [...tlsArgs, `${base}/`]);
    for (const f of ['INBOX', 'Sent', 'Drafts', 'Trash', 'Junk', 'Archive']) expect(list).toContain(`"/" "${f}"`);
    expect((await curl(user, [...tlsArgs, `${base}/INBOX?ALL`])).trim()).toBe('* SEARCH 1 2 3 4');
    for (let uid = 1; uid <= mail.length; uid++) {
      const body = await curl(user, [...tlsArgs, `${base}/INBOX;UID=${uid}`]);
      expect(sha(Buffer.from(body, 'latin1')), `UID ${uid}`).toBe(sha(mail[uid - 1]!));
    }
    // curl's FETCH is BODY[], not BODY.PEEK[]: every message read is \Seen on the server now.
    for (const m of await serverMessages(h, user, 'INBOX')) expect(m.flags).toContain('\\Seen');
  });

  it('imap:// upgraded with STARTTLS (--ssl-reqd): APPEND of a file, UID STORE and UID MOVE, as the store sees them', async () => {
    const user = 'curl@example.com';
    const base = `imap://127.0.0.1:${h.port}`;
    const tlsArgs = ['--ssl-reqd', '--cacert', certFile(h)];
    const draft = 'From: curl@example.com\r\nTo: x@example.net\r\nSubject: uploaded by curl\r\n\r\nA draft, sent as a literal.\r\n';
    const file = join(h.dir, 'curl-draft.eml');
    await writeFile(file, draft);
    await curl(user, [...tlsArgs, '-T', file, `${base}/Drafts`]);
    await curl(user, [...tlsArgs, '-X', 'UID STORE 1 +FLAGS (\\Flagged $Work)', `${base}/INBOX`]);
    await curl(user, [...tlsArgs, '-X', 'UID MOVE 2 Archive', `${base}/INBOX`]);
    const status = await curl(user, [...tlsArgs, '-X', 'STATUS Drafts (MESSAGES UIDNEXT)', `${base}/`]);
    expect(status.trim()).toBe('* STATUS "Drafts" (MESSAGES 1 UIDNEXT 2)');

    const drafts = await serverMessages(h, user, 'Drafts');
    expect(drafts.map((m) => sha(m.raw))).toEqual([sha(draft)]);
    const inbox = await serverMessages(h, user, 'INBOX');
    expect(inbox.map((m) => m.uid)).toEqual([1, 3, 4]);
    expect(inbox[0]!.flags.sort()).toEqual(['$Work', '\\Flagged']);
    const archive = await serverMessages(h, user, 'Archive');
    expect(archive.map((m) => sha(m.raw))).toEqual([sha(mail[1]!)]);
  });

  it('FETCH of a message past the socket high-water mark (16 KB) completes: a corked socket never drains', async () => {
    const user = 'curl@example.com';
    const big = `From: a@example.net\r\nSubject: 300 KB\r\n\r\n${'0123456789abcdef'.repeat(64).concat('\r\n').repeat(300)}`;
    const { uid } = await h.deliver(user, big);
    for (const url of [`imap://127.0.0.1:${h.port}/INBOX;UID=${uid}`, `imaps://127.0.0.1:${h.tlsPort}/INBOX;UID=${uid}`]) {
      const body = await curl(user, ['--cacert', certFile(h), url]);
      expect(sha(Buffer.from(body, 'latin1')), url).toBe(sha(big));
    }
  });

  it('plain imap:// is allowed from loopback by the default configuration', async () => {
    const user = 'curl@example.com';
    const body = await curl(user, [`imap://127.0.0.1:${h.port}/Drafts;UID=1`]);
    expect(body).toContain('Subject: uploaded by curl');
  });
});

/** An imapflow client, closed after the suite; `tls` trusts the harness certificate. */
async function flow(user: string, mode: 'implicit' | 'starttls'): Promise<ImapFlow> {
  const ca = await readFile(certFile(h));
  const c = new ImapFlow({
    host: '127.0.0.1',
    port: mode === 'implicit' ? h.tlsPort : h.port,
    secure: mode === 'implicit',
    doSTARTTLS: mode === 'starttls',
    auth: { user, pass: imapPassword(user) },
    tls: { ca, rejectUnauthorized: true },
    logger: false,
    connectionTimeout: 10_000,
    greetingTimeout: 10_000,
    socketTimeout: 60_000,
  });
  c.on('error', () => undefined);
  open.push(c);
  await c.connect();
  return c;
}

describe('imapflow', () => {
  it('over implicit TLS: fetches sources byte-identical, adds flags, moves and appends, as the store sees them', async () => {
    const user = 'flow@example.com';
    const c = await flow(user, 'implicit');
    expect(c.secureConnection).toBe(true);
    const lock = await c.getMailboxLock('INBOX');
    try {
      const got: { uid: number; source: Buffer }[] = [];
      for await (const m of c.fetch('1:*', { uid: true, source: true, flags: true }, { uid: true })) got.push({ uid: m.uid, source: m.source! });
      expect(got.map((m) => m.uid)).toEqual([1, 2, 3, 4]);
      expect(got.map((m) => sha(m.source))).toEqual(mail.map(sha));
      expect(await c.messageFlagsAdd('1', ['\\Flagged', '$Important'], { uid: true })).toBe(true);
      const moved = await c.messageMove('3', 'Archive', { uid: true });
      expect(moved && [...moved.uidMap!.entries()]).toEqual([[3, 1]]);
    } finally {
      lock.release();
    }
    const draft = Buffer.from('From: flow@example.com\r\nSubject: appended by imapflow\r\n\r\nbody \xe9\r\n', 'latin1');
    const appended = await c.append('Drafts', draft, ['\\Draft', '\\Seen']);
    expect(appended && appended.uid).toBe(1);
    await c.logout();

    const inbox = await serverMessages(h, user, 'INBOX');
    expect(inbox.map((m) => m.uid)).toEqual([1, 2, 4]);
    expect(inbox[0]!.flags.sort()).toEqual(['$Important', '\\Flagged']);
    // fetch with source uses BODY.PEEK[]: nothing was marked \Seen by reading.
    expect(inbox.every((m) => !m.flags.includes('\\Seen'))).toBe(true);
    const archive = await serverMessages(h, user, 'Archive');
    expect(archive.map((m) => sha(m.raw))).toEqual([sha(mail[2]!)]);
    const drafts = await serverMessages(h, user, 'Drafts');
    expect(drafts.map((m) => sha(m.raw))).toEqual([sha(draft)]);
    expect(drafts[0]!.flags.sort()).toEqual(['\\Draft', '\\Seen']);
  });

  it('over STARTTLS, idling in INBOX, is told of a delivery (an exists event) within a second', async () => {
    const user = 'flowidle@example.com';
    const c = await flow(user, 'starttls');
    expect(c.secureConnection).toBe(true);
    const box = await c.mailboxOpen('INBOX');
    expect(box.exists).toBe(mail.length);
    const events: { count: number; at: number }[] = [];
    c.on('exists', (e: { count: number }) => events.push({ count: e.count, at: Date.now() }));
    const idling = c.idle();
    await until('imapflow to enter IDLE', () => c.idling, 5000);
    const raw = 'From: late@example.net\r\nSubject: while idling\r\n\r\nnew\r\n';
    await h.deliver(user, raw);
    const delivered = Date.now();
    await until('the exists event', () => events.length > 0, 5000);
    expect(events[0]!.count).toBe(mail.length + 1);
    expect(events[0]!.at - delivered).toBeLessThan(1000);
    const last = await c.fetchOne('*', { uid: true, source: true });
    expect(last && sha(last.source!)).toBe(sha(raw));
    await c.logout();
    await idling.catch(() => undefined);
  });
});

describe('two clients on one folder at once', () => {
  it('imapflow idling in INBOX sees the flag change and the expunge that curl makes meanwhile', async () => {
    const user = 'two@example.com';
    const c = await flow(user, 'implicit');
    await c.mailboxOpen('INBOX');
    const flags: { uid?: number; flags: Set<string> }[] = [];
    const expunged: number[] = [];
    c.on('flags', (e: { uid?: number; flags: Set<string> }) => flags.push(e));
    c.on('expunge', (e: { seq: number }) => expunged.push(e.seq));
    const idling = c.idle();
    await until('imapflow to enter IDLE', () => c.idling, 5000);

    const base = `imaps://127.0.0.1:${h.tlsPort}`;
    await curl(user, ['--cacert', certFile(h), '-X', 'UID STORE 4 +FLAGS (\\Answered)', `${base}/INBOX`]);
    await until('the flags event', () => flags.length > 0, 5000);
    expect([...flags[0]!.flags]).toContain('\\Answered');
    await curl(user, ['--cacert', certFile(h), '-X', 'UID MOVE 2 Trash', `${base}/INBOX`]);
    await until('the expunge event', () => expunged.length > 0, 5000);
    expect(expunged).toEqual([2]);

    // After IDLE, imapflow's view and the store agree.
    await c.noop();
    const uids: number[] = [];
    for await (const m of c.fetch('1:*', { uid: true })) uids.push(m.uid);
    expect(uids).toEqual([1, 3, 4]);
    expect((await serverMessages(h, user, 'INBOX')).map((m) => m.uid)).toEqual([1, 3, 4]);
    expect((await serverMessages(h, user, 'Trash')).map((m) => sha(m.raw))).toEqual([sha(mail[1]!)]);
    await c.logout();
    await idling.catch(() => undefined);
  });
});
