/**
 * Return-Path (RFC 5321 §4.4): final delivery puts `Return-Path: <reverse-path>` at the top of
 * the message, once per message (the listener writes it into the blob), and a message relayed
 * onward does not carry it: the outbound path reads the blob without it. Checked with real
 * clients: swaks sends, curl reads the message back over POP3, and aiosmtpd (the scripted remote
 * MX) shows what the outbound client put on the wire.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startApp, type App } from '../../containers/app.js';
import { Accounts } from '../../core/accounts/accounts.js';
import { loadConfig } from '../../core/config.js';
import { silentLogger } from '../../core/log.js';
import { createOutboundJob } from '../../core/mail/outbound.js';
import { returnPathLine, withoutReturnPath } from '../../core/mail/return-path.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { startDnsServer, type TestDnsServer } from '../support/dns-server.js';
import { tempDir } from '../support/tmp.js';
import { drain, openEnv, queueMessage, sampleMessage, startRemote, type RemoteMx, type TestEnv } from '../outbound/harness.js';

const run = promisify(execFile);

async function collect(r: Readable): Promise<string> {
  const parts: Buffer[] = [];
  for await (const c of r) parts.push(c as Buffer);
  return Buffer.concat(parts).toString('latin1');
}

/** `text` cut into chunks of `size` octets. */
function chunked(text: string, size: number): Readable {
  const b = Buffer.from(text, 'latin1');
  const parts: Buffer[] = [];
  for (let i = 0; i < b.length; i += size) parts.push(b.subarray(i, i + size));
  return Readable.from(parts);
}

describe('withoutReturnPath', () => {
  const rest = 'Received: from x\r\n\tby y; Thu, 26 Nov 2026 07:00:00 +0000\r\nReturn-Path: <keep@me>\r\nSubject: s\r\n\r\nbody\r\n';
  it('drops exactly one leading Return-Path line at every chunk size', async () => {
    for (let size = 1; size <= 80; size++) {
      expect(await collect(withoutReturnPath(chunked(returnPathLine('a@b.example') + rest, size)))).toBe(rest);
      expect(await collect(withoutReturnPath(chunked(returnPathLine('') + rest, size)))).toBe(rest);
    }
  });
  it('leaves a message without one untouched, however short', async () => {
    for (const text of [rest, 'Subject: x\r\n\r\n', 'x', 'Return-Path: <no line end>']) {
      for (const size of [1, 3, 1000]) expect(await collect(withoutReturnPath(chunked(text, size)))).toBe(text);
    }
  });
});

describe('final delivery: Return-Path at the top, read back over POP3 with curl', () => {
  let dir: { path: string; remove: () => Promise<void> };
  let app: App;
  let smtpPort: number;
  let pop3Port: number;

  beforeAll(async () => {
    dir = await tempDir('tomlinson-return-path-');
    const config = loadConfig({
      TOMLINSON_DATA_DIR: dir.path,
      TOMLINSON_HOSTNAME: 'mx.tomlinson.test',
      TOMLINSON_SMTP_PORT: '0',
      TOMLINSON_SUBMISSION_PORT: '0',
      TOMLINSON_SUBMISSIONS_PORT: '0',
      TOMLINSON_POP3_PORT: '0',
      TOMLINSON_POP3S_PORT: '0',
      TOMLINSON_IMAP_PORT: '0',
      TOMLINSON_IMAPS_PORT: '0',
      TOMLINSON_WEB_PORT: '0',
      TOMLINSON_SMTP_CHECK_AUTH: 'false',
      TOMLINSON_HEALTH_PORT: '0',
      TOMLINSON_LOG_LEVEL: 'silent',
    });
    app = await startApp(config, ['smtp', 'pop3', 'workers'], silentLogger);
    const accounts = new Accounts(app.storage.tables, { scrypt: { ln: 4, r: 8, p: 1 } });
    await accounts.addDomain('example.test');
    await accounts.addUser('carol@example.test', 'carol-password-1');
    const port = (name: string) => Number(/:(\d+)$/.exec(app.listeners.find((l) => l.name === name)!.addresses[0])![1]);
    smtpPort = port('smtp');
    pop3Port = port('pop3');
  });
  afterAll(async () => {
    await app?.close(1000);
    await dir?.remove();
  });

  it('the sender of MAIL FROM, then the null sender <>, each once at the very top', { timeout: 40_000 }, async () => {
    const store = new MailboxStore(app.storage.tables, app.storage.mail);
    for (const from of ['sender@remote.example', '']) {
      // swaks spells the null sender '<>' (an empty argument would make it prompt).
      await run('swaks', [
        '--server',
        '127.0.0.1',
        '--port',
        String(smtpPort),
        '--from',
        from || '<>',
        '--to',
        'carol@example.test',
        '--header',
        `Subject: from <${from}>`,
        '--timeout',
        '10',
      ]);
    }
    const deadline = Date.now() + 10_000;
    while ((await store.list('carol@example.test')).length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    // The inbound worker may deliver the two in either order: match each by its Subject.
    const read: string[] = [];
    for (const n of [1, 2]) {
      const { stdout } = await run('curl', ['-s', '--max-time', '10', '-u', 'carol@example.test:carol-password-1', `pop3://127.0.0.1:${pop3Port}/${n}`]);
      read.push(stdout);
    }
    for (const from of ['sender@remote.example', '']) {
      const stdout = read.find((m) => m.includes(`Subject: from <${from}>`));
      expect(stdout, `the message from <${from}>`).toBeDefined();
      expect(stdout!.startsWith(`Return-Path: <${from}>\r\nReceived: from `)).toBe(true);
      expect(stdout!.match(/^Return-Path:/gim)).toHaveLength(1);
    }
  });
});

describe('relaying: the message goes out without our Return-Path', () => {
  let dns: TestDnsServer;
  let remote: RemoteMx;
  let env: TestEnv;
  beforeAll(async () => {
    dns = await startDnsServer({ 'remote.test': { MX: [{ priority: 10, exchange: 'mx1.remote.test' }] }, 'mx1.remote.test': { A: ['127.0.0.1'] } });
    remote = await startRemote();
    env = await openEnv({ TOMLINSON_DNS_SERVERS: dns.address, TOMLINSON_OUTBOUND_MX_PORT: String(remote.port) });
  });
  afterAll(async () => {
    await env?.close();
    await remote?.close();
    await dns?.close();
  });

  it('strips the line the listener stored and sends the rest byte for byte', async () => {
    const raw = sampleMessage('alice@local.test', 'bob@remote.test', 'Relayed');
    // As the listener stores an accepted message: Return-Path first, then Received.
    const stored =
      returnPathLine('alice@local.test') + 'Received: from client.test ([127.0.0.1])\r\n\tby mx.tomlinson.test; Thu, 26 Nov 2026 07:00:00 +0000\r\n' + raw;
    await queueMessage(env, { id: 'rp-1', from: 'alice@local.test', rcpts: [{ address: 'bob@remote.test' }] }, stored);
    await drain(env, 'outbound', createOutboundJob());
    const got = remote.events.find((e) => e.event === 'message');
    expect(got?.file).toBeTruthy();
    const wire = await readFile(got!.file!, 'latin1');
    expect(wire).not.toMatch(/^Return-Path:/im);
    expect(wire.endsWith(stored.slice(returnPathLine('alice@local.test').length))).toBe(true);
  });
});
