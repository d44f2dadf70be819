/**
 * End to end on the embedded default (SMTP + POP3 + in-process workers over local storage): swaks
 * sends three messages to the MX listener, the inbound worker files them, a POP3 client downloads
 * them byte-identical to what SMTP stored (our Received header included), deletes two, and later
 * sessions see exactly what they should, including after a killed session and a double login.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { text } from 'node:stream/consumers';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { Metrics } from '../../core/metrics.js';
import { startApp, type App } from '../../containers/app.js';
import { passwordOf, portOf, RawClient } from './harness.js';

const run = promisify(execFile);
const USER = 'bob@example.com';
let app: App;
let dir: string;
let smtpPort: number;
let popPort: number;
let store: MailboxStore;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tomlinson-pop3-e2e-'));
  const config = loadConfig({
    TOMLINSON_DATA_DIR: dir,
    TOMLINSON_HOSTNAME: 'mx.example.com',
    TOMLINSON_SMTP_PORT: '0',
    TOMLINSON_SUBMISSION_PORT: '0',
    TOMLINSON_SUBMISSIONS_PORT: '0',
    TOMLINSON_SMTP_CHECK_AUTH: 'false',
    TOMLINSON_POP3_PORT: '0',
    TOMLINSON_POP3S_PORT: '0',
    TOMLINSON_IMAP_PORT: '0',
    TOMLINSON_IMAPS_PORT: '0',
    TOMLINSON_WEB_PORT: '0',
    TOMLINSON_HEALTH_PORT: '0',
    TOMLINSON_LOG_LEVEL: 'silent',
  });
  app = await startApp(config, ['smtp', 'pop3', 'workers'], silentLogger, { metrics: new Metrics({ defaults: false }) });
  smtpPort = portOf(app.listeners.find((l) => l.name === 'smtp')!.addresses, 'mx');
  popPort = portOf(app.listeners.find((l) => l.name === 'pop3')!.addresses, 'pop3');
  const accounts = new Accounts(app.storage.tables);
  await accounts.addDomain('example.com');
  await accounts.addUser(USER, passwordOf(USER));
  store = new MailboxStore(app.storage.tables, app.storage.mail);
});
afterAll(async () => {
  await app?.close(1000);
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function swaks(n: number): Promise<void> {
  const body = `This is message ${n}.\n.\n..dots survive\nend of ${n}`;
  await run(
    'swaks',
    [
      '--server',
      '127.0.0.1',
      '--port',
      String(smtpPort),
      '--from',
      'sender@example.net',
      '--to',
      USER,
      '--helo',
      'client.example.net',
      '--header',
      `Subject: e2e ${n}`,
      '--body',
      body,
    ],
    { timeout: 30_000 },
  );
}

async function waitForMessages(n: number): Promise<void> {
  const deadline = Date.now() + 20_000;
  while ((await store.list(USER)).length < n) {
    if (Date.now() > deadline) throw new Error(`only ${(await store.list(USER)).length} of ${n} messages delivered`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function login(): Promise<RawClient> {
  const { client } = await RawClient.connect(popPort);
  expect(await client.login(USER, passwordOf(USER))).toMatch(/^\+OK/);
  return client;
}

describe('swaks -> SMTP -> inbound worker -> POP3', () => {
  it('downloads three byte-identical to the stored message, deletes two, a second session sees one', async () => {
    for (let i = 1; i <= 3; i++) await swaks(i);
    await waitForMessages(3);
    const entries = await store.list(USER);

    const a = await login();
    expect(await a.cmd('STAT')).toBe(`+OK 3 ${entries.reduce((s, e) => s + e.size, 0)}`);
    await a.cmd('UIDL');
    const uidls = await a.multiline();
    // Three jobs processed side by side may be filed in any order: each message is matched by
    // its own subject.
    const order: number[] = [];
    for (let i = 0; i < 3; i++) {
      expect(await a.cmd(`RETR ${i + 1}`)).toMatch(/^\+OK/);
      const got = (await a.multilineRaw()).toString('utf8');
      const stored = await text((await app.storage.mail.get(entries[i]!.blobKey)).body);
      expect(got).toBe(stored);
      expect(Buffer.byteLength(got)).toBe(entries[i]!.size);
      // What SMTP added is there, and what swaks sent (dot lines included) came through.
      expect(got).toMatch(/^(Return-Path: .*\r\n)?Received: from client\.example\.net/);
      const k = Number(/\r\nSubject: e2e (\d)\r\n/.exec(got)?.[1]);
      order.push(k);
      expect(got).toContain(`This is message ${k}.\r\n.\r\n..dots survive\r\nend of ${k}\r\n`);
    }
    expect([...order].sort()).toEqual([1, 2, 3]);
    expect(await a.cmd('DELE 1')).toMatch(/^\+OK/);
    expect(await a.cmd('DELE 2')).toMatch(/^\+OK/);
    expect(await a.cmd('QUIT')).toMatch(/^\+OK/);
    await a.waitClosed();

    const b = await login();
    expect(await b.cmd('STAT')).toMatch(/^\+OK 1 /);
    expect(await b.cmd('UIDL 1')).toBe(`+OK 1 ${uidls[2]!.split(' ')[1]}`);
    await b.cmd('RETR 1');
    expect((await b.multilineRaw()).toString()).toContain(`Subject: e2e ${order[2]}\r\n`);
    expect(await b.cmd('QUIT')).toMatch(/^\+OK/);
  });

  it('a session killed after DELE deletes nothing', async () => {
    const a = await login();
    expect(await a.cmd('DELE 1')).toMatch(/^\+OK/);
    a.destroy();
    let b: RawClient | undefined;
    for (let i = 0; i < 50 && !b; i++) {
      const { client } = await RawClient.connect(popPort);
      if ((await client.login(USER, passwordOf(USER))).startsWith('+OK')) b = client;
      else {
        await client.cmd('QUIT');
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    expect(await b!.cmd('STAT')).toMatch(/^\+OK 1 /);
    expect(await b!.cmd('QUIT')).toMatch(/^\+OK/);
  });

  it('two simultaneous logins: the second gets [IN-USE]', async () => {
    const a = await login();
    const { client: b } = await RawClient.connect(popPort);
    expect(await b.login(USER, passwordOf(USER))).toMatch(/^-ERR \[IN-USE\]/);
    expect(await a.cmd('QUIT')).toMatch(/^\+OK/);
    expect(await b.cmd('QUIT')).toMatch(/^\+OK/);
  });
});
