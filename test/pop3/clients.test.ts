/**
 * Third-party POP3 clients against the real listener: Python's poplib (plain on loopback, STLS,
 * implicit TLS, AUTH PLAIN), curl pop3:// and pop3s:// (LIST, RETR, DELE), and fetchmail
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

describe('fetchmail', () => {
  // getmail6 was the downloader here until it hung now and then with every byte received: it
  // installs its SIGCHLD handler after fork(), so a delivery child that exits first is never
  // reaped and getmail waits out its timeout. fetchmail (the other choice) has no such race.
  let n = 0;
  async function fetchmail(
    user: string,
    opts: { ssl: boolean; keep: boolean; home?: string },
  ): Promise<{ home: string; out: string; code: number; files: string[] }> {
    const home = opts.home ?? join(h.dir, `fetchmail-${user}-${n++}`);
    const inbox = join(home, 'inbox');
    await mkdir(inbox, { recursive: true, mode: 0o700 });
    await chmod(home, 0o700);
    // The MDA gets each message on standard input; one file per message.
    const mda = join(home, 'mda.sh');
    await writeFile(mda, `#!/bin/sh\nexec cat > "${inbox}/$(date +%s%N)-$$"\n`, { mode: 0o700 });
    const rc = join(home, 'fetchmailrc');
    await writeFile(
      rc,
      [
        'set no bouncemail',
        `poll 127.0.0.1 with proto POP3 port ${opts.ssl ? h.tlsPort : h.port} uidl`,
        `  user "${user}" there with password "${passwordOf(user)}"`,
        // Our certificate is self-signed (the test harness makes it); plaintext on loopback is allowed.
        `  options ${opts.keep ? 'keep' : 'nokeep'} no rewrite ${opts.ssl ? 'ssl' : "sslproto ''"} no sslcertck`,
        `  mda "${mda}"`,
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
    const r = await run('fetchmail', ['-f', rc, '--nodetach', '--nosyslog', '-v'], { timeout: 60_000, env: { ...process.env, FETCHMAILHOME: home } }).then(
      (x) => ({ ...x, code: 0 }),
      (e: { code?: number; stdout?: string; stderr?: string }) => ({
        stdout: e.stdout ?? '',
        stderr: e.stderr ?? '',
        code: typeof e.code === 'number' ? e.code : -1,
      }),
    );
    return { home, out: r.stdout + r.stderr, code: r.code, files: (await readdir(inbox)).sort() };
  }

  /**
   * The downloaded messages. fetchmail puts a Received header of its own first; everything after
   * it must be what we stored, with LF line ends (what an MDA gets, the Unix convention).
   */
  async function downloaded(home: string, files: string[]): Promise<string[]> {
    const texts = await Promise.all(files.map((f) => readFile(join(home, 'inbox', f), 'utf8')));
    return texts.map((t) => {
      const m = /^Received: from 127\.0\.0\.1 [^\n]*(?:\n[ \t][^\n]*)*\n/.exec(t);
      expect(m, t.slice(0, 300)).not.toBeNull();
      expect(m![0]).toContain('fetchmail');
      return t.slice(m![0].length);
    });
  }

  const lf = (s: string) => s.replace(/\r\n/g, '\n');

  it('keep mode downloads every message once (UIDL remembered) and leaves them on the server', async () => {
    const user = 'gm@example.com';
    const first = await fetchmail(user, { ssl: false, keep: true });
    expect(first.code, first.out).toBe(0);
    expect(first.files).toHaveLength(corpus.length);
    expect((await downloaded(first.home, first.files)).sort()).toEqual(corpus.map(lf).sort());
    expect((await h.store.list(user)).length).toBe(corpus.length);
    // Same UID file: nothing new to fetch (fetchmail's exit code 1 means "no mail").
    const second = await fetchmail(user, { ssl: false, keep: true, home: first.home });
    expect(second.code, second.out).toBe(1);
    expect(second.files).toHaveLength(corpus.length);
    expect((await h.store.list(user)).length).toBe(corpus.length);
  });

  it('delete mode over implicit TLS downloads everything and empties the mailbox', async () => {
    const user = 'gmssl@example.com';
    const r = await fetchmail(user, { ssl: true, keep: false });
    expect(r.code, r.out).toBe(0);
    expect(r.files).toHaveLength(corpus.length);
    expect((await downloaded(r.home, r.files)).sort()).toEqual(corpus.map(lf).sort());
    expect(await h.store.list(user)).toEqual([]);
    expect((await h.store.meta(user)).count).toBe(0);
  });
});
