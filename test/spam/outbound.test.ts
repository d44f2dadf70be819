/**
 * The outbound scan (issue 24, "Outbound"): what authenticated users send on the submission ports
 * is scanned by Debian's rspamd (test/support/rspamd.ts), told the user. GTUBE is refused with
 * 550 5.7.1 and nothing is queued; a clean message goes out without X-Spam-* fields; a large
 * message is scanned from its stored blob, which a refusal removes; a refusal does not use up the
 * hourly allowance; rspamd gone means mail still goes out. Real clients: swaks and Python's smtplib.
 */
import { execFile } from 'node:child_process';
import { PassThrough } from 'node:stream';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../core/log.js';
import { sentThisHour } from '../../core/mail/send-limit.js';
import { ALICE, BOB, drainInbound, PASSWORD, startHarness, storedMessage, type Harness } from '../smtp/harness.js';
import { startRspamd, type Rspamd } from '../support/rspamd.js';

const run = promisify(execFile);

const GTUBE = 'XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X';

function message(subject: string, body: string): string {
  return [
    `From: Alice <${ALICE}>`,
    'To: <friend@remote.example>',
    `Subject: ${subject}`,
    `Message-ID: <${Math.random().toString(36).slice(2)}@example.test>`,
    'Date: Mon, 07 Dec 2026 10:00:00 +0000',
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=us-ascii',
    '',
    body,
    '',
  ].join('\r\n');
}

type Logged = { msg: string; [k: string]: unknown };

describe('outbound spam scanning of submitted mail with rspamd', () => {
  let rspamd: Rspamd;
  let h: Harness;
  const logged: Logged[] = [];

  beforeAll(async () => {
    rspamd = await startRspamd({
      local: {
        'multimap.conf': `TEST_SOFT_REJECT { type = "header"; header = "Subject"; regexp = true; map = "\${LOCAL_CONFDIR}/local.d/soft-subjects.map"; action = "soft reject"; message = "Deferred by test, try again later"; }\n`,
        'soft-subjects.map': '/please defer me/i\n',
      },
    });
    const sink = new PassThrough();
    sink.on('data', (d: Buffer) => {
      for (const line of d.toString('utf8').split('\n').filter(Boolean)) logged.push(JSON.parse(line) as Logged);
    });
    h = await startHarness(
      { TOMLINSON_SPAM: 'on', TOMLINSON_SPAM_URL: rspamd.url, TOMLINSON_SMTP_MAX_RECIPIENTS_PER_USER_HOUR: '10' },
      { inlineBytes: 4096, log: createLogger({ level: 'info', pretty: false, destination: sink }) },
    );
  });

  afterAll(async () => {
    await h?.close();
    await rspamd?.stop();
  });

  /** swaks on the implicit-TLS submission port, logged in as Alice; exit code and transcript
   * (over TLS it marks replies `<~` and refusals `<~*`). */
  async function swaks(body: string, to: string[] = ['friend@remote.example']): Promise<{ code: number; out: string }> {
    const args = [
      '--server',
      '127.0.0.1',
      '--port',
      String(h.server.ports.submissions),
      '--tlsc',
      '--auth',
      'PLAIN',
      '--auth-user',
      ALICE,
      '--auth-password',
      PASSWORD,
      '--from',
      ALICE,
      '--to',
      to.join(','),
      '--data',
      '-',
    ];
    return new Promise((resolve) => {
      const child = execFile('swaks', args, { timeout: 30_000 }, (err, stdout, stderr) => {
        resolve({ code: err ? ((err as { code?: number }).code ?? -1) : 0, out: stdout + stderr });
      });
      child.stdin!.end(body);
    });
  }

  async function outboundScans(result: string): Promise<number> {
    return (await h.metrics.spamOutboundScans.get()).values.find((v) => v.labels.result === result)?.value ?? 0;
  }

  it('refuses GTUBE from a logged-in user with 550 5.7.1; nothing is queued and the allowance is not used', async () => {
    const r = await swaks(message('test', GTUBE), ['friend@remote.example', BOB]);
    expect(r.code).not.toBe(0);
    expect(r.out).toMatch(/<~\* 550 5\.7\.1 Message rejected as spam: Gtube pattern; it was not sent/);
    expect(await drainInbound(h.storage)).toEqual([]);
    expect(await outboundScans('reject')).toBe(1);
    // Counted apart from MX mail.
    expect((await h.metrics.spamScans.get()).values).toEqual([]);
    expect(await sentThisHour(h.storage.tables, ALICE)).toBe(0);
    expect(logged.find((l) => l.msg === `outbound message from ${ALICE} rejected as spam`)).toMatchObject({ user: ALICE, from: ALICE });
    expect((await h.metrics.smtpRefusals.get()).values.find((v) => v.labels.reason === 'outbound_spam')?.value).toBe(1);
  });

  it("sends a clean message (Python's smtplib, STARTTLS on 587) unmarked, counting its recipients", async () => {
    const script = `
import smtplib, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=30)
s.starttls(context=ctx)
s.login(sys.argv[2], sys.argv[3])
print('refused', s.sendmail(sys.argv[2], ['friend@remote.example', sys.argv[4]], sys.stdin.read().encode()))
s.quit()
`;
    const msg = message('Lunch on Thursday', 'Shall we meet at noon by the fountain?');
    const child = run('python3', ['-c', script, String(h.server.ports.submission), ALICE, PASSWORD, BOB], { timeout: 30_000 });
    child.child.stdin!.end(msg);
    const { stdout } = await child;
    expect(stdout).toContain('refused {}');
    const [job] = await drainInbound(h.storage);
    expect(job.client.authUser).toBe(ALICE);
    expect(job.spam).toBeUndefined();
    const stored = (await storedMessage(h.storage, job)).toString('utf8');
    expect(stored).not.toContain('X-Spam-');
    expect(stored.endsWith(msg)).toBe(true);
    expect(await outboundScans('no_action')).toBe(1);
    expect(await sentThisHour(h.storage.tables, ALICE)).toBe(2);
  });

  it("answers rspamd's soft reject of a large message (scanned from its blob) with 451 4.7.1 and removes the blob", async () => {
    const filler = Array.from({ length: 400 }, (_, i) => `line ${i} of a long report, nothing to see here`).join('\r\n');
    const big = message('Please defer me', filler);
    expect(big.length).toBeGreaterThan(4096 * 3);
    const before = (await h.storage.mail.list('in/')).items.length;
    const r = await swaks(big);
    expect(r.out).toMatch(/<~\* 451 4\.7\.1 Deferred by test, try again later/);
    expect(await drainInbound(h.storage)).toEqual([]);
    expect((await h.storage.mail.list('in/')).items.length).toBe(before);
    expect(await sentThisHour(h.storage.tables, ALICE)).toBe(2);
  });

  it('sends unscanned when rspamd is gone, with a log line', async () => {
    await rspamd.kill();
    const r = await swaks(message('still going', GTUBE));
    expect(r.out).toMatch(/<~ {2}250 2\.0\.0 /);
    const [job] = await drainInbound(h.storage);
    expect(logged.find((l) => l.id === job.id && l.msg.startsWith('outbound spam scan skipped'))).toMatchObject({ reason: 'unavailable', user: ALICE });
    expect(await outboundScans('skipped')).toBe(1);
  });
});
