/**
 * The shared failed-login throttle (containers/auth-throttle.ts) with a fake clock: the growing
 * delay per (address, account), the looser per-address ceiling against spraying many accounts,
 * the reset on success, the window, and the memory bound.
 */
import { describe, expect, it } from 'vitest';
import { AuthThrottle, authFailureText } from '../../containers/auth-throttle.js';

function throttle(extra: ConstructorParameters<typeof AuthThrottle>[0] = {}) {
  let t = 0;
  const th = new AuthThrottle({ baseDelayMs: 100, now: () => t, ...extra });
  return { th, advance: (ms: number) => (t += ms) };
}

describe('AuthThrottle', () => {
  it('doubles per (address, account) up to 16 times the base; other accounts and addresses start at the base', () => {
    const { th } = throttle();
    expect([1, 2, 3, 4, 5, 6].map(() => th.record('192.0.2.1', 'alice@x.test'))).toEqual([100, 200, 400, 800, 1600, 1600]);
    expect(th.record('192.0.2.1', 'bob@x.test')).toBe(100);
    expect(th.record('192.0.2.2', 'alice@x.test')).toBe(100);
    // The account is compared as typed, minus case and surrounding space.
    expect(th.record('192.0.2.1', ' ALICE@x.test')).toBe(1600);
  });

  it('a success clears the pair but not the address count', () => {
    const { th, advance } = throttle({ addressAllowance: 3 });
    for (let i = 0; i < 3; i++) advance(th.record('192.0.2.1', 'alice@x.test'));
    th.succeed('192.0.2.1', 'alice@x.test');
    // Pair reset to the base, but the address is now past its allowance of 3 (4th failure: base).
    expect(th.record('192.0.2.1', 'alice@x.test')).toBe(100);
    advance(100);
    expect(th.record('192.0.2.1', 'alice@x.test')).toBe(200);
  });

  it('an address rotating account names is slowed once past its allowance', () => {
    const { th, advance } = throttle({ addressAllowance: 10 });
    // A client that waits for each answer before its next guess.
    const delays = Array.from({ length: 16 }, (_, i) => {
      const d = th.record('198.51.100.7', `user${i}@x.test`);
      advance(d);
      return d;
    });
    expect(delays.slice(0, 11)).toEqual(Array(11).fill(100));
    expect(delays.slice(11)).toEqual([200, 400, 800, 1600, 1600]);
  });

  it('parallel failures from a spraying address are answered one after another, each wait cut at maxWaitMs', () => {
    const { th } = throttle({ addressAllowance: 2, maxWaitMs: 3000 });
    // Eight guesses on eight connections at the same instant.
    const waits = Array.from({ length: 8 }, (_, i) => th.record('198.51.100.7', `user${i}@x.test`));
    // Two within the allowance (base each), then 100, +200, +400, +800, +1600 queued, capped at 3000.
    expect(waits).toEqual([100, 100, 100, 300, 700, 1500, 3000, 3000]);
  });

  it('forgets after the window', () => {
    const { th, advance } = throttle({ windowMs: 60_000 });
    for (let i = 0; i < 5; i++) th.record('192.0.2.1', 'alice@x.test');
    advance(60_001);
    expect(th.record('192.0.2.1', 'alice@x.test')).toBe(100);
  });

  it('keeps at most maxEntries keys per table', () => {
    const { th } = throttle({ maxEntries: 50 });
    for (let i = 0; i < 1000; i++) th.record(`10.0.${i >> 8}.${i & 255}`, `user${i}@x.test`);
    expect(th.size).toEqual({ pairs: 50, addresses: 50 });
  });

  it('the log text puts the address first and quotes the user, so a crafted name cannot pose as an address', () => {
    expect(authFailureText('submission', '192.0.2.1', 'x" client=203.0.113.9 \n')).toBe(
      'auth failed: client=192.0.2.1 listener=submission user="x\\" client=203.0.113.9 \\n"',
    );
  });
});
