/**
 * Mail programs that keep a local copy, against the real IMAP listener over real sockets: isync's
 * mbsync syncing both ways over implicit TLS, offlineimap3 one round each way over implicit TLS (both
 * with the self-signed certificate trusted, not ignored), and neomutt driven through tmux, its
 * index screen read back and a deletion synced. What the server holds afterwards is read from the
 * store (h.folders), not through IMAP. mbsync and offlineimap write local files with LF line ends:
 * a body matches when it is the delivered bytes with CRLF turned into LF, and a message made
 * locally must reach the server as its CRLF form.
 */
import { mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addImapUsers, imapPassword, startImapHarness, type ImapHarness } from './harness.js';
import { certFile, corpus, lf, maildirFiles, maildirFlags, need, runTool, serverMessages, sha, until } from './support/clients.js';

let h: ImapHarness;
const USERS = ['mbsync@example.com', 'oimap@example.com', 'neomutt@example.com'];
const mail = corpus('sy');
const crlf = (s: string) => s.replace(/\r?\n/g, '\r\n');

beforeAll(async () => {
  h = await startImapHarness();
  await addImapUsers(h, ...USERS);
  for (const u of USERS) for (const m of mail) await h.deliver(u, m);
});
afterAll(async () => h?.close());

/** The local files of one folder ordered by the server UID in their names (`U=<uid>`). */
async function byUid(dir: string): Promise<{ uid: number; name: string; path: string; text: string }[]> {
  const files = await maildirFiles(dir);
  return files
    .map((f) => ({ ...f, uid: Number(/,U=(\d+)/.exec(f.name)?.[1] ?? NaN) }))
    .filter((f) => !Number.isNaN(f.uid))
    .sort((a, b) => a.uid - b.uid);
}

/**
 * mbsync puts an `X-TUID` header of its own at the end of the header of each message
 * it stores or uploads (to find it again should the run break off); everything else must be the
 * message's bytes.
 */
function withoutTuid(text: string): string {
  const end = text.indexOf('\n\n');
  const m = /^X-TUID: [^\n]*\n/m.exec(text.slice(0, end + 1));
  expect(m, text.slice(0, 400)).not.toBeNull();
  return text.slice(0, m!.index) + text.slice(m!.index + m![0].length);
}

describe("isync's mbsync", () => {
  it('syncs both ways over implicit TLS: bodies down, a local message and local flags up, a local deletion expunged, a server flag change down', async () => {
    need('mbsync', 'isync');
    const user = 'mbsync@example.com';
    const home = join(h.dir, 'mbsync');
    const local = join(home, 'mail');
    await mkdir(local, { recursive: true });
    const rc = join(home, 'mbsyncrc');
    await writeFile(
      rc,
      [
        'IMAPAccount acc',
        'Host 127.0.0.1',
        `Port ${h.tlsPort}`,
        `User ${user}`,
        `Pass ${imapPassword(user)}`,
        'SSLType IMAPS',
        // The harness certificate, trusted as it is (mbsync then skips no check).
        `CertificateFile ${certFile(h)}`,
        '',
        'IMAPStore far',
        'Account acc',
        '',
        'MaildirStore near',
        `Path ${local}/`,
        `Inbox ${local}/INBOX`,
        'SubFolders Verbatim',
        '',
        'Channel ch',
        'Far :far:',
        'Near :near:',
        'Patterns *',
        'Create Both',
        'Expunge Both',
        'SyncState *',
        'Sync All',
        '',
      ].join('\n'),
    );
    const sync = async () => {
      const r = await runTool('mbsync', ['-c', rc, '-a'], { timeoutMs: 60_000, env: { ...process.env, HOME: home } });
      expect(r.code, r.out).toBe(0);
    };

    await sync();
    const down = await byUid(join(local, 'INBOX'));
    expect(down.map((f) => f.uid)).toEqual([1, 2, 3, 4]);
    expect(down.map((f) => sha(withoutTuid(f.text)))).toEqual(mail.map((m) => sha(lf(m))));
    for (const f of ['Sent', 'Drafts', 'Trash', 'Junk', 'Archive']) expect(await readdir(local)).toContain(f);

    // Local changes: a new message with \Seen and \Flagged, \Seen on UID 1, UID 3 deleted.
    const made = 'From: laptop@example.com\nTo: mbsync@example.com\nSubject: written offline\nMessage-ID: <offline-1@example.com>\n\nmade in the Maildir\n';
    await writeFile(join(local, 'INBOX', 'cur', `1800000000.offline.laptop:2,FS`), made);
    await rename(down[0]!.path, `${down[0]!.path.replace(/:2,[A-Za-z]*$/, '')}:2,S`);
    await rm(down[2]!.path);
    // A server-side change: \Flagged and \Answered on UID 2 (what another client did).
    await h.folders.storeFlags(user, 'INBOX', [2], { mode: 'add', flags: ['\\Flagged', '\\Answered'] });

    await sync();
    const server = await serverMessages(h, user, 'INBOX');
    expect(server.map((m) => m.uid)).toEqual([1, 2, 4, 5]);
    expect(server[0]!.flags).toEqual(['\\Seen']);
    expect(server[3]!.flags.sort()).toEqual(['\\Flagged', '\\Seen']);
    // Uploaded with CRLF line ends (and mbsync's X-TUID, on uploads too).
    const uploaded = server[3]!.raw.toString('utf8');
    expect(uploaded.replace(/\r\n/g, '')).not.toContain('\n');
    expect(sha(withoutTuid(lf(uploaded)))).toBe(sha(made));
    const after = await byUid(join(local, 'INBOX'));
    expect(after.map((f) => f.uid)).toEqual([1, 2, 4, 5]);
    expect(maildirFlags(after[1]!.name)).toBe('FR');
    expect(maildirFlags(after[0]!.name)).toBe('S');
  });
});

