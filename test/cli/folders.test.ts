/**
 * `folder ...` and the folder-aware `mailbox import|export` through the real binary against the
 * local adapters: a Maildir++ tree laid out as Dovecot lays it out (and, when doveadm is
 * installed, one Dovecot wrote itself), flags, keywords and subscriptions carried over, a re-run
 * that imports nothing, the quota stopping an import that a re-run resumes, and an export/import
 * round trip. What the CLI stored is read back through FolderStore on the same data folder.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, chown, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { openStorage } from '../../core/storage/open.js';
import { tempDir } from '../support/tmp.js';
import { startCli, type CliHarness } from './support.js';

const execFileP = promisify(execFile);

vi.setConfig({ testTimeout: 180_000, hookTimeout: 180_000 });

let cli: CliHarness;
let work: string;

interface FolderRow {
  name: string;
  specialUse: string | null;
  subscribed: boolean;
  messages: number;
  unseen: number;
  bytes: number;
}

/** Every folder of `user` with its messages' subjects and flags, read through FolderStore. */
async function snapshot(user: string): Promise<Record<string, { specialUse?: string; subscribed: boolean; messages: { subject: string; flags: string[] }[] }>> {
  const storage = await openStorage(loadConfig({ TOMLINSON_DATA_DIR: cli.dataDir }), silentLogger);
  try {
    const folders = new MailboxStore(storage.tables, storage.mail).folders;
    const out: Awaited<ReturnType<typeof snapshot>> = {};
    for (const f of await folders.list(user)) {
      const messages = [];
      for await (const m of folders.entries(user, f.id)) messages.push({ subject: String(m.summary.subject), flags: [...m.flags].sort() });
      messages.sort((a, b) => (a.subject < b.subject ? -1 : 1));
      out[f.name] = { ...(f.specialUse ? { specialUse: f.specialUse } : {}), subscribed: f.subscribed, messages };
    }
    return out;
  } finally {
    await storage.close();
  }
}

const message = (subject: string, body = 'Text') =>
  `From: Alice <alice@example.org>\nTo: bob@example.com\nSubject: ${subject}\nDate: Mon, 24 Nov 2025 16:00:00 +0000\n\n${body}\n`;

/** A Maildir++ tree as Dovecot lays it out: root = INBOX, `.Name.Sub` folders, side files. */
async function dovecotTree(root: string): Promise<void> {
  const folder = async (dir: string, files: Record<string, string>) => {
    for (const d of ['cur', 'new', 'tmp']) await mkdir(join(dir, d), { recursive: true });
    if (dir !== root) await writeFile(join(dir, 'maildirfolder'), '');
    for (const [name, text] of Object.entries(files)) await writeFile(join(dir, name), text);
  };
  await folder(root, {
    'cur/1764000002.M2P1.host,S=100,W=104:2,S': message('inbox seen'),
    'new/1764000001.M1P1.host,S=100,W=104': message('inbox new'),
    // dovecot-uidlist: the old server's UID order (the newer file first), version 3 lines.
    'dovecot-uidlist': '3 V1764000000 N3 G0123\n1 :1764000002.M2P1.host,S=100,W=104\n2 W104 :1764000001.M1P1.host,S=100,W=104\n',
  });
  await folder(join(root, '.Sent'), { 'cur/1764000010.M10P1.host:2,SRF': message('sent replied flagged') });
  await folder(join(root, '.Drafts'), { 'cur/1764000011.M11P1.host:2,DS': message('a draft') });
  await folder(join(root, '.Spam'), { 'cur/1764000012.M12P1.host:2,T': message('spam deleted') });
  await folder(join(root, '.Archive.2024'), {
    'cur/1764000013.M13P1.host:2,Sa': message('archived with a keyword'),
    'cur/1764000014.M14P1.host:2,Sb': message('archived too', 'Other text'),
    'dovecot-keywords': '0 $Label1\n1 project-x\n',
  });
  await folder(join(root, '.Lists.node'), { 'new/1764000015.M15P1.host': message('list mail') });
  await folder(join(root, '.B&APw-cher'), { 'cur/1764000016.M16P1.host:2,S': message('about books') });
  // Dovecot 2.x: a version header, levels separated by tabs, names in modified UTF-7.
  await writeFile(join(root, 'subscriptions'), 'V\t2\n\nSent\nDrafts\nLists\tnode\nB&APw-cher\n');
}

