/**
 * Interoperability with third-party clients over real sockets: swaks, Python's smtplib (STARTTLS
 * and AUTH), curl smtp:// and smtps://, and nodemailer; 8-bit, SMTPUTF8 and a 40 MB message. Each
 * test checks what reached storage, byte for byte after our added header.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import nodemailer from 'nodemailer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InboundJob } from '../../core/mail/jobs.js';
import { deliverTransaction } from '../../core/mail/smtp-client.js';
import { Readable } from 'node:stream';
import { ALICE, BOB, drainInbound, PASSWORD, startHarness, storedMessage, type Harness } from './harness.js';

const run = promisify(execFile);

/** The stored blob split into our Received header and the rest. */
async function stored(h: Harness, job: InboundJob): Promise<{ received: string; rest: Buffer }> {
  const whole = await storedMessage(h.storage, job);
  // RFC 5321 §4.4: the reverse-path comes first, as Return-Path.
  const returnPath = `Return-Path: <${job.from}>\r\n`;
  expect(whole.subarray(0, Buffer.byteLength(returnPath)).toString('utf8')).toBe(returnPath);
  const all = whole.subarray(Buffer.byteLength(returnPath));
  // Our Received header comes next: it ends at the first CRLF not followed by a tab.
  let end = 0;
  for (;;) {
    end = all.indexOf('\r\n', end) + 2;
    if (all[end] !== 0x09) break;
  }
  return { received: all.subarray(0, end).toString('utf8'), rest: all.subarray(end) };
}

async function oneJob(h: Harness): Promise<InboundJob> {
  const jobs = await drainInbound(h.storage);
  expect(jobs).toHaveLength(1);
  return jobs[0];
}

