/**
 * `mailbox show|import|export` and `user remove --purge` through the real binary against the
 * local adapters; plus the binary run the way a checkout runs it (tsx, no bundle) and the
 * password prompt on a terminal (no echo), driven through a pseudo-terminal by script(1).
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { openStorage } from '../../core/storage/open.js';
import { BIN, spawnCli, startCli, type CliHarness } from './support.js';

// Each test spawns the binary several times (about half a second of CPU each); on a loaded
// machine that can pass the default minute, which would be a false failure.
vi.setConfig({ testTimeout: 180_000, hookTimeout: 180_000 });

let cli: CliHarness;
let work: string;

const MBOX = [
  'From alice@example.org Tue Nov 25 10:00:00 2025',
  'From: Alice <alice@example.org>',
  'Subject: =?UTF-8?B?R3LDvMOfZQ==?=',
  'Date: Tue, 25 Nov 2025 10:00:00 +0000',
  '',
  'Hello',
  '>From a quoted line',
  '',
  'From bob@example.org Wed Nov 26 11:30:00 2025',
  'From: Bob <bob@example.org>',
  'Subject: second',
  'Date: Wed, 26 Nov 2025 11:30:00 +0000',
  '',
  'Bye',
  '',
  'From broken@example.org Wed Nov 26 11:30:00 2025',
  'this is not a header',
  '',
].join('\n');

beforeAll(async () => {
  cli = await startCli();
  work = join(cli.dataDir, '..', 'work');
  await mkdir(work, { recursive: true });
  await cli.ok(['domain', 'add', 'example.com']);
  await cli.ok(['user', 'add', 'bob@example.com', '--password-stdin'], { input: 'bob-password\n' });
});
afterAll(async () => cli?.cleanup());

describe('mailbox', () => {
  it('imports an mbox file with a summary, and skips everything on a second run', async () => {
    const file = join(work, 'old.mbox');
    await writeFile(file, MBOX);
    const human = await cli.ok(['mailbox', 'import', 'bob@example.com', file]);
    expect(human).toContain(`mbox ${file} -> bob@example.com: 3 found, 2 imported`);
    expect(human).toContain('0 skipped (already in), 1 refused');
    expect(human).toContain('refused message 3: does not start with a header field');
    const again = await cli.json<{ found: number; imported: number; skipped: number }>(['mailbox', 'import', 'bob@example.com', file]);
    expect(again).toMatchObject({ format: 'mbox', found: 3, imported: 0, skipped: 2 });
  });

  it('imports a Maildir', async () => {
    const md = join(work, 'Maildir');
    for (const d of ['cur', 'new', 'tmp']) await mkdir(join(md, d), { recursive: true });
    await writeFile(
      join(md, 'cur', '1764000000.M1.host:2,S'),
      'From: Carol <carol@example.org>\nSubject: from maildir\nDate: Mon, 24 Nov 2025 16:00:00 +0000\n\nHi\n',
    );
    const r = await cli.json<{ format: string; imported: number }>(['mailbox', 'import', 'bob@example.com', md]);
    expect(r).toMatchObject({ format: 'maildir', imported: 1 });
  });

  it('shows count, size and the newest messages with decoded subjects', async () => {
    const text = await cli.ok(['mailbox', 'show', 'bob@example.com']);
    expect(text.split('\n')[0]).toMatch(/^bob@example\.com: 3 messages, \d+ B of unlimited; uidNext 4, uidValidity \d+$/);
    expect(text).toMatch(/^UID\s+DATE\s+FROM\s+SIZE\s+SUBJECT$/m);
    expect(text).toMatch(/^\s*2\s+2025-11-26T11:30:00\.000Z\s+Bob <bob@example\.org>\s+\d+ B\s+second$/m);
    expect(text).toContain('Grüße');
    const json = await cli.json<{ count: number; newest: { uid: number; subject: string; flags: string[] }[] }>([
      'mailbox',
      'show',
      'bob@example.com',
      '--limit',
      '2',
    ]);
    expect(json.count).toBe(3);
    expect(json.newest.map((m) => m.uid)).toEqual([3, 2]);
    expect(json.newest[0]).toMatchObject({ subject: 'from maildir', flags: ['\\Seen'] });
  });

  it('exports as mbox, refuses to overwrite without --force, and the export imports back', async () => {
    const out = join(work, 'export.mbox');
    expect(await cli.ok(['mailbox', 'export', 'bob@example.com', out])).toMatch(/^exported 3 messages \(\d+ B\) of bob@example\.com to /);
    const text = await readFile(out, 'utf8');
    expect(text.match(/^From /gm)).toHaveLength(3);
    expect(text).toContain('\n>From a quoted line\n');
    const again = await cli.run(['mailbox', 'export', 'bob@example.com', out]);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('exists; pass --force');
    await cli.ok(['mailbox', 'export', 'bob@example.com', out, '--force']);
    await cli.ok(['user', 'add', 'copy@example.com', '--password-stdin'], { input: 'copy-password\n' });
    const back = await cli.json<{ imported: number }>(['mailbox', 'import', 'copy@example.com', out]);
    expect(back.imported).toBe(3);
    const stdout = await cli.run(['mailbox', 'export', 'copy@example.com', '-']);
    expect(stdout.code).toBe(0);
    expect(stdout.stdout).toBe(text);
  });

  it('refuses an unknown user, a missing path and a file that is not mbox', async () => {
    const unknown = await cli.run(['mailbox', 'show', 'zed@example.com']);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toBe('error: user zed@example.com does not exist\n');
    const missing = await cli.run(['mailbox', 'import', 'bob@example.com', join(work, 'nope')]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('does not exist');
    const notMbox = join(work, 'notes.txt');
    await writeFile(notMbox, 'just some text\n');
    const bad = await cli.run(['mailbox', 'import', 'bob@example.com', notMbox]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('not an mbox file');
  });

  it('refuses to remove a user with mail unless --purge, which deletes the mail too', async () => {
    const refused = await cli.run(['user', 'remove', 'copy@example.com']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('holds 3 messages; pass --purge');
    expect(await cli.ok(['user', 'remove', 'copy@example.com', '--purge'])).toBe('removed user copy@example.com and 3 messages\n');
    // bob still has his copies: the shared blobs survived
    const out = join(work, 'after.mbox');
    expect(await cli.ok(['mailbox', 'export', 'bob@example.com', out])).toMatch(/^exported 3 messages/);
  });
});

describe('import of identical messages', () => {
  it('imports 50 identical Maildir files as 50 messages, and a second run imports none of them', async () => {
    await cli.ok(['user', 'add', 'same@example.com', '--password-stdin'], { input: 'same-password\n' });
    const md = join(work, 'Identical');
    for (const d of ['cur', 'new', 'tmp']) await mkdir(join(md, d), { recursive: true });
    const body = 'From: Dave <dave@example.org>\nSubject: the same\nDate: Mon, 24 Nov 2025 16:00:00 +0000\n\nSame text\n';
    for (let i = 0; i < 50; i++) await writeFile(join(md, 'cur', `17640000${String(i).padStart(2, '0')}.M${i}.host:2,S`), body);
    const first = await cli.json<{ found: number; imported: number; skipped: number }>(['mailbox', 'import', 'same@example.com', md]);
    expect(first).toMatchObject({ found: 50, imported: 50, skipped: 0 });
    // A new copy arrived meanwhile: the resumed import adds just that one.
    await writeFile(join(md, 'new', '1764009999.M99.host'), body);
    const again = await cli.json<{ found: number; imported: number; skipped: number }>(['mailbox', 'import', 'same@example.com', md]);
    expect(again).toMatchObject({ found: 51, imported: 1, skipped: 50 });
    expect((await cli.json<{ count: number }>(['mailbox', 'show', 'same@example.com'])).count).toBe(51);
  });

  it('imports identical mbox messages as that many messages, once', async () => {
    await cli.ok(['user', 'add', 'twice@example.com', '--password-stdin'], { input: 'twice-password\n' });
    const one = ['From a@example.org Tue Nov 25 10:00:00 2025', 'From: a@example.org', 'Subject: again', '', 'Same', ''];
    const file = join(work, 'same.mbox');
    await writeFile(file, [...one, ...one, ...one].join('\n'));
    expect(await cli.json(['mailbox', 'import', 'twice@example.com', file])).toMatchObject({ found: 3, imported: 3, skipped: 0 });
    expect(await cli.json(['mailbox', 'import', 'twice@example.com', file])).toMatchObject({ found: 3, imported: 0, skipped: 3 });
  });
});

describe('errors', () => {
  it('are one line and a non-zero exit, never a stack trace', async () => {
    const file = join(work, 'plain.txt');
    await writeFile(file, 'x\n');
    const cases: [string[], RegExp][] = [
      [['mailbox', 'export', 'bob@example.com', join(work, 'no-such-folder', 'x.mbox')], /^error: folder .*no-such-folder does not exist$/],
      [['mailbox', 'export', 'bob@example.com', join(file, 'x.mbox')], /^error: .*plain\.txt is not a folder$/],
      [['mailbox', 'export', 'bob@example.com', work], /^error: .* is a folder; name the mbox file to write$/],
      [['mailbox', 'import', 'bob@example.com', join(work, 'no-such-folder')], /^error: .* does not exist$/],
      [['user', 'list'], /^error: cannot create .*plain\.txt: /],
      [['dkim', 'generate', 'example.com', '--selector', 'x'], /^error: cannot create .*plain\.txt.*: not a directory$/],
    ];
    for (const [args, expected] of cases) {
      const env: Record<string, string> =
        args[0] === 'user' ? { TOMLINSON_DATA_DIR: file } : args[0] === 'dkim' ? { TOMLINSON_DKIM_DIR: join(file, 'dkim') } : {};
      const r = await cli.run(args, { env });
      expect(r.code, args.join(' ')).not.toBe(0);
      expect(r.stderr, args.join(' ')).toMatch(/^[^\n]*\n$/);
      expect(r.stderr.trimEnd(), args.join(' ')).toMatch(expected);
    }
  });
});

describe('the binary as a checkout runs it', () => {
  it('runs cli/main.ts through tsx when asked to (TOMLINSON_CLI_BUNDLE=0)', async () => {
    const env = { TOMLINSON_DATA_DIR: cli.dataDir, TOMLINSON_CLI_BUNDLE: '0' };
    const r = await spawnCli(['--json', 'domain', 'list'], env, undefined, 60_000);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).map((d: { domain: string }) => d.domain)).toEqual(['example.com']);
  });

  it.runIf(existsSync('/usr/bin/script'))('asks for the password twice on a terminal without echoing it', async () => {
    // script(1) gives the CLI a pseudo-terminal; the typed lines arrive after the prompts.
    const cmd = `${process.execPath} ${BIN} user add tty@example.com`;
    const child = spawn('script', ['-qec', cmd, '/dev/null'], { env: { ...process.env, ...cli.env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    const waitFor = async (text: string, from = 0) => {
      for (let i = 0; i < 600 && !out.slice(from).includes(text); i++) await new Promise((r) => setTimeout(r, 50));
      if (!out.slice(from).includes(text)) throw new Error(`no ${JSON.stringify(text)} in ${JSON.stringify(out)}`);
    };
    await waitFor('Password: ');
    const mark = out.length;
    child.stdin.write('tty-secret-99\r');
    await waitFor('Repeat password: ', mark);
    child.stdin.write('tty-secret-99\r');
    const code = await new Promise<number | null>((r) => child.on('close', r));
    expect(code).toBe(0);
    expect(out).toContain('added user tty@example.com');
    expect(out).not.toContain('tty-secret-99');
    const storage = await openStorage(loadConfig({ TOMLINSON_DATA_DIR: cli.dataDir }), silentLogger);
    try {
      expect(await new Accounts(storage.tables).authenticate('tty@example.com', 'tty-secret-99')).toBeDefined();
    } finally {
      await storage.close();
    }
  });

  it.runIf(existsSync('/usr/bin/script'))('ends the progress bar before the import summary on a terminal', async () => {
    const md = join(work, 'Progress');
    for (const d of ['cur', 'new', 'tmp']) await mkdir(join(md, d), { recursive: true });
    for (let i = 0; i < 5; i++) await writeFile(join(md, 'new', `17640001${i}.M${i}.host`), `From: e@example.org\nSubject: progress ${i}\n\nText\n`);
    const cmd = `${process.execPath} ${BIN} mailbox import bob@example.com ${md}`;
    const child = spawn('script', ['-qec', cmd, '/dev/null'], { env: { ...process.env, ...cli.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    expect(await new Promise<number | null>((r) => child.on('close', r))).toBe(0);
    expect(out).toContain('importing INBOX [');
    // What the terminal shows: each line as the text after its last carriage return.
    const shown = out.split('\n').map((l) =>
      l
        .replace(/\r$/, '')
        .split('\r')
        .pop()!
        .replace(/\x1b\[[0-9;]*[A-Za-z]/g, ''),
    );
    expect(shown).toContain('importing INBOX [########################] 100% 5/5 messages');
    expect(shown.filter((l) => l.includes('5 found'))).toEqual([
      `maildir ${md} -> bob@example.com: 5 found, 5 imported (${/\((\d+ B)\)/.exec(out)![1]}), 0 skipped (already in), 0 refused`,
    ]);
  });
});
