/**
 * Greylisting end to end (issue 24): Debian's rspamd with its greylist module on, its records in a
 * private Redis (test/support/redis.ts), in front of our MX listener; and a real sending client
 * that retries a 4xx: our own outbound queue, in a second app with a short retry schedule. The
 * first attempt is answered 451 4.7.1 with rspamd's text, the retry after the greylist timeout is
 * accepted, and the message lands in the recipient's INBOX once. swaks, a client that does not
 * retry by itself, shows the 451 text as a sender sees it.
 *
 * The rspamd settings are this test's only, not the shipped ones (which leave greylisting off
 * because it needs Redis): the recipe the shipped local.d/actions.conf gives to turn it on
 * (greylist = 4 with local.d/greylist.conf pointing at a Redis), with a greylist timeout of 2 s
 * instead of 5 min, `check_local` because every client here is 127.0.0.1 (rspamd skips local
 * networks otherwise), and a multimap rule scoring a marked subject 5, inside [greylist 4,
 * add_header 6), so that the message is greylisted rather than junked or passed.
 */
import { execFile } from 'node:child_process';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningWorkers } from '../../containers/workers.js';
import { startWorkers } from '../../containers/workers.js';
import { createLogger } from '../../core/log.js';
import { OutboundStore, type RcptRecord } from '../../core/mail/outbound-store.js';
import { INBOX } from '../../core/mailbox/keys.js';
import { MailboxStore } from '../../core/mailbox/store.js';
import { ALICE, PASSWORD, startHarness, type Harness } from '../smtp/harness.js';
import { startDnsServer, type TestDnsServer } from '../support/dns-server.js';
import { startRedis, type Redis } from '../support/redis.js';
import { startRspamd, type Rspamd } from '../support/rspamd.js';

/** rspamd's greylist timeout here: a retry sooner is greylisted again, a later one passes. */
const GREY_SECONDS = 2;
/** The sender's wait before its second attempt (outbound.retrySchedule): past the timeout. */
const RETRY_SECONDS = 4;
const CAROL = 'carol@remote.test';
const DAVE = 'dave@remote.test';

/** The test's rspamd settings (local.d files; same names replace the shipped ones). */
function rspamdLocal(redis: Redis): Record<string, string> {
  return {
    'actions.conf': 'reject = 15;\nadd_header = 6;\ngreylist = 4;\n',
    'greylist.conf': [`servers = "${redis.address}";`, `timeout = ${GREY_SECONDS}s;`, 'check_local = true;', ''].join('\n'),
    'multimap.conf':
      'TEST_GREYLIST_RANGE { type = "header"; header = "Subject"; regexp = true; map = "${LOCAL_CONFDIR}/local.d/grey-subjects.map"; score = 5.0; }\n',
    'grey-subjects.map': '/grey range/i\n',
  };
}

function message(from: string, to: string, subject: string): string {
  return [
    `From: <${from}>`,
    `To: <${to}>`,
    `Subject: ${subject}`,
    `Message-ID: <${Math.random().toString(36).slice(2)}@example.test>`,
    'Date: Mon, 07 Dec 2026 10:00:00 +0000',
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=us-ascii',
    '',
    `Hello, this is ${subject}.`,
    '',
  ].join('\r\n');
}

/** swaks, with its transcript; `args` after the common ones. */
function swaks(args: string[], body: string): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const child = execFile('swaks', [...args, '--data', '-'], { timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? -1) : 0, out: stdout + stderr });
    });
    child.stdin!.end(body);
  });
}