describe('offlineimap3', () => {
  it('one round each way over implicit TLS: INBOX down byte-identical, then a local message and a local flag up and a server flag down', async () => {
    need('offlineimap', 'offlineimap3');
    const user = 'oimap@example.com';
    const home = join(h.dir, 'offlineimap');
    const local = join(home, 'mail');
    await mkdir(local, { recursive: true });
    const rc = join(home, 'offlineimaprc');
    await writeFile(
      rc,
      [
        '[general]',
        'accounts = acc',
        `metadata = ${join(home, 'meta')}`,
        '',
        '[Account acc]',
        'localrepository = local',
        'remoterepository = remote',
        '',
        '[Repository local]',
        'type = Maildir',
        `localfolders = ${local}`,
        '',
        '[Repository remote]',
        'type = IMAP',
        // offlineimap checks the certificate's host name itself and knows DNS names only: the
        // harness certificate names localhost.
        'remotehost = localhost',
        `remoteport = ${h.tlsPort}`,
        `remoteuser = ${user}`,
        `remotepass = ${imapPassword(user)}`,
        'ssl = yes',
        `sslcacertfile = ${certFile(h)}`,
        "folderfilter = lambda f: f in ['INBOX', 'Archive']",
        '',
      ].join('\n'),
    );
    const sync = async () => {
      // -o: one run, -u basic: plain log lines, no terminal UI.
      const r = await runTool('offlineimap', ['-c', rc, '-o', '-u', 'basic'], { timeoutMs: 40_000, env: { ...process.env, HOME: home } });
      expect(r.code, r.out).toBe(0);
      expect(r.out).not.toMatch(/ERROR/);
    };

    await sync();
    const down = await byUid(join(local, 'INBOX'));
    expect(down.map((f) => f.uid)).toEqual([1, 2, 3, 4]);
    expect(down.map((f) => sha(f.text))).toEqual(mail.map((m) => sha(lf(m))));

    const made = 'From: desk@example.com\nTo: oimap@example.com\nSubject: from offlineimap\nMessage-ID: <oi-1@example.com>\n\nmade locally\n';
    await writeFile(join(local, 'INBOX', 'cur', '1800000000_0.1.desk:2,S'), made);
    await rename(down[3]!.path, `${down[3]!.path.replace(/:2,[A-Za-z]*$/, '')}:2,F`);
    await h.folders.storeFlags(user, 'INBOX', [1], { mode: 'add', flags: ['\\Seen'] });

    await sync();
    const server = await serverMessages(h, user, 'INBOX');
    expect(server.map((m) => m.uid)).toEqual([1, 2, 3, 4, 5]);
    expect(server[3]!.flags).toEqual(['\\Flagged']);
    expect(server[4]!.flags).toEqual(['\\Seen']);
    expect(sha(server[4]!.raw)).toBe(sha(crlf(made)));
    const after = await byUid(join(local, 'INBOX'));
    expect(after.map((f) => f.uid)).toEqual([1, 2, 3, 4, 5]);
    expect(maildirFlags(after[0]!.name)).toBe('S');
  });
});

