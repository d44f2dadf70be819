/**
 * The IMAP server on the aws storage family (DynamoDB and S3 adapters against moto's server): the
 * same protocol code as locally, driven by Python's imaplib through login, LIST with the special-use
 * folders made at first use, SELECT, APPEND, FETCH byte-identical, STORE, SEARCH, COPY, MOVE and
 * EXPUNGE; then IDLE told of an APPEND made through a second IMAP process on the same tables (two
 * Fargate tasks), where no in-process nudge can reach and the change-log poll is the wake-up.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mailboxKeys } from '../../core/mailbox/keys.js';
import { startMoto, type AwsTestBackend } from '../support/moto.js';
import { freePorts } from '../support/ports.js';
import { addImapUsers, imaplib, imapMessage, imapPassword, startImapHarness, type ImapHarness } from './harness.js';
import { RawImap } from './raw-client.js';

const root = new URL('../..', import.meta.url).pathname;
/** The change-log poll of an idling session in this test (the aws default is 5 s). */
const IDLE_POLL_MS = 1000;

let moto: AwsTestBackend;
let h: ImapHarness;
let other: { child: ChildProcess; port: number; output: () => string } | undefined;
const open: RawImap[] = [];

const sha = (s: string | Buffer) =>
  createHash('sha256')
    .update(typeof s === 'string' ? Buffer.from(s, 'latin1') : s)
    .digest('hex');
const login = (user: string) => ({ user, password: imapPassword(user) });

