/**
 * End to end on the embedded default: a message carrying a base64-encoded attached message, sent
 * with swaks, is stored with a summary that lists the attached message's header fields and parts;
 * a message without header lines is stored with its text as the body (behind our trace fields).
 */
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startApp, type App } from '../../containers/app.js';
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import type { MessageSummary } from '../../core/mail/mime.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { tempDir } from '../support/tmp.js';

const run = promisify(execFile);

describe('swaks -> SMTP -> mailbox: the summary of MIME that needs opening (embedded default)', () => {
  let dir: { path: string; remove: () => Promise<void> };
  let app: App;
  let port: number;
  let store: MailboxStore;

  beforeAll(async () => {
    dir = await tempDir('tomlinson-mime-e2e-');
    const config = loadConfig({
      TOMLINSON_DATA_DIR: join(dir.path, 'data'),
      TOMLINSON_HOSTNAME: 'mx.tomlinson.test',
      TOMLINSON_SMTP_PORT: '0',
      TOMLINSON_SUBMISSION_PORT: '0',
      TOMLINSON_SUBMISSIONS_PORT: '0',
      TOMLINSON_SMTP_CHECK_AUTH: 'false',
      TOMLINSON_HEALTH_PORT: '0',
      TOMLINSON_LOG_LEVEL: 'silent',
    });
    app = await startApp(config, ['smtp', 'workers'], silentLogger);
    const accounts = new Accounts(app.storage.tables, { scrypt: { ln: 4, r: 8, p: 1 } });
    await accounts.addDomain('example.test');
    await accounts.addUser('alice@example.test', 'alice-password-1');
    port = Number(/:(\d+)$/.exec(app.listeners[0].addresses[0])![1]);
    store = new MailboxStore(app.storage.tables, app.storage.mail);
  });
  afterAll(async () => {
    await app?.close(1000);
    await dir?.remove();
  });

  /** Sends with swaks and returns the summary stored for the queue id the server answered. */
  const send = async (args: string[]): Promise<MessageSummary> => {
    const { stdout } = await run('swaks', [
      '--server',
      '127.0.0.1',
      '--port',
      String(port),
      '--helo',
      'client.test',
      '--from',
      'sender@remote.example',
      '--to',
      'alice@example.test',
      '--timeout',
      '10',
      ...args,
    ]);
    const id = /<- +250 2\.0\.0 (\S+)/.exec(stdout)![1];
    const deadline = Date.now() + 20_000;
    for (;;) {
      const entry = (await store.list('alice@example.test')).find((e) => e.jobId === id);
      if (entry) return entry.summary as unknown as MessageSummary;
      if (Date.now() > deadline) throw new Error(`message ${id} was not delivered`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };

  it('lists the header fields and parts of a base64-encoded attached message', async () => {
    const inner = join(dir.path, 'forwarded.eml');
    await writeFile(
      inner,
      'From: Inner Sender <inner@x.example>\nTo: someone@x.example\nSubject: the forwarded one\nDate: Thu, 26 Nov 2026 08:00:00 +0000\n' +
        'Message-ID: <fwd-1@x.example>\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=ib\n\n' +
        '--ib\nContent-Type: text/plain\n\ninner text\n--ib\nContent-Type: application/pdf; name=x.pdf\nContent-Transfer-Encoding: base64\n\nJVBERi0xLjQK\n--ib--\n',
    );
    const s = await send(['--body', 'see the attached message', '--attach-type', 'message/rfc822', '--attach-name', 'forwarded.eml', '--attach', `@${inner}`]);
    expect(s.malformed).toBeUndefined();
    expect(s.parts.map((p) => [p.part, p.type])).toEqual([
      ['', 'multipart/mixed'],
      ['1', 'text/plain'],
      ['2', 'message/rfc822'],
      ['2.TEXT', 'multipart/mixed'],
      ['2.1', 'text/plain'],
      ['2.2', 'application/pdf'],
    ]);
    expect(s.parts[2]).toMatchObject({
      encoding: 'base64',
      message: {
        subject: 'the forwarded one',
        from: 'Inner Sender <inner@x.example>',
        fromAddress: 'inner@x.example',
        to: ['someone@x.example'],
        date: '2026-11-26T08:00:00.000Z',
        messageId: '<fwd-1@x.example>',
      },
    });
    expect(s.parts[5]).toMatchObject({ filename: 'x.pdf', decodedSize: 9 });
    expect(s.preview).toBe('see the attached message');
  });

  it('stores a message without header lines with its text as the body', async () => {
    const s = await send(['--data', 'just some text\nsecond line: not a header\n']);
    expect(s.subject).toBe('');
    expect(s.parts.map((p) => [p.part, p.type])).toEqual([['', 'text/plain']]);
    expect(s.preview).toBe('just some text second line: not a header');
  });
});
