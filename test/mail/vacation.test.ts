/**
 * Vacation replies end to end on local storage: mail comes in through a real SMTP session
 * (python smtplib against our MX listener), the inbound worker delivers it and answers, the
 * outbound worker carries the answer to a remote MX (aiosmtpd, test/outbound/remote_mx.py) that
 * records what it got. RFC 3834 / RFC 5230 §4: one reply per sender per period; none to lists,
 * bulk mail, automatic mail, the null sender or when the user is no addressee.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { run as runCli } from '../../cli/main.js';
import { startSmtpServer, type RunningSmtp } from '../../containers/smtp/server.js';
import { Accounts } from '../../core/accounts/accounts.js';
import { silentLogger } from '../../core/log.js';
import { inboundJob } from '../../core/mail/inbound.js';
import { createOutboundJob } from '../../core/mail/outbound.js';
import { VacationStore } from '../../core/mail/vacation.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { Metrics } from '../../core/metrics.js';
import { startDnsServer, type TestDnsServer } from '../support/dns-server.js';
import { drain, openEnv, startRemote, type RemoteMx, type TestEnv } from '../outbound/harness.js';

let dns: TestDnsServer;
let remote: RemoteMx;
let env: TestEnv;
let smtp: RunningSmtp;

beforeAll(async () => {
  dns = await startDnsServer({ 'remote.test': { MX: [{ priority: 10, exchange: 'mx.remote.test' }] }, 'mx.remote.test': { A: ['127.0.0.1'] } });
  remote = await startRemote();
  env = await openEnv({
    TOMLINSON_SMTP_CHECK_AUTH: 'false',
    TOMLINSON_DNS_SERVERS: dns.address,
    TOMLINSON_OUTBOUND_MX_PORT: String(remote.port),
    TOMLINSON_OUTBOUND_TLS_VERIFY: 'never',
  });
  const accounts = new Accounts(env.storage.tables, { scrypt: { ln: 4, r: 8, p: 1 } });
  await accounts.addDomain('example.test');
  await accounts.addUser('alice@example.test', 'pw-alice-123456');
  await accounts.addUser('carol@example.test', 'pw-carol-123456');
  await accounts.addAlias('al@example.test', ['alice@example.test']);
  smtp = await startSmtpServer(
    { config: env.config, storage: env.storage, log: silentLogger, metrics: new Metrics({ defaults: false }) },
    { ports: { mx: 0, submission: 0, submissions: 0 } },
  );
});
afterAll(async () => {
  await smtp?.close(100);
  await env?.close();
  await remote?.close();
  await dns?.close();
});

/** Sends one message through a real SMTP session with python's smtplib (a child process, so
 * that this process's listener keeps answering). */