const EXPECTED = {
  INBOX: {
    subscribed: true,
    messages: [
      { subject: 'inbox new', flags: [] },
      { subject: 'inbox seen', flags: ['\\Seen'] },
    ],
  },
  'Archive/2024': {
    subscribed: false,
    messages: [
      { subject: 'archived too', flags: ['\\Seen', 'project-x'] },
      { subject: 'archived with a keyword', flags: ['$Label1', '\\Seen'] },
    ],
  },
  // Made as the parent of Archive/2024, and recognised by its name like a folder of its own.
  Archive: { specialUse: '\\Archive', subscribed: true, messages: [] },
  Bücher: { subscribed: true, messages: [{ subject: 'about books', flags: ['\\Seen'] }] },
  Lists: { subscribed: true, messages: [] },
  Drafts: { specialUse: '\\Drafts', subscribed: true, messages: [{ subject: 'a draft', flags: ['\\Draft', '\\Seen'] }] },
  'Lists/node': { subscribed: true, messages: [{ subject: 'list mail', flags: [] }] },
  Sent: { specialUse: '\\Sent', subscribed: true, messages: [{ subject: 'sent replied flagged', flags: ['\\Answered', '\\Flagged', '\\Seen'] }] },
  Spam: { specialUse: '\\Junk', subscribed: false, messages: [{ subject: 'spam deleted', flags: ['\\Deleted'] }] },
};

beforeAll(async () => {
  cli = await startCli();
  work = join(cli.dataDir, '..', 'work');
  await mkdir(work, { recursive: true });
  await cli.ok(['domain', 'add', 'example.com']);
  for (const u of ['bob', 'copy', 'small', 'folders', 'dove'])
    await cli.ok(['user', 'add', `${u}@example.com`, '--password-stdin'], { input: `${u}-password-1\n` });
});
afterAll(async () => cli?.cleanup());

