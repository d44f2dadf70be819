/**
 * The MX listener's spam scan against stand-ins for rspamd (small HTTP servers of our own) where
 * the real one cannot be made to misbehave on cue: a slow scanner must not hold the session past
 * spam.timeoutMs, an erroring one must not stop mail, greylisting (which in rspamd needs Redis)
 * is answered 451 and a real sending client (Python smtplib) retrying gets through, and
 * spam.enabled=auto scans only when something answers /ping at start-up. The stand-in also
 * records what we send, checked against rspamd's protocol (`/checkv2` request headers).
 */
import { execFile } from 'node:child_process';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { ALICE, BOB, drainInbound, startHarness, storedMessage, TestClient, type Harness } from '../smtp/harness.js';

const run = promisify(execFile);

interface Seen {
  headers: IncomingHttpHeaders;
  rawHeaders: string[];
  body: string;
}

/** An HTTP server answering /ping and /checkv2 with `answer` (after reading the whole body). */
async function fakeRspamd(answer: (seen: Seen) => Promise<{ status?: number; body: string }>): Promise<{ url: string; seen: Seen[]; server: Server }> {
  const seen: Seen[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.url === '/ping') {
        res.end('pong\r\n');
        return;
      }
      const s = { headers: req.headers, rawHeaders: req.rawHeaders, body: Buffer.concat(chunks).toString('utf8') };
      seen.push(s);
      answer(s).then(
        (a) => {
          if (res.destroyed) return;
          res.writeHead(a.status ?? 200, { 'Content-Type': 'application/json' });
          res.end(a.body);
        },
        () => res.destroy(),
      );
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen, server };
}

const verdict = (action: string, score: number, message?: string) =>
  JSON.stringify({
    is_skipped: false,
    score,
    required_score: 15,
    action,
    symbols: { TEST_RULE: { name: 'TEST_RULE', score } },
    messages: message ? { smtp_message: message } : {},
  });

const MESSAGE = ['From: <sender@remote.example>', `To: <${ALICE}>`, 'Subject: hello', 'Message-ID: <m1@remote.example>', '', 'Hello.', ''].join('\r\n');

async function sendMx(h: Harness, msg = MESSAGE, rcpts = [ALICE]): Promise<{ code: number; enhanced?: string; text: string; ms: number }> {
  const c = await TestClient.connect(h.server.ports.mx!);
  try {
    expect((await c.reply()).code).toBe(220);
    expect((await c.cmd('EHLO mail.remote.example')).code).toBe(250);
    expect((await c.cmd('MAIL FROM:<sender@remote.example>')).code).toBe(250);
    for (const r of rcpts) expect((await c.cmd(`RCPT TO:<${r}>`)).code).toBe(250);
    expect((await c.cmd('DATA')).code).toBe(354);
    const started = performance.now();
    const r = await c.cmd(msg + '.', 30_000);
    return { code: r.code, enhanced: r.enhanced, text: r.lines.join(' '), ms: performance.now() - started };
  } finally {
    c.close();
  }
}

