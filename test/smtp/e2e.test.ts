/**
 * End to end on the embedded default (containers/app.ts: SMTP listener + in-process workers over
 * local storage): a message sent with swaks lands in the recipients' mailboxes with the right
 * index fields, and its blob is byte-identical to what was sent after our added Return-Path and
 * Received lines.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startApp, type App } from '../../containers/app.js';
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig, type Config } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { tempDir } from '../support/tmp.js';

const run = promisify(execFile);

describe('swaks -> SMTP -> inbound worker -> mailbox (embedded default)', () => {
  let dir: { path: string; remove: () => Promise<void> };
  let config: Config;
  let app: App;
  let port: number;

  beforeAll(async () => {
    dir = await tempDir('tomlinson-e2e-');
    config = loadConfig({
      TOMLINSON_DATA_DIR: dir.path,
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
    await accounts.addUser('bob@example.test', 'bob-password-12');
    await accounts.addAlias('team@example.test', ['alice@example.test', 'bob@example.test']);
    port = Number(/:(\d+)$/.exec(app.listeners[0].addresses[0])![1]);
  });
  afterAll(async () => {
    await app?.close(1000);
    await dir?.remove();
  });

  it('delivers into every mailbox with index fields and the blob as sent', async () => {
    const data =
      'From: Sender <sender@remote.example>\r\nTo: team@example.test\r\nSubject: =?UTF-8?Q?End_to_end_=E2=9C=93?=\r\n' +
      'Date: Thu, 26 Nov 2026 08:00:00 +0000\r\nMessage-ID: <e2e-1@remote.example>\r\nMIME-Version: 1.0\r\n' +
      'Content-Type: text/plain; charset=utf-8\r\n\r\nHello team,\r\n..a line that starts with a dot\r\n';
    const sent = data; // swaks dot-stuffs on the wire; we unstuff: the message arrives as given
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
      'team@example.test',
      '--data',
      data.replace(/\r\n$/, '').replace(/\r\n/g, '\n'),
      '--timeout',
      '10',
    ]);
    const id = /<- +250 2\.0\.0 (\S+)/.exec(stdout)![1];

    const store = new MailboxStore(app.storage.tables, app.storage.mail);
    const deadline = Date.now() + 20_000;
    let alice = await store.list('alice@example.test');
    let bob = await store.list('bob@example.test');
    while ((alice.length === 0 || bob.length === 0) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      alice = await store.list('alice@example.test');
      bob = await store.list('bob@example.test');
    }
    expect(alice).toHaveLength(1);
    expect(bob).toHaveLength(1);
    const m = alice[0];
    expect(m.jobId).toBe(id);
    expect(bob[0].blobKey).toBe(m.blobKey);
    expect(m.summary).toMatchObject({
      from: 'Sender <sender@remote.example>',
      fromAddress: 'sender@remote.example',
      to: ['team@example.test'],
      subject: 'End to end ✓',
      date: '2026-11-26T08:00:00.000Z',
      messageId: '<e2e-1@remote.example>',
      preview: 'Hello team, ..a line that starts with a dot',
    });
    expect(Date.parse(m.receivedAt)).toBeGreaterThan(Date.now() - 60_000);

    const { info, body } = await app.storage.mail.get(m.blobKey);
    const chunks: Buffer[] = [];
    for await (const c of body) chunks.push(c as Buffer);
    const blob = Buffer.concat(chunks);
    expect(m.size).toBe(blob.length);
    expect(info.size).toBe(blob.length);
    const text = blob.toString('utf8');
    const bodyStart = text.indexOf('From: Sender');
    // RFC 5321 §4.4: final delivery puts the reverse-path at the very top, then our Received.
    expect(text.slice(0, bodyStart)).toMatch(
      new RegExp(
        `^Return-Path: <sender@remote\\.example>\\r\\nReceived: from client\\.test \\(\\[127\\.0\\.0\\.1\\]\\)\\r\\n\\tby mx\\.tomlinson\\.test \\(Tomlinson\\) with ESMTP id ${id}\\r\\n\\tfor <team@example\\.test>; .+\\r\\n$`,
      ),
    );
    expect(blob.subarray(Buffer.byteLength(text.slice(0, bodyStart))).toString('utf8')).toBe(sent);
  });
});
