/**
 * Third-party POP3 clients against the real listener: Python's poplib (plain on loopback, STLS,
 * implicit TLS, AUTH PLAIN), curl pop3:// and pop3s:// (LIST, RETR, DELE), and getmail6
 * downloading a mailbox in keep mode and in delete mode. Downloads must match what was stored.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addUsers, makeMessage, passwordOf, startHarness, type Harness } from './harness.js';

const run = promisify(execFile);
const POPLIB = fileURLToPath(new URL('./support/poplib_client.py', import.meta.url));

let h: Harness;
const sha = (s: string | Buffer) => createHash('sha256').update(s).digest('hex');
/** Messages with the awkward parts: dot lines, a long line, 8-bit text, a bigger body. */
const corpus = [
  makeMessage(1),
  'From: a@example.net\r\nSubject: dots\r\n\r\n.\r\n..\r\n.hidden\r\nend\r\n',
  `From: a@example.net\r\nSubject: =?UTF-8?Q?gr=C3=BC=C3=9Fe?=\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln\r\n${'z'.repeat(900)}\r\n`,
  makeMessage(4, 50_000),
];

beforeAll(async () => {
  h = await startHarness();
  await addUsers(h, 'py@example.com', 'pytls@example.com', 'curl@example.com', 'gm@example.com', 'gmssl@example.com');
  for (const user of ['py@example.com', 'pytls@example.com', 'curl@example.com', 'gm@example.com', 'gmssl@example.com']) {
    for (const m of corpus) await h.deliver(user, m);
  }
});
afterAll(async () => {
  await h?.close();
});

interface PoplibResult {
  welcome: string;
  capa: string[];
  stls?: string;
  capa_after_tls?: string[];
  login?: string;
  login_error?: string;
  stat: [number, number];
  list: string[];
  uidl: string[];
  retr: { n: number; sha256: string; len: number }[];
  top?: string[];
  dele?: string[];
  quit: string;
}

async function poplib(args: Record<string, unknown>): Promise<PoplibResult> {
  const { stdout } = await run('python3', [POPLIB, JSON.stringify({ host: '127.0.0.1', ...args })], { timeout: 30_000 });
  return JSON.parse(stdout) as PoplibResult;
}

const total = corpus.reduce((a, m) => a + Buffer.byteLength(m), 0);

describe("Python's poplib", () => {
  it('plain on loopback with USER/PASS: STAT, LIST, UIDL, RETR byte-identical, TOP, DELE at QUIT', async () => {
    const user = 'py@example.com';
    const r = await poplib({ port: h.port, mode: 'plain', user, password: passwordOf(user), top: [2, 1], dele: [1, 3] });
    expect(r.login).toMatch(/^\+OK/);
    expect(r.capa).toEqual(expect.arrayContaining(['STLS', 'TOP', 'UIDL', 'USER', 'SASL', 'PIPELINING', 'RESP-CODES', 'AUTH-RESP-CODE']));
    expect(r.stat).toEqual([corpus.length, total]);
    expect(r.list).toEqual(corpus.map((m, i) => `${i + 1} ${Buffer.byteLength(m)}`));
    expect(r.retr.map((x) => x.sha256)).toEqual(corpus.map(sha));
    expect(r.top).toEqual(['From: a@example.net', 'Subject: dots', '', '.']);
    expect(r.dele).toHaveLength(2);
    expect(r.quit).toMatch(/^\+OK/);
    const left = await h.store.list(user);
    expect(left.map((e) => e.uid)).toEqual([2, 4]);
    // A second session sees the two left, with the UIDLs they had.
    const again = await poplib({ port: h.port, mode: 'plain', user, password: passwordOf(user) });
    expect(again.uidl.map((l) => l.split(' ')[1])).toEqual([r.uidl[1]!.split(' ')[1], r.uidl[3]!.split(' ')[1]]);
    expect(again.retr.map((x) => x.sha256)).toEqual([sha(corpus[1]!), sha(corpus[3]!)]);
  });

  it('STLS, then AUTH PLAIN under TLS', async () => {
    const user = 'pytls@example.com';
    const r = await poplib({ port: h.port, mode: 'stls', user, password: passwordOf(user), auth: 'plain' });
    expect(r.stls).toMatch(/^\+OK/);
    expect(r.capa_after_tls).not.toContain('STLS');
    expect(r.login).toMatch(/^\+OK/);
    expect(r.retr.map((x) => x.sha256)).toEqual(corpus.map(sha));
  });

  it('implicit TLS (the 995 listener), USER/PASS', async () => {
    const user = 'pytls@example.com';
    const r = await poplib({ port: h.tlsPort, mode: 'ssl', user, password: passwordOf(user) });
    expect(r.capa).not.toContain('STLS');
    expect(r.login).toMatch(/^\+OK/);
    expect(r.stat).toEqual([corpus.length, total]);
  });

  it('a wrong password is an error with [AUTH]', async () => {
    const r = await poplib({ port: h.port, mode: 'stls', user: 'pytls@example.com', password: 'wrong-password' });
    expect(r.login_error).toMatch(/^-ERR \[AUTH\]/);
  });
});

async function curl(args: string[]): Promise<string> {
  const { stdout } = await run('curl', ['-sS', '--max-time', '20', ...args], { timeout: 30_000, encoding: 'latin1', maxBuffer: 16 * 1024 * 1024 });
  return stdout;
}