describe('MX spam scan against rspamd stand-ins', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const f of cleanup.splice(0).reverse()) await f();
  });

  async function setup(answer: Parameters<typeof fakeRspamd>[0], env: Record<string, string> = {}) {
    const fake = await fakeRspamd(answer);
    cleanup.push(
      () =>
        new Promise<void>((resolve) => {
          fake.server.closeAllConnections();
          fake.server.close(() => resolve());
        }),
    );
    const h = await startHarness({ TOMLINSON_SPAM: 'on', TOMLINSON_SPAM_URL: fake.url, ...env });
    cleanup.push(() => h.close());
    return { fake, h };
  }

  it('sends the envelope, client, HELO and queue id in rspamd\u2019s request headers, one Rcpt per recipient, and the message as the body', async () => {
    const { fake, h } = await setup(async () => ({ body: verdict('no action', 0.5) }));
    expect((await sendMx(h, MESSAGE, [ALICE, BOB])).code).toBe(250);
    const [job] = await drainInbound(h.storage);
    const [s] = fake.seen;
    expect(s.headers.from).toBe('sender@remote.example');
    expect(s.headers.ip).toBe('127.0.0.1');
    expect(s.headers.helo).toBe('mail.remote.example');
    expect(s.headers['queue-id']).toBe(job.id);
    const rcpts = s.rawHeaders.filter((_, i) => i % 2 === 0 && s.rawHeaders[i].toLowerCase() === 'rcpt').length;
    expect(rcpts).toBe(2);
    expect(s.body).toBe(MESSAGE);
    expect((await storedMessage(h.storage, job)).toString('utf8')).toContain('\r\nX-Spam-Status: No, score=0.50 required=15.00\r\n');
  });

  it('does not hold the session past spam.timeoutMs when rspamd is slow: accepted unscanned, counted', async () => {
    const { h } = await setup(() => new Promise((resolve) => setTimeout(() => resolve({ body: verdict('reject', 20) }), 10_000)), {
      TOMLINSON_SPAM_TIMEOUT_MS: '400',
    });
    const r = await sendMx(h);
    expect(r.code).toBe(250);
    expect(r.ms).toBeGreaterThanOrEqual(380);
    expect(r.ms).toBeLessThan(2000);
    const [job] = await drainInbound(h.storage);
    expect(job.spam).toMatchObject({ skipped: 'timeout' });
    expect((await storedMessage(h.storage, job)).toString('utf8')).toContain('\r\nX-Spam-Status: Unknown (scan skipped: timeout)\r\n');
    expect((await h.metrics.spamScans.get()).values.find((v) => v.labels.result === 'skipped')?.value).toBe(1);
  });

  it('accepts unscanned when rspamd answers an error or nonsense', async () => {
    const answers = [{ status: 500, body: 'oops' }, { body: '{"action":"launch missiles"}' }, { body: 'not json' }];
    const { h } = await setup(async () => answers.shift()!);
    for (const why of ['error', 'bad response', 'bad response']) {
      expect((await sendMx(h)).code).toBe(250);
      const [job] = await drainInbound(h.storage);
      expect(job.spam).toMatchObject({ skipped: why });
    }
  });

  it('answers greylisting with 451 4.7.1, and Python smtplib retrying is accepted the second time', async () => {
    // rspamd's greylist module in miniature: the first sight of a (client, sender, recipient)
    // triplet is deferred, a later one passes.
    const known = new Set<string>();
    const { h } = await setup(async (s) => {
      const triplet = `${String(s.headers.ip)} ${String(s.headers.from)} ${String(s.headers.rcpt)}`;
      if (known.has(triplet)) return { body: verdict('no action', 4.5) };
      known.add(triplet);
      return { body: verdict('greylist', 4.5, 'Try again later (greylisted)') };
    });
    const script = [
      'import smtplib, sys, time',
      'port, rcpt = int(sys.argv[1]), sys.argv[2]',
      'msg = "From: <sender@remote.example>\\r\\nTo: <%s>\\r\\nSubject: retry me\\r\\n\\r\\nHello.\\r\\n" % rcpt',
      'for attempt in range(1, 6):',
      '    try:',
      '        with smtplib.SMTP("127.0.0.1", port, local_hostname="mail.remote.example") as s:',
      '            s.sendmail("sender@remote.example", [rcpt], msg)',
      '        print("accepted on attempt", attempt)',
      '        break',
      '    except smtplib.SMTPDataError as e:',
      '        print("deferred", e.smtp_code, e.smtp_error.decode())',
      '        if e.smtp_code // 100 != 4: raise',
      '        time.sleep(0.3)',
    ].join('\n');
    const { stdout } = await run('python3', ['-c', script, String(h.server.ports.mx), ALICE]);
    expect(stdout).toMatch(/^deferred 451 4\.7\.1 Try again later \(greylisted\)$/m);
    expect(stdout).toMatch(/^accepted on attempt 2$/m);
    const jobs = await drainInbound(h.storage);
    expect(jobs).toHaveLength(1);
    expect(jobs[0].spam).toMatchObject({ action: 'no action' });
  });

  it('spam.enabled=auto scans when rspamd answers /ping at start-up, and not at all when nothing answers', async () => {
    const { fake } = await setup(async () => ({ body: verdict('no action', 1) }));
    const on = await startHarness({ TOMLINSON_SPAM: 'auto', TOMLINSON_SPAM_URL: fake.url });
    cleanup.push(() => on.close());
    expect((await sendMx(on)).code).toBe(250);
    expect((await drainInbound(on.storage))[0].spam).toMatchObject({ action: 'no action' });

    // A port where nothing listens (the fake's, closed).
    const closed = await fakeRspamd(async () => ({ body: '' }));
    await new Promise<void>((resolve) => closed.server.close(() => resolve()));
    const off = await startHarness({ TOMLINSON_SPAM: 'auto', TOMLINSON_SPAM_URL: closed.url });
    cleanup.push(() => off.close());
    expect((await sendMx(off)).code).toBe(250);
    const [job] = await drainInbound(off.storage);
    expect(job.spam).toBeUndefined();
    expect((await storedMessage(off.storage, job)).toString('utf8')).not.toContain('X-Spam-Status');
  });
});
