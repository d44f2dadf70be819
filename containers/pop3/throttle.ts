/**
 * Slows repeated failed logins from one client address: every failure is answered after a delay
 * that doubles with the address's recent failures. The first failure waits the base delay too, so
 * an unknown user and a wrong password take the same time (the password check itself is
 * constant-time in Accounts).
 */

/** Options of the throttle. */
export interface ThrottleOptions {
  /** Delay of the first failure. @default 1000 */
  baseDelayMs?: number;
  /** The doubling stops here. @default 16 * baseDelayMs */
  maxDelayMs?: number;
  /** Failures older than this are forgotten. @default 15 minutes */
  windowMs?: number;
  /** Addresses remembered at most (the oldest are dropped first). @default 10000 */
  maxEntries?: number;
  /** Injectable clock. @default Date.now */
  now?: () => number;
  /** Injectable sleep, for tests. @default setTimeout */
  sleep?: (ms: number) => Promise<void>;
}

interface Entry {
  failures: number;
  last: number;
}

/** Remembers recent failures per client address and computes their delay. */
export class AuthThrottle {
  private readonly entries = new Map<string, Entry>();
  private readonly base: number;
  private readonly max: number;
  private readonly windowMs: number;
  private readonly maxEntries: number;
  private readonly now: () => number;
  private readonly sleep: (ms: number) => Promise<void>;

  constructor(options: ThrottleOptions = {}) {
    this.base = options.baseDelayMs ?? 1000;
    this.max = options.maxDelayMs ?? this.base * 16;
    this.windowMs = options.windowMs ?? 15 * 60_000;
    this.maxEntries = options.maxEntries ?? 10_000;
    this.now = options.now ?? Date.now;
    this.sleep = options.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
  }

  /** Records a failure from `address` and returns the delay to apply before answering it. */
  record(address: string): number {
    const t = this.now();
    let e = this.entries.get(address);
    if (!e || t - e.last > this.windowMs) e = { failures: 0, last: t };
    e.failures++;
    e.last = t;
    // Re-insert so that Map order is least recently failed first.
    this.entries.delete(address);
    this.entries.set(address, e);
    while (this.entries.size > this.maxEntries) this.entries.delete(this.entries.keys().next().value!);
    return Math.min(this.max, this.base * 2 ** Math.min(30, e.failures - 1));
  }

  /** Records a failure and waits its delay. */
  async fail(address: string): Promise<void> {
    const ms = this.record(address);
    if (ms > 0) await this.sleep(ms);
  }
}