describe('third-party SMTP clients', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => h?.close());

  it('swaks on the MX port, with PIPELINING', async () => {
    const { stdout } = await run('swaks', [
      '--server',
      '127.0.0.1',
      '--port',
      String(h.server.ports.mx),
      '--helo',
      'client.test',
      '--from',
      'sender@remote.example',
      '--to',
      ALICE,
      '--header',
      'Subject: swaks test',
      '--body',
      'hello from swaks',
      '--pipeline',
      '--timeout',
      '10',
    ]);
    expect(stdout).toMatch(/<- +250 2\.0\.0 \S+/);
    const job = await oneJob(h);
    expect(job).toMatchObject({ from: 'sender@remote.example', rcpts: [{ address: ALICE }], listener: 'mx' });
    const { received, rest } = await stored(h, job);
    expect(received).toContain('with ESMTP id');
    expect(rest.toString()).toContain('Subject: swaks test');
    expect(rest.toString()).toContain('hello from swaks');
  });

  it('swaks with STARTTLS and AUTH LOGIN on the submission port', async () => {
    const { stdout } = await run('swaks', [
      '--server',
      '127.0.0.1',
      '--port',
      String(h.server.ports.submission),
      '--tls',
      '--auth',
      'LOGIN',
      '--auth-user',
      ALICE,
      '--auth-password',
      PASSWORD,
      '--from',
      ALICE,
      '--to',
      'friend@elsewhere.example',
      '--header',
      'Subject: relayed',
      '--body',
      'via submission',
      '--timeout',
      '10',
    ]);
    expect(stdout).toMatch(/<~ +235 2\.7\.0/);
    const job = await oneJob(h);
    expect(job.client.authUser).toBe(ALICE);
    expect(job.client.tls).toMatch(/^TLSv1\.[23]$/);
    expect((await stored(h, job)).received).toMatch(/with ESMTPSA id[\s\S]*\(version=TLSv1\.[23] cipher=[\s\S]*\(authenticated sender: alice@example\.test\)/);
  });

  it('swaks is refused when sending as someone else (553 5.7.1)', async () => {
    const r = await run('swaks', [
      '--server',
      '127.0.0.1',
      '--port',
      String(h.server.ports.submission),
      '--tls',
      '--auth',
      'PLAIN',
      '--auth-user',
      ALICE,
      '--auth-password',
      PASSWORD,
      '--from',
      BOB,
      '--to',
      'friend@elsewhere.example',
      '--timeout',
      '10',
    ]).catch((e: { stdout: string }) => e);
    expect(r.stdout).toMatch(/<[~*]+ +553 5\.7\.1/);
    expect(await drainInbound(h.storage)).toHaveLength(0);
  });

  it("Python's smtplib: STARTTLS, AUTH, an 8-bit body and an SMTPUTF8 envelope", async () => {
    const script = `
import smtplib, ssl, sys
port = int(sys.argv[1])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP('127.0.0.1', port, timeout=10)
s.ehlo('py.client')
s.starttls(context=ctx)
s.ehlo('py.client')
s.login(sys.argv[2], sys.argv[3])
msg = 'From: Alice <alice@example.test>\\r\\nTo: bob@example.test\\r\\nSubject: Gr\\u00fc\\u00dfe\\r\\nContent-Type: text/plain; charset=utf-8\\r\\nContent-Transfer-Encoding: 8bit\\r\\n\\r\\nStra\\u00dfe \\u00e4\\u00f6\\u00fc\\r\\n'.encode('utf-8')
r = s.sendmail('alice@example.test', ['bob@example.test', 'j\\u00fcrgen@b\\u00fccher.example'], msg, mail_options=['BODY=8BITMIME', 'SMTPUTF8'])
print('refused', r)
s.quit()
`;
    const { stdout } = await run('python3', ['-c', script, String(h.server.ports.submission), ALICE, PASSWORD]);
    expect(stdout).toContain('refused {}');
    const job = await oneJob(h);
    expect(job).toMatchObject({ smtputf8: true, body8bit: true, rcpts: [{ address: BOB }, { address: 'jürgen@bücher.example' }] });
    const { received, rest } = await stored(h, job);
    expect(received).toContain('with UTF8SMTPSA id');
    expect(rest.toString('utf8')).toContain('Straße äöü\r\n');
    expect(rest.toString('utf8')).toContain('Subject: Grüße\r\n');
  });

  it('curl smtp:// on the MX port and smtps:// with AUTH on the implicit-TLS port', async () => {
    const file = join(h.dataDir, 'curl.eml');
    const text = 'From: x@remote.example\r\nTo: alice@example.test\r\nSubject: curl\r\n\r\n.leading dot survives\r\nbye\r\n';
    await new Promise<void>((resolve, reject) => {
      const w = createWriteStream(file);
      w.end(text, () => resolve());
      w.on('error', reject);
    });
    await run('curl', [
      '-sS',
      '--max-time',
      '20',
      `smtp://127.0.0.1:${h.server.ports.mx}/client.test`,
      '--mail-from',
      'x@remote.example',
      '--mail-rcpt',
      ALICE,
      '--upload-file',
      file,
    ]);
    let job = await oneJob(h);
    expect((await stored(h, job)).rest.toString()).toBe(text);
    await run('curl', [
      '-sS',
      '-k',
      '--max-time',
      '20',
      `smtps://127.0.0.1:${h.server.ports.submissions}/client.test`,
      '--user',
      `${ALICE}:${PASSWORD}`,
      '--mail-from',
      ALICE,
      '--mail-rcpt',
      BOB,
      '--upload-file',
      file,
    ]);
    job = await oneJob(h);
    expect(job.client.authUser).toBe(ALICE);
    expect((await stored(h, job)).rest.toString()).toBe(text);
  });

  it('nodemailer with requireTLS and AUTH on the submission port', async () => {
    const transport = nodemailer.createTransport({
      host: '127.0.0.1',
      port: h.server.ports.submission,
      secure: false,
      requireTLS: true,
      auth: { user: BOB, pass: PASSWORD },
      tls: { rejectUnauthorized: false },
    });
    const info = await transport.sendMail({
      from: BOB,
      to: [ALICE, 'friend@elsewhere.example'],
      subject: 'nodemailer ✓',
      text: 'hello',
      attachments: [{ filename: 'a.txt', content: 'attached' }],
    });
    transport.close();
    expect(info.accepted).toEqual([ALICE, 'friend@elsewhere.example']);
    const job = await oneJob(h);
    expect(info.response).toBe(`250 2.0.0 ${job.id}`);
    expect(job.from).toBe(BOB);
  });

  it('the outbound SMTP client (core/mail/smtp-client.ts): STARTTLS, BDAT in many chunks, DSN parameters', async () => {
    const message = Buffer.from(
      'From: x@remote.example\r\nTo: alice@example.test\r\nSubject: chunked\r\n\r\n' + '.dots and bytes \u00e9\r\n'.repeat(2000),
      'utf8',
    );
    const r = await deliverTransaction({
      host: '127.0.0.1',
      port: h.server.ports.mx!,
      helo: 'client.test',
      tls: 'required',
      from: 'x@remote.example',
      rcpts: [{ address: ALICE, notify: ['SUCCESS', 'FAILURE'], orcpt: `rfc822;${ALICE}` }],
      dsn: { ret: 'HDRS', envid: 'env-1' },
      size: message.length,
      body8bit: true,
      message: async () => Readable.from([message]),
      chunkBytes: 4096,
    });
    expect(r.sessionFailure).toBeUndefined();
    expect(r.chunked).toBe(true);
    expect(r.tls).toBe(true);
    expect(r.rcpts.map((x) => x.ok)).toEqual([true]);
    const job = await oneJob(h);
    expect(job).toMatchObject({
      dsn: { ret: 'HDRS', envid: 'env-1' },
      rcpts: [{ address: ALICE, notify: ['SUCCESS', 'FAILURE'], orcpt: `rfc822;${ALICE}` }],
      body8bit: true,
    });
    const { received, rest } = await stored(h, job);
    expect(received).toContain('with ESMTPS id');
    expect(rest.equals(message)).toBe(true);
  });

  it('a 40 MB message over nodemailer arrives whole (streamed, checksum matches)', async () => {
    const big = Buffer.alloc(40 * 1024 * 1024, 'abcdefghij0123456789ABCDEFGHIJ0123456789abcdefghij0123456789ABCDEFGHIJ01234567\r\n'); // 80 octets a line
    const raw = Buffer.concat([Buffer.from('From: x@remote.example\r\nTo: alice@example.test\r\nSubject: big\r\n\r\n'), big]);
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: h.server.ports.mx, secure: false, ignoreTLS: true, socketTimeout: 60_000 });
    await transport.sendMail({ envelope: { from: 'x@remote.example', to: [ALICE] }, raw });
    transport.close();
    const job = await oneJob(h);
    const { rest } = await stored(h, job);
    expect(rest.length).toBe(raw.length);
    expect(createHash('sha256').update(rest).digest('hex')).toBe(createHash('sha256').update(raw).digest('hex'));
  });
});
