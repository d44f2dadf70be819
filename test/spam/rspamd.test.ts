/**
 * Spam scanning at the end of DATA on the MX listener, against Debian's rspamd started by the test
 * (test/support/rspamd.ts) with the shipped local settings: GTUBE is refused with 550 5.7.1, the
 * add-header test pattern is accepted and filed into Junk, a clean message gets
 * `X-Spam-Status: No`, a soft reject is 451 4.7.1, submission mail is never marked, and mail keeps
 * flowing (with `X-Spam-Status: Unknown`) once rspamd is gone.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inboundJob } from '../../core/mail/inbound.js';
import type { InboundJob } from '../../core/mail/jobs.js';
import { isSkipped, RspamdClient, type SpamVerdict } from '../../core/mail/spam.js';
import { spamStats } from '../../core/mail/spam-stats.js';
import { INBOX } from '../../core/mailbox/keys.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { PassThrough } from 'node:stream';
import { createLogger, silentLogger } from '../../core/log.js';
import { ALICE, drainInbound, PASSWORD, startHarness, storedMessage, TestClient, type Harness } from '../smtp/harness.js';
import { startRspamd, type Rspamd } from '../support/rspamd.js';

const GTUBE = 'XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X';
/** rspamd's "add header" test pattern (on only with enable_test_patterns, as in this test). */
const GTUBE_ADD_HEADER = 'YJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X';

function message(subject: string, body: string): string {
  return [
    'From: Sender <sender@remote.example>',
    `To: <${ALICE}>`,
    `Subject: ${subject}`,
    `Message-ID: <${Math.random().toString(36).slice(2)}@remote.example>`,
    'Date: Mon, 07 Dec 2026 10:00:00 +0000',
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=us-ascii',
    '',
    body,
    '',
  ].join('\r\n');
}

/** One MX transaction; the reply to the end of DATA. */
async function sendMx(h: Harness, msg: string): Promise<{ code: number; enhanced?: string; text: string; ms: number }> {
  const c = await TestClient.connect(h.server.ports.mx!);
  try {
    expect((await c.reply()).code).toBe(220);
    expect((await c.cmd('EHLO mail.remote.example')).code).toBe(250);
    expect((await c.cmd('MAIL FROM:<sender@remote.example>')).code).toBe(250);
    expect((await c.cmd(`RCPT TO:<${ALICE}>`)).code).toBe(250);
    expect((await c.cmd('DATA')).code).toBe(354);
    const started = performance.now();
    const r = await c.cmd(msg.replace(/^\./gm, '..') + '.', 30_000);
    const ms = performance.now() - started;
    await c.cmd('QUIT').catch(() => undefined);
    return { code: r.code, enhanced: r.enhanced, text: r.lines.join(' '), ms };
  } finally {
    c.close();
  }
}

async function counter(h: Harness, result: string): Promise<number> {
  const m = await h.metrics.spamScans.get();
  return m.values.find((v) => v.labels.result === result)?.value ?? 0;
}