describe('curl', () => {
  const user = 'curl@example.com';
  const auth = ['-u', `${user}:${passwordOf(user)}`];

  it('pop3:// with STLS (--ssl-reqd): LIST and RETR', async () => {
    const list = await curl([...auth, '--ssl-reqd', '-k', `pop3://127.0.0.1:${h.port}/`]);
    expect(list.trim().split(/\r?\n/)).toEqual(corpus.map((m, i) => `${i + 1} ${Buffer.byteLength(m)}`));
    for (let i = 0; i < corpus.length; i++) {
      const body = await curl([...auth, '--ssl-reqd', '-k', `pop3://127.0.0.1:${h.port}/${i + 1}`]);
      expect(sha(Buffer.from(body, 'latin1')), `message ${i + 1}`).toBe(sha(corpus[i]!));
    }
  });

  it('pop3s://: LIST, RETR, and DELE applied at the end of the session', async () => {
    const base = `pop3s://127.0.0.1:${h.tlsPort}`;
    const body = await curl([...auth, '-k', `${base}/2`]);
    expect(Buffer.from(body, 'latin1').toString('utf8')).toBe(corpus[1]);
    await curl([...auth, '-k', '-X', 'DELE', '-I', `${base}/1`]);
    expect((await h.store.list(user)).length).toBe(corpus.length - 1);
    const list = await curl([...auth, '-k', `${base}/`]);
    expect(list.trim().split(/\r?\n/)).toEqual(corpus.slice(1).map((m, i) => `${i + 1} ${Buffer.byteLength(m)}`));
  });

  it('plain pop3:// from loopback without TLS is allowed by the default configuration', async () => {
    const list = await curl([...auth, `pop3://127.0.0.1:${h.port}/`]);
    expect(list.trim().split(/\r?\n/)).toHaveLength(corpus.length - 1);
  });
});

describe('getmail6', () => {
  async function getmail(user: string, opts: { ssl: boolean; delete: boolean }): Promise<{ dir: string; files: string[]; out: string }> {
    const dir = join(h.dir, `getmail-${user}-${opts.ssl ? 'ssl' : 'plain'}`);
    const maildir = join(dir, 'Maildir');
    for (const sub of ['cur', 'new', 'tmp']) await mkdir(join(maildir, sub), { recursive: true });
    // getmail refuses to deliver as root; under root (CI) it delivers as nobody, who needs a way in.
    const asRoot = process.getuid?.() === 0;
    if (asRoot) for (const d of [h.dir, dir, maildir, ...['cur', 'new', 'tmp'].map((s) => join(maildir, s))]) await chmod(d, 0o777);
    const rc = [
      '[retriever]',
      `type = ${opts.ssl ? 'SimplePOP3SSLRetriever' : 'SimplePOP3Retriever'}`,
      'server = 127.0.0.1',
      `port = ${opts.ssl ? h.tlsPort : h.port}`,
      `username = ${user}`,
      `password = ${passwordOf(user)}`,
      '',
      '[destination]',
      'type = Maildir',
      `path = ${maildir}/`,
      ...(asRoot ? ['user = nobody'] : []),
      '',
      '[options]',
      'read_all = false',
      `delete = ${opts.delete}`,
      'delivered_to = false',
      'received = false',
      'verbose = 1',
      '',
    ].join('\n');
    await writeFile(join(dir, 'getmailrc'), rc);
    const { stdout, stderr } = await run('getmail', ['--getmaildir', dir, '--rcfile', join(dir, 'getmailrc')], { timeout: 60_000 });
    const files = (await readdir(join(maildir, 'new'))).sort();
    return { dir: maildir, files, out: stdout + stderr };
  }

  /**
   * The downloaded messages. getmail always puts a Return-Path line of its own first (from the
   * message's Return-Path or Sender, else `<unknown>`); everything after it must be what we stored.
   */
  async function downloaded(maildir: string, files: string[]): Promise<string[]> {
    const texts = await Promise.all(files.map((f) => readFile(join(maildir, 'new', f), 'utf8')));
    return texts.map((t) => {
      expect(t).toMatch(/^Return-Path: <[^>\n]*>\n/);
      return t.slice(t.indexOf('\n') + 1);
    });
  }

  /** getmail writes Maildir files with LF line ends, the Unix convention; compare on that basis. */
  const lf = (s: string) => s.replace(/\r\n/g, '\n');

  it('keep mode downloads every message once (UIDL remembered) and leaves them on the server', async () => {
    const user = 'gm@example.com';
    const first = await getmail(user, { ssl: false, delete: false });
    expect(first.files).toHaveLength(corpus.length);
    const got = (await downloaded(first.dir, first.files)).sort();
    expect(got).toEqual(corpus.map(lf).sort());
    expect((await h.store.list(user)).length).toBe(corpus.length);
    const second = await getmail(user, { ssl: false, delete: false });
    expect(second.files).toHaveLength(corpus.length);
    expect(second.out).toMatch(/0 messages .*retrieved/);
  });

  it('delete mode over implicit TLS downloads everything and empties the mailbox', async () => {
    const user = 'gmssl@example.com';
    const r = await getmail(user, { ssl: true, delete: true });
    expect(r.files).toHaveLength(corpus.length);
    expect((await downloaded(r.dir, r.files)).sort()).toEqual(corpus.map(lf).sort());
    expect(await h.store.list(user)).toEqual([]);
    expect((await h.store.meta(user)).count).toBe(0);
  });
});