/** A second IMAP process (`serve imap`) on the same DynamoDB table and S3 bucket. */
async function startSecondProcess(): Promise<NonNullable<typeof other>> {
  const [port, tlsPort] = await freePorts(2);
  let output = '';
  const child = spawn(process.execPath, ['--import', 'tsx', 'containers/main.ts', 'serve', 'imap'], {
    cwd: root,
    env: {
      ...process.env,
      ...moto.env,
      TOMLINSON_LISTEN_HOST: '127.0.0.1',
      TOMLINSON_IMAP_PORT: String(port),
      TOMLINSON_IMAPS_PORT: String(tlsPort),
      TOMLINSON_HEALTH_PORT: '0',
      TOMLINSON_LOG_LEVEL: 'warn',
      TOMLINSON_LOG_PRETTY: 'false',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const keep = (b: Buffer) => (output = (output + b.toString()).slice(-4000));
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const deadline = Date.now() + 90_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`serve imap exited with ${child.exitCode}:\n${output}`);
    try {
      const c = await RawImap.connect(port);
      c.close();
      return { child, port, output: () => output };
    } catch {
      if (Date.now() > deadline) throw new Error(`serve imap did not listen within 90 s:\n${output}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

beforeAll(async () => {
  moto = await startMoto();
  h = await startImapHarness(moto.env, { idlePollMs: IDLE_POLL_MS });
  expect(h.storage.capabilities.sharedBetweenProcesses).toBe(true);
  await addImapUsers(h, 'ann@example.com', 'idle@example.com');
});
afterAll(async () => {
  for (const c of open) c.close();
  if (other && other.child.exitCode === null) {
    const exited = new Promise((r) => other!.child.once('exit', r));
    other.child.kill('SIGTERM');
    await exited;
  }
  await h?.close();
  await moto?.stop();
});

describe('IMAP on the aws storage family (moto)', () => {
  it('runs the core flows through imaplib: LIST, SELECT, APPEND, FETCH, STORE, SEARCH, COPY, MOVE, EXPUNGE', async () => {
    const u = 'ann@example.com';
    for (let i = 1; i <= 4; i++) await h.deliver(u, imapMessage(i, i === 3 ? 'needle in a haystack\r\n' : ''));
    // Octets a text-mangling store would break: 8-bit bytes, no final CRLF (imaplib itself turns
    // any bare CR or LF into CRLF, so none is sent).
    const appended = 'From: me@example.com\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n\r\nBytes \xe9\xff\x80 here\r\nlast line';
    const r = await imaplib({
      port: h.port,
      ...login(u),
      steps: [
        ['login'],
        ['list', '""', '*'],
        ['select', 'INBOX'],
        ['fetch', '1:*', '(UID RFC822.SIZE BODY.PEEK[])'],
        ['store', '1,2', '+FLAGS', '(\\Seen $Work)'],
        ['search', null, 'SEEN'],
        ['search', null, 'TEXT', 'needle'],
        ['uid', 'SEARCH', 'FROM', 'sender4'],
        ['uid', 'COPY', '1', 'Archive'],
        ['uid', 'MOVE', '2', 'Trash'],
        ['store', '1', '+FLAGS', '(\\Deleted)'],
        ['expunge'],
        ['append_bytes', 'Drafts', '(\\Draft)', null, appended],
        ['status', 'Drafts', '(MESSAGES UIDNEXT UNSEEN SIZE)'],
        ['select', 'Archive'],
        ['fetch', '1', '(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])'],
        ['select', 'Drafts'],
        ['fetch', '1', '(FLAGS RFC822.SIZE BODY.PEEK[])'],
        ['select', 'INBOX'],
        ['fetch', '1:*', '(UID FLAGS)'],
        ['uid', 'COPY', '4', 'Junk'],
      ],
    });
    expect(r.error, JSON.stringify(r.results)).toBeUndefined();
    const res = r.results as [string, unknown[]][];
    const names = (res[1]![1] as string[]).join('\n');
    for (const [use, f] of [
      ['Sent', 'Sent'],
      ['Drafts', 'Drafts'],
      ['Trash', 'Trash'],
      ['Junk', 'Junk'],
      ['Archive', 'Archive'],
    ])
      expect(names).toMatch(new RegExp(`\\\\${use}\\) "/" "${f}"`));
    expect(res[2]).toEqual(['OK', ['4']]);
    const bodies = (res[3]![1] as unknown[]).filter(Array.isArray) as [string, string][];
    expect(bodies).toHaveLength(4);
    bodies.forEach(([, body], i) => expect(sha(body)).toBe(sha(imapMessage(i + 1, i === 2 ? 'needle in a haystack\r\n' : ''))));
    expect(res[4]![0]).toBe('OK');
    expect(res[5]).toEqual(['OK', ['1 2']]);
    expect(res[6]).toEqual(['OK', ['3']]);
    expect(res[7]).toEqual(['OK', ['4']]);
    expect(res[8]![0]).toBe('OK');
    expect(res[9]![0]).toBe('OK');
    // MOVE's `* 2 EXPUNGE`, then EXPUNGE's `* 1 EXPUNGE` (imaplib keeps them until asked).
    expect(res[11]).toEqual(['OK', ['2', '1']]);
    expect(String((res[12]![1] as string[])[0])).toMatch(/^\[APPENDUID \d+ 1\]/);
    expect(String((res[13]![1] as string[])[0])).toMatch(new RegExp(`^"Drafts" \\(MESSAGES 1 UIDNEXT 2 UNSEEN 1 SIZE ${appended.length}\\)$`));
    const archived = res[15]![1] as [string, string][];
    expect(archived[0]![0]).toContain('FLAGS (\\Seen $Work)');
    expect(archived[0]![1]).toBe('Subject: message 1\r\n\r\n');
    const draft = res[17]![1] as [string, string][];
    expect(draft[0]![0]).toContain(`RFC822.SIZE ${appended.length}`);
    expect(sha(draft[0]![1])).toBe(sha(appended));
    expect(res[19]![1]).toEqual(['1 (UID 3 FLAGS ())', '2 (UID 4 FLAGS ())']);
    expect(res[20]![0]).toBe('OK');

    // What DynamoDB and S3 now hold: each folder entry's blob is there, and each blob's reference
    // count is the number of entries naming it (the copied message's blob is shared, not copied).
    const perBlob = new Map<string, number>();
    for (const f of await h.folders.list(u))
      for await (const m of h.folders.entries(u, f.id)) {
        perBlob.set(m.blobKey, (perBlob.get(m.blobKey) ?? 0) + 1);
        expect((await h.storage.mail.head(m.blobKey)).size).toBe(m.size);
      }
    expect([...perBlob.values()].reduce((a, b) => a + b, 0)).toBe(6); // INBOX 2, Archive, Trash, Drafts, Junk 1 each
    expect(Math.max(...perBlob.values())).toBe(2);
    for (const [key, n] of perBlob) expect(Number((await h.storage.tables.get(mailboxKeys.blobRef(key)))?.refs)).toBe(n);
  });

  it('tells an idling client of an APPEND made through another IMAP process within the poll interval', async () => {
    const u = 'idle@example.com';
    other = await startSecondProcess();
    const idler = await RawImap.connect(h.port);
    const writer = await RawImap.connect(other.port);
    open.push(idler, writer);
    for (const c of [idler, writer]) expect((await c.command(`LOGIN ${u} ${imapPassword(u)}`)).tagged).toMatch(/OK/);
    expect((await idler.command('SELECT INBOX')).tagged).toMatch(/OK/);
    const delays: number[] = [];
    for (let i = 1; i <= 5; i++) {
      const from = idler.lines.length;
      idler.send(`i${i} IDLE\r\n`);
      await idler.waitFor(/^\+ /, 10_000, from);
      // Land at a different point of the poll cycle each time.
      await new Promise((r) => setTimeout(r, (i * IDLE_POLL_MS) / 5));
      const msg = imapMessage(i);
      const appendedAt = await writer.command(`APPEND INBOX {${msg.length}+}\r\n${msg}`).then((x) => {
        expect(x.tagged).toMatch(/OK \[APPENDUID/);
        return Date.now();
      });
      await idler.waitFor(new RegExp(`^\\* ${i} EXISTS$`), IDLE_POLL_MS + 4000, from);
      delays.push(Date.now() - appendedAt);
      idler.send('DONE\r\n');
      await idler.waitFor(new RegExp(`^i${i} OK`), 10_000, from);
    }
    delays.sort((a, b) => a - b);
    process.stdout.write(`imap aws: IDLE delay after an APPEND in another process, poll ${IDLE_POLL_MS} ms: ${delays.join(', ')} ms\n`);
    // The poll bounds the delay: one interval plus a change-log read or two against DynamoDB.
    expect(delays[delays.length - 1]).toBeLessThan(IDLE_POLL_MS + 1500);
    const fetched = await idler.command('FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])');
    expect(fetched.untagged.filter((l) => /Subject: message \d/.test(l))).toHaveLength(5);
  });
});
