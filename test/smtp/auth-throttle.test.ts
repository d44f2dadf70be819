/**
 * Failed AUTH on submission over real sockets: each failure of one account from one address is
 * answered more slowly (doubling), another account from the same address is not punished for it,
 * a success clears it, every failure is counted per listener and logged on one matchable line
 * without the password.
 */
import { execFile } from 'node:child_process';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../core/log.js';
import { ALICE, BOB, PASSWORD, startHarness, TestClient, type Harness } from './harness.js';

const plain = (u: string, p: string) => Buffer.from(`\0${u}\0${p}`).toString('base64');
const BASE = 200;

let h: Harness;
const lines: string[] = [];

beforeAll(async () => {
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(...chunk.toString().split('\n').filter(Boolean));
      cb();
    },
  });
  h = await startHarness({ TOMLINSON_SMTP_AUTH_FAILURE_DELAY_MS: String(BASE) }, { log: createLogger({ destination: sink, level: 'info' }) });
});
afterAll(async () => {
  await h?.close();
});

async function submissions(): Promise<TestClient> {
  const c = await TestClient.connect(h.server.ports.submissions!, { tls: true });
  expect((await c.reply()).code).toBe(220);
  expect((await c.cmd('EHLO client.example')).code).toBe(250);
  return c;
}

async function timedAuth(c: TestClient, user: string, password: string): Promise<{ code: number; ms: number }> {
  const t = performance.now();
  const r = await c.cmd(`AUTH PLAIN ${plain(user, password)}`, 20_000);
  return { code: r.code, ms: performance.now() - t };
}

describe('submission AUTH failures', () => {
  it('slow one account from one address, spare the others, reset on success, and are counted and logged', async () => {
    const c = await submissions();
    const alice: number[] = [];
    for (let i = 0; i < 4; i++) {
      const r = await timedAuth(c, ALICE, `wrong-secret-${i}`);
      expect(r.code).toBe(535);
      alice.push(r.ms);
    }
    // 200, 400, 800, 1600 ms on top of the password check.
    expect(alice[0]).toBeGreaterThanOrEqual(BASE - 5);
    expect(alice[3]).toBeGreaterThanOrEqual(8 * BASE - 5);
    // Bob behind the same address starts at the base delay, not at alice's 3200.
    const bob = await timedAuth(c, BOB, 'wrong-secret-bob');
    expect(bob.code).toBe(535);
    expect(bob.ms).toBeGreaterThanOrEqual(BASE - 5);
    expect(bob.ms).toBeLessThan(6 * BASE);
    // The right password is answered at once and clears alice's count.
    const ok = await timedAuth(c, ALICE, PASSWORD);
    expect(ok.code).toBe(235);
    expect(ok.ms).toBeLessThan(4 * BASE);
    c.close();
    const again = await submissions();
    const after = await timedAuth(again, ALICE, 'wrong-secret-after');
    expect(after.code).toBe(535);
    expect(after.ms).toBeLessThan(6 * BASE);
    // A user name crafted to look like another client's failure line.
    const crafted = 'x auth failed: client=203.0.113.9 listener=submissions';
    expect((await timedAuth(again, crafted, 'wrong-secret-crafted')).code).toBe(535);
    again.close();

    expect((await h.metrics.authFailures.get()).values).toEqual([{ labels: { listener: 'submissions' }, value: 7 }]);
    const failures = lines.filter((l) => l.includes('auth failed'));
    expect(failures).toHaveLength(7);
    // What a fail2ban-style matcher finds first on each line is the real client.
    for (const l of failures) expect(/auth failed: client=(\S+) /.exec(l)?.[1]).toBe('127.0.0.1');
    expect(failures.filter((l) => l.includes('auth failed: client=127.0.0.1 listener=submissions user=\\"alice@example.test\\"'))).toHaveLength(5);
    for (const l of lines) expect(l).not.toContain('wrong-secret');
  }, 30_000);

  it('Python smtplib guessing passwords on the submissions port is slowed more and more', async () => {
    // Each smtplib login() tries PLAIN then LOGIN: two failures per call.
    const script = [
      'import smtplib, ssl, sys, time, json',
      'ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE',
      's = smtplib.SMTP_SSL("127.0.0.1", int(sys.argv[1]), context=ctx, timeout=30)',
      's.ehlo("guesser.example")',
      'times = []',
      'for i in range(3):',
      '    t = time.monotonic()',
      '    try:',
      '        s.login(sys.argv[2], "guess-%d" % i)',
      '    except smtplib.SMTPAuthenticationError:',
      '        pass',
      '    times.append(round((time.monotonic() - t) * 1000))',
      'print(json.dumps(times))',
    ].join('\n');
    const fast = await startHarness({ TOMLINSON_SMTP_AUTH_FAILURE_DELAY_MS: '50' });
    try {
      const { stdout } = await promisify(execFile)('python3', ['-c', script, String(fast.server.ports.submissions), BOB], { timeout: 30_000 });
      const times = JSON.parse(stdout) as number[];
      // Delays 50+100, 200+400, 800+800 ms (16 times the base at most): each login() waits longer.
      expect(times[1]).toBeGreaterThanOrEqual(595);
      expect(times[2]).toBeGreaterThanOrEqual(1595);
      // The growth is the throttle's, not the password check's (which costs the same each time).
      expect(times[2] - times[0]).toBeGreaterThanOrEqual(1300);
      expect((await fast.metrics.authFailures.get()).values).toEqual([{ labels: { listener: 'submissions' }, value: 6 }]);
    } finally {
      await fast.close();
    }
  }, 30_000);
});