describe('MX spam scanning with rspamd', () => {
  let rspamd: Rspamd;
  let h: Harness;
  const latencies: number[] = [];
  /** The listener's log lines (JSON). */
  const logged: { msg: string; [k: string]: unknown }[] = [];

  beforeAll(async () => {
    rspamd = await startRspamd({
      testPatterns: true,
      local: {
        // A rule of this test only: a subject asking for it gets rspamd's soft reject.
        'multimap.conf': `TEST_SOFT_REJECT { type = "header"; header = "Subject"; regexp = true; map = "\${LOCAL_CONFDIR}/local.d/soft-subjects.map"; action = "soft reject"; message = "Greylisted by test, try again later"; }\n`,
        'soft-subjects.map': '/please defer me/i\n',
      },
    });
    // Small messages inline, larger ones through the spool: both paths are scanned.
    const sink = new PassThrough();
    sink.on('data', (d: Buffer) => {
      for (const line of d.toString('utf8').split('\n').filter(Boolean)) logged.push(JSON.parse(line));
    });
    const log = createLogger({ level: 'info', pretty: false, destination: sink });
    h = await startHarness({ TOMLINSON_SPAM: 'on', TOMLINSON_SPAM_URL: rspamd.url, TOMLINSON_SPAM_TIMEOUT_MS: '5000' }, { inlineBytes: 4096, log });
    expect(logged.map((l) => l.msg)).toContain('SMTP listening (spam scanning on)');
  });

  afterAll(async () => {
    await h?.close();
    await rspamd?.stop();
  });

  it('refuses GTUBE with 550 5.7.1 and rspamd\u2019s text, and queues nothing', async () => {
    const r = await sendMx(h, message('test', GTUBE));
    expect(r.code).toBe(550);
    expect(r.enhanced).toBe('5.7.1');
    expect(r.text).toContain('Gtube pattern');
    expect(await drainInbound(h.storage)).toEqual([]);
    expect(await counter(h, 'reject')).toBe(1);
  });

  it('accepts a clean message with X-Spam-Status: No on top and the original bytes intact below', async () => {
    const msg = message('Lunch on Thursday', 'Shall we meet at noon by the fountain?');
    for (let i = 0; i < 5; i++) {
      const r = await sendMx(h, msg);
      expect(r.code).toBe(250);
      latencies.push(r.ms);
    }
    const jobs = await drainInbound(h.storage);
    expect(jobs).toHaveLength(5);
    const job = jobs[0];
    expect(job.spam && !isSkipped(job.spam) && job.spam.action).toBe('no action');
    const stored = (await storedMessage(h.storage, job)).toString('utf8');
    expect(stored).toMatch(/\r\nX-Spam-Status: No, score=-?\d+\.\d\d required=15\.00\r\n/);
    // Prepended only: the message as sent follows our header block unchanged (DKIM stays valid).
    expect(stored.endsWith(msg)).toBe(true);
    expect(stored.indexOf('X-Spam-Status')).toBeLessThan(stored.indexOf('From: Sender'));
    latencies.sort((a, b) => a - b);
    console.log(`end-of-DATA reply with an rspamd scan, p50 ${latencies[2].toFixed(1)} ms over 5 clean messages`);
  });

  it('accepts rspamd\u2019s "add header" verdict and files it into Junk, not INBOX, once however often the job runs', async () => {
    const r = await sendMx(h, message('Cheap watches', GTUBE_ADD_HEADER));
    expect(r.code).toBe(250);
    const [job] = await drainInbound(h.storage);
    expect(job.spam).toMatchObject({ action: 'add header' });
    const stored = (await storedMessage(h.storage, job)).toString('utf8');
    expect(stored).toMatch(/\r\nX-Spam-Status: Yes, score=6\.00 required=15\.00 action=add_header\r\n/);
    expect(stored).toMatch(/\r\nX-Spam-Symbols: GTUBE\(0\.00\)\r\n/);
    await deliver(job);
    await deliver(job); // a redelivery of the same job files nothing new
    const store = new MailboxStore(h.storage.tables, h.storage.mail);
    const junk = await store.folders.ensureSpecialUse(ALICE, '\\Junk');
    expect(junk.name).toBe('Junk');
    const inJunk = (await store.folders.messages(ALICE, junk.id)).items;
    expect(inJunk).toHaveLength(1);
    expect(inJunk[0].blobKey).toBe(job.blobKey);
    expect((await store.folders.messages(ALICE, INBOX)).items.filter((m) => m.blobKey === job.blobKey)).toEqual([]);
  });

  it('scans a message larger than the inline limit from the spool, with the header in the stored blob', async () => {
    // rspamd looks for GTUBE in small text parts only: the size is in an attachment.
    const attachment = Buffer.alloc(15_000, 'report data ').toString('base64').replace(/.{76}/g, '$&\r\n');
    const big = [
      'From: Sender <sender@remote.example>',
      `To: <${ALICE}>`,
      'Subject: Newsletter',
      'Message-ID: <big-1@remote.example>',
      'Date: Mon, 07 Dec 2026 10:00:00 +0000',
      'MIME-Version: 1.0',
      'Content-Type: multipart/mixed; boundary="b1"',
      '',
      '--b1',
      'Content-Type: text/plain; charset=us-ascii',
      '',
      GTUBE_ADD_HEADER,
      '--b1',
      'Content-Type: application/octet-stream; name="report.bin"',
      'Content-Transfer-Encoding: base64',
      '',
      attachment,
      '--b1--',
      '',
    ].join('\r\n');
    expect(big.length).toBeGreaterThan(4096 * 4);
    const r = await sendMx(h, big);
    expect(r.code).toBe(250);
    const [job] = await drainInbound(h.storage);
    expect(job.raw).toBeUndefined();
    expect(job.spam).toMatchObject({ action: 'add header' });
    const stored = (await storedMessage(h.storage, job)).toString('utf8');
    expect(stored).toContain('X-Spam-Status: Yes, score=6.00');
    expect(stored.endsWith(big)).toBe(true);
    // No spool copy is left behind.
    expect((await h.storage.mail.list('spool/')).items).toEqual([]);
  });

  it('answers rspamd\u2019s soft reject with 451 4.7.1 and its text', async () => {
    const r = await sendMx(h, message('Please defer me', 'Some text.'));
    expect(r.code).toBe(451);
    expect(r.enhanced).toBe('4.7.1');
    expect(r.text).toContain('Greylisted by test');
    expect(await drainInbound(h.storage)).toEqual([]);
  });

  // What submission does with rspamd's verdict (refusals only) is test/spam/outbound.test.ts.
  it('never marks submission mail: no X-Spam-* fields and no verdict for the inbound worker to file by', async () => {
    const c = await TestClient.connect(h.server.ports.submissions!, { tls: true });
    try {
      expect((await c.reply()).code).toBe(220);
      expect((await c.cmd('EHLO client.example')).code).toBe(250);
      expect((await c.cmd(`AUTH PLAIN ${Buffer.from(`\0${ALICE}\0${PASSWORD}`).toString('base64')}`)).code).toBe(235);
      expect((await c.cmd(`MAIL FROM:<${ALICE}>`)).code).toBe(250);
      expect((await c.cmd(`RCPT TO:<${ALICE}>`)).code).toBe(250);
      expect((await c.cmd('DATA')).code).toBe(354);
      expect((await c.cmd(message('note to self', GTUBE_ADD_HEADER) + '.')).code).toBe(250);
    } finally {
      c.close();
    }
    const [job] = await drainInbound(h.storage);
    expect(job.spam).toBeUndefined();
    expect((await storedMessage(h.storage, job)).toString('utf8')).not.toContain('X-Spam-Status');
  });

  it('passes our SPF/DKIM/DMARC results to rspamd, which scores them as its own symbols without looking them up', async () => {
    const client = new RspamdClient({ url: rspamd.url });
    try {
      const r = await client.scan(Buffer.from(message('hello', 'Hi.')), {
        from: 'sender@remote.example',
        rcpts: [ALICE],
        ip: '192.0.2.7',
        helo: 'mail.remote.example',
        queueId: 'q1',
        auth: { spf: 'pass', dkim: 'fail', dmarc: 'fail' },
      });
      expect(isSkipped(r)).toBe(false);
      const names = (r as SpamVerdict).symbols.map((s) => s.replace(/\(.*$/, ''));
      expect(names).toEqual(expect.arrayContaining(['R_SPF_ALLOW', 'R_DKIM_REJECT', 'DMARC_POLICY_SOFTFAIL']));
    } finally {
      await client.close();
    }
  });

  it('keeps accepting mail when rspamd stops mid-run: X-Spam-Status: Unknown, a log line, and the skipped counter', async () => {
    const before = await counter(h, 'skipped');
    await rspamd.kill();
    const r = await sendMx(h, message('Still flowing', 'rspamd is down.'));
    expect(r.code).toBe(250);
    const [job] = await drainInbound(h.storage);
    expect(job.spam).toMatchObject({ skipped: 'unavailable' });
    const stored = (await storedMessage(h.storage, job)).toString('utf8');
    expect(stored).toContain('\r\nX-Spam-Status: Unknown (scan skipped: unavailable)\r\n');
    expect(await counter(h, 'skipped')).toBe(before + 1);
    expect(logged.find((l) => l.id === job.id && l.msg.startsWith('spam scan skipped'))).toMatchObject({ reason: 'unavailable' });
    expect(await h.metrics.text()).toMatch(/tomlinson_spam_scans_total\{result="skipped"\} \d/);
    // The unscanned message is delivered to INBOX.
    await deliver(job);
    const store = new MailboxStore(h.storage.tables, h.storage.mail);
    expect((await store.folders.messages(ALICE, INBOX)).items.some((m) => m.blobKey === job.blobKey)).toBe(true);
  });

  it('keeps the daily counters of `spam stats` in Tables, agreeing with the per-process metric', async () => {
    const want = {
      scanned: (await Promise.all(['reject', 'soft_reject', 'greylist', 'add_header', 'rewrite_subject', 'no_action'].map((r) => counter(h, r)))).reduce(
        (a, b) => a + b,
      ),
      rejected: await counter(h, 'reject'),
      deferred: (await counter(h, 'soft_reject')) + (await counter(h, 'greylist')),
      skipped: await counter(h, 'skipped'),
    };
    expect(want.rejected).toBeGreaterThan(0);
    expect(want.skipped).toBeGreaterThan(0);
    // Written off the reply's path: give the last one a moment.
    let today: Record<string, unknown> | undefined;
    for (let i = 0; i < 40; i++) {
      [today] = await spamStats(h.storage.tables);
      if (today && Number(today.skipped) >= want.skipped && Number(today.scanned) >= want.scanned) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(today).toMatchObject(want);
  });

  async function deliver(job: InboundJob): Promise<void> {
    const ctx = { config: h.config, storage: h.storage, log: silentLogger, now: () => new Date() };
    expect(await inboundJob(JSON.stringify(job), { queue: 'inbound', id: job.id, receiveCount: 1, sentAt: new Date() }, ctx)).toEqual({ kind: 'done' });
  }
});
