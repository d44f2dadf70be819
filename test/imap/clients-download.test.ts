/**
 * Downloaders over IMAP against the real listener over real sockets: getmail6 into a Maildir and
 * fetchmail into an MDA, each in keep mode (the server keeps every message, a second run fetches
 * nothing new) and in delete mode over implicit TLS with the self-signed certificate trusted (the
 * server INBOX empties). Each downloaded message must be the delivered bytes once the downloader's
 * own trace header is taken off and CRLF is LF (what a local mail file holds on Unix).
 */
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addImapUsers, imapPassword, startImapHarness, type ImapHarness } from './harness.js';
import { certFile, corpus, lf, maildirFiles, need, runTool, serverMessages, sha } from './support/clients.js';

const GETMAIL = fileURLToPath(new URL('./support/getmail_run.py', import.meta.url));

let h: ImapHarness;
let work: string;
const USERS = ['getmail@example.com', 'fetchmail@example.com'];
const mail = corpus('dl');

beforeAll(async () => {
  h = await startImapHarness();
  await addImapUsers(h, ...USERS);
  for (const u of USERS) for (const m of mail) await h.deliver(u, m);
  // getmail refuses to deliver as root and switches to `nobody` (see getmailrc below): its Maildir
  // must be reachable by that user, so it lives outside the harness's private data folder.
  work = await mkdtemp(join(tmpdir(), 'tomlinson-imap-dl-'));
  await chmod(work, 0o755);
});
afterAll(async () => {
  await h?.close();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('getmail6', () => {
  /** Runs getmail once with the retriever and options given; returns the Maildir's messages. */
  async function getmail(
    name: string,
    retriever: string[],
    options: string[],
  ): Promise<{ out: string; code: number; messages: { name: string; text: string }[] }> {
    const home = join(work, name);
    const maildir = join(home, 'Maildir');
    for (const sub of ['cur', 'new', 'tmp']) await mkdir(join(maildir, sub), { recursive: true });
    await chmod(home, 0o755);
    for (const d of [maildir, join(maildir, 'cur'), join(maildir, 'new'), join(maildir, 'tmp')]) await chmod(d, 0o777);
    const asRoot = process.getuid?.() === 0;
    await writeFile(
      join(home, 'getmailrc'),
      [
        '[retriever]',
        ...retriever,
        `username = ${USERS[0]}`,
        `password = ${imapPassword(USERS[0]!)}`,
        'mailboxes = ("INBOX",)',
        // No X-getmail-retrieved-from-mailbox header: the file is to hold the message as it is.
        'record_mailbox = false',
        '',
        '[destination]',
        'type = Maildir',
        `path = ${maildir}/`,
        ...(asRoot ? ['user = nobody'] : []),
        '',
        '[options]',
        'delivered_to = false',
        'received = false',
        'verbose = 2',
        ...options,
        '',
      ].join('\n'),
    );
    const r = await runTool('/usr/bin/python3', [GETMAIL, '--rcfile', 'getmailrc', '--getmaildir', home], { timeoutMs: 60_000 });
    const messages = (await maildirFiles(maildir)).map((f) => ({ name: f.name, text: f.text }));
    return { out: r.out, code: r.code, messages };
  }

  /** getmail always writes a Return-Path line first; the rest must be the message. */
  const body = (text: string) => {
    const m = /^Return-Path: <[^>\n]*>\n/.exec(text);
    expect(m, text.slice(0, 200)).not.toBeNull();
    return text.slice(m![0].length);
  };

  it('keep mode over plain IMAP on loopback: every message once, byte-identical, all left on the server; a second run fetches nothing', async () => {
    need('getmail', 'getmail6');
    const retriever = ['type = SimpleIMAPRetriever', 'server = 127.0.0.1', `port = ${h.port}`];
    const first = await getmail('keep', retriever, ['read_all = false', 'delete = false']);
    expect(first.code, first.out).toBe(0);
    expect(first.messages.map((m) => body(m.text)).sort()).toEqual(mail.map((m) => lf(m)).sort());
    expect((await serverMessages(h, USERS[0]!, 'INBOX')).map((m) => m.uid)).toEqual([1, 2, 3, 4]);
    const again = await getmail('keep', retriever, ['read_all = false', 'delete = false']);
    expect(again.code, again.out).toBe(0);
    expect(again.out).toMatch(/0 messages .*retrieved/);
    expect(again.messages).toHaveLength(mail.length);
  });

  it('delete mode over implicit TLS: everything downloaded byte-identical and the server INBOX empty', async () => {
    need('getmail', 'getmail6');
    const retriever = ['type = SimpleIMAPSSLRetriever', 'server = 127.0.0.1', `port = ${h.tlsPort}`, `ca_certs = ${certFile(h)}`];
    const r = await getmail('delete', retriever, ['read_all = true', 'delete = true']);
    expect(r.code, r.out).toBe(0);
    expect(r.messages.map((m) => sha(body(m.text))).sort()).toEqual(mail.map((m) => sha(lf(m))).sort());
    expect(await serverMessages(h, USERS[0]!, 'INBOX')).toEqual([]);
    expect((await h.folders.status(USERS[0]!, 'INBOX')).count).toBe(0);
  });
});

describe('fetchmail', () => {
  const user = USERS[1]!;
  async function fetchmail(home: string, opts: { ssl: boolean; keep: boolean }): Promise<{ out: string; code: number; files: string[] }> {
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
        `poll 127.0.0.1 with proto IMAP port ${opts.ssl ? h.tlsPort : h.port}`,
        `  user "${user}" there with password "${imapPassword(user)}"`,
        // Implicit TLS with the harness certificate as the one trusted (fetchmail matches DNS names
        // only: the certificate names localhost); plaintext on loopback otherwise.
        `  options ${opts.keep ? 'keep' : 'nokeep fetchall'} no rewrite ${opts.ssl ? `ssl sslcertck sslcertfile "${certFile(h)}" sslcommonname localhost` : "sslproto ''"}`,
        `  mda "${mda}"`,
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
    const r = await runTool('fetchmail', ['-f', rc, '--nodetach', '--nosyslog', '-v'], { timeoutMs: 60_000, env: { ...process.env, FETCHMAILHOME: home } });
    return { out: r.out, code: r.code, files: (await readdir(inbox)).sort() };
  }

  /** fetchmail puts a Received header of its own first; everything after it must be the message. */
  async function downloaded(home: string, files: string[]): Promise<string[]> {
    const texts = await Promise.all(files.map((f) => readFile(join(home, 'inbox', f), 'utf8')));
    return texts.map((t) => {
      const m = /^Received: from 127\.0\.0\.1 [^\n]*(?:\n[ \t][^\n]*)*\n/.exec(t);
      expect(m, t.slice(0, 300)).not.toBeNull();
      expect(m![0]).toContain('fetchmail');
      return t.slice(m![0].length);
    });
  }

  it('keep mode over plain IMAP on loopback: every message once, byte-identical, left on the server (\\Seen); a second run finds nothing new', async () => {
    need('fetchmail', 'fetchmail');
    const home = join(work, 'fetchmail-keep');
    const first = await fetchmail(home, { ssl: false, keep: true });
    expect(first.code, first.out).toBe(0);
    expect((await downloaded(home, first.files)).map(sha).sort()).toEqual(mail.map((m) => sha(lf(m))).sort());
    const server = await serverMessages(h, user, 'INBOX');
    expect(server.map((m) => m.uid)).toEqual([1, 2, 3, 4]);
    expect(server.every((m) => m.flags.includes('\\Seen'))).toBe(true);
    // fetchmail's exit code 1 means "no mail".
    const second = await fetchmail(home, { ssl: false, keep: true });
    expect(second.code, second.out).toBe(1);
    expect(second.files).toHaveLength(mail.length);
  });

  it('delete mode over implicit TLS with the certificate checked: everything downloaded and the server INBOX empty', async () => {
    need('fetchmail', 'fetchmail');
    const home = join(work, 'fetchmail-delete');
    const r = await fetchmail(home, { ssl: true, keep: false });
    expect(r.code, r.out).toBe(0);
    expect((await downloaded(home, r.files)).map(sha).sort()).toEqual(mail.map((m) => sha(lf(m))).sort());
    expect(await serverMessages(h, user, 'INBOX')).toEqual([]);
    expect((await h.folders.status(user, 'INBOX')).count).toBe(0);
  });
});
