/**
 * `tomlinson spam ...` through the real binary on the local adapters, and what the inbound worker
 * then does with junk: `spam off` and `spam junk-to-inbox on` file it into INBOX with its X-Spam-*
 * header fields, a user's or domain's allow list files it into INBOX whatever the verdict and a
 * block list files clean mail into Junk; `spam stats` shows the junked count the worker kept.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { inboundJob } from '../../core/mail/inbound.js';
import type { InboundJob } from '../../core/mail/jobs.js';
import { spamHeaders, type SpamResult } from '../../core/mail/spam.js';
import { INBOX } from '../../core/mailbox/keys.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { openStorage } from '../../core/storage/open.js';
import type { Storage } from '../../core/storage/ports.js';
import { startCli, type CliHarness } from '../cli/support.js';

vi.setConfig({ testTimeout: 120_000, hookTimeout: 120_000 });

let cli: CliHarness;
const USERS = ['ann', 'pop', 'off', 'cal', 'dan'].map((u) => `${u}@example.com`);
const JUNK: SpamResult = { action: 'add header', score: 9.5, required: 15, symbols: ['GTUBE(9.50)'] };
const CLEAN: SpamResult = { action: 'no action', score: 0.1, required: 15, symbols: [] };

beforeAll(async () => {
  cli = await startCli();
  await cli.ok(['domain', 'add', 'example.com']);
  for (const u of USERS) await cli.ok(['user', 'add', u, '--password-stdin'], { input: 'a-long-password-1\n' });
});
afterAll(async () => cli?.cleanup());

/** Delivers one message with this verdict to `rcpt` as the inbound worker does; returns the folder name it is in. */
async function deliver(storage: Storage, rcpt: string, from: string, verdict: SpamResult): Promise<string> {
  const id = randomUUID();
  const raw = Buffer.from(`${spamHeaders(verdict)}From: <${from}>\r\nTo: <${rcpt}>\r\nSubject: s ${id}\r\nMessage-ID: <${id}@x>\r\n\r\nbody\r\n`);
  const job: InboundJob = {
    v: 1,
    id,
    blobKey: `in/test/${id}.eml`,
    raw: raw.toString('base64'),
    size: raw.length,
    from,
    rcpts: [{ address: rcpt }],
    receivedAt: new Date().toISOString(),
    client: { address: '192.0.2.1', helo: 'x' },
    listener: 'mx',
    spam: verdict,
  };
  const config = loadConfig({ TOMLINSON_DATA_DIR: cli.dataDir });
  expect(
    await inboundJob(
      JSON.stringify(job),
      { queue: 'inbound', id, receiveCount: 1, sentAt: new Date() },
      { config, storage, log: silentLogger, now: () => new Date() },
    ),
  ).toEqual({
    kind: 'done',
  });
  const folders = new MailboxStore(storage.tables, storage.mail).folders;
  for (const f of await folders.list(rcpt)) {
    for await (const m of folders.entries(rcpt, f.id)) if (m.blobKey === job.blobKey) return f.id === INBOX ? 'INBOX' : f.name;
  }
  return 'nowhere';
}

describe('spam settings', () => {
  it('files junk by each user’s settings and lists, and counts it', async () => {
    expect(await cli.ok(['spam', 'off', 'off@example.com'])).toContain('filtering:     off');
    expect(await cli.ok(['spam', 'junk-to-inbox', 'on', 'pop@example.com'])).toContain('junk-to-inbox: on');
    await cli.ok(['spam', 'allow', 'cal@example.com', 'friend@partner.example']);
    await cli.ok(['spam', 'allow', 'example.com', '*.trusted.example']);
    await cli.ok(['spam', 'block', 'dan@example.com', 'pest.example']);
    expect(await cli.json(['spam', 'show', 'example.com'])).toMatchObject({ target: '@example.com', allow: ['*.trusted.example'], block: [] });
    // Bad input is refused with a message, not a crash.
    const bad = await cli.run(['spam', 'junk-to-inbox', 'maybe', 'pop@example.com']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('on or off');
    expect((await cli.run(['spam', 'off', 'nobody@example.com'])).stderr).toContain('no such user');

    const storage = await openStorage(loadConfig({ TOMLINSON_DATA_DIR: cli.dataDir }), silentLogger);
    try {
      expect(await deliver(storage, 'ann@example.com', 'x@spam.example', JUNK)).toBe('Junk');
      expect(await deliver(storage, 'ann@example.com', 'x@spam.example', CLEAN)).toBe('INBOX');
      expect(await deliver(storage, 'off@example.com', 'x@spam.example', JUNK)).toBe('INBOX');
      expect(await deliver(storage, 'pop@example.com', 'x@spam.example', JUNK)).toBe('INBOX');
      expect(await deliver(storage, 'cal@example.com', 'friend@partner.example', JUNK)).toBe('INBOX');
      expect(await deliver(storage, 'cal@example.com', 'other@partner.example', JUNK)).toBe('Junk');
      // The domain's allow list applies to every user of it.
      expect(await deliver(storage, 'ann@example.com', 'news@mail.trusted.example', JUNK)).toBe('INBOX');
      expect(await deliver(storage, 'dan@example.com', 'anyone@pest.example', CLEAN)).toBe('Junk');
      expect(await deliver(storage, 'dan@example.com', 'anyone@fine.example', CLEAN)).toBe('INBOX');
    } finally {
      await storage.close();
    }
    // Junked: ann once, cal once, dan's block once.
    const [today] = (await cli.json(['spam', 'stats'])) as { day: string; junked: number }[];
    expect(today).toMatchObject({ day: new Date().toISOString().slice(0, 10), junked: 3 });
    expect(await cli.ok(['spam', 'stats'])).toMatch(/JUNKED/);

    await cli.ok(['spam', 'allow', 'cal@example.com', 'friend@partner.example', '--remove']);
    expect(await cli.json(['spam', 'show', 'cal@example.com'])).toMatchObject({ allow: [] });
  });

  it('config show never prints spam.controllerPassword, only that it is set', async () => {
    const r = await cli.run(['config', 'show', '--json'], { env: { TOMLINSON_SPAM_CONTROLLER_PASSWORD: 'controller-secret-9' } });
    expect(r.code).toBe(0);
    expect(r.stdout).not.toContain('controller-secret-9');
    expect(JSON.parse(r.stdout)).toMatchObject({ 'spam.controllerPassword': '(set)', 'spam.controllerUrl': 'http://127.0.0.1:11334' });
  });
});