/** Polls `f` until it returns a value, for at most `ms`. */
async function waitFor<T>(what: string, ms: number, f: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('greylisting with rspamd and Redis', () => {
  let redis: Redis;
  let rspamd: Rspamd;
  let dns: TestDnsServer;
  /** The receiving side: MX listener scanning with rspamd, and its workers filing into mailboxes. */
  let rx: Harness;
  let rxWorkers: RunningWorkers;
  /** The sending side: submission, and the outbound queue delivering to rx's MX port. */
  let tx: Harness;
  let txWorkers: RunningWorkers;
  const rxLog: { msg: string; [k: string]: unknown }[] = [];

  beforeAll(async () => {
    redis = await startRedis();
    rspamd = await startRspamd({ local: rspamdLocal(redis) });
    dns = await startDnsServer({ 'remote.test': { MX: [{ priority: 10, exchange: 'mx.remote.test' }] }, 'mx.remote.test': { A: ['127.0.0.1'] } });

    const sink = new PassThrough();
    sink.on('data', (d: Buffer) => {
      for (const line of d.toString('utf8').split('\n').filter(Boolean)) rxLog.push(JSON.parse(line));
    });
    const log = createLogger({ level: 'info', pretty: false, destination: sink });
    rx = await startHarness(
      { TOMLINSON_HOSTNAME: 'mx.remote.test', TOMLINSON_SPAM: 'on', TOMLINSON_SPAM_URL: rspamd.url, TOMLINSON_SPAM_TIMEOUT_MS: '5000' },
      { log },
    );
    await rx.accounts.addDomain('remote.test');
    await rx.accounts.addUser(CAROL, PASSWORD);
    await rx.accounts.addUser(DAVE, PASSWORD);
    rxWorkers = await startWorkers({ config: rx.config, storage: rx.storage, log, metrics: rx.metrics });

    tx = await startHarness({
      TOMLINSON_HOSTNAME: 'mail.example.test',
      TOMLINSON_DNS_SERVERS: dns.address,
      TOMLINSON_OUTBOUND_MX_PORT: String(rx.server.ports.mx),
      TOMLINSON_OUTBOUND_RETRY_SCHEDULE: String(RETRY_SECONDS),
    });
    txWorkers = await startWorkers({ config: tx.config, storage: tx.storage, log: createLogger({ level: 'silent' }), metrics: tx.metrics });
  }, 200_000);

  afterAll(async () => {
    await txWorkers?.stop(2000);
    await rxWorkers?.stop(2000);
    await tx?.close();
    await rx?.close();
    await dns?.close();
    await rspamd?.stop();
    await redis?.stop();
  });

  async function scans(result: string): Promise<number> {
    return (await rx.metrics.spamScans.get()).values.find((v) => v.labels.result === result)?.value ?? 0;
  }

  it('our outbound queue is answered 451 4.7.1, retries after the greylist timeout, and the message lands in INBOX once', async () => {
    const subject = 'Grey range report';
    const raw = message(ALICE, CAROL, subject);
    // Alice submits on the sending app (a real client, logged in over implicit TLS).
    const sub = await swaks(
      [
        '--server',
        '127.0.0.1',
        '--port',
        String(tx.server.ports.submissions),
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
        CAROL,
      ],
      raw,
    );
    expect(sub.out).toMatch(/<~ {2}250 /);
    expect(sub.code).toBe(0);
    const started = Date.now();

    // The sending app's outbound record after the first attempt: deferred with rspamd's reply.
    const outbound = new OutboundStore(tx.storage.tables);
    const id = await waitFor('the outbound message', 20_000, async () => (await outbound.list()).ids[0]);
    const first = await waitFor<RcptRecord>('the first attempt', 20_000, async () => {
      const [r] = await outbound.getRecipients(id);
      return r && r.attempts >= 1 ? r : undefined;
    });
    expect(first).toMatchObject({ address: CAROL, state: 'deferred', attempts: 1, status: '4.7.1' });
    expect(first.lastReply).toMatch(/^451 4\.7\.1 Try again later/);
    expect(rxLog.some((l) => l.msg === 'spam check says try later; 451' && l.action === 'soft reject')).toBe(true);

    // The retry, RETRY_SECONDS later, is past the greylist timeout: accepted.
    const last = await waitFor<RcptRecord>('delivery on retry', 30_000, async () => {
      const [r] = await outbound.getRecipients(id);
      return r?.state === 'delivered' ? r : undefined;
    });
    expect(last.attempts).toBe(2);
    expect(last.lastReply).toMatch(/^250 /);
    expect(Date.now() - started).toBeGreaterThanOrEqual(GREY_SECONDS * 1000);
    // One greylisting, then rspamd's "greylist" action downgraded to "no action" for the retry.
    expect(await scans('soft_reject')).toBe(1);
    expect(await scans('no_action')).toBe(1);

    // Filed into Carol's INBOX (no action), once.
    const store = new MailboxStore(rx.storage.tables, rx.storage.mail);
    const items = await waitFor('the message in INBOX', 20_000, async () => {
      const got = (await store.folders.messages(CAROL, INBOX)).items;
      return got.length > 0 ? got : undefined;
    });
    expect(items).toHaveLength(1);
    const { body } = await rx.storage.mail.get(items[0].blobKey);
    const chunks: Buffer[] = [];
    for await (const c of body) chunks.push(c as Buffer);
    const stored = Buffer.concat(chunks).toString('utf8');
    // rspamd's score for it: in the greylist range [4, 6) (TEST_GREYLIST_RANGE's 5 and the small
    // scores of the usual symbols), and its action for the retry "no action".
    const score = Number(/\r\nX-Spam-Status: No, score=(-?\d+\.\d\d) required=15\.00\r\n/.exec(stored)?.[1]);
    expect(score).toBeGreaterThanOrEqual(4);
    expect(score).toBeLessThan(6);
    // What Alice submitted, under the two Received fields and the X-Spam-Status (swaks may end it
    // with one more CRLF of its own).
    expect(stored).toContain(raw);
  });

  it('swaks, which does not retry by itself, sees 451 4.7.1 with rspamd\u2019s text, then 250 when sent again after the timeout', async () => {
    const raw = message('sender@elsewhere.test', DAVE, 'Grey range note');
    const args = [
      '--server',
      '127.0.0.1',
      '--port',
      String(rx.server.ports.mx),
      '--ehlo',
      'mail.elsewhere.test',
      '--from',
      'sender@elsewhere.test',
      '--to',
      DAVE,
    ];
    const first = await swaks(args, raw);
    expect(first.code).not.toBe(0);
    expect(first.out).toMatch(/<\*\* 451 4\.7\.1 Try again later\r?\n/);
    // Too early: the same message sent again at once is greylisted again.
    const early = await swaks(args, raw);
    expect(early.out).toMatch(/<\*\* 451 4\.7\.1 Try again later\r?\n/);
    await new Promise((r) => setTimeout(r, (GREY_SECONDS + 1) * 1000));
    const again = await swaks(args, raw);
    expect(again.out).toMatch(/<- {2}250 /);
    expect(again.code).toBe(0);
  });
});