describe('mailbox import of a Maildir++ tree', () => {
  it('makes the folders with their special uses, flags, keywords and subscriptions', async () => {
    const root = join(work, 'Maildir');
    await dovecotTree(root);
    const human = await cli.ok(['mailbox', 'import', 'bob@example.com', root]);
    expect(human).toContain(`maildir++ ${root} -> bob@example.com: 9 found, 9 imported`);
    expect(human).toMatch(/^ {2}Sent \(\\Sent\): 1 found, 1 imported, 0 skipped, 0 refused$/m);
    expect(human).toMatch(/^ {2}Archive\/2024 \(not subscribed\): 2 found, 2 imported/m);
    expect(await snapshot('bob@example.com')).toEqual(EXPECTED);
    // The dovecot-uidlist order is kept: uid 1 is the message the old server had as uid 1.
    const show = await cli.json<{ newest: { uid: number; subject: string }[] }>(['mailbox', 'show', 'bob@example.com']);
    expect(show.newest.map((m) => [m.uid, m.subject])).toEqual([
      [2, 'inbox new'],
      [1, 'inbox seen'],
    ]);
    const list = await cli.json<FolderRow[]>(['folder', 'list', 'bob@example.com']);
    expect(list.map((f) => f.name)).toEqual(['INBOX', 'Archive', 'Archive/2024', 'Bücher', 'Drafts', 'Lists', 'Lists/node', 'Sent', 'Spam']);
    expect(list.find((f) => f.name === 'Archive/2024')).toMatchObject({ messages: 2, unseen: 0, subscribed: false, specialUse: null });
    expect(list.find((f) => f.name === 'Lists/node')).toMatchObject({ messages: 1, unseen: 1 });
  });

  it('imports nothing on a second run, and only what is new on a third', async () => {
    const root = join(work, 'Maildir');
    const again = await cli.json<{ found: number; imported: number; skipped: number; folders: { folder: string }[] }>([
      'mailbox',
      'import',
      'bob@example.com',
      root,
    ]);
    expect(again).toMatchObject({ format: 'maildir++', found: 9, imported: 0, skipped: 9 });
    await writeFile(join(root, '.Sent', 'new', '1764000099.M99P1.host'), message('sent later'));
    const third = await cli.json<{ imported: number; skipped: number }>(['mailbox', 'import', 'bob@example.com', root]);
    expect(third).toMatchObject({ imported: 1, skipped: 9 });
    expect((await snapshot('bob@example.com')).Sent!.messages.map((m) => m.subject)).toEqual(['sent later', 'sent replied flagged']);
  });

  it('imports an mbox file or a plain Maildir into a named folder with --folder, and refuses it for a tree', async () => {
    const mbox = join(work, 'old.mbox');
    await writeFile(mbox, `From a@example.org Tue Nov 25 10:00:00 2025\n${message('from mbox')}\n`);
    expect(await cli.json(['mailbox', 'import', 'bob@example.com', mbox, '--folder', 'Old/2019'])).toMatchObject({ format: 'mbox', imported: 1 });
    const plain = join(work, 'Plain');
    for (const d of ['cur', 'new', 'tmp']) await mkdir(join(plain, d), { recursive: true });
    await writeFile(join(plain, 'cur', '1764000100.M1P1.host:2,FS'), message('from plain maildir'));
    expect(await cli.json(['mailbox', 'import', 'bob@example.com', plain, '--folder', 'Old/2019'])).toMatchObject({ format: 'maildir', imported: 1 });
    expect((await snapshot('bob@example.com'))['Old/2019']).toEqual({
      subscribed: true,
      messages: [
        { subject: 'from mbox', flags: [] },
        { subject: 'from plain maildir', flags: ['\\Flagged', '\\Seen'] },
      ],
    });
    const tree = await cli.run(['mailbox', 'import', 'bob@example.com', join(work, 'Maildir'), '--folder', 'X']);
    expect(tree.code).toBe(1);
    expect(tree.stderr).toMatch(/^error: .* is a Maildir\+\+ tree of 7 folders; --folder takes one Maildir folder or an mbox file\n$/);
    const bad = await cli.run(['mailbox', 'import', 'bob@example.com', mbox, '--folder', 'a*b']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toBe('error: cannot import into folder "a*b": bad folder name level "a*b"\n');
  });

  it('stops at the quota, keeps what is in, and resumes after the quota is raised', async () => {
    await cli.ok(['user', 'quota', 'small@example.com', '300']);
    const r = await cli.run(['--json', 'mailbox', 'import', 'small@example.com', join(work, 'Maildir')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^\{"error":"import stopped: mailbox full at .*; raise the quota \(user quota\) and run the same import again to resume"/);
    const partial = JSON.parse(r.stdout) as { imported: number; stopped: string };
    expect(partial.imported).toBeGreaterThan(0);
    expect(partial.imported).toBeLessThan(10);
    await cli.ok(['user', 'quota', 'small@example.com', 'unlimited']);
    const rest = await cli.json<{ imported: number; skipped: number; stopped?: string }>(['mailbox', 'import', 'small@example.com', join(work, 'Maildir')]);
    expect(rest).toMatchObject({ imported: 10 - partial.imported, skipped: partial.imported });
    expect(rest.stopped).toBeUndefined();
  });
});

describe('mailbox export', () => {
  it('exports one folder as mbox with --folder', async () => {
    const out = join(work, 'sent.mbox');
    expect(await cli.ok(['mailbox', 'export', 'bob@example.com', out, '--folder', 'Sent'])).toMatch(
      /^exported 2 messages \(\d+ B\) of bob@example\.com folder Sent to /,
    );
    const text = await readFile(out, 'utf8');
    expect(text.match(/^From /gm)).toHaveLength(2);
    expect(text).toContain('Subject: sent later\n');
    const missing = await cli.run(['mailbox', 'export', 'bob@example.com', join(work, 'x.mbox'), '--folder', 'Nope']);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toBe('error: bob@example.com has no folder Nope\n');
  });

  it('exports every folder as a Maildir++ tree that imports back to the same folders, messages and flags', async () => {
    const tree = join(work, 'Export');
    const human = await cli.ok(['mailbox', 'export', 'bob@example.com', tree, '--maildir']);
    expect(human).toMatch(/^exported 12 messages \([^)]+\) in 11 folders of bob@example\.com to /);
    expect(human).toContain('  Bücher -> .B&APw-cher: 1 messages');
    const entries = (await readdir(tree)).sort();
    expect(entries).toEqual(expect.arrayContaining(['.Archive.2024', '.B&APw-cher', '.Old.2019', '.Sent', '.Spam', 'cur', 'new', 'tmp', 'subscriptions']));
    expect(await readFile(join(tree, '.Archive.2024', 'dovecot-keywords'), 'utf8')).toMatch(/^0 \S+\n1 \S+\n$/);
    const sent = await readdir(join(tree, '.Sent', 'cur'));
    expect(sent.find((n) => n.startsWith('1764000010.'))).toMatch(/,S=\d+,W=\d+:2,FRS$/);
    // Dovecot's INTERNALDATE of a Maildir message is the file time.
    const file = sent.find((n) => n.startsWith('1764000010.'))!;
    expect((await stat(join(tree, '.Sent', 'cur', file))).mtime.getTime()).toBe(1764000010 * 1000);
    const again = await cli.run(['mailbox', 'export', 'bob@example.com', tree, '--maildir']);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('is not empty; name a new or empty folder');

    const back = await cli.json<{ imported: number }>(['mailbox', 'import', 'copy@example.com', tree]);
    expect(back.imported).toBe(12);
    const original = await snapshot('bob@example.com');
    expect(await snapshot('copy@example.com')).toEqual(original);
  });
});

describe('folder commands', () => {
  const user = 'folders@example.com';

  it('create, list, rename, subscribe and delete', async () => {
    expect(await cli.ok(['folder', 'create', user, 'Projects/2025/Q1'])).toBe(`created folder Projects/2025/Q1 of ${user}\n`);
    expect(await cli.ok(['folder', 'create', user, 'Old stuff', '--special-use', '\\Archive'])).toBe(`created folder Old stuff (\\Archive) of ${user}\n`);
    const table = await cli.ok(['folder', 'list', user]);
    expect(table).toMatch(/^NAME\s+USE\s+SUBSCRIBED\s+MESSAGES\s+UNSEEN\s+SIZE$/m);
    expect(table).toMatch(/^Old stuff\s+\\Archive\s+yes\s+0\s+0\s+0 B$/m);
    expect(await cli.ok(['folder', 'rename', user, 'Projects', 'Work/Projects'])).toBe(`renamed folder Projects of ${user} to Work/Projects\n`);
    expect(await cli.ok(['folder', 'unsubscribe', user, 'Work/Projects/2025'])).toBe(`unsubscribed folder Work/Projects/2025 of ${user}\n`);
    const list = await cli.json<FolderRow[]>(['folder', 'list', user]);
    expect(list.map((f) => [f.name, f.subscribed])).toEqual([
      ['INBOX', true],
      ['Old stuff', true],
      ['Work', true],
      ['Work/Projects', true],
      ['Work/Projects/2025', false],
      ['Work/Projects/2025/Q1', true],
    ]);
    expect(await cli.ok(['folder', 'delete', user, 'Work/Projects/2025/Q1'])).toBe(`deleted folder Work/Projects/2025/Q1 of ${user}\n`);
    expect(await cli.ok(['folder', 'delete', user, 'Old stuff'])).toBe(
      `deleted folder Old stuff of ${user}; it was the \\Archive folder, made again (empty) the next time a client or delivery needs one\n`,
    );
  });

  it('refuses to delete a folder with messages unless --force, which releases the blobs', async () => {
    const mbox = join(work, 'two.mbox');
    await writeFile(
      mbox,
      `From a@example.org Tue Nov 25 10:00:00 2025\n${message('unique one', 'only here 1')}\nFrom a@example.org Tue Nov 25 10:00:00 2025\n${message('unique two', 'only here 2')}\n`,
    );
    await cli.ok(['mailbox', 'import', user, mbox, '--folder', 'Full']);
    const refused = await cli.run(['folder', 'delete', user, 'Full']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/^error: Full holds 2 messages \(\d+ B\); pass --force to delete them with it\n$/);
    const storage = await openStorage(loadConfig({ TOMLINSON_DATA_DIR: cli.dataDir }), silentLogger);
    const blobKeys: string[] = [];
    try {
      const folders = new MailboxStore(storage.tables, storage.mail).folders;
      const full = (await folders.find(user, 'Full'))!;
      for await (const m of folders.entries(user, full.id)) blobKeys.push(m.blobKey);
    } finally {
      await storage.close();
    }
    expect(await cli.ok(['folder', 'delete', user, 'Full', '--force'])).toBe(`deleted folder Full of ${user} and its 2 messages\n`);
    const after = await openStorage(loadConfig({ TOMLINSON_DATA_DIR: cli.dataDir }), silentLogger);
    try {
      for (const k of blobKeys) await expect(after.mail.get(k)).rejects.toThrow();
      expect(Number((await new MailboxStore(after.tables, after.mail).folders.usage(user)).count)).toBe(0);
    } finally {
      await after.close();
    }
  });

  it('gives one-line errors for bad input', async () => {
    const cases: [string[], string][] = [
      [['folder', 'delete', user, 'INBOX'], 'error: INBOX cannot be deleted; it is where mail arrives'],
      [['folder', 'rename', user, 'inbox', 'Other'], 'error: INBOX cannot be renamed; create a folder and move the messages with an IMAP client'],
      [['folder', 'delete', user, 'Nope'], `error: ${user} has no folder Nope`],
      [['folder', 'delete', user, 'Work'], `error: Work has folders below it (Work/Projects, Work/Projects/2025); delete those first`],
      [['folder', 'create', user, 'Work'], 'error: folder Work exists'],
      [['folder', 'create', user, 'a%b'], 'error: bad folder name level "a%b"'],
      [
        ['folder', 'create', user, 'x', '--special-use', 'Important'],
        'error: --special-use must be one of \\Sent \\Drafts \\Trash \\Junk \\Archive, not Important',
      ],
      [['folder', 'rename', user, 'Work', 'Work/Inner'], 'error: cannot rename Work into itself'],
      [['folder', 'list', 'zed@example.com'], 'error: user zed@example.com does not exist'],
    ];
    for (const [args, expected] of cases) {
      const r = await cli.run(args);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.stderr, args.join(' ')).toBe(`${expected}\n`);
    }
  });
});

/** doveadm run as the current user, or as nobody when that is root (Dovecot refuses root). */
async function doveadmSetup(dir: string): Promise<((args: string[], input?: string) => Promise<string>) | string> {
  const uid = process.getuid?.() ?? 0;
  const user = uid === 0 ? 'nobody' : String(uid);
  await mkdir(join(dir, 'mail'), { recursive: true });
  for (const d of ['run', 'state', 'home']) await mkdir(join(dir, d), { recursive: true });
  if (uid === 0) {
    await chmod(dir, 0o755);
    await chown(join(dir, 'mail'), 65534, 65534);
    await chown(join(dir, 'home'), 65534, 65534);
  }
  const conf = join(dir, 'dovecot.conf');
  await writeFile(
    conf,
    [
      `base_dir = ${dir}/run`,
      `state_dir = ${dir}/state`,
      'log_path = /dev/stderr',
      'ssl = no',
      'first_valid_uid = 0',
      'first_valid_gid = 0',
      `mail_location = maildir:${dir}/mail`,
      `mail_uid = ${user}`,
      `mail_gid = ${uid === 0 ? '65534' : String(process.getgid?.() ?? 0)}`,
      'namespace inbox {\n  inbox = yes\n  separator = /\n}',
      '',
    ].join('\n'),
  );
  const run = (args: string[], input?: string) =>
    new Promise<string>((resolve, reject) => {
      // USER and HOME make doveadm act for this user without an auth lookup.
      const child = execFile('doveadm', ['-c', conf, ...args], { env: { ...process.env, USER: 'dove', HOME: join(dir, 'home') } }, (err, stdout, stderr) =>
        err ? reject(new Error(`doveadm ${args.join(' ')}: ${stderr || err.message}`)) : resolve(stdout),
      );
      child.stdin?.end(input ?? '');
    });
  try {
    await run(['mailbox', 'create', 'Probe']);
    await run(['mailbox', 'delete', 'Probe']);
  } catch (e) {
    return (e as Error).message.split('\n')[0]!;
  }
  return run;
}

describe.runIf(existsSync('/usr/bin/doveadm'))('a Maildir++ tree written by Dovecot', () => {
  it('imports with its folders, flags, keywords and subscriptions', async (t) => {
    // Its own temporary folder: Dovecot runs as nobody when we are root, and must reach it.
    const tmp = await tempDir('tomlinson-dovecot-');
    t.onTestFinished(() => tmp.remove());
    const dir = tmp.path;
    const doveadm = await doveadmSetup(dir);
    if (typeof doveadm === 'string') return t.skip(`doveadm cannot run here: ${doveadm}`);
    await doveadm(['mailbox', 'create', '-s', 'Sent', 'Archive/2024', 'Bücher']);
    await doveadm(['save', '-m', 'Archive/2024'], message('kept by dovecot'));
    await doveadm(['save', '-m', 'Bücher'], message('about books'));
    await doveadm(['save'], message('inbox from dovecot'));
    await doveadm(['flags', 'add', '\\Seen \\Flagged $Label1', 'mailbox', 'Archive/2024', 'all']);
    await doveadm(['mailbox', 'unsubscribe', 'Archive/2024']);
    const r = await cli.json<{ format: string; imported: number }>(['mailbox', 'import', 'dove@example.com', join(dir, 'mail')]);
    expect(r).toMatchObject({ format: 'maildir++', imported: 3 });
    expect(await snapshot('dove@example.com')).toEqual({
      INBOX: { subscribed: true, messages: [{ subject: 'inbox from dovecot', flags: [] }] },
      Archive: { specialUse: '\\Archive', subscribed: true, messages: [] },
      'Archive/2024': { subscribed: false, messages: [{ subject: 'kept by dovecot', flags: ['$Label1', '\\Flagged', '\\Seen'] }] },
      Bücher: { subscribed: true, messages: [{ subject: 'about books', flags: [] }] },
      Sent: { specialUse: '\\Sent', subscribed: true, messages: [] },
    });

    // And back: Dovecot reads our export with the same folders, flags and subscriptions.
    const tree = join(dir, 'export');
    await cli.ok(['mailbox', 'export', 'dove@example.com', tree, '--maildir']);
    if (process.getuid?.() === 0) await execFileP('chown', ['-R', '65534:65534', tree]);
    const at = ['-o', `mail_location=maildir:${tree}`];
    const list = await doveadm(['-f', 'flow', ...at, 'mailbox', 'list']);
    expect(list.split('\n').filter(Boolean).sort()).toEqual(['Archive', 'Archive/2024', 'Bücher', 'INBOX', 'Sent']);
    const subscribed = await doveadm(['-f', 'flow', ...at, 'mailbox', 'list', '-s']);
    expect(subscribed).not.toContain('Archive/2024');
    expect(subscribed).toContain('Bücher');
    const fetched = await doveadm(['-f', 'flow', ...at, 'fetch', 'mailbox flags hdr.subject', 'mailbox', 'Archive/2024', 'all']);
    // \Recent is Dovecot's own: the first session to see a message.
    expect(fetched).toMatch(/^mailbox=Archive\/2024 flags=\\Flagged \\Seen (\\Recent )?\$Label1 hdr\.subject=kept by dovecot$/m);
  });
});