describe('neomutt through tmux', () => {
  it('shows the index over implicit TLS, sees a new delivery, deletes a message and syncs it to the server', async () => {
    need('neomutt', 'neomutt');
    need('tmux', 'tmux');
    const user = 'neomutt@example.com';
    const home = join(h.dir, 'neomutt');
    await mkdir(home, { recursive: true });
    const rc = join(home, 'neomuttrc');
    await writeFile(
      rc,
      [
        `set folder = "imaps://${user}@127.0.0.1:${h.tlsPort}/"`,
        'set spoolfile = "+INBOX"',
        `set imap_pass = "${imapPassword(user)}"`,
        // The harness certificate is accepted as it is; host name checked (it names 127.0.0.1).
        `set certificate_file = "${certFile(h)}"`,
        'set ssl_verify_host = yes',
        'set imap_idle = yes',
        'set mail_check = 1',
        'set timeout = 1',
        'set delete = yes',
        'set sort = date',
        'set index_format = "%4C %Z %s"',
        'set header_cache = ""',
        'set message_cachedir = ""',
        '',
      ].join('\n'),
    );
    const sock = join(home, 'tmux.sock');
    const tmux = async (...args: string[]) => {
      const r = await runTool('tmux', ['-S', sock, ...args], { timeoutMs: 10_000 });
      expect(r.code, r.out).toBe(0);
      return r.stdout;
    };
    // tmux prints UTF-8; runTool reads bytes as latin1.
    const screen = async () => Buffer.from(await tmux('capture-pane', '-p'), 'latin1').toString('utf8');
    await tmux('new-session', '-d', '-x', '160', '-y', '40', `env HOME=${home} TERM=xterm neomutt -n -F ${rc}`);
    try {
      let text = '';
      const shows = (what: RegExp) => async () => what.test((text = await screen()));
      await until('the index with four messages', shows(/Msgs:4/), 15_000).catch((e: Error) => {
        throw new Error(`${e.message}; screen:\n${text}`);
      });
      // One index line per message, subjects decoded (RFC 2047 included), in date order.
      const lines = text.split('\n').filter((l) => /^\s+\d+ /.test(l));
      expect(lines.map((l) => l.replace(/^\s+\d+\s+N?\s+/, '').trim())).toEqual(['sy plain', 'sy dots', 'sy grüße', 'sy big']);

      // A delivery while neomutt has the folder open shows up in its index.
      await h.deliver(user, 'From: late@example.net\r\nSubject: sy late\r\nDate: Mon, 7 Dec 2026 10:00:09 +0000\r\n\r\nlate\r\n');
      await until('the new message in the index', shows(/sy late[\s\S]*Msgs:5/), 15_000).catch((e: Error) => {
        throw new Error(`${e.message}; screen:\n${text}`);
      });

      // Second line ("sy dots"): delete, then `$` to sync the folder (EXPUNGE).
      await tmux('send-keys', 'j', 'd');
      await tmux('send-keys', '$');
      await until('neomutt to show four messages', shows(/Msgs:4/), 15_000).catch((e: Error) => {
        throw new Error(`${e.message}; screen:\n${text}`);
      });
      expect(text).not.toContain('sy dots');
      const server = await serverMessages(h, user, 'INBOX');
      expect(server.map((m) => m.uid)).toEqual([1, 3, 4, 5]);
      expect(server.map((m) => sha(m.raw)).slice(0, 3)).toEqual([mail[0]!, mail[2]!, mail[3]!].map(sha));
      await tmux('send-keys', 'q');
    } finally {
      await runTool('tmux', ['-S', sock, 'kill-server'], { timeoutMs: 5000 });
    }
  });
});
