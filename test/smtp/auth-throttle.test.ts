/**
 * Failed AUTH on submission over real sockets: each failure of one account from one address is
 * answered more slowly (doubling), another account from the same address is not punished for it,
 * a success clears it, every failure is counted per listener and logged on one matchable line
 * without the password.
 */
import { Writable } from 'node:stream';
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
    again.close();

    expect((await h.metrics.authFailures.get()).values).toEqual([{ labels: { listener: 'submissions' }, value: 6 }]);
    const failures = lines.filter((l) => l.includes('auth failed'));
    expect(failures).toHaveLength(6);
    expect(failures.filter((l) => l.includes('auth failed: client=127.0.0.1 listener=submissions user=\\"alice@example.test\\"'))).toHaveLength(5);
    for (const l of lines) expect(l).not.toContain('wrong-secret');
  }, 30_000);
});