async function sendSmtp(from: string, to: string, headers: string[], body = 'Hello.'): Promise<void> {
  const message = [...headers, 'MIME-Version: 1.0', 'Content-Type: text/plain; charset=utf-8', '', body, ''].join('\r\n');
  const script = [
    'import smtplib, sys',
    'port, mail_from, rcpt = int(sys.argv[1]), sys.argv[2], sys.argv[3]',
    'data = sys.stdin.buffer.read()',
    's = smtplib.SMTP("127.0.0.1", port, timeout=10)',
    's.sendmail(mail_from, [rcpt], data)',
    's.quit()',
  ].join('\n');
  const child = spawn('/usr/bin/python3', ['-c', script, String(smtp.ports.mx), from, to], { stdio: ['pipe', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdin.end(message);
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  if (code !== 0) throw new Error(`smtplib failed: ${stderr}`);
}

let n = 0;
/** A message from bob at the remote domain to the given addressees. */
function mail(extra: string[] = [], to = 'alice@example.test', subject = `Plans ${++n}`): string[] {
  return [
    `From: Bob <bob@remote.test>`,
    `To: ${to}`,
    `Subject: ${subject}`,
    `Message-ID: <m${n}@remote.test>`,
    'Date: Sun, 01 Mar 2026 08:00:00 +0000',
    ...extra,
  ];
}

/** Works both queues until nothing is left, as the in-process workers would. */
async function work(): Promise<void> {
  for (let i = 0; i < 3; i++) {
    await drain(env, 'inbound', inboundJob);
    await drain(env, 'outbound', createOutboundJob());
  }
}

const replies = () => remote.events.filter((e) => e.event === 'message');

describe('vacation replies (RFC 3834, RFC 5230 §4)', () => {
  beforeEach(async () => {
    await new VacationStore(env.storage.tables).set('alice@example.test', {
      isEnabled: true,
      fromDate: null,
      toDate: null,
      subject: null,
      textBody: 'Back on Monday.',
      htmlBody: null,
    });
    remote.events.length = 0;
  });

  it('answers once per sender per period, from <> with Auto-Submitted, In-Reply-To and an "Auto:" subject', async () => {
    await sendSmtp('bob@remote.test', 'alice@example.test', mail(['References: <earlier@remote.test>'], 'Alice <alice@example.test>', 'Lunch?'));
    const firstId = `<m${n}@remote.test>`;
    await sendSmtp('bob@remote.test', 'alice@example.test', mail());
    await work();
    // Both messages were delivered; only one reply went out.
    expect(await new MailboxStore(env.storage.tables, env.storage.mail).list('alice@example.test')).toHaveLength(2);
    expect(replies()).toHaveLength(1);
    const [reply] = replies();
    expect(reply.mail_from).toBe('<>');
    expect(reply.rcpts).toEqual(['bob@remote.test']);
    const text = readFileSync(reply.file!, 'utf8');
    expect(text).toMatch(/^Auto-Submitted: auto-replied\r$/m);
    expect(text).toMatch(/^From: alice@example\.test\r$/m);
    expect(text).toMatch(/^To: bob@remote\.test\r$/m);
    expect(text).toMatch(/^Subject: Auto: Lunch\?\r$/m);
    expect(text).toContain(`In-Reply-To: ${firstId}`);
    expect(text).toContain(`References: <earlier@remote.test> ${firstId}`);
    expect(text).toContain('Back on Monday.');
    expect(text).not.toMatch(/^Return-Path:/m);

    // A week later the same sender is answered again (RFC 5230 §4.1 :days 7).
    env.clock.advance(7 * 86400 + 60);
    await sendSmtp('bob@remote.test', 'alice@example.test', mail());
    await work();
    expect(replies()).toHaveLength(2);
  });

  it('sends nothing to lists, bulk, automatic mail, the null sender, daemons, or when the user is no addressee', async () => {
    const cases: [string, string[]][] = [
      ['list@remote.test', mail(['List-Id: <team.remote.test>'])],
      ['news@remote.test', mail(['Precedence: bulk'])],
      ['robot@remote.test', mail(['Auto-Submitted: auto-replied'])],
      ['', mail()],
      ['MAILER-DAEMON@remote.test', mail()],
      ['team-request@remote.test', mail()],
      ['owner-team@remote.test', mail()],
      ['hidden@remote.test', mail([], 'someone@remote.test')],
    ];
    const inbox = () => new MailboxStore(env.storage.tables, env.storage.mail).list('alice@example.test');
    const before = (await inbox()).length;
    for (const [from, headers] of cases) await sendSmtp(from, 'alice@example.test', headers);
    await work();
    expect((await inbox()).length - before).toBe(cases.length);
    expect(replies()).toEqual([]);

    // Auto-Submitted: no is a person writing; an alias of the user in Cc counts as addressee.
    await sendSmtp('dora@remote.test', 'al@example.test', mail(['Auto-Submitted: no', 'Cc: al@example.test'], 'someone@remote.test'));
    await work();
    expect(replies().map((e) => e.rcpts)).toEqual([['dora@remote.test']]);
  });

  it('answers a local sender through the inbound queue, and never the user writing to themselves', async () => {
    await sendSmtp('alice@example.test', 'alice@example.test', mail([], 'alice@example.test'));
    await sendSmtp('carol@example.test', 'alice@example.test', [
      `From: carol@example.test`,
      'To: alice@example.test',
      'Subject: Hi',
      'Message-ID: <c1@example.test>',
    ]);
    await work();
    const carol = await new MailboxStore(env.storage.tables, env.storage.mail).list('carol@example.test');
    expect(carol).toHaveLength(1);
    const { body } = await env.storage.mail.get(carol[0].blobKey as string);
    let text = '';
    for await (const c of body) text += (c as Buffer).toString('utf8');
    expect(text).toMatch(/^Return-Path: <>\r\n/);
    expect(text).toContain('Subject: Auto: Hi');
    expect(replies()).toEqual([]);
  });

  it('is off outside fromDate/toDate and after `vacation off`; the CLI sets and shows it', async () => {
    const cli = async (...args: string[]): Promise<string> => {
      const out = new PassThrough();
      let stdout = '';
      out.on('data', (d: Buffer) => (stdout += d.toString()));
      const code = await runCli(['node', 'tomlinson', ...args], {
        env: { ...process.env, TOMLINSON_DATA_DIR: env.config.dataDir, TOMLINSON_LOG_LEVEL: 'silent' },
        stdout: out as unknown as NodeJS.WriteStream,
        stderr: new PassThrough() as unknown as NodeJS.WriteStream,
      });
      expect(code).toBe(0);
      return stdout;
    };
    const later = new Date(env.clock.ms + 86400_000).toISOString();
    expect(await cli('vacation', 'set', 'alice@example.test', '--subject', 'Away', '--from', later)).toContain(`from:    ${later}`);
    await sendSmtp('erin@remote.test', 'alice@example.test', mail());
    await work();
    expect(replies()).toEqual([]);

    env.clock.advance(86400 + 1);
    await sendSmtp('erin@remote.test', 'alice@example.test', mail());
    await work();
    expect(replies()).toHaveLength(1);
    expect(readFileSync(replies()[0].file!, 'utf8')).toMatch(/^Subject: Away\r$/m);

    expect(JSON.parse(await cli('--json', 'vacation', 'off', 'alice@example.test'))).toMatchObject({ isEnabled: false, subject: 'Away' });
    expect(await cli('vacation', 'show', 'alice@example.test')).toContain('off');
    await sendSmtp('fred@remote.test', 'alice@example.test', mail());
    await work();
    expect(replies()).toHaveLength(1);
  });
});
